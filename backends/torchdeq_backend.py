"""torchdeq's solvers (anderson, broyden, fixed_point_iter) on the chain as ONE system.

torchdeq treats axis 0 as a batch of independent systems and stops on the largest per-row
residual, so the chain of shape (T, N, C, H, W) is passed as a single row of shape (1, T·N·C·H·W)
(DESIGN §4). Its 'rel' stop mode, ‖F(z) − z‖ / ‖F(z)‖, matches our relative residual up to the
1e-5 in the denominator.
"""
from __future__ import annotations

from fixedpoint_ir.solver import FixedPointSolver, SolverReport, Status, register_solver

from ._loop import RoundLoop

__all__ = ["TorchDEQ"]

METHODS = ("anderson", "broyden", "fixed_point_iter")


@register_solver("torchdeq")
class TorchDEQ(FixedPointSolver):
    """Any torchdeq solver by name; extra keyword arguments go to it (e.g. ``m``, ``lam``)."""

    name = "torchdeq"

    def __init__(self, method: str = "anderson", tol: float = 1e-3, max_rounds: int | None = None,
                 divergence_factor: float = 1e4, **solver_kwargs):
        super().__init__(tol, max_rounds, divergence_factor)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.solver_kwargs = solver_kwargs

    def solve(self, f, z0, callback=None) -> SolverReport:
        from torchdeq.solver import get_solver  # optional at import time of the package

        loop = RoundLoop(self, f, z0, callback)
        state = {"diverged": False}

        def f_flat(v):
            if loop.exhausted or state["diverged"]:  # torchdeq may ask for more calls than allowed
                return v
            fz, _, diverged = loop.evaluate(v.view_as(z0))
            state["diverged"] |= diverged
            return fz.reshape(1, -1)

        solution, _, info = get_solver(self.method)(
            f_flat, z0.reshape(1, -1), max_iter=loop.limit, tol=self.tol, stop_mode="rel",
            **self.solver_kwargs)
        solution = solution.view_as(z0)
        if state["diverged"]:
            return loop.report(solution, Status.DIVERGED)
        lowest = float(info["rel_lowest"].max()) if "rel_lowest" in info else min(loop.residuals)
        status = Status.CONVERGED if lowest < self.tol else Status.MAX_ROUNDS
        return loop.report(solution, status, torchdeq_rel_lowest=lowest)
