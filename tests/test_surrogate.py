"""Gaussian surrogates: their ε and Jacobian against dense closed forms, the fit, files, and the
solver with a power-law surrogate still landing on the sequential chain."""
import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fixedpoint_ir import GaussianMixturePrior, Sampler
from fixedpoint_ir.backends import Triangular
from fixedpoint_ir.surrogate import PowerLawGaussian, WhiteGaussian, as_surrogate

from helpers import ground_truth, make_operator, observe


def random_power_law(channels, seed, exponent=2.0, cutoff=0.05):
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(channels, channels, generator=gen, dtype=torch.float64))
    amplitude = torch.rand(channels, generator=gen, dtype=torch.float64) * 0.01 + 1e-4
    mean = torch.rand(channels, generator=gen, dtype=torch.float64) - 0.5
    return PowerLawGaussian(mean, basis, amplitude, exponent, cutoff)


def dense_covariance(model, h, w):
    """Σ in the pixel basis from the definition (numpy cosines, no FFT): colour basis ⊗ the
    stationary covariance k(p − q) = (1/HW) Σ_f S(f) cos(2π f·(p − q))."""
    fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    pos = [(i, j) for i in range(h) for j in range(w)]
    spectrum_shape = np.array([[(a * a + b * b + model.cutoff ** 2) ** (-model.exponent / 2) for b in fx] for a in fy])
    spatial = np.zeros((h * w, h * w))
    for p, (i, j) in enumerate(pos):
        for q, (k, l) in enumerate(pos):
            phase = 2 * np.pi * (fy[:, None] * (i - k) + fx[None, :] * (j - l))
            spatial[p, q] = (spectrum_shape * np.cos(phase)).sum() / (h * w)
    basis = model.basis.numpy()
    amp = model.amplitude.numpy()
    colour = [np.outer(basis[k], basis[k]) * amp[k] for k in range(len(amp))]
    return sum(np.kron(c, spatial) for c in colour)


@settings(max_examples=12, deadline=None)
@given(h=st.integers(2, 5), w=st.integers(2, 5), channels=st.integers(1, 3), seed=st.integers(0, 100),
       a=st.floats(0.01, 0.99), exponent=st.floats(0.5, 3.5), cutoff=st.floats(0.01, 0.5))
def test_power_law_jacobian_is_the_gaussian_closed_form(h, w, channels, seed, a, exponent, cutoff):
    """J_ᾱ = √(1−ᾱ)(ᾱΣ + (1−ᾱ)I)⁻¹ with Σ built densely from the model's definition, and
    ε(x) = J_ᾱ(x − √ᾱ μ)."""
    model = random_power_law(channels, seed, exponent, cutoff)
    n = channels * h * w
    eye = torch.eye(n, dtype=torch.float64).view(n, channels, h, w)
    jac = model.jvp(eye, a).reshape(n, n).T.numpy()           # column i = J e_i
    sigma = dense_covariance(model, h, w)
    expected = math.sqrt(1 - a) * np.linalg.inv(a * sigma + (1 - a) * np.eye(n))
    np.testing.assert_allclose(jac, expected, atol=1e-9, rtol=1e-7)
    x = torch.randn(2, channels, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    mean = model.mean_value.view(1, -1, 1, 1)
    torch.testing.assert_close(model.eps(x, a), model.jvp(x - math.sqrt(a) * mean, a))


def test_white_gaussian_matches_its_formula_and_per_item_alpha():
    model = WhiteGaussian(0.1, 0.3)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    a = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    expected = ((1 - a).sqrt() / (a * 0.3 + 1 - a)).view(-1, 1, 1, 1) * (x - a.sqrt().view(-1, 1, 1, 1) * 0.1)
    torch.testing.assert_close(model.eps(x, a), expected)
    with pytest.raises(ValueError, match="alpha_bar"):
        model.jvp(x, torch.tensor([0.5, 0.5]))


def test_power_law_per_item_alpha_equals_one_at_a_time():
    model = random_power_law(3, 0)
    d = torch.randn(4, 3, 6, 5, dtype=torch.float64)
    a = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64)
    together = model.jvp(d, a)
    for i in range(4):
        torch.testing.assert_close(together[i:i + 1], model.jvp(d[i:i + 1], float(a[i])))


def sample_power_law(model, n, size, seed):
    """Draws from the model: white noise coloured by √S per decorrelated channel."""
    gen = torch.Generator().manual_seed(seed)
    white = torch.randn(n, model.channels, size, size, generator=gen, dtype=torch.float64)
    s = model.spectrum(size, size)
    rotated = torch.fft.ifft2(torch.fft.fft2(white) * s.sqrt()).real
    return torch.einsum("kc,nkhw->nchw", model.basis, rotated) + model.mean_value.view(1, -1, 1, 1)


def test_fit_recovers_a_known_model():
    truth = PowerLawGaussian([0.1, -0.2, 0.3], torch.eye(3, dtype=torch.float64)[[2, 0, 1]],
                             [4e-3, 1e-3, 2e-4], exponent=2.0, cutoff=0.03)
    fitted = PowerLawGaussian.fit(sample_power_law(truth, 200, 32, seed=0))
    assert abs(fitted.exponent - 2.0) <= 0.2
    torch.testing.assert_close(fitted.mean_value, truth.mean_value, atol=0.05, rtol=0)
    alignment = (fitted.basis @ truth.basis.T).abs()        # same channels up to sign
    torch.testing.assert_close(alignment, torch.eye(3, dtype=torch.float64), atol=0.05, rtol=0)
    ratio = fitted.spectrum(32, 32) / truth.spectrum(32, 32)
    assert 0.6 < float(ratio.median()) < 1.6


