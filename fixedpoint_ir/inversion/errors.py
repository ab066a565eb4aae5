"""When the gradient of an inversion loss vanishes, and what to tell the user (DESIGN §5).

Two different reasons look alike numerically: the loss only sees what the chain already fixes
(A x_0 = y under the range/null-space correction: nothing can move it), or the variables being
optimised barely move the image (x_T alone under a chain that draws fresh noise at every step:
the per-step noises ξ_j do move it). The advice differs, so the message tells them apart from the
gradients themselves.
"""
from __future__ import annotations

import math

import torch

__all__ = ["ZeroGradientError", "gradient_is_zero"]


class ZeroGradientError(ValueError):
    """The loss has an (identically) zero gradient with respect to the optimised variables."""


def _norm(*parts) -> float:
    return math.sqrt(sum(float(p) ** 2 for p in parts))


def gradient_is_zero(result, rtol: float | None = None, variables: str = "all") -> bool:
    """Whether the gradient is zero to rounding, relative to ‖∂L/∂x_0‖.

    ``variables``: ``"all"`` measures ‖(∂L/∂x_T, ∂L/∂ξ)‖ (the noise part where the result holds
    one, i.e. where the chain reads its noises), ``"x_T"`` only ‖∂L/∂x_T‖.

    x_T and ξ (unit variance) and x_0 (in [-1, 1]) have comparable scales, and along every
    direction the chain does not annihilate the Jacobian of x_0 with respect to all its inputs
    together is of order one (the last noises enter the last states with weight √(1 − b_j)). So
    a ratio at the level of rounding error (default ``rtol`` = 10⁴ · machine epsilon of the
    dtype) means the loss only sees directions the chain fixes. With ``"x_T"`` on a chain that
    re-draws noise at every step the ratio can also be tiny because x_T is washed out
    (:func:`zero_gradient_message` then says to optimise the noises). A loss that is stationary
    in the image (‖∂L/∂x_0‖ = 0) counts as zero too.
    """
    if variables not in ("all", "x_T"):
        raise ValueError(f"variables must be 'all' or 'x_T', got {variables!r}")
    if rtol is None:
        rtol = 1e4 * torch.finfo(result.grad.dtype).eps
    gnorm = result.grad_norm
    if variables == "all" and result.noise_grad is not None:
        gnorm = _norm(gnorm, result.noise_grad_norm)
    if not math.isfinite(gnorm):
        return False
    if result.image_grad_norm == 0.0:
        return True
    return gnorm <= rtol * result.image_grad_norm


def zero_gradient_message(result, variables: str = "all", rtol: float | None = None) -> str:
    """Why the optimiser cannot move, and what to do — decided from the gradients in ``result``."""
    if result.image_grad_norm == 0.0:
        return ("the loss has a zero gradient with respect to the restored image at the first "
                "iterate (it is stationary there), so nothing the optimiser changes can lower it. "
                "A loss of A x_0 such as the measurement loss ‖A x_0 − y‖² is exactly 0 at every "
                "restoration of a chain with the range/null-space correction (A x_0 = y): use a "
                "loss on the null space (a reference image, a restoration network's output, a "
                "colour reference).")
    if variables == "x_T" and result.noise_grad is not None and not gradient_is_zero(result, rtol, "all"):
        return (f"∂L/∂x_T is zero to rounding (‖∂L/∂x_T‖ = {result.grad_norm:.3g} while "
                f"‖∂L/∂x_0‖ = {result.image_grad_norm:.3g}), but the loss does depend on the "
                f"per-step noises ξ_j (‖∂L/∂ξ‖ = {result.noise_grad_norm:.3g}): this chain draws "
                "fresh noise at every step, which washes out x_T. Optimise the noises too "
                "(variables='auto' or 'all'), or pass on_zero_gradient='warn' to continue anyway.")
    what = "∂L/∂x_T" if variables == "x_T" or result.noise_grad is None else "∂L/∂(x_T, ξ)"
    norm = result.grad_norm if what == "∂L/∂x_T" else _norm(result.grad_norm, result.noise_grad_norm)
    return (f"{what} is zero to rounding (‖{what}‖ = {norm:.3g} while "
            f"‖∂L/∂x_0‖ = {result.image_grad_norm:.3g}): the loss only depends on the part of the "
            "image the chain already fixes. With an operator, every step applies the range/"
            "null-space correction x0' = A†y + (I − A†A) x0, so A x_0 = y exactly and a loss of "
            "A x_0 (such as the measurement loss ‖A x_0 − y‖²) is constant in x_T and the noises. "
            "Use a loss on the null space (a reference image, a restoration network's output, a "
            "colour reference) or pass on_zero_gradient='warn' to continue anyway.")
