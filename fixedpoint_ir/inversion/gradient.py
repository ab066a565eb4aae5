"""L(x_0*) and its gradient with respect to x_T and the per-step noises ξ_j, three ways (DESIGN §5)."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..chain import Chain
from ..losses import Loss, as_loss
from ..solver import FixedPointSolver, SolverReport, get_solver
from .adjoint import Linearization, solve_adjoint

__all__ = ["GRADIENTS", "NoiseGradient", "NoiseGradientResult", "noise_gradient"]

GRADIENTS = ("implicit", "one_step", "unrolled")
ADJOINT_SEQUENTIAL = "sequential"


@dataclass
class NoiseGradientResult:
    """One evaluation of L, ∂L/∂x_T and ∂L/∂ξ.

    loss: L at the restored image x_0* (for ``one_step`` too: the loss of the actual restoration);
    grad: ∂L/∂x_T (the shape of x_T); noise_grad: ∂L/∂ξ (T, N, C, H, W) per step — None when
    the chain never reads its noises (nw = 0); image, states: x_0* and z* (detached);
    image_grad_norm: ‖∂L/∂x_0‖, the scale the zero-gradient check compares with; nfe: network
    evaluations per image (forward solve + re-evaluations); vjps: network vector–Jacobian products
    per image; rounds: forward solver rounds (T for ``unrolled``); adjoint_rounds: rounds of the
    adjoint solve (``implicit``); fixed_point_residual: ‖F(z*) − z*‖ / ‖F(z*)‖ at the z* the
    gradient assumes (``implicit``, ``one_step``).
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
    noise_grad: Tensor | None = None

    @property
    def grad_norm(self) -> float:
        """‖∂L/∂x_T‖."""
        return float(self.grad.norm())

    @property
    def noise_grad_norm(self) -> float:
        """‖∂L/∂ξ‖ over all steps (0 when the chain reads no noise)."""
        return 0.0 if self.noise_grad is None else float(self.noise_grad.norm())


