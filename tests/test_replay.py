"""The vectorised replays (parallel scans over rows) equal the row loop (DESIGN §10, issue 12)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fixedpoint_ir import GaussianMixturePrior, Sampler
from fixedpoint_ir.backends import Triangular
from fixedpoint_ir.chain import affine_scan
from fixedpoint_ir.operators import TASKS, make_operator
from fixedpoint_ir.surrogate import PowerLawGaussian, WhiteGaussian

SIZE = 16
PROJECTOR_TASKS = [name for name in TASKS if name not in ("inpaint_file",)
                   and getattr(make_operator(name, (3, SIZE, SIZE)), "is_projector", False)]


def _chain(task, noise="per_step", steps=10, n=2, dtype=torch.float64, surrogate=None, seed=0):
    op = None if task is None else make_operator(task, (3, SIZE, SIZE))
    sampler = Sampler(GaussianMixturePrior(0.5, 0.05), op, "picard", steps=steps, etw=0.2, nw=0.3,
                      noise=noise, surrogate=surrogate or WhiteGaussian(0.0, 0.3))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, SIZE, SIZE, generator=g, dtype=dtype) * 2 - 1
    if op is None:
        chain = sampler.chain(image_shape=(3, SIZE, SIZE), num_images=n, generator=g, dtype=dtype)
    else:
        chain = sampler.chain(op.A(x), generator=g)
    chain.scan_replay = True      # the scan everywhere (by default only off the CPU)
    return chain


def test_every_task_operator_but_a_file_mask_is_covered():
    assert {"sr4", "sr4_bicubic", "deblur_gauss", "inpaint_random", "colorize", "old_photo"} <= set(PROJECTOR_TASKS)


def test_affine_scan_equals_the_recurrence():
    g = torch.Generator().manual_seed(0)
    decay = torch.randn(13, 3, generator=g, dtype=torch.float64)
    decay[4, 1] = 0.0
    offset = torch.randn(13, 3, 5, generator=g, dtype=torch.float64)
    x, expected = torch.zeros(3, 5, dtype=torch.float64), []
    for j in range(13):
        x = decay[j, :, None] * x + offset[j]
        expected.append(x)
    torch.testing.assert_close(affine_scan(decay, offset), torch.stack(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("noise", ["per_step", "shared"])
@pytest.mark.parametrize("task", [None, *PROJECTOR_TASKS])
def test_replay_scan_equals_loop(task, noise):
    chain = _chain(task, noise)
    assert chain.is_affine_in_span
    z = torch.randn(chain.state_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    e = chain.eps(z)
    loop = chain.replay_steps(e)
    torch.testing.assert_close(chain.replay(e), loop, rtol=0, atol=1e-10)
    torch.testing.assert_close(chain.closed_form(e), loop, rtol=0, atol=1e-10)
    # a partial replay from a later row
    torch.testing.assert_close(chain.replay(e[4:], 4, z[3]), chain.replay_steps(e[4:], 4, z[3]),
                               rtol=0, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(task=st.sampled_from([None, *PROJECTOR_TASKS]), noise=st.sampled_from(["per_step", "shared"]),
       steps=st.integers(1, 12), seed=st.integers(0, 2 ** 16), data=st.data())
def test_linear_replay_equals_the_triangular_loop(task, noise, steps, seed, data):
    """Linearised e with per-(row, image) secant scales and a per-image frozen prefix."""
    chain = _chain(task, noise, steps=steps, n=3, seed=seed)
    assert chain.can_linear_replay
    g = torch.Generator().manual_seed(seed)
    shape = chain.state_shape
    z, at, e_cache = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    scale = 4 * torch.rand(steps, 3, generator=g, dtype=torch.float64)
    prefix = torch.tensor([data.draw(st.integers(0, steps)) for _ in range(3)])
    solver = Triangular()
    fast = chain.linear_replay(z, e_cache, at, scale, prefix)
    loop = solver._replay_rows(chain, z, e_cache, at, scale, prefix)
    for a, b in zip(fast, loop):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_the_cpu_default_is_the_loop():
    chain = _chain("sr4")
    chain.scan_replay = None
    assert chain.is_affine_in_span and not chain.can_linear_replay


def test_power_law_surrogate_and_ddnm_plus_keep_the_loop():
    law = PowerLawGaussian([0.0] * 3, torch.eye(3), [1.0] * 3, 2.0, 0.05)
    assert not _chain("sr4", surrogate=law).can_linear_replay
    sampler = Sampler(GaussianMixturePrior(0.5, 0.05), make_operator("sr4", (3, SIZE, SIZE)), steps=5,
                      sigma_y=0.1)
    y = torch.zeros(1, 3, SIZE // 4, SIZE // 4, dtype=torch.float64)
    assert not sampler.chain(y, generator=torch.Generator().manual_seed(0)).is_affine_in_span


@pytest.mark.parametrize("task", ["sr4", "deblur_gauss", "inpaint_random"])
def test_float32_replay_is_as_close_to_float64_as_the_loop(task):
    """In float32 the scan and the closed form (both computed in float64) are at least as accurate
    as the loop (T = 20)."""
    c64 = _chain(task, steps=20, n=1)
    z = torch.randn(c64.state_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    e = c64.eps(z)
    exact = c64.replay_steps(e)
    c32 = _chain(task, steps=20, n=1, dtype=torch.float32)
    c32.x_T, c32.noise = c64.x_T.float(), c64.noise.float()
    c32.projector = (c32.projector[0], c64.projector[1].float())
    loop_err = (c32.replay_steps(e.float()).double() - exact).abs().max()
    c32.scan_replay = True
    scan_err = (c32.replay(e.float()).double() - exact).abs().max()
    closed_err = (c32.closed_form(e.float()).double() - exact).abs().max()
    assert scan_err <= loop_err and closed_err <= loop_err


def test_triangular_solve_with_scan_equals_sequential():
    chain = _chain("sr4", steps=12, n=2)
    reference = chain.sequential()
    report = Triangular(tol=1e-9).solve(chain, chain.surrogate_trajectory())
    torch.testing.assert_close(report.solution, reference, rtol=0, atol=1e-8)
    assert chain.timings["replay"] > 0 and chain.timings["network"] > 0
