"""The FixedPointSolver interface, its report, and the name → solver registry.

A solver finds z with z = F(z) for a map F that is strictly lower triangular along axis 0 of z
(row j of F(z) depends only on rows < j of z). Generic solvers only call ``f(z)``; the
structure-aware ``Triangular`` solver uses the recurrence behind F (``step``, ``eps_at``,
``surrogate_eps``: see ``backends/triangular.py``). Solvers never know about images or diffusion.
"""
from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = [
    "Status", "SolverReport", "FixedPointSolver", "RoundInfo", "SolverDivergedError",
    "register_solver", "get_solver", "available_solvers", "relative_residual",
]


class Status(str, enum.Enum):
    CONVERGED = "converged"
    STOPPED = "stopped"
    MAX_ROUNDS = "max_rounds"
    DIVERGED = "diverged"


class SolverDivergedError(RuntimeError):
    """Raised by the sampler when a solver diverged; ``report`` holds the solver's report."""

    def __init__(self, message: str, report: "SolverReport"):
        super().__init__(message)
        self.report = report


@dataclass
class RoundInfo:
    """What a callback sees after each round (one call of F)."""

    round: int
    residual: float
    z: Tensor
    fz: Tensor
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SolverReport:
    """Outcome of a solve.

    solution: the returned iterate; rounds: calls of F (parallel depth); residuals: the relative
    residual ‖F(z) − z‖ / (1e-5 + ‖F(z)‖) after each round; status: converged (certified: the
    image within tol of the sequential chain) / stopped (the solver's own rule fired, which cannot
    certify that) / max_rounds / diverged; info: solver-specific extras (e.g. safeguard fallbacks, rows evaluated);
    round_times: per round, seconds of ``network`` calls, ``replay``, ``bookkeeping`` (the rest)
    and ``total`` (filled by the sampler from the chain's timers).
    """

    solution: Tensor
    rounds: int
    residuals: list[float]
    status: Status
    info: dict[str, Any] = field(default_factory=dict)
    round_times: list[dict[str, float]] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.status is Status.CONVERGED

    def time_split(self) -> dict[str, float]:
        """Seconds summed over the rounds: network, replay, bookkeeping, total."""
        keys = ("network", "replay", "bookkeeping", "total")
        return {k: sum(r.get(k, 0.0) for r in self.round_times) for k in keys}


def relative_residual(fz: Tensor, z: Tensor) -> float:
    """‖F(z) − z‖_F / (1e-5 + ‖F(z)‖_F) over the whole chain (the published stopping rule)."""
    return float((fz - z).norm() / (1e-5 + fz.norm()))


def _is_finite(x: Tensor) -> bool:
    return bool(torch.isfinite(x).all())


class FixedPointSolver(ABC):
    """Base class: ``solve(f, z0, callback=None) -> SolverReport``.

    Args:
        tol: stop when the relative residual falls below it.
        max_rounds: most calls of F; ``None`` means the number of rows T (after T rounds of a
            strictly lower-triangular map, Picard is exact).
        divergence_factor: a residual this many times the first one (or NaN/Inf) is divergence.
    """

    name: str = "solver"

    def __init__(self, tol: float = 1e-3, max_rounds: int | None = None,
                 divergence_factor: float = 1e4):
        if not (isinstance(tol, (int, float)) and tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {tol!r}")
        if max_rounds is not None and (isinstance(max_rounds, bool) or not isinstance(max_rounds, int)
                                       or max_rounds < 1):
            raise ValueError(f"max_rounds must be a positive int or None, got {max_rounds!r}")
        self.tol = float(tol)
        self.max_rounds = max_rounds
        self.divergence_factor = float(divergence_factor)

    def round_limit(self, z0: Tensor) -> int:
        return self.max_rounds if self.max_rounds is not None else int(z0.shape[0])

    @abstractmethod
    def solve(self, f: Callable[[Tensor], Tensor], z0: Tensor,
              callback: Callable[[RoundInfo], None] | None = None) -> SolverReport:
        """Find z = f(z) starting from z0."""

    def _diverged(self, fz: Tensor, residual: float, residuals: list[float]) -> bool:
        if not _is_finite(fz) or not math.isfinite(residual):
            return True
        return bool(residuals) and residual > self.divergence_factor * max(residuals[0], 1e-12)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


_REGISTRY: dict[str, Callable[..., FixedPointSolver]] = {}


def register_solver(name: str):
    """Class decorator: make a solver constructible by name (``Sampler(solver="name")``)."""

    def decorate(cls):
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_solvers() -> list[str]:
    import fixedpoint_ir.backends  # noqa: F401  (registers the built-in backends)

    return sorted(_REGISTRY)


def get_solver(solver: str | FixedPointSolver, **kwargs) -> FixedPointSolver:
    """A solver instance from an instance (returned as is) or a registered name."""
    if isinstance(solver, FixedPointSolver):
        if kwargs:
            raise ValueError("options can only be given with a solver name, not an instance")
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a name or a FixedPointSolver, got {type(solver).__name__}")
    names = available_solvers()
    if solver not in _REGISTRY:
        raise ValueError(f"unknown solver {solver!r}; known solvers: {', '.join(names)}")
    return _REGISTRY[solver](**kwargs)
