"""Image quality metrics, with the conventions of DESIGN §8.

Inputs are images in the library's [-1, 1] convention, shaped (C, H, W) or (N, C, H, W); they are
mapped to [0, 1] and clamped before any metric (what a saved 8-bit file would hold, up to
rounding). One image gives a float, a batch a tensor of shape (N,).

* **PSNR**: 10·log10(1 / MSE) over all pixels and channels, on [0, 1] (``inf`` for identical
  images).
* **SSIM**: pinned to ONE implementation, because packages disagree by up to 0.04 on the same
  pair: scikit-image's ``structural_similarity(data_range=1, channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` — the setting of Wang et al.
  (2004): an 11×11 Gaussian window of σ = 1.5, K1 = 0.01, K2 = 0.03, population covariances,
  the mean SSIM per channel averaged over the channels. Images must be at least 11×11.
* **consistency**: the RMS of A x − y on the [0, 1] scale, ‖A x − y‖₂ / (2·√m) for an observation
  with m entries — how well a restoration explains its observation.
* **LPIPS / FID** are not implemented: both need backbone weights (AlexNet/VGG, Inception) that
  ship in no wheel, and this project never downloads anything. Users who have the weights can
  compute them on the written PNGs with their own tools.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["psnr", "ssim", "consistency", "SSIM_SETTINGS"]

#: The keyword arguments of the one SSIM implementation used everywhere (scikit-image).
SSIM_SETTINGS = dict(data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                     use_sample_covariance=False)


def _pair(x: Tensor, ref: Tensor) -> tuple[Tensor, Tensor, bool]:
    for name, t in (("x", x), ("ref", ref)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    single = x.dim() == 3
    if single:
        x, ref = x.unsqueeze(0), ref.unsqueeze(0) if ref.dim() == 3 else ref
    if x.dim() != 4 or ref.dim() != 4:
        raise ValueError(f"images must have shape (C, H, W) or (N, C, H, W), got {tuple(x.shape)} "
                         f"and {tuple(ref.shape)}")
    if ref.shape[0] == 1 and x.shape[0] > 1:
        ref = ref.expand_as(x)
    if x.shape != ref.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    unit = lambda t: ((t.detach().to("cpu", torch.float64) + 1) / 2).clamp(0, 1)  # noqa: E731
    return unit(x), unit(ref), single


def psnr(x: Tensor, ref: Tensor) -> float | Tensor:
    """PSNR in dB of x against the reference, both in [-1, 1] (compared on [0, 1] after clamping)."""
    a, b, single = _pair(x, ref)
    mse = (a - b).square().flatten(1).mean(1)
    out = torch.where(mse > 0, -10 * torch.log10(mse), torch.full_like(mse, math.inf))
    return float(out[0]) if single else out


def ssim(x: Tensor, ref: Tensor) -> float | Tensor:
    """SSIM of x against the reference (see the module docstring for the pinned setting)."""
    from skimage.metrics import structural_similarity

    a, b, single = _pair(x, ref)
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM with an 11x11 Gaussian window needs images of at least 11x11 pixels, "
                         f"got {a.shape[-2]}x{a.shape[-1]}")
    values = []
    for ai, bi in zip(a, b):
        values.append(structural_similarity(ai.permute(1, 2, 0).numpy(), bi.permute(1, 2, 0).numpy(),
                                            **SSIM_SETTINGS))
    out = torch.tensor(np.asarray(values, dtype=np.float64))
    return float(out[0]) if single else out


def consistency(operator, x: Tensor, y: Tensor) -> float | Tensor:
    """RMS of A x − y on the [0, 1] scale (x in [-1, 1], clamped first, like a saved image)."""
    single = x.dim() == 3
    if single:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    xc = x.detach().clamp(-1, 1)
    with torch.no_grad():
        r = (operator.A(xc.to(y.dtype)) - y).to(torch.float64).flatten(1)
    out = r.square().mean(1).sqrt() / 2
    return float(out[0]) if single else out
