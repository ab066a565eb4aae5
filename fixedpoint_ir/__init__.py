"""fixedpoint-ir: diffusion-based image restoration as one parallel fixed-point solve (DeqIR).

The layout mirrors the data flow: ``operators`` (degradations) → ``Sampler`` builds the chain map
F from a ``Prior`` → a solver from ``backends`` iterates F → a ``Result``.

The names below are imported on first use (PEP 562), so that ``import fixedpoint_ir.cli`` — the
command line — can answer ``--help`` and argument errors without importing torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name → the module that defines it
_EXPORTS = {
    "Sampler": ".sampler", "Result": ".sampler", "Chain": ".chain",
    "Prior": ".priors", "ModulePrior": ".priors", "GaussianMixturePrior": ".priors", "GaussianPrior": ".priors",
    "FixedPointSolver": ".solver", "SolverReport": ".solver", "SolverDivergedError": ".solver",
    "Status": ".solver", "get_solver": ".solver", "register_solver": ".solver",
    "available_solvers": ".solver",
    "Picard": ".backends", "Anderson": ".backends", "Broyden": ".backends", "TorchDEQ": ".backends",
    "Triangular": ".backends", "ParaDiGMS": ".backends", "ParaTAA": ".backends",
    "StepCoefficients": ".schedule", "uniform_timesteps": ".schedule",
    "WhiteGaussian": ".surrogate", "PowerLawGaussian": ".surrogate",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fixedpoint_ir' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value   # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
