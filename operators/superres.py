"""Super-resolution operators."""
from __future__ import annotations

import torch.nn.functional as F
from einops import repeat
from torch import Tensor

from .base import Operator, _check_positive_int

__all__ = ["AveragePool"]


class AveragePool(Operator):
    """A = average of each factor×factor block; A† replicates each low-resolution pixel.

    A Aᵀ = I / factor², so A† = factor² Aᵀ = block replication (exact Moore–Penrose).
    """

    def __init__(self, factor: int):
        super().__init__()
        self.factor = _check_positive_int(factor, "factor")

    def y_shape(self, image_shape):
        c, h, w = image_shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"scale factor {self.factor} does not divide the image size {h}x{w}")
        return (c, h // self.factor, w // self.factor)

    def A(self, x: Tensor) -> Tensor:
        self.check_image(x)
        return F.avg_pool2d(x, self.factor)

    def A_pinv(self, y: Tensor) -> Tensor:
        return repeat(y, "n c h w -> n c (h f1) (w f2)", f1=self.factor, f2=self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
