"""Noisy observations y = A x + σ_y n and the σ_y-aware correction used by the sampler."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .base import Operator

__all__ = ["degrade", "make_correction", "make_noise_scaling"]


def degrade(x: Tensor, operator: Operator, sigma_y: float = 0.0,
            generator: torch.Generator | None = None) -> Tensor:
    """The observation y = A x + σ_y n, n ~ N(0, I), of a batch of images x (N, C, H, W).

    Images are in [-1, 1], so σ_y is on that scale (σ_y = 0.1 is 0.05 on [0, 1]). The noise is
    drawn from ``generator`` in the dtype and on the device of x.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a tensor of shape (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf")
    if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)) or not math.isfinite(sigma_y) \
            or sigma_y < 0:
        raise ValueError(f"sigma_y must be a finite non-negative number, got {sigma_y!r}")
    with torch.no_grad():
        y = operator.A(x)
        if sigma_y > 0:
            y = y + float(sigma_y) * torch.randn(y.shape, generator=generator, dtype=y.dtype,
                                                 device=y.device)
    return y


def make_correction(operator: Operator, y: Tensor, sigma_y: float, coefficients) -> Callable[[Tensor, int], Tensor]:
    """The chain's correction hook ``(x0, j) -> x0'`` for an observation with noise σ_y.

    σ_y = 0: DDNM's x0 − A†(A x0 − y). σ_y > 0: DDNM+ (:meth:`Operator.noisy_consistency`) with,
    for row j, σ_j = √(1 − b_j) and a_j = √b_j, the noise level and signal scale of the state
    the step goes to (b_j = ᾱ_{s_j} from ``coefficients``).
    """
    if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)) or not math.isfinite(sigma_y) \
            or sigma_y < 0:
        raise ValueError(f"sigma_y must be a finite non-negative number, got {sigma_y!r}")
    if sigma_y == 0:
        return lambda x0, j: operator.data_consistency(x0, y)
    b = coefficients.b.tolist()
    sig = [math.sqrt(max(0.0, 1.0 - v)) for v in b]
    amp = [math.sqrt(v) for v in b]
    return lambda x0, j: operator.noisy_consistency(x0, y, sig[j], amp[j], float(sigma_y))


def make_noise_scaling(operator: Operator, sigma_y: float, coefficients) -> Callable[[Tensor, int], Tensor]:
    """The DDNM+ hook ``(v, j) -> v'`` rescaling the step's noise term v = c2·e + c1·ξ of row j in
    the range space (:meth:`Operator.noisy_noise_scaling`), same σ_j, a_j as
    :func:`make_correction`. The identity when σ_y = 0."""
    if sigma_y == 0:
        return lambda v, j: v
    b = coefficients.b.tolist()
    sig = [math.sqrt(max(0.0, 1.0 - v)) for v in b]
    amp = [math.sqrt(v) for v in b]
    return lambda v, j: operator.noisy_noise_scaling(v, sig[j], amp[j], float(sigma_y))
