"""The parallel-in-time sampler: build F for (prior, operator, y, x_T, noise) and hand it to a solver."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .chain import Chain, draw_noise
from .priors.base import Prior
from .schedule import StepCoefficients, uniform_timesteps
from .solver import FixedPointSolver, RoundInfo, SolverDivergedError, SolverReport, Status, get_solver
from .surrogate import GaussianSurrogate, WhiteGaussian, as_surrogate

__all__ = ["Sampler", "Result"]

INITS = ("x_T", "observation", "surrogate")


@dataclass
class Result:
    """A restoration: the image (N, C, H, W), all states (T, N, C, H, W) and how it was obtained.

    ``nfe`` counts network evaluations per image; ``rounds`` is the parallel depth (calls of F, or
    T for the sequential sampler); ``seconds`` is wall-clock.
    """

    image: Tensor
    states: Tensor
    rounds: int
    nfe: int
    seconds: float
    status: Status
    residuals: list[float] = field(default_factory=list)
    report: SolverReport | None = None

    @property
    def converged(self) -> bool:
        return self.status is Status.CONVERGED

    def summary(self) -> str:
        return (f"{self.status.value}: {self.rounds} rounds, {self.nfe} network evaluations per image, "
                f"{self.seconds:.2f} s")


def _check_finite(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")


TF32_TOL = 1e-2


def warn_if_tf32(device: torch.device, tol: float) -> None:
    """Warn when TF32 kernels would make the parallel answer differ from the sequential one.

    TF32 rounds convolution and matrix-product inputs to 10 mantissa bits (~1e-3 relative): a
    batch of T states and T single states then go through differently rounded kernels, and the
    fixed point of F differs from the sequential chain by about that much, whatever the solver
    (measured on an H100: Picard after all T rounds stayed above 1e-3 on 2 of 9 problems). Below
    ``TF32_TOL`` the tolerance would promise more than the arithmetic gives.
    """
    if torch.device(device).type != "cuda" or not tol or tol >= TF32_TOL:
        return
    if torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32:
        warnings.warn(
            f"TF32 is enabled for CUDA convolutions or matrix products: batched and one-at-a-time "
            f"network calls differ by ~1e-3, so the parallel result can differ from the sequential "
            f"chain by more than tol={tol:g}. For agreement to tol, set "
            "torch.backends.cudnn.allow_tf32 = False and torch.backends.cuda.matmul.allow_tf32 = False.",
            RuntimeWarning, stacklevel=4)


class Sampler:
    """DDIM / DDNM sampling as one fixed-point solve (DeqIR, Cao et al. CVPR 2024).

    Args:
        prior: the ε-network (:class:`~fixedpoint_ir.priors.Prior`).
        operator: the degradation (``None``: unconditional DDIM).
        solver: a :class:`~fixedpoint_ir.solver.FixedPointSolver` or a registered name
            (``"triangular"`` — the default, see ``backends/triangular.py`` —, ``"picard"``,
            ``"anderson"``, ``"broyden"``, ``"torchdeq"``).
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
    """

    def __init__(self, prior: Prior, operator=None, solver: str | FixedPointSolver = "triangular", *,
                 steps: int = 20, etw: float | None = None, nw: float | None = None,
                 noise: str | None = None,
                 init: str = "surrogate", closed_form: bool = False, progress: bool = False,
                 sigma_y: float = 0.0, surrogate: GaussianSurrogate | tuple[float, float] | None = None,
                 chain=None, t_max: int | None = None):
        if not isinstance(prior, Prior):
            raise TypeError(f"prior must be a fixedpoint_ir Prior, got {type(prior).__name__}; "
                            "wrap an nn.Module with ModulePrior")
        # --- per-task sampling defaults (issue 15) ---
        task_sampling = dict((getattr(operator, "task_config", None) or {}).get("sampling") or {})
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
        # --- end per-task sampling defaults ---
        if noise not in ("per_step", "shared"):
            raise ValueError(f"noise must be 'per_step' or 'shared', got {noise!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.prior = prior
        self.operator = operator
        self.solver = get_solver(solver)
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
            _check_finite(y, "y")
            if y.dim() < 2:
                raise ValueError(f"y must have a leading batch axis, got shape {tuple(y.shape)}")
            y_image = self.operator.A_pinv(y)
            shape = tuple(x_T.shape[1:]) if x_T is not None else tuple(y_image.shape[1:])
            self.operator.check_observation(y, shape)
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
        if x_T is None:
            x_T = torch.randn((n, *shape), generator=generator, dtype=dtype, device=device)
            if start_step is None and self.t_max is not None:   # DDRM's start around A†y
                x_T = self._start_state(x_T, y_image, coefficients, (n, *shape))
            elif start_step is not None:
                x_T = self._start_state(x_T, y_image if x_init is None else x_init, coefficients,
                                        (n, *shape))
        else:
            _check_finite(x_T, "x_T")
            if x_T.dim() != 4 or tuple(x_T.shape) != (n, *shape):
                raise ValueError(f"x_T must have shape {(n, *shape)}, got {tuple(x_T.shape)}")
        steps = coefficients.num_steps
        if noise is None:
            noise = draw_noise(steps, tuple(x_T.shape), self.noise, generator=generator,
                               dtype=dtype, device=device)
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
                chain = _DDNMPlusChain(self.prior, coefficients, x_T, noise, correction, projector,
                                       self.surrogate)
                chain.noise_scaling = make_noise_scaling(operator, self.sigma_y, coefficients)
                return chain
        chain = Chain(self.prior, coefficients, x_T, noise, correction, projector, self.surrogate)
        return chain

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
        _check_finite(x_init, "x_init")
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
        return self._solve(chain, y, init, callback)

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
        return self._solve(chain, None, init, callback)

    def sequential(self, y: Tensor | None = None, *, x_T: Tensor | None = None,
                   image_shape: tuple[int, int, int] | None = None, num_images: int = 1,
                   generator: torch.Generator | None = None, noise: Tensor | None = None,
                   dtype: torch.dtype | None = None, device=None,
                   x_init: Tensor | None = None, start_step: int | None = None) -> Result:
        """The reference sequential sampler (T network calls in a row), same noise conventions."""
        chain = self.chain(y, x_T=x_T, image_shape=image_shape, num_images=num_images,
                           generator=generator, noise=noise, dtype=dtype, device=device,
                           x_init=x_init, start_step=start_step)
        start = time.perf_counter()
        with torch.no_grad():
            states = chain.sequential()
        return Result(states[-1], states, chain.num_rows, chain.nfe, time.perf_counter() - start,
                      Status.CONVERGED)

    def fixed_point_map(self, chain: Chain) -> Callable[[Tensor], Tensor]:
        """F as a callable on z (closed form or replay), exposing ``rows`` for structured solvers."""
        if not self.closed_form:
            return chain
        return _ClosedFormMap(chain)

    def _solve(self, chain: Chain, y: Tensor | None, init: Tensor | None,
               callback: Callable[[RoundInfo], None] | None) -> Result:
        if init is None:
            z0 = self.initial_states(chain, y)
        else:
            _check_finite(init, "init")
            if tuple(init.shape) != chain.state_shape:
                raise ValueError(f"init must have shape {chain.state_shape}, got {tuple(init.shape)}")
            z0 = init.to(chain.x_T.dtype)
        f = self.fixed_point_map(chain)
        warn_if_tf32(chain.x_T.device, self.solver.tol)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.solver.round_limit(z0), desc="solver rounds", unit="round")

        def on_round(info: RoundInfo) -> None:
            if bar is not None:
                bar.set_postfix(residual=f"{info.residual:.2e}", refresh=False)
                bar.update(1)
            if callback is not None:
                callback(info)

        start = time.perf_counter()
        try:
            with torch.no_grad():
                report = self.solver.solve(f, z0, on_round)
        finally:
            if bar is not None:
                bar.total = bar.n  # a solver that stops early ends the bar at 100 %
                bar.close()
        seconds = time.perf_counter() - start
        if report.status is Status.DIVERGED:
            raise SolverDivergedError(
                f"{type(self.solver).__name__} diverged after {report.rounds} rounds "
                f"(residuals {', '.join(f'{r:.3g}' for r in report.residuals[-3:])}); "
                "try solver='picard', which is exact after T rounds", report)
        if report.status is Status.MAX_ROUNDS:
            last = report.residuals[-1] if report.residuals else math.nan
            warnings.warn(f"{type(self.solver).__name__} stopped after {report.rounds} rounds without "
                          f"converging (relative residual {last:.3g} > tol {self.solver.tol:g})",
                          RuntimeWarning, stacklevel=3)
        states = report.solution
        return Result(states[-1], states, report.rounds, chain.nfe, seconds, report.status,
                      list(report.residuals), report)


class _DDNMPlusChain(Chain):
    """The chain for σ_y > 0 (DDNM+): the x0 correction is the damped one (``correction``) and
    the step's noise term c2·e + c1·ξ is rescaled in the range space by ``noise_scaling(v, j)``
    (:meth:`~fixedpoint_ir.operators.Operator.noisy_noise_scaling`). Still strictly lower
    triangular, so the parallel solve reaches the same sequential answer."""

    noise_scaling: Callable[[Tensor, int], Tensor]

    def step(self, j: int, x: Tensor, e: Tensor) -> Tensor:
        x0 = self.correction((x - self._sqrt_1ma[j] * e) / self._sqrt_a[j], j)
        w = self._c2[j] * e
        if self._c1[j]:
            w = w + self._c1[j] * self.noise[j]
        return self._sqrt_b[j] * x0 + self.noise_scaling(w, j)


class _ClosedFormMap:
    """F through the closed form of Proposition 1; partial rows and the step-level interface of
    structure-aware solvers (``step``, ``eps_at``, …) are the chain's own."""

    def __init__(self, chain: Chain):
        self.chain = chain
        self.num_rows = chain.num_rows

    def __call__(self, z: Tensor) -> Tensor:
        return self.chain.closed_form(self.chain.eps(z))

    def rows(self, z: Tensor, start: int, stop: int) -> Tensor:
        return self.chain.rows(z, start, stop)

    def __getattr__(self, name):
        return getattr(self.chain, name)
