"""Limited-memory Broyden's method ("good" Broyden on the inverse Jacobian), as used for DEQs."""
from __future__ import annotations

import torch
from torch import Tensor

from fixedpoint_ir.solver import FixedPointSolver, SolverReport, Status, register_solver

from ._loop import RoundLoop

__all__ = ["Broyden"]


@register_solver("broyden")
class Broyden(FixedPointSolver):
    """Broyden's method on g(z) = F(z) − z, treating the whole chain as one vector.

    The inverse Jacobian of g is approximated by H = −I + Σ u_i v_iᵀ (at most ``m`` pairs; the
    oldest is dropped), so the first step z − H g = z + g = F(z) is a Picard step. The update
    keeps H Δg = Δz (Sherman–Morrison form of Broyden's "good" update).

    ``safeguard``: when a step raises the residual above ``safeguard`` × the best residual so far,
    or gives NaN/Inf, it is replaced by a Picard step from the last good iterate and the memory
    cleared. ``return_image`` returns F(z) of the last good iterate (free, never worse on a
    triangular map). ``exact_prefix`` (default True) overwrites the rows of each new iterate that
    are known exact (row j of F(z) is exact once rows < j of z are) with F(z)'s, so the solver is
    exact after at most T rounds (the default limit), like Picard, and never stops unconverged on
    a strictly lower-triangular map.
    """

    name = "broyden"

    def __init__(self, tol: float = 1e-3, max_rounds: int | None = None, m: int = 10,
                 safeguard: float | None = 10.0, return_image: bool = True,
                 exact_prefix: bool = True, divergence_factor: float = 1e4):
        super().__init__(tol, max_rounds, divergence_factor)
        if m < 1:
            raise ValueError("m must be at least 1")
        self.m, self.safeguard, self.return_image = m, safeguard, return_image
        self.exact_prefix = exact_prefix

    def solve(self, f, z0, callback=None) -> SolverReport:
        loop = RoundLoop(self, f, z0, callback)
        us: list[Tensor] = []
        vs: list[Tensor] = []

        def apply_h(x: Tensor) -> Tensor:  # H x
            out = -x
            for u, v in zip(us, vs):
                out = out + u * torch.dot(v, x)
            return out

        def apply_ht(x: Tensor) -> Tensor:  # Hᵀ x
            out = -x
            for u, v in zip(us, vs):
                out = out + v * torch.dot(u, x)
            return out

        z = z0.reshape(-1)
        rows, width = int(z0.shape[0]), z0[0].numel()
        exact = 0          # rows of z known exact (with exact_prefix)
        last_fx_exact = 0  # rows of the last accepted F(z) known exact
        last = None  # (z, g, F(z)) of the last accepted iterate
        best = float("inf")
        fallbacks = streak = 0
        status = Status.MAX_ROUNDS
        while not loop.exhausted:
            fz, residual, diverged = loop.evaluate(z.view_as(z0))
            fz = fz.reshape(-1)
            rejected = diverged or (self.safeguard is not None and residual > self.safeguard * best)
            if rejected and self.safeguard is not None and last is not None and streak < 2:
                fallbacks += 1
                streak += 1  # a Picard step that fails again twice in a row is divergence
                us.clear()
                vs.clear()
                z, exact = last[2], last_fx_exact  # Picard step from the last good iterate
                continue
            streak = 0
            if diverged:
                return loop.report(z.view_as(z0), Status.DIVERGED, safeguard_fallbacks=fallbacks)
            best = min(best, residual)
            g = fz - z
            if last is not None:
                dz, dg = z - last[0], g - last[1]
                h_dg = apply_h(dg)
                ht_dz = apply_ht(dz)
                denom = torch.dot(dz, h_dg)
                if torch.isfinite(denom) and denom.abs() > 1e-30:
                    us.append((dz - h_dg) / denom)
                    vs.append(ht_dz)
                    del us[:-self.m], vs[:-self.m]
            last = (z, g, fz)
            last_fx_exact = min(exact + 1, rows)   # row j of F(z) is exact when rows < j of z are
            if self.exact_prefix and last_fx_exact == rows:   # F(z) is the sequential answer
                status = Status.CONVERGED
                loop.info["exact"] = True
                break
            if residual < self.tol:
                status = Status.CONVERGED
                break
            z = z - apply_h(g)
            if self.exact_prefix:
                cut = last_fx_exact * width
                z = torch.cat([fz[:cut], z[cut:]])
                exact = last_fx_exact
        use_image = self.return_image or loop.info.get("exact")
        solution = last[2] if (use_image and last is not None) else (last[0] if last else z)
        return loop.report(solution.view_as(z0), status, exact=bool(loop.info.get("exact")),
                           safeguard_fallbacks=fallbacks)
