"""Batches of images (issue 8): B images restored together equal the same images restored one by one.

z has shape (T, N, C, H, W): a round evaluates the network on all T·N states at once. With the same
x_T, ξ and y per image, every image of a batch must follow its own chain exactly. Float64 and Picard
run to exactness (tol = 0, T rounds) make this an identity up to rounding.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fixedpoint_ir import GaussianMixturePrior, ModulePrior, Sampler
from fixedpoint_ir.backends import Picard
from fixedpoint_ir.operators import AveragePool

DTYPE = torch.float64
SHAPE = (3, 8, 8)
B, T = 3, 6


class TinyConvEps(nn.Module):
    def __init__(self, channels: int = 3, width: int = 8):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        self.temb = nn.Linear(1, width)

    def forward(self, x, t):
        h = torch.tanh(self.inp(x) + self.temb(t.to(x.dtype)[:, None] / 1000.0)[:, :, None, None])
        return 0.5 * self.out(h) + 0.3 * x


def make_prior(kind: str, max_batch: int | None = None):
    if kind == "gmm":
        return GaussianMixturePrior(mu=0.5, var=0.05, max_batch=max_batch)
    torch.manual_seed(0)
    return ModulePrior(TinyConvEps().to(DTYPE).eval(), max_batch=max_batch)


def problem(operator, nw: float, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((B, *SHAPE), generator=g, dtype=DTYPE)
    x_T = torch.randn((B, *SHAPE), generator=g, dtype=DTYPE)
    noise = torch.randn((T, B, *SHAPE), generator=g, dtype=DTYPE)
    y = operator.A(x0) if operator is not None else None
    return x_T, noise, y


def run(sampler, y, x_T, noise, mode="parallel"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if mode == "sequential":
            return sampler.sequential(y, x_T=x_T, noise=noise)
        if y is None:
            return sampler.sample(x_T=x_T, noise=noise)
        return sampler.restore(y, x_T=x_T, noise=noise)


def together_and_alone(prior_kind, op, solver, nw=0.0, mode="parallel", closed_form=False, max_batch=None):
    operator = AveragePool(2) if op == "pool" else None
    sampler = Sampler(make_prior(prior_kind, max_batch), operator, solver, steps=T, nw=nw,
                      closed_form=closed_form)
    x_T, noise, y = problem(operator, nw)
    together = run(sampler, y, x_T, noise, mode)
    alone = [run(sampler, None if y is None else y[i:i + 1], x_T[i:i + 1], noise[:, i:i + 1], mode)
             for i in range(B)]
    return together, alone


@pytest.mark.parametrize("prior_kind", ["gmm", "conv"])
@pytest.mark.parametrize("op", [None, "pool"], ids=["ddim", "pool"])
@pytest.mark.parametrize("nw", [0.0, 0.4])
def test_batch_equals_one_by_one_picard(prior_kind, op, nw):
    together, alone = together_and_alone(prior_kind, op, Picard(tol=0.0), nw)
    assert together.states.shape == (T, B, *SHAPE)
    for i, res in enumerate(alone):
        err = (together.states[:, i] - res.states[:, 0]).abs().max().item()
        assert err <= 1e-10, f"image {i}: batch and alone differ by {err:.3g}"
        assert res.rounds == together.rounds == T
        assert res.nfe == together.nfe  # NFE counts per image


def test_batch_equals_one_by_one_with_chunking_and_closed_form():
    # max_batch = 4 splits the T·B = 18 states of a round into chunks that straddle images.
    together, alone = together_and_alone("conv", "pool", Picard(tol=0.0), 0.4, max_batch=4)
    closed, _ = together_and_alone("gmm", "pool", Picard(tol=0.0), 0.4, closed_form=True)
    replay, alone_gmm = together_and_alone("gmm", "pool", Picard(tol=0.0), 0.4)
    for i in range(B):
        assert (together.states[:, i] - alone[i].states[:, 0]).abs().max() <= 1e-10
        assert (closed.states[:, i] - alone_gmm[i].states[:, 0]).abs().max() <= 1e-10
        assert (replay.states[:, i] - alone_gmm[i].states[:, 0]).abs().max() <= 1e-10


@pytest.mark.parametrize("op", [None, "pool"], ids=["ddim", "pool"])
def test_batch_equals_one_by_one_sequential_and_parallel_agree(op):
    seq, seq_alone = together_and_alone("gmm", op, Picard(tol=0.0), 0.4, mode="sequential")
    par, _ = together_and_alone("gmm", op, Picard(tol=0.0), 0.4)
    assert (seq.states - par.states).abs().max() <= 1e-10
    for i in range(B):
        assert (seq.states[:, i] - seq_alone[i].states[:, 0]).abs().max() <= 1e-10


def test_restore_batch_matches_seeded_restores_one_by_one():
    from fixedpoint_ir.distributed import restore_batch

    operator = AveragePool(2)
    sampler = Sampler(make_prior("conv"), operator, Picard(tol=0.0), steps=T, nw=0.4)
    g = torch.Generator().manual_seed(11)
    ys = [operator.A(torch.randn((1, *SHAPE), generator=g, dtype=DTYPE)) for _ in range(B)]
    seeds = [5, 17, 3]
    together = restore_batch(sampler, ys, seeds)
    assert together.image.shape == (B, *SHAPE)
    for i in range(B):
        alone = sampler.restore(ys[i], generator=torch.Generator().manual_seed(seeds[i]))
        assert (together.states[:, i] - alone.states[:, 0]).abs().max() <= 1e-10
    # a batch of a different composition gives image 1 the same result
    pair = restore_batch(sampler, torch.cat([ys[1], ys[0]]), [17, 5])
    assert (pair.states[:, 0] - together.states[:, 1]).abs().max() <= 1e-10
    # one int seed: image i gets seed + i
    assert torch.equal(restore_batch(sampler, ys, 7).states, restore_batch(sampler, ys, [7, 8, 9]).states)
    with pytest.raises(ValueError, match="one shape"):
        restore_batch(sampler, [ys[0], torch.zeros(1, 3, 2, 2, dtype=DTYPE)], [0, 1])
    with pytest.raises(ValueError, match="x_T"):
        restore_batch(sampler, ys, seeds, x_T=None)


@pytest.mark.parametrize("prior_kind", ["gmm", "conv"])
@pytest.mark.parametrize("op", [None, "pool"], ids=["ddim", "pool"])
def test_batch_equals_one_by_one_triangular(prior_kind, op):
    """The triangular solver accepts rows per image, so an image's result and its network
    evaluations do not depend on the other images of its batch (Anderson's and Broyden's mixing
    is batch-wide by design, so they couple the images of a batch)."""
    from fixedpoint_ir.backends import Triangular

    together, alone = together_and_alone(prior_kind, op, Triangular(tol=1e-6), 0.0)
    for i in range(B):
        assert (together.states[:, i] - alone[i].states[:, 0]).abs().max() <= 1e-10
    assert together.report.info["accepted_rows"] == [T] * B
    assert together.nfe * B == sum(res.nfe for res in alone)