class NoiseGradient:
    """L(x_0*(x_T, ξ)) with ∂L/∂x_T and ∂L/∂ξ for one sampler, observation and loss.

    ∂L/∂ξ (``noise_grad``, one row per step) is computed whenever the chain reads its noises
    (:attr:`~fixedpoint_ir.chain.Chain.reads_noise`: nw > 0, or DDRM / DiffPIR with ζ > 0): the
    adjoint sweep gives it with x_T's, at the cost of one backward pass through the replay and no
    network call. Under a chain that re-draws noise at every step it is what moves the image.

    Args:
        sampler: a :class:`~fixedpoint_ir.sampler.Sampler` (its solver finds z*).
        y: the observation (None for a sampler without operator).
        loss: a :class:`~fixedpoint_ir.losses.Loss` or any callable image → scalar tensor; it is
            bound to (sampler, y) once.
        noise: the fresh noises ξ_j (T, N, C, H, W); drawn on the first call (with ``generator``)
            when not given, as :meth:`Sampler.chain` draws them (none when nw = 0). A call's
            ``noise=`` argument overrides it for that call (the optimiser's current ξ).
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
    def _noise_for(self, x_T: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is not None:
            return noise
        if self.noise is None:   # the sampler's own draw (a zero buffer of stride 0 when nw = 0)
            self.noise = self.sampler.chain(self.y, x_T=x_T, generator=self.generator).noise
        return self.noise

    def _chain(self, x_T: Tensor, noise: Tensor) -> Chain:
        return self.sampler.chain(self.y, x_T=x_T, noise=noise)

    def _leaves(self, x_T: Tensor, noise: Tensor) -> tuple[Chain, Tensor, Tensor | None]:
        """The chain at (x_T, ξ) as autograd leaves; ξ is a leaf only when the chain reads it."""
        leaf = x_T.clone().requires_grad_()
        chain = self._chain(leaf, noise)
        if not chain.reads_noise:
            return chain, leaf, None
        chain.noise = noise.detach().clone().requires_grad_()
        return chain, leaf, chain.noise

    def _solve(self, x_T: Tensor, noise: Tensor, init: Tensor | None):
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

    def forward(self, x_T: Tensor, init: Tensor | None = None, *,
                noise: Tensor | None = None) -> tuple[float, Tensor, Tensor]:
        """(L, x_0*, z*) without a gradient (the sampler's solver, or the sequential chain for
        ``unrolled``)."""
        x_T = x_T.detach()
        noise = self._noise_for(x_T, noise).detach()
        if self.mode == "unrolled":
            with torch.no_grad():
                states = self._chain(x_T, noise).sequential()
        else:
            states = self._solve(x_T, noise, init).states
        with torch.enable_grad():
            value = self._loss(states[-1].detach().requires_grad_())
        return float(value.detach()), states[-1].detach(), states.detach()

    def __call__(self, x_T: Tensor, init: Tensor | None = None, *,
                 noise: Tensor | None = None) -> NoiseGradientResult:
        """L, ∂L/∂x_T and ∂L/∂ξ at (x_T, ξ); ``init`` warm-starts the forward solve (e.g. the
        previous z*); ``noise`` replaces the held ξ for this call."""
        if not isinstance(x_T, Tensor) or x_T.dim() != 4:
            raise ValueError("x_T must be a tensor of shape (N, C, H, W)")
        start = time.perf_counter()
        x_T = x_T.detach()
        noise = self._noise_for(x_T, noise).detach()
        if self.mode == "unrolled":
            result = self._unrolled(x_T, noise)
        else:
            forward = self._solve(x_T, noise, init)
            z = forward.states.detach()
            if self.mode == "implicit":
                result = self._implicit(x_T, noise, z)
            else:
                result = self._one_step(x_T, noise, z)
            result.rounds = forward.rounds
            result.nfe += forward.nfe
        result.seconds = time.perf_counter() - start
        return result

    # the three modes
    def _implicit(self, x_T: Tensor, noise: Tensor, z: Tensor) -> NoiseGradientResult:
        chain, _, noise_leaf = self._leaves(x_T, noise)
        lin = Linearization(chain, z, self.chunk, wrt_noise=noise_leaf is not None)
        value, g_image = self._loss_and_image_grad(z[-1])
        g = torch.zeros_like(z)
        g[-1] = g_image
        scale = float(g.norm())
        adjoint_rounds, report = 0, None
        if scale == 0.0:
            grad = torch.zeros_like(x_T)
            noise_grad = None if noise_leaf is None else torch.zeros_like(noise_leaf)
        else:
            w, adjoint_rounds, report = solve_adjoint(lin, g / scale, self.adjoint)
            grad, noise_grad = lin.input_grads(w)
            grad = grad * scale
            noise_grad = None if noise_grad is None else noise_grad * scale
        allowed = max(1e-4, 10.0 * float(getattr(self.sampler.solver, "tol", 0.0) or 0.0))
        if lin.fixed_point_residual > allowed:
            warnings.warn(f"z* is not a fixed point of F (relative residual "
                          f"{lin.fixed_point_residual:.2g}): the implicit gradient assumes one; let "
                          "the sampler's solver converge (e.g. Picard, exact after T rounds)",
                          RuntimeWarning, stacklevel=3)
        return NoiseGradientResult(float(value), grad.detach(), z[-1], z, float(g_image.norm()),
                                   "implicit", 0.0, chain.nfe, lin.vjps, 0, adjoint_rounds,
                                   lin.fixed_point_residual, report, _detached(noise_grad))

    def _one_step(self, x_T: Tensor, noise: Tensor, z: Tensor) -> NoiseGradientResult:
        chain, leaf, noise_leaf = self._leaves(x_T, noise)
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
            grad, noise_grad = _grads(self._loss(zk[-1]), leaf, noise_leaf)
        residual = float((fz.detach() - z).norm() / (fz.detach().norm() + 1e-30))
        return NoiseGradientResult(float(value), grad, z[-1], z, float(g_image.norm()),
                                   "one_step", 0.0, chain.nfe, 1 + T * (self.phantom_steps - 1),
                                   fixed_point_residual=residual, noise_grad=noise_grad)

    def _unrolled(self, x_T: Tensor, noise: Tensor) -> NoiseGradientResult:
        chain, leaf, noise_leaf = self._leaves(x_T, noise)
        with torch.enable_grad():
            states = chain.sequential()
            image = states[-1]
            value = self._loss(image)
            (g_image,) = torch.autograd.grad(value, image, retain_graph=True, allow_unused=True)
            grad, noise_grad = _grads(value, leaf, noise_leaf)
        g_norm = 0.0 if g_image is None else float(g_image.norm())
        states = states.detach()
        return NoiseGradientResult(float(value.detach()), grad, states[-1], states, g_norm, "unrolled",
                                   0.0, chain.nfe, chain.num_rows, chain.num_rows, noise_grad=noise_grad)


def _detached(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


def _grads(value: Tensor, leaf: Tensor, noise_leaf: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(∂value/∂x_T, ∂value/∂ξ or None), zeros where the value does not depend on a leaf."""
    leaves = [leaf] if noise_leaf is None else [leaf, noise_leaf]
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g.detach() for x, g in zip(leaves, grads)]
    return grads[0], (grads[1] if noise_leaf is not None else None)


def noise_gradient(sampler, y: Tensor | None, loss, x_T: Tensor, *, noise: Tensor | None = None,
                   generator: torch.Generator | None = None, mode: str = "implicit",
                   init: Tensor | None = None, **options) -> NoiseGradientResult:
    """L, ∂L/∂x_T and ∂L/∂ξ of ``loss(x_0*)`` for one (x_T, ξ): a one-call form of
    :class:`NoiseGradient`.

    ``noise`` (ξ, shape (T, *x_T.shape)) should be given — or ``sampler.nw`` be 0 — when gradients
    of different modes are compared, so that every mode differentiates the same chain.
    """
    return NoiseGradient(sampler, y, loss, noise=noise, generator=generator, mode=mode,
                         **options)(x_T, init)

