"""The multisecant Jacobian model (``linearize="multisecant"``, backends/multisecant.py).

M = B + (Y − B S)(SᵀS + λ)⁻¹Sᵀ with B = γ J_s must reproduce every stored secant pair, leave B
unchanged off their span, keep only the newest ``memory`` pairs, and vanish at the evaluation point.
"""
from unittest import mock

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fixedpoint_ir.backends import multisecant
from fixedpoint_ir.backends.multisecant import SecantHistory

# The algebra is checked with a vanishing ridge; the solver's ridge (RELATIVE_RIDGE) shrinks the
# update along each pair by a known factor, checked on one pair below.
EXACT = 1e-12


class _Scaled:
    """A map with a per-row scalar surrogate Jacobian J_j = c_j I (what prepare() reads)."""

    def __init__(self, slopes):
        self.slopes = slopes

    def surrogate_jvp(self, rows, d):
        """One row index per item of d, or an int for the whole batch (like Chain.surrogate_jvp)."""
        slopes = self.slopes[rows]
        return (slopes.view(-1, *(1,) * (d.dim() - 1)) if slopes.dim() else slopes) * d


def _history(seed, rows, images, memory, pairs):
    gen = torch.Generator().manual_seed(seed)
    like = torch.zeros(rows, images, 2, 3, 3, dtype=torch.float64)
    history = SecantHistory(like, memory)
    stored = []
    for _ in range(pairs):
        s = torch.randn(rows * images, 2, 3, 3, generator=gen, dtype=torch.float64)
        y = torch.randn(rows * images, 2, 3, 3, generator=gen, dtype=torch.float64)
        r = torch.arange(rows).repeat_interleave(images)
        n = torch.arange(images).repeat(rows)
        history.push(r, n, s, y)
        stored.append((s.view(rows, images, 2, 3, 3), y.view(rows, images, 2, 3, 3)))
    slopes = torch.rand(rows, generator=gen, dtype=torch.float64) + 0.5
    scale = torch.rand(rows, images, generator=gen, dtype=torch.float64) * 2
    history.prepare(_Scaled(slopes), scale)
    return history, stored, slopes, scale, gen


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 4), images=st.integers(1, 3),
       memory=st.integers(1, 4), pairs=st.integers(1, 6))
def test_the_model_reproduces_the_newest_pairs(seed, rows, images, memory, pairs):
    with mock.patch.object(multisecant, "RELATIVE_RIDGE", EXACT):
        history, stored, slopes, scale, _ = _history(seed, rows, images, memory, pairs)
    kept = stored[-memory:]
    assert torch.equal(history.count, torch.full((rows, images), min(memory, pairs)))
    for j in range(rows):
        for s, y in kept:
            model = scale[j].view(-1, 1, 1, 1) * slopes[j] * s[j] + history.correction(j, s[j])
            assert torch.allclose(model, y[j], atol=1e-4, rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 3), memory=st.integers(1, 3))
def test_off_the_span_of_the_pairs_the_model_is_the_secant_scale(seed, rows, memory):
    with mock.patch.object(multisecant, "RELATIVE_RIDGE", EXACT):
        history, stored, *_, gen = _history(seed, rows, 1, memory, memory)
    for j in range(rows):
        basis = torch.stack([s[j, 0].flatten() for s, _ in stored[-memory:]], 1)    # (D, m)
        d = torch.randn(basis.shape[0], generator=gen, dtype=torch.float64)
        q, _ = torch.linalg.qr(basis)
        d = (d - q @ (q.T @ d)).view(1, 2, 3, 3)                                     # ⟂ every s
        assert float(history.correction(j, d).abs().max()) <= 1e-8 * float(d.abs().max()) + 1e-300
        assert torch.equal(history.correction(j, torch.zeros_like(d)), torch.zeros_like(d))


def test_entries_without_pairs_get_no_correction_and_reset_forgets():
    history = SecantHistory(torch.zeros(3, 2, 1, 2, 2, dtype=torch.float64), 2)
    history.push(torch.tensor([1]), torch.tensor([0]), torch.ones(1, 1, 2, 2), 2 * torch.ones(1, 1, 2, 2))
    history.prepare(_Scaled(torch.ones(3)), torch.ones(3, 2, dtype=torch.float64))
    d = torch.ones(2, 1, 2, 2, dtype=torch.float64)
    assert torch.equal(history.correction(0, d), torch.zeros_like(d))
    out = history.correction(1, d)
    # One pair, B = I: the correction along s is (y − s)·sᵀs / (sᵀs + λ), λ = RELATIVE_RIDGE·sᵀs.
    shrunk = torch.ones(1, 2, 2, dtype=torch.float64) / (1 + multisecant.RELATIVE_RIDGE)
    assert torch.allclose(out[0], shrunk, atol=1e-6) and float(out[1].abs().max()) == 0
    history.reset()
    assert int(history.count.sum()) == 0


def test_bad_memory_names_the_argument():
    with pytest.raises(ValueError, match="memory"):
        SecantHistory(torch.zeros(2, 1, 1), 0)
