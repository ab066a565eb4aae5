"""Super-resolution operators."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor

from .base import Operator, _check_positive_int
from .separable import SeparableOperator

__all__ = ["AveragePool", "Bicubic", "keys_kernel", "bicubic_matrix"]


class AveragePool(Operator):
    """A = average of each factor×factor block; A† replicates each low-resolution pixel.

    A Aᵀ = I / factor², so A† = factor² Aᵀ = block replication (exact Moore–Penrose). Every
    singular value is 1 / factor.
    """

    full_row_rank = True

    def __init__(self, factor: int):
        super().__init__()
        self.factor = _check_positive_int(factor, "factor")
        self.singular_value = 1.0 / self.factor

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

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self.A_pinv(y) / self.factor ** 2

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def keys_kernel(x: Tensor, a: float = -0.5) -> Tensor:
    """The cubic convolution kernel of Keys (1981), W(x), with parameter a (−0.5: the usual bicubic).

    W(x) = (a+2)|x|³ − (a+3)|x|² + 1 for |x| ≤ 1, a|x|³ − 5a|x|² + 8a|x| − 4a for 1 < |x| < 2, else 0.
    """
    x = x.abs()
    inner = (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    outer = a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return torch.where(x <= 1, inner, torch.where(x < 2, outer, torch.zeros_like(x)))


def _reflect(k: int, n: int) -> int:
    """Half-sample symmetric reflection of an index into [0, n): −1 → 0, −2 → 1, n → n − 1."""
    k %= 2 * n
    return k if k < n else 2 * n - 1 - k


def bicubic_matrix(size: int, factor: int, a: float = -0.5) -> Tensor:
    """The 1-D bicubic downsampling matrix (size // factor, size) in float64.

    Output pixel i has its centre at input coordinate c = (i + ½)·factor − ½ (pixel centres, as in
    MATLAB's ``imresize`` and DDRM's ``SRConv``). The Keys kernel is stretched by the factor
    (anti-aliasing): input pixel k gets weight W((k − c) / factor), for the 4·factor taps with
    |k − c| < 2·factor. Boundary: taps outside the image are folded back by half-sample symmetric
    reflection (index −1 reads pixel 0, index H reads pixel H − 1), as MATLAB's ``imresize`` and
    DDRM's ``SRConv`` do. Each row is normalised to sum to 1 (so constants are preserved).
    """
    size = _check_positive_int(size, "size")
    factor = _check_positive_int(factor, "factor")
    if size % factor:
        raise ValueError(f"scale factor {factor} does not divide the size {size}")
    m = size // factor
    out = torch.zeros(m, size, dtype=torch.float64)
    for i in range(m):
        c = (i + 0.5) * factor - 0.5
        ks = torch.arange(math.floor(c - 2 * factor), math.ceil(c + 2 * factor) + 1, dtype=torch.float64)
        w = keys_kernel((ks - c) / factor, a)
        for k, wk in zip(ks.tolist(), w.tolist()):
            if wk != 0.0:
                out[i, _reflect(int(k), size)] += wk
        out[i] /= w.sum()
    return out


class Bicubic(SeparableOperator):
    """Bicubic downsampling by an integer factor: A = A_h ⊗ A_w with :func:`bicubic_matrix` per axis.

    Keys kernel with a = −0.5, stretched by the factor (4·factor taps per axis, anti-aliased),
    half-sample symmetric reflection at the borders, rows normalised to sum 1 (see
    :func:`bicubic_matrix`). A† comes from the SVD of the two 1-D matrices
    (A† = A_h† ⊗ A_w†), computed once per image size in float64 and cached. It is NOT block
    replication: the average-pool and bicubic pseudo-inverses differ.

    Args:
        factor: the integer scale factor (must divide the image height and width).
        a: the Keys parameter (−0.5 is the bicubic of MATLAB, PIL and DDRM / DDNM).
        threshold: relative truncation level of the singular values (see
            :class:`~fixedpoint_ir.operators.separable.SeparableOperator`); the bicubic matrices
            are well conditioned, so the default 1e-6 truncates nothing in practice.
    """

    def __init__(self, factor: int, a: float = -0.5, threshold: float = 1e-6):
        super().__init__(threshold)
        self.factor = _check_positive_int(factor, "factor")
        if not isinstance(a, (int, float)) or not math.isfinite(a):
            raise ValueError(f"a must be a finite number, got {a!r}")
        self.a = float(a)

    def check_size(self, height, width):
        if height % self.factor or width % self.factor:
            raise ValueError(f"scale factor {self.factor} does not divide the image size {height}x{width}")
        return height // self.factor, width // self.factor

    def image_size_for(self, m, n):
        return m * self.factor, n * self.factor

    def matrices(self, height, width):
        return bicubic_matrix(height, self.factor, self.a), bicubic_matrix(width, self.factor, self.a)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, a={self.a}, threshold={self.threshold:g}"
