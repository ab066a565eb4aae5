"""Bookkeeping shared by the backends: counting rounds, residual traces, callbacks, divergence."""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from fixedpoint_ir.solver import FixedPointSolver, RoundInfo, SolverReport, Status, relative_residual


class RoundLoop:
    """Calls F, records the relative residual of each round, runs the callback."""

    def __init__(self, solver: FixedPointSolver, f: Callable[[Tensor], Tensor], z0: Tensor,
                 callback: Callable[[RoundInfo], None] | None):
        self.solver, self.f, self.callback = solver, f, callback
        self.limit = solver.round_limit(z0)
        self.num_rows = int(z0.shape[0])
        self.rounds = 0
        self.residuals: list[float] = []
        self.info: dict = {}

    @property
    def exhausted(self) -> bool:
        return self.rounds >= self.limit

    def evaluate(self, z: Tensor, **extra) -> tuple[Tensor, float, bool]:
        """F(z), its relative residual, and whether this round diverged."""
        fz = self.f(z)
        self.rounds += 1
        residual = relative_residual(fz, z)
        diverged = self.solver._diverged(fz, residual, self.residuals)
        self.residuals.append(residual)
        if self.callback is not None:
            self.callback(RoundInfo(self.rounds, residual, z, fz, extra))
        return fz, residual, diverged

    def report(self, solution: Tensor, status: Status, **info) -> SolverReport:
        self.info.update(info)
        return SolverReport(solution, self.rounds, self.residuals, status, self.info)
