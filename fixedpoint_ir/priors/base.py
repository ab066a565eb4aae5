"""The Prior interface: a noise-prediction network ε_θ(x, t) together with its noise schedule."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from ..schedule import alphas_cumprod_from_betas, check_alphas_cumprod, linear_betas

__all__ = ["Prior", "ModulePrior"]


class Prior(nn.Module, ABC):
    """ε_θ(x, t) for a batch of images, with the schedule it was trained on.

    Subclasses implement :meth:`predict_eps` for one chunk; :meth:`eps` validates the input and
    splits a large batch into chunks of at most ``max_batch`` images, so that a solver round over
    T states never needs more memory than the user allows.

    Args:
        alphas_cumprod: ᾱ_t for t = 0..N−1 (1-D, strictly decreasing). Defaults to the linear
            β schedule 1e-4…0.02 over 1000 steps of the public ADM / DDPM checkpoints.
        max_batch: largest number of images per network call (``None``: no limit).

    ``surrogate`` (default ``None``) may hold a Gaussian model of the prior's data
    (:mod:`fixedpoint_ir.surrogate`); samplers use it for free initial guesses and Jacobian models.
    """

    surrogate = None

    def __init__(self, alphas_cumprod: Tensor | None = None, max_batch: int | None = None):
        super().__init__()
        if alphas_cumprod is None:
            alphas_cumprod = alphas_cumprod_from_betas(linear_betas())
        self.register_buffer("alphas_cumprod", check_alphas_cumprod(alphas_cumprod), persistent=False)
        self.max_batch = max_batch

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    @max_batch.setter
    def max_batch(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"max_batch must be a positive int or None, got {value!r}")
        self._max_batch = value

    @property
    def num_train_steps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @abstractmethod
    def predict_eps(self, x: Tensor, t: Tensor) -> Tensor:
        """ε for one chunk: x of shape (N, C, H, W), t an int64 tensor of shape (N,)."""

    def check_input(self, x: Tensor, t) -> Tensor:
        """Validate a network input; returns t as an int64 tensor of shape (N,)."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, C, H, W), got {shape}")
        t = torch.as_tensor(t, device=x.device)
        if t.dtype.is_floating_point and not torch.equal(t, t.round()):
            raise ValueError("t must hold integer timesteps")
        t = t.to(torch.long)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},) to match x, got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_steps):
            raise ValueError(f"t must lie in [0, {self.num_train_steps}), got values in "
                             f"[{int(t.min())}, {int(t.max())}]")
        return t

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        """ε_θ(x, t) for x of shape (N, C, H, W) and integer timesteps t of shape (N,) or ()."""
        t = self.check_input(x, t)
        chunk = self.max_batch or max(x.shape[0], 1)
        if x.shape[0] <= chunk:
            return self.predict_eps(x, t)
        return torch.cat([self.predict_eps(xc, tc) for xc, tc in zip(x.split(chunk), t.split(chunk))])

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.eps(x, t)

    @staticmethod
    def from_checkpoint(path, **kwargs) -> "Prior":
        """A prior from a checkpoint file or folder (ADM, DDPM, diffusers, plain state dicts).

        See :func:`fixedpoint_ir.priors.checkpoints.load_prior` for the formats and options.
        """
        from .checkpoints import load_prior

        return load_prior(path, **kwargs)

    @staticmethod
    def default(device=None, max_batch: int | None = None) -> "Prior":
        """The shipped default prior (a small U-Net trained on shipped photos; any image size)."""
        from .default import default_prior

        return default_prior(device=device, max_batch=max_batch)


class ModulePrior(Prior):
    """Turn any ε-network ``module(x, t)`` into a :class:`Prior`.

    Networks with a learned variance (guided-diffusion's ``learn_sigma``) output 2C channels; only
    the first ``channels`` (the ε part) are kept. The network runs in its own dtype (float16 or
    bfloat16 are fine); its output is returned in the dtype of ``x`` so that the chain stays in
    float32 / float64.

    Args:
        module: callable ``module(x, t) -> Tensor`` of shape (N, ≥C, H, W).
        alphas_cumprod, max_batch: see :class:`Prior`.
        channels: number of ε channels to keep (default: the input's channel count).
        image_size: (H, W) the network was built for, or ``None`` for fully convolutional ones.
    """

    def __init__(self, module: nn.Module, alphas_cumprod: Tensor | None = None,
                 max_batch: int | None = None, channels: int | None = None,
                 image_size: tuple[int, int] | None = None):
        super().__init__(alphas_cumprod, max_batch)
        self.module = module
        self.channels = channels
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)

    def _module_dtype(self) -> torch.dtype | None:
        for p in self.module.parameters():
            if p.is_floating_point():
                return p.dtype
        return None

    def predict_eps(self, x: Tensor, t: Tensor) -> Tensor:
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"this network was built for {self.image_size[0]}x{self.image_size[1]} "
                             f"images, got {x.shape[-2]}x{x.shape[-1]}; use tiling for other sizes")
        dtype = self._module_dtype() or x.dtype
        out = self.module(x.to(dtype), t)
        channels = self.channels or x.shape[1]
        if out.dim() != 4 or out.shape[0] != x.shape[0] or out.shape[1] < channels \
                or out.shape[2:] != x.shape[2:]:
            raise ValueError(f"the network returned shape {tuple(out.shape)}, expected "
                             f"({x.shape[0]}, >={channels}, {x.shape[2]}, {x.shape[3]})")
        return out[:, :channels].to(x.dtype)
