"""Bookkeeping shared by the backends: counting rounds, residual traces, callbacks, divergence, and
the certificate that turns a stop into "converged" (the image within tol of the sequential chain)
or "stopped" (not certified)."""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from fixedpoint_ir.solver import (FixedPointSolver, RoundInfo, SolverReport, Status, image_error_estimate,
                                  relative_residual)


class RoundLoop:
    """Calls F, records the relative residual of each round, runs the callback.

    It also keeps the last few images (row T−1 of each F(z)): :meth:`report` certifies a stop with
    them (:func:`~fixedpoint_ir.solver.image_error_estimate`).
    """

    KEPT_IMAGES = 4

    def __init__(self, solver: FixedPointSolver, f: Callable[[Tensor], Tensor], z0: Tensor,
                 callback: Callable[[RoundInfo], None] | None):
        self.solver, self.f, self.callback = solver, f, callback
        self.limit = solver.round_limit(z0)
        self.num_rows = int(z0.shape[0])
        self.rounds = 0
        self.residuals: list[float] = []
        self.images: list[Tensor] = []
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
        self.images = self.images[-(self.KEPT_IMAGES - 1):] + [fz[-1].detach().clone()]
        if self.callback is not None:
            self.callback(RoundInfo(self.rounds, residual, z, fz, extra))
        return fz, residual, diverged

    def report(self, solution: Tensor, status: Status, exact: bool = False, **info) -> SolverReport:
        """The report; a CONVERGED stop that is not ``exact`` (the sequential answer by
        construction) is certified by the image estimate, else reported as STOPPED."""
        self.info.update(info)
        if exact:
            self.info["exact"] = True
        if status in (Status.CONVERGED, Status.MAX_ROUNDS):
            error = 0.0 if exact else image_error_estimate(self.images, solution[-1])
            self.info["image_error"] = error
            if status is Status.CONVERGED and error > self.solver.tol:
                status = Status.STOPPED
        return SolverReport(solution, self.rounds, self.residuals, status, self.info)
