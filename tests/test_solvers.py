"""Every backend converges to the sequential chain; counts and reports are exact."""
import warnings

import pytest
import torch

from fixedpoint_ir import GaussianMixturePrior, Sampler, SolverDivergedError, Status, get_solver
from fixedpoint_ir.backends import Anderson, Broyden, Picard, TorchDEQ
from fixedpoint_ir.solver import FixedPointSolver, available_solvers

from helpers import OPERATOR_NAMES, CountingPrior, FaultyMap, ground_truth, make_operator, observe

SIZE, STEPS = 8, 10

TIGHT_SOLVERS = {
    "picard": lambda: Picard(tol=1e-12),
    "anderson_per_row": lambda: Anderson(tol=1e-12, max_rounds=STEPS + 2, exact_prefix=True),
    "anderson_triangular": lambda: Anderson(tol=1e-12, max_rounds=STEPS + 2, mixing="triangular",
                                            exact_prefix=True),
    "anderson_global": lambda: Anderson(tol=1e-12, max_rounds=STEPS + 2, mixing="global",
                                        exact_prefix=True),
    "broyden": lambda: Broyden(tol=1e-9, max_rounds=60),
    "torchdeq_anderson": lambda: TorchDEQ("anderson", tol=1e-9, max_rounds=60),
    "torchdeq_broyden": lambda: TorchDEQ("broyden", tol=1e-9, max_rounds=60),
    "torchdeq_fixed_point": lambda: TorchDEQ("fixed_point_iter", tol=1e-9, max_rounds=60),
}


def _problem(op_name, solver, noise="per_step", n=1):
    op = make_operator(op_name, SIZE)
    sampler = Sampler(GaussianMixturePrior(0.5, 0.05), op, solver, steps=STEPS, etw=0.1, nw=0.4,
                      noise=noise)
    return sampler, observe(op, ground_truth(SIZE, n))


def _run(sampler, y, seed=3, n=1):
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    kwargs = dict(generator=gen())
    if y is None:
        kwargs.update(image_shape=(3, SIZE, SIZE), num_images=n, dtype=torch.float64)
        ref = sampler.sequential(**kwargs)
        kwargs["generator"] = gen()
        return sampler.sample(**kwargs), ref
    ref = sampler.sequential(y, **kwargs)
    return sampler.restore(y, generator=gen()), ref


