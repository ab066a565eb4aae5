"""The DDRM and DiffPIR chains: parallel = sequential for every solver, closed forms, bad input."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fixedpoint_ir import GaussianMixturePrior, GaussianPrior, Sampler
from fixedpoint_ir.backends import Anderson, Broyden, Picard, TorchDEQ
from fixedpoint_ir.backends.triangular import Triangular
from fixedpoint_ir.chains import DDNM, DDRM, DiffPIR, resolve_chain
from fixedpoint_ir.operators import (AveragePool, Bicubic, Colorization, GaussianBlur, LinearOperator, Mask,
                                     random_mask)

SIZE, STEPS = 8, 8

SOLVERS = {
    "picard": lambda: Picard(tol=1e-13),
    "triangular": lambda: Triangular(tol=1e-13),
    "anderson_per_row": lambda: Anderson(tol=1e-13, max_rounds=STEPS + 2, exact_prefix=True),
    "anderson_triangular": lambda: Anderson(tol=1e-13, max_rounds=STEPS + 2, mixing="triangular",
                                            exact_prefix=True),
    "broyden": lambda: Broyden(tol=1e-12, max_rounds=80),
    "torchdeq_anderson": lambda: TorchDEQ("anderson", tol=1e-12, max_rounds=80),
    "torchdeq_fixed_point": lambda: TorchDEQ("fixed_point_iter", tol=1e-12, max_rounds=80),
}

OPERATORS = {
    "avgpool": lambda: AveragePool(2),
    "bicubic": lambda: Bicubic(2),
    "blur": lambda: GaussianBlur(1.5, 5, 3e-2),
    "mask": lambda: Mask(random_mask((SIZE, SIZE), 0.6, seed=1)),
    "colorize": lambda: Colorization(),
}

CHAINS = {"ddrm": DDRM(0.85, 1.0), "ddrm_half": DDRM(0.4, 0.6), "diffpir": DiffPIR(0.3, 2.0),
          "diffpir_fresh": DiffPIR(1.0, 0.5)}


def _truth(n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, SIZE, SIZE, generator=g, dtype=torch.float64) * 1.6 - 0.8)


CASES = [(solver, chain, op, sigma_y) for solver in sorted(SOLVERS) for chain in sorted(CHAINS)
         for op, sigma_y in (("blur", 0.05), ("mask", 0.0))] + \
        [("triangular", chain, op, sigma_y) for chain in sorted(CHAINS) for op in sorted(OPERATORS)
         for sigma_y in (0.0, 0.05)]


@pytest.mark.parametrize("solver,chain,op,sigma_y", CASES)
def test_parallel_solve_equals_the_chains_own_sequential_loop(solver, chain, op, sigma_y):
    operator = OPERATORS[op]()
    sampler = Sampler(GaussianMixturePrior(0.5, 0.05), operator, SOLVERS[solver](), steps=STEPS,
                      chain=CHAINS[chain], sigma_y=sigma_y)
    y = operator.A(_truth())
    ref = sampler.sequential(y, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = sampler.restore(y, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.image, ref.image, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.states, ref.states, rtol=0, atol=1e-10)


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_step_is_affine_in_the_state(chain):
    """The triangular solver's linearisation needs step_j(·, e) affine for a fixed e."""
    op = OPERATORS["blur"]()
    c = Sampler(GaussianMixturePrior(), op, steps=STEPS, chain=CHAINS[chain], sigma_y=0.05).chain(
        op.A(_truth()), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x1, x2, e = (torch.randn(1, 3, SIZE, SIZE, generator=g, dtype=torch.float64) for _ in range(3))
    for j in range(STEPS):
        mid = c.step(j, 0.3 * x1 + 0.7 * x2, e)
        torch.testing.assert_close(mid, 0.3 * c.step(j, x1, e) + 0.7 * c.step(j, x2, e), rtol=0, atol=1e-12)


def _ve_levels(prior, steps):
    from fixedpoint_ir.schedule import StepCoefficients, uniform_timesteps

    c = StepCoefficients.build(prior.alphas_cumprod, uniform_timesteps(steps, prior.num_train_steps), 0, 0)
    return c, ((1 - c.a) / c.a).sqrt().tolist(), ((1 - c.b) / c.b).sqrt().tolist()


@settings(max_examples=10, deadline=None)
@given(mean=st.floats(-0.5, 0.5), var=st.floats(0.05, 1.0), seed=st.integers(0, 100),
       op=st.sampled_from(["mask", "blur", "colorize"]))
def test_ddrm_deterministic_matches_its_closed_form_on_a_gaussian_prior(mean, var, seed, op):
    """η = η_b = 0, σ_y = 0, white Gaussian prior N(μ, v): in VE coordinates x̂0 = μ + v/(v+σ²)(x̄ − μ),
    so each coordinate of Vᵀx̄ follows a scalar recursion:
    null space  x̄' = x̂0 + (σ'/σ)(x̄ − x̂0)   ⇒  x̄_out − μ = (x̄_T − μ) Π_j (v + σ'_j σ_j)/(v + σ_j²);
    range       x̄' = x̂0 + σ' ξ_j             ⇒  summed below.
    Built from a dense SVD of A (not the operator's own spectral code)."""
    operator = OPERATORS[op]()
    prior = GaussianPrior(mean, var)
    sampler = Sampler(prior, operator, Picard(tol=0.0), steps=STEPS, chain=DDRM(0.0, 0.0))
    y = operator.A(_truth(seed=seed))
    g = torch.Generator().manual_seed(seed)
    chain = sampler.chain(y, generator=g)
    out = sampler.sequential(y, generator=torch.Generator().manual_seed(seed)).image
    c, sig, sig_next = _ve_levels(prior, STEPS)
    n = 3 * SIZE * SIZE
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 3, SIZE, SIZE)
    M = operator.A(basis).reshape(n, -1).T
    _, s, Vt = torch.linalg.svd(M)
    rank = int((s > 1e-9 * s.max()).sum())
    P = Vt[:rank].T @ Vt[:rank]
    x_bar = chain.x_T.reshape(-1) / math.sqrt(float(c.a[0])) - mean
    null_gain = math.prod((var + sn * sc) / (var + sc ** 2) for sc, sn in zip(sig, sig_next))
    rng = x_bar
    for j in range(STEPS):
        rng = var / (var + sig[j] ** 2) * rng + sig_next[j] * chain.noise[j].reshape(-1)
    expected = mean + (torch.eye(n, dtype=torch.float64) - P) @ (null_gain * x_bar) + P @ rng
    torch.testing.assert_close(out.reshape(-1), expected, rtol=0, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(op=st.sampled_from(sorted(OPERATORS)), rho=st.just(0.0) | st.floats(0.01, 3.0),
       seed=st.integers(0, 100))
def test_diffpir_data_step_is_the_exact_proximal_operator(op, rho, seed):
    """x̂0' = argmin_z ‖y − Az‖² + ρ‖z − x̂0‖², against a dense solve (AᵀA + ρI) z = Aᵀy + ρ x̂0
    (ρ = 0: the minimum-norm-change solution x̂0 + A†(y − A x̂0); ρ → 0⁺ makes the dense reference
    itself singular, hence ρ ≥ 0.01 otherwise)."""
    operator = OPERATORS[op]()
    y = operator.A(_truth(seed=seed))
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(1, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    sampler = Sampler(GaussianMixturePrior(), operator, steps=STEPS, chain=DiffPIR(0.3, 1.0), sigma_y=0.1)
    chain = sampler.chain(y, generator=g)
    a = float(chain.coefficients.a[2])
    chain._rho[2] = rho   # the proximal step for an arbitrary ρ (ρ_j = λ σ_y² ᾱ/(1−ᾱ) in the chain)
    assert math.isclose(sampler.chain(y, generator=g)._rho[2], 0.01 * a / (1 - a))
    n = 3 * SIZE * SIZE
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 3, SIZE, SIZE)
    M = operator.A(basis).reshape(n, -1).T
    if rho == 0:
        expected = x0.reshape(-1) + torch.linalg.pinv(M) @ (y.reshape(-1) - M @ x0.reshape(-1))
    else:
        expected = torch.linalg.solve(M.T @ M + rho * torch.eye(n, dtype=torch.float64),
                                      M.T @ y.reshape(-1) + rho * x0.reshape(-1))
    torch.testing.assert_close(chain.data_step(x0, 2).reshape(-1), expected, rtol=0, atol=1e-9)


def test_diffpir_without_data_and_fresh_noise_is_ddnm():
    """Where the data step changes nothing (A x̂0 = y, so ε̂ = ε), DiffPIR with ζ is DDNM with
    etw = nw = √ζ: both re-noise with √(1−ζ) ε + √ζ ξ."""
    op = OPERATORS["avgpool"]()
    y = op.A(_truth())
    ddnm = Sampler(GaussianMixturePrior(), op, steps=STEPS, etw=math.sqrt(0.4), nw=math.sqrt(0.4)).chain(
        y, generator=torch.Generator().manual_seed(0))
    dpir = Sampler(GaussianMixturePrior(), op, steps=STEPS, chain=DiffPIR(0.4)).chain(
        y, generator=torch.Generator().manual_seed(0))
    x = ddnm.x_T
    e = (x - ddnm._sqrt_a[0] * op.A_pinv(y)) / ddnm._sqrt_1ma[0]   # the ε that makes x̂0 = A†y
    torch.testing.assert_close(dpir.step(0, x, e), ddnm.step(0, x, e), rtol=0, atol=1e-12)


def test_chain_choice_and_errors():
    prior = GaussianMixturePrior()
    assert isinstance(Sampler(prior, AveragePool(2)).chain_choice, DDNM)
    assert Sampler(prior, AveragePool(2), chain="ddrm").chain_choice == DDRM()
    assert resolve_chain("diffpir") == DiffPIR()
    with pytest.raises(ValueError, match="chain must be one of 'ddnm', 'ddrm', 'diffpir'"):
        Sampler(prior, AveragePool(2), chain="dps")
    with pytest.raises(ValueError, match="eta must be a number in"):
        DDRM(eta=1.5)
    with pytest.raises(ValueError, match="zeta must be"):
        DiffPIR(zeta=-0.1)
    with pytest.raises(ValueError, match="needs an operator"):
        Sampler(prior, None, chain="ddrm")
    with pytest.raises(ValueError, match="closed_form"):
        Sampler(prior, AveragePool(2), chain="ddrm", closed_form=True)
    iterative = LinearOperator(lambda x: x[..., ::2, :], (3, SIZE, SIZE))   # A† by CG: no projector, no spectrum
    with pytest.raises(ValueError, match="orthogonal projector"):
        Sampler(prior, iterative, chain="ddrm")
    claimed = LinearOperator(lambda x: x[..., ::2, :], (3, SIZE, SIZE), claim_projector=True)
    Sampler(prior, claimed, chain="ddrm")                  # σ_y = 0 needs only P
    with pytest.raises(ValueError, match="singular values"):
        Sampler(prior, claimed, chain="diffpir", sigma_y=0.1)


def test_task_sampling_defaults_and_overrides():
    from fixedpoint_ir.operators import make_operator
    from fixedpoint_ir.operators.tasks import TASKS

    prior = GaussianMixturePrior()
    op = make_operator("inpaint_random", (3, SIZE, SIZE))
    assert op.task_config["sampling"] == TASKS["inpaint_random"].sampling
    s = Sampler(prior, op)
    assert (s.etw, s.nw, s.t_max) == (0.85, 0.85, 400)          # T = 20 (the default steps)
    assert int(s.timesteps[0]) < 400
    assert (Sampler(prior, op, steps=100).etw, Sampler(prior, op, steps=100).t_max) == (1.0, 250)   # from T = 50
    s = Sampler(prior, op, etw=0.1, nw=0.0, t_max=1000, chain="ddrm")
    assert (s.etw, s.nw, s.t_max, s.chain_choice) == (0.1, 0.0, 1000, DDRM())
    assert Sampler(prior, op, steps=600).t_max == 600        # a task's t_max never below T
    op.task_config["sampling"] = {}
    assert (Sampler(prior, op).etw, Sampler(prior, op).t_max) == (0.1, None)
    with pytest.raises(ValueError, match="t_max must be an int"):
        Sampler(prior, op, steps=20, t_max=10)
    with pytest.raises(ValueError, match="needs an operator"):
        Sampler(prior, None, t_max=400)


def test_t_max_starts_around_the_pseudo_inverse():
    """x_T = √ᾱ A†y + √(1−ᾱ) ε at t_0 of the truncated schedule (DDRM's start)."""
    op = OPERATORS["mask"]()
    y = op.A(_truth())
    s = Sampler(GaussianMixturePrior(), op, steps=STEPS, t_max=400)
    chain = s.chain(y, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(chain.x_T.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = float(s.coefficients.a[0])
    assert int(s.timesteps[0]) == 400 - 400 // STEPS
    torch.testing.assert_close(chain.x_T, math.sqrt(a) * op.A_pinv(y) + math.sqrt(1 - a) * eps,
                               rtol=0, atol=1e-12)
