"""Shared Hypothesis strategies (operators, image shapes) and the checks they feed.

``operator_cases()`` draws an :class:`OperatorCase`: an operator of any family of
``fixedpoint_ir.operators`` (compositions and user operators included) with random sizes and
parameters, the image shape it acts on, and the tolerance its Moore–Penrose identities are held to.
``moore_penrose_errors`` measures the four identities (relative, see its docstring).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from fixedpoint_ir.operators import (AnisotropicGaussianBlur, AveragePool, Bicubic, Colorization, Compose,
                                     ConvolutionBlur, FunctionOperator, GaussianBlur, Identity,
                                     LinearOperator, Mask, Operator, SeparableBlur, motion_kernel,
                                     old_photo, random_mask, wrap)

#: Relative tolerances of the identities. Exact operators: 1e-5 in float32 (singular values
#: truncated at ≥ 1e-2 relative, so A† amplifies rounding by at most 100×), 1e-10 in float64.
#: Iterative pseudo-inverses (CGLS, float64, tol 1e-12): 1e-6.
EXACT_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
ITERATIVE_TOL = 1e-6


@dataclass
class OperatorCase:
    label: str
    operator: Operator
    image_shape: tuple[int, int, int]
    iterative: bool = False  # A† from an iterative solve: float64 only, ITERATIVE_TOL

    def tol(self, dtype) -> float:
        return ITERATIVE_TOL if self.iterative else EXACT_TOL[dtype]

    def __repr__(self) -> str:
        return f"OperatorCase({self.label}, {self.operator!r}, image_shape={self.image_shape})"


sides = st.integers(4, 16)
channels = st.sampled_from([1, 3])
seeds = st.integers(0, 2 ** 16)
thresholds = st.sampled_from([0.0, 1e-2, 3e-2, 0.1, 0.3])


def image_shapes(min_side: int = 4, max_side: int = 16, channel_counts=(1, 3)):
    return st.tuples(st.sampled_from(list(channel_counts)), st.integers(min_side, max_side),
                     st.integers(min_side, max_side))


def _kernel(seed: int, length: int) -> torch.Tensor:
    return torch.randn(length, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@st.composite
def identity_cases(draw):
    return OperatorCase("identity", Identity(), draw(image_shapes()))


@st.composite
def average_pool_cases(draw):
    f = draw(st.integers(1, 4))
    c, h, w = draw(channels), f * draw(st.integers(1, 4)), f * draw(st.integers(1, 4))
    return OperatorCase("average_pool", AveragePool(f), (c, h, w))


@st.composite
def bicubic_cases(draw):
    f = draw(st.integers(1, 4))
    c, h, w = draw(channels), f * draw(st.integers(1, 4)), f * draw(st.integers(1, 4))
    return OperatorCase("bicubic", Bicubic(f), (c, h, w))


@st.composite
def mask_cases(draw):
    c, h, w = draw(image_shapes())
    per_channel = draw(st.booleans())
    m = random_mask((h, w), draw(st.floats(0, 1)), channels=c if per_channel else None, seed=draw(seeds))
    return OperatorCase("mask", Mask(m), (c, h, w))


@st.composite
def colorization_cases(draw):
    c = draw(st.integers(1, 4))
    w = draw(st.lists(st.floats(-2, 2, allow_nan=False).filter(lambda v: abs(v) > 0.05),
                      min_size=c, max_size=c))
    _, h, wd = draw(image_shapes())
    return OperatorCase("colorization", Colorization(w), (c, h, wd))


@st.composite
def separable_blur_cases(draw):
    c, h, w = draw(image_shapes())
    lh, lw = draw(st.integers(1, min(7, h))), draw(st.integers(1, min(7, w)))
    thr = draw(thresholds.filter(lambda t: t >= 1e-2))
    kh, kw = _kernel(draw(seeds), lh), _kernel(draw(seeds), lw)
    return OperatorCase("separable_blur", SeparableBlur(kh, kw, threshold=thr), (c, h, w))


@st.composite
def gaussian_blur_cases(draw):
    c, h, w = draw(image_shapes())
    size = draw(st.sampled_from([s for s in (1, 3, 5, 7) if s <= min(h, w)]))
    thr = draw(thresholds.filter(lambda t: t >= 1e-2))
    if draw(st.booleans()):
        op = GaussianBlur(draw(st.floats(0.3, 20)), size, threshold=thr)
    else:
        op = AnisotropicGaussianBlur(draw(st.floats(0.3, 20)), draw(st.floats(0.3, 20)), size, threshold=thr)
    return OperatorCase(type(op).__name__, op, (c, h, w))


@st.composite
def convolution_blur_cases(draw):
    c, h, w = draw(image_shapes())
    thr = draw(thresholds.filter(lambda t: t >= 1e-2))
    if draw(st.booleans()):
        size = draw(st.sampled_from([s for s in (3, 5, 7) if s <= min(h, w)] or [1]))
        k = motion_kernel(draw(st.floats(0.5, float(size))), draw(st.floats(-180, 180)), size) \
            if size > 1 else torch.ones(1, 1, dtype=torch.float64)
    else:
        kh, kw = draw(st.integers(1, min(5, h))), draw(st.integers(1, min(5, w)))
        seed = draw(seeds)
        k = torch.randn(kh, kw, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return OperatorCase("convolution_blur", ConvolutionBlur(k, threshold=thr), (c, h, w))


@st.composite
def valid_composition_cases(draw):
    """Compositions where the product rule is valid (structurally)."""
    c, h, w = draw(image_shapes())
    kind = draw(st.sampled_from(["mask_color", "blur_color", "mask_pool", "identity_blur", "mask_mask",
                                 "old_photo"]))
    seed = draw(seeds)
    if kind in ("mask_color", "old_photo"):
        m = random_mask((h, w), 0.4, seed=seed)
        op = old_photo(m) if kind == "old_photo" else Compose(Mask(m), Colorization([0.2, 0.5, 0.3]))
        return OperatorCase(kind, op, (3, h, w))
    if kind == "blur_color":
        return OperatorCase(kind, Compose(GaussianBlur(1.0, 3), Colorization()), (3, max(h, 3), max(w, 3)))
    if kind == "mask_pool":
        f = draw(st.integers(1, 3))
        hh, ww = f * max(1, h // f), f * max(1, w // f)
        return OperatorCase(kind, Compose(Mask(random_mask((hh // f, ww // f), 0.5, seed=seed)),
                                          AveragePool(f)), (c, hh, ww))
    if kind == "identity_blur":
        return OperatorCase(kind, Compose(Identity(), GaussianBlur(2.0, 3)), (c, h, w))
    return OperatorCase(kind, Compose(Mask(random_mask((h, w), 0.3, seed=seed)),
                                      Mask(random_mask((h, w), 0.3, seed=seed + 1))), (c, h, w))


@st.composite
def invalid_composition_cases(draw):
    """Compositions where (A2 A1)† ≠ A1† A2†: A† falls back to CGLS (iterative tolerance)."""
    c, h, w = draw(image_shapes(max_side=10, channel_counts=(1, 2)))
    seed = draw(seeds)
    if draw(st.booleans()):  # inpainting a blurred image
        op = Compose(Mask(random_mask((h, w), 0.4, seed=seed)), GaussianBlur(1.5, 3, threshold=0.05),
                     tol=1e-12, max_iter=2000)
        return OperatorCase("mask_blur", op, (c, h, w), iterative=True)
    hh, ww = 2 * (h // 2), 2 * (w // 2)  # pooling an inpainted image
    op = Compose(AveragePool(2), Mask(random_mask((hh, ww), 0.4, seed=seed)), tol=1e-12, max_iter=2000)
    return OperatorCase("pool_mask", op, (c, hh, ww), iterative=True)


@st.composite
def user_operator_cases(draw):
    """A user function (CGLS pseudo-inverse), explicit callables, and a wrapped foreign object."""
    c, h, w = draw(image_shapes(max_side=8, channel_counts=(1, 2)))
    kind = draw(st.sampled_from(["function", "callables", "wrapped"]))
    n = c * h * w
    g = torch.Generator().manual_seed(draw(seeds))
    m = draw(st.integers(1, n))
    M = torch.randn(m, n, generator=g, dtype=torch.float64)
    if draw(st.booleans()) and m > 1:  # rank deficient
        M[-1] = M[0]
    Mp = torch.linalg.pinv(M)

    def A(x):
        return (x.reshape(x.shape[0], -1) @ M.to(x.dtype).T)

    def A_pinv(y):
        return (y @ Mp.to(y.dtype).T).reshape(y.shape[0], c, h, w)

    if kind == "function":
        op = LinearOperator.from_function(A, (c, h, w), tol=1e-12, max_iter=4 * n)
        return OperatorCase("linear_function", op, (c, h, w), iterative=True)
    if kind == "callables":
        return OperatorCase("function_operator", FunctionOperator(A, A_pinv, is_projector=True), (c, h, w))

    class Physics:  # the deepinv-like protocol, no import of that library
        def A(self, x):
            return A(x)

        def A_dagger(self, y):
            return A_pinv(y)

        def A_adjoint(self, y):
            return (y @ M.to(y.dtype)).reshape(y.shape[0], c, h, w)

    return OperatorCase("wrapped", wrap(Physics(), is_projector=True), (c, h, w))


def operator_cases(include_iterative: bool = True):
    """Every operator family (and compositions, user operators)."""
    families = [identity_cases(), average_pool_cases(), bicubic_cases(), mask_cases(),
                colorization_cases(), separable_blur_cases(), gaussian_blur_cases(),
                convolution_blur_cases(), valid_composition_cases()]
    exact_users = user_operator_cases().filter(lambda case: not case.iterative)
    families.append(exact_users)
    if include_iterative:
        families += [invalid_composition_cases(), user_operator_cases().filter(lambda case: case.iterative)]
    return st.one_of(*families)


# --- the checks ---------------------------------------------------------------------------------
def _rel(diff: torch.Tensor, ref: torch.Tensor) -> float:
    d = float(diff.norm())
    return 0.0 if d == 0 else d / max(float(ref.norm()), 1e-30)


def _inner(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum())


def moore_penrose_errors(op: Operator, image_shape, dtype=torch.float64, seed: int = 0,
                         batch: int = 2) -> dict[str, float]:
    """Relative errors of the four identities on random vectors.

    ``AA†A=A``: ‖A A† A x − A x‖ / ‖A x‖;  ``A†AA†=A†``: ‖A† A A† y − A† y‖ / ‖A† y‖;
    symmetry of P = A†A and Q = A A†: |⟨u, M v⟩ − ⟨M u, v⟩| / (‖u‖ ‖v‖) (‖M‖ = 1 for projectors).
    """
    g = torch.Generator().manual_seed(seed)
    y_shape = tuple(op.y_shape(tuple(image_shape)))
    x = torch.randn((batch, *image_shape), generator=g, dtype=dtype)
    y = torch.randn((batch, *y_shape), generator=g, dtype=dtype)
    ax, py = op.A(x), op.A_pinv(y)
    out = {"AA†A=A": _rel(op.A(op.A_pinv(ax)) - ax, ax), "A†AA†=A†": _rel(op.A_pinv(op.A(py)) - py, py)}
    u, v = torch.randn_like(x), torch.randn_like(x)
    P = lambda t: op.A_pinv(op.A(t))  # noqa: E731
    out["(A†A)ᵀ=A†A"] = abs(_inner(u, P(v)) - _inner(P(u), v)) / float(u.norm() * v.norm())
    u, v = torch.randn_like(y), torch.randn_like(y)
    Q = lambda t: op.A(op.A_pinv(t))  # noqa: E731
    out["(AA†)ᵀ=AA†"] = abs(_inner(u, Q(v)) - _inner(Q(u), v)) / float(u.norm() * v.norm())
    return out


def adjoint_error(op: Operator, image_shape, dtype=torch.float64, seed: int = 0) -> float:
    """|⟨A x, y⟩ − ⟨x, Aᵀ y⟩| / (‖A x‖‖y‖ + ‖x‖‖Aᵀ y‖)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *image_shape), generator=g, dtype=dtype)
    y = torch.randn((2, *op.y_shape(tuple(image_shape))), generator=g, dtype=dtype)
    ax, aty = op.A(x), op.A_adjoint(y)
    scale = float(ax.norm() * y.norm() + x.norm() * aty.norm())
    return 0.0 if scale == 0 else abs(_inner(ax, y) - _inner(x, aty)) / scale
