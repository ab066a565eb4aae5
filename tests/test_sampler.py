"""Sampler API: reproducibility, initial guesses, and clear errors on bad input."""
import pytest
import torch

from fixedpoint_ir import GaussianMixturePrior, ModulePrior, Sampler
from fixedpoint_ir.backends import Picard
from fixedpoint_ir.solver import describe_status
from fixedpoint_ir.operators import AveragePool, Mask

from helpers import ground_truth

SIZE = 8


@pytest.fixture
def sr_sampler():
    return Sampler(GaussianMixturePrior(), AveragePool(2), "picard", steps=6)


def test_seed_reproduces_and_result_has_all_states(sr_sampler):
    y = AveragePool(2).A(ground_truth(SIZE))
    a = sr_sampler.restore(y, generator=torch.Generator().manual_seed(7))
    b = sr_sampler.restore(y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.image, b.image) and a.states.shape == (6, 1, 3, SIZE, SIZE)
    assert torch.equal(a.states[-1], a.image)
    assert a.summary().startswith(describe_status(a.status)) and "rounds" in a.summary()


def test_restored_image_is_consistent_with_observation(sr_sampler):
    op = AveragePool(2)
    y = op.A(ground_truth(SIZE))
    result = sr_sampler.restore(y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op.A(result.image), y, rtol=0, atol=1e-10)


@pytest.mark.parametrize("init", ["x_T", "observation"])
def test_initial_guess_does_not_change_the_answer(init):
    op = Mask(torch.rand(SIZE, SIZE) > 0.3)
    y = op.A(ground_truth(SIZE))
    sampler = Sampler(GaussianMixturePrior(), op, Picard(tol=0.0), steps=6, init=init)
    ref = sampler.sequential(y, generator=torch.Generator().manual_seed(1))
    out = sampler.restore(y, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.image, ref.image, rtol=0, atol=1e-12)


def test_explicit_init_tensor(sr_sampler):
    y = AveragePool(2).A(ground_truth(SIZE))
    chain = sr_sampler.chain(y, generator=torch.Generator().manual_seed(0))
    init = torch.zeros(chain.state_shape, dtype=torch.float64)
    out = sr_sampler.restore(y, x_T=chain.x_T, noise=chain.noise, init=init)
    torch.testing.assert_close(out.image, chain.sequential()[-1], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="init must have shape"):
        sr_sampler.restore(y, init=torch.zeros(3, 1, 3, SIZE, SIZE, dtype=torch.float64))


def test_closed_form_sampler_matches_replay_sampler():
    op = AveragePool(2)
    y = op.A(ground_truth(SIZE))
    kw = dict(steps=6, nw=0.5)
    a = Sampler(GaussianMixturePrior(), op, **kw).restore(y, generator=torch.Generator().manual_seed(2))
    b = Sampler(GaussianMixturePrior(), op, closed_form=True, **kw).restore(
        y, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=1e-10)


# --- bad input -------------------------------------------------------------------------------

def test_y_of_wrong_shape(sr_sampler):
    with pytest.raises(ValueError, match=r"y must have shape \(N, 3, 4, 4\)"):
        sr_sampler.restore(torch.zeros(1, 3, 4, 5, dtype=torch.float64),
                           x_T=torch.zeros(1, 3, SIZE, SIZE, dtype=torch.float64))
    with pytest.raises(ValueError, match="scale factor 2 does not divide"):
        sr_sampler.restore(torch.zeros(1, 3, 4, 4), x_T=torch.zeros(1, 3, 7, 7))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_y_or_x_T(sr_sampler, bad):
    y = torch.zeros(1, 3, 4, 4)
    y_bad = y.clone()
    y_bad[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        sr_sampler.restore(y_bad)
    x_T = torch.zeros(1, 3, SIZE, SIZE)
    x_T[0, 1, 2, 3] = bad
    with pytest.raises(ValueError, match="x_T contains NaN or Inf"):
        sr_sampler.restore(y, x_T=x_T)


@pytest.mark.parametrize("steps", [0, 1001, -1])
def test_steps_outside_range(steps):
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 1000\]"):
        Sampler(GaussianMixturePrior(), steps=steps)


