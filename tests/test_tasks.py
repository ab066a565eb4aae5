"""The task registry (defaults, serialisable configs) and the sampler on every task: the parallel
solve reaches the sequential chain, also when started at an intermediate timestep."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fixedpoint_ir import GaussianMixturePrior, Sampler
from fixedpoint_ir.null_mean import null_mean_basis, remove_null_mean
from fixedpoint_ir.backends.picard import Picard
from fixedpoint_ir.operators import (TASKS, Bicubic, Compose, ConvolutionBlur, GaussianBlur, degrade,
                                     describe_tasks, list_tasks, make_operator, operator_from_config,
                                     save_mask, task_defaults)

NAMED = ["sr2", "sr4", "sr4_bicubic", "deblur_gauss", "deblur_aniso", "deblur_motion", "inpaint_random",
         "inpaint_box", "inpaint_stripes", "inpaint_text", "colorize", "denoise", "old_photo"]
SHAPE = (3, 16, 16)


def test_registry_lists_every_named_task():
    assert set(NAMED) <= set(list_tasks())
    table = describe_tasks()
    assert all(f"`{name}`" in table for name in list_tasks())


def test_published_default_kernels():
    gauss = make_operator("deblur_gauss", SHAPE)
    assert isinstance(gauss, GaussianBlur) and gauss.kernel_h.numel() == 5 and gauss.sigma == 10
    assert isinstance(make_operator("sr4_bicubic", SHAPE), Bicubic)
    assert isinstance(make_operator("deblur_motion", SHAPE), ConvolutionBlur)
    photo = make_operator("old_photo", SHAPE)
    assert isinstance(photo, Compose) and photo.is_projector
    assert TASKS["denoise"].sigma_y > 0 and make_operator("denoise", SHAPE).task_config["sigma_y"] == 0.1


@pytest.mark.parametrize("name", NAMED)
def test_config_round_trip_rebuilds_the_same_operator(name):
    op = make_operator(name, SHAPE, generator=torch.Generator().manual_seed(7))
    text = json.dumps(op.task_config)
    again = operator_from_config(text)
    assert again.task_config == op.task_config
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    assert torch.equal(op.A(x), again.A(x))
    assert torch.equal(op.A_pinv(op.A(x)), again.A_pinv(again.A(x)))


def test_seeds_generators_and_overrides():
    a = make_operator("inpaint_random", SHAPE, generator=torch.Generator().manual_seed(1))
    b = make_operator("inpaint_random", SHAPE, generator=torch.Generator().manual_seed(2))
    assert a.task_config["params"]["seed"] != b.task_config["params"]["seed"]
    assert not torch.equal(a.mask, b.mask)
    fixed = make_operator("inpaint_random", SHAPE, generator=torch.Generator().manual_seed(1), seed=5)
    assert fixed.task_config["params"]["seed"] == 5
    assert torch.equal(make_operator("inpaint_random", SHAPE).mask,
                       make_operator("inpaint_random", SHAPE, seed=0).mask)
    per = make_operator("inpaint_random", SHAPE, per_channel=True, missing=0.25)
    assert per.mask.shape == SHAPE and int((~per.mask[0]).sum()) == 64
    assert make_operator("colorize", SHAPE, weights=(0.299, 0.587, 0.114)).task_config["params"]["weights"] \
        == [0.299, 0.587, 0.114]
    assert task_defaults("deblur_gauss") == {"sigma": 10.0, "size": 5, "threshold": 3e-2}


def test_mask_file_task(tmp_path):
    op = make_operator("inpaint_stripes", SHAPE)
    save_mask(op.mask, tmp_path / "stripes.png")
    from_file = make_operator("inpaint_file", SHAPE, path=tmp_path / "stripes.png")
    assert torch.equal(from_file.mask, op.mask)
    assert operator_from_config(json.dumps(from_file.task_config)).mask.equal(op.mask)


def test_task_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'sr3'"):
        make_operator("sr3", SHAPE)
    with pytest.raises(ValueError, match="unknown parameter.*sigma"):
        make_operator("sr2", SHAPE, sigma=1.0)
    with pytest.raises(ValueError, match="scale factor 4 does not divide the image size 18x18"):
        make_operator("sr4", (3, 18, 18))
    with pytest.raises(ValueError, match="kernel of size 11x11 is larger than the image 8x8"):
        make_operator("deblur_motion", (3, 8, 8))
    with pytest.raises(ValueError, match="needs path"):
        make_operator("inpaint_file", SHAPE)
    save_mask(make_operator("inpaint_box", SHAPE).mask, tmp_path / "m.png")
    with pytest.raises(ValueError, match="is 16x16, the image is 8x8"):
        make_operator("inpaint_file", (3, 8, 8), path=tmp_path / "m.png")


# --- the sampler on every task ---------------------------------------------------------------
def _problem(name, steps=10):
    op = make_operator(name, SHAPE)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, *SHAPE, generator=g, dtype=torch.float64) * 2 - 1
    sigma_y = op.task_config["sigma_y"]
    y = degrade(x, op, sigma_y, g)
    sampler = Sampler(GaussianMixturePrior(), op, Picard(tol=0.0), steps=steps, etw=0.1, nw=0.1,
                      sigma_y=sigma_y)
    return sampler, y


@pytest.mark.parametrize("name", NAMED)
def test_parallel_solve_converges_to_the_sequential_chain(name):
    sampler, y = _problem(name)
    par = sampler.restore(y, generator=torch.Generator().manual_seed(1))
    seq = sampler.sequential(y, generator=torch.Generator().manual_seed(1))
    assert par.converged and par.rounds <= sampler.steps
    rel = float((par.states - seq.states).norm() / seq.states.norm())
    assert rel <= 1e-6, rel


@pytest.mark.parametrize("name", ["sr4", "deblur_gauss", "old_photo", "denoise"])
def test_intermediate_start_equals_the_sequential_chain_started_the_same_way(name):
    sampler, y = _problem(name, steps=12)
    k = 5
    # default estimate A†y
    par = sampler.restore(y, start_step=k, generator=torch.Generator().manual_seed(2))
    seq = sampler.sequential(y, start_step=k, generator=torch.Generator().manual_seed(2))
    assert par.states.shape[0] == 12 - k and par.rounds <= 12 - k and par.nfe <= (12 - k) ** 2
    assert float((par.image - seq.image).norm() / seq.image.norm()) <= 1e-6
    # the start state is x_t = √ᾱ_t x_init + √(1−ᾱ_t) ε, t = t_k, ε the first draw of the generator
    chain = sampler.chain(y, start_step=k, generator=torch.Generator().manual_seed(2))
    eps = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    op = sampler.operator
    if sampler.fix_null_mean:      # old_photo's default: ε without the image-wide constants A misses
        eps = remove_null_mean(eps, null_mean_basis(op, SHAPE, dtype=torch.float64))
    a = float(sampler.prior.alphas_cumprod[sampler.timesteps[k]])
    torch.testing.assert_close(chain.x_T, math.sqrt(a) * op.A_pinv(y) + math.sqrt(1 - a) * eps)
    assert torch.equal(chain.coefficients.timesteps, sampler.timesteps[k:])
    # a user's estimate (e.g. another restoration network's output)
    x_init = (op.A_pinv(y) + 0.1).clamp(-1, 1)
    par = sampler.restore(y, start_step=k, x_init=x_init, generator=torch.Generator().manual_seed(3))
    seq = sampler.sequential(y, start_step=k, x_init=x_init, generator=torch.Generator().manual_seed(3))
    assert float((par.image - seq.image).norm() / seq.image.norm()) <= 1e-6


def test_intermediate_start_errors():
    sampler, y = _problem("sr2")
    with pytest.raises(ValueError, match="start_step must be an int in \\[0, 10\\)"):
        sampler.restore(y, start_step=10)
    with pytest.raises(ValueError, match="x_init needs start_step"):
        sampler.restore(y, x_init=sampler.operator.A_pinv(y))
    with pytest.raises(ValueError, match="x_init must have shape"):
        sampler.restore(y, start_step=3, x_init=torch.zeros(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="not both"):
        sampler.restore(y, start_step=3, x_init=sampler.operator.A_pinv(y),
                        x_T=torch.zeros(1, *SHAPE, dtype=torch.float64))
