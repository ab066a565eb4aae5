"""DEQ inversion: gradients of a loss of the restored image with respect to x_T (DESIGN §5).

The exact (implicit) gradient must equal backpropagation through the sequential chain, on the
analytic prior and on a small random network, without an operator and with two operators; a
finite-difference check confirms the unrolled reference; the published one-step gradient's
cosine to the exact one is measured and printed, never asserted to be good.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from fixedpoint_ir import GaussianMixturePrior, ModulePrior, Sampler
from fixedpoint_ir.inversion import (NoiseGradient, ZeroGradientError, gradient_is_zero, noise_gradient,
                                     optimize_noise)
from fixedpoint_ir.losses import (CallableLoss, ColorLoss, MeasurementLoss, ReferenceLoss,
                                  RestorationLoss, chroma)
from fixedpoint_ir.operators import AveragePool, Colorization, Mask
from fixedpoint_ir.solver import get_solver

DT = torch.float64
SIZE, STEPS = 8, 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation, which stalls on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinyEps(nn.Module):
    """The analytic mixture ε plus a random 2-layer conv net with a sinusoidal time embedding."""

    def __init__(self, hidden: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.analytic = GaussianMixturePrior(0.5, 0.05)
        self.inp = nn.Conv2d(3, hidden, 3, padding=1)
        self.temb = nn.Linear(8, hidden)
        self.out = nn.Conv2d(hidden, 3, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.double().requires_grad_(False)   # a frozen pretrained network: inputs still get gradients

    def forward(self, x, t):
        freqs = torch.exp(-math.log(1000.0) * torch.arange(4, dtype=x.dtype) / 4)
        args = t.to(x.dtype)[:, None] * freqs[None]
        emb = torch.cat([args.cos(), args.sin()], dim=1)
        h = torch.tanh(self.inp(x) + self.temb(emb)[:, :, None, None])
        return self.analytic.predict_eps(x, t) + 0.3 * self.out(h)


def make_prior(kind: str):
    if kind == "mixture":
        return GaussianMixturePrior(0.5, 0.05)
    return ModulePrior(TinyEps())


def make_operator(kind: str):
    if kind == "none":
        return None
    if kind == "sr":
        return AveragePool(2)
    if kind == "inpaint":
        return Mask(torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(3)) > 0.5)
    if kind == "colorize":
        return Colorization()
    raise KeyError(kind)


def problem(prior_kind="mixture", op_kind="sr", nw=0.3, n=1, steps=STEPS, seed=0):
    g = torch.Generator().manual_seed(seed)
    op = make_operator(op_kind)
    sampler = Sampler(make_prior(prior_kind), op, solver=get_solver("picard", tol=0.0), steps=steps,
                      etw=0.1, nw=nw)
    gt = torch.rand(n, 3, SIZE, SIZE, generator=g, dtype=DT) * 2 - 1
    y = None if op is None else op.A(gt)
    x_T = torch.randn(n, 3, SIZE, SIZE, generator=g, dtype=DT)
    noise = torch.randn(steps, n, 3, SIZE, SIZE, generator=g, dtype=DT)
    return sampler, y, gt, x_T, noise


def rel(a, b):
    return float((a - b).norm() / b.norm())


def cosine(a, b):
    return float(a.flatten() @ b.flatten() / (a.norm() * b.norm()))


CASES = [(p, o) for p in ("mixture", "net") for o in ("none", "sr", "inpaint")]


# --- exactness ----------------------------------------------------------------------------------

@pytest.mark.parametrize("prior_kind,op_kind", CASES)
def test_implicit_gradient_equals_unrolled(prior_kind, op_kind):
    sampler, y, gt, x_T, noise = problem(prior_kind, op_kind)
    loss = ReferenceLoss(gt)
    exact = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="unrolled")
    implicit = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="implicit", adjoint="picard")
    backsub = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="implicit")   # back-substitution
    assert exact.grad_norm > 0
    assert rel(implicit.grad, exact.grad) <= 1e-6
    assert rel(backsub.grad, exact.grad) <= 1e-6
    assert implicit.loss == pytest.approx(exact.loss, rel=1e-10)
    torch.testing.assert_close(implicit.image, exact.image, rtol=1e-10, atol=1e-10)
    # Picard on the reversed adjoint: T rounds of T − 1 row VJPs, then one for x_T
    assert implicit.adjoint_rounds == STEPS
    assert implicit.vjps == STEPS * (STEPS - 1) + 1
    assert backsub.vjps == STEPS
    assert implicit.fixed_point_residual < 1e-12


@pytest.mark.parametrize("op_kind,mode", [("colorize", "pooled"), ("sr", "stats")])
def test_implicit_equals_unrolled_with_color_loss_and_batch(op_kind, mode):
    sampler, y, gt, x_T, noise = problem("net", op_kind, n=2)
    loss = ColorLoss(gt.flip(0), size=2, mode=mode)
    exact = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="unrolled")
    implicit = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="implicit", chunk=2)
    assert exact.grad_norm > 0
    assert rel(implicit.grad, exact.grad) <= 1e-6


def test_low_frequency_loss_under_super_resolution_has_zero_gradient():
    """Chroma pooled to 2×2 is fixed by a ×2 average-pool observation of an 8×8 image."""
    sampler, y, gt, x_T, noise = problem("net", "sr")
    r = noise_gradient(sampler, y, ColorLoss(gt.flip(-1), size=2), x_T, noise=noise)
    assert r.image_grad_norm > 0 and gradient_is_zero(r)


def test_adjoint_with_a_solver_backend_instance():
    """The reversed adjoint map is lower triangular like F: a structure-aware Anderson is exact."""
    from fixedpoint_ir.backends import Anderson

    sampler, y, gt, x_T, noise = problem("net", "inpaint")
    loss = ReferenceLoss(gt)
    exact = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="unrolled")
    solver = Anderson(tol=1e-10, max_rounds=30, mixing="triangular", exact_prefix=True)
    r = noise_gradient(sampler, y, loss, x_T, noise=noise, adjoint=solver)
    assert r.adjoint_report.converged and r.adjoint_rounds <= STEPS
    assert rel(r.grad, exact.grad) <= 1e-6


def test_chunked_adjoint_equals_one_batch():
    sampler, y, gt, x_T, noise = problem("net", "sr")
    loss = ReferenceLoss(gt, norm="l1")
    whole = noise_gradient(sampler, y, loss, x_T, noise=noise, chunk=None)
    chunked = noise_gradient(sampler, y, loss, x_T, noise=noise, chunk=4)
    assert rel(chunked.grad, whole.grad) <= 1e-12


def test_shared_noise_and_noise_free_chain():
    for nw, mode in ((0.0, "per_step"), (0.5, "shared")):
        g = torch.Generator().manual_seed(5)
        sampler = Sampler(make_prior("net"), AveragePool(2), solver=get_solver("picard", tol=0.0),
                          steps=STEPS, nw=nw, noise=mode)
        gt = torch.rand(1, 3, SIZE, SIZE, generator=g, dtype=DT)
        x_T = torch.randn(1, 3, SIZE, SIZE, generator=g, dtype=DT)
        y = sampler.operator.A(gt)
        grad_fn = lambda m: NoiseGradient(sampler, y, ReferenceLoss(gt), mode=m,  # noqa: E731
                                          generator=torch.Generator().manual_seed(9))(x_T)
        assert rel(grad_fn("implicit").grad, grad_fn("unrolled").grad) <= 1e-6


@pytest.mark.parametrize("prior_kind,op_kind", [("net", "sr"), ("mixture", "inpaint"), ("net", "none")])
def test_finite_differences_along_random_directions(prior_kind, op_kind):
    sampler, y, gt, x_T, noise = problem(prior_kind, op_kind)
    loss = ReferenceLoss(gt)
    grad = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="implicit").grad

    def value(x):
        with torch.no_grad():
            states = sampler.chain(y, x_T=x, noise=noise).sequential()
        return float(loss(states[-1]))

    g = torch.Generator().manual_seed(11)
    h = 1e-4
    for _ in range(3):
        d = torch.randn(x_T.shape, generator=g, dtype=DT)
        d /= d.norm()
        fd = (value(x_T + h * d) - value(x_T - h * d)) / (2 * h)
        analytic = float((grad * d).sum())
        assert fd == pytest.approx(analytic, rel=1e-6, abs=1e-9 * grad.norm().item())


def test_phantom_gradient_with_tau_one_and_T_steps_is_exact():
    sampler, y, gt, x_T, noise = problem("net", "sr")
    loss = ReferenceLoss(gt)
    exact = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="unrolled").grad
    phantom = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="one_step", tau=1.0,
                             phantom_steps=STEPS).grad
    assert rel(phantom, exact) <= 1e-6


def test_one_step_gradient_reduces_to_the_direct_term_plus_the_first_eps():
    """DESIGN §5: with z* detached, x_T enters F only via √(b_j/a_0)(I−P)x_T and e_0 = ε(x_T, t_0)."""
    sampler, y, gt, x_T, noise = problem("mixture", "sr")
    loss = ReferenceLoss(gt)
    tau = 0.5
    r = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="one_step", tau=tau)
    op, c = sampler.operator, sampler.coefficients
    a0, b_last, a_last = float(c.a[0]), float(c.b[-1]), float(c.a[-1])
    img = r.image.clone().requires_grad_()
    (g_img,) = torch.autograd.grad(loss(img), img)
    direct = tau * math.sqrt(b_last / a0) * (g_img - op.project_range(g_img))
    # the e_0 path: ∂F_{T−1}/∂e_0 = √b_{T−1} (k2_0 − k1_0)(I − P) through the closed form, times ∂ε/∂x_T
    k1 = math.sqrt((1 - a0) / a0)
    k2 = float(c.c2[0]) / math.sqrt(float(c.b[0]))
    cot_e0 = tau * math.sqrt(b_last) * (k2 - k1) * (g_img - op.project_range(g_img))
    xt = x_T.clone().requires_grad_()
    e0 = sampler.prior.eps(xt, c.timesteps[:1].expand(1))
    (through_e0,) = torch.autograd.grad(e0, xt, cot_e0)
    assert a_last > 0
    assert rel(r.grad, direct + through_e0) <= 1e-10


@pytest.mark.parametrize("prior_kind,op_kind", CASES)
def test_one_step_cosine_is_measured_and_reported(prior_kind, op_kind, record_property):
    sampler, y, gt, x_T, noise = problem(prior_kind, op_kind)
    loss = ReferenceLoss(gt)
    exact = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="implicit").grad
    out = {}
    for tau, k in ((0.5, 1), (0.5, 5)):
        g = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="one_step", tau=tau,
                           phantom_steps=k).grad
        out[(tau, k)] = (cosine(g, exact), float(g.norm() / exact.norm()))
        assert -1.0 - 1e-9 <= out[(tau, k)][0] <= 1.0 + 1e-9
    record_property("one_step_cosine", {f"tau={t},k={k}": v for (t, k), v in out.items()})
    print(f"\n[one-step vs exact] prior={prior_kind} op={op_kind} T={STEPS}: " + ", ".join(
        f"tau={t} k={k}: cosine {c:.3f}, norm ratio {n:.2f}" for (t, k), (c, n) in out.items()))


# --- the measurement loss -----------------------------------------------------------------------

@pytest.mark.parametrize("op_kind", ["sr", "inpaint", "colorize"])
def test_measurement_loss_is_refused_up_front(op_kind):
    sampler, y, gt, x_T, noise = problem("mixture", op_kind)
    with pytest.raises(ZeroGradientError, match="A x_0 = A A†y = y"):
        optimize_noise(sampler, y, MeasurementLoss(), x_T=x_T, steps=3, progress=False)
    with pytest.warns(RuntimeWarning, match="identically zero"):
        optimize_noise(sampler, y, MeasurementLoss(), x_T=x_T, steps=1, progress=False,
                       on_zero_gradient="warn")


@pytest.mark.parametrize("op_kind", ["sr", "inpaint"])
@pytest.mark.parametrize("mode", ["implicit", "unrolled", "one_step"])
def test_measurement_loss_in_disguise_is_detected_numerically(op_kind, mode):
    sampler, y, gt, x_T, noise = problem("net", op_kind)
    op = sampler.operator
    disguised = lambda img: (op.A(img) - y).square().sum()  # noqa: E731  (a plain user callable)
    r = noise_gradient(sampler, y, disguised, x_T, noise=noise, mode=mode)
    assert gradient_is_zero(r)
    with pytest.raises(ZeroGradientError, match="range/null-space correction|stationary"):
        optimize_noise(sampler, y, disguised, x_T=x_T, noise=noise, gradient=mode, steps=2,
                       progress=False)
    # a loss that also sees the null space is not flagged
    r2 = noise_gradient(sampler, y, lambda img: disguised(img) + (img - gt).square().sum(), x_T,
                        noise=noise, mode=mode)
    assert not gradient_is_zero(r2)


def test_measurement_loss_is_fine_for_plain_ddim():
    sampler, _, gt, x_T, noise = problem("mixture", "none")
    op = AveragePool(2)
    loss = MeasurementLoss(op, op.A(gt))
    assert loss.zero_gradient_reason(sampler) is None
    r = noise_gradient(sampler, None, loss, x_T, noise=noise)
    assert not gradient_is_zero(r)
    res = optimize_noise(sampler, None, loss, x_T=x_T, noise=noise, steps=15, lr=0.1, progress=False)
    assert res.loss < 0.5 * res.initial_loss


# --- optimisation -------------------------------------------------------------------------------

@pytest.mark.parametrize("gradient", ["implicit", "one_step", "unrolled"])
def test_optimize_noise_lowers_a_reference_loss(gradient):
    sampler, y, gt, x_T, noise = problem("mixture", "sr")
    res = optimize_noise(sampler, y, ReferenceLoss(gt), x_T=x_T, noise=noise, gradient=gradient,
                         steps=12, lr=0.1, patience=None, progress=(gradient == "implicit"))
    assert res.steps == 12 and len(res.history) == 13 and len(res.seconds) == 13
    assert res.loss < 0.8 * res.initial_loss
    assert res.loss == min(res.history) and res.history[res.best_step] == res.loss
    torch.testing.assert_close(res.initial_x_T, x_T)
    assert res.variables == ("x_T", "noise")            # nw = 0.3: the chain reads its noises
    assert not torch.equal(res.noise, noise)
    restored = sampler.restore(y, x_T=res.x_T, noise=res.noise).image   # reproducible from the result
    torch.testing.assert_close(restored, res.image, rtol=1e-9, atol=1e-9)
    # the observation is still matched exactly: x_T only moves the null space
    torch.testing.assert_close(sampler.operator.A(res.image), y, rtol=1e-9, atol=1e-9)
    assert math.isnan(res.grad_norms[-1]) and all(g > 0 for g in res.grad_norms[:-1])


def test_optimize_noise_draws_like_restore_and_stops_on_patience():
    sampler, y, gt, _, _ = problem("mixture", "inpaint")
    plain = sampler.restore(y, generator=torch.Generator().manual_seed(4))
    res = optimize_noise(sampler, y, ReferenceLoss(gt), generator=torch.Generator().manual_seed(4),
                         steps=50, lr=1e-9, tol=0.1, patience=3, progress=False)
    torch.testing.assert_close(res.initial_image, plain.image)
    assert res.stopped == "patience" and res.steps == 3


def test_keep_norm_and_sgd_and_callback():
    sampler, y, gt, x_T, noise = problem("mixture", "sr")
    seen = []
    res = optimize_noise(sampler, y, ReferenceLoss(gt), x_T=x_T, noise=noise, steps=4, lr=0.5,
                         optimizer="sgd", keep_norm=True, patience=None, progress=False,
                         callback=seen.append)
    assert [s["step"] for s in seen] == [0, 1, 2, 3, 4]
    assert res.final_x_T.norm().item() == pytest.approx(x_T.norm().item(), rel=1e-12)
    assert not torch.equal(res.final_x_T, x_T)


def test_restoration_loss_runs_the_restorer_once_on_the_back_projection():
    sampler, y, gt, x_T, noise = problem("mixture", "sr")
    calls = []

    def restorer(img):
        calls.append(img.clone())
        return img * 0.9

    res = optimize_noise(sampler, y, RestorationLoss(restorer), x_T=x_T, noise=noise, steps=3,
                         progress=False, patience=None)
    assert len(calls) == 1
    torch.testing.assert_close(calls[0], sampler.operator.A_pinv(y))
    assert res.loss <= res.initial_loss


# --- losses ---------------------------------------------------------------------------------------

def test_color_loss_sees_only_low_frequency_chroma():
    g = torch.Generator().manual_seed(2)
    ref = torch.rand(1, 3, 16, 16, generator=g, dtype=DT) * 2 - 1
    for mode in ("pooled", "stats"):
        loss = ColorLoss(ref, size=4, mode=mode)
        assert float(loss(ref)) == pytest.approx(0.0, abs=1e-14)
        brighter = ref + 0.3 * torch.rand(1, 1, 16, 16, generator=g, dtype=DT)  # luminance only
        assert float(loss(brighter)) == pytest.approx(0.0, abs=1e-14)
        assert float(loss(ref[:, [1, 2, 0]])) > 1e-4
    # chroma is the null space of the colorization operator
    col = Colorization()
    torch.testing.assert_close(chroma(ref), col.project_null(ref))
    luma = Colorization((0.299, 0.587, 0.114))
    torch.testing.assert_close(chroma(ref, luma.weights), luma.project_null(ref))
    bound = ColorLoss(ref).bind(Sampler(GaussianMixturePrior(), luma), None)
    torch.testing.assert_close(bound.weights, luma.weights)


def test_reference_losses_and_bad_input():
    a = torch.zeros(1, 3, 4, 4, dtype=DT)
    b = torch.ones(3, 4, 4, dtype=DT)
    assert float(ReferenceLoss(b)(a)) == pytest.approx(1.0)
    assert float(ReferenceLoss(2 * b, norm="l1")(a)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="norm"):
        ReferenceLoss(b, norm="l3")
    with pytest.raises(ValueError, match="does not match"):
        ReferenceLoss(torch.ones(3, 5, 5))(a)
    with pytest.raises(ValueError, match="NaN"):
        ReferenceLoss(b * float("nan"))
    with pytest.raises(ValueError, match="restorer"):
        RestorationLoss()
    with pytest.raises(ValueError, match="mode"):
        ColorLoss(b, mode="hist")
    with pytest.raises(TypeError):
        CallableLoss(3)


def test_bad_arguments_are_explained():
    sampler, y, gt, x_T, noise = problem("mixture", "sr")
    with pytest.raises(ValueError, match="gradient mode"):
        NoiseGradient(sampler, y, ReferenceLoss(gt), mode="adjoint")
    with pytest.raises(ValueError, match="tau"):
        NoiseGradient(sampler, y, ReferenceLoss(gt), mode="one_step", tau=0.0)
    with pytest.raises(ValueError, match="give a loss"):
        optimize_noise(sampler, y, None, x_T=x_T)
    with pytest.raises(TypeError, match="differentiable"):
        noise_gradient(sampler, y, lambda img: torch.tensor(float((img - gt).square().sum())), x_T,
                       noise=noise)
    with pytest.raises(TypeError, match="scalar"):
        noise_gradient(sampler, y, lambda img: (img - gt).square(), x_T, noise=noise)
    with pytest.raises(ValueError, match="optimizer"):
        optimize_noise(sampler, y, ReferenceLoss(gt), x_T=x_T, optimizer="newton", progress=False)


def test_unconverged_forward_solve_is_flagged():
    sampler, y, gt, x_T, noise = problem("net", "sr")
    sampler.solver = get_solver("picard", max_rounds=2, exact_after_rows=False, tol=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        noise_gradient(sampler, y, ReferenceLoss(gt), x_T, noise=noise)
    assert any("not a fixed point" in str(w.message) for w in caught)


def _sampler_has_sigma_y() -> bool:
    import inspect

    return "sigma_y" in inspect.signature(Sampler.__init__).parameters


@pytest.mark.skipif(not _sampler_has_sigma_y(), reason="this Sampler has no σ_y-aware correction")
def test_noisy_observation_damped_correction():
    """With σ_y > 0 (DDNM+) A x_0 ≠ y: the measurement loss is allowed and the gradient exact."""
    g = torch.Generator().manual_seed(8)
    op = AveragePool(2)
    sampler = Sampler(make_prior("net"), op, solver=get_solver("picard", tol=0.0), steps=STEPS,
                      etw=0.1, nw=0.2, sigma_y=0.2)
    gt = torch.rand(1, 3, SIZE, SIZE, generator=g, dtype=DT) * 2 - 1
    y = op.A(gt) + 0.2 * torch.randn(1, 3, SIZE // 2, SIZE // 2, generator=g, dtype=DT)
    x_T = torch.randn(1, 3, SIZE, SIZE, generator=g, dtype=DT)
    noise = torch.randn(STEPS, 1, 3, SIZE, SIZE, generator=g, dtype=DT)
    loss = MeasurementLoss()
    assert loss.zero_gradient_reason(sampler) is None
    exact = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="unrolled")
    implicit = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="implicit")
    assert not gradient_is_zero(exact)
    assert rel(implicit.grad, exact.grad) <= 1e-6
