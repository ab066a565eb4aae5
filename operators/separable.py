"""Separable operators A = A_h ⊗ A_w with an SVD pseudo-inverse (bicubic SR, separable blur).

A acts on each image channel as Y = A_h X A_wᵀ with 1-D matrices A_h (m × H) and A_w (n × W),
built explicitly by the subclass for the image size. With the thin SVDs A_h = U_h S_h V_hᵀ and
A_w = U_w S_w V_wᵀ, the singular values of A are the products s_h[i]·s_w[j].

Truncation: products below ``threshold`` times the largest one are set to zero, and the operator
itself is defined as the truncated one, A := (U_h ⊗ U_w) diag(s_trunc) (V_h ⊗ V_w)ᵀ, so that
A† = (V_h ⊗ V_w) diag(1/s_trunc) (U_h ⊗ U_w)ᵀ is its exact Moore–Penrose inverse and all four
identities hold to rounding. When nothing is truncated A is the plain A_h ⊗ A_w and
A† = A_h† ⊗ A_w†. (This is the convention of DDRM / DDNM, which zero singular values below 3e-2;
there the threshold is absolute, here it is relative to the largest singular value.)

The 1-D matrices and their SVDs are computed once per image size in float64 (on the CPU) and
cached on the operator; each call casts them to the input's dtype and device (also cached).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Operator

__all__ = ["SeparableOperator"]


@dataclass
class _Factors:
    """Per image size: the 1-D matrices, their SVDs, and the kept singular values of A."""

    M_h: Tensor  # (m, H)
    M_w: Tensor  # (n, W)
    U_h: Tensor  # (m, k_h)
    V_h: Tensor  # (H, k_h)
    U_w: Tensor  # (n, k_w)
    V_w: Tensor  # (W, k_w)
    s: Tensor  # (k_h, k_w) products s_h[i] s_w[j], truncated ones set to 0
    s_inv: Tensor  # (k_h, k_w) 1/s where kept, 0 elsewhere
    keep: Tensor  # (k_h, k_w) bool
    P_h: Tensor  # (H, m) A_h† (only meaningful when nothing is truncated)
    P_w: Tensor  # (W, n)
    exact: bool  # nothing truncated: A = A_h ⊗ A_w

    def cast(self, dtype, device) -> "_Factors":
        kw = {k: (v.to(device=device, dtype=dtype) if isinstance(v, Tensor) and v.is_floating_point()
                  else (v.to(device) if isinstance(v, Tensor) else v))
              for k, v in vars(self).items()}
        return _Factors(**kw)


class SeparableOperator(Operator):
    """Base of separable operators with an explicit SVD (see the module docstring).

    Subclasses implement :meth:`matrices` (the 1-D matrices for an image size, float64) and
    :meth:`check_size` (raise ``ValueError`` naming the argument when the image does not fit).

    Args:
        threshold: relative truncation level of the singular values of A, in [0, 1).
    """

    is_projector = True

    def __init__(self, threshold: float):
        super().__init__()
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        self._cache: dict = {}
        self._cast_cache: dict = {}

    # --- what a subclass provides -----------------------------------------------------------
    @abstractmethod
    def matrices(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """The float64 1-D matrices (A_h of shape (m, H), A_w of shape (n, W))."""

    @abstractmethod
    def check_size(self, height: int, width: int) -> tuple[int, int]:
        """(m, n) for an image of size H × W; ValueError naming the argument if it does not fit."""

    # --- shape contract --------------------------------------------------------------------
    def y_shape(self, image_shape):
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        c, h, w = image_shape
        m, n = self.check_size(h, w)
        return (c, m, n)

    # --- factors ----------------------------------------------------------------------------
    def factors(self, height: int, width: int, dtype=torch.float64, device=None) -> _Factors:
        """The (cached) matrices and SVD factors for an image of size height × width."""
        self.check_size(height, width)
        key = (height, width)
        if key not in self._cache:
            self._cache[key] = self._build(height, width)
        base = self._cache[key]
        device = torch.device("cpu") if device is None else torch.device(device)
        if dtype == torch.float64 and device.type == "cpu":
            return base
        ckey = (height, width, dtype, device)
        if ckey not in self._cast_cache:
            self._cast_cache[ckey] = base.cast(dtype, device)
        return self._cast_cache[ckey]

    def _build(self, height: int, width: int) -> _Factors:
        M_h, M_w = (m.to(torch.float64).cpu() for m in self.matrices(height, width))
        U_h, s_h, Vt_h = torch.linalg.svd(M_h, full_matrices=False)
        U_w, s_w, Vt_w = torch.linalg.svd(M_w, full_matrices=False)
        s = torch.outer(s_h, s_w)
        smax = float(s.max()) if s.numel() else 0.0
        keep = (s > 0) & (s >= self.threshold * smax) if smax > 0 else torch.zeros_like(s, dtype=torch.bool)
        s = torch.where(keep, s, torch.zeros_like(s))
        s_inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
        exact = bool(keep.all())
        inv = lambda sv: torch.where(sv > 0, 1.0 / sv.clamp_min(1e-300), torch.zeros_like(sv))  # noqa: E731
        P_h = Vt_h.T @ torch.diag(inv(s_h)) @ U_h.T
        P_w = Vt_w.T @ torch.diag(inv(s_w)) @ U_w.T
        return _Factors(M_h, M_w, U_h, Vt_h.T.contiguous(), U_w, Vt_w.T.contiguous(), s, s_inv, keep,
                        P_h, P_w, exact)

    def singular_values(self, image_shape) -> Tensor:
        """The singular values of A (per channel) for an image shape, truncated ones included as 0,
        float64, shape (k_h, k_w)."""
        _, h, w = image_shape
        return self.factors(h, w).s.clone()

    def _get(self, t: Tensor, image_hw: tuple[int, int]) -> _Factors:
        return self.factors(image_hw[0], image_hw[1], t.dtype, t.device)

    def _image_hw_from_y(self, y: Tensor) -> tuple[int, int]:
        return self.image_size_for(int(y.shape[-2]), int(y.shape[-1]))

    def image_size_for(self, m: int, n: int) -> tuple[int, int]:
        """The image size (H, W) behind an observation of size m × n (same size by default)."""
        return (m, n)

    # --- the maps ---------------------------------------------------------------------------
    @staticmethod
    def _sandwich(L: Tensor, t: Tensor, R: Tensor) -> Tensor:
        """L · t · Rᵀ per channel, as two einsums (each one GEMM: much faster than broadcast
        matmul, which becomes many tiny batched products)."""
        t = torch.einsum("ih,nchw->nciw", L, t)
        return torch.einsum("nciw,jw->ncij", t, R)

    def _spectral(self, t: Tensor, f: _Factors, diag: Tensor, forward: bool) -> Tensor:
        if forward:  # image -> observation: U_h (diag ⊙ V_hᵀ X V_w) U_wᵀ
            return self._sandwich(f.U_h, self._sandwich(f.V_h.T, t, f.V_w.T) * diag, f.U_w)
        return self._sandwich(f.V_h, self._sandwich(f.U_h.T, t, f.U_w.T) * diag, f.V_w)

    def A(self, x: Tensor) -> Tensor:
        self.check_image(x)
        f = self._get(x, tuple(x.shape[-2:]))
        if f.exact:
            return self._sandwich(f.M_h, x, f.M_w)
        return self._spectral(x, f, f.s, forward=True)

    def A_pinv(self, y: Tensor) -> Tensor:
        self._check_y(y)
        f = self._get(y, self._image_hw_from_y(y))
        if f.exact:
            return self._sandwich(f.P_h, y, f.P_w)
        return self._spectral(y, f, f.s_inv, forward=False)

    def A_adjoint(self, y: Tensor) -> Tensor:
        self._check_y(y)
        f = self._get(y, self._image_hw_from_y(y))
        if f.exact:
            return self._sandwich(f.M_h.T, y, f.M_w.T)
        return self._spectral(y, f, f.s, forward=False)

    def filtered_pinv(self, r: Tensor, weights) -> Tensor:
        self._check_y(r)
        hw = self._image_hw_from_y(r)
        f64 = self.factors(*hw)
        safe = torch.where(f64.keep, f64.s, torch.ones_like(f64.s))
        diag = torch.where(f64.keep, weights(safe) / safe, torch.zeros_like(safe))
        f = self._get(r, hw)
        return self._spectral(r, f, diag.to(dtype=r.dtype, device=r.device), forward=False)

    def _image_shape_for(self, y: Tensor):
        return (y.shape[1], *self._image_hw_from_y(y))

    @staticmethod
    def _check_y(y: Tensor) -> None:
        if not isinstance(y, Tensor) or y.dim() != 4:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y must be a tensor of shape (N, C, h, w), got {shape}")
