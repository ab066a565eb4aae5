"""The Operator interface: a linear degradation A with its pseudo-inverse A† (DESIGN §6).

Operators act on batches of images of shape (N, C, H, W) and return observations of shape
(N, *y_shape). They never import the sampler.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import math
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["Operator", "ddnm_plus_weights", "ddnm_plus_noise_weights"]

ImageShape = tuple[int, int, int]


def ddnm_plus_weights(singular_values: Tensor, sigma_t: float, a_t: float, sigma_y: float) -> Tensor:
    """DDNM+ damping λ for each singular value s (Wang et al., ICLR 2023, Eq. 19 / App. I).

    The correction x0 − Σ A†(A x0 − y) injects the observation noise A†n, whose component along a
    singular direction with singular value s has standard deviation σ_y / s. Scaled into the next
    state by a_t it must not exceed that state's own noise level σ_t, hence

        λ(s) = min(1, σ_t · s / (a_t · σ_y)),

    with λ = 1 (the noiseless DDNM correction) when σ_y = 0.
    """
    s = singular_values
    if sigma_y == 0:
        return torch.ones_like(s)
    if a_t <= 0:
        return torch.zeros_like(s)
    return (sigma_t * s / (a_t * sigma_y)).clamp(max=1.0)


def ddnm_plus_noise_weights(singular_values: Tensor, sigma_t: float, a_t: float, sigma_y: float) -> Tensor:
    """DDNM+ rescaling γ/σ_t of the step's noise along each singular direction (Eq. 19).

    The damped correction already puts noise of standard deviation a_t·λ·σ_y / s into the next
    state along that direction; the step's own noise there is scaled down so that the total stays
    σ_t: γ / σ_t = √(1 − (a_t λ σ_y / (s σ_t))²) (0 where λ < 1, 1 when σ_y = 0).
    """
    s = singular_values
    if sigma_y == 0:
        return torch.ones_like(s)
    if sigma_t <= 0:
        return torch.zeros_like(s)
    lam = ddnm_plus_weights(s, sigma_t, a_t, sigma_y)
    used = a_t * lam * sigma_y / (s * sigma_t)
    return (1.0 - used.square()).clamp_min(0.0).sqrt()


class Operator(nn.Module, ABC):
    """A linear degradation y = A x with a pseudo-inverse A†.

    Subclasses implement :meth:`A`, :meth:`A_pinv` and :meth:`y_shape` (the observation shape for
    an image shape, raising ``ValueError`` when the operator does not fit that image).
    ``A_dagger`` is an alias of ``A_pinv`` (the name other inverse-problem libraries use).

    ``is_projector`` is True when A†A is an orthogonal projector (A A† A = A, A†A symmetric), which
    the closed form of the chain map relies on. Operators whose A† is exact Moore–Penrose are.

    Structural facts used by compositions and by the σ_y-aware correction (all conservative: a
    subclass that does not know leaves the default):

    * ``singular_value``: every non-zero singular value of A equals this number (A Aᵀ = s² on the
      range of A: masks, average pooling, colorization, identity), else ``None``.
    * ``full_row_rank``: A Aᵀ is invertible (A is onto its observation space).
    * ``full_column_rank``: AᵀA is invertible (A is one-to-one).
    * ``diagonal``: A acts pixel by pixel as a 0/1 diagonal matrix with y of the image's shape (masks).
    """

    is_projector: bool = True
    singular_value: float | None = None
    full_row_rank: bool = False
    full_column_rank: bool = False
    diagonal: bool = False

    @abstractmethod
    def A(self, x: Tensor) -> Tensor:
        """Degrade a batch of images (N, C, H, W) -> (N, *y_shape)."""

    @abstractmethod
    def A_pinv(self, y: Tensor) -> Tensor:
        """Pseudo-inverse A†: (N, *y_shape) -> (N, C, H, W)."""

    @abstractmethod
    def y_shape(self, image_shape: ImageShape) -> tuple[int, ...]:
        """Shape of one observation for one image of shape (C, H, W); ValueError if it does not fit."""

    def A_dagger(self, y: Tensor) -> Tensor:
        return self.A_pinv(y)

    def A_adjoint(self, y: Tensor) -> Tensor:
        """Aᵀ y. The default differentiates A with autograd (exact for a linear A); operators with a
        cheap explicit adjoint override it."""
        shape = self._image_shape_for(y)
        with torch.enable_grad():
            x = torch.zeros((y.shape[0], *shape), dtype=y.dtype, device=y.device, requires_grad=True)
            (g,) = torch.autograd.grad(self.A(x), x, grad_outputs=y)
        return g

    def _image_shape_for(self, y: Tensor) -> ImageShape:
        """The image shape (C, H, W) that A† maps an observation y to."""
        return tuple(self.A_pinv(y[:1]).shape[1:])

    def filtered_pinv(self, r: Tensor, weights: Callable[[Tensor], Tensor]) -> Tensor:
        """V diag(w(s_i) / s_i) Uᵀ r: A† with each singular direction scaled by w(s_i).

        ``weights`` maps a tensor of (non-zero) singular values to multipliers. The default works
        for operators whose non-zero singular values are all equal (``singular_value``); operators
        with an explicit SVD override it. Raises ``NotImplementedError`` otherwise.
        """
        if self.singular_value is None:
            raise NotImplementedError(f"{type(self).__name__} has no known singular values")
        w = weights(torch.tensor([float(self.singular_value)], dtype=torch.float64))
        return float(w[0]) * self.A_pinv(r)

    @property
    def has_spectrum(self) -> bool:
        """True when :meth:`filtered_pinv` is exact (known singular values)."""
        return self.singular_value is not None or type(self).filtered_pinv is not Operator.filtered_pinv

    def noisy_consistency(self, x0: Tensor, y: Tensor, sigma_t: float, a_t: float,
                          sigma_y: float) -> Tensor:
        """The σ_y-aware correction of DDNM+: x0 − Σ_t A†(A x0 − y), Σ_t = V diag(λ_i) Vᵀ.

        ``sigma_t`` and ``a_t`` are the noise level and the signal scale of the state the step goes
        to (√(1−b_j) and √b_j for row j), ``sigma_y`` the observation noise. λ_i is
        :func:`ddnm_plus_weights` of the i-th singular value. With σ_y = 0 this is exactly
        :meth:`data_consistency`.

        Operators without known singular values use the simplified DDNM+ rule of the reference
        code (a documented approximation): one scalar λ = min(1, σ_t / (a_t σ_y)), i.e. all
        singular values treated as 1. The matching reduction of the step's noise in the range
        space (DDNM+'s γ_t) is :meth:`noisy_noise_scaling`; both are needed (damping alone leaves
        too much noise in the state and does worse than no damping).
        """
        if sigma_y < 0 or not math.isfinite(sigma_y):
            raise ValueError(f"sigma_y must be a finite non-negative number, got {sigma_y!r}")
        if sigma_y == 0:
            return self.data_consistency(x0, y)
        r = self.A(x0) - y
        weights = lambda s: ddnm_plus_weights(s, sigma_t, a_t, sigma_y)  # noqa: E731
        if self.has_spectrum:
            return x0 - self.filtered_pinv(r, weights)
        lam = float(weights(torch.ones(1, dtype=torch.float64))[0])
        return x0 - lam * self.A_pinv(r)

    def noisy_noise_scaling(self, v: Tensor, sigma_t: float, a_t: float, sigma_y: float) -> Tensor:
        """DDNM+ noise adjustment of the step's noise term v (= c2·e + c1·ξ):
        (I − P) v + V diag(γ_i / σ_t) Vᵀ v, γ_i / σ_t from :func:`ddnm_plus_noise_weights`.

        With the damped correction of :meth:`noisy_consistency` it keeps the noise level of the
        next state at σ_t in every direction. Operators without known singular values use the
        same scalar approximation (all singular values 1). Identity when σ_y = 0.
        """
        if sigma_y == 0:
            return v
        weights = lambda s: ddnm_plus_noise_weights(s, sigma_t, a_t, sigma_y)  # noqa: E731
        av = self.A(v)
        if self.has_spectrum:  # V diag(g(s)) Vᵀ v = V diag(g(s)/s) Uᵀ (A v)
            return v - self.A_pinv(av) + self.filtered_pinv(av, weights)
        g = float(weights(torch.ones(1, dtype=torch.float64))[0])
        return v - (1.0 - g) * self.A_pinv(av)

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    # Derived maps: P = A†A projects onto the row space ("range" part of the image).
    def project_range(self, x: Tensor) -> Tensor:
        """P x = A†A x."""
        return self.A_pinv(self.A(x))

    def project_null(self, x: Tensor) -> Tensor:
        """(I − P) x: the part of x the observation does not see."""
        return x - self.project_range(x)

    def data_consistency(self, x0: Tensor, y: Tensor) -> Tensor:
        """The range/null-space correction x0 − A†(A x0 − y) = A†y + (I − P) x0 (DDNM)."""
        return x0 - self.A_pinv(self.A(x0) - y)

    # Validation helpers shared by every operator and by the sampler.
    def check_image(self, x: Tensor, name: str = "x") -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a tensor of shape (N, C, H, W), got {shape}")
        self.y_shape(tuple(x.shape[1:]))

    def check_observation(self, y: Tensor, image_shape: ImageShape, name: str = "y") -> None:
        expected = self.y_shape(tuple(image_shape))
        if not isinstance(y, Tensor) or tuple(y.shape[1:]) != tuple(expected) or y.dim() != len(expected) + 1:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"{name} must have shape (N, {', '.join(map(str, expected))}) for "
                             f"{type(self).__name__} on images of shape {tuple(image_shape)}, got {shape}")

    def extra_repr(self) -> str:
        return ""


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
