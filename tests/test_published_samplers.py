"""ParaDiGMS and ParaTAA: exact at tol = 0, and round by round equal to a hand-written transcription
of their published update (in the published code's own indexing) on a 3-row chain."""
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fixedpoint_ir import GaussianMixturePrior, Sampler, Status, get_solver
from fixedpoint_ir.backends import ParaDiGMS, ParaTAA

from helpers import OPERATOR_NAMES, ground_truth, make_operator, observe

SIZE, STEPS = 8, 10


class ThreeRowChain:
    """x_{j+1} = a_j x + b_j e_j + c_j ξ_j with a nonlinear e_j(x) = tanh(W x + t_j): the interface
    the published samplers need (step, eps_at, x_T, posterior_std) on a (T, N, D) state."""

    def __init__(self, rows=3, dim=4, images=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        d = torch.float64
        self.num_rows = rows
        self.a = torch.rand(rows, generator=g, dtype=d) * 0.5 + 0.7
        self.b = torch.rand(rows, generator=g, dtype=d) * 0.8 - 0.4
        self.c = torch.rand(rows, generator=g, dtype=d) * 0.3
        self.W = torch.randn(dim, dim, generator=g, dtype=d) * 0.9
        self.t = torch.randn(rows, generator=g, dtype=d)
        self.noise = torch.randn(rows, images, dim, generator=g, dtype=d)
        self.x_T = torch.randn(images, dim, generator=g, dtype=d)
        self.posterior_std = torch.cat([torch.rand(rows - 1, generator=g, dtype=d) * 0.5 + 0.1,
                                        torch.zeros(1, dtype=d)])

    def eps(self, x, j):
        return torch.tanh(x @ self.W.T + self.t[j])

    def step(self, j, x, e):
        return self.a[j] * x + self.b[j] * e + self.c[j] * self.noise[j]

    def eps_at(self, z, rows, images):
        u = torch.stack([self.x_T[i] if r == 0 else z[r - 1, i] for r, i in zip(rows.tolist(), images.tolist())])
        return torch.stack([self.eps(u[k], r) for k, r in enumerate(rows.tolist())])

    def sequential(self):
        x, out = self.x_T, []
        for j in range(self.num_rows):
            x = self.step(j, x, self.eps(x, j))
            out.append(x)
        return torch.stack(out)


def _iterates(solver, chain):
    seen = []
    report = solver.solve(chain, chain.x_T.expand(chain.num_rows, *chain.x_T.shape).clone(),
                          callback=lambda info: seen.append(info.fz.clone()))
    return report, seen


# --- ParaDiGMS, transcribed from AndyShih12/paradigms @ d44faf9,
# paradigms/stablediffusion_paradigms.py lines 163–276 (buffer[0] = x_T, buffer[j + 1] = row j).
def paradigms_reference(chain, tol, parallel):
    T = chain.num_rows
    buffer = torch.stack([chain.x_T] * (T + 1))
    inverse_variance_norm = 1.0 / torch.cat([chain.posterior_std ** 2, torch.zeros(1, dtype=torch.float64)])
    inverse_variance_norm = inverse_variance_norm[:, None] / chain.x_T[0].numel()
    begin, end, iterates = 0, min(parallel, T), []
    while begin < T:
        block = buffer[begin:end]
        step_no_noise = torch.stack([chain.a[m] * block[k] + chain.b[m] * chain.eps(block[k], m)
                                     for k, m in enumerate(range(begin, end))])
        noise = torch.stack([chain.c[m] * chain.noise[m] for m in range(begin, end)])
        new = buffer[begin][None] + torch.cumsum(step_no_noise - block, 0) + torch.cumsum(noise, 0)
        error = (new - buffer[begin + 1:end + 1]).flatten(2).norm(dim=-1).pow(2)
        ratio = error * inverse_variance_norm[begin + 1:end + 1]
        ratio = torch.nn.functional.pad(ratio, (0, 0, 0, 1), value=1e9)
        ind = int(torch.max(ratio > tol ** 2, dim=1).values.int().argmax())
        new_begin = begin + min(1 + ind, parallel)
        new_end = min(new_begin + parallel, T)
        buffer[begin + 1:end + 1] = new
        buffer[end:new_end + 1] = buffer[end][None]
        begin, end = new_begin, new_end
        iterates.append(buffer[1:].clone())
    return iterates


# --- ParaTAA, transcribed from TZW1998/ParaTAA-Diffusion @ 08bcf3f, parallel_dit.py lines 92–295
# (its row t = T−1−j; samples[T] = x_T), one image at a time, written with explicit loops. Only
# windows > T, as the SD script uses (window 100, T = 50); with window ≤ T the published code
# leaves the window's lowest row at zero for its first round, see ParaTAA's docstring.
def parataa_reference(chain, image, tol1, tol2, order, memory, lam, window):
    T = chain.num_rows
    j_of = lambda t: T - 1 - t  # noqa: E731
    samples = {t: torch.zeros_like(chain.x_T[image]) for t in range(T)}   # initialize(): zeros
    samples[T] = chain.x_T[image].clone()
    finished, uninitialized = T, T - 1
    mem_x, mem_r = [], []            # per iteration: {t: value}
    counts = {t: 0 for t in range(T)}
    iterates = []
    while finished > 0:
        if uninitialized >= 0 and finished - uninitialized < window:     # initialize_samples
            end_index = max(-1, finished - window)
            for t in range(end_index + 1, uninitialized + 1):
                samples[t] = samples[uninitialized + 1].clone()
            uninitialized = end_index
        ts = list(range(max(finished + 1 - window, 1) - 1, finished))   # ascending t
        direction = {t: chain.eps(samples[t + 1], j_of(t)) for t in ts}

        def step(t, x):
            j = j_of(t)
            return chain.a[j] * x + chain.b[j] * direction[t] + chain.c[j] * chain.noise[j, image]

        unfinished = []
        for pos, t in enumerate(ts):
            r = (step(t, samples[t + 1]) - samples[t]).pow(2).mean().sqrt()
            if r > tol1 and r > tol2 * chain.posterior_std[j_of(t)]:
                unfinished.append(pos)
        finished = ts[max(unfinished)] if unfinished else ts[0]
        p = min(order, len(ts))
        ho = {}
        for t in ts:                                                    # compute_ho_residual
            top = min(t + p, ts[-1] + 1)
            x = samples[top]
            for q in range(top - 1, t - 1, -1):
                x = step(q, x)
            ho[t] = x - samples[t]
        mem_x.append({t: samples[t].clone() for t in ts})
        mem_r.append(dict(ho))
        del mem_x[:-memory], mem_r[:-memory]
        for t in ts:
            counts[t] = min(counts[t] + 1, memory)
        update = [pos for pos in range(max(unfinished) if unfinished else 0) if counts[ts[pos]] > 1]
        correction = {}
        for pos in update:
            t, k = ts[pos], counts[ts[pos]] - 1
            pairs = range(len(mem_r) - 1 - k, len(mem_r) - 1)           # the row's newest k differences
            dr = lambda s, i: mem_r[i + 1][s] - mem_r[i].get(s, 0 * ho[s])  # noqa: E731
            dx = lambda s, i: mem_x[i + 1][s] - mem_x[i].get(s, 0 * ho[s])  # noqa: E731
            B = torch.zeros(k, k, dtype=torch.float64)
            d = torch.zeros(k, dtype=torch.float64)
            for s in ts[pos:]:                                          # the row and those above it
                for a, i in enumerate(pairs):
                    d[a] += (dr(s, i) * ho[s]).sum()
                    for b, i2 in enumerate(pairs):
                        B[a, b] += (dr(s, i) * dr(s, i2)).sum()
            gamma = torch.linalg.solve(B + lam * torch.eye(k, dtype=torch.float64), d)
            correction[t] = sum(g * (dx(t, i) + dr(t, i)) for g, i in zip(gamma, pairs))
        for t in ts:
            samples[t] = samples[t] + ho[t] - correction.get(t, 0)
        iterates.append(torch.stack([samples[T - 1 - j] for j in range(T)]))
    return iterates


@pytest.mark.parametrize("tol, window", [(0.0, 32), (0.3, 32), (0.3, 2), (1.0, 1)])
@pytest.mark.parametrize("seed, rows", [(0, 3), (1, 3), (2, 3), (3, 6)])
def test_paradigms_equals_the_published_update_on_a_three_row_chain(tol, window, seed, rows):
    chain = ThreeRowChain(rows=rows, images=1, seed=seed)
    report, seen = _iterates(ParaDiGMS(tol=tol, window=window), chain)
    expected = paradigms_reference(chain, tol, window)
    assert len(seen) == len(expected) == report.rounds
    for mine, theirs in zip(seen, expected):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("tol, order, memory, window", [
    (0.0, 3, 2, 4), (1e-2, 3, 2, 4), (1e-2, 1, 2, 4), (3e-2, 2, 2, 4), (1e-2, 2, 3, 4), (1e-2, 3, 2, 8)])
@pytest.mark.parametrize("seed, rows", [(0, 3), (1, 3), (2, 3), (3, 6)])
def test_parataa_equals_the_published_update_on_a_three_row_chain(tol, order, memory, window, seed, rows):
    """Also one 6-row chain, where rows keep up to 3 iterates (memory 3) for several rounds."""
    chain = ThreeRowChain(rows=rows, images=2, seed=seed)
    window = max(window, rows + 1)
    solver = ParaTAA(tol=tol, order=order, memory=memory)
    report, seen = _iterates(solver, chain)
    for image in range(2):   # the published code samples one image at a time
        expected = parataa_reference(chain, image, tol, tol, order, memory, 1e-3, window)
        mine = [s[:, image] for s in seen]
        # rounds after this image finished leave it unchanged
        assert all(torch.equal(m, mine[len(expected) - 1]) for m in mine[len(expected):])
        for k, theirs in enumerate(expected):
            torch.testing.assert_close(mine[k], theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: ParaDiGMS(tol=0.0), lambda: ParaDiGMS(tol=0.0, window=3),
                                  lambda: ParaTAA(tol=0.0), lambda: ParaTAA(tol=0.0, window=4, order=2),
                                  lambda: ParaTAA(tol=0.0, memory=3, fill="given")],
                         ids=["paradigms", "paradigms_w3", "parataa", "parataa_w4_p2", "parataa_m3_given"])
