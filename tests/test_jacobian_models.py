"""benchmarks/jacobian_models.py: the secant pairs it reads off a logged solve, and the model it
scores is the solver's own (exact along every pair it is given)."""
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture()
def jacobian_models(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import jacobian_models

    yield jacobian_models
    for name in ("jacobian_models", "acceleration", "convergence", "exact_jvp"):
        sys.modules.pop(name, None)
    torch.set_num_threads(threads)


def test_pairs_come_from_consecutive_network_evaluations(jacobian_models):
    """Rows 0–1 are in the first window, row 2 enters in round 2: its first evaluation replaces
    the surrogate (no pair); a row whose evaluation point did not move adds no pair."""
    at = [torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 5.0]), torch.tensor([3.0, 2.0, 6.0])]
    e = [torch.tensor([10.0, 20.0, 0.0]), torch.tensor([11.0, 20.0, 7.0]), torch.tensor([14.0, 24.0, 9.0])]
    log = [dict(at=a.view(3, 1, 1), e=v.view(3, 1, 1)) for a, v in zip(at, e)]
    pairs = jacobian_models.secant_pairs(log, width=2)
    as_numbers = [[[(float(s), float(y)) for s, y in row] for row in rnd] for rnd in pairs]
    assert as_numbers[0] == [[], [], []]
    assert as_numbers[1] == [[(1.0, 1.0)], [], []]
    assert as_numbers[2] == [[(1.0, 1.0), (2.0, 3.0)], [(2.0, 4.0)], [(1.0, 2.0)]]


class _Chain:
    """A chain whose surrogate Jacobian is c_j·I."""

    def surrogate_jvp(self, j, d):
        return (0.5 + j) * d


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), m=st.integers(0, 3), gamma=st.floats(0.0, 3.0))
def test_the_scored_model_is_exact_along_its_pairs(jacobian_models, seed, m, gamma):
    gen = torch.Generator().manual_seed(seed)
    pairs = [(torch.randn(2, 4, 4, generator=gen), torch.randn(2, 4, 4, generator=gen)) for _ in range(m)]
    chain, j = _Chain(), 1
    with mock.patch.object(jacobian_models.multisecant_module, "RELATIVE_RIDGE", 1e-12):   # the algebra, unshrunk
        for s, y in pairs:
            assert torch.allclose(jacobian_models.multisecant(chain, j, gamma, pairs, s), y, atol=1e-3, rtol=1e-3)
    d = torch.randn(2, 4, 4, generator=gen)
    if m == 0:
        assert torch.allclose(jacobian_models.multisecant(chain, j, gamma, pairs, d), gamma * 1.5 * d)
