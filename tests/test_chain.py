"""The map F: strictly lower triangular, closed form = replay, Picard exact after T rounds."""
import pytest
import torch
from hypothesis import given, strategies as st

from fixedpoint_ir import GaussianMixturePrior, Sampler
from fixedpoint_ir.backends import Picard

from helpers import OPERATOR_NAMES, ground_truth, make_operator, observe

SIZE = 8


def _chain(op_name, steps=8, noise="per_step", nw=0.3, etw=0.2, seed=0, n=1):
    op = make_operator(op_name, SIZE)
    sampler = Sampler(GaussianMixturePrior(0.5, 0.05), op, "picard", steps=steps, etw=etw, nw=nw,
                      noise=noise)
    y = observe(op, ground_truth(SIZE, n))
    gen = torch.Generator().manual_seed(seed)
    if op is None:
        return sampler, sampler.chain(image_shape=(3, SIZE, SIZE), num_images=n, generator=gen,
                                      dtype=torch.float64), y
    return sampler, sampler.chain(y, generator=gen), y


@given(op=st.sampled_from(OPERATOR_NAMES), steps=st.integers(2, 10), data=st.data())
def test_map_is_strictly_lower_triangular(op, steps, data):
    """Perturbing row j of z changes no row ≤ j of F(z)."""
    _, chain, _ = _chain(op, steps)
    z = torch.randn(chain.state_shape, dtype=torch.float64)
    j = data.draw(st.integers(0, steps - 1))
    z2 = z.clone()
    z2[j] += torch.randn_like(z2[j])
    f1, f2 = chain(z), chain(z2)
    assert torch.equal(f1[: j + 1], f2[: j + 1])
    if j + 1 < steps - 1:  # the last row of denoising is y itself, whatever z
        assert not torch.equal(f1[j + 1:], f2[j + 1:])


@pytest.mark.parametrize("noise", ["per_step", "shared"])
@pytest.mark.parametrize("op", OPERATOR_NAMES)
def test_closed_form_equals_replay(op, noise):
    _, chain, _ = _chain(op, steps=12, noise=noise, n=2)
    z = torch.randn(chain.state_shape, dtype=torch.float64)
    e = chain.eps(z)
    torch.testing.assert_close(chain.closed_form(e), chain.replay(e), rtol=0, atol=1e-10)


@given(op=st.sampled_from(OPERATOR_NAMES), steps=st.integers(1, 12), scale=st.floats(0.0, 10.0))
def test_picard_from_any_start_is_exact_after_T_rounds(op, steps, scale):
    sampler, chain, _ = _chain(op, steps)
    reference = chain.sequential()
    z = scale * torch.randn(chain.state_shape, dtype=torch.float64)
    for k in range(steps):
        z = chain(z)
        # After k + 1 rounds the first k + 1 rows are exact.
        torch.testing.assert_close(z[: k + 1], reference[: k + 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(z, reference, rtol=0, atol=1e-12)


def test_shared_noise_uses_one_xi():
    _, chain, _ = _chain("sr", noise="shared")
    assert torch.equal(chain.noise[0], chain.noise[-1])
    _, chain, _ = _chain("sr", noise="per_step")
    assert not torch.equal(chain.noise[0], chain.noise[-1])


def test_plain_ddim_step_matches_textbook_formula():
    """Without an operator, one step is DDIM (Song et al. 2021) with σ = c1, direction c2."""
    sampler, chain, _ = _chain("none", steps=4, nw=0.0, etw=0.0)
    x = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64)
    e = torch.randn_like(x)
    a, b = chain.coefficients.a[1], chain.coefficients.b[1]
    x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
    torch.testing.assert_close(chain.step(1, x, e), b.sqrt() * x0 + (1 - b).sqrt() * e)


def test_rows_of_frozen_prefix_equal_full_map():
    sampler, chain, _ = _chain("inpaint", steps=8)
    exact = chain.sequential()
    z = exact.clone()
    z[4:] = torch.randn_like(z[4:])
    full = chain(z)
    torch.testing.assert_close(chain.rows(z, 4, 8), full[4:8], rtol=0, atol=1e-12)
    torch.testing.assert_close(chain.rows(z, 4, 6), full[4:6], rtol=0, atol=1e-12)
