import pytest
import torch
from hypothesis import given, strategies as st

from fixedpoint_ir.schedule import (StepCoefficients, alphas_cumprod_from_betas, check_alphas_cumprod,
                                    linear_betas, uniform_timesteps)


def test_uniform_timesteps_t20_starts_at_950():
    ts = uniform_timesteps(20)
    assert ts.tolist() == list(range(950, -1, -50))


@given(st.integers(1, 1000))
def test_uniform_timesteps_shape_and_order(steps):
    ts = uniform_timesteps(steps)
    assert ts.numel() == steps and ts[-1] == 0
    assert (ts[:-1] > ts[1:]).all() and ts[0] < 1000


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_steps_out_of_range(steps):
    with pytest.raises(ValueError, match="steps"):
        uniform_timesteps(steps)


def test_coefficients_follow_design():
    ac = alphas_cumprod_from_betas(linear_betas())
    ts = uniform_timesteps(10)
    c = StepCoefficients.build(ac, ts, etw=0.3, nw=0.2)
    assert torch.equal(c.a, ac[ts])
    assert torch.equal(c.b[:-1], ac[ts[1:]]) and c.b[-1] == 1
    assert torch.allclose(c.c1, (1 - c.b).sqrt() * 0.2)
    assert torch.allclose(c.c2, (1 - c.b).sqrt() * (1 - 0.09) ** 0.5)
    assert c.c1[-1] == 0 and c.c2[-1] == 0


@pytest.mark.parametrize("name,value", [("etw", -0.1), ("etw", 1.5), ("nw", 2.0), ("nw", float("nan"))])
def test_coefficient_weights_must_be_in_unit_interval(name, value):
    ac = alphas_cumprod_from_betas(linear_betas())
    kwargs = {"etw": 0.1, "nw": 0.0, name: value}
    with pytest.raises(ValueError, match=name):
        StepCoefficients.build(ac, uniform_timesteps(5), **kwargs)


@pytest.mark.parametrize("bad", [torch.ones(2, 3) * 0.5, torch.tensor([0.5, 0.9]),
                                 torch.tensor([1.0, float("nan")]), torch.tensor([0.9, 0.5, -0.1])])
def test_schedule_must_be_1d_and_decreasing(bad):
    with pytest.raises(ValueError, match="alphas_cumprod"):
        check_alphas_cumprod(bad)
