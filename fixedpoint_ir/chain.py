"""The DDIM / DDNM chain: one update rule, the sequential sampler, and the map F (DESIGN §2–3).

Shapes: one state is a batch of images (N, C, H, W); the unknown of the fixed-point system is
z of shape (T, N, C, H, W), row j holding x_{s_j} (row T−1 is the restored image).

Row j of F(z) is the chain replayed with the network outputs e_j = ε_θ(u_j, t_j) held fixed, where
u_0 = x_T and u_j = z_{j−1}. Because e_j depends on z_{j−1} only, F is strictly lower triangular:
its unique fixed point is the sequential trajectory (Cao et al., "Deep Equilibrium Diffusion
Restoration with Parallel Sampling", CVPR 2024, Proposition 1).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Callable, Protocol

import torch
from einops import rearrange, repeat
from torch import Tensor

from .priors.base import Prior
from .schedule import StepCoefficients
from .surrogate import GaussianSurrogate, WhiteGaussian, as_surrogate

__all__ = ["Chain", "ClosedFormMap", "Correction", "draw_noise", "affine_scan"]


def affine_scan(decay: Tensor, offset: Tensor) -> Tensor:
    """All x_j of x_j = decay_j · x_{j−1} + offset_j (x_{−1} = 0) by a Hillis–Steele parallel scan.

    decay: (T, *batch) scalars per row; offset: (T, *batch, *rest). log2(T) vectorised passes and
    no division (a decay of 0, a frozen row, is fine), the scan of DEER (Lim et al. 2024).
    """
    decay = decay.reshape(*decay.shape, *([1] * (offset.dim() - decay.dim())))
    x, d, shift = offset, decay, 1
    while shift < x.shape[0]:
        x = torch.cat([x[:shift], x[shift:] + d[shift:] * x[:-shift]])
        d = torch.cat([d[:shift], d[shift:] * d[:-shift]])
        shift *= 2
    return x


class Correction(Protocol):
    """The data-consistency step applied to the x0 estimate of row j."""

    def __call__(self, x0: Tensor, j: int) -> Tensor: ...


def draw_noise(steps: int, image_batch_shape: tuple[int, ...], mode: str, *,
               generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> Tensor:
    """Fresh noises ξ_j of shape (T, N, C, H, W).

    ``"per_step"`` draws a fresh ξ for every step (the faithful sequential chain); ``"shared"``
    draws one ξ for all steps, as the reference DeqIR code does.
    """
    if mode == "per_step":
        return torch.randn((steps, *image_batch_shape), generator=generator, dtype=dtype, device=device)
    if mode == "shared":
        one = torch.randn((1, *image_batch_shape), generator=generator, dtype=dtype, device=device)
        return one.expand(steps, *image_batch_shape)
    raise ValueError(f"noise must be 'per_step' or 'shared', got {mode!r}")


class Chain:
    """The sampling chain for fixed (prior, coefficients, x_T, noises, correction).

    Args:
        prior: the ε-network.
        coefficients: per-step scalars (see :class:`~fixedpoint_ir.schedule.StepCoefficients`).
        x_T: the initial state at t_0, shape (N, C, H, W).
        noise: ξ_j, shape (T, N, C, H, W) (only used where nw > 0).
        correction: x0 ↦ corrected x0 for row j (DDNM's A†y + (I − P)x0), or None for plain DDIM.
        projector: (A†, P) for the closed form, when A†A is an orthogonal projector.
        surrogate: the Gaussian data model behind :meth:`surrogate_eps` and :meth:`surrogate_jvp`
            (a :class:`~fixedpoint_ir.surrogate.GaussianSurrogate`, or (mean, var) for a white one).

    ``nfe`` counts network evaluations per image (one per state row evaluated); ``row_scales``
    are the per-row noise levels √(1 − b_j) that structure-aware solvers may scale tolerances by;
    ``posterior_std`` (T,) is σ_j of the DDPM posterior q(x_{s_j} | x_{t_j}, x_0), the noise level
    the published samplers scale their per-row tests by (ParaDiGMS, ParaTAA; 0 on the last row).
    """

    def __init__(self, prior: Prior, coefficients: StepCoefficients, x_T: Tensor, noise: Tensor,
                 correction: Correction | None = None,
                 projector: tuple[Callable[[Tensor], Tensor], Tensor] | None = None,
                 surrogate: GaussianSurrogate | tuple[float, float] = (0.0, 0.25)):
        self.prior = prior
        self.coefficients = coefficients
        self.x_T = x_T
        self.noise = noise
        self.correction = correction
        self.projector = projector
        self.surrogate = as_surrogate(surrogate)
        self.surrogate.check(x_T)   # a model of 3-channel data on grey images fails here, not mid-solve
        self.num_rows = coefficients.num_steps
        self.nfe = 0            # network evaluations per image (total / N)
        self.nfe_total = 0      # network evaluations of single images
        self.network_calls = 0  # batched calls of the prior (= parallel depth)
        c = coefficients
        # Python floats: cheap to apply to tensors of any dtype, computed once in float64.
        self._a = c.a.tolist()
        self._sqrt_a = [math.sqrt(v) for v in self._a]
        self._sqrt_1ma = [math.sqrt(1.0 - v) for v in c.a.tolist()]
        self._sqrt_b = [math.sqrt(v) for v in c.b.tolist()]
        self._c1 = c.c1.tolist()
        self._c2 = c.c2.tolist()
        self._timesteps = c.timesteps.to(x_T.device)
        self.row_scales = (1.0 - c.b).clamp_min(0).sqrt()
        self.posterior_std = ((1.0 - c.b) / (1.0 - c.a) * (1.0 - c.a / c.b)).clamp_min(0).sqrt()
        self.timings = {"network": 0.0, "replay": 0.0}   # seconds, accumulated (see timed)
        # Replay by parallel scan (True), row loop (False) or None: scan on accelerators only. On
        # a CPU the loop is cheaper (no launch overhead to save; the scan makes log2(T) passes in
        # float64): 12 vs 33 ms for T = 20 at 64×64, sr4, one thread (benchmarks/speed.py).
        self.scan_replay: bool | None = None

    @contextmanager
    def timed(self, part: str):
        """Add the wall-clock of the block to ``timings[part]`` (synchronising a GPU at both ends)."""
        sync = torch.cuda.synchronize if self.x_T.is_cuda else (lambda: None)
        sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - start

    @property
    def reads_noise(self) -> bool:
        """Whether some step reads its fresh noise ξ_j (c1_j ≠ 0): then the restoration depends on
        the noises, and DEQ inversion can optimise them (:mod:`fixedpoint_ir.inversion`)."""
        return any(self._c1)

    @property
    def is_affine_in_span(self) -> bool:
        """True when one step's linear part lies in span{I, P} (P = A†A a projector, or plain DDIM)
        and the update rule is this class's own: then replays are a parallel scan (DESIGN §10)."""
        return type(self).step is Chain.step and (self.correction is None or self.projector is not None)

    def _prefer_scan(self) -> bool:
        return self.x_T.device.type != "cpu" if self.scan_replay is None else bool(self.scan_replay)

    @property
    def can_linear_replay(self) -> bool:
        """Whether the triangular solver should call :meth:`linear_replay`: a span{I, P} step, a
        white surrogate (a scalar Jacobian per row commutes with P; a power-law filter does not)
        and a device where the scan pays (:attr:`scan_replay`)."""
        return self.is_affine_in_span and isinstance(self.surrogate, WhiteGaussian) and self._prefer_scan()

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of z: (T, N, C, H, W)."""
        return (self.num_rows, *self.x_T.shape)

    # --- the update rule -------------------------------------------------------------------
    def step(self, j: int, x: Tensor, e: Tensor) -> Tensor:
        """One DDIM step from t_j to s_j with the range/null-space correction (DESIGN §2)."""
        x0 = self.denoised(j, x, e)
        x_next = self._sqrt_b[j] * x0 + self._c2[j] * e
        if self._c1[j]:
            x_next = x_next + self._c1[j] * self.noise[j]
        return x_next

    def denoised(self, j: int, x: Tensor, e: Tensor) -> Tensor:
        """Row j's estimate of the clean image from its input x and ε e, corrected (x̂0')."""
        x0 = (x - self._sqrt_1ma[j] * e) / self._sqrt_a[j]
        return x0 if self.correction is None else self.correction(x0, j)

    # --- the expensive part: all network calls of a round in one batch --------------------------
    def network_inputs(self, z: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """u_j for j in [start, stop): x_T for row 0, z_{j−1} otherwise."""
        stop = self.num_rows if stop is None else stop
        if start == 0:
            return torch.cat([self.x_T.unsqueeze(0), z[: stop - 1]], dim=0)
        return z[start - 1: stop - 1]

    def eps(self, z: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """e_j = ε_θ(u_j, t_j) for rows [start, stop), evaluated in ONE batch (chunked by the prior)."""
        stop = self.num_rows if stop is None else stop
        u = self.network_inputs(z, start, stop)
        rows, n = u.shape[0], u.shape[1]
        t = repeat(self._timesteps[start:stop], "t -> (t n)", n=n)
        with self.timed("network"):
            e = self.prior.eps(rearrange(u, "t n c h w -> (t n) c h w"), t)
        self.nfe_total += rows * n
        self.nfe = self.nfe_total // n
        self.network_calls += 1
        return rearrange(e, "(t n) c h w -> t n c h w", t=rows)

    def eps_at(self, z: Tensor, rows: Tensor, images: Tensor) -> Tensor:
        """e for an arbitrary set of (row, image) entries in ONE batch: shape (len(rows), C, H, W).

        Structure-aware solvers use it to evaluate only the entries whose inputs changed.
        """
        rows = torch.as_tensor(rows, dtype=torch.long, device=z.device)
        images = torch.as_tensor(images, dtype=torch.long, device=z.device)
        previous = (rows - 1).clamp_min(0)
        u = torch.where((rows == 0).view(-1, 1, 1, 1), self.x_T[images], z[previous, images])
        with self.timed("network"):
            e = self.prior.eps(u, self._timesteps[rows])
        self.nfe_total += int(rows.numel())
        self.nfe = self.nfe_total // self.x_T.shape[0]
        self.network_calls += 1
        return e

    # --- a free stand-in for the network, used by structure-aware solvers ----------------------
    def surrogate_eps(self, u: Tensor) -> Tensor:
        """ε of the Gaussian data model for all rows, u of shape (T, N, C, H, W).

        Exact for Gaussian data, a first guess for real priors (see :mod:`fixedpoint_ir.surrogate`).
        """
        a = repeat(self.coefficients.a.to(u.dtype).to(u.device), "t -> (t n)", n=u.shape[1])
        e = self.surrogate.eps(rearrange(u, "t n c h w -> (t n) c h w"), a)
        return rearrange(e, "(t n) c h w -> t n c h w", t=u.shape[0])

    def surrogate_jvp(self, rows: Tensor | int, d: Tensor) -> Tensor:
        """J d, J the surrogate's ∂ε/∂x at row ``rows`` (an int for a whole batch d of shape
        (N, C, H, W), or one row index per item of d)."""
        if isinstance(rows, int):
            return self.surrogate.jvp(d, self._a[rows])     # a Python float: no device sync
        return self.surrogate.jvp(d, self.coefficients.a.to(d.dtype).to(d.device)[rows])

    def surrogate_eps_around(self, rows: Tensor, u: Tensor, centre: Tensor) -> Tensor:
        """ε of the Gaussian data model with its mean moved to ``centre``: J_j (u − √ᾱ_j centre),
        one row index per item of u and centre (B, C, H, W). Same Jacobian as :meth:`surrogate_eps`."""
        a = self.coefficients.a.to(u.dtype).to(u.device)[rows]
        return self.surrogate.jvp(u - a.sqrt().view(-1, *([1] * (u.dim() - 1))) * centre, a)

    def surrogate_trajectory(self) -> Tensor:
        """The chain run sequentially with the surrogate instead of the network (no network call):
        a free initial guess for the states."""
        x, out = self.x_T, []
        for j in range(self.num_rows):
            x = self.step(j, x, self.surrogate.eps(x, self._a[j]))
            out.append(x)
        return torch.stack(out)

    # --- the cheap part: replay the update rule with e held fixed --------------------------------
    def replay(self, e: Tensor, start: int = 0, x_prev: Tensor | None = None) -> Tensor:
        """Rows [start, start + len(e)) of F: the chain replayed from x_prev (x_T when start = 0).

        A parallel scan over the rows where the step allows it (:attr:`is_affine_in_span`) and the
        device favours it (:attr:`scan_replay`), the row loop :meth:`replay_steps` otherwise; both
        give the same rows to rounding (tested).
        """
        x = self.x_T if start == 0 else x_prev
        if x is None:
            raise ValueError("replay from a row > 0 needs the state x_prev of the row before")
        with self.timed("replay"):
            if self.is_affine_in_span and self._prefer_scan():
                return self._scan(start, x, e, e.new_zeros(e.shape[:2]), e)
            return self.replay_steps(e, start, x)

    def replay_steps(self, e: Tensor, start: int = 0, x_prev: Tensor | None = None) -> Tensor:
        """The replay as the plain loop over rows (the reference for the vectorised replays)."""
        x = self.x_T if start == 0 else x_prev
        out = []
        for i in range(e.shape[0]):
            x = self.step(start + i, x, e[i])
            out.append(x)
        return torch.stack(out)

    def _project(self, v: Tensor) -> Tensor:
        """P v for v of shape (R, N, C, H, W), in one batched call of the operator."""
        project_range = self.projector[0]
        return project_range(v.flatten(0, 1)).view_as(v)

    def _scan(self, start: int, x_prev: Tensor, e: Tensor, gain: Tensor, at: Tensor,
              frozen_rows: Tensor | None = None, frozen: Tensor | None = None) -> Tensor:
        """Rows start… of the chain with e_j(u) = E_j + g_j (u − U_j), g a scalar per (row, image).

        One step is x_{j+1} = (α_j I + β_j P) x_j + c_j with (k = √(1−a), see DESIGN §10)
            α = √b (1 − k g)/√a + c2 g,  β = −√b (1 − k g)/√a,  c_j = step_j(0, E_j − g_j U_j);
        a frozen row is x_{j+1} = z_j (α = β = 0). I − P and P diagonalise every step, so the
        null-space and range parts are two scalar recurrences, solved by :func:`affine_scan`.

        Computed in float64: unlike the loop, which renormalises the state every step, the scan
        adds terms of size |x|/√a_0 (~100 at t = 950) that cancel, which in float32 costs ten
        times the loop's rounding error on deblurring (measured: 2.3e-4 vs 2.0e-5).
        """
        rows, n = e.shape[0], e.shape[1]
        if rows == 0:
            return e.clone()
        if e.dtype != torch.float64:
            wide = lambda v: None if v is None else v.to(torch.float64)  # noqa: E731
            return self._scan(start, wide(x_prev), wide(e), gain, wide(at), wide(frozen_rows),
                              frozen).to(e.dtype)
        rows_of = lambda v: v[start:start + rows].to(torch.float64).to(e.device).view(rows, 1)  # noqa: E731
        c = self.coefficients
        sqrt_a, sqrt_b, k = rows_of(c.a.sqrt()), rows_of(c.b.sqrt()), rows_of((1 - c.a).sqrt())
        g = gain.to(torch.float64)
        alpha = sqrt_b * (1 - k * g) / sqrt_a + rows_of(c.c2) * g
        beta = -sqrt_b * (1 - k * g) / sqrt_a
        spatial = (1,) * (e.dim() - 2)
        col = lambda v: v.expand(v.shape[0], n).to(e.dtype).reshape(v.shape[0], n, *spatial)  # noqa: E731
        ec = e - col(g) * at                                  # E − gU: the e of the step at x = 0
        x0 = col(-k / sqrt_a) * ec
        const = col(rows_of(c.c2)) * ec + col(rows_of(c.c1)) * self.noise[start:start + rows].to(e.dtype)
        if frozen is not None:
            alpha, beta = alpha.masked_fill(frozen, 0.0), beta.masked_fill(frozen, 0.0)
        if self.correction is None:                           # plain DDIM: P = 0
            const = const + col(sqrt_b) * x0
            offset = torch.cat([const[:1] + col(alpha[:1]) * x_prev, const[1:]])
        else:
            const = const + col(sqrt_b) * (self.projector[1] + x0 - self._project(x0))
            first = col(alpha[:1]) * x_prev + col(beta[:1]) * self._project(x_prev.unsqueeze(0))
            offset = torch.cat([const[:1] + first, const[1:]])
        if frozen is not None:
            offset = torch.where(frozen.view(rows, n, *spatial), frozen_rows, offset)
        if self.correction is None:
            return affine_scan(alpha.to(e.dtype), offset)
        p_offset = self._project(offset)
        return affine_scan(alpha.to(e.dtype), offset - p_offset) \
            + affine_scan((alpha + beta).to(e.dtype), p_offset)

    def linear_replay(self, z: Tensor, e_cache: Tensor, at: Tensor, scale: Tensor,
                      prefix: Tensor) -> tuple[Tensor, Tensor]:
        """The triangular solver's replay (``backends/triangular.py``) as one parallel scan.

        e_j(u) = E_j + scale_j · J_j (u − U_j) with J_j the white surrogate's scalar slope; rows
        j < prefix[n] of image n stay z_j. Returns F and its inputs like the solver's row loop.
        Needs a span{I, P} step (:attr:`is_affine_in_span`) and a white surrogate.
        """
        if not (self.is_affine_in_span and isinstance(self.surrogate, WhiteGaussian)):
            raise ValueError("linear_replay needs a span{I, P} step and a white surrogate")
        with self.timed("replay"):
            rows = z.shape[0]
            start = int(prefix.min())
            x_prev = self.x_T if start == 0 else z[start - 1]
            slope = self.surrogate.slope(self.coefficients.a.to(torch.float64)).to(scale.device)
            gain = scale[start:].to(torch.float64) * slope[start:].view(-1, 1)
            frozen = torch.arange(start, rows, device=z.device).view(-1, 1) < prefix.view(1, -1)
            out = z.clone()
            out[start:] = self._scan(start, x_prev, e_cache[start:], gain, at[start:], z[start:], frozen)
            return out, torch.cat([self.x_T.unsqueeze(0), out[:-1]])

    def closed_form(self, e: Tensor) -> Tensor:
        """F from Proposition 1, vectorised over rows with a cumulative sum (projector operators).

        F_j = √b_j [ A†y + (I−P)x_T/√a_0 + Σ_{i≤j} ((k2_i − k1_i)(I−P)e_i + n_i(I−P)ξ_i)
                     + k2_j P e_j + n_j P ξ_j ],
        k1 = √((1−a)/a), k2 = c2/√b, n = c1/√b. It equals :meth:`replay` to rounding.
        """
        if self.correction is not None and self.projector is None:
            raise ValueError("the closed form needs an operator whose A†A is an orthogonal projector")
        if e.dtype != torch.float64:   # its sums cancel terms of size |x|/√a_0: float64 (see _scan)
            return self.closed_form(e.to(torch.float64)).to(e.dtype)
        c = self.coefficients
        shape = (-1,) + (1,) * (e.dim() - 1)
        cast = lambda v: v.to(e.dtype).to(e.device).view(shape)  # noqa: E731
        k1, k2 = cast(((1 - c.a) / c.a).sqrt()), cast(c.c2 / c.b.sqrt())
        nw, sqrt_b = cast(c.c1 / c.b.sqrt()), cast(c.b.sqrt())
        noise = self.noise.to(e.dtype)
        if self.projector is None:  # plain DDIM: P = 0
            base = self.x_T / self._sqrt_a[0]
            return sqrt_b * (base + torch.cumsum((k2 - k1) * e + nw * noise, dim=0))
        project_range, pinv_y = self.projector
        flat = lambda v: rearrange(v, "t n c h w -> (t n) c h w")  # noqa: E731
        unflat = lambda v: rearrange(v, "(t n) c h w -> t n c h w", t=e.shape[0])  # noqa: E731
        p_e, p_xi = unflat(project_range(flat(e))), unflat(project_range(flat(noise)))
        x_T_null = self.x_T - project_range(self.x_T)
        base = pinv_y + x_T_null / self._sqrt_a[0]
        null_part = torch.cumsum((k2 - k1) * (e - p_e) + nw * (noise - p_xi), dim=0)
        return sqrt_b * (base + null_part + k2 * p_e + nw * p_xi)

    # --- F and its parts ----------------------------------------------------------------------
    def __call__(self, z: Tensor) -> Tensor:
        """F(z): one batched network call on all T rows, then the replay."""
        return self.replay(self.eps(z))

    def rows(self, z: Tensor, start: int, stop: int) -> Tensor:
        """Rows [start, stop) of F(z), replayed from z_{start−1}.

        This equals F(z)[start:stop] when rows < start of z are already a fixed point (a frozen
        prefix): only stop − start network evaluations are spent.
        """
        e = self.eps(z, start, stop)
        return self.replay(e, start, None if start == 0 else z[start - 1])

    def sequential(self, on_step: Callable[[int], None] | None = None) -> Tensor:
        """The reference: T network calls one after another. Returns the trajectory (T, N, C, H, W).

        ``on_step(j)`` is called after step j (a progress bar)."""
        x, out = self.x_T, []
        n = x.shape[0]
        for j in range(self.num_rows):
            with self.timed("network"):
                e = self.prior.eps(x, self._timesteps[j].expand(n))
            self.nfe_total += n
            self.nfe += 1
            self.network_calls += 1
            x = self.step(j, x, e)
            out.append(x)
            if on_step is not None:
                on_step(j)
        return torch.stack(out)


class ClosedFormMap:
    """F through the closed form of Proposition 1; partial rows and the step-level interface of
    structure-aware solvers (``step``, ``eps_at``, …) are the chain's own."""

    def __init__(self, chain: Chain):
        self.chain = chain
        self.num_rows = chain.num_rows

    def __call__(self, z: Tensor) -> Tensor:
        e = self.chain.eps(z)
        with self.chain.timed("replay"):
            return self.chain.closed_form(e)

    def rows(self, z: Tensor, start: int, stop: int) -> Tensor:
        return self.chain.rows(z, start, stop)

    def __getattr__(self, name):
        return getattr(self.chain, name)
