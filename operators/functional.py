"""Operators from user code: a function A alone, explicit A / A† callables, or a foreign object.

* :class:`LinearOperator` (``LinearOperator.from_function(A, image_shape)``): A† by conjugate
  gradient on the normal equations (CGLS), the adjoint Aᵀ by autograd. Started from 0 (or from a
  previous solution, which lies in range(Aᵀ)), CGLS converges to the MINIMUM-NORM least-squares
  solution, i.e. to A†y.
* :class:`FunctionOperator`: A and A† given as callables (the user vouches for A†).
* :func:`wrap`: any object with ``A`` and ``A_dagger`` methods — the protocol of deepinv's
  ``Physics`` and similar libraries — without importing those libraries.

None of these imports the sampler.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .base import ImageShape, Operator

__all__ = ["LinearOperator", "FunctionOperator", "wrap", "cgls"]


def cgls(A: Callable[[Tensor], Tensor], AT: Callable[[Tensor], Tensor], y: Tensor, x0: Tensor, *,
         tol: float = 1e-6, max_iter: int = 100) -> tuple[Tensor, int, Tensor]:
    """Least squares min ‖A x − y‖ by CG on the normal equations AᵀA x = Aᵀy (CGLS), per image.

    Every image of the batch (dimension 0) is its own problem with its own step sizes. Stops when
    ‖Aᵀ(y − A x)‖ ≤ tol · ‖Aᵀ y‖ for every image, or after ``max_iter`` iterations. From x0 = 0 (or
    any x0 in range(Aᵀ)) the iterates stay in range(Aᵀ), so the limit is the minimum-norm
    solution A†y. Returns (x, iterations, relative normal-equation residual per image).
    """
    n = y.shape[0]
    view = (n,) + (1,) * (x0.dim() - 1)
    vy = (n,) + (1,) * (y.dim() - 1)

    def sq(t: Tensor) -> Tensor:
        return t.reshape(n, -1).square().sum(dim=1)

    x = x0.clone()
    r = y - A(x)
    s = AT(r)
    ref = sq(AT(y)).sqrt().clamp_min(torch.finfo(y.dtype).tiny)
    p = s.clone()
    gamma = sq(s)
    rel = gamma.sqrt() / ref
    it = 0
    while it < max_iter and bool((rel > tol).any()):
        active = rel > tol
        q = A(p)
        qq = sq(q)
        alpha = torch.where(active & (qq > 0), gamma / qq.clamp_min(torch.finfo(y.dtype).tiny),
                            torch.zeros_like(gamma))
        x = x + alpha.view(view) * p
        r = r - alpha.view(vy) * q
        s = AT(r)
        gamma_new = sq(s)
        beta = torch.where(active & (gamma > 0), gamma_new / gamma.clamp_min(torch.finfo(y.dtype).tiny),
                           torch.zeros_like(gamma))
        p = torch.where(active.view(view), s + beta.view(view) * p, p)
        gamma = torch.where(active, gamma_new, gamma)
        rel = torch.where(active, gamma_new.sqrt() / ref, rel)
        it += 1
    return x, it, rel


def _as_shape(image_shape, name: str = "image_shape") -> ImageShape:
    try:
        shape = tuple(int(s) for s in image_shape)
    except TypeError:
        raise ValueError(f"{name} must be (C, H, W), got {image_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name} must be (C, H, W) with positive sizes, got {image_shape!r}")
    return shape


def _output_shape(fn: Callable[[Tensor], Tensor], image_shape: ImageShape, name: str) -> tuple[int, ...]:
    with torch.no_grad():
        out = fn(torch.zeros((1, *image_shape)))
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != 1:
        raise ValueError(f"{name} must map a batch (N, C, H, W) to a tensor (N, ...); for one image "
                         f"of shape {image_shape} it returned "
                         f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
    return tuple(out.shape[1:])


class LinearOperator(Operator):
    """An operator from a linear function ``A`` alone (see :meth:`from_function`).

    A† y is the CGLS solution started from 0 (min-norm, see :func:`cgls`), Aᵀ comes from autograd
    (``torch.autograd.grad`` of A, exact for a linear A, also inside ``torch.no_grad``).

    Args:
        A: linear map from a batch (N, C, H, W) to (N, ...); must be differentiable by autograd.
        image_shape: the (C, H, W) it acts on (fixed: A† needs it).
        tol: CGLS stops when ‖Aᵀ(y − A x)‖ ≤ tol·‖Aᵀ y‖ per image (default 1e-6). The
            Moore–Penrose identities then hold to roughly tol·κ(A)² relative (κ the condition
            number on the range), and only up to the working precision: use float64 for tight ones.
        max_iter: iteration cap (default 100); in exact arithmetic CG needs at most rank(A)
            iterations. When the cap is hit, a ``RuntimeWarning`` names the residual reached.
        warm_start: start each solve from the previous solution for the same batch shape instead
            of 0. It stays in range(Aᵀ), so the limit is still the min-norm solution; fewer
            iterations when consecutive observations are close (as along a sampling chain).
        claim_projector: declare A†A an orthogonal projector (``is_projector``) — only honest when
            the solves converge to the working precision; default False (the sampler then uses
            the replay, never the closed form).
        check_linear: test A(0) = 0 and A(u + 2v) = A(u) + 2A(v) on a random probe at construction.
    """

    def __init__(self, A: Callable[[Tensor], Tensor], image_shape, *, tol: float = 1e-6,
                 max_iter: int = 100, warm_start: bool = False, claim_projector: bool = False,
                 check_linear: bool = True):
        super().__init__()
        if not callable(A):
            raise TypeError(f"A must be callable, got {type(A).__name__}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 <= tol < 1):
            raise ValueError(f"tol must be a number in [0, 1), got {tol!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        self.fn = A
        self.image_shape = _as_shape(image_shape)
        self.tol, self.max_iter, self.warm_start = float(tol), max_iter, bool(warm_start)
        self.is_projector = bool(claim_projector)
        self._y_shape = _output_shape(A, self.image_shape, "A")
        self._warm: dict = {}
        self.last_iterations = 0
        self.last_residual = math.nan
        if check_linear:
            self._check_linear()

    @classmethod
    def from_function(cls, A: Callable[[Tensor], Tensor], image_shape, *, tol: float = 1e-6,
                      max_iter: int = 100, warm_start: bool = False, claim_projector: bool = False,
                      check_linear: bool = True) -> "LinearOperator":
        """An operator from a linear function A: A† by CGLS, Aᵀ by autograd (see the class)."""
        return cls(A, image_shape, tol=tol, max_iter=max_iter, warm_start=warm_start,
                   claim_projector=claim_projector, check_linear=check_linear)

    def _check_linear(self) -> None:
        g = torch.Generator().manual_seed(0)
        u = torch.randn((1, *self.image_shape), generator=g, dtype=torch.float64)
        v = torch.randn((1, *self.image_shape), generator=g, dtype=torch.float64)
        with torch.no_grad():
            try:
                zero = self.fn(torch.zeros_like(u))
                lhs, au, av = self.fn(u + 2 * v), self.fn(u), self.fn(v)
            except RuntimeError:  # a function with float32 parameters: probe in float32
                u, v = u.float(), v.float()
                zero = self.fn(torch.zeros_like(u))
                lhs, au, av = self.fn(u + 2 * v), self.fn(u), self.fn(v)
        scale = float(au.norm() + 2 * av.norm()) or 1.0
        tol = 1e-3 if u.dtype == torch.float32 else 1e-8
        if float(zero.norm()) > tol * scale:
            raise ValueError("A is not linear: A(0) is not 0 (an affine map? subtract its offset)")
        if float((lhs - au - 2 * av).norm()) > tol * scale:
            raise ValueError("A is not linear: A(u + 2v) differs from A(u) + 2A(v) on a random probe")

    def y_shape(self, image_shape):
        if tuple(image_shape) != self.image_shape:
            raise ValueError(f"this operator was built for images of shape {self.image_shape}, "
                             f"got {tuple(image_shape)}")
        return self._y_shape

    def A(self, x: Tensor) -> Tensor:
        self.check_image(x)
        return self.fn(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        if tuple(y.shape[1:]) != self._y_shape:
            raise ValueError(f"y must have shape (N, {', '.join(map(str, self._y_shape))}), "
                             f"got {tuple(y.shape)}")
        with torch.enable_grad():
            x = torch.zeros((y.shape[0], *self.image_shape), dtype=y.dtype, device=y.device,
                            requires_grad=True)
            (g,) = torch.autograd.grad(self.fn(x), x, grad_outputs=y)
        return g

    def A_pinv(self, y: Tensor) -> Tensor:
        if tuple(y.shape[1:]) != self._y_shape:
            raise ValueError(f"y must have shape (N, {', '.join(map(str, self._y_shape))}), "
                             f"got {tuple(y.shape)}")
        key = (tuple(y.shape), y.dtype, y.device)
        x0 = self._warm.get(key) if self.warm_start else None
        if x0 is None:
            x0 = torch.zeros((y.shape[0], *self.image_shape), dtype=y.dtype, device=y.device)
        with torch.no_grad():
            x, it, rel = cgls(self.fn, self.A_adjoint, y, x0, tol=self.tol, max_iter=self.max_iter)
        self.last_iterations, self.last_residual = it, float(rel.max()) if rel.numel() else 0.0
        if self.last_residual > self.tol:
            import warnings

            warnings.warn(f"conjugate gradient stopped after {it} iterations at relative residual "
                          f"{self.last_residual:.2e} > tol {self.tol:g}; raise max_iter",
                          RuntimeWarning, stacklevel=2)
        if self.warm_start:
            self._warm = {key: x.detach()}
        return x

    def _image_shape_for(self, y: Tensor):
        return self.image_shape

    def extra_repr(self) -> str:
        return (f"image_shape={self.image_shape}, y_shape={self._y_shape}, tol={self.tol:g}, "
                f"max_iter={self.max_iter}, warm_start={self.warm_start}")


class FunctionOperator(Operator):
    """An operator from explicit callables ``A`` and ``A_pinv`` (the user vouches for A†).

    Args:
        A, A_pinv: batch maps (N, C, H, W) → (N, *y_shape) and back.
        y_shape_fn: image shape (C, H, W) → observation shape; by default found by running A on
            one zero image of that shape (cached).
        adjoint: Aᵀ, if known; otherwise :meth:`A_adjoint` differentiates A with autograd.
        is_projector: declare that A†A is an orthogonal projector (enables the closed form);
            default False.
        singular_value: declare that every non-zero singular value equals this number (enables
            the exact σ_y-aware correction); default None.
    """

    def __init__(self, A: Callable[[Tensor], Tensor], A_pinv: Callable[[Tensor], Tensor],
                 y_shape_fn: Callable[[ImageShape], tuple[int, ...]] | None = None, *,
                 adjoint: Callable[[Tensor], Tensor] | None = None, is_projector: bool = False,
                 singular_value: float | None = None):
        super().__init__()
        for name, f in (("A", A), ("A_pinv", A_pinv)):
            if not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        if y_shape_fn is not None and not callable(y_shape_fn):
            raise TypeError(f"y_shape_fn must be callable, got {type(y_shape_fn).__name__}")
        if adjoint is not None and not callable(adjoint):
            raise TypeError(f"adjoint must be callable, got {type(adjoint).__name__}")
        self.fn, self.pinv_fn, self.y_shape_fn, self.adjoint_fn = A, A_pinv, y_shape_fn, adjoint
        self.is_projector = bool(is_projector)
        self.singular_value = None if singular_value is None else float(singular_value)
        self._shapes: dict = {}

    def y_shape(self, image_shape):
        image_shape = _as_shape(image_shape)
        if image_shape not in self._shapes:
            if self.y_shape_fn is not None:
                shape = tuple(int(s) for s in self.y_shape_fn(image_shape))
            else:
                shape = _output_shape(self.fn, image_shape, "A")
            self._shapes[image_shape] = shape
        return self._shapes[image_shape]

    def A(self, x: Tensor) -> Tensor:
        self.check_image(x)
        return self.fn(x)

    def A_pinv(self, y: Tensor) -> Tensor:
        return self.pinv_fn(y)

    def A_adjoint(self, y: Tensor) -> Tensor:
        if self.adjoint_fn is not None:
            return self.adjoint_fn(y)
        return super().A_adjoint(y)


def wrap(obj, *, is_projector: bool = False, singular_value: float | None = None) -> Operator:
    """An :class:`Operator` from any object with ``A(x)`` and ``A_dagger(y)`` methods.

    This is the protocol of deepinv's ``Physics`` (and similar inverse-problem libraries); they are
    not imported. ``obj.A_adjoint`` is used as Aᵀ when present. ``A_dagger`` of such libraries is
    often itself an iterative solve: ``is_projector`` stays False unless you declare it.
    An :class:`Operator` is returned unchanged.
    """
    if isinstance(obj, Operator):
        return obj
    A, A_dagger = getattr(obj, "A", None), getattr(obj, "A_dagger", None)
    if not callable(A) or not callable(A_dagger):
        raise TypeError(f"{type(obj).__name__} has no callable A and A_dagger methods; "
                        "use FunctionOperator or LinearOperator.from_function")
    adjoint = getattr(obj, "A_adjoint", None)
    op = FunctionOperator(A, A_dagger, adjoint=adjoint if callable(adjoint) else None,
                          is_projector=is_projector, singular_value=singular_value)
    op.wrapped = obj
    return op
