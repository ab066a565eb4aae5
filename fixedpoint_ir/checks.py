"""The sampler's checks of its inputs and its advice on failures: finite tensors, observations
that fit the operator, TF32 on CUDA, what to try after a divergence."""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

__all__ = ["check_finite", "check_observation", "warn_if_tf32", "divergence_hint", "TF32_TOL"]


def check_finite(x: Tensor, name: str) -> None:
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


def divergence_hint(solver, report) -> str:
    """What can help after a divergence: another solver, unless the solver only replays the chain."""
    if type(solver).__name__ in ("Picard", "Triangular"):
        # Both replay the chain (the triangular solver falls back to Picard's step when its model
        # misleads): a NaN or an explosion there comes from the prior itself.
        return ("the prior returned NaN/Inf or exploding values on these inputs: check it with "
                "Sampler.sequential on the same y (float32, an image size the prior was trained "
                "for); no other solver can fix a non-finite map")
    if not all(math.isfinite(r) for r in report.residuals):
        # An extrapolating update can carry the states where the prior fails (ParaDiGMS at T = 100
        # on the shipped prior: NaN after 31-34 rounds, where the sequential chain is finite).
        return ("its iterates reached NaN/Inf: the solver's own update can leave the states the prior "
                "handles, or the prior fails on these inputs; check the chain with Sampler.sequential "
                "on the same y, and if it is finite try solver='picard' or 'triangular', which are "
                "exact after T rounds")
    return "try solver='picard' or 'triangular', which are exact after T rounds"


def recorded_image_shape(operator) -> tuple[int, ...] | None:
    config = getattr(operator, "task_config", None)
    shape = config.get("image_shape") if isinstance(config, dict) else None
    shape = shape if shape is not None else getattr(operator, "image_shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def check_observation(operator, y: Tensor, x_T: Tensor | None) -> tuple[Tensor, tuple[int, ...]]:
    """A†y and the image shape, after checking y against the operator (argument named, shape expected)."""
    recorded = tuple(x_T.shape[1:]) if isinstance(x_T, Tensor) else recorded_image_shape(operator)
    name = type(operator).__name__
    if recorded is not None:
        expected = tuple(operator.y_shape(recorded))
        if y.dim() != len(expected) + 1 or tuple(y.shape[1:]) != expected:
            axes = ", ".join(map(str, expected))
            raise ValueError(f"y must have shape (N, {axes}) (a batch of observations of the {name} "
                             f"operator for {'x'.join(map(str, recorded))} images), got {tuple(y.shape)}"
                             + ("; add the batch axis with y[None]" if tuple(y.shape) == expected else ""))
    elif y.dim() < 2:
        raise ValueError(f"y must have a leading batch axis (N, ...), got shape {tuple(y.shape)}")
    try:
        y_image = operator.A_pinv(y)
    except Exception as err:   # einops / shape errors deep inside the operator
        raise ValueError(f"y of shape {tuple(y.shape)} does not fit the {name} operator (expected a batch "
                         f"(N, C, h, w) of its observations): {type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0]}") from None
    shape = recorded if recorded is not None else tuple(y_image.shape[1:])
    operator.check_observation(y, shape)
    return y_image, shape
