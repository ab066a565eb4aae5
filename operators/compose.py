"""Composition of degradations: A = A2 ∘ A1 (A1 first), with a pseudo-inverse that is right.

The rule (A2 A1)† = A1† A2† is NOT true in general. Greville (1966): it holds if and only if

    (G1)  A2†A2 · A1 A1ᵀ A2ᵀ = A1 A1ᵀ A2ᵀ        and        (G2)  A1 A1† · A2ᵀA2 A1 = A2ᵀA2 A1.

:class:`Compose` uses the product rule only when it can establish these:

* structurally, for every image size, from facts the operators declare (see
  :class:`~fixedpoint_ir.operators.base.Operator`), each a sufficient condition:
    - A1 A1ᵀ = s² I (A1 onto, all singular values equal: colorization, average pooling, identity):
      then A1 A1† = I (G2 trivially) and A2†A2 A1A1ᵀA2ᵀ = s² A2†A2 A2ᵀ = s² A2ᵀ (G1);
    - A2ᵀA2 = s² I (A2 one-to-one with equal singular values): A2†A2 = I, symmetric argument;
    - A1 and A2 both diagonal 0/1 (masks): they commute and their product is a mask;
* otherwise numerically, for one image shape, by testing G1 and G2 on random probes in float64
  (a linear identity that holds on a random Gaussian vector holds, with probability one); this
  needs both A1† and A2† to be exact Moore–Penrose inverses (``is_projector``).

Where the rule is not valid (e.g. inpainting a blurred image, mask ∘ blur, or pooling a masked
image, pool ∘ mask), A† falls back to conjugate gradient on the normal equations (CGLS from 0,
the minimum-norm solution, computed in float64) with ``tol`` and ``max_iter``. ``exact=True``
demands the product rule and raises ``ValueError`` when it is not valid; ``exact=False`` always
uses CGLS.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .base import ImageShape, Operator
from .color import Colorization
from .functional import _as_shape, cgls
from .inpainting import Mask

__all__ = ["Compose", "old_photo", "product_rule_reason"]


def _coisometry(op: Operator) -> bool:
    return bool(getattr(op, "full_row_rank", False)) and getattr(op, "singular_value", None) is not None


def _isometry(op: Operator) -> bool:
    return bool(getattr(op, "full_column_rank", False)) and getattr(op, "singular_value", None) is not None


def product_rule_reason(A2: Operator, A1: Operator) -> str | None:
    """Why (A2 A1)† = A1† A2† holds for every image size, from declared structure, or None."""
    if not (getattr(A1, "is_projector", False) and getattr(A2, "is_projector", False)):
        return None
    if _coisometry(A1):
        return f"{type(A1).__name__} has A Aᵀ = s² I"
    if _isometry(A2):
        return f"{type(A2).__name__} has AᵀA = s² I"
    if getattr(A1, "diagonal", False) and getattr(A2, "diagonal", False):
        return "both factors are diagonal 0/1 masks"
    return None


class Compose(Operator):
    """A = A2 ∘ A1 (A1 is applied first): ``Compose(Mask(m), Colorization())`` is old-photo
    restoration (grey and scratched).

    Args:
        A2, A1: the outer and the inner operator.
        exact: ``None`` (default) uses the product rule where valid and CGLS elsewhere; ``True``
            requires the product rule (``ValueError`` where it is invalid, at construction when
            structure or ``image_shape`` decides it, else at the first use on an invalid size);
            ``False`` always uses CGLS.
        image_shape: (C, H, W) to decide validity now by the numerical Greville test.
        tol, max_iter: CGLS stopping rule for the fallback (relative normal-equation residual,
            default 1e-6, and iteration cap, default 200); solved in float64.
        probe_tol: relative tolerance of the numerical Greville test (default 1e-8, float64).

    ``is_projector`` is True when the product rule is known to be valid at construction
    (structurally, or by the probe for ``image_shape``): A† is then exact Moore–Penrose.
    """

    def __init__(self, A2: Operator, A1: Operator, *, exact: bool | None = None,
                 image_shape: ImageShape | None = None, tol: float = 1e-6, max_iter: int = 200,
                 probe_tol: float = 1e-8):
        super().__init__()
        for name, op in (("A2", A2), ("A1", A1)):
            if not isinstance(op, Operator):
                raise TypeError(f"{name} must be an Operator (use operators.wrap for other "
                                f"objects), got {type(op).__name__}")
        if exact not in (None, True, False):
            raise ValueError(f"exact must be None, True or False, got {exact!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
            raise ValueError(f"tol must be a number in [0, 1), got {tol!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        self.A2, self.A1 = A2, A1
        self.exact = exact
        self.tol, self.max_iter, self.probe_tol = float(tol), max_iter, float(probe_tol)
        self.reason = product_rule_reason(A2, A1) if exact is not False else None
        self._valid: dict[ImageShape, bool] = {}
        self.image_shape = None if image_shape is None else _as_shape(image_shape)
        if self.image_shape is not None:
            self.y_shape(self.image_shape)
            self.rule_valid(self.image_shape)  # raises now when exact=True and invalid
        self.is_projector = self.reason is not None or (
            self.image_shape is not None and self._valid.get(self.image_shape, False))
        # Structure of the product (used by further compositions and the σ_y-aware correction).
        s1, s2 = A1.singular_value, A2.singular_value
        if self.reason is not None and s1 is not None and s2 is not None and (
                _coisometry(A1) or _isometry(A2) or (A1.diagonal and A2.diagonal)):
            self.singular_value = float(s1) * float(s2)
        self.full_row_rank = bool(A1.full_row_rank and A2.full_row_rank)
        self.full_column_rank = bool(A1.full_column_rank and A2.full_column_rank)
        self.diagonal = bool(A1.diagonal and A2.diagonal)

    # --- validity of the product rule -----------------------------------------------------
    def rule_valid(self, image_shape) -> bool:
        """Whether A† = A1† A2† (exact) is used for this image shape; raises when ``exact=True``
        and it is not valid."""
        shape = _as_shape(image_shape)
        if shape not in self._valid:
            if self.exact is False:
                valid = False
            elif self.reason is not None:
                valid = True
            else:
                valid = self.greville_test(shape) <= self.probe_tol
            self._valid[shape] = valid
        if self.exact and not self._valid[shape]:
            raise ValueError(
                f"exact=True, but the pseudo-inverse of {type(self.A2).__name__} ∘ "
                f"{type(self.A1).__name__} is not the product of the pseudo-inverses for images "
                f"of shape {shape} (Greville's conditions fail); use exact=None for the iterative "
                "pseudo-inverse")
        return self._valid[shape]

    def greville_test(self, image_shape, probes: int = 2, seed: int = 0) -> float:
        """Largest relative violation of Greville's conditions G1, G2 on random probes (float64).

        0 (to rounding) when (A2 A1)† = A1† A2†; inf when an inner A† is not exact.
        """
        if not (getattr(self.A1, "is_projector", False) and getattr(self.A2, "is_projector", False)):
            return math.inf
        shape = _as_shape(image_shape)
        mid = tuple(self.A1.y_shape(shape))
        out = tuple(self.A2.y_shape(mid))
        g = torch.Generator().manual_seed(seed)
        A1, A2 = self.A1, self.A2
        worst = 0.0
        with torch.no_grad():
            u = torch.randn((probes, *out), generator=g, dtype=torch.float64)
            w = A1.A(A1.A_adjoint(A2.A_adjoint(u)))  # A1 A1ᵀ A2ᵀ u
            err = (A2.A_pinv(A2.A(w)) - w).flatten(1).norm(dim=1) / w.flatten(1).norm(dim=1).clamp_min(1e-300)
            worst = max(worst, float(err.max()))
            v = torch.randn((probes, *shape), generator=g, dtype=torch.float64)
            w = A2.A_adjoint(A2.A(A1.A(v)))  # A2ᵀ A2 A1 v
            err = (A1.A(A1.A_pinv(w)) - w).flatten(1).norm(dim=1) / w.flatten(1).norm(dim=1).clamp_min(1e-300)
            worst = max(worst, float(err.max()))
        return worst

    # --- the maps ---------------------------------------------------------------------------
    def y_shape(self, image_shape):
        return tuple(self.A2.y_shape(tuple(self.A1.y_shape(tuple(image_shape)))))

    def A(self, x: Tensor) -> Tensor:
        self.check_image(x)
        return self.A2.A(self.A1.A(x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self.A1.A_adjoint(self.A2.A_adjoint(y))

    def _image_shape_for(self, y: Tensor):
        if self.image_shape is not None and tuple(self.y_shape(self.image_shape)) == tuple(y.shape[1:]):
            return self.image_shape
        mid = self.A2._image_shape_for(y)
        return self.A1._image_shape_for(torch.zeros((1, *mid), dtype=y.dtype, device=y.device))

    def A_pinv(self, y: Tensor) -> Tensor:
        shape = self._image_shape_for(y)
        if self.rule_valid(shape):
            return self.A1.A_pinv(self.A2.A_pinv(y))
        return self.iterative_pinv(y, shape)

    def iterative_pinv(self, y: Tensor, image_shape=None) -> Tensor:
        """The minimum-norm least-squares solution by CGLS (float64), whatever the rule says."""
        shape = self._image_shape_for(y) if image_shape is None else _as_shape(image_shape)
        y64 = y.detach().to(torch.float64)
        x0 = torch.zeros((y.shape[0], *shape), dtype=torch.float64, device=y.device)
        with torch.no_grad():
            x, it, rel = cgls(self.A, self.A_adjoint, y64, x0, tol=self.tol, max_iter=self.max_iter)
        residual = float(rel.max()) if rel.numel() else 0.0
        if residual > self.tol:
            warnings.warn(f"Compose: conjugate gradient stopped after {it} iterations at relative "
                          f"residual {residual:.2e} > tol {self.tol:g}; raise max_iter",
                          RuntimeWarning, stacklevel=2)
        return x.to(y.dtype)

    def filtered_pinv(self, r: Tensor, weights) -> Tensor:
        if self.singular_value is None:
            raise NotImplementedError("this composition has no known singular values")
        return super().filtered_pinv(r, weights)

    @property
    def has_spectrum(self) -> bool:
        return self.singular_value is not None

    def extra_repr(self) -> str:
        return f"exact={self.exact}, rule={'product' if self.reason else 'decided per shape'}"


def old_photo(mask, weights=(1 / 3, 1 / 3, 1 / 3)) -> Compose:
    """Old-photo restoration: a grey (``weights``) image with missing pixels (``mask``, (H, W)).

    A = Mask ∘ Colorization; the product rule is valid (colorization has A Aᵀ = ‖w‖² I), so A† =
    Colorization† ∘ Mask is exact.
    """
    m = torch.as_tensor(mask)
    if m.dim() == 3 and m.shape[0] != 1:
        raise ValueError(f"mask must be (H, W) or (1, H, W): it acts on the grey image, got "
                         f"{tuple(m.shape)}")
    return Compose(Mask(m), Colorization(weights), exact=True)