def test_save_load_round_trip_and_errors(tmp_path):
    model = random_power_law(3, 1)
    path = tmp_path / "s.json"
    model.save(path)
    again = PowerLawGaussian.load(path)
    d = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(again.jvp(d, 0.4), model.jvp(d, 0.4))
    bad = model.to_dict()
    bad.pop("basis")
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="basis"):
        PowerLawGaussian.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        PowerLawGaussian.load(path)
    with pytest.raises(ValueError, match="orthonormal"):
        PowerLawGaussian([0, 0], [[1, 1], [0, 1]], [1, 1], 2, 0.1)
    with pytest.raises(ValueError, match="amplitude > 0"):
        PowerLawGaussian([0], [[1]], [-1], 2, 0.1)
    with pytest.raises(ValueError, match="3-channel"):
        model.jvp(torch.zeros(1, 1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        PowerLawGaussian.fit(torch.full((2, 3, 8, 8), float("nan")))
    with pytest.raises(TypeError, match="surrogate"):
        as_surrogate("white")
    with pytest.raises(ValueError, match="var"):
        WhiteGaussian(0, -1)


def test_a_surrogate_that_does_not_fit_the_image_fails_before_any_network_call():
    from fixedpoint_ir.operators import AveragePool

    prior = GaussianMixturePrior(0.5, 0.05)
    calls = []
    original = prior.predict_eps
    prior.predict_eps = lambda x, t: (calls.append(1), original(x, t))[1]
    op = AveragePool(2)
    # Picard from x_T never uses the surrogate: only the check when the chain is built can catch it.
    sampler = Sampler(prior, op, "picard", steps=4, init="x_T", surrogate=random_power_law(3, 0))
    y = op.A(torch.rand(1, 1, 8, 8, dtype=torch.float64))        # a grey image
    with pytest.raises(ValueError, match="3-channel"):
        sampler.restore(y)
    assert calls == []


def test_sampler_takes_the_priors_surrogate_or_the_given_one():
    prior = GaussianMixturePrior(0.5, 0.05)
    assert isinstance(Sampler(prior).surrogate, WhiteGaussian)
    model = random_power_law(3, 2)
    prior.surrogate = model
    assert Sampler(prior).surrogate is model
    assert isinstance(Sampler(prior, surrogate=(0.0, 0.5)).surrogate, WhiteGaussian)
    with pytest.raises(ValueError, match="surrogate"):
        Sampler(prior, surrogate=(0.0, -1.0))


SIZE = 8


def _solve(op_name, solver, surrogate, *, steps=16, seed=0, init="surrogate"):
    op = make_operator(op_name, SIZE)
    sampler = Sampler(GaussianMixturePrior(0.5, 0.05), op, solver, steps=steps, etw=0.1, nw=0.0,
                      init=init, surrogate=surrogate)
    y = observe(op, ground_truth(SIZE, 2))
    ref = sampler.sequential(y, generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = sampler.restore(y, generator=torch.Generator().manual_seed(seed))
    return out, float((out.image - ref.image).abs().max())


@pytest.mark.parametrize("linearize", ["multisecant", "secant", "surrogate"])
@pytest.mark.parametrize("op", ["sr", "inpaint", "colorize"])
def test_power_law_surrogate_keeps_the_answer_and_the_honest_stop(op, linearize):
    """A mismatched surrogate (power law vs the mixture prior) changes rounds, never the answer;
    converged ⇒ within tol of the sequential chain."""
    model = random_power_law(3, 3)
    out, err = _solve(op, Triangular(tol=1e-9, linearize=linearize), model)
    assert out.converged and err <= 1e-6
    for tol in (1e-2, 1e-3):
        for window in (None, 4):
            out, err = _solve(op, Triangular(tol=tol, window=window, linearize=linearize), model, steps=20)
            if out.converged:
                assert err <= tol, (op, tol, window, err)


def test_shipped_surrogate_is_reproducible(tmp_path):
    """``python -m fixedpoint_ir.train --surrogate-only`` rebuilds the shipped file (to float64
    rounding: the last digits depend on the BLAS and numpy build), and the default prior carries it."""
    from fixedpoint_ir import train
    from fixedpoint_ir.priors.default import DEFAULT_SURROGATE, default_prior

    assert train.main(["--out", str(tmp_path), "--surrogate-only", "--seed", "0"]) == 0
    rebuilt = PowerLawGaussian.load(tmp_path / train.SURROGATE_NAME).to_dict()
    shipped = PowerLawGaussian.load(DEFAULT_SURROGATE).to_dict()
    assert rebuilt.keys() == shipped.keys()
    for key, value in shipped.items():
        if key == "kind":
            assert rebuilt[key] == value
        else:
            assert torch.allclose(torch.tensor(rebuilt[key], dtype=torch.float64),
                                  torch.tensor(value, dtype=torch.float64), rtol=1e-9, atol=1e-12), key
    assert isinstance(default_prior().surrogate, PowerLawGaussian)
