"""Optimising the chain's noise so that the restoration minimises a loss (DEQ inversion)."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..losses import Loss, as_loss
from ..solver import FixedPointSolver
from .errors import ZeroGradientError, gradient_is_zero, zero_gradient_message
from .gradient import NoiseGradient
from .variables import InversionVariables

__all__ = ["InversionResult", "optimize_noise"]


@dataclass
class InversionResult:
    """Outcome of :func:`optimize_noise`.

    history[k]: the loss at iterate k (0 = the start; the last entry is the final iterate);
    grad_norms[k]: ‖∂L/∂(optimised variables)‖ there (NaN for a final, gradient-free evaluation);
    seconds[k]: wall-clock of iterate k's evaluation (forward solve + gradient). ``x_T``,
    ``noise``, ``image``, ``loss`` are those of the best iterate (``best_step``): the restoration
    is reproduced by ``sampler.restore(y, x_T=result.x_T, noise=result.noise)``. ``initial_*`` are
    those of the start, ``final_*`` of the last iterate; ``variables`` names what was optimised
    (``("x_T",)`` or ``("x_T", "noise")``); ``stopped`` is ``"steps"`` or ``"patience"``.
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
    noise: Tensor | None = None
    initial_noise: Tensor | None = None
    final_noise: Tensor | None = None
    variables: tuple[str, ...] = ("x_T",)
    described: str = "x_T"

    @property
    def steps(self) -> int:
        """Gradient steps taken."""
        return len(self.history) - 1

    @property
    def seconds_per_step(self) -> float:
        return sum(self.seconds) / max(len(self.seconds), 1)

    @property
    def relative_decrease(self) -> float:
        """1 − best loss / initial loss."""
        return 1.0 - self.loss / self.initial_loss if self.initial_loss else 0.0

    def summary(self) -> str:
        return (f"{self.gradient} gradient over {self.described}: loss {self.initial_loss:.4g} -> "
                f"{self.loss:.4g} ({-100 * self.relative_decrease:+.1f} %; best at step "
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


def _check_arguments(on_zero_gradient, steps, lr, patience, loss) -> None:
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


def optimize_noise(sampler, y: Tensor | None = None, loss: Loss | Callable | None = None, *,
                   x_T: Tensor | None = None, noise: Tensor | None = None,
                   generator: torch.Generator | None = None,
                   image_shape: tuple[int, int, int] | None = None, num_images: int = 1,
                   variables: str = "auto",
                   gradient: str = "implicit", steps: int = 50, lr: float = 0.05,
                   optimizer="adam", tau: float = 0.5, phantom_steps: int = 1,
                   adjoint: str | FixedPointSolver = "sequential", adjoint_tol: float = 0.0,
                   chunk: int | None = None, tol: float | None = 1e-4, patience: int | None = 10,
                   keep_norm: bool = False, warm_start: bool = True,
                   on_zero_gradient: str = "raise", zero_gradient_rtol: float | None = None,
                   progress: bool = True,
                   callback: Callable[[dict], None] | None = None) -> InversionResult:
    """Optimise the chain's noise — x_T, and the per-step noises ξ_j where the chain draws them —
    so that the restoration minimises ``loss``.

    x_T and ξ are drawn as :meth:`Sampler.restore` draws them (x_T first, then ξ, from
    ``generator``) unless given. Each step solves the chain (the sampler's solver, warm-started
    from the previous states when ``warm_start``), evaluates the loss on the restored image and
    takes one optimiser step with the chosen gradient. The final iterate is evaluated too, and the
    best iterate is returned with the x_T and ξ that reproduce it.

    Args:
        sampler, y: the restoration problem (y None for a sampler without operator; then give
            ``image_shape`` or ``x_T``).
        loss: a :class:`~fixedpoint_ir.losses.Loss` or any callable image → scalar tensor.
        variables: what is optimised. ``"auto"`` (default): x_T, plus the noises ξ_j when the
            chain reads them (nw > 0, as in the task defaults: there x_T alone barely moves the
            image); ``"x_T"``: x_T only, ξ held fixed; ``"all"``: x_T and ξ (an error when the
            chain reads no noise). A sampler with ``noise="shared"`` optimises its one ξ.
        gradient: ``"implicit"`` (exact), ``"one_step"`` (phantom, ``tau``, ``phantom_steps``) or
            ``"unrolled"``; see :class:`~fixedpoint_ir.inversion.NoiseGradient` (and ``adjoint``,
            ``adjoint_tol``, ``chunk``).
        steps: most gradient steps; lr, optimizer: ``"adam"`` (default), ``"sgd"``,
            ``"sgd_momentum"``, an Optimizer class, or a callable params → optimizer (the same
            learning rate for x_T and ξ: both are unit-variance noise).
        tol, patience: stop when the best loss has not improved by more than ``tol`` (relative)
            for ``patience`` consecutive steps (None disables).
        keep_norm: after every step, rescale x_T (per image) and each optimised ξ_j (per step and
            image) to its initial norm (keeps them on the shell where Gaussian noise lives).
        on_zero_gradient: ``"raise"`` (:class:`ZeroGradientError`), ``"warn"`` or ``"ignore"``
            when the loss is known (MeasurementLoss under the range/null-space correction) or
            measured on the first step (:func:`gradient_is_zero`) to have a zero gradient with
            respect to the optimised variables; the message says why and what to change.
        progress: show a tqdm progress bar; callback: called after each evaluation with a dict
            (step, loss, best_loss, grad_norm, x_T, noise, image, seconds).
    """
    _check_arguments(on_zero_gradient, steps, lr, patience, loss)
    loss = as_loss(loss)
    reason = loss.zero_gradient_reason(sampler)
    if reason is not None:
        if on_zero_gradient == "raise":
            raise ZeroGradientError(reason)
        if on_zero_gradient == "warn":
            warnings.warn(reason, RuntimeWarning, stacklevel=2)

    chain = sampler.chain(y, x_T=x_T, image_shape=image_shape, num_images=num_images,
                          generator=generator, noise=noise)
    var = InversionVariables(chain.x_T, chain.noise, variables, chain.reads_noise,
                             shared=getattr(sampler, "noise", "per_step") == "shared")
    which = "all" if var.with_noise else "x_T"
    grad_fn = NoiseGradient(sampler, y, loss, noise=chain.noise, mode=gradient, tau=tau,
                            phantom_steps=phantom_steps, adjoint=adjoint, adjoint_tol=adjoint_tol,
                            chunk=chunk)
    del chain
    opt = _make_optimizer(optimizer, var.parameters(), lr)
    start_x_T, start_noise = var.current()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"optimising {'/'.join(var.names)} ({gradient})", unit="step")
    history: list[float] = []
    grad_norms: list[float] = []
    seconds: list[float] = []
    best = (math.inf, -1, start_x_T, start_noise, None)
    initial_image = None
    states = None
    total_nfe = total_vjps = 0
    since_best, stopped = 0, "steps"
    try:
        for k in range(steps + 1):
            x_now, noise_now = var.current()
            init = states if (warm_start and gradient != "unrolled") else None
            if k < steps:
                r = grad_fn(x_now, init, noise=noise_now)
                value, image, states, secs = r.loss, r.image, r.states, r.seconds
                gnorm = math.hypot(r.grad_norm, r.noise_grad_norm) if var.with_noise else r.grad_norm
                total_nfe += r.nfe
                total_vjps += r.vjps
                if k == 0 and on_zero_gradient != "ignore" and gradient_is_zero(r, zero_gradient_rtol, which):
                    message = zero_gradient_message(r, which, zero_gradient_rtol)
                    if on_zero_gradient == "raise":
                        raise ZeroGradientError(message)
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
            else:
                t0 = time.perf_counter()
                value, image, states = grad_fn.forward(x_now, init, noise=noise_now)
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
                best = (value, k, x_now, noise_now, image)
                since_best = 0 if improved else since_best + 1
            else:
                since_best += 1
            if callback is not None:
                callback({"step": k, "loss": value, "best_loss": best[0], "grad_norm": gnorm,
                          "x_T": x_now, "noise": noise_now, "image": image, "seconds": secs})
            if k == steps:
                break
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4g}", best=f"{best[0]:.4g}")
            if patience is not None and tol is not None and since_best >= patience:
                stopped = "patience"
                break
            opt.zero_grad(set_to_none=True)
            var.set_grads(r.grad, r.noise_grad)
            opt.step()
            if keep_norm:
                var.keep_norms()
    finally:
        if bar is not None:
            bar.close()
    return InversionResult(
        x_T=best[2], image=best[4], loss=best[0], best_step=best[1], history=history,
        grad_norms=grad_norms, seconds=seconds, initial_x_T=start_x_T, initial_image=initial_image,
        initial_loss=history[0], final_x_T=x_now, final_image=image, gradient=gradient,
        stopped=stopped, nfe=total_nfe, vjps=total_vjps,
        info={"lr": lr, "optimizer": optimizer, "tau": tau, "phantom_steps": phantom_steps},
        noise=best[3], initial_noise=start_noise, final_noise=noise_now,
        variables=var.names, described=var.describe())