@pytest.mark.parametrize("op", OPERATOR_NAMES)
def test_exact_after_T_rounds_at_tol_zero(make, op):
    """float64: the sequential chain to rounding, within T rounds, reported as converged."""
    operator = make_operator(op, SIZE)
    sampler = Sampler(GaussianMixturePrior(0.5, 0.05), operator, make(), steps=STEPS, etw=0.1, nw=0.4)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    if operator is None:
        kwargs = dict(image_shape=(3, SIZE, SIZE), num_images=2, dtype=torch.float64)
        ref, out = sampler.sequential(generator=gen(), **kwargs), sampler.sample(generator=gen(), **kwargs)
    else:
        y = observe(operator, ground_truth(SIZE, 2))
        ref, out = sampler.sequential(y, generator=gen()), sampler.restore(y, generator=gen())
    assert out.status is Status.CONVERGED and out.rounds <= STEPS
    assert float((out.states - ref.states).abs().max()) <= 1e-12


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 7), window=st.integers(1, 8),
       order=st.integers(1, 8), memory=st.integers(1, 4))
def test_exact_at_tol_zero_on_random_chains(seed, rows, window, order, memory):
    chain = ThreeRowChain(rows=rows, seed=seed)
    truth = chain.sequential()
    for solver in (ParaDiGMS(tol=0.0, window=window), ParaTAA(tol=0.0, window=window, order=order, memory=memory)):
        report, _ = _iterates(solver, chain)
        assert report.status is Status.CONVERGED and report.rounds <= rows
        assert float((report.solution - truth).abs().max()) <= 1e-12


