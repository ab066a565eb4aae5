"""Priors: ε-networks with their noise schedules.

``Prior.default()`` loads the shipped small U-Net; ``Prior.from_checkpoint(path)`` loads the
public ADM / DDPM / diffusers checkpoints (see ``checkpoints.load_prior``).
"""
from .analytic import GaussianMixturePrior, GaussianPrior
from .base import ModulePrior, Prior


def __getattr__(name):  # heavy modules load on first use
    if name in ("load_prior", "CheckpointError"):
        from . import checkpoints

        return getattr(checkpoints, name)
    if name == "default_prior":
        from .default import default_prior

        return default_prior
    if name == "SmallUNet":
        from .small_unet import SmallUNet

        return SmallUNet
    raise AttributeError(name)


__all__ = ["Prior", "ModulePrior", "GaussianMixturePrior", "GaussianPrior", "load_prior",
           "CheckpointError", "default_prior", "SmallUNet"]
