"""Picard iteration z ← F(z): exact after T rounds on a strictly lower-triangular map."""
from __future__ import annotations

from fixedpoint_ir.solver import FixedPointSolver, SolverReport, Status, register_solver

from ._loop import RoundLoop

__all__ = ["Picard"]


@register_solver("picard")
class Picard(FixedPointSolver):
    """Plain fixed-point iteration.

    After k rounds the first k rows are exact (row j of F depends only on rows < j), so after
    T = number of rows rounds the iterate is the fixed point; ``exact_after_rows`` reports
    convergence then even when the residual test has not fired yet. A stop on the residual
    (< tol) before that is certified by the image estimate, else reported as ``stopped``.
    """

    name = "picard"

    def __init__(self, tol: float = 1e-3, max_rounds: int | None = None, exact_after_rows: bool = True,
                 divergence_factor: float = 1e4):
        super().__init__(tol, max_rounds, divergence_factor)
        self.exact_after_rows = exact_after_rows

    def solve(self, f, z0, callback=None) -> SolverReport:
        loop = RoundLoop(self, f, z0, callback)
        z = z0
        while not loop.exhausted:
            fz, residual, diverged = loop.evaluate(z)
            if diverged:
                return loop.report(z, Status.DIVERGED)
            z = fz
            if self.exact_after_rows and loop.rounds >= loop.num_rows:
                return loop.report(z, Status.CONVERGED, exact=True)
            if residual < self.tol:
                return loop.report(z, Status.CONVERGED)
        return loop.report(z, Status.MAX_ROUNDS)
