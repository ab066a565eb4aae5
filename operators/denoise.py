"""Denoising: A = I, A† = I."""
from __future__ import annotations

from torch import Tensor

from .base import Operator

__all__ = ["Identity"]


class Identity(Operator):
    """A = I (denoising). With σ_y = 0 the restoration is y itself; use it with ``sigma_y > 0``."""

    singular_value = 1.0
    full_row_rank = True
    full_column_rank = True
    diagonal = True

    def A(self, x: Tensor) -> Tensor:
        return x

    def A_pinv(self, y: Tensor) -> Tensor:
        return y

    def A_adjoint(self, y: Tensor) -> Tensor:
        return y

    def y_shape(self, image_shape):
        return tuple(image_shape)
