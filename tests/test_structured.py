"""Structure-aware solving (issue: rounds): every option still lands on the sequential chain."""
import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fixedpoint_ir import GaussianMixturePrior, Sampler, Status
from fixedpoint_ir.backends import Anderson, Broyden, Picard, Triangular

from helpers import OPERATOR_NAMES, CountingPrior, FaultyMap, ground_truth, make_operator, observe

SIZE, STEPS = 8, 12


def _solve(op_name, solver, *, init="x_T", noise="per_step", nw=0.3, steps=STEPS, seed=0, n=1,
           prior=None):
    op = make_operator(op_name, SIZE)
    sampler = Sampler(prior or GaussianMixturePrior(0.5, 0.05), op, solver, steps=steps, etw=0.1,
                      nw=nw, noise=noise, init=init)
    y = observe(op, ground_truth(SIZE, n))
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    extra = {} if op else dict(image_shape=(3, SIZE, SIZE), num_images=n, dtype=torch.float64)
    ref = sampler.sequential(y, generator=gen(), **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = sampler.restore(y, generator=gen()) if op else sampler.sample(generator=gen(), **extra)
    return out, ref


def _max_err(out, ref):
    return float((out.image - ref.image).abs().max())


OPTIONS = dict(linearize=["multisecant", "secant", "surrogate", "none"], window=[None, 3], freeze=[True, False],
               row_tol=["uniform", "noise"])


@pytest.mark.parametrize("options", [dict(zip(OPTIONS, combo)) for combo in itertools.product(*OPTIONS.values())],
                         ids=lambda o: "-".join(str(v) for v in o.values()))
def test_every_option_converges_to_the_sequential_chain(options):
    for op in ("sr", "inpaint"):
        out, ref = _solve(op, Triangular(tol=1e-9, **options))
        assert out.converged and _max_err(out, ref) <= 1e-6, (op, options)


@pytest.mark.parametrize("op", OPERATOR_NAMES)
@pytest.mark.parametrize("init", ["x_T", "observation", "surrogate"])
def test_initial_guesses_keep_the_answer(op, init):
    for solver in (Picard(tol=0.0), Triangular(tol=1e-9)):
        out, ref = _solve(op, solver, init=init)
        assert out.converged and _max_err(out, ref) <= 1e-6


def test_freezing_and_windowing_give_the_same_answer_with_fewer_evaluations():
    base, ref = _solve("sr", Triangular(tol=1e-10, freeze=False, window=None))
    for options in (dict(freeze=True), dict(window=4), dict(freeze=True, window=2)):
        out, _ = _solve("sr", Triangular(tol=1e-10, **options))
        torch.testing.assert_close(out.image, base.image, rtol=0, atol=1e-7)
    frozen, _ = _solve("sr", Triangular(tol=1e-4, freeze=True))
    unfrozen, _ = _solve("sr", Triangular(tol=1e-4, freeze=False))
    assert frozen.nfe < unfrozen.nfe


def test_window_bounds_every_round():
    prior = CountingPrior(0.5, 0.05)
    seen = []
    original = prior.predict_eps
    prior.predict_eps = lambda x, t: (seen.append(x.shape[0]), original(x, t))[1]
    out, _ = _solve("sr", Triangular(tol=1e-6, window=4), prior=prior, n=2)
    assert out.converged and max(seen) <= 4 * 2


@settings(max_examples=15)
@given(steps=st.integers(2, 16), window=st.one_of(st.none(), st.integers(1, 6)),
       linearize=st.sampled_from(["multisecant", "secant", "surrogate", "none"]))
def test_exact_after_T_rounds_whatever_the_options(steps, window, linearize):
    """The accepted prefix grows by one row per round at least: T rounds always suffice."""
    out, ref = _solve("colorize", Triangular(tol=0.0, window=window, linearize=linearize), steps=steps)
    assert out.rounds <= steps and out.converged
    assert _max_err(out, ref) <= 1e-10


@pytest.mark.parametrize("tol", [3e-2, 1e-2, 1e-3, 1e-4])
@pytest.mark.parametrize("op", OPERATOR_NAMES)
def test_stopping_rule_is_honest(op, tol):
    """Converged ⇒ the restored image is within tol (max-abs) of the sequential chain.

    (``row_tol="noise"`` trades this guarantee for evaluations; the benchmark reports its error.)
    """
    for options in (dict(), dict(window=4), dict(linearize="none")):
        for seed in range(2):
            out, ref = _solve(op, Triangular(tol=tol, **options), seed=seed, nw=0.0, steps=20)
            if out.converged:
                assert _max_err(out, ref) <= tol, (options, seed, _max_err(out, ref))


class _TwoSpeedRecurrence:
    """A toy triangular recurrence x_j = x_{j−1}/2 + e_j(x_{j−1}) for two independent systems:
    e ≡ 1 for image 1 (converges at once), e = tanh(3u) for image 0 (needs many rounds)."""

    def __init__(self, rows=12):
        self.num_rows = rows
        self.x_T = torch.tensor([0.3, 0.3], dtype=torch.float64).view(2, 1, 1, 1)
        self.row_scales = torch.ones(rows, dtype=torch.float64)
        self.evaluated_images = []

    def step(self, j, x, e):
        return 0.5 * x + e

    def eps_at(self, z, rows, images):
        u = torch.where((rows == 0).view(-1, 1, 1, 1), self.x_T[images], z[(rows - 1).clamp_min(0), images])
        self.evaluated_images.append(images.tolist())
        return torch.where((images == 0).view(-1, 1, 1, 1), torch.tanh(3 * u), torch.ones_like(u))

    def surrogate_eps(self, u):
        return torch.zeros_like(u)

    def surrogate_jvp(self, rows, d):
        return torch.zeros_like(d)


def test_converged_images_stop_costing_evaluations():
    """In a batch, an image whose rows are all accepted is no longer evaluated."""
    f = _TwoSpeedRecurrence()
    z0 = f.x_T.unsqueeze(0).expand(f.num_rows, 2, 1, 1, 1).clone()
    report = Triangular(tol=1e-8, linearize="none").solve(f, z0)
    assert report.converged
    history = report.info["accepted_history"]
    done_1 = next(r for r, (p0, p1) in enumerate(history) if p1 == f.num_rows)
    done_0 = next(r for r, (p0, p1) in enumerate(history) if p0 == f.num_rows)
    assert done_1 < done_0
    later = [i for batch in f.evaluated_images[done_1 + 1:] for i in batch]
    assert later and all(i == 0 for i in later)
    assert sum(report.info["rows_evaluated"]) == sum(len(b) for b in f.evaluated_images)


class _FaultyPrior(GaussianMixturePrior):
    """Returns NaN on chosen calls (a broken network)."""

    def __init__(self, bad_calls):
        super().__init__(0.5, 0.05)
        self.bad_calls, self.calls = set(bad_calls), 0

    def predict_eps(self, x, t):
        self.calls += 1
        out = super().predict_eps(x, t)
        return out * float("nan") if self.calls in self.bad_calls else out


def test_triangular_safeguard_retries_a_nan_evaluation():
    op = make_operator("sr", SIZE)
    prior = _FaultyPrior({2})
    sampler = Sampler(prior, op, Triangular(tol=1e-9), steps=STEPS)
    chain = sampler.chain(observe(op, ground_truth(SIZE)), generator=torch.Generator().manual_seed(0))
    report = sampler.solver.solve(chain, sampler.initial_states(chain))
    assert prior.calls > 2 and report.converged and report.info["safeguard_fallbacks"] >= 1
    prior.bad_calls = set()
    assert float((report.solution[-1] - chain.sequential()[-1]).abs().max()) <= 1e-6


def test_persistent_nan_is_reported_as_divergence():
    op = make_operator("sr", SIZE)
    sampler = Sampler(_FaultyPrior(range(2, 100)), op, Triangular(tol=1e-9), steps=STEPS)
    chain = sampler.chain(observe(op, ground_truth(SIZE)))
    report = sampler.solver.solve(chain, sampler.initial_states(chain))
    assert report.status is Status.DIVERGED


@pytest.mark.parametrize("solver", [Anderson(tol=1e-9, max_rounds=40, mixing="triangular", safeguard=5.0,
                                             exact_prefix=True),
                                    Broyden(tol=1e-9, max_rounds=60, safeguard=5.0)])
def test_generic_safeguards_catch_divergent_step_and_nan(solver):
    op = make_operator("inpaint", SIZE)
    sampler = Sampler(GaussianMixturePrior(0.5, 0.05), op, solver, steps=STEPS)
    y = observe(op, ground_truth(SIZE))
    chain = sampler.chain(y, generator=torch.Generator().manual_seed(0))
    ref = chain.sequential()
    report = solver.solve(FaultyMap(chain, kick_at=4, nan_calls={5}), sampler.initial_states(chain))
    assert report.info["safeguard_fallbacks"] >= 1
    assert report.status is Status.CONVERGED
    assert float((report.solution[-1] - ref[-1]).abs().max()) <= 1e-6


def test_triangular_needs_a_chain():
    with pytest.raises(TypeError, match="needs a map with step"):
        Triangular().solve(lambda z: z, torch.zeros(3, 1, 1, 2, 2))
    with pytest.raises(ValueError, match="window"):
        Triangular(window=0)
    with pytest.raises(ValueError, match="linearize"):
        Triangular(linearize="newton")
