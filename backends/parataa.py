"""ParaTAA (Tang et al., "Accelerating Parallel Sampling of Diffusion Models", ICML 2024), as published.

Follows TZW1998/ParaTAA-Diffusion @ 08bcf3f, ``parallel_dit.py`` (``parallel_sd.py`` is the same
algorithm; line numbers below are ``parallel_dit.py``'s). The code counts rows from the image up
(its t = T−1−j); here j = 0 is the noisiest row as everywhere in this package.

* The order-p equation (``compute_ho_residual``, lines 196–214): row j is written through the row p
  above it with the current network outputs held fixed, Φ_j = steps j−p+1 … j replayed from
  z_{j−p}, clamped at the frozen row above the window; R_j = Φ_j − z_j. p ≥ the window is DeqIR's
  F over the live rows (the DiT script's default, order = T = 100).
* Triangular Anderson (``taa_step``, lines 217–295): per row a memory of the last ``memory``
  iterates x and residuals R (rows gain history only while in the window: ``memory_indexes``);
  with ΔX, ΔR their differences, B_j = Σ_{rows r from the window's top to j} ΔR_rᵀΔR_r + λI,
  g_j = Σ_r ΔR_rᵀR_r (the flip + cumsum of lines 265–273: row j's weights minimise the residuals of
  row j and every live row upstream of it), γ_j = B_j⁻¹g_j (lines 282–287) and
  x_j ← x_j + R_j − (ΔX_j + ΔR_j)γ_j (lines 289–295). λ = 1e-3 absolute, as published; memory 2
  (the CLI default, lines 452–455); least squares in float64 (the published code keeps all its
  state in float64; here the states stay in the chain's dtype).
* Stop rule (``step``, lines 166–194): a row is unfinished while the RMS of its *one-step* residual
  step_j(z_{j−1}, ε) − z_j exceeds both tol1 and tol2·σ_j (σ_j the DDPM posterior std of the step,
  ``noise_thr``, lines 59 and 185); CLI defaults tol1 = tol2 = 1e-3 (lines 456–457).
* Frozen top row (lines 218–222, 254–256): the highest unfinished row and every live row above it
  take the plain order-p step (they are computed from rows that passed) and are then frozen; rows
  below it take the TAA step if they have at least two iterates in memory. The frozen row moves
  down by at least one row per round, so the solve ends after at most T rounds; with tol = 0 a row
  passes only with a zero residual, and the result is the sequential chain exactly.
* Window (``prepare_model_kwargs``, lines 107–112): the ``window`` rows below the frozen one (both
  CLIs use 100 ≥ T: all rows). Rows entering it start at the last initialised state
  (``initialize_samples``, lines 92–99); the first window starts at x_T, so by default the solver's
  starting point z0 is not used (``fill="given"`` keeps it).

Images of a batch are independent (the published scripts sample one at a time): each has its own
frozen row, window and least-squares sums; the network calls of a round are one batch.

Two departures, both outside the published configurations: (1) for ``memory`` > 2 the published
code keeps the *oldest* difference columns of a row with a short history (lines 274–281), which
pairs an iterate with an unfilled slot; this uses the newest valid ones (memory 2: the same).
(2) With a window ≤ the rows left, ``initialize_samples`` (lines 92–99) initialises one row too few,
so the window's lowest row starts at zero for its first round and is then overwritten by the row
above; here every entering row starts at the last state. The SD script (window 100 > T = 50) and
``window=None`` are not affected; the tests compare round by round against a transcription of the
published code with a window larger than T.

A change-based rule cannot certify the image error, so a solve that ends by it reports
``Status.STOPPED``; with tol = 0 the answer is exact and reported as converged.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fixedpoint_ir.solver import (FixedPointSolver, RoundInfo, SolverReport, Status, register_solver,
                                  relative_residual)

from ._rows import FILLS, evaluate, inputs_of, require_chain, rms

__all__ = ["ParaTAA"]


@register_solver("parataa")
class ParaTAA(FixedPointSolver):
    """ParaTAA's triangular Anderson on the order-p equations, with its stop rule (module docstring).

    Args:
        tol: tol1 of the stop rule, RMS of the one-step residual (the CLI's 1e-3).
        max_rounds: most rounds (``None``: T, where every row is necessarily frozen).
        noise_tol: tol2, the bound relative to σ_j (``None``: tol, as the CLI's tol1 = tol2).
        order: p of the order-p equations (``None``: all live rows, the DiT script's default).
        memory: iterates kept per row (2, the CLI default; 1 turns the acceleration off).
        lam: Tikhonov regulariser of the least squares (1e-3).
        window: live rows per image per round (``None``: all, as both CLIs at T ≤ 100).
        fill: ``"last"`` (published): rows start at the last initialised state (x_T first);
            ``"given"``: at the solver's z0.
    """

    name = "parataa"

    def __init__(self, tol: float = 1e-3, max_rounds: int | None = None, *, noise_tol: float | None = None,
                 order: int | None = None, memory: int = 2, lam: float = 1e-3, window: int | None = None,
                 fill: str = "last", divergence_factor: float = 1e4):
        super().__init__(tol, max_rounds, divergence_factor)
        for name, value in (("order", order), ("window", window)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
            raise ValueError(f"memory must be a positive int, got {memory!r}")
        if noise_tol is not None and not noise_tol >= 0:
            raise ValueError(f"noise_tol must be non-negative or None, got {noise_tol!r}")
        if not lam >= 0:
            raise ValueError(f"lam must be non-negative, got {lam!r}")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        self.noise_tol = self.tol if noise_tol is None else float(noise_tol)
        self.order, self.memory, self.lam, self.window, self.fill = order, memory, float(lam), window, fill

    def solve(self, f, z0, callback=None) -> SolverReport:
        require_chain(f, "ParaTAA")
        rows, n = z0.shape[0], z0.shape[1]
        dev = z0.device
        limit = self.round_limit(z0)
        width = rows if self.window is None else min(self.window, rows)
        order = width if self.order is None else min(self.order, width)
        sigma = f.posterior_std.to(z0.dtype).to(dev).view(rows, 1)
        row_index = torch.arange(rows, device=dev).view(rows, 1)
        z = z0.clone()
        top = torch.zeros(n, dtype=torch.long, device=dev)      # rows < top are frozen, per image
        filled = torch.zeros(n, dtype=torch.long, device=dev)   # rows < filled have been initialised
        counts = torch.zeros(rows, n, dtype=torch.long, device=dev)   # iterates in memory per row
        xs: list[Tensor] = []   # memory of iterates, each (T, N, …)
        rs: list[Tensor] = []   # and of their order-p residuals
        residuals: list[float] = []
        rounds = 0
        while bool((top < rows).any()):
            if rounds >= limit:
                return self._report(z, z0, rounds, residuals, Status.MAX_ROUNDS, top)
            hi = torch.clamp(top + width, max=rows)
            if self.fill == "last":
                self._fill(z, f, filled, hi)
            live = (row_index >= top) & (row_index < hi)
            e = evaluate(f, z, live)
            rounds += 1
            if e is None:
                residuals.append(math.inf)
                return self._report(z, z0, rounds, residuals, Status.DIVERGED, top)
            one_step = self._one_step(f, z, e, live) - z
            unfinished = live & (rms(one_step) > self.tol) & (rms(one_step) > self.noise_tol * sigma)
            # The highest unfinished row (smallest j) becomes the frozen top; none: the whole window.
            first = torch.where(unfinished, row_index, torch.full_like(row_index, rows)).amin(0)
            new_top = torch.where(first < rows, first + 1, hi)
            residual_p = self._order_residual(f, z, e, live, top, order)
            counts = torch.where(live, torch.clamp(counts + 1, max=self.memory), counts)
            xs.append(torch.where(self._wide(live, z), z, torch.zeros_like(z)))
            rs.append(torch.where(self._wide(live, z), residual_p, torch.zeros_like(z)))
            del xs[:-self.memory], rs[:-self.memory]
            accelerate = live & (row_index > first) & (counts > 1)
            correction = self._taa(xs, rs, residual_p, live, accelerate, counts)
            new = torch.where(self._wide(live, z), z + residual_p - correction, z)
            residual = relative_residual(new, z)
            diverged = self._diverged(new, residual, residuals)
            residuals.append(residual)
            if callback is not None:
                callback(RoundInfo(rounds, residual, z, new,
                                   dict(frozen=new_top.tolist(), unfinished=int(unfinished.sum()))))
            z, top = new, new_top
            if diverged:
                return self._report(z, z0, rounds, residuals, Status.DIVERGED, top)
        return self._report(z, z0, rounds, residuals, Status.CONVERGED if self.tol == 0 == self.noise_tol
                            else Status.STOPPED, top)

    @staticmethod
    def _wide(mask: Tensor, like: Tensor) -> Tensor:
        return mask.view(*mask.shape, *([1] * (like.dim() - 2)))

    @staticmethod
    def _fill(z, f, filled, hi) -> None:
        """Rows entering the window start at the last initialised state (x_T above row 0)."""
        for image in range(z.shape[1]):
            start, stop = int(filled[image]), int(hi[image])
            if stop > start:
                z[start:stop, image] = f.x_T[image] if start == 0 else z[start - 1, image]
                filled[image] = stop

    @staticmethod
    def _one_step(f, z, e, live) -> Tensor:
        """step_j(z_{j−1}, e_j) on every row with a live entry (the published stop rule's map)."""
        u = inputs_of(f, z)
        out = z.clone()
        for j in live.any(1).nonzero().flatten().tolist():
            out[j] = f.step(j, u[j], e[j])
        return out

    def _order_residual(self, f, z, e, live, top, order) -> Tensor:
        """R_j = Φ_j − z_j: steps max(j−p+1, top) … j replayed from the state above them, e fixed."""
        spatial = (1,) * (z.dim() - 2)
        active = live.any(1).nonzero().flatten().tolist()
        phi = z.clone()
        if not active:
            return phi - z
        lo, hi = active[0], active[-1] + 1
        start_of = lambda j: torch.maximum(torch.full_like(top, j - order), top - 1)  # noqa: E731
        if order >= hi - int(top.min()):
            # Every live row's equation starts at its image's frozen row: one replay serves all.
            x = f.x_T if lo == 0 else z[lo - 1]
            for j in range(lo, hi):
                stepped = f.step(j, x, e[j])
                x = torch.where((j < top).view(-1, *spatial), z[j], stepped)
                phi[j] = x
        else:
            for j in range(lo, hi):
                begin = start_of(j)                     # the state row (−1: x_T) each image starts from
                x = torch.stack([f.x_T[i] if b < 0 else z[b, i] for i, b in enumerate(begin.tolist())])
                for m in range(int(begin.min()) + 1, j + 1):
                    x = torch.where((m <= begin).view(-1, *spatial), x, f.step(m, x, e[m]))
                phi[j] = x
        return torch.where(self._wide(live, z), phi - z, torch.zeros_like(z))

    def _taa(self, xs, rs, residual, live, accelerate, counts) -> Tensor:
        """(ΔX_j + ΔR_j)γ_j on the accelerated rows, γ_j from the rows' prefix sums (zero elsewhere).
        Least squares in float64, as the published solver state."""
        correction = torch.zeros_like(residual)
        if len(xs) < 2 or not bool(accelerate.any()):
            return correction
        wide = lambda v: v.to(torch.float64)  # noqa: E731
        dx = torch.stack([wide(b - a) for a, b in zip(xs[:-1], xs[1:])], -1).flatten(2, -2)   # (T, N, D, k)
        dr = torch.stack([wide(b) - wide(a) for a, b in zip(rs[:-1], rs[1:])], -1).flatten(2, -2)
        k = dr.shape[-1]
        # Only the newest counts − 1 differences of a row are real (older slots were unfilled).
        valid = torch.arange(k, device=dr.device).view(1, 1, k) >= (k - (counts - 1)).unsqueeze(-1)
        upstream = (live.unsqueeze(-1) & valid).to(dr.dtype)      # per row: its own valid columns
        dr_live = dr * upstream.unsqueeze(2)
        gram = torch.einsum("tndi,tndk->tnik", dr_live, dr_live).cumsum(0)   # Σ over rows top … j
        rhs = torch.einsum("tndi,tnd->tni", dr_live, wide(residual).flatten(2)).cumsum(0)
        mask = valid.to(dr.dtype)
        gram = gram * mask.unsqueeze(-1) * mask.unsqueeze(-2)
        eye = torch.eye(k, dtype=dr.dtype, device=dr.device)
        gram = gram + self.lam * eye + (1 - mask).unsqueeze(-1) * eye   # unused columns: γ = 0
        gamma = torch.linalg.solve(gram, (rhs * mask).unsqueeze(-1)).squeeze(-1)   # (T, N, k)
        step = torch.einsum("tndk,tnk->tnd", dx + dr, gamma * mask).view_as(residual).to(residual.dtype)
        return torch.where(self._wide(accelerate, residual), step, correction)

    @staticmethod
    def _report(z, z0, rounds, residuals, status, top) -> SolverReport:
        return SolverReport(z, rounds, residuals, status,
                            dict(frozen=top.tolist(), exact=status is Status.CONVERGED))
