"""fixedpoint-ir: diffusion-based image restoration as one parallel fixed-point solve (DeqIR).

The layout mirrors the data flow: ``operators`` (degradations) → ``Sampler`` builds the chain map
F from a ``Prior`` → a solver from ``backends`` iterates F → a ``Result``.
"""
from .chain import Chain
from .priors import GaussianMixturePrior, GaussianPrior, ModulePrior, Prior
from .sampler import Result, Sampler
from .schedule import StepCoefficients, uniform_timesteps
from .surrogate import PowerLawGaussian, WhiteGaussian
from .solver import (FixedPointSolver, SolverDivergedError, SolverReport, Status, available_solvers,
                     get_solver, register_solver)

__all__ = [
    "Sampler", "Result", "Chain", "Prior", "ModulePrior", "GaussianMixturePrior", "GaussianPrior",
    "FixedPointSolver", "SolverReport", "SolverDivergedError", "Status", "get_solver",
    "register_solver", "available_solvers", "StepCoefficients", "uniform_timesteps",
    "WhiteGaussian", "PowerLawGaussian",
]
__version__ = "0.1.0"
