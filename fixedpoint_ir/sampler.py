"""The parallel-in-time sampler: build F for (prior, operator, y, x_T, noise) and hand it to a solver."""
from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from typing import Callable

import torch
from torch import Tensor

from .chain import Chain, ClosedFormMap, draw_noise
from .chains.ddnm_plus import DDNMPlusChain
from .checks import check_finite, check_observation, divergence_hint, warn_if_tf32
from .cost import Choice
from .constants import DEFAULT_SOLVER, DEFAULT_STEPS
from .memory import MemoryPlan, MemoryPlanError
from .null_mean import null_mean_basis, remove_null_mean
from .priors.base import Prior
from .progress import RoundTimes, progress_bar, round_postfix
from .result import Result
from .schedule import StepCoefficients, uniform_timesteps
from .solver import (FixedPointSolver, RoundInfo, SolverDivergedError, SolverReport, Status,
                     get_solver)
from .surrogate import GaussianSurrogate, WhiteGaussian, as_surrogate

__all__ = ["Sampler", "Result"]

INITS = ("x_T", "observation", "surrogate")


class Sampler:
    """DDIM / DDNM sampling as one fixed-point solve (DeqIR, Cao et al. CVPR 2024).

    Args:
        prior: the ε-network (:class:`~fixedpoint_ir.priors.Prior`).
        operator: the degradation (``None``: unconditional DDIM).
        solver: a :class:`~fixedpoint_ir.solver.FixedPointSolver` or a registered name
            (``"triangular"`` — the default, see ``backends/triangular.py`` —, ``"picard"``,
            ``"anderson"``, ``"broyden"``, ``"torchdeq"``), or ``"auto"``: measure what a batch
            of states costs against one (:mod:`fixedpoint_ir.cost`, cached) and run the
            triangular solver or the sequential chain, whichever is predicted faster
            (``Result.choice`` says which and why).
        plan_memory: before running, estimate the peak memory and lower the prior's
            ``max_batch`` (for that run) so it fits :data:`~fixedpoint_ir.memory.MEMORY_FRACTION`
            of the device's free memory, or raise :class:`~fixedpoint_ir.memory.MemoryPlanError`.
        steps: T, the number of DDIM steps (uniform subsequence of the prior's schedule).
        etw: η of the paper (weight of ε in the step: c2 = √(1−b)·√(1−etw²)).
        nw: weight of fresh noise ξ_j (c1 = √(1−b)·nw); 0 in the reference code.
        noise: ``"per_step"`` (a fresh ξ_j per step, the faithful default) or ``"shared"``.

        ``etw``, ``nw``, ``noise``, ``chain`` and ``t_max`` left at ``None`` take the task's
        sampling defaults when the operator comes from
        :func:`~fixedpoint_ir.operators.make_operator` (``operator.task_config["sampling"]``, chosen
        by ``benchmarks/quality.py --sweep``), else the reference code's etw = 0.1, nw = 0,
        per-step noise, DDNM chain, full schedule.
        init: initial guess of the states: ``"surrogate"`` (default): the chain run with the
            Gaussian surrogate of ε instead of the network (free: no network call); ``"x_T"`` on
            every row (the published choice); ``"observation"``: √b_j A†y + √(1−b_j) x_T. The
            answer never depends on it, only the number of rounds.
        surrogate: the Gaussian data model behind the surrogate ε, used by ``init="surrogate"``
            and by the triangular solver's linearisation: a
            :class:`~fixedpoint_ir.surrogate.GaussianSurrogate` or (mean, var) of a white one.
            ``None`` (default): the prior's own (``prior.surrogate``; the shipped default prior
            carries a power-law model of its training photos), else white (0, 0.25).
        closed_form: replay F with the vectorised closed form of Proposition 1 (projector operators).
        progress: show a tqdm bar per solver round.
        sigma_y: observation noise level (on the [-1, 1] scale). 0 (default) keeps the σ_y-blind
            DDNM correction; > 0 uses the DDNM+ correction of
            :meth:`~fixedpoint_ir.operators.Operator.noisy_consistency` (no closed form then).
        chain: the update rule replayed by F (:mod:`fixedpoint_ir.chains`): ``"ddnm"`` (default,
            DeqIR's; uses etw / nw), ``"ddrm"`` (Kawar et al. 2022) or ``"diffpir"`` (Zhu et al.
            2023), or an instance (``DDRM(eta=0.85, eta_b=1.0)``, ``DiffPIR(zeta=0.3, lam=1.0)``)
            to set their parameters. Each is strictly lower triangular: every solver reaches the
            chain's own sequential result.
        t_max: start the chain part-way down the schedule: the T steps are the DDIM subsequence of
            the first t_max training steps (t_0 = t_max − t_max // T), and x_T is drawn around the
            observation, √ᾱ A†y + √(1−ᾱ) ε (DDRM's start, DESIGN §11). ``None``: the whole schedule
            from pure noise.
        fix_null_mean: draw x_T and the ξ_j without their component along the image-wide
            constants that A does not see (colorization's global colour; :mod:`~fixedpoint_ir.null_mean`),
            so that the prior and y decide those, not the seed. Given ``x_T`` / ``noise`` are used
            as they are. ``None``: the task's default (on for colorization), else off.
    """

    def __init__(self, prior: Prior, operator=None, solver: str | FixedPointSolver = DEFAULT_SOLVER, *,
                 steps: int = DEFAULT_STEPS, etw: float | None = None, nw: float | None = None,
                 noise: str | None = None,
                 init: str = "surrogate", closed_form: bool = False, progress: bool = False,
                 sigma_y: float = 0.0, surrogate: GaussianSurrogate | tuple[float, float] | None = None,
                 plan_memory: bool = True, chain=None, t_max: int | None = None,
                 fix_null_mean: bool | None = None):
        if not isinstance(prior, Prior):
            raise TypeError(f"prior must be a fixedpoint_ir Prior, got {type(prior).__name__}; "
                            "wrap an nn.Module with ModulePrior")
        # --- per-task sampling defaults (issue 15) ---
        from .operators.tasks import sampling_defaults, sampling_for_steps

        task_sampling = sampling_defaults(getattr(operator, "task_config", None))
        if task_sampling.get("from_steps") and isinstance(steps, int):   # per-T defaults (issue 22)
            task_sampling = sampling_for_steps(task_sampling, steps)
        etw = task_sampling.get("etw", 0.1) if etw is None else etw
        nw = task_sampling.get("nw", 0.0) if nw is None else nw
        noise = task_sampling.get("noise", "per_step") if noise is None else noise
        chain = task_sampling.get("chain", "ddnm") if chain is None else chain
        if t_max is None and task_sampling.get("t_max") is not None and isinstance(steps, int):
            t_max = max(int(task_sampling["t_max"]), steps)   # a task's start, never below T steps
        if t_max is not None:
            if isinstance(t_max, bool) or not isinstance(t_max, int) \
                    or not steps <= t_max <= prior.num_train_steps:
                raise ValueError(f"t_max must be an int in [steps, {prior.num_train_steps}] "
                                 f"(= [{steps}, {prior.num_train_steps}]), got {t_max!r}")
            if operator is None:
                raise ValueError("t_max starts the chain around A†y: it needs an operator")
        self.t_max = t_max
        fix_null_mean = task_sampling.get("fix_null_mean", False) if fix_null_mean is None else fix_null_mean
        if not isinstance(fix_null_mean, bool):
            raise ValueError(f"fix_null_mean must be True or False, got {fix_null_mean!r}")
        if fix_null_mean and operator is None:
            raise ValueError("fix_null_mean removes what the operator does not see: it needs an operator")
        self.fix_null_mean = fix_null_mean
        self._null_mean_cache: dict = {}
        # --- end per-task sampling defaults ---
        if noise not in ("per_step", "shared"):
            raise ValueError(f"noise must be 'per_step' or 'shared', got {noise!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.prior = prior
        self.operator = operator
        self.auto = isinstance(solver, str) and solver == "auto"
        self.solver = get_solver("triangular" if self.auto else solver)
        self.plan_memory = bool(plan_memory)
        self.timesteps = uniform_timesteps(steps, t_max or prior.num_train_steps)
        self.coefficients = StepCoefficients.build(prior.alphas_cumprod, self.timesteps, etw, nw)
        self.steps, self.etw, self.nw, self.noise = steps, etw, nw, noise
        self.init = init
        self.closed_form = closed_form
        if closed_form and operator is not None and not getattr(operator, "is_projector", False):
            raise ValueError("closed_form needs an operator whose A†A is an orthogonal projector")
        self.progress = progress
        if surrogate is None:
            surrogate = getattr(prior, "surrogate", None) or WhiteGaussian()
        try:
            self.surrogate = as_surrogate(surrogate)
        except (TypeError, ValueError) as err:
            raise ValueError(f"surrogate must be a GaussianSurrogate or (mean, var) with finite values "
                             f"and var >= 0, got {surrogate!r} ({err})") from None
        if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)) \
                or not math.isfinite(sigma_y) or sigma_y < 0:
            raise ValueError(f"sigma_y must be a finite non-negative number, got {sigma_y!r}")
        if sigma_y > 0 and closed_form:
            raise ValueError("closed_form only applies to the σ_y-blind correction (sigma_y=0)")
        self.sigma_y = float(sigma_y)
        # --- chain choice (issue 15) ---
        from .chains import DDNM, resolve_chain

        self.chain_choice = resolve_chain(chain)
        if not isinstance(self.chain_choice, DDNM):
            if closed_form:
                raise ValueError(f"closed_form is DDNM's (Proposition 1); chain={self.chain_choice.name!r} "
                                 "has none")
            self.chain_choice.check_operator(operator, self.sigma_y)
        # --- end chain choice ---

    # --- building the map ------------------------------------------------------------------
    def _device_dtype(self, *tensors: Tensor | None, dtype=None, device=None):
        for t in tensors:
            if isinstance(t, Tensor) and t.is_floating_point():
                return t.device, t.dtype
        return (torch.device(device) if device is not None else self.prior.alphas_cumprod.device,
                dtype or torch.float32)

    def chain(self, y: Tensor | None = None, *, x_T: Tensor | None = None,
              image_shape: tuple[int, int, int] | None = None, num_images: int | None = None,
              generator: torch.Generator | None = None, noise: Tensor | None = None,
              dtype: torch.dtype | None = None, device=None,
              x_init: Tensor | None = None, start_step: int | None = None) -> Chain:
        """The chain (and so the map F) for one observation, with x_T and ξ drawn or given.

        Draw order with a generator: x_T first, then ξ, so a seed fixes both. The working dtype and
        device are those of y (or x_T); ``dtype``/``device`` apply when neither is given.

        ``start_step`` k (0 ≤ k < T) starts the chain at the intermediate timestep t = t_k from an
        estimate ``x_init`` (default A†y): x_t = √ᾱ_t x_init + √(1−ᾱ_t) ε, ε drawn where x_T would
        be; the chain then has the T − k rows of steps k … T−1 (``noise`` has T − k rows). A
        given ``x_T`` is taken as that starting state itself (then ``x_init`` must be None).
        """
        coefficients = self.coefficients if start_step is None else self.suffix_coefficients(start_step)
        if x_init is not None and start_step is None:
            raise ValueError("x_init needs start_step (the step index at which the chain starts)")
        if x_init is not None and x_T is not None:
            raise ValueError("give x_init (to be noised to the start step) or x_T, not both")
        if start_step is not None and x_init is None and x_T is None and y is None:
            raise ValueError("start_step without an observation y needs x_init or x_T")
        device, dtype = self._device_dtype(y, x_T, dtype=dtype, device=device)
        if y is not None:
            if self.operator is None:
                raise ValueError("y was given but the sampler has no operator")
            check_finite(y, "y")
            y_image, shape = check_observation(self.operator, y, x_T)
            n = y.shape[0]
        elif self.operator is not None:
            raise ValueError("this sampler has an operator: pass the observation y (use sample() "
                             "on a sampler without operator for unconditional generation)")
        else:
            if x_T is not None:
                shape, n = tuple(x_T.shape[1:]), x_T.shape[0]
            elif image_shape is not None:
                shape, n = tuple(image_shape), num_images or 1
            else:
                raise ValueError("give image_shape (C, H, W) or x_T")
        if len(shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {shape}")
        channels = getattr(self.prior, "channels", None)
        if channels and shape[0] != channels:
            what = "y gives" if y is not None else "the requested"
            raise ValueError(f"{what} {shape[0]}-channel images (shape {shape}), but the prior "
                             f"models {channels}-channel images")
        unseen = self._null_mean_basis(shape, dtype, device)
        if x_T is None:
            x_T = remove_null_mean(torch.randn((n, *shape), generator=generator, dtype=dtype, device=device),
                                   unseen)
            if start_step is None and self.t_max is not None:   # DDRM's start around A†y
                x_T = self._start_state(x_T, y_image, coefficients, (n, *shape))
            elif start_step is not None:
                x_T = self._start_state(x_T, y_image if x_init is None else x_init, coefficients,
                                        (n, *shape))
        else:
            check_finite(x_T, "x_T")
            if x_T.dim() != 4 or tuple(x_T.shape) != (n, *shape):
                raise ValueError(f"x_T must have shape {(n, *shape)}, got {tuple(x_T.shape)}")
        steps = coefficients.num_steps
        if self.plan_memory:   # refuse what cannot fit even sequentially before allocating T states
            from .memory import plan_for

            plan_for(self.prior, rows=steps, images=n, image_shape=shape, dtype=dtype, device=device,
                     mode="sequential")
        ddnm = self.operator is None or getattr(self.chain_choice, "name", "ddnm") == "ddnm"
        if noise is None and ddnm and self.nw == 0:   # never read (c1 = 0): no T-state buffer
            noise = torch.zeros((), dtype=dtype, device=device).expand(steps, *x_T.shape)
        elif noise is None:
            noise = draw_noise(steps, tuple(x_T.shape), self.noise, generator=generator,
                               dtype=dtype, device=device)
            if unseen.shape[0]:   # a shared ξ is one draw expanded: project that one
                noise = remove_null_mean(noise[:1] if self.noise == "shared" else noise, unseen)
                noise = noise.expand(steps, *x_T.shape)
        elif tuple(noise.shape) != (steps, *x_T.shape):
            raise ValueError(f"noise must have shape {(steps, *x_T.shape)}, got {tuple(noise.shape)}")
        correction = projector = None
        if self.operator is not None and getattr(self.chain_choice, "name", "ddnm") != "ddnm":
            return self.chain_choice.build(self.prior, coefficients, x_T, noise, self.operator.to(device),
                                           y, self.sigma_y, self.surrogate)
        if self.operator is not None:
            operator = self.operator.to(device)
            correction = lambda x0, j: operator.data_consistency(x0, y)  # noqa: E731
            if getattr(operator, "is_projector", False):
                projector = (operator.project_range, operator.A_pinv(y))
            if self.sigma_y > 0:  # DDNM+: damped correction, no closed form
                from .operators.noise import make_correction, make_noise_scaling

                correction = make_correction(operator, y, self.sigma_y, coefficients)
                projector = None
                chain = DDNMPlusChain(self.prior, coefficients, x_T, noise, correction, projector,
                                       self.surrogate)
                chain.noise_scaling = make_noise_scaling(operator, self.sigma_y, coefficients)
                return chain
        chain = Chain(self.prior, coefficients, x_T, noise, correction, projector, self.surrogate)
        return chain

    def _null_mean_basis(self, image_shape, dtype, device) -> Tensor:
        """The directions removed from drawn noise: none unless ``fix_null_mean`` (cached per shape)."""
        if not self.fix_null_mean:
            return torch.zeros((0, *image_shape), dtype=dtype, device=device)
        key = (tuple(image_shape), dtype, str(device))
        if key not in self._null_mean_cache:
            self._null_mean_cache[key] = null_mean_basis(self.operator.to(device), tuple(image_shape),
                                                         dtype=dtype, device=device)
        return self._null_mean_cache[key]

    def suffix_coefficients(self, start_step: int) -> StepCoefficients:
        """The step coefficients of rows start_step … T−1 (a chain started at t_{start_step})."""
        if isinstance(start_step, bool) or not isinstance(start_step, int) \
                or not 0 <= start_step < self.steps:
            raise ValueError(f"start_step must be an int in [0, {self.steps}), got {start_step!r}")
        return StepCoefficients.build(self.prior.alphas_cumprod, self.timesteps[start_step:],
                                      self.etw, self.nw)

    @staticmethod
    def _start_state(eps: Tensor, x_init: Tensor, coefficients: StepCoefficients,
                     shape: tuple[int, ...]) -> Tensor:
        """x_t = √ᾱ_t x_init + √(1−ᾱ_t) ε at the first timestep of ``coefficients``."""
        check_finite(x_init, "x_init")
        if tuple(x_init.shape) != tuple(shape):
            raise ValueError(f"x_init must have shape {tuple(shape)}, got {tuple(x_init.shape)}")
        a = float(coefficients.a[0])
        return math.sqrt(a) * x_init.to(eps.dtype) + math.sqrt(1.0 - a) * eps

    def initial_states(self, chain: Chain, y: Tensor | None = None) -> Tensor:
        """The solver's starting point z0 of shape (T, N, C, H, W)."""
        x_T = chain.x_T
        z0 = x_T.unsqueeze(0).expand(chain.num_rows, *x_T.shape).clone()
        if self.init == "surrogate":
            return chain.surrogate_trajectory()
        if self.init == "observation" and y is not None:
            b = chain.coefficients.b.to(x_T.dtype).to(x_T.device).view(-1, 1, 1, 1, 1)
            z0 = b.sqrt() * self.operator.A_pinv(y).unsqueeze(0) + (1 - b).sqrt() * z0
        return z0

    # --- running it --------------------------------------------------------------------------
    def restore(self, y: Tensor, *, x_T: Tensor | None = None, generator: torch.Generator | None = None,
                noise: Tensor | None = None, init: Tensor | None = None,
                callback: Callable[[RoundInfo], None] | None = None,
                x_init: Tensor | None = None, start_step: int | None = None) -> Result:
        """Restore the images behind the observation y (N, *y_shape) with the parallel solver.

        ``start_step`` / ``x_init``: start at an intermediate timestep from an estimate (default
        A†y), solving only the remaining T − start_step rows (see :meth:`chain`).
        """
        chain = self.chain(y, x_T=x_T, generator=generator, noise=noise, x_init=x_init,
                           start_step=start_step)
        return self._auto_or_solve(chain, y, init, callback)

    def sample(self, image_shape: tuple[int, int, int] | None = None, num_images: int = 1, *,
               x_T: Tensor | None = None, generator: torch.Generator | None = None,
               noise: Tensor | None = None, init: Tensor | None = None,
               callback: Callable[[RoundInfo], None] | None = None,
               dtype: torch.dtype | None = None, device=None) -> Result:
        """Unconditional DDIM sampling with the parallel solver."""
        if self.operator is not None:
            raise ValueError("sample() is for samplers without operator; use restore(y)")
        chain = self.chain(x_T=x_T, image_shape=image_shape, num_images=num_images,
                           generator=generator, noise=noise, dtype=dtype, device=device)
        return self._auto_or_solve(chain, None, init, callback)

    def sequential(self, y: Tensor | None = None, *, x_T: Tensor | None = None,
                   image_shape: tuple[int, int, int] | None = None, num_images: int = 1,
                   generator: torch.Generator | None = None, noise: Tensor | None = None,
                   dtype: torch.dtype | None = None, device=None,
                   x_init: Tensor | None = None, start_step: int | None = None) -> Result:
        """The reference sequential sampler (T network calls in a row), same noise conventions."""
        chain = self.chain(y, x_T=x_T, image_shape=image_shape, num_images=num_images,
                           generator=generator, noise=noise, dtype=dtype, device=device,
                           x_init=x_init, start_step=start_step)
        return self._run_sequential(chain)

    # --- solver="auto" and the memory plan (issue 12) -------------------------------------------
    def _memory_mode(self, chain: Chain) -> str:
        return self.solver.memory_mode(chain)

    def _memory_plan(self, chain: Chain, mode: str) -> MemoryPlan | None:
        if not self.plan_memory:
            return None
        from .memory import plan_for

        return plan_for(self.prior, rows=chain.num_rows, images=chain.x_T.shape[0],
                        image_shape=tuple(chain.x_T.shape[1:]), dtype=chain.x_T.dtype,
                        device=chain.x_T.device, mode=mode)

    def choose(self, chain: Chain) -> Choice:
        """Parallel (the triangular solver) or sequential for this chain: see :mod:`fixedpoint_ir.cost`."""
        from .cost import choose

        plan = self._memory_plan(chain, self._memory_mode(chain))
        ranks = getattr(self.prior, "world_size", 1)
        if ranks > 1:   # timings differ between ranks, and every rank must take the same path
            return Choice("parallel", math.nan, math.nan, f"distributed over {ranks} ranks (not timed)")
        return choose(self.prior, self.solver, steps=chain.num_rows, images=chain.x_T.shape[0],
                      image_shape=tuple(chain.x_T.shape[1:]), dtype=chain.x_T.dtype,
                      device=chain.x_T.device, max_inputs=None if plan is None else plan.max_batch)

    def _auto_or_solve(self, chain: Chain, y, init, callback) -> Result:
        if not self.auto:
            return self._solve(chain, y, init, callback)
        try:
            choice = self.choose(chain)
        except MemoryPlanError:   # the parallel states do not fit: sequential keeps fewest
            choice = Choice("sequential", math.inf, math.nan, "the parallel states do not fit in memory")
        result = self._run_sequential(chain) if choice.mode == "sequential" else \
            self._solve(chain, y, init, callback)
        result.choice = choice
        return result

    def _run_sequential(self, chain: Chain) -> Result:
        plan = self._memory_plan(chain, "sequential")
        bar = progress_bar(chain.num_rows, "sequential steps", "step") if self.progress else None
        start = time.perf_counter()
        try:
            with _max_batch(self.prior, plan), torch.no_grad():
                states = chain.sequential(None if bar is None else lambda j: bar.update(1))
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        if not torch.isfinite(states).all():   # the parallel path raises on this too (never a grey image)
            bad = [j for j in range(states.shape[0]) if not torch.isfinite(states[j]).all()]
            report = SolverReport(states, chain.num_rows, [math.nan], Status.DIVERGED, {"first_bad_row": bad[0]})
            raise SolverDivergedError(
                f"the sequential chain produced NaN/Inf from step {bad[0]} of {chain.num_rows} on "
                "(the prior returned non-finite values): no image is returned. Check the prior on "
                "inputs of this size and dtype (float16/bfloat16 can overflow; try float32).", report)
        if chain.num_rows:   # calibrates solver="auto"'s next prediction at this size (cost.py)
            from .cost import record_sequential_call

            record_sequential_call(self.prior, tuple(chain.x_T.shape[1:]), chain.x_T.shape[0],
                                   chain.timings["network"] / chain.num_rows, dtype=chain.x_T.dtype,
                                   device=chain.x_T.device)
        return Result(states[-1], states, chain.num_rows, chain.nfe, seconds, Status.CONVERGED,
                      memory=plan)

    def fixed_point_map(self, chain: Chain) -> Callable[[Tensor], Tensor]:
        """F as a callable on z (closed form or replay), exposing ``rows`` for structured solvers."""
        if not self.closed_form:
            return chain
        return ClosedFormMap(chain)

    def _solve(self, chain: Chain, y: Tensor | None, init: Tensor | None,
               callback: Callable[[RoundInfo], None] | None) -> Result:
        if init is None:
            z0 = self.initial_states(chain, y)
        else:
            check_finite(init, "init")
            if tuple(init.shape) != chain.state_shape:
                raise ValueError(f"init must have shape {chain.state_shape}, got {tuple(init.shape)}")
            z0 = init.to(chain.x_T.dtype)
        f = self.fixed_point_map(chain)
        warn_if_tf32(chain.x_T.device, self.solver.tol)
        bar = progress_bar(self.solver.round_limit(z0), "solver rounds", "round") if self.progress else None

        def on_round(info: RoundInfo) -> None:
            if bar is not None:
                bar.set_postfix(round_postfix(info, chain.num_rows), refresh=False)
                bar.update(1)
            if callback is not None:
                callback(info)

        plan = self._memory_plan(chain, self._memory_mode(chain))
        split = RoundTimes(chain)
        start = time.perf_counter()
        try:
            with _max_batch(self.prior, plan), torch.no_grad():
                report = self.solver.solve(f, z0, split.wrap(on_round))
            if bar is not None and report.image_error is not None:   # what was compared with tol
                bar.set_postfix({"image error": f"{report.image_error:.1e}", "tol": f"{self.solver.tol:g}"},
                                refresh=False)
        finally:
            if bar is not None:
                bar.total = bar.n  # a solver that stops early ends the bar at 100 %
                bar.close()
        seconds = time.perf_counter() - start
        report.round_times = split.rounds
        if report.status is Status.DIVERGED:
            raise SolverDivergedError(
                f"{type(self.solver).__name__} diverged after {report.rounds} rounds "
                f"(residuals {', '.join(f'{r:.3g}' for r in report.residuals[-3:])}); "
                + divergence_hint(self.solver, report), report)
        if report.status is Status.MAX_ROUNDS:
            last = report.residuals[-1] if report.residuals else math.nan
            warnings.warn(f"{type(self.solver).__name__} stopped after {report.rounds} rounds without "
                          f"converging (relative residual {last:.3g} > tol {self.solver.tol:g})",
                          RuntimeWarning, stacklevel=3)
        elif report.status is Status.STOPPED:
            estimate = report.image_error
            how = "" if estimate is None else f" (estimated distance {estimate:.2g})"
            warnings.warn(f"{type(self.solver).__name__} stopped after {report.rounds} rounds on its own "
                          f"rule, but the image is not certified within tol {self.solver.tol:g} of the "
                          f"sequential chain{how}; the 'triangular' solver certifies its stops, and picard, "
                          "anderson and broyden with tol=0 reach the exact answer in at most T rounds",
                          RuntimeWarning, stacklevel=3)
        states = report.solution
        return Result(states[-1], states, report.rounds, chain.nfe, seconds, report.status,
                      list(report.residuals), report, memory=plan)


@contextmanager
def _max_batch(prior: Prior, plan: MemoryPlan | None):
    """The prior's max_batch lowered to the memory plan's for one run."""
    if plan is None or plan.max_batch == prior.max_batch:
        yield
        return
    saved = prior.max_batch
    prior.max_batch = plan.max_batch
    try:
        yield
    finally:
        prior.max_batch = saved


