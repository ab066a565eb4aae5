"""Priors with an exact ε: the right tool for tests and convergence benchmarks (DESIGN §7)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Prior

__all__ = ["GaussianMixturePrior", "GaussianPrior"]


class GaussianMixturePrior(Prior):
    """Per-pixel data distribution x0 ~ ½N(+μ, v) + ½N(−μ, v), with its exact ε.

    With ab = ᾱ_t and S = ab·v + 1 − ab the posterior mean of the noise is

        ε(x, t) = √(1−ab)/S · (x − √ab · μ · tanh(√ab · μ · x / S)).

    ``mu`` and ``var`` may be scalars or tensors broadcastable to an image (C, H, W).
    """

    def __init__(self, mu: float | Tensor = 0.5, var: float | Tensor = 0.05,
                 alphas_cumprod: Tensor | None = None, max_batch: int | None = None):
        super().__init__(alphas_cumprod, max_batch)
        var = torch.as_tensor(var, dtype=torch.float64)
        if not torch.isfinite(var).all() or (var < 0).any():
            raise ValueError("var must be finite and non-negative")
        mu = torch.as_tensor(mu, dtype=torch.float64)
        if not torch.isfinite(mu).all():
            raise ValueError("mu must be finite")
        self.register_buffer("mu", mu)
        self.register_buffer("var", var)

    def predict_eps(self, x: Tensor, t: Tensor) -> Tensor:
        ab = self.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1, 1)
        mu, var = self.mu.to(x.dtype), self.var.to(x.dtype)
        s = ab * var + 1.0 - ab
        mean_x0_part = ab.sqrt() * mu * torch.tanh(ab.sqrt() * mu * x / s)
        return (1.0 - ab).sqrt() / s * (x - mean_x0_part)


class GaussianPrior(GaussianMixturePrior):
    """x0 ~ N(mean, var) per pixel: ε(x, t) = √(1−ab)/S · (x − √ab · mean), S = ab·var + 1 − ab.

    The posterior of a linear observation of such data is Gaussian too, which gives closed-form
    answers for noisy restoration tests.
    """

    def __init__(self, mean: float | Tensor = 0.0, var: float | Tensor = 0.1,
                 alphas_cumprod: Tensor | None = None, max_batch: int | None = None):
        super().__init__(mu=0.0, var=var, alphas_cumprod=alphas_cumprod, max_batch=max_batch)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))

    def predict_eps(self, x: Tensor, t: Tensor) -> Tensor:
        ab = self.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1, 1)
        s = ab * self.var.to(x.dtype) + 1.0 - ab
        return (1.0 - ab).sqrt() / s * (x - ab.sqrt() * self.mean.to(x.dtype))
