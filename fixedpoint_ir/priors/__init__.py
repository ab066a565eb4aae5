"""Priors: ε-networks with their noise schedules."""
from .analytic import GaussianMixturePrior, GaussianPrior
from .base import ModulePrior, Prior

__all__ = ["Prior", "ModulePrior", "GaussianMixturePrior", "GaussianPrior"]
