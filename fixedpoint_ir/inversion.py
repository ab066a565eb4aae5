"""Gradients with respect to the initial noise x_T, and optimising x_T (DEQ inversion, DESIGN §5).

The restored image is the last row of the fixed point z* = F(z*; x_T) of the chain map
(DESIGN §3). For a loss L(x_0*) three gradients ∂L/∂x_T are offered:

``implicit`` (exact, memory bounded)
    The implicit function theorem: with J = ∂F/∂z at z* and g = ∂L/∂z* (non-zero on the last
    row only), the adjoint w solves w = g + w J, and ∂L/∂x_T = w ∂F/∂x_T. z* comes from the
    sampler's own solver (no graph); w J is a vector–Jacobian product: one backward pass through
    the cheap replay (the update rule with e held fixed), then ONE batched network VJP over the
    state rows (chunked by ``chunk`` or the prior's ``max_batch``, the network is re-run per chunk,
    so no network activations are kept between products). J is strictly lower triangular, so the
    adjoint system is strictly upper triangular: it is handed to any
    :class:`~fixedpoint_ir.solver.FixedPointSolver` with its rows reversed (then it is lower
    triangular like F, and Picard is exact after T rounds), or solved by back-substitution
    (``adjoint="sequential"``, the default: T − 1 single-row VJPs, the same result as T Picard
    rounds of T − 1 rows each). Memory: a few (T, N, C, H, W)
    tensors and one chunk of network activations — it does not grow with T beyond the batch of T
    states.
``one_step`` (the published "phantom" gradient)
    Differentiate k (``phantom_steps``, 1 by default) damped applications z ← (1 − τ) z + τ F(z)
    at the detached z*, as in the DeqIR code (τ = 0.5, k = 5 there). With k = 1, x_T enters only
    through row 0 (the direct term √(b_j/a_0)(I − P)x_T and e_0 = ε(x_T, t_0)): the network's
    Jacobian along the chain is ignored. With τ = 1 and k ≥ T it equals the exact gradient (J is
    nilpotent); k > 1 keeps k network graphs of T states, so its memory grows with k·T.
``unrolled`` (the reference)
    Backpropagation through the sequential chain: T network graphs kept, memory grows with T.

:func:`optimize_noise` runs a first-order optimiser on x_T with any of them, with a loss
history, the best x_T, a stopping rule and a progress bar. A loss whose gradient is identically
zero for the sampler (the measurement loss ‖A x_0 − y‖²: the chain enforces A x_0 = y) is refused
up front when it is a :class:`~fixedpoint_ir.losses.MeasurementLoss`, and detected numerically on
the first step otherwise (:class:`ZeroGradientError`).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from einops import rearrange, repeat
from torch import Tensor

from .chain import Chain, draw_noise
from .losses import Loss, as_loss
from .solver import FixedPointSolver, SolverReport, Status, get_solver

__all__ = [
    "GRADIENTS", "NoiseGradient", "NoiseGradientResult", "noise_gradient", "optimize_noise",
    "InversionResult", "ZeroGradientError", "gradient_is_zero",
]

GRADIENTS = ("implicit", "one_step", "unrolled")
ADJOINT_SEQUENTIAL = "sequential"


class ZeroGradientError(ValueError):
    """The loss has an (identically) zero gradient with respect to x_T for this sampler."""


@dataclass
class NoiseGradientResult:
    """One evaluation of L and ∂L/∂x_T.

    loss: L at the restored image x_0* (for ``one_step`` too: the loss of the actual restoration);
    grad: ∂L/∂x_T (the shape of x_T); image, states: x_0* and z* (detached); image_grad_norm:
    ‖∂L/∂x_0‖, the scale the zero-gradient check compares ‖grad‖ with; nfe: network evaluations
    per image (forward solve + re-evaluations); vjps: network vector–Jacobian products per image;
    rounds: forward solver rounds (T for ``unrolled``); adjoint_rounds: rounds of the adjoint
    solve (``implicit``); fixed_point_residual: ‖F(z*) − z*‖ / ‖F(z*)‖ at the z* the gradient
    assumes (``implicit``, ``one_step``).
    """

    loss: float
    grad: Tensor
    image: Tensor
    states: Tensor
    image_grad_norm: float
    mode: str
    seconds: float
    nfe: int
    vjps: int = 0
    rounds: int = 0
    adjoint_rounds: int = 0
    fixed_point_residual: float | None = None
    adjoint_report: SolverReport | None = None

    @property
    def grad_norm(self) -> float:
        return float(self.grad.norm())


def gradient_is_zero(result: NoiseGradientResult, rtol: float | None = None) -> bool:
    """Whether ‖∂L/∂x_T‖ is zero to rounding, relative to ‖∂L/∂x_0‖.

    x_T (unit variance) and x_0 (in [-1, 1]) have comparable scales and the chain's Jacobian
    ∂x_0/∂x_T is of order one along every direction it does not annihilate, so a ratio
    ‖∂L/∂x_T‖ / ‖∂L/∂x_0‖ at the level of rounding error (default ``rtol`` = 10⁴ · machine
    epsilon of the dtype) means the loss only sees directions the chain fixes. A loss that is
    stationary in the image (‖∂L/∂x_0‖ = 0) counts as zero too.
    """
    if rtol is None:
        rtol = 1e4 * torch.finfo(result.grad.dtype).eps
    gnorm = result.grad_norm
    if not math.isfinite(gnorm):
        return False
    if result.image_grad_norm == 0.0:
        return True
    return gnorm <= rtol * result.image_grad_norm


def _zero_gradient_message(result: NoiseGradientResult) -> str:
    if result.image_grad_norm == 0.0:
        return ("the loss has a zero gradient with respect to the restored image at the first "
                "iterate (it is stationary there), so ∂L/∂x_T = 0 and the optimiser cannot move. "
                "A loss of A x_0 such as the measurement loss ‖A x_0 − y‖² is exactly 0 at every "
                "restoration of a chain with the range/null-space correction (A x_0 = y): use a "
                "loss on the null space (a reference image, a restoration network's output, a "
                "colour reference).")
    return (f"∂L/∂x_T is zero to rounding (‖∂L/∂x_T‖ = {result.grad_norm:.3g} while "
            f"‖∂L/∂x_0‖ = {result.image_grad_norm:.3g}): the loss only depends on the part of the "
            "image the chain already fixes. With an operator, every step applies the range/"
            "null-space correction x0' = A†y + (I − A†A) x0, so A x_0 = y exactly and a loss of "
            "A x_0 (such as the measurement loss ‖A x_0 − y‖²) is constant in x_T. Use a loss "
            "on the null space (a reference image, a restoration network's output, a colour "
            "reference) or pass on_zero_gradient='warn' to continue anyway.")


# --- the linearisation of F at z* ---------------------------------------------------------------

class _Linearization:
    """Vector–Jacobian products of F(z; x_T) at (z*, x_T) with bounded memory.

    F = replay(e(z), x_T) with e_j = ε(u_j, t_j), u_0 = x_T, u_j = z_{j−1}. The replay graph (the
    update rule with e as a leaf) is kept — a few state tensors per row — while the network is
    re-run per chunk of rows for every product, so no network activations outlive a chunk.
    """

    def __init__(self, chain: Chain, z: Tensor, chunk: int | None):
        self.chain, self.z = chain, z
        self.rows = chain.num_rows
        with torch.no_grad():
            e = chain.eps(z)
        with torch.enable_grad():
            self.e_leaf = e.detach().requires_grad_()
            self.out = chain.replay(self.e_leaf)
        fz = self.out.detach()
        self.fixed_point_residual = float((fz - z).norm() / (fz.norm() + 1e-30))
        self.timesteps = chain.coefficients.timesteps.to(z.device)
        self.chunk = chunk or chain.prior.max_batch or self.rows
        self.vjps = 0

    def replay_vjp(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """(c, d) with c_j = Σ_i w_i ∂F_i/∂e_j and d = Σ_i w_i ∂F_i/∂x_T (direct path only)."""
        with torch.enable_grad():
            c, d = torch.autograd.grad(self.out, (self.e_leaf, self.chain.x_T), w,
                                       retain_graph=True, allow_unused=True)
        c = torch.zeros_like(self.e_leaf) if c is None else c
        d = torch.zeros_like(self.chain.x_T) if d is None else d
        return c, d

    def network_vjp(self, c: Tensor, start: int, stop: int) -> Tensor:
        """Rows [start, stop) of c_j ∂ε(u_j, t_j)/∂u_j (row j's input is x_T for j = 0, else z_{j−1})."""
        out = []
        for s in range(start, stop, self.chunk):
            t_stop = min(s + self.chunk, stop)
            with torch.no_grad():
                u = self.chain.network_inputs(self.z, s, t_stop)
            with torch.enable_grad():
                u = u.detach().requires_grad_()
                rows, n = u.shape[0], u.shape[1]
                t = repeat(self.timesteps[s:t_stop], "t -> (t n)", n=n)
                e = self.chain.prior.eps(rearrange(u, "t n c h w -> (t n) c h w"), t)
                (du,) = torch.autograd.grad(e, u, rearrange(c[s:t_stop], "t n c h w -> (t n) c h w"),
                                            allow_unused=True)
            out.append(torch.zeros_like(u) if du is None else du.detach())
            self.vjps += rows
            del e, u
        return torch.cat(out)

    def grad_x_T(self, w: Tensor) -> Tensor:
        """w ∂F/∂x_T: the direct path plus the row-0 network input."""
        c, d = self.replay_vjp(w)
        return d + self.network_vjp(c, 0, 1)[0]


class _AdjointMap:
    """The adjoint map w ↦ g + w ∂F/∂z, with its rows in reversed order.

    Row m of w ∂F/∂z is c_{m+1} ∂ε_{m+1}/∂u (u_{m+1} = z_m) and depends on rows ≥ m + 1 of w
    only: strictly upper triangular. Reversing the rows (row r holds original row T − 1 − r) makes
    it strictly lower triangular like F itself, so the solver backends — and their assumptions
    (Picard exact after T rounds, exact prefixes) — apply unchanged. ``rows(w, start, stop)``
    gives rows [start, stop) of the map (exact whatever the other rows hold) for structured solvers.
    """

    def __init__(self, lin: _Linearization, g: Tensor):
        self.lin, self.g = lin, g
        self.num_rows = lin.rows

    def original_rows(self, w: Tensor, lo: int, hi: int) -> Tensor:
        """Rows [lo, hi) of g + w ∂F/∂z in the original order (w in the original order)."""
        T = self.num_rows
        c, _ = self.lin.replay_vjp(w)
        out = self.g[lo:hi].clone()
        a, b = lo + 1, min(hi + 1, T)
        if a < b:
            out[: b - a] += self.lin.network_vjp(c, a, b)
        return out

    def __call__(self, w_rev: Tensor) -> Tensor:
        return self.original_rows(w_rev.flip(0), 0, self.num_rows).flip(0)

    def rows(self, w_rev: Tensor, start: int, stop: int) -> Tensor:
        T = self.num_rows
        return self.original_rows(w_rev.flip(0), T - stop, T - start).flip(0)


# --- the gradient -----------------------------------------------------------------------------

class NoiseGradient:
    """L(x_0*(x_T)) and ∂L/∂x_T for one sampler, observation, noise ξ and loss.

    Args:
        sampler: a :class:`~fixedpoint_ir.sampler.Sampler` (its solver finds z*).
        y: the observation (None for a sampler without operator).
        loss: a :class:`~fixedpoint_ir.losses.Loss` or any callable image → scalar tensor; it is
            bound to (sampler, y) once.
        noise: the fresh noises ξ_j (T, N, C, H, W), held fixed; drawn on the first call (with
            ``generator``) when not given. Irrelevant when the sampler's nw = 0.
        mode: ``"implicit"``, ``"one_step"`` or ``"unrolled"``.
        tau, phantom_steps: the damping τ and the number k of damped applications of F of the
            ``one_step`` gradient.
        adjoint: how ``implicit`` solves the adjoint system: ``"sequential"`` (default:
            back-substitution, row T − 2 down to row 0, T − 1 single-image network VJPs in all,
            exact), or a solver name / :class:`~fixedpoint_ir.solver.FixedPointSolver` applied to
            the row-reversed adjoint map (``"picard"``: exact after T rounds of T − 1 VJPs each —
            the same answer and the same parallel depth for T times the work and a chunk of
            network activations; a backend only pays off when it stops early on ``adjoint_tol``).
        adjoint_tol: tolerance of a named adjoint solver (0: run until exact). The adjoint system
            is solved for g / ‖g‖, so the tolerance is relative whatever the loss's scale.
        chunk: most state rows per network VJP (default: the prior's ``max_batch``, else all).
    """

    def __init__(self, sampler, y: Tensor | None = None, loss: Loss | Callable | None = None, *,
                 noise: Tensor | None = None, generator: torch.Generator | None = None,
                 mode: str = "implicit", tau: float = 0.5, phantom_steps: int = 1,
                 adjoint: str | FixedPointSolver = "sequential", adjoint_tol: float = 0.0,
                 chunk: int | None = None):
        if mode not in GRADIENTS:
            raise ValueError(f"gradient mode must be one of {GRADIENTS}, got {mode!r}")
        if loss is None:
            raise ValueError("give a loss: a fixedpoint_ir.losses.Loss or a callable image -> scalar")
        if not (isinstance(tau, (int, float)) and 0.0 < float(tau) <= 1.0):
            raise ValueError(f"tau must lie in (0, 1], got {tau!r}")
        if isinstance(phantom_steps, bool) or not isinstance(phantom_steps, int) or phantom_steps < 1:
            raise ValueError(f"phantom_steps must be a positive int, got {phantom_steps!r}")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk must be a positive int or None, got {chunk!r}")
        self.sampler, self.y = sampler, y
        self.loss = as_loss(loss).bind(sampler, y)
        self.noise, self.generator = noise, generator
        self.mode, self.tau, self.phantom_steps = mode, float(tau), phantom_steps
        self.chunk = chunk
        if isinstance(adjoint, str) and adjoint == ADJOINT_SEQUENTIAL:
            self.adjoint: FixedPointSolver | None = None
        elif isinstance(adjoint, str):
            self.adjoint = get_solver(adjoint, tol=adjoint_tol)
        else:
            self.adjoint = get_solver(adjoint)

    # helpers
    def _noise_for(self, x_T: Tensor) -> Tensor:
        if self.noise is None:
            self.noise = draw_noise(self.sampler.steps, tuple(x_T.shape), self.sampler.noise,
                                    generator=self.generator, dtype=x_T.dtype, device=x_T.device)
        return self.noise

    def _chain(self, x_T: Tensor) -> Chain:
        return self.sampler.chain(self.y, x_T=x_T, noise=self._noise_for(x_T))

    def _solve(self, x_T: Tensor, init: Tensor | None):
        noise = self._noise_for(x_T)
        if self.sampler.operator is None:
            return self.sampler.sample(x_T=x_T, noise=noise, init=init)
        return self.sampler.restore(self.y, x_T=x_T, noise=noise, init=init)

    def _loss(self, image: Tensor) -> Tensor:
        value = self.loss(image)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise TypeError("the loss must return a scalar tensor, got "
                            f"{type(value).__name__ if not isinstance(value, Tensor) else tuple(value.shape)}")
        if not value.requires_grad:
            raise TypeError("the loss returned a tensor without a gradient: it must be differentiable "
                            "in the image (no .item(), .detach(), numpy or torch.no_grad inside)")
        return value.reshape(())

    def _loss_and_image_grad(self, image: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            img = image.detach().requires_grad_()
            value = self._loss(img)
            (g,) = torch.autograd.grad(value, img, allow_unused=True)
        return value.detach(), (torch.zeros_like(img) if g is None else g)

    def forward(self, x_T: Tensor, init: Tensor | None = None) -> tuple[float, Tensor, Tensor]:
        """(L, x_0*, z*) without a gradient (the sampler's solver, or the sequential chain for
        ``unrolled``)."""
        x_T = x_T.detach()
        if self.mode == "unrolled":
            with torch.no_grad():
                states = self._chain(x_T).sequential()
        else:
            states = self._solve(x_T, init).states
        with torch.enable_grad():
            value = self._loss(states[-1].detach().requires_grad_())
        return float(value.detach()), states[-1].detach(), states.detach()

    def __call__(self, x_T: Tensor, init: Tensor | None = None) -> NoiseGradientResult:
        """L and ∂L/∂x_T at x_T; ``init`` warm-starts the forward solve (e.g. the previous z*)."""
        if not isinstance(x_T, Tensor) or x_T.dim() != 4:
            raise ValueError("x_T must be a tensor of shape (N, C, H, W)")
        start = time.perf_counter()
        x_T = x_T.detach()
        if self.mode == "unrolled":
            result = self._unrolled(x_T)
        else:
            forward = self._solve(x_T, init)
            z = forward.states.detach()
            if self.mode == "implicit":
                result = self._implicit(x_T, z)
            else:
                result = self._one_step(x_T, z)
            result.rounds = forward.rounds
            result.nfe += forward.nfe
        result.seconds = time.perf_counter() - start
        return result

    # the three modes
    def _implicit(self, x_T: Tensor, z: Tensor) -> NoiseGradientResult:
        leaf = x_T.clone().requires_grad_()
        chain = self._chain(leaf)
        lin = _Linearization(chain, z, self.chunk)
        value, g_image = self._loss_and_image_grad(z[-1])
        g = torch.zeros_like(z)
        g[-1] = g_image
        scale = float(g.norm())
        adjoint_rounds, report = 0, None
        if scale == 0.0:
            grad = torch.zeros_like(x_T)
        else:
            adj = _AdjointMap(lin, g / scale)
            if self.adjoint is None:
                w = adj.g.clone()
                for m in range(lin.rows - 2, -1, -1):   # back-substitution, last row first
                    w[m] = adj.original_rows(w, m, m + 1)[0]
                adjoint_rounds = lin.rows - 1
            else:
                with torch.no_grad():
                    report = self.adjoint.solve(adj, adj.g.flip(0))
                adjoint_rounds = report.rounds
                if report.status is not Status.CONVERGED:
                    warnings.warn(f"the adjoint solve stopped with status {report.status.value} after "
                                  f"{report.rounds} rounds: the implicit gradient is approximate "
                                  "(use adjoint='sequential', or 'picard' with adjoint_tol=0: both exact)",
                                  RuntimeWarning, stacklevel=3)
                w = report.solution.flip(0)
            grad = lin.grad_x_T(w) * scale
        allowed = max(1e-4, 10.0 * float(getattr(self.sampler.solver, "tol", 0.0) or 0.0))
        if lin.fixed_point_residual > allowed:
            warnings.warn(f"z* is not a fixed point of F (relative residual "
                          f"{lin.fixed_point_residual:.2g}): the implicit gradient assumes one; let "
                          "the sampler's solver converge (e.g. Picard, exact after T rounds)",
                          RuntimeWarning, stacklevel=3)
        return NoiseGradientResult(float(value), grad.detach(), z[-1], z, float(g_image.norm()),
                                   "implicit", 0.0, chain.nfe, lin.vjps, 0, adjoint_rounds,
                                   lin.fixed_point_residual, report)

    def _one_step(self, x_T: Tensor, z: Tensor) -> NoiseGradientResult:
        leaf = x_T.clone().requires_grad_()
        chain = self._chain(leaf)
        T, tau = chain.num_rows, self.tau
        value, g_image = self._loss_and_image_grad(z[-1])
        with torch.no_grad():
            e_rest = chain.eps(z, 1, T) if T > 1 else z[:0]
        with torch.enable_grad():
            e0 = chain.eps(z, 0, 1)                      # u_0 = x_T: the only network input on x_T
            fz = chain.replay(torch.cat([e0, e_rest]))
            zk = (1.0 - tau) * z + tau * fz
            for _ in range(self.phantom_steps - 1):
                zk = (1.0 - tau) * zk + tau * chain(zk)
            (grad,) = torch.autograd.grad(self._loss(zk[-1]), leaf, allow_unused=True)
        residual = float((fz.detach() - z).norm() / (fz.detach().norm() + 1e-30))
        grad = torch.zeros_like(x_T) if grad is None else grad
        return NoiseGradientResult(float(value), grad.detach(), z[-1], z, float(g_image.norm()),
                                   "one_step", 0.0, chain.nfe, 1 + T * (self.phantom_steps - 1),
                                   fixed_point_residual=residual)

    def _unrolled(self, x_T: Tensor) -> NoiseGradientResult:
        leaf = x_T.clone().requires_grad_()
        chain = self._chain(leaf)
        with torch.enable_grad():
            states = chain.sequential()
            image = states[-1]
            value = self._loss(image)
            grad, g_image = torch.autograd.grad(value, (leaf, image), allow_unused=True)
        grad = torch.zeros_like(x_T) if grad is None else grad
        g_norm = 0.0 if g_image is None else float(g_image.norm())
        states = states.detach()
        return NoiseGradientResult(float(value.detach()), grad.detach(), states[-1], states, g_norm, "unrolled",
                                   0.0, chain.nfe, chain.num_rows, chain.num_rows)


def noise_gradient(sampler, y: Tensor | None, loss, x_T: Tensor, *, noise: Tensor | None = None,
                   generator: torch.Generator | None = None, mode: str = "implicit",
                   init: Tensor | None = None, **options) -> NoiseGradientResult:
    """∂L/∂x_T of ``loss(x_0*)`` for one x_T: a one-call form of :class:`NoiseGradient`.

    ``noise`` (ξ, shape (T, *x_T.shape)) should be given — or ``sampler.nw`` be 0 — when gradients
    of different modes are compared, so that every mode differentiates the same chain.
    """
    return NoiseGradient(sampler, y, loss, noise=noise, generator=generator, mode=mode,
                         **options)(x_T, init)


# --- optimisation -----------------------------------------------------------------------------

@dataclass
class InversionResult:
    """Outcome of :func:`optimize_noise`.

    history[k]: the loss at iterate k (0 = the initial x_T; the last entry is the final iterate);
    grad_norms[k]: ‖∂L/∂x_T‖ there (NaN for a final, gradient-free evaluation); seconds[k]:
    wall-clock of iterate k's evaluation (forward solve + gradient). ``x_T``, ``image``, ``loss``
    are those of the best iterate (``best_step``); ``initial_*`` those of the start; ``stopped``
    is ``"steps"`` or ``"patience"``.
    """

    x_T: Tensor
    image: Tensor
    loss: float
    best_step: int
    history: list[float]
    grad_norms: list[float]
    seconds: list[float]
    initial_x_T: Tensor
    initial_image: Tensor
    initial_loss: float
    final_x_T: Tensor
    final_image: Tensor
    gradient: str
    stopped: str
    nfe: int = 0
    vjps: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Gradient steps taken."""
        return len(self.history) - 1

    @property
    def seconds_per_step(self) -> float:
        return sum(self.seconds) / max(len(self.seconds), 1)

    def summary(self) -> str:
        return (f"{self.gradient}: loss {self.initial_loss:.4g} -> {self.loss:.4g} (best at step "
                f"{self.best_step} of {self.steps}, stopped on {self.stopped}), "
                f"{self.seconds_per_step:.3g} s per step")


def _make_optimizer(optimizer, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    if isinstance(optimizer, str):
        name = optimizer.lower()
        if name == "adam":
            return torch.optim.Adam(params, lr=lr)
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr)
        if name == "sgd_momentum":
            return torch.optim.SGD(params, lr=lr, momentum=0.9)
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam', 'sgd', 'sgd_momentum', a "
                         "torch.optim.Optimizer class, or a callable params -> optimizer")
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer(params, lr=lr)
    if callable(optimizer):
        opt = optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError("the optimizer factory must return a torch.optim.Optimizer")
        return opt
    raise TypeError(f"optimizer must be a name, an Optimizer class or a callable, got {type(optimizer).__name__}")


def optimize_noise(sampler, y: Tensor | None = None, loss: Loss | Callable | None = None, *,
                   x_T: Tensor | None = None, noise: Tensor | None = None,
                   generator: torch.Generator | None = None,
                   image_shape: tuple[int, int, int] | None = None, num_images: int = 1,
                   gradient: str = "implicit", steps: int = 50, lr: float = 0.05,
                   optimizer="adam", tau: float = 0.5, phantom_steps: int = 1,
                   adjoint: str | FixedPointSolver = "sequential", adjoint_tol: float = 0.0,
                   chunk: int | None = None, tol: float | None = 1e-4, patience: int | None = 10,
                   keep_norm: bool = False, warm_start: bool = True,
                   on_zero_gradient: str = "raise", zero_gradient_rtol: float | None = None,
                   progress: bool = True,
                   callback: Callable[[dict], None] | None = None) -> InversionResult:
    """Optimise the initial noise x_T so that the restoration minimises ``loss``.

    x_T and ξ are drawn as :meth:`Sampler.restore` draws them (x_T first, then ξ, from
    ``generator``) unless given; ξ stays fixed. Each step solves the chain (the sampler's solver,
    warm-started from the previous states when ``warm_start``), evaluates the loss on the restored
    image and takes one optimiser step with the chosen gradient. The final iterate is evaluated
    too, and the best iterate is returned.

    Args:
        sampler, y: the restoration problem (y None for a sampler without operator; then give
            ``image_shape`` or ``x_T``).
        loss: a :class:`~fixedpoint_ir.losses.Loss` or any callable image → scalar tensor.
        gradient: ``"implicit"`` (exact), ``"one_step"`` (phantom, ``tau``, ``phantom_steps``) or
            ``"unrolled"``; see :class:`NoiseGradient` (and ``adjoint``, ``adjoint_tol``,
            ``chunk``).
        steps: most gradient steps; lr, optimizer: ``"adam"`` (default), ``"sgd"``,
            ``"sgd_momentum"``, an Optimizer class, or a callable params → optimizer.
        tol, patience: stop when the best loss has not improved by more than ``tol`` (relative)
            for ``patience`` consecutive steps (None disables).
        keep_norm: after every step, rescale each x_T to its initial norm (keeps it on the shell
            where Gaussian noise lives).
        on_zero_gradient: ``"raise"`` (:class:`ZeroGradientError`), ``"warn"`` or ``"ignore"``
            when the loss is known (MeasurementLoss under the range/null-space correction) or
            measured on the first step (:func:`gradient_is_zero`) to have a zero gradient.
        progress: show a tqdm progress bar; callback: called after each evaluation with a dict
            (step, loss, best_loss, grad_norm, x_T, image, seconds).
    """
    if on_zero_gradient not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_zero_gradient must be 'raise', 'warn' or 'ignore', got {on_zero_gradient!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience must be a positive int or None, got {patience!r}")
    if loss is None:
        raise ValueError("give a loss: a fixedpoint_ir.losses.Loss or a callable image -> scalar")
    loss = as_loss(loss)
    reason = loss.zero_gradient_reason(sampler)
    if reason is not None:
        if on_zero_gradient == "raise":
            raise ZeroGradientError(reason)
        if on_zero_gradient == "warn":
            warnings.warn(reason, RuntimeWarning, stacklevel=2)

    chain = sampler.chain(y, x_T=x_T, image_shape=image_shape, num_images=num_images,
                          generator=generator, noise=noise)
    x0_T, xi = chain.x_T.detach(), chain.noise
    grad_fn = NoiseGradient(sampler, y, loss, noise=xi, mode=gradient, tau=tau,
                            phantom_steps=phantom_steps, adjoint=adjoint, adjoint_tol=adjoint_tol,
                            chunk=chunk)
    param = x0_T.clone().requires_grad_()
    opt = _make_optimizer(optimizer, [param], lr)
    norms = x0_T.flatten(1).norm(dim=1).view(-1, 1, 1, 1)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"optimising x_T ({gradient})", unit="step")
    history: list[float] = []
    grad_norms: list[float] = []
    seconds: list[float] = []
    best = (math.inf, -1, x0_T, None)
    initial_image = None
    states = None
    total_nfe = total_vjps = 0
    since_best, stopped = 0, "steps"
    try:
        for k in range(steps + 1):
            x_now = param.detach().clone()
            init = states if (warm_start and gradient != "unrolled") else None
            if k < steps:
                r = grad_fn(x_now, init)
                value, image, states, gnorm, secs = r.loss, r.image, r.states, r.grad_norm, r.seconds
                total_nfe += r.nfe
                total_vjps += r.vjps
                if k == 0 and on_zero_gradient != "ignore" and gradient_is_zero(r, zero_gradient_rtol):
                    message = _zero_gradient_message(r)
                    if on_zero_gradient == "raise":
                        raise ZeroGradientError(message)
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
            else:
                t0 = time.perf_counter()
                value, image, states = grad_fn.forward(x_now, init)
                gnorm, secs = math.nan, time.perf_counter() - t0
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss is {value} at step {k}")
            if k == 0:
                initial_image = image
            history.append(value)
            grad_norms.append(gnorm)
            seconds.append(secs)
            best_loss = best[0]
            if value < best_loss:
                improved = not math.isfinite(best_loss) or \
                    best_loss - value > (tol or 0.0) * abs(best_loss)
                best = (value, k, x_now, image)
                since_best = 0 if improved else since_best + 1
            else:
                since_best += 1
            if callback is not None:
                callback({"step": k, "loss": value, "best_loss": best[0], "grad_norm": gnorm,
                          "x_T": x_now, "image": image, "seconds": secs})
            if k == steps:
                break
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4g}", best=f"{best[0]:.4g}")
            if patience is not None and tol is not None and since_best >= patience:
                stopped = "patience"
                break
            opt.zero_grad(set_to_none=True)
            param.grad = r.grad.to(param.dtype)
            opt.step()
            if keep_norm:
                with torch.no_grad():
                    param.mul_(norms / param.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1))
    finally:
        if bar is not None:
            bar.close()
    return InversionResult(
        x_T=best[2], image=best[3], loss=best[0], best_step=best[1], history=history,
        grad_norms=grad_norms, seconds=seconds, initial_x_T=x0_T, initial_image=initial_image,
        initial_loss=history[0], final_x_T=x_now, final_image=image, gradient=gradient,
        stopped=stopped, nfe=total_nfe, vjps=total_vjps,
        info={"noise": xi, "lr": lr, "optimizer": optimizer, "tau": tau,
              "phantom_steps": phantom_steps})
