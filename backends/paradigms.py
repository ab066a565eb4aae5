"""ParaDiGMS (Shih et al., "Parallel Sampling of Diffusion Models", NeurIPS 2023), as published.

Follows AndyShih12/paradigms @ d44faf9, ``paradigms/stablediffusion_paradigms.py`` lines 163–276
(and ``paraddim_scheduler.py`` lines 10–20 for σ_t²):

* Picard on the integral form over a sliding window [begin, end) of ``window`` rows: with Δ_m the
  change one step makes to its input, Δ_m = step_m(u_m, ε(u_m)) − u_m, every row of the window is
  refreshed at once as u_begin + Σ_{m=begin..j} Δ_m (the cumulative sum, lines 229–249). The step's
  noise ξ_m is part of step_m here; the published code adds its pre-drawn σ_m ξ_m separately, which
  is the same sum. Both the network and the linear part of each step are taken at the old
  iterate: the Jacobian of a whole step is modelled by the identity.
* Per-row change test ‖x_j^new − x_j^old‖² / (d · σ²) > tol² marks a failure (lines 250–259), d the
  numbers per image, σ² the DDPM posterior variance of the step that starts from that row
  (``inverse_variance_norm``, lines 179–181; 1/0 = ∞ for the last row, which therefore only passes
  with no change at all). A failure in any image of the batch counts (``torch.max`` over the batch).
* The window's start jumps past the first failing row, begin ← begin + min(1 + ind, window)
  (line 263): every row before it passed, and the failing row itself was computed from them, so
  it becomes the window's fixed start. The window thus moves by at least one row per round and the
  solve ends after at most T rounds; with tol = 0 a row passes only unchanged, so the result is
  then the sequential chain exactly.
* Rows entering the window start at the last computed state (line 270); the buffer starts at x_T
  everywhere (line 165), so by default the solver's starting point z0 is not used
  (``fill="given"`` keeps it).

Defaults: tol = 0.1 and window 32, the published ones for DDIM (``main_mp.py`` lines 20–36).
A change-based rule cannot certify the image error, so a solve that ends by it reports
``Status.STOPPED``; with tol = 0 the answer is exact and reported as converged.
"""
from __future__ import annotations

import math

import torch

from fixedpoint_ir.solver import (FixedPointSolver, RoundInfo, SolverReport, Status, register_solver,
                                  relative_residual)

from ._rows import FILLS, evaluate, inputs_of, require_chain

__all__ = ["ParaDiGMS"]


@register_solver("paradigms")
class ParaDiGMS(FixedPointSolver):
    """ParaDiGMS' sliding-window Picard with its noise-scaled change test (module docstring).

    Args:
        tol: a row passes when its RMS change is at most tol × σ (the published 0.1).
        max_rounds: most rounds (``None``: T, where the window has necessarily passed the end).
        window: rows per round (the published ``parallel`` = 32 for DDIM).
        fill: ``"last"`` (published): rows start at the last computed state (x_T for the first
            window); ``"given"``: they start at the solver's z0 (the sampler's ``init``).
    """

    name = "paradigms"

    def __init__(self, tol: float = 0.1, max_rounds: int | None = None, *, window: int = 32,
                 fill: str = "last", divergence_factor: float = 1e4):
        super().__init__(tol, max_rounds, divergence_factor)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        self.window, self.fill = window, fill

    def solve(self, f, z0, callback=None) -> SolverReport:
        require_chain(f, "ParaDiGMS")
        rows, n = z0.shape[0], z0.shape[1]
        limit = self.round_limit(z0)
        width = min(self.window, rows)
        numel = z0[0, 0].numel()
        sigma2 = f.posterior_std.to(torch.float64).to(z0.device) ** 2
        # Row j is judged against the variance of the step that starts from it (lines 179–181, 252).
        inverse = 1.0 / (torch.cat([sigma2[1:], sigma2.new_zeros(1)]) * numel)
        threshold = self.tol ** 2
        z = z0.clone()
        if self.fill == "last":
            z[:width] = f.x_T
        begin, end = 0, width
        residuals: list[float] = []
        windows: list[tuple[int, int]] = []
        rounds = 0
        while begin < rows:
            if rounds >= limit:
                return SolverReport(z, rounds, residuals, Status.MAX_ROUNDS, dict(windows=windows))
            live = torch.zeros(rows, n, dtype=torch.bool, device=z.device)
            live[begin:end] = True
            e = evaluate(f, z, live)
            rounds += 1
            if e is None:
                residuals.append(math.inf)
                return SolverReport(z, rounds, residuals, Status.DIVERGED, dict(windows=windows))
            u = inputs_of(f, z)[begin:end]
            delta = torch.stack([f.step(begin + k, u[k], e[begin + k]) for k in range(end - begin)]) - u
            block = u[0] + torch.cumsum(delta, dim=0)
            change = (block - z[begin:end]).to(torch.float64).flatten(2).pow(2).sum(-1)   # (rows, N)
            ratio = change * inverse[begin:end, None]    # 0 · ∞ = NaN passes, as in the published code
            failed = (ratio > threshold).any(1)
            first_failure = int(failed.int().argmax()) if bool(failed.any()) else end - begin
            new = z.clone()
            new[begin:end] = block
            new_begin = begin + min(1 + first_failure, width)
            new_end = min(new_begin + width, rows)
            if self.fill == "last" and new_end > end:
                new[end:new_end] = new[end - 1]   # rows entering the window (line 270)
            residual = relative_residual(new, z)
            diverged = self._diverged(new, residual, residuals)
            residuals.append(residual)
            windows.append((begin, end))
            if callback is not None:
                callback(RoundInfo(rounds, residual, z, new, dict(window=(begin, end), accepted=new_begin)))
            if diverged:
                return SolverReport(new, rounds, residuals, Status.DIVERGED, dict(windows=windows))
            z, begin, end = new, new_begin, new_end
        status = Status.CONVERGED if self.tol == 0 else Status.STOPPED
        return SolverReport(z, rounds, residuals, status, dict(windows=windows, exact=self.tol == 0))
