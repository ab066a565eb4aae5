"""Operators: Moore–Penrose identities for every family (property tests), shapes, adjoints,
family-specific facts (bicubic, blur taps, masks), compositions, user operators, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (EXACT_TOL, ITERATIVE_TOL, adjoint_error, invalid_composition_cases,
                        moore_penrose_errors, operator_cases, user_operator_cases, valid_composition_cases)

from fixedpoint_ir.operators import (BT601, AnisotropicGaussianBlur, AveragePool, Bicubic, Colorization,
                                     Compose, ConvolutionBlur, FunctionOperator, GaussianBlur, Identity,
                                     LinearOperator, Mask, SeparableBlur, bicubic_matrix, blur_matrix,
                                     box_mask, gaussian_kernel, mask_from_image, motion_kernel, old_photo,
                                     random_mask, save_mask, scratch_mask, stripe_mask, text_mask, wrap)

DTYPES = [torch.float32, torch.float64]


# --- the four identities, shapes, adjoints: every family ---------------------------------------
@settings(max_examples=40, deadline=None)
@given(case=operator_cases(include_iterative=False), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 100))
def test_moore_penrose_identities_exact_operators(case, dtype, seed):
    errors = moore_penrose_errors(case.operator, case.image_shape, dtype, seed)
    assert max(errors.values()) <= case.tol(dtype), errors
    assert case.operator.is_projector


@settings(max_examples=8, deadline=None)
@given(case=st.one_of(invalid_composition_cases(), user_operator_cases().filter(lambda c: c.iterative)))
def test_moore_penrose_identities_iterative_operators(case):
    errors = moore_penrose_errors(case.operator, case.image_shape, torch.float64)
    assert max(errors.values()) <= ITERATIVE_TOL, errors
    assert not case.operator.is_projector  # iterative A†: never claimed exact


@settings(max_examples=30, deadline=None)
@given(case=operator_cases(), n=st.integers(1, 3))
def test_shape_contracts_and_adjoint(case, n):
    op, shape = case.operator, case.image_shape
    y_shape = tuple(op.y_shape(shape))
    x = torch.randn((n, *shape), dtype=torch.float64)
    y = op.A(x)
    assert tuple(y.shape) == (n, *y_shape)
    assert tuple(op.A_pinv(y).shape) == (n, *shape)
    assert tuple(op.A_dagger(y).shape) == (n, *shape)
    assert tuple(op.A_adjoint(y).shape) == (n, *shape)
    assert op.A(x.float()).dtype == torch.float32
    assert adjoint_error(op, shape) <= 1e-12


def test_exact_operators_float32_tolerance_is_met_on_the_registry_defaults():
    from fixedpoint_ir.operators import list_tasks, make_operator

    for name in list_tasks():
        if name == "inpaint_file":
            continue
        op = make_operator(name, (3, 32, 32))
        errors = moore_penrose_errors(op, (3, 32, 32), torch.float32)
        assert max(errors.values()) <= EXACT_TOL[torch.float32], (name, errors)


# --- super-resolution -------------------------------------------------------------------------
def test_bicubic_interior_matches_antialiased_bicubic_and_preserves_constants():
    for f in (2, 3, 4):
        x = torch.randn(1, 2, 8 * f, 8 * f, dtype=torch.float64)
        ours = Bicubic(f).A(x)
        ref = F.interpolate(x, scale_factor=1 / f, mode="bicubic", antialias=True, align_corners=False)
        # PyTorch / PIL renormalise at the borders, we reflect: same interior, Keys a = -0.5.
        torch.testing.assert_close(ours[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-12, rtol=0)
        torch.testing.assert_close(bicubic_matrix(8 * f, f).sum(1), torch.ones(8, dtype=torch.float64))
    assert torch.equal(bicubic_matrix(6, 1), torch.eye(6, dtype=torch.float64))


def test_bicubic_and_average_pool_pseudo_inverses_differ():
    y = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    assert (Bicubic(2).A_pinv(y) - AveragePool(2).A_pinv(y)).abs().max() > 1e-2


def test_average_pool_pseudo_inverse_is_block_replication():
    y = torch.arange(4.0).view(1, 1, 2, 2)
    assert torch.equal(AveragePool(2).A_pinv(y)[0, 0, :2, :2], torch.zeros(2, 2))
    assert AveragePool(2).singular_value == 0.5


# --- blur ------------------------------------------------------------------------------------
def test_separable_blur_uses_every_tap():
    k = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    op = SeparableBlur(k, torch.tensor([1.0], dtype=torch.float64), threshold=0.0)
    x = torch.zeros(1, 1, 11, 1, dtype=torch.float64)
    x[0, 0, 5, 0] = 1.0
    response = op.A(x)[0, 0, :, 0]
    torch.testing.assert_close(response[3:8], k)  # the impulse response is the whole kernel
    assert blur_matrix(k, 11)[5].sum() == k.sum()  # interior rows carry all 5 taps (15, not 10)


def test_gaussian_kernels_and_truncation():
    k = gaussian_kernel(10, 5)
    assert k.numel() == 5 and abs(float(k.sum()) - 1) < 1e-15 and torch.equal(k, k.flip(0))
    op = GaussianBlur(10, 5, threshold=0.03)
    s = op.singular_values((1, 16, 16))
    kept = s[s > 0]
    assert kept.min() >= 0.03 * kept.max() and (s == 0).any()  # the near-box kernel has tiny ones
    plain = GaussianBlur(10, 5, threshold=0.0)
    assert (plain.singular_values((1, 16, 16)) > 0).all()
    aniso = AnisotropicGaussianBlur(1.0, 20.0, 9)
    assert aniso.kernel_h[4] > 0.39 and aniso.kernel_w.std() < 1e-2


def test_convolution_blur_is_circular_convolution_without_truncation():
    g = torch.Generator().manual_seed(0)
    k = torch.rand(3, 5, generator=g, dtype=torch.float64)
    x = torch.randn(2, 1, 8, 9, generator=g, dtype=torch.float64)
    ref = torch.zeros_like(x)
    for a in range(3):
        for b in range(5):
            ref += k[a, b] * torch.roll(x, shifts=(a - 1, b - 2), dims=(2, 3))
    torch.testing.assert_close(ConvolutionBlur(k, threshold=0.0).A(x), ref)


def test_motion_kernel():
    k = motion_kernel(5, 0.0, 7)
    assert k.shape == (7, 7) and abs(float(k.sum()) - 1) < 1e-12
    assert float(k[3].sum()) > 0.999  # horizontal: the middle row
    k45 = motion_kernel(5, 45.0, 7)
    torch.testing.assert_close(k45, k45.flip(0).flip(1))  # a segment through the centre
    assert motion_kernel(9.0).shape == (11, 11)


# --- masks -----------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 20), w=st.integers(1, 20), missing=st.floats(0, 1), seed=st.integers(0, 99))
def test_random_mask_exact_ratio_and_seeded(h, w, missing, seed):
    m = random_mask((h, w), missing, seed=seed)
    assert m.shape == (h, w) and m.dtype == torch.bool
    assert int((~m).sum()) == round(missing * h * w)
    assert torch.equal(m, random_mask((h, w), missing, seed=seed))
    per = random_mask((h, w), missing, channels=3, seed=seed)
    assert per.shape == (3, h, w) and ((~per).flatten(1).sum(1) == round(missing * h * w)).all()


def test_box_stripes_text_scratches():
    b = box_mask((8, 8))
    assert int((~b).sum()) == 16 and not b[2:6, 2:6].any()
    s = stripe_mask((8, 6), period=4, width=1)
    assert (~s).sum() == 2 * 6 and not s[0].any() and not s[4].any() and s[1].all()
    v = stripe_mask((6, 8), period=4, width=2, direction="vertical", channels=2)
    assert v.shape == (2, 6, 8) and not v[:, :, :2].any() and v[:, :, 2:4].all()
    t = text_mask((32, 48), "Hi there")
    assert t.any() and (~t).any() and torch.equal(t, text_mask((32, 48), "Hi there"))
    once = text_mask((64, 48), "Hi", repeat=False)
    assert (~once).sum() < (~text_mask((64, 48), "Hi")).sum()
    sc = scratch_mask((32, 32), lines=4, seed=3)
    assert (~sc).any() and torch.equal(sc, scratch_mask((32, 32), lines=4, seed=3))


def test_mask_png_round_trip(tmp_path):
    m = random_mask((5, 7), 0.5, seed=1)
    Mask(m).save(tmp_path / "m.png")
    assert torch.equal(Mask.from_file(tmp_path / "m.png", (5, 7)).mask, m)
    per = random_mask((5, 7), 0.5, channels=3, seed=2)
    save_mask(per, tmp_path / "rgb.png")
    assert torch.equal(mask_from_image(tmp_path / "rgb.png", per_channel=True), per)


def test_per_channel_mask_and_shared_mask():
    x = torch.randn(1, 3, 4, 4)
    per = Mask(random_mask((4, 4), 0.5, channels=3, seed=0))
    assert not torch.equal(per.A(x)[0, 0] == 0, per.A(x)[0, 1] == 0)
    shared = Mask(random_mask((4, 4), 0.5, seed=0))
    assert torch.equal(shared.A(x)[0, 0] == 0, shared.A(x)[0, 2] == 0)


# --- colorization, identity --------------------------------------------------------------------
def test_colorization_weights():
    op = Colorization(BT601)
    x = torch.rand(1, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(op.A(x)[0, 0], 0.299 * x[0, 0] + 0.587 * x[0, 1] + 0.114 * x[0, 2])
    mean = Colorization()
    torch.testing.assert_close(mean.A_pinv(mean.A(x))[0, 0], x[0].mean(0))  # copies to 3 channels
    assert Identity().A_pinv(x) is x


# --- compositions ------------------------------------------------------------------------------
def _naive_product(op: Compose) -> FunctionOperator:
    return FunctionOperator(op.A, lambda y: op.A1.A_pinv(op.A2.A_pinv(y)), op.y_shape)


@settings(max_examples=12, deadline=None)
@given(case=st.one_of(valid_composition_cases(), invalid_composition_cases()))
def test_product_rule_used_exactly_when_it_is_valid(case):
    """The rule (A2 A1)† = A1† A2† is used iff the naive product is the Moore–Penrose inverse."""
    op, shape = case.operator, case.image_shape
    naive = max(moore_penrose_errors(_naive_product(op), shape).values())
    assert op.rule_valid(shape) == (naive < 1e-8), (op.greville_test(shape), naive)


def test_invalid_product_rule_is_caught_and_falls_back():
    m = random_mask((8, 8), 0.5, seed=0)
    op = Compose(Mask(m), GaussianBlur(1.5, 3), tol=1e-12, max_iter=1000)
    assert op.reason is None and not op.rule_valid((1, 8, 8)) and op.greville_test((1, 8, 8)) > 1e-3
    naive = moore_penrose_errors(_naive_product(op), (1, 8, 8))
    assert max(naive.values()) > 1e-3, naive  # A1† A2† is NOT the pseudo-inverse here
    assert max(moore_penrose_errors(op, (1, 8, 8)).values()) <= ITERATIVE_TOL
    assert not op.is_projector


def test_valid_compositions_are_structural():
    photo = old_photo(random_mask((8, 8), 0.3, seed=0))
    assert photo.reason and photo.is_projector
    assert photo.singular_value == pytest.approx(Colorization().singular_value)
    assert Compose(GaussianBlur(1.0, 3), AveragePool(2)).reason  # A1 A1ᵀ = I/4
    assert Compose(Identity(), GaussianBlur(1.0, 3)).reason  # A2ᵀ A2 = I
    assert Compose(AveragePool(2), GaussianBlur(1.0, 3)).reason is None
    probed = Compose(AveragePool(2), GaussianBlur(1.0, 3), image_shape=(1, 8, 8))
    assert not probed.is_projector


def test_exact_composition_errors():
    m = Mask(random_mask((8, 8), 0.5, seed=0))
    with pytest.raises(ValueError, match="exact=True"):
        Compose(m, GaussianBlur(1.5, 3), exact=True, image_shape=(3, 8, 8))
    lazy = Compose(m, GaussianBlur(1.5, 3), exact=True)  # decided at the first use
    with pytest.raises(ValueError, match="exact=True"):
        lazy.A_pinv(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="exact"):
        Compose(m, Identity(), exact="yes")
    with pytest.raises(TypeError, match="A1"):
        Compose(m, lambda x: x)
    forced = Compose(m, Colorization(), exact=False, tol=1e-12)
    assert not forced.rule_valid((3, 8, 8)) and not forced.is_projector


# --- user operators ----------------------------------------------------------------------------
def _blur_fn(x):
    k = torch.tensor([[0.25, 0.5, 0.25]], dtype=x.dtype)
    return F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), k.view(1, 1, 1, 3)).reshape(*x.shape[:2], x.shape[2], -1)


def test_linear_operator_from_function():
    op = LinearOperator.from_function(_blur_fn, (2, 4, 6), tol=1e-12, max_iter=200)
    assert op.y_shape((2, 4, 6)) == (2, 4, 4) and not op.is_projector
    assert max(moore_penrose_errors(op, (2, 4, 6)).values()) <= ITERATIVE_TOL
    with torch.no_grad():  # the sampler runs without autograd: the adjoint must still work
        assert adjoint_error(op, (2, 4, 6)) <= 1e-12
    # Warm start: fewer iterations on a nearby observation, same (minimum-norm) answer.
    y = torch.randn(3, 1, 4, 30, dtype=torch.float64)
    y2 = y + 1e-6 * torch.randn_like(y)
    warm = LinearOperator.from_function(_blur_fn, (1, 4, 32), tol=1e-10, warm_start=True)
    cold = LinearOperator.from_function(_blur_fn, (1, 4, 32), tol=1e-10)
    warm.A_pinv(y)
    second = warm.A_pinv(y2)
    reference = cold.A_pinv(y2)
    assert warm.last_iterations < cold.last_iterations
    torch.testing.assert_close(second, reference, atol=1e-7, rtol=0)
    with pytest.warns(RuntimeWarning, match="max_iter"):
        LinearOperator.from_function(_blur_fn, (1, 4, 32), tol=1e-14, max_iter=1).A_pinv(y)


def test_linear_operator_rejects_nonlinear_functions_and_bad_arguments():
    with pytest.raises(ValueError, match="not linear"):
        LinearOperator.from_function(lambda x: x + 1, (1, 4, 4))
    with pytest.raises(ValueError, match="not linear"):
        LinearOperator.from_function(lambda x: x.clamp(-0.1, 0.1), (1, 4, 4))
    with pytest.raises(ValueError, match="tol"):
        LinearOperator.from_function(lambda x: x, (1, 4, 4), tol=-1)
    with pytest.raises(ValueError, match="max_iter"):
        LinearOperator.from_function(lambda x: x, (1, 4, 4), max_iter=0)
    with pytest.raises(ValueError, match="image_shape"):
        LinearOperator.from_function(lambda x: x, (4, 4))
    op = LinearOperator.from_function(lambda x: x, (1, 4, 4))
    with pytest.raises(ValueError, match="built for images of shape"):
        op.A(torch.zeros(1, 1, 5, 5))


def test_wrap_protocol():
    class Physics:
        def A(self, x):
            return x[..., ::2, :]

        def A_dagger(self, y):
            return torch.stack([y, torch.zeros_like(y)], dim=-2).flatten(-3, -2)

    op = wrap(Physics())
    assert op.y_shape((1, 4, 3)) == (1, 2, 3)
    assert max(moore_penrose_errors(op, (1, 4, 3)).values()) <= 1e-12
    assert adjoint_error(op, (1, 4, 3)) <= 1e-12  # autograd adjoint
    identity = Identity()
    assert wrap(identity) is identity
    with pytest.raises(TypeError, match="A_dagger"):
        wrap(object())


# --- bad input: clear errors naming the argument --------------------------------------------------
def test_bad_input_errors():
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="mask of size 4x4 does not fit an image of size 8x8"):
        Mask(torch.ones(4, 4, dtype=torch.bool)).A(x)
    with pytest.raises(ValueError, match="scale factor 3 does not divide the image size 8x8"):
        Bicubic(3).A(x)
    with pytest.raises(ValueError, match="scale factor 3"):
        AveragePool(3).A(x)
    with pytest.raises(ValueError, match="kernel_h has 9 taps, more than the image height 8"):
        SeparableBlur(torch.ones(9)).A(x)
    with pytest.raises(ValueError, match="kernel_w has 9 taps"):
        SeparableBlur(torch.ones(3), torch.ones(9)).A(x)
    with pytest.raises(ValueError, match="kernel of size 9x9 is larger than the image 8x8"):
        ConvolutionBlur(torch.ones(9, 9)).A(x)
    with pytest.raises(ValueError, match="kernel_h contains NaN"):
        SeparableBlur(torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="kernel_w contains NaN"):
        SeparableBlur(torch.ones(3), torch.tensor([float("inf")]))
    with pytest.raises(ValueError, match="kernel contains NaN"):
        ConvolutionBlur(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="kernel_h is all zeros"):
        SeparableBlur(torch.zeros(3))
    with pytest.raises(ValueError, match="threshold"):
        GaussianBlur(1.0, 3, threshold=1.5)
    with pytest.raises(ValueError, match="size must be odd"):
        GaussianBlur(1.0, 4)
    with pytest.raises(ValueError, match="sigma"):
        GaussianBlur(float("nan"), 3)
    with pytest.raises(ValueError, match="factor"):
        Bicubic(0)
    with pytest.raises(ValueError, match="missing"):
        random_mask(8, 1.5)
    with pytest.raises(ValueError, match="width"):
        stripe_mask(8, period=4, width=5)
    with pytest.raises(ValueError, match="does not fit inside"):
        box_mask(8, top=0.75, height=0.5)
    with pytest.raises(ValueError, match="weights"):
        Colorization([0.0, 0.0, 0.0])


def test_mask_file_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read the mask image .*nope.png"):
        mask_from_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read the mask image"):
        mask_from_image(bad)
    save_mask(torch.ones(4, 6, dtype=torch.bool), tmp_path / "m.png")
    with pytest.raises(ValueError, match="is 4x6, the image is 8x8"):
        mask_from_image(tmp_path / "m.png", (8, 8))


def test_operators_follow_the_input_dtype_and_cache_per_size():
    op = GaussianBlur(1.0, 3)
    for shape in [(1, 6, 6), (1, 6, 10)]:
        x = torch.randn(1, *shape)
        assert op.A_pinv(op.A(x)).dtype == torch.float32
    assert len(op._cache) == 2