def test_positive_tol_reports_stopped_not_converged():
    chain = ThreeRowChain(rows=6, seed=4)
    for solver in (ParaDiGMS(tol=0.5), ParaTAA(tol=1e-2)):
        report, _ = _iterates(solver, chain)
        assert report.status is Status.STOPPED


def test_registered_and_usable_by_name():
    assert isinstance(get_solver("paradigms"), ParaDiGMS) and isinstance(get_solver("parataa"), ParaTAA)
    op = make_operator("sr", SIZE)
    y = observe(op, ground_truth(SIZE, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = Sampler(GaussianMixturePrior(0.5, 0.05), op, "parataa", steps=STEPS).restore(
            y, generator=torch.Generator().manual_seed(0))
    assert out.status is Status.STOPPED and math.isfinite(float(out.image.abs().max()))


@pytest.mark.parametrize("bad", [dict(window=0), dict(fill="x"), dict(window=True)])
def test_paradigms_rejects_bad_options(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ParaDiGMS(**bad)


@pytest.mark.parametrize("bad", [dict(order=0), dict(memory=0), dict(window=-1), dict(lam=-1.0),
                                 dict(noise_tol=-1.0), dict(fill="x")])
def test_parataa_rejects_bad_options(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ParaTAA(**bad)


def test_a_map_without_steps_is_refused():
    with pytest.raises(TypeError, match="step"):
        ParaTAA().solve(lambda z: z, torch.zeros(3, 1, 2))
