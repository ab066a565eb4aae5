"""Denoising: A = I, A† = I."""
from __future__ import annotations

from torch import Tensor

from .base import Operator

__all__ = ["Identity"]


class Identity(Operator):
    """A = I (denoising). With σ_y = 0 the restoration is y itself."""

    def A(self, x: Tensor) -> Tensor:
        return x

    def A_pinv(self, y: Tensor) -> Tensor:
        return y

    def y_shape(self, image_shape):
        return tuple(image_shape)
