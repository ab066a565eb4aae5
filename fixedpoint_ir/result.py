"""What a restoration returns: the image, every state, and how it was obtained."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .cost import Choice
from .memory import MemoryPlan
from .solver import SolverReport, Status, describe_status

__all__ = ["Result"]


@dataclass
class Result:
    """A restoration: the image (N, C, H, W), all states (T, N, C, H, W) and how it was obtained.

    ``nfe`` counts network evaluations per image; ``rounds`` is the parallel depth (calls of F, or
    T steps for the sequential sampler); ``seconds`` is wall-clock. ``status``: ``converged`` is
    certified (the image within tol of the sequential chain; the sequential sampler is the chain
    itself), ``stopped`` is a solver's own stop that could not be certified (see
    :class:`~fixedpoint_ir.solver.Status`).
    """

    image: Tensor
    states: Tensor
    rounds: int
    nfe: int
    seconds: float
    status: Status
    residuals: list[float] = field(default_factory=list)
    report: SolverReport | None = None
    choice: Choice | None = None          # what solver="auto" ran and why
    memory: MemoryPlan | None = None      # the chunk size and predicted peak

    @property
    def converged(self) -> bool:
        return self.status is Status.CONVERGED

    @property
    def sequential(self) -> bool:
        """Whether the image came from the sequential chain (no solver)."""
        return self.report is None

    def summary(self) -> str:
        if self.sequential:
            text = (f"{self.status.value} (sequential chain): {self.rounds} steps, {self.nfe} network "
                    f"evaluations per image, {self.seconds:.2f} s")
        else:
            text = (f"{describe_status(self.status)}: {self.rounds} rounds, {self.nfe} network "
                    f"evaluations per image, {self.seconds:.2f} s")
            if self.report.image_error is not None:
                text += f", image error {self.report.image_error:.2g}"
                text += " (exact)" if self.report.image_error == 0 else " (estimated)"
        if self.choice is not None:
            text += f"; {self.choice.describe()}"
        return text
