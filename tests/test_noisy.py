"""Noisy observations: degrade(), the DDNM+ correction in the SVD basis, and the σ_y-aware sampler."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import operator_cases

from fixedpoint_ir import GaussianMixturePrior, GaussianPrior, Sampler
from fixedpoint_ir.backends.picard import Picard
from fixedpoint_ir.operators import (AveragePool, Bicubic, Colorization, ConvolutionBlur, GaussianBlur,
                                     Identity, LinearOperator, Mask, degrade, make_operator, motion_kernel,
                                     random_mask)
from fixedpoint_ir.operators.base import ddnm_plus_noise_weights, ddnm_plus_weights


def _dense(op, shape):
    """The matrix of a linear operator, column by column (float64)."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return op.A(basis).reshape(n, -1).T


# --- degrade ---------------------------------------------------------------------------------
def test_degrade():
    op = AveragePool(2)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64) * 2 - 1
    assert torch.equal(degrade(x, op), op.A(x))
    y1 = degrade(x, op, 0.2, torch.Generator().manual_seed(5))
    y2 = degrade(x, op, 0.2, torch.Generator().manual_seed(5))
    assert torch.equal(y1, y2)
    assert abs(float((y1 - op.A(x)).std()) - 0.2) < 0.03
    with pytest.raises(ValueError, match="sigma_y"):
        degrade(x, op, -0.1)
    with pytest.raises(ValueError, match="NaN"):
        degrade(x * float("nan"), op, 0.1)


# --- the DDNM+ correction --------------------------------------------------------------------
def test_ddnm_plus_weights():
    s = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(ddnm_plus_weights(s, 0.5, 0.8, 0.0), torch.ones(3, dtype=torch.float64))
    lam = ddnm_plus_weights(s, sigma_t=0.2, a_t=0.9, sigma_y=0.5)  # σ_t s / (a_t σ_y), capped at 1
    torch.testing.assert_close(lam, torch.tensor([0.2 * 0.1 / 0.45, 0.2 / 0.45, 1.0], dtype=torch.float64))
    g = ddnm_plus_noise_weights(s, sigma_t=0.2, a_t=0.9, sigma_y=0.5)
    assert g[0] == 0 and g[1] == 0  # damped directions: their noise budget is used by y's noise
    assert abs(float(g[2]) - math.sqrt(1 - (0.9 * 0.5 / (10 * 0.2)) ** 2)) < 1e-12
    assert (ddnm_plus_weights(s, 0.0, 1.0, 0.5) == 0).all()  # last step: no correction at all


@settings(max_examples=15, deadline=None)
@given(case=operator_cases(include_iterative=False).filter(lambda c: c.operator.has_spectrum),
       power=st.floats(0.0, 2.0))
