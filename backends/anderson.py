"""Anderson acceleration (Walker & Ni, 2011) with the mixing weights of DeqIR and a triangular variant."""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from fixedpoint_ir.solver import FixedPointSolver, SolverReport, Status, register_solver

from ._loop import RoundLoop

__all__ = ["Anderson", "anderson_weights"]

MIXINGS = ("per_row", "global", "triangular")


def anderson_weights(residuals: Tensor, lam: float, mixing: str) -> Tensor:
    """Weights α (rows, n) minimising ‖Σ_i α_i g_i‖² + λ‖α‖² subject to Σ_i α_i = 1.

    residuals: (n, rows, d), the history of g = F(x) − x per row.
    mixing: ``per_row`` solves one α per row from that row's residuals (DeqIR's reference code);
    ``global`` one α for the whole chain; ``triangular`` gives row j the α minimising the residuals
    of rows ≤ j only (Gram matrices accumulated over the row prefix), which respects the lower-
    triangular structure of the map.
    """
    gram = torch.einsum("ird,krd->rik", residuals, residuals)  # (rows, n, n)
    if mixing == "global":
        gram = gram.sum(0, keepdim=True).expand_as(gram)
    elif mixing == "triangular":
        gram = gram.cumsum(0)
    elif mixing != "per_row":
        raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
    rows, n = gram.shape[0], gram.shape[1]
    bordered = gram.new_zeros(rows, n + 1, n + 1)
    bordered[:, 0, 1:] = bordered[:, 1:, 0] = 1
    bordered[:, 1:, 1:] = gram + lam * torch.eye(n, dtype=gram.dtype, device=gram.device)
    rhs = gram.new_zeros(rows, n + 1, 1)
    rhs[:, 0] = 1
    return torch.linalg.solve(bordered, rhs)[:, 1:, 0]


@register_solver("anderson")
class Anderson(FixedPointSolver):
    """Anderson acceleration with a history of ``m`` iterates.

    Defaults follow the published DeqIR solver (m = 5, λ = 1e-3, β = 1, weights solved per state
    row, two plain warm-up calls, stop on the relative residual over the whole chain) except where
    that solver returns an unconverged image: by default the round limit is T (not 15 calls) and
    the exact prefix is kept out of the mixing, so the answer is the sequential one whatever the
    problem (at most T rounds, like Picard). ``Anderson.published()`` is the reference
    configuration exactly (≤ 15 calls, the mixed iterate returned; unconverged on many problems,
    and then the sampler warns). Differences, each switchable:

    - ``return_image`` (default True) returns F(z) of the last iterate, which costs nothing (it was
      just evaluated) and is never worse on a triangular map; the reference returns z itself.
    - ``exact_prefix`` keeps the rows that are already exact (k rows after k rounds) out of the
      mixing, so the solver is exact after T rounds like Picard.
    - ``safeguard``: when a mixed step raises the residual above ``safeguard`` × the best residual
      so far, or gives NaN/Inf, the step is replaced by a Picard step and the history cleared.
    """

    name = "anderson"

    def __init__(self, tol: float = 1e-3, max_rounds: int | None = None, m: int = 5, lam: float = 1e-3,
                 beta: float = 1.0, warmup: int = 2, mixing: str = "per_row", return_image: bool = True,
                 exact_prefix: bool = True, safeguard: float | None = None,
                 divergence_factor: float = 1e4):
        super().__init__(tol, max_rounds, divergence_factor)
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        if m < 1 or warmup < 1:
            raise ValueError("m and warmup must be at least 1")
        self.m, self.lam, self.beta, self.warmup, self.mixing = m, lam, beta, warmup, mixing
        self.return_image, self.exact_prefix, self.safeguard = return_image, exact_prefix, safeguard

    @classmethod
    def published(cls, **overrides) -> "Anderson":
        """The configuration of the DeqIR reference code, including returning the mixed iterate."""
        options = dict(tol=1e-3, max_rounds=15, m=5, lam=1e-3, beta=1.0, warmup=2, mixing="per_row",
                       return_image=False, exact_prefix=False, safeguard=None)
        options.update(overrides)
        return cls(**options)

    def solve(self, f, z0, callback=None) -> SolverReport:
        loop = RoundLoop(self, f, z0, callback)
        rows = z0.shape[0]
        flat = lambda v: rearrange(v, "t ... -> t (...)")  # noqa: E731
        xs: list[Tensor] = []   # history of iterates (flattened per row)
        fs: list[Tensor] = []   # their images under F
        last_x = last_fx = None  # the last iterate whose F was accepted, and its image
        exact = 0                # rows of z known to be exact (with exact_prefix)
        last_fx_exact = 0
        fallbacks = streak = 0
        best = float("inf")
        z = z0
        status = Status.MAX_ROUNDS
        while not loop.exhausted:
            fz, residual, diverged = loop.evaluate(z)
            rejected = diverged or (self.safeguard is not None and residual > self.safeguard * best)
            if rejected and self.safeguard is not None and last_fx is not None and streak < 2:
                # Discard the mixed iterate: take the Picard step from the last good one instead.
                fallbacks += 1
                streak += 1  # a Picard step that fails again twice in a row is divergence
                z, exact = last_fx, last_fx_exact
                xs.clear()
                fs.clear()
                continue
            if diverged:
                return loop.report(z, Status.DIVERGED, safeguard_fallbacks=fallbacks)
            streak = 0
            best = min(best, residual)
            last_x, last_fx = z, fz
            last_fx_exact = min(exact + 1, rows)  # row j of F(z) is exact when rows < j of z are
            xs.append(flat(z))
            fs.append(flat(fz))
            del xs[:-self.m], fs[:-self.m]
            if self.exact_prefix and last_fx_exact == rows:
                status = Status.CONVERGED
                loop.info["exact"] = True
                break
            if residual < self.tol:
                status = Status.CONVERGED
                break
            if loop.rounds < self.warmup or len(xs) < 2:
                z, exact = fz, last_fx_exact
                continue
            x_hist, f_hist = torch.stack(xs), torch.stack(fs)  # (n, rows, d)
            alpha = anderson_weights(f_hist - x_hist, self.lam, self.mixing)  # (rows, n)
            mixed = torch.einsum("ri,ird->rd", alpha, f_hist)
            if self.beta != 1.0:
                mixed = self.beta * mixed + (1 - self.beta) * torch.einsum("ri,ird->rd", alpha, x_hist)
            z = mixed.view_as(z0)
            if self.exact_prefix:  # keep the exact rows of F(z) out of the mixing
                z[:last_fx_exact] = fz[:last_fx_exact]
            exact = last_fx_exact if self.exact_prefix else 0
        solution = last_fx if (self.return_image or loop.info.get("exact")) else last_x
        return loop.report(solution, status, exact=bool(loop.info.get("exact")), safeguard_fallbacks=fallbacks)