@pytest.mark.parametrize("name", ["etw", "nw"])
@pytest.mark.parametrize("value", [-0.5, 1.01])
def test_weights_outside_unit_interval(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a number in \\[0, 1\\]"):
        Sampler(GaussianMixturePrior(), **{name: value})


def test_unknown_solver_lists_known_ones():
    with pytest.raises(ValueError, match="known solvers: anderson, broyden, paradigms, parataa, picard, torchdeq"):
        Sampler(GaussianMixturePrior(), solver="adam")


def test_prior_schedule_must_be_1d_and_decreasing():
    prior = GaussianMixturePrior()
    prior.alphas_cumprod = torch.linspace(0.01, 0.99, 1000, dtype=torch.float64)  # increasing
    with pytest.raises(ValueError, match="strictly decreasing"):
        Sampler(prior)
    with pytest.raises(ValueError, match="1-D"):
        ModulePrior(torch.nn.Identity(), alphas_cumprod=torch.ones(10, 10) * 0.5)


def test_missing_or_unexpected_observation():
    with pytest.raises(ValueError, match="samplers without operator"):
        Sampler(GaussianMixturePrior(), AveragePool(2)).sample((3, 8, 8))
    with pytest.raises(ValueError, match="no operator"):
        Sampler(GaussianMixturePrior()).restore(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError, match="Prior"):
        Sampler(torch.nn.Conv2d(3, 3, 1))


def test_tf32_on_cuda_is_warned_about_below_its_rounding():
    """TF32 kernels round to ~1e-3: a tolerance below 1e-2 on CUDA with TF32 on gets a warning that
    names the switches; CPU, TF32 off, or a loose tolerance stay silent."""
    import warnings

    from fixedpoint_ir.sampler import warn_if_tf32

    cuda = torch.device("cuda")
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:   # torch's backend flags are not plain attributes: set and restore them by hand
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
        with pytest.warns(RuntimeWarning, match="allow_tf32 = False"):
            warn_if_tf32(cuda, 1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warn_if_tf32(torch.device("cpu"), 1e-3)
            warn_if_tf32(cuda, 0.05)
            torch.backends.cudnn.allow_tf32 = False
            warn_if_tf32(cuda, 1e-3)
            torch.backends.cuda.matmul.allow_tf32 = True
            with pytest.raises(RuntimeWarning):
                warn_if_tf32(cuda, 1e-3)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# --- issue 14: no garbage returned, clear errors on the observation ---------------------------------
class _NaNAfter(GaussianMixturePrior):
    """The analytic ε, but NaN from the k-th network call on (a broken prior)."""

    def __init__(self, k: int = 2):
        super().__init__()
        self.k, self.calls = k, 0

    def predict_eps(self, x, t):
        self.calls += 1
        e = super().predict_eps(x, t)
        return e * float("nan") if self.calls >= self.k else e


def test_sequential_raises_on_nan_like_the_parallel_path():
    from fixedpoint_ir.solver import SolverDivergedError

    y = torch.zeros(1, 3, 4, 4)
    for run in ("sequential", "restore"):
        sampler = Sampler(_NaNAfter(), AveragePool(2), steps=5, solver=Picard())
        with pytest.raises(SolverDivergedError, match="NaN") as info:
            getattr(sampler, run)(y, generator=torch.Generator().manual_seed(0))
        assert "solver='picard'" not in str(info.value)   # Picard cannot fix a non-finite prior


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 1, 3, 8, 8), (1, 3, 5, 5), (1, 1, 8, 8)])
def test_observation_of_the_wrong_shape_is_named(shape):
    from fixedpoint_ir.operators import make_operator

    sampler = Sampler(GaussianMixturePrior(), make_operator("sr4", (3, 32, 32)), steps=3)
    for run in ("sequential", "restore"):
        with pytest.raises(ValueError, match=r"y must have shape \(N, 3, 8, 8\).*3x32x32.*got") as info:
            getattr(sampler, run)(torch.zeros(shape))
        assert "Einops" not in str(info.value) and "surrogate" not in str(info.value)


@pytest.mark.parametrize("make", ["Anderson", "Broyden"])
def test_anderson_and_broyden_defaults_reach_the_sequential_answer(make):
    from fixedpoint_ir import backends

    prior = GaussianMixturePrior()
    op = AveragePool(2)
    y = op.A(ground_truth(4))
    sampler = Sampler(prior, op, steps=20, solver=getattr(backends, make)(tol=0.0))  # never stops on tol
    result = sampler.restore(y, generator=torch.Generator().manual_seed(0))
    reference = sampler.sequential(y, generator=torch.Generator().manual_seed(0))
    assert result.converged and result.rounds <= 20
    assert float((result.image - reference.image).abs().max()) < 1e-10


def test_published_anderson_is_still_the_reference_configuration():
    from fixedpoint_ir.backends import Anderson

    a = Anderson.published()
    assert (a.max_rounds, a.m, a.lam, a.beta, a.warmup, a.mixing, a.return_image, a.exact_prefix,
            a.safeguard) == (15, 5, 1e-3, 1.0, 2, "per_row", False, False, None)


@pytest.mark.parametrize("solver", ["picard", "triangular"])
def test_without_fresh_noise_no_noise_buffer_and_the_same_answer(solver):
    """nw = 0 (DDNM chain): the noises are never read, so none are drawn or stored; the answer is
    the one with any explicit noise tensor, and x_T (drawn first) is unchanged."""
    op = AveragePool(2)
    y = op.A(ground_truth(SIZE))
    s = Sampler(GaussianMixturePrior(), op, solver, steps=6, etw=0.1, nw=0.0)
    chain = s.chain(y, generator=torch.Generator().manual_seed(3))
    assert chain.noise.shape == (6, 1, 3, SIZE, SIZE) and chain.noise.untyped_storage().nbytes() <= 8
    explicit = torch.randn(6, 1, 3, SIZE, SIZE, dtype=y.dtype, generator=torch.Generator().manual_seed(9))
    a = s.restore(y, generator=torch.Generator().manual_seed(3))
    b = s.restore(y, generator=torch.Generator().manual_seed(3), noise=explicit)
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=0)
    assert torch.equal(chain.x_T, torch.randn(1, 3, SIZE, SIZE, dtype=y.dtype,
                                              generator=torch.Generator().manual_seed(3)))
    with_noise = Sampler(GaussianMixturePrior(), op, solver, steps=6, etw=1.0, nw=1.0)
    assert with_noise.chain(y, generator=torch.Generator().manual_seed(3)).noise.untyped_storage().nbytes() \
        == 6 * 3 * SIZE * SIZE * y.element_size()