def test_filtered_pinv_is_the_svd_filter(case, power):
    """filtered_pinv(r, w) = V diag(w(s)/s) Uᵀ r, against a dense SVD of the (truncated) A."""
    op, shape = case.operator, case.image_shape
    M = _dense(op, shape)
    U, s, Vt = torch.linalg.svd(M, full_matrices=False)
    keep = s > 1e-9 * s.max() if s.numel() and s.max() > 0 else torch.zeros_like(s, dtype=torch.bool)
    w = lambda v: v ** power / (1 + v)  # noqa: E731
    filt = torch.where(keep, w(s) / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    r = torch.randn(2, *op.y_shape(shape), dtype=torch.float64)
    expected = (r.reshape(2, -1) @ U) * filt @ Vt
    torch.testing.assert_close(op.filtered_pinv(r, w).reshape(2, -1), expected, atol=1e-9, rtol=1e-9)


def test_noisy_consistency_reduces_to_ddnm_without_noise():
    x0 = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for op in [Identity(), AveragePool(2), Bicubic(2), GaussianBlur(2.0, 3), Colorization(),
               ConvolutionBlur(motion_kernel(3, 30, 5)), Mask(random_mask((8, 8), 0.5, seed=0))]:
        y = op.A(torch.randn_like(x0))
        torch.testing.assert_close(op.noisy_consistency(x0, y, 0.3, 0.9, 0.0), op.data_consistency(x0, y))
        v = torch.randn_like(x0)
        assert torch.equal(op.noisy_noise_scaling(v, 0.3, 0.9, 0.0), v)
        # large σ_t: λ = 1 everywhere, the full DDNM correction
        torch.testing.assert_close(op.noisy_consistency(x0, y, 1e6, 1.0, 0.1), op.data_consistency(x0, y))


def test_noise_scaling_only_touches_the_range():
    op = Mask(random_mask((8, 8), 0.5, seed=1))
    v = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    out = op.noisy_noise_scaling(v, sigma_t=0.1, a_t=0.99, sigma_y=0.5)  # λ < 1: γ = 0 on the range
    torch.testing.assert_close(out, op.project_null(v))


def test_scalar_approximation_for_operators_without_spectrum():
    op = LinearOperator.from_function(lambda x: x[:, :, ::2], (1, 4, 4), tol=1e-12)
    assert not op.has_spectrum
    x0 = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    y = torch.randn(1, 1, 2, 4, dtype=torch.float64)
    lam = min(1.0, 0.2 / (0.9 * 0.5))
    expected = x0 - lam * op.A_pinv(op.A(x0) - y)
    torch.testing.assert_close(op.noisy_consistency(x0, y, 0.2, 0.9, 0.5), expected)


# --- the σ_y-aware sampler -------------------------------------------------------------------
def test_sampler_sigma_y_arguments():
    prior = GaussianPrior()
    with pytest.raises(ValueError, match="closed_form"):
        Sampler(prior, Identity(), closed_form=True, sigma_y=0.1)
    with pytest.raises(ValueError, match="sigma_y"):
        Sampler(prior, Identity(), sigma_y=-1.0)
    with pytest.raises(ValueError, match="sigma_y"):
        Sampler(prior, Identity(), sigma_y=float("nan"))
    Sampler(prior, Identity(), closed_form=True, sigma_y=0.0)  # σ_y-blind: closed form allowed


@pytest.mark.parametrize("op", [Identity(), Mask(random_mask((8, 8), 0.5, seed=2)), GaussianBlur(2.0, 3),
                                ConvolutionBlur(motion_kernel(3, 45, 5)),
                                LinearOperator.from_function(lambda x: x[:, :, ::2], (3, 8, 8), tol=1e-12)],
                         ids=["identity", "mask", "blur", "motion", "user_function"])
def test_sigma_y_aware_parallel_equals_sequential(op):
    prior = GaussianMixturePrior()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    y = degrade(x, op, 0.2, torch.Generator().manual_seed(1))
    sampler = Sampler(prior, op, Picard(tol=0.0), steps=10, etw=0.2, nw=0.2, sigma_y=0.2)
    par = sampler.restore(y, generator=torch.Generator().manual_seed(3))
    seq = sampler.sequential(y, generator=torch.Generator().manual_seed(3))
    assert par.converged
    assert float((par.image - seq.image).norm() / seq.image.norm()) <= 1e-6


@pytest.mark.parametrize("name", ["denoise", "inpaint_random", "sr2", "colorize", "deblur_gauss"])
def test_sigma_y_aware_mode_beats_the_blind_mode(name):
    """Gaussian prior x ~ N(0, 0.1) per pixel, y = A x + 0.3 n: mean squared error over 8 images.

    For denoising the posterior mean is known in closed form (0.1 y / (0.1 + σ_y²)): the σ_y-blind
    DDNM returns y itself (error σ_y² = 0.09), the σ_y-aware mode gets much closer to the oracle.
    """
    sigma_y, var = 0.3, 0.1
    prior = GaussianPrior(0.0, var)
    op = make_operator(name, (3, 16, 16))
    g = torch.Generator().manual_seed(0)
    x = math.sqrt(var) * torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64)
    y = degrade(x, op, sigma_y, g)
    errors = {}
    for mode, s in (("blind", 0.0), ("aware", sigma_y)):
        sampler = Sampler(prior, op, Picard(tol=0.0), steps=20, etw=0.1, nw=0.1, sigma_y=s)
        # the sequential chain (= the parallel solve's fixed point, tested above): 20 steps only
        image = sampler.sequential(y, generator=torch.Generator().manual_seed(3)).image
        errors[mode] = float((image - x).square().mean())
    assert errors["aware"] < 0.9 * errors["blind"], errors
    if name == "denoise":
        oracle = float((var * y / (var + sigma_y ** 2) - x).square().mean())
        assert abs(errors["blind"] - sigma_y ** 2) < 0.01
        assert errors["aware"] < 0.65 * errors["blind"] and errors["aware"] < 1.3 * oracle, (errors, oracle)
