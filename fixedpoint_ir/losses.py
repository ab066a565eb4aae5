"""Losses on the restored image x_0, for optimising the initial noise x_T (DESIGN §5).

A loss is any callable ``loss(image) -> scalar tensor`` on a batch of images (N, C, H, W) in
[-1, 1]; it must be differentiable in the image. The classes here add two things to a plain
callable:

* ``bind(sampler, y)`` — called once by :func:`~fixedpoint_ir.inversion.optimize_noise` before the
  first step, so that a loss can use the sampler's operator and the observation (a restoration
  network evaluated once on A†y, the measurement loss's A and y);
* ``zero_gradient_reason(sampler)`` — a loss that is known in advance to have an identically zero
  gradient with respect to x_T for this sampler says why (the measurement loss under the
  range/null-space correction), so the optimiser can refuse it before spending any work.

Losses: :class:`ReferenceLoss` (L2 / L1 to a reference image), :class:`RestorationLoss` (to the
output of any image → image callable), :class:`ColorLoss` (low-frequency chroma of a reference
photo, for reference-based colorization), :class:`MeasurementLoss` (‖A x_0 − y‖², recognised as
useless for a noiseless DDNM chain) and :class:`CallableLoss` (wraps a user callable).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Loss", "ReferenceLoss", "RestorationLoss", "ColorLoss", "MeasurementLoss", "CallableLoss",
    "as_loss", "chroma",
]

NORMS = ("l2", "l1")


def _as_image_batch(reference: Tensor, name: str) -> Tensor:
    if not isinstance(reference, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(reference).__name__}")
    if reference.dim() == 3:
        reference = reference.unsqueeze(0)
    if reference.dim() != 4:
        raise ValueError(f"{name} must have shape (C, H, W) or (N, C, H, W), got {tuple(reference.shape)}")
    if not torch.isfinite(reference).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return reference.detach()


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _distance(a: Tensor, b: Tensor, norm: str) -> Tensor:
    d = a - b
    return d.square().mean() if norm == "l2" else d.abs().mean()


class Loss:
    """Base class: ``loss(image) -> scalar``; ``bind`` and ``zero_gradient_reason`` are optional."""

    def __call__(self, image: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def bind(self, sampler, y: Tensor | None) -> "Loss":
        """A copy of this loss ready for (sampler, y); the default returns the loss itself."""
        return self

    def zero_gradient_reason(self, sampler) -> str | None:
        """Why ∂L/∂x_T is identically zero for this sampler, or None when it is not known to be."""
        return None


class CallableLoss(Loss):
    """Wrap any ``fn(image) -> scalar tensor``."""

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str | None = None):
        if not callable(fn):
            raise TypeError(f"loss must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, image: Tensor) -> Tensor:
        return self.fn(image)

    def __repr__(self) -> str:
        return f"CallableLoss({self.name})"


def as_loss(loss) -> Loss:
    """A :class:`Loss` from a Loss (as is) or a plain callable."""
    if isinstance(loss, Loss):
        return loss
    if callable(loss):
        return CallableLoss(loss)
    raise TypeError(f"loss must be a Loss or a callable image -> scalar, got {type(loss).__name__}")


class ReferenceLoss(Loss):
    """Mean squared (``"l2"``) or absolute (``"l1"``) difference to a reference image.

    Args:
        reference: (C, H, W) or (N, C, H, W) in [-1, 1]; broadcast over the batch.
        norm: ``"l2"`` or ``"l1"``.
        weight: a scalar factor.
    """

    def __init__(self, reference: Tensor, norm: str = "l2", weight: float = 1.0):
        self.reference = _as_image_batch(reference, "reference")
        self.norm = _check_norm(norm)
        self.weight = float(weight)

    def __call__(self, image: Tensor) -> Tensor:
        ref = self.reference.to(device=image.device, dtype=image.dtype)
        if ref.shape[1:] != image.shape[1:]:
            raise ValueError(f"reference of shape {tuple(ref.shape[1:])} does not match the image "
                             f"shape {tuple(image.shape[1:])}")
        return self.weight * _distance(image, ref, self.norm)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(norm={self.norm!r}, shape={tuple(self.reference.shape)})"


class RestorationLoss(ReferenceLoss):
    """L2 / L1 distance to the output of a user restoration (any callable image → image).

    The restoration is evaluated ONCE, without gradients: on ``source`` when given, otherwise on
    A†y of the observation when the loss is bound to a sampler with an operator
    (:meth:`bind`). ``target`` skips the call altogether (a precomputed restoration).

    Args:
        restorer: callable (N, C, H, W) → (N, C, H, W), e.g. a super-resolution network applied
            to the back-projected observation, or a classical filter.
        norm, weight: see :class:`ReferenceLoss`.
        source: the restorer's input; default A†y at bind time.
        target: the restorer's output, if already computed.
    """

    def __init__(self, restorer: Callable[[Tensor], Tensor] | None = None, norm: str = "l2",
                 weight: float = 1.0, *, source: Tensor | None = None, target: Tensor | None = None):
        if restorer is None and target is None:
            raise ValueError("give a restorer (callable image -> image) or a precomputed target")
        if restorer is not None and not callable(restorer):
            raise TypeError(f"restorer must be callable, got {type(restorer).__name__}")
        self.restorer = restorer
        self.source = None if source is None else _as_image_batch(source, "source")
        self.norm = _check_norm(norm)
        self.weight = float(weight)
        self.reference = None
        if target is not None:
            self.reference = _as_image_batch(target, "target")
        elif self.source is not None:
            self.reference = self._run(self.source)

    def _run(self, source: Tensor) -> Tensor:
        with torch.no_grad():
            out = self.restorer(source)
        return _as_image_batch(out, "the restorer's output")

    def bind(self, sampler, y: Tensor | None) -> "RestorationLoss":
        if self.reference is not None:
            return self
        operator = getattr(sampler, "operator", None)
        if operator is None or y is None:
            raise ValueError("RestorationLoss needs source= or target=, or a sampler with an operator "
                             "and an observation y (the restorer then runs on A†y)")
        bound = copy.copy(self)
        with torch.no_grad():
            bound.reference = bound._run(operator.A_pinv(y))
        return bound

    def __call__(self, image: Tensor) -> Tensor:
        if self.reference is None:
            raise RuntimeError("RestorationLoss is not bound: call bind(sampler, y) or give source/target")
        return super().__call__(image)


def chroma(x: Tensor, weights: Tensor | None = None) -> Tensor:
    """The colour part of x: x minus its luminance, (I − P) x for P the colorization projector.

    With luminance ℓ = Σ_c w_c x_c the projector onto the luminance direction is
    P x = w ℓ / ‖w‖²; equal weights give x − mean_c(x). Chroma is what a grey observation does
    not determine (the null space of :class:`~fixedpoint_ir.operators.Colorization`).
    """
    c = x.shape[1]
    w = torch.full((c,), 1.0 / c, dtype=x.dtype, device=x.device) if weights is None \
        else torch.as_tensor(weights).to(dtype=x.dtype, device=x.device)
    if w.shape != (c,):
        raise ValueError(f"weights must have {c} entries, got shape {tuple(w.shape)}")
    lum = (x * w.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
    return x - lum * (w / w.square().sum()).view(1, -1, 1, 1)


class ColorLoss(Loss):
    """Low-frequency colour loss to a reference photo (reference-based colorization).

    Compares only chroma (:func:`chroma`: the part of the image a grey observation leaves free),
    and only at low frequency, so the luminance detail stays the observation's:

    * ``mode="pooled"`` (aligned references): chroma average-pooled to a ``size`` × ``size`` grid,
      mean squared difference. A colour thumbnail or a colour hint image works as reference.
    * ``mode="stats"`` (unaligned references, e.g. another photo of a similar scene): per-channel
      mean and standard deviation of the chroma over the image, squared differences.

    Args:
        reference: (C, H, W) or (N, C, H, W) colour image in [-1, 1]; any size for ``"stats"``, any
            size whose pooled grid exists for ``"pooled"`` (it is pooled to the same grid).
        size: side of the pooled grid (``"pooled"`` mode).
        mode: ``"pooled"`` or ``"stats"``.
        weights: luminance weights (default equal; :meth:`bind` takes those of a
            :class:`~fixedpoint_ir.operators.Colorization` operator).
        weight: a scalar factor.
    """

    MODES = ("pooled", "stats")

    def __init__(self, reference: Tensor, size: int = 8, mode: str = "pooled",
                 weights: Tensor | None = None, weight: float = 1.0):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.reference = _as_image_batch(reference, "reference")
        self.size, self.mode, self.weight = size, mode, float(weight)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def bind(self, sampler, y: Tensor | None) -> "ColorLoss":
        operator = getattr(sampler, "operator", None)
        w = getattr(operator, "weights", None)
        if self.weights is None and isinstance(w, Tensor) and w.numel() == self.reference.shape[1]:
            bound = copy.copy(self)
            bound.weights = w.detach().to(torch.float64)
            return bound
        return self

    def features(self, x: Tensor) -> Tensor:
        """The low-frequency chroma features compared by the loss."""
        ch = chroma(x, self.weights)
        if self.mode == "pooled":
            return F.adaptive_avg_pool2d(ch, (self.size, self.size))
        flat = ch.flatten(2)
        return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)

    def __call__(self, image: Tensor) -> Tensor:
        ref = self.reference.to(device=image.device, dtype=image.dtype)
        if ref.shape[1] != image.shape[1]:
            raise ValueError(f"reference has {ref.shape[1]} channels, the image {image.shape[1]}")
        return self.weight * (self.features(image) - self.features(ref)).square().mean()

    def __repr__(self) -> str:
        return f"ColorLoss(mode={self.mode!r}, size={self.size})"


class MeasurementLoss(Loss):
    """‖A x_0 − y‖² (mean over entries): the data-fidelity of the restored image.

    For a sampler WITH the range/null-space correction and a noiseless observation, every
    restored image satisfies A x_0 = A A†y = y exactly, whatever x_T and ξ: the loss is constant and its
    gradient with respect to x_T is identically zero. :meth:`zero_gradient_reason` says so, and
    :func:`~fixedpoint_ir.inversion.optimize_noise` refuses it up front. It is useful with a plain
    DDIM sampler (no operator: give ``operator`` and ``y`` here) — inversion by data fidelity.

    Args:
        operator, y: default to the sampler's operator and the observation at :meth:`bind`.
    """

    def __init__(self, operator=None, y: Tensor | None = None, weight: float = 1.0):
        self.operator, self.y, self.weight = operator, y, float(weight)

    def bind(self, sampler, y: Tensor | None) -> "MeasurementLoss":
        bound = copy.copy(self)
        if bound.operator is None:
            bound.operator = getattr(sampler, "operator", None)
        if bound.y is None:
            bound.y = y
        if bound.operator is None or bound.y is None:
            raise ValueError("MeasurementLoss needs an operator and an observation y (from the "
                             "sampler or given explicitly)")
        return bound

    def zero_gradient_reason(self, sampler) -> str | None:
        operator = getattr(sampler, "operator", None)
        if operator is None:
            return None
        if self.operator is not None and self.operator is not operator:
            return None  # a different operator than the one the chain corrects with
        if float(getattr(sampler, "sigma_y", 0.0) or 0.0) > 0:
            return None  # a damped (DDNM+) correction does not enforce A x_0 = y exactly
        return ("the measurement loss ‖A x_0 − y‖² has an identically zero gradient with respect "
                "to x_T for this sampler: every step applies the range/null-space correction "
                "x0' = A†y + (I − A†A) x0, so the restored image satisfies A x_0 = A A†y = y exactly "
                "(σ_y = 0), whatever x_T and the noises ξ_j are. The loss only sees the range of A, "
                "which the chain already fixes; x_T and ξ can only change the null-space part. Use a loss on the null "
                "space instead: a reference image (ReferenceLoss), a restoration network's output "
                "(RestorationLoss) or a colour reference (ColorLoss), or use MeasurementLoss with "
                "a plain DDIM sampler (operator=None).")

    def __call__(self, image: Tensor) -> Tensor:
        if self.operator is None or self.y is None:
            raise RuntimeError("MeasurementLoss is not bound: give operator and y, or call bind(sampler, y)")
        y = self.y.to(device=image.device, dtype=image.dtype)
        return self.weight * (self.operator.A(image) - y).square().mean()

    def __repr__(self) -> str:
        return f"MeasurementLoss({type(self.operator).__name__ if self.operator is not None else None})"
