"""The triangular solver's stopping rules and default window (issue: rounds with a learned prior).

Converged ⇒ the restored image is within tol of the sequential chain, on the analytic prior and on
the shipped learned prior (small crops); every rule stays exact after T rounds; the safeguards
catch a NaN and a divergent step under the a-posteriori rule too.
"""
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fixedpoint_ir import GaussianMixturePrior, Prior, Sampler, Status
from fixedpoint_ir.backends import Triangular
from fixedpoint_ir.backends.triangular import DEFAULT_WINDOW

from helpers import ground_truth, make_operator, observe

STOPS = ["estimate", "safety"]


def _restore(prior, op_name, solver, *, size, steps, seed=0):
    op = make_operator(op_name, size)
    sampler = Sampler(prior, op, solver, steps=steps, etw=0.1, nw=0.0)
    learned = not isinstance(prior, GaussianMixturePrior)
    y = observe(op, ground_truth(size, dtype=torch.float32 if learned else torch.float64))
    ref = sampler.sequential(y, generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = sampler.restore(y, generator=torch.Generator().manual_seed(seed))
    return out, float((out.image - ref.image).abs().max())


@pytest.fixture(scope="module")
def learned():
    return Prior.default()


@pytest.mark.parametrize("stop", STOPS)
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("op", ["sr", "inpaint", "colorize"])
def test_every_stopping_rule_reaches_the_sequential_chain(stop, window, op):
    out, err = _restore(GaussianMixturePrior(0.5, 0.05), op, Triangular(tol=1e-9, stop=stop, window=window),
                        size=8, steps=12)
    assert out.converged and err <= 1e-6


@pytest.mark.parametrize("stop", STOPS)
@pytest.mark.parametrize("op", ["sr", "inpaint", "colorize", "denoise"])
def test_reported_convergence_is_within_tol_on_the_analytic_prior(stop, op):
    for tol in (3e-2, 1e-2, 1e-3, 1e-4):
        for window in (None, 4):
            for seed in range(2):
                out, err = _restore(GaussianMixturePrior(0.5, 0.05), op,
                                    Triangular(tol=tol, stop=stop, window=window), size=8, steps=20, seed=seed)
                if out.converged:
                    assert err <= tol, (tol, window, seed, err)


@pytest.mark.parametrize("op", ["sr", "inpaint"])
def test_reported_convergence_is_within_tol_on_the_learned_prior(learned, op):
    """The shipped prior on 16×16 crops: converged ⇒ within tol; exact after T rounds (tol = 0)
    up to float32 batching (the batched and one-at-a-time network calls round differently)."""
    for stop in STOPS:
        out, err = _restore(learned, op, Triangular(tol=1e-3, stop=stop), size=16, steps=12)
        assert out.converged and err <= 1e-3, (stop, err)
        out, err = _restore(learned, op, Triangular(tol=0.0, stop=stop, window=4), size=16, steps=12)
        assert out.converged and out.rounds <= 12 and err <= 1e-4, (stop, err)


def test_the_estimate_stops_no_later_than_the_safety_rule_on_the_learned_prior(learned):
    rounds = {stop: _restore(learned, "sr", Triangular(tol=1e-3, stop=stop), size=16, steps=16)[0].rounds
              for stop in STOPS}
    assert rounds["estimate"] <= rounds["safety"]


@settings(max_examples=12)
@given(steps=st.integers(2, 14), window=st.one_of(st.none(), st.integers(1, 5)),
       stop=st.sampled_from(STOPS))
def test_exact_after_T_rounds_under_every_rule(steps, window, stop):
    out, err = _restore(GaussianMixturePrior(0.5, 0.05), "colorize",
                        Triangular(tol=0.0, window=window, stop=stop), size=8, steps=steps)
    assert out.converged and out.rounds <= steps and err <= 1e-10


def test_default_window_bounds_long_chains_only():
    assert Triangular().window == DEFAULT_WINDOW
    seen = []
    prior = GaussianMixturePrior(0.5, 0.05)
    original = prior.predict_eps
    prior.predict_eps = lambda x, t: (seen.append(x.shape[0]), original(x, t))[1]
    out, err = _restore(prior, "sr", Triangular(tol=1e-6), size=8, steps=DEFAULT_WINDOW + 6)
    assert out.converged and err <= 1e-6 and max(seen) <= DEFAULT_WINDOW


class _NaNPrior(GaussianMixturePrior):
    """Returns NaN on chosen calls (a broken network)."""

    def __init__(self, nan_calls):
        super().__init__(0.5, 0.05)
        self.nan_calls, self.calls = set(nan_calls), 0

    def predict_eps(self, x, t):
        self.calls += 1
        out = super().predict_eps(x, t)
        return out * float("nan") if self.calls in self.nan_calls else out


def _misleading_jacobian(chain, calls):
    """The linear model's Jacobian made 1e6× too large on the chosen calls: a divergent step."""
    original, count = chain.surrogate_jvp, [0]

    def jvp(rows, d):
        count[0] += 1
        return original(rows, d) * (1e6 if count[0] in calls else 1.0)

    chain.surrogate_jvp = jvp


@pytest.mark.parametrize("stop", STOPS)
@pytest.mark.parametrize("fault", ["divergent step", "nan"])
def test_safeguards_catch_a_divergent_step_and_a_nan(stop, fault):
    op = make_operator("inpaint", 8)
    prior = _NaNPrior(())
    sampler = Sampler(prior, op, Triangular(tol=1e-9, stop=stop), steps=12, nw=0.0)
    chain = sampler.chain(observe(op, ground_truth(8)), generator=torch.Generator().manual_seed(0))
    reference = chain.sequential()
    if fault == "nan":
        prior.nan_calls = {prior.calls + 2}     # the solver's second network call
    if fault == "divergent step":
        _misleading_jacobian(chain, set(range(40, 52)))
    report = sampler.solver.solve(chain, sampler.initial_states(chain))
    assert report.status is Status.CONVERGED and report.info["safeguard_fallbacks"] >= 1
    assert float((report.solution[-1] - reference[-1]).abs().max()) <= 1e-6


def test_bad_stopping_options_name_the_argument():
    with pytest.raises(ValueError, match="stop"):
        Triangular(stop="never")
    with pytest.raises(ValueError, match="max_rate"):
        Triangular(max_rate=1.0)
    with pytest.raises(ValueError, match="safety"):
        Triangular(safety=0.0)
