"""Colorization: observe a weighted grey image."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Operator

__all__ = ["Colorization", "BT601"]

#: ITU-R BT.601 luma weights (what most "grey" conversions use, PIL's ``convert("L")`` included).
BT601 = (0.299, 0.587, 0.114)


class Colorization(Operator):
    """A x = Σ_c w_c x_c (one grey channel); A† y = w y / ‖w‖² (exact Moore–Penrose).

    With the default equal weights w = (1/3, 1/3, 1/3), A is the channel mean and A† copies y to
    every channel, as in DDNM.

    Args:
        weights: one weight per channel (e.g. ITU-R BT.601 luma ``(0.299, 0.587, 0.114)``,
            available as :data:`BT601`).
    """

    full_row_rank = True

    def __init__(self, weights=(1 / 3, 1 / 3, 1 / 3)):
        super().__init__()
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.dim() != 1 or w.numel() < 1 or not torch.isfinite(w).all() or float(w.norm()) == 0:
            raise ValueError(f"weights must be a non-zero finite 1-D sequence, got {weights!r}")
        self.register_buffer("weights", w)
        # A Aᵀ = ‖w‖² I: the one non-zero singular value (per pixel) is ‖w‖.
        self.singular_value = float(w.norm())

    def y_shape(self, image_shape):
        c, h, w = image_shape
        if c != self.weights.numel():
            raise ValueError(f"colorization with {self.weights.numel()} weights does not fit an image "
                             f"with {c} channels")
        return (1, h, w)

    def A(self, x: Tensor) -> Tensor:
        self.check_image(x)
        w = self.weights.to(x.dtype).view(1, -1, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)

    def A_pinv(self, y: Tensor) -> Tensor:
        self._check_observation_channels(y)
        w = self.weights.to(y.dtype)
        return y * (w / w.square().sum()).view(1, -1, 1, 1)

    def A_adjoint(self, y: Tensor) -> Tensor:
        self._check_observation_channels(y)
        return y * self.weights.to(y.dtype).view(1, -1, 1, 1)

    @staticmethod
    def _check_observation_channels(y: Tensor) -> None:
        if y.dim() != 4 or y.shape[1] != 1:
            raise ValueError(f"a colorization observation has shape (N, 1, H, W), got {tuple(y.shape)}")

    def extra_repr(self) -> str:
        return f"weights={tuple(round(float(v), 4) for v in self.weights)}"
