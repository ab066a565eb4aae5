"""A structure-aware solver for strictly lower-triangular recurrences (parallel-in-time sampling).

The map is F(z)_j = step_j(F(z)_{j−1}, e_j(z_{j−1})): a cheap update rule, affine in its state,
driven by an expensive e (the network) that many rows evaluate in one batch. Axis 0 of z holds the
rows (time), axis 1 independent systems (images).

DeqIR's F holds every e_j fixed while the chain is replayed: that is a Newton step on the
trajectory with the network's Jacobian taken as zero, which is why Picard needs close to T rounds.
This solver replays with e_j *linearised* in its input instead,

    e_j(u) ≈ E_j + γ_j J_j (u − U_j),

E_j being the last evaluation (at input U_j), J_j the Jacobian of ε for a Gaussian model of the
data (the chain's surrogate, :mod:`fixedpoint_ir.surrogate`: a scalar √(1−ᾱ)/(ᾱv + 1 − ᾱ) for
white data, a per-frequency filter for a power-law spectrum) and γ_j a per-row, per-image scale:
1 at first, then fitted to the secant of the row's last two evaluations (a scalar Broyden update
per row). By default (``linearize="multisecant"``) γ_j J_j is then updated by the row's last three
secant pairs so that the model is exact along each of them (:mod:`backends.multisecant`; it cuts
the model's error along the replay's directions by 10–45 % and the rounds by 1–3 at T = 20). The
same linear model lets rows whose input barely moved skip re-evaluation. Rows are
accepted by an a-posteriori estimate of their error from their own recent changes (``stop``).
Further levers, each switchable: per-row tolerances scaled by the row's noise level (ParaDiGMS,
Shih et al. 2023), freezing the accepted prefix, and a sliding window of rows (24 by default).

Row p of the accepted prefix is always evaluated at its (frozen) input, where the linear
correction vanishes, so the prefix grows by at least one row per round: the solver is exact after
T rounds, like Picard, whatever the options.
"""
from __future__ import annotations

import contextlib
import math
from typing import Protocol

import torch
from torch import Tensor

from fixedpoint_ir.solver import FixedPointSolver, RoundInfo, SolverReport, Status, register_solver

from .acceleration import ACCELERATIONS, RowAccelerator
from .multisecant import SecantHistory

__all__ = ["Triangular", "TriangularRecurrence"]


class TriangularRecurrence(Protocol):
    """What the solver needs of the map (``fixedpoint_ir.chain.Chain`` provides it)."""

    num_rows: int
    x_T: Tensor          # the state before row 0, shape (N, ...)
    row_scales: Tensor   # (T,) non-negative per-row scales for tolerances

    def step(self, j: int, x: Tensor, e: Tensor) -> Tensor: ...

    def eps_at(self, z: Tensor, rows: Tensor, images: Tensor) -> Tensor: ...

    def surrogate_eps(self, u: Tensor) -> Tensor: ...      # cheap e for all rows, u: (T, N, ...)

    def surrogate_jvp(self, rows, d: Tensor) -> Tensor: ...  # J_rows d, the surrogate's Jacobian

    # far_rows="anchored" only:
    def denoised(self, j: int, x: Tensor, e: Tensor) -> Tensor: ...   # row j's corrected x̂0

    def surrogate_eps_around(self, rows: Tensor, u: Tensor, centre: Tensor) -> Tensor: ...


LINEARIZE = ("secant", "multisecant", "surrogate", "none")
ROW_TOLS = ("uniform", "noise")
STOPS = ("estimate", "safety")
FAR_ROWS = ("surrogate", "anchored")
DEFAULT_WINDOW = 24
PREFIX_SHARE = 0.2   # part of the remaining error budget a row accepted before the image may use
INPUT_GAP = 4.0      # most input movement since the last evaluation (× tol) for acceptance