@pytest.mark.parametrize("noise", ["per_step", "shared"])
@pytest.mark.parametrize("op", OPERATOR_NAMES)
@pytest.mark.parametrize("solver", sorted(TIGHT_SOLVERS))
def test_backend_converges_to_sequential_chain(solver, op, noise):
    sampler, y = _problem(op, TIGHT_SOLVERS[solver](), noise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result, ref = _run(sampler, y)
    # Every backend stops on the sequential answer; those that cannot certify it say "stopped".
    assert result.status in (Status.CONVERGED, Status.STOPPED), (solver, result.residuals[-3:])
    err = (result.image - ref.image).norm() / ref.image.norm()
    assert err <= 1e-6, err
    if result.converged:   # certified: within tol, relative max-abs
        tol = sampler.solver.tol
        assert (result.image - ref.image).abs().max() <= tol * max(1.0, ref.image.abs().max()), solver


def test_published_anderson_reports_convergence_only_with_small_residual():
    """The published configuration may stop short; when its rule fires (converged or stopped), its
    residual is small."""
    sampler, y = _problem("sr", Anderson.published())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result, ref = _run(sampler, y)
    assert result.rounds <= 15
    if result.status in (Status.CONVERGED, Status.STOPPED):   # its own rule fired
        assert result.residuals[-1] < 1e-3
    else:
        assert result.status is Status.MAX_ROUNDS and result.residuals[-1] >= 1e-3


@pytest.mark.parametrize("n", [1, 3])
def test_nfe_and_rounds_are_exact(n):
    prior = CountingPrior(0.5, 0.05)
    op = make_operator("sr", SIZE)
    y = op.A(ground_truth(SIZE, n))
    sampler = Sampler(prior, op, Picard(tol=0.0), steps=STEPS)
    result = sampler.restore(y, generator=torch.Generator().manual_seed(0))
    assert result.rounds == STEPS and len(result.residuals) == STEPS
    assert prior.calls == STEPS                  # one batched network call per round
    assert prior.images == STEPS * STEPS * n     # T states per round, n images each
    assert result.nfe == STEPS * STEPS           # per image
    prior.calls = prior.images = 0
    seq = sampler.sequential(y, generator=torch.Generator().manual_seed(0))
    assert prior.calls == STEPS and seq.nfe == STEPS and prior.images == STEPS * n


def test_max_batch_bounds_every_network_call():
    prior = CountingPrior(0.5, 0.05, max_batch=4)
    seen = []
    original = prior.predict_eps
    prior.predict_eps = lambda x, t: (seen.append(x.shape[0]), original(x, t))[1]
    sampler = Sampler(prior, None, Picard(max_rounds=2), steps=STEPS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sampler.sample((3, SIZE, SIZE), 1)
    assert max(seen) <= 4 and sum(seen) == 2 * STEPS


def test_callback_sees_every_round():
    rounds = []
    sampler, y = _problem("inpaint", Anderson(tol=1e-12, max_rounds=6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sampler.restore(y, callback=lambda info: rounds.append((info.round, info.residual)))
    assert [r for r, _ in rounds] == list(range(1, result.rounds + 1))
    assert [res for _, res in rounds] == result.residuals


def test_solver_by_name_and_instance():
    assert set(available_solvers()) >= {"picard", "anderson", "broyden", "torchdeq"}
    assert isinstance(Sampler(GaussianMixturePrior(), solver="anderson").solver, Anderson)
    assert isinstance(Sampler(GaussianMixturePrior(), solver=Broyden()).solver, Broyden)
    with pytest.raises(ValueError, match="unknown solver 'newton'.*anderson.*picard"):
        Sampler(GaussianMixturePrior(), solver="newton")
    assert isinstance(get_solver("anderson", m=3), Anderson)


@pytest.mark.parametrize("solver", [Picard(), Anderson(), Broyden(safeguard=None), TorchDEQ()])
def test_nan_is_reported_as_divergence(solver):
    sampler, y = _problem("sr", solver)
    chain = sampler.chain(y)
    report = solver.solve(FaultyMap(chain, nan_calls=range(2, 10**6)), sampler.initial_states(chain))
    assert report.status is Status.DIVERGED


def test_sampler_raises_on_divergence(monkeypatch):
    sampler, y = _problem("sr", Picard())
    monkeypatch.setattr(sampler, "fixed_point_map", lambda chain: FaultyMap(chain, nan_calls=range(1, 10**6)))
    with pytest.raises(SolverDivergedError, match="diverged") as info:
        sampler.restore(y)
    assert info.value.report.status is Status.DIVERGED


def test_divergence_advice_depends_on_who_produced_the_nan():
    """Picard and the triangular solver replay the chain: a NaN is the prior's, no other solver helps.
    An extrapolating solver (ParaDiGMS diverged to NaN at T = 100 on the shipped prior while the
    sequential chain was finite) is told to check the chain and try an exact one."""
    from fixedpoint_ir.backends import ParaDiGMS, Triangular
    from fixedpoint_ir.checks import divergence_hint
    from fixedpoint_ir.solver import SolverReport

    nan = SolverReport(None, 3, [1.4, 1.4, float("nan")], Status.DIVERGED, {})
    grew = SolverReport(None, 3, [1.0, 1e5], Status.DIVERGED, {})
    for exact in (Picard(), Triangular()):
        assert "no other solver" in divergence_hint(exact, nan) and "solver='picard'" not in divergence_hint(exact, nan)
    for other in (ParaDiGMS(), Anderson()):
        advice = divergence_hint(other, nan)
        assert "Sampler.sequential" in advice and "solver='picard'" in advice and "no other solver" not in advice
        assert "solver='picard'" in divergence_hint(other, grew)


def test_unconverged_run_warns():
    sampler, y = _problem("sr", Picard(max_rounds=3))
    with pytest.warns(RuntimeWarning, match="without converging"):
        result = sampler.restore(y)
    assert result.status is Status.MAX_ROUNDS and result.rounds == 3


def test_custom_solver_plugs_in():
    class Twice(FixedPointSolver):
        def solve(self, f, z0, callback=None):
            z = z0
            for _ in range(2 * z0.shape[0]):
                z = f(z)
            from fixedpoint_ir.solver import SolverReport
            return SolverReport(z, 2 * z0.shape[0], [], Status.CONVERGED)

    sampler, y = _problem("colorize", Twice())
    result, ref = _run(sampler, y)
    torch.testing.assert_close(result.image, ref.image, rtol=0, atol=1e-12)
