"""Noise drawn without the null space's constant images (fix_null_mean, issue #22)."""
from __future__ import annotations

import pytest
import torch
from helpers import CountingPrior, ground_truth
from hypothesis import given, settings
from hypothesis import strategies as st

from fixedpoint_ir import Picard, Sampler
from fixedpoint_ir.null_mean import null_mean_basis, remove_null_mean
from fixedpoint_ir.operators import AveragePool, Colorization, Mask
from fixedpoint_ir.operators.tasks import TASKS, make_operator

SHAPE = (3, 8, 8)


def _operator(kind: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    if kind == "colour":
        return Colorization(torch.rand(3, generator=g, dtype=torch.float64) + 0.1)
    if kind == "mask":
        return Mask(torch.rand(8, 8, generator=g) > 0.5)
    return AveragePool(2)


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["colour", "mask", "pool"]), seed=st.integers(0, 10_000))
def test_the_basis_is_orthonormal_unseen_and_spans_the_unseen_constants(kind, seed):
    op = _operator(kind, seed)
    basis = null_mean_basis(op, SHAPE, dtype=torch.float64)
    gram = torch.einsum("kchw,lchw->kl", basis, basis)
    assert torch.allclose(gram, torch.eye(basis.shape[0], dtype=torch.float64), atol=1e-10)
    if basis.shape[0]:
        assert op.A(basis).abs().max() < 1e-10                   # A does not see them
    for c in range(3):                                            # (I − A†A) 1_c lies in their span
        one = torch.zeros(1, *SHAPE, dtype=torch.float64)
        one[0, c] = 1.0
        unseen = one - op.A_pinv(op.A(one))
        rest = remove_null_mean(unseen, basis)
        assert rest.abs().max() < 1e-10


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["colour", "mask"]), seed=st.integers(0, 10_000))
def test_removal_is_an_orthogonal_projection_that_keeps_what_A_sees(kind, seed):
    op = _operator(kind, seed)
    basis = null_mean_basis(op, SHAPE, dtype=torch.float64)
    v = torch.randn(4, 2, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = remove_null_mean(v, basis)
    assert torch.einsum("tnchw,kchw->tnk", w, basis).abs().max() < 1e-10     # nothing left along S
    assert torch.allclose(remove_null_mean(w, basis), w, atol=1e-12)          # idempotent
    assert torch.allclose(op.A(w.flatten(0, 1)), op.A(v.flatten(0, 1)), atol=1e-10)
    removed = v - w
    assert torch.allclose((removed * w).sum(), torch.zeros((), dtype=torch.float64), atol=1e-8)  # orthogonal


def test_how_many_directions_each_task_leaves_unseen():
    counts = {t: null_mean_basis(make_operator(t, (3, 16, 16)), (3, 16, 16)).shape[0]
              for t in ("colorize", "sr4", "inpaint_random", "old_photo")}
    assert counts == {"colorize": 2, "sr4": 0, "inpaint_random": 3, "old_photo": 3}


def test_colorization_noise_has_no_global_colour_and_the_same_draw_otherwise():
    op = Colorization()
    prior = CountingPrior(0.0, 0.3)
    y = op.A(ground_truth(8, 2, dtype=torch.float32))
    drawn = Sampler(prior, op, steps=4, etw=1.0, nw=1.0).chain(y, generator=torch.Generator().manual_seed(3))
    fixed = Sampler(prior, op, steps=4, etw=1.0, nw=1.0, fix_null_mean=True).chain(
        y, generator=torch.Generator().manual_seed(3))
    for v in (fixed.x_T, fixed.noise):
        chroma = v - v.mean(dim=-3, keepdim=True)
        assert chroma.mean(dim=(-2, -1)).abs().max() < 1e-6
    basis = null_mean_basis(op, SHAPE)
    assert torch.allclose(fixed.x_T, remove_null_mean(drawn.x_T, basis), atol=1e-6)   # same seed, same rest
    assert torch.allclose(fixed.noise, remove_null_mean(drawn.noise, basis), atol=1e-6)
    shared = Sampler(prior, op, steps=4, etw=1.0, nw=1.0, noise="shared", fix_null_mean=True).chain(
        y, generator=torch.Generator().manual_seed(3))
    assert shared.noise.stride(0) == 0 and torch.allclose(shared.noise[0], shared.noise[-1])


def test_given_noise_is_used_as_given_and_the_solve_still_reaches_the_chain():
    op = Colorization()
    prior = CountingPrior(0.0, 0.3)
    gt = ground_truth(8, 1, dtype=torch.float64)
    y = op.A(gt)
    x_T = torch.randn(1, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    sampler = Sampler(prior, op, steps=6, etw=1.0, nw=1.0, fix_null_mean=True)
    assert torch.equal(sampler.chain(y, x_T=x_T).x_T, x_T)
    generator = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    seq = sampler.sequential(y, generator=generator()).image
    par = Sampler(prior, op, steps=6, etw=1.0, nw=1.0, fix_null_mean=True,
                  solver=Picard(tol=0.0)).restore(y, generator=generator())
    assert (par.image - seq).abs().max() < 1e-10          # exact after T rounds, same drawn noise


def test_fix_null_mean_arguments_and_task_defaults():
    prior = CountingPrior(0.0, 0.3)
    with pytest.raises(ValueError, match="fix_null_mean"):
        Sampler(prior, Colorization(), fix_null_mean="yes")
    with pytest.raises(ValueError, match="needs an operator"):
        Sampler(prior, None, fix_null_mean=True)
    assert Sampler(prior, make_operator("colorize", SHAPE)).fix_null_mean is True
    assert Sampler(prior, make_operator("colorize", SHAPE), fix_null_mean=False).fix_null_mean is False
    assert Sampler(prior, make_operator("sr4", SHAPE)).fix_null_mean is False
    assert Sampler(prior, Colorization()).fix_null_mean is False   # no task: the Sampler's own
    assert TASKS["colorize"].sampling.get("fix_null_mean") is True