@register_solver("triangular")
class Triangular(FixedPointSolver):
    """Structure-aware parallel-in-time solver (see the module docstring).

    Args:
        tol: a converged solve's rows are within tol (max-abs, image units) of the sequential
            chain, as judged by the rule ``stop``.
        max_rounds: most rounds (``None``: T, where the solver is exact anyway).
        linearize: ``"multisecant"`` (default: the surrogate's Jacobian scaled per row by its
            last secant, then updated by its last ``secants`` secant pairs to be exact along them,
            :mod:`backends.multisecant`), ``"secant"`` (the scaled surrogate only, the default
            until 2026-12: no pairs kept, and the one parallel-scan replay on GPUs with a white
            surrogate), ``"surrogate"`` (the surrogate's Jacobian as is) or ``"none"`` (DeqIR's replay with e
            held fixed).
        window: most rows evaluated per image per round (``None``: all rows). The default, 24,
            changes nothing at T ≤ 24 and bounds the evaluations of long chains: on the
            learned prior (flower sr4) at T = 50 it cost 1 round more and 31 % fewer evaluations
            than all rows, at T = 100 6 rounds more and 53 % fewer, see docs/solvers.md.
        freeze: accept converged rows before the Picard guarantee does (``False``: rows are only
            accepted once their input is exact).
        reuse: skip re-evaluating a row whose input moved by at most ``reuse`` × its tolerance
            since its last evaluation (0 re-evaluates every changed row).
        row_tol: ``"uniform"`` or ``"noise"``: tol_j = tol · max(1, σ_j / σ_min), σ_j the map's
            ``row_scales`` (looser where the state is noisier).
        slope_bounds: the secant scales γ are clipped to this range.
        stop: how a row is judged converged. ``"estimate"`` (default): its error is estimated a
            posteriori as q/(1−q) × its last change, q the row's own contraction (the larger of
            its last two change ratios, at most ``max_rate``); the estimates of the rows accepted
            so far are added up per image (a frozen row's error travels down the chain), and a
            row is accepted while that sum stays within ``safety`` × its tolerance.
            ``"safety"``: the earlier rule, change ≤ ``safety`` × tol, which assumes q ≤ ⅓.
        safety: the share of the tolerance the accepted rows may use (``stop="estimate"``: 0.8;
            ``stop="safety"``: 0.5). Checked on the tests' and benchmarks' problems: a reported
            convergence is within tol of the sequential chain.
        max_rate: the largest contraction the estimate assumes (a row whose change does not
            shrink needs change ≤ tol·(1 − max_rate)/max_rate).
        accelerate: ``"none"`` (default), ``"anderson"`` (ParaTAA's triangular Anderson on the
            replay's output, memory ``memory``), ``"aitken"`` (per-row Aitken relaxation) or
            ``"damping"`` (the secant scales of rows past the first unaccepted one replayed as
            (1 − ``damping``)·γ); see :mod:`backends.acceleration`. Rows up to the first
            unaccepted one always take the plain step (exact after T rounds). Measured on the
            learned prior in ``benchmarks/acceleration.py``.
        far_rows: how rows beyond the window are replayed before their first evaluation:
            ``"surrogate"`` (the Gaussian data model, which knows nothing of this image) or
            ``"anchored"`` (the same model re-centred every round on the corrected x̂0 of the
            window's last evaluated row: ParaSolver's x̂0-anchored guesses, Lu et al., ICLR 2025).
            Only chains longer than the window are affected.
        memory: iterates per row kept by ``accelerate="anderson"`` (≥ 2).
        secants: secant pairs per row kept by ``linearize="multisecant"`` (≥ 1).
        damping: the ELK-style damping factor k of ``accelerate="damping"``, in [0, 1).
        safeguard: when a round's largest change exceeds ``safeguard`` × the previous one, or is
            not finite, the round is replayed without linearisation (DeqIR's F, a Picard step)
            and the scales γ reset to 1; network evaluations that returned NaN/Inf are
            retried once before the solve is reported as diverged.
    """

    name = "triangular"

    def __init__(self, tol: float = 1e-3, max_rounds: int | None = None, *,
                 linearize: str = "multisecant", window: int | None = DEFAULT_WINDOW, freeze: bool = True,
                 reuse: float = 1.0, row_tol: str = "uniform", slope_bounds: tuple[float, float] = (0.0, 4.0),
                 stop: str = "estimate", safety: float | None = None, max_rate: float = 0.9,
                 accelerate: str = "none", memory: int = 2, damping: float = 0.3,
                 far_rows: str = "surrogate", secants: int = 3,
                 safeguard: float | None = 100.0, divergence_factor: float = 1e4):
        super().__init__(tol, max_rounds, divergence_factor)
        if linearize not in LINEARIZE:
            raise ValueError(f"linearize must be one of {LINEARIZE}, got {linearize!r}")
        if row_tol not in ROW_TOLS:
            raise ValueError(f"row_tol must be one of {ROW_TOLS}, got {row_tol!r}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be a positive int or None, got {window!r}")
        if reuse < 0:
            raise ValueError(f"reuse must be non-negative, got {reuse!r}")
        self.linearize, self.window, self.freeze = linearize, window, freeze
        self.reuse, self.row_tol, self.slope_bounds = reuse, row_tol, slope_bounds
        self.safeguard = safeguard
        if stop not in STOPS:
            raise ValueError(f"stop must be one of {STOPS}, got {stop!r}")
        if safety is None:
            safety = 0.8 if stop == "estimate" else 0.5
        if not 0 < safety <= 1:
            raise ValueError(f"safety must lie in (0, 1], got {safety!r}")
        if not 0 < max_rate < 1:
            raise ValueError(f"max_rate must lie in (0, 1), got {max_rate!r}")
        self.stop, self.safety, self.max_rate = stop, safety, max_rate
        if accelerate not in ACCELERATIONS:
            raise ValueError(f"accelerate must be one of {ACCELERATIONS}, got {accelerate!r}")
        if not 0 <= damping < 1:
            raise ValueError(f"damping must lie in [0, 1), got {damping!r}")
        if accelerate == "anderson":
            RowAccelerator("anderson", memory)    # validates memory
        self.accelerate, self.memory, self.damping = accelerate, memory, damping
        if far_rows not in FAR_ROWS:
            raise ValueError(f"far_rows must be one of {FAR_ROWS}, got {far_rows!r}")
        self.far_rows = far_rows
        if linearize == "multisecant" and (isinstance(secants, bool) or not isinstance(secants, int) or secants < 1):
            raise ValueError(f"secants must be a positive int, got {secants!r}")
        self.secants = secants

    def memory_mode(self, f) -> str:
        """Anderson and the multisecant model keep histories of the trajectory: the plan counts them."""
        if self.accelerate == "anderson":
            return "triangular+anderson"
        return "triangular+multisecant" if self.linearize == "multisecant" else self.name

    def _accelerator(self) -> RowAccelerator | None:
        if self.accelerate in ("anderson", "aitken"):
            return RowAccelerator(self.accelerate, self.memory)
        return None

    def row_tolerances(self, f: TriangularRecurrence, rows: int) -> Tensor:
        if self.row_tol == "uniform":
            return torch.full((rows,), self.tol, dtype=torch.float64)
        scales = f.row_scales.to(torch.float64)
        positive = scales[scales > 0]
        floor = positive.min() if positive.numel() else torch.tensor(1.0, dtype=torch.float64)
        return self.tol * torch.clamp(scales / floor, min=1.0)

    def solve(self, f, z0, callback=None) -> SolverReport:
        needed = ("step", "eps_at", "x_T", "surrogate_eps", "surrogate_jvp") \
            + (("denoised", "surrogate_eps_around") if self.far_rows == "anchored" else ())
        for attr in needed:
            if not hasattr(f, attr):
                raise TypeError(f"the triangular solver needs a map with step, eps_at, x_T and a "
                                f"surrogate (a Chain); {type(f).__name__} has no {attr!r}")
        rows, n = z0.shape[0], z0.shape[1]
        limit = self.round_limit(z0)
        dev, dtype = z0.device, z0.dtype
        width = rows if self.window is None else min(self.window, rows)
        spatial = (1,) * (z0.dim() - 2)
        row_tols = self.row_tolerances(f, rows).to(dev, dtype).view(rows, 1)
        # Input changes (reuse, evaluation point) are judged at half the tolerance in both rules.
        tol_rows = (self.safety if self.stop == "safety" else 0.5) * row_tols
        row_index = torch.arange(rows, device=dev).view(rows, 1)
        all_images = torch.arange(n, device=dev)

        z = z0.clone()
        inputs = torch.cat([f.x_T.unsqueeze(0), z[:-1]])
        scale = torch.full((rows, n), 0.0 if self.linearize == "none" else 1.0, device=dev, dtype=dtype)
        at = inputs.clone()                        # U: where each row's e was last evaluated
        e_cache = f.surrogate_eps(at)              # E: the surrogate until a real evaluation
        evaluated = torch.zeros(rows, n, dtype=torch.bool, device=dev)
        prefix = torch.zeros(n, dtype=torch.long, device=dev)
        residuals: list[float] = []
        rows_evaluated: list[int] = []
        fallbacks = nan_rounds = 0
        accepted_history: list[list[int]] = []
        prev_hi, prev_guarded = torch.zeros(n, dtype=torch.long, device=dev), math.inf
        # Last round's (z, F(z), contraction) for the a-posteriori error estimate (None/NaN: unknown).
        history = (None, None, torch.full((rows, n), math.nan, device=dev, dtype=dtype))
        accelerator = self._accelerator()
        secants = SecantHistory(z0, self.secants) if self.linearize == "multisecant" else None
        budget_used = torch.zeros(n, device=dev, dtype=dtype)   # error share of accepted rows
        status = Status.MAX_ROUNDS
        rounds = 0
        while rounds < limit:
            hi = torch.clamp(prefix + width, max=rows)
            window = (row_index >= prefix) & (row_index < hi)
            moved = (inputs - at).abs().flatten(2).amax(-1)
            exact_row = row_index == prefix             # must be evaluated exactly at its input
            need = window & (~evaluated | (moved > self.reuse * tol_rows) | (exact_row & (moved > 0)))
            r_idx, n_idx = need.nonzero(as_tuple=True)
            if r_idx.numel():
                u = inputs[r_idx, n_idx]
                e_new = f.eps_at(z, r_idx, n_idx)
                bad = ~torch.isfinite(e_new).flatten(1).all(1)
                if bad.any():  # a broken evaluation: retry it next round, then give up
                    nan_rounds += 1
                    if nan_rounds > 1 or self.safeguard is None:
                        residuals.append(math.inf)
                        return SolverReport(z, rounds + 1, residuals, Status.DIVERGED,
                                            dict(rows_evaluated=rows_evaluated + [int(r_idx.numel())],
                                                 safeguard_fallbacks=fallbacks))
                    fallbacks += 1
                    r_idx, n_idx, u, e_new = r_idx[~bad], n_idx[~bad], u[~bad], e_new[~bad]
                else:
                    nan_rounds = 0
                du, de = u - at[r_idx, n_idx], e_new - e_cache[r_idx, n_idx]
                if self.linearize in ("secant", "multisecant"):
                    self._update_scales(f, scale, r_idx, n_idx, evaluated, du, de)
                if secants is not None:   # a pair needs two network evaluations of the entry
                    again = evaluated[r_idx, n_idx]
                    secants.push(r_idx[again], n_idx[again], du[again], de[again])
                e_cache[r_idx, n_idx], at[r_idx, n_idx] = e_new, u
                evaluated[r_idx, n_idx] = True
            rounds += 1
            rows_evaluated.append(int(need.sum()))
            if self.far_rows == "anchored" and width < rows:
                self._anchor_far_rows(f, e_cache, at, hi, evaluated)

            damped = self._damped(scale, prefix, row_index)
            if secants is not None:
                secants.prepare(f, damped, int(prefix.min()))
            fz, new_inputs = self._replay(f, z, e_cache, at, damped, prefix, secants)
            change = (fz - z).abs().flatten(2).amax(-1)
            residual = float(change.max())
            # Compare like with like: rows that were already in last round's window.
            guarded = float(torch.where(row_index < prev_hi, change, torch.zeros_like(change)).max()) \
                if bool((prev_hi > 0).any()) else math.inf
            jumped = guarded > (self.safeguard or math.inf) * max(prev_guarded, self.tol)
            if self.safeguard is not None and (not math.isfinite(residual) or jumped) \
                    and self.linearize != "none":
                # The linear model misled this round: take DeqIR's plain step instead.
                fallbacks += 1
                scale.fill_(1.0)
                if secants is not None:
                    secants.reset()
                fz, new_inputs = self._replay(f, z, e_cache, at, torch.zeros_like(scale), prefix)
                change = (fz - z).abs().flatten(2).amax(-1)
                residual = float(change.max())
                guarded = math.inf  # no reference for the next comparison
                history = (None, None, history[2])  # a different step: its rates say nothing
                if accelerator is not None:
                    accelerator.reset()
            prev_hi, prev_guarded = hi, guarded
            if not math.isfinite(residual):
                residuals.append(math.inf)
                return SolverReport(z, rounds, residuals, Status.DIVERGED,
                                    dict(rows_evaluated=rows_evaluated, safeguard_fallbacks=fallbacks))
            residuals.append(residual)
            if residual > self.divergence_factor * max(residuals[0], 1e-12):
                return SolverReport(z, rounds, residuals, Status.DIVERGED,
                                    dict(rows_evaluated=rows_evaluated, safeguard_fallbacks=fallbacks))

            # Accept rows: the prefix row (exact), then contiguous rows that settled and whose e
            # was evaluated close to their current input.
            input_gap = (new_inputs - at).abs().flatten(2).amax(-1)
            if self.stop == "safety":
                settled = (change <= tol_rows) & evaluated & (input_gap <= tol_rows)
            else:
                share, history = self._error_share(z, fz, history, row_tols)
                # The estimate covers the linear model's error at the row's current input (it is
                # part of the contraction it measures); the input must still be near the
                # evaluation point for that model to hold (within INPUT_GAP·tol: at 1·tol the
                # last rows waited a round for an evaluation they did not need, on 2 of 9
                # learned-prior problems).
                # A block that completes the chain may use the whole remaining budget; rows accepted
                # on the way only a small part of it (their error would travel to the image).
                ok = evaluated & (input_gap <= INPUT_GAP * row_tols)
                left = self.safety - budget_used
                full = ok & (share <= left)
                completes = torch.cumprod(torch.where(row_index >= prefix, full, torch.ones_like(full))
                                          .to(torch.int8), dim=0).bool().all(0)
                settled = torch.where(completes, full, ok & (share <= PREFIX_SHARE * left))
            if not self.freeze:
                settled = torch.zeros_like(settled)
            settled[prefix.clamp(max=rows - 1), all_images] |= prefix < rows
            run = torch.cumprod(torch.where(row_index >= prefix, settled, torch.ones_like(settled))
                                .to(torch.int8), dim=0).bool()
            new_prefix = torch.maximum(run.sum(0), torch.clamp(prefix + 1, max=rows))
            if self.stop == "estimate":
                # The prefix row itself is exact given the rows before it: no share of its own.
                newly = (row_index > prefix) & (row_index < new_prefix)
                budget_used = budget_used + torch.where(newly, share, torch.zeros_like(share)).amax(0)
            prefix = new_prefix
            if accelerator is not None:
                # Only rows after the first unaccepted one, inside this round's window, are mixed.
                mixed = accelerator(z, fz, (row_index > prefix) & (row_index < hi))
                z, inputs = mixed, torch.cat([f.x_T.unsqueeze(0), mixed[:-1]])
            else:
                z, inputs = fz, new_inputs
            accepted_history.append(prefix.tolist())
            if callback is not None:
                callback(RoundInfo(rounds, residual, z, fz,
                                   dict(prefix=prefix.tolist(), rows_evaluated=rows_evaluated[-1])))
            if bool((prefix >= rows).all()):
                status = Status.CONVERGED
                break
        info = dict(rows_evaluated=rows_evaluated, accepted_rows=prefix.tolist(),
                    accepted_history=accepted_history, safeguard_fallbacks=fallbacks)
        if self.stop == "estimate" and status is Status.CONVERGED:
            # What was compared with tol: the accepted rows' summed error estimates.
            info["image_error"] = float(budget_used.max()) * self.tol
        return SolverReport(z, rounds, residuals, status, info)

    def _error_share(self, z, fz, history, row_tols):
        """Each row's estimated error as a share of its tolerance, and the new history.

        A row converging like Δ_{k+1} ≈ q·(rotation)·Δ_k is off its limit by about
        q/(1 − q·cos θ) × max|Δ_k|, θ the angle between its last two changes: q/(1−q) when it
        creeps monotonically, q/(1+q) when it overshoots back and forth (the secant model does),
        q the larger of its last two max-abs change ratios (``max_rate`` where either is unknown:
        a row with a single measured ratio, e.g. a whole solve stopping at round 2 under a loose
        tol, had its error underestimated 1.5× by that one ratio).
        The ratio and angle are those of the map's output change F(z) − F(z') against its input
        change z − z' between the last two rounds: for the plain iteration (z = F(z')) exactly
        the change ratios above; for an accelerated (mixed) iterate still the map's own
        contraction, not the faster one of the mixed sequence, which would flatter the estimate.
        """
        last_z, last_fz, last_rate = history
        delta = fz - z
        change = delta.flatten(2).abs().amax(-1)
        if last_z is None:
            nan = torch.full_like(change, math.nan)
            rate, cos = nan, torch.ones_like(change)
        else:
            out_step, in_step = (fz - last_fz).flatten(2), (z - last_z).flatten(2)
            rate = out_step.abs().amax(-1) / in_step.abs().amax(-1)   # NaN where unknown
            cos = (out_step * in_step).sum(-1) / (out_step.norm(dim=-1) * in_step.norm(dim=-1)).clamp_min(1e-30)
            cos = torch.where(torch.isnan(rate), torch.ones_like(cos), cos.clamp(-1.0, 1.0))
        rate = torch.where(change == 0, torch.zeros_like(rate), rate)
        q = torch.maximum(rate.nan_to_num(self.max_rate), last_rate.nan_to_num(self.max_rate))
        q = q.clamp(0.0, self.max_rate)
        share = change * q / (1 - q * cos) / row_tols
        return share, (z, fz, rate)

    @staticmethod
    def _anchor_far_rows(f, e_cache, at, hi, evaluated) -> None:
        """``far_rows="anchored"``: the not yet evaluated rows after each image's window replay the
        surrogate centred on the corrected x̂0 of the window's last row (its latest evaluation), so
        they enter the window near this image's trajectory instead of the data model's mean."""
        rows = e_cache.shape[0]
        centres = {}
        for image in range(e_cache.shape[1]):
            last = int(hi[image]) - 1
            if last + 1 >= rows or not bool(evaluated[last, image]):
                continue
            far = torch.arange(last + 1, rows, device=e_cache.device)
            far = far[~evaluated[far, image]]
            if far.numel() == 0:
                continue
            if last not in centres:    # the correction works on the whole batch (its A†y is per image)
                centres[last] = f.denoised(last, at[last], e_cache[last])
            centre = centres[last][image:image + 1]
            e_cache[far, image] = f.surrogate_eps_around(far, at[far, image],
                                                         centre.expand(far.numel(), *centre.shape[1:]))

    def _damped(self, scale, prefix, row_index):
        """``accelerate="damping"``: the secant scales of rows past the first unaccepted one × (1 − k)."""
        if self.accelerate != "damping" or self.damping == 0:
            return scale
        factor = torch.where(row_index > prefix, 1.0 - self.damping, 1.0).to(scale.dtype)
        return scale * factor

    def _update_scales(self, f, scale, r_idx, n_idx, evaluated, du, de) -> None:
        """Secant fit γ = ⟨Δe, JΔu⟩ / ‖JΔu‖² for entries evaluated twice by the network."""
        jdu = f.surrogate_jvp(r_idx, du).flatten(1)
        de = de.flatten(1)
        num, den = (jdu * de).sum(1), (jdu * jdu).sum(1)
        ok = evaluated[r_idx, n_idx] & (den > 0) & torch.isfinite(num)
        lo, hi = self.slope_bounds
        gamma = (num / den.clamp_min(torch.finfo(den.dtype).tiny)).clamp(lo, hi)
        scale[r_idx[ok], n_idx[ok]] = gamma[ok]

    def _replay(self, f, z, e_cache, at, scale, prefix, secants=None):
        """F with linearised e, replayed from the accepted prefix. Returns F and its inputs."""
        if secants is None and getattr(f, "can_linear_replay", False):   # one parallel scan (chain.py)
            return f.linear_replay(z, e_cache, at, scale, prefix)
        with f.timed("replay") if hasattr(f, "timed") else contextlib.nullcontext():
            return self._replay_rows(f, z, e_cache, at, scale, prefix, secants)

    def _replay_rows(self, f, z, e_cache, at, scale, prefix, secants=None):
        """The replay as a loop over rows (any surrogate, any update rule)."""
        rows, n = z.shape[0], z.shape[1]
        spatial = (1,) * (z.dim() - 2)
        start = int(prefix.min())
        x = f.x_T if start == 0 else z[start - 1]
        out = z.clone()
        inputs = torch.cat([f.x_T.unsqueeze(0), z[:-1]])
        linear = bool(scale.any())
        for j in range(start, rows):
            inputs[j] = x
            e = e_cache[j]
            if linear:
                e = e + scale[j].view(n, *spatial) * f.surrogate_jvp(j, x - at[j])
                if secants is not None and secants.holds(j):
                    e = e + secants.correction(j, x - at[j])
            frozen = (j < prefix).view(n, *spatial)
            x = torch.where(frozen, z[j], f.step(j, x, e))
            out[j] = x
        return out, inputs
