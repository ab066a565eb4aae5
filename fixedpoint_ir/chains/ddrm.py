"""The DDRM chain (Kawar, Elad, Ermon, Song, "Denoising Diffusion Restoration Models", NeurIPS 2022).

DDRM works in the spectral basis of A = U S Vᵀ with the variance-exploding state x̄ = x/√ᾱ,
noise level σ_t = √((1−ᾱ_t)/ᾱ_t), and ȳ = S⁻¹Uᵀy (the observation in V's coordinates; its noise
there has standard deviation σ_y/s_i). From x̂0 = x̄_t − σ_t ε(x_t, t) one step to the level σ
draws, per coordinate i of Vᵀx̄ (Eq. 8 of the paper):

    s_i = 0:          x̂0_i + √(1−η²) σ (x̄_t,i − x̂0_i)/σ_t              + η σ ξ_i
    σ < σ_y/s_i:      x̂0_i + √(1−η²) σ (ȳ_i − x̂0_i)/(σ_y/s_i)           + η σ ξ_i
    σ ≥ σ_y/s_i:      (1−η_b) x̂0_i + η_b ȳ_i                            + √(σ² − η_b² σ_y²/s_i²) ξ_i

In the image basis (P = A†A; (x̄_t − x̂0)/σ_t = ε) that is

    x̄' = x̂0 + (I−P) σ (√(1−η²) ε + η ξ) + V diag(W) Vᵀ (A†y − x̂0) + V diag(N) Vᵀ ξ,

W(s), N(s) the weights of the two range cases; V diag(W) Vᵀ (A†y − x̂0) = V diag(W/s) Uᵀ (y − A x̂0)
is :meth:`~fixedpoint_ir.operators.Operator.filtered_pinv`. The network is used at the previous
state only and ξ_j is drawn up front, so the step is affine in x for a fixed ε: the chain is a
strictly lower-triangular recurrence like DDNM's, and every solver reaches its sequential result.

With σ_y = 0 only P is needed (W = η_b, N = 1 for every s > 0), so any operator whose A†A is an
orthogonal projector works; σ_y > 0 needs the singular values (``operator.has_spectrum``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..chain import Chain
from .spectral import SpectralChoice, check_spectral_operator, check_unit

__all__ = ["DDRM", "DDRMChain", "ddrm_weights", "check_spectral_operator"]


def ddrm_weights(s: Tensor, sigma: float, sigma_y: float, eta: float, eta_b: float) -> tuple[Tensor, Tensor]:
    """(W, N) of the two range cases of Eq. 8 for singular values s > 0 and next level σ (VE)."""
    if sigma_y == 0:
        return torch.full_like(s, eta_b), torch.full_like(s, sigma)
    noisy = sigma * s < sigma_y       # σ < σ_y / s: the observation is noisier than the state
    w = torch.where(noisy, math.sqrt(1 - eta ** 2) * sigma * s / sigma_y, torch.full_like(s, eta_b))
    n = torch.where(noisy, torch.full_like(s, eta * sigma),
                    (sigma ** 2 - (eta_b * sigma_y / s) ** 2).clamp_min(0).sqrt())
    return w, n


class DDRMChain(Chain):
    """The DDRM chain over the states of the fixed-point system (see the module docstring).

    ``sigma_y`` is the observation noise on the [-1, 1] scale; the step's own ``c1``/``c2`` of
    the coefficients are not used (η, η_b take their place).
    """

    def __init__(self, prior, coefficients, x_T: Tensor, noise: Tensor, operator, y: Tensor, *,
                 sigma_y: float = 0.0, eta: float = 0.85, eta_b: float = 1.0, surrogate=(0.0, 0.25)):
        super().__init__(prior, coefficients, x_T, noise, None, None, surrogate)
        DDRM(eta, eta_b).check_operator(operator, sigma_y)
        self.operator, self.y = operator, y
        self.sigma_y, self.eta, self.eta_b = float(sigma_y), float(eta), float(eta_b)
        b = coefficients.b.tolist()
        self._sqrt_1mb = [math.sqrt(max(0.0, 1.0 - v)) for v in b]
        self._sigma_next = [math.sqrt(max(0.0, 1.0 - v) / v) for v in b]   # VE level of the next state
        self._root_eta = math.sqrt(1.0 - self.eta ** 2)

    @property
    def reads_noise(self) -> bool:
        """Always: the range part of the next state is Pξ whatever η (σ_y = 0), or filtered Aξ."""
        return True

    def step(self, j: int, x: Tensor, e: Tensor) -> Tensor:
        op, y = self.operator, self.y
        x0 = (x - self._sqrt_1ma[j] * e) / self._sqrt_a[j]
        xi = self.noise[j]
        v = self._root_eta * e + self.eta * xi          # null-space direction, DDIM-like
        if self.sigma_y == 0:  # W = η_b, N = σ: x̄' = x̂0 + η_b A†(y − A x̂0) + σ((I−P)v + Pξ)
            data = x0 + self.eta_b * op.A_pinv(y - op.A(x0)) if self.eta_b else x0
            return self._sqrt_b[j] * data + self._sqrt_1mb[j] * (v - op.project_range(v - xi))
        sigma = self._sigma_next[j]
        weights = lambda s: ddrm_weights(s, sigma, self.sigma_y, self.eta, self.eta_b)  # noqa: E731
        x_bar = (x0 + sigma * op.project_null(v)
                 + op.filtered_pinv(y - op.A(x0), lambda s: weights(s)[0])
                 + op.filtered_pinv(op.A(xi), lambda s: weights(s)[1]))
        return self._sqrt_b[j] * x_bar


@dataclass(frozen=True)
class DDRM(SpectralChoice):
    """DDRM's parameters: ``eta`` (η, stochasticity; the paper's 0.85) and ``eta_b`` (η_b, weight
    of the observation in the well-determined directions; the paper's 1.0)."""

    eta: float = 0.85
    eta_b: float = 1.0
    name = "ddrm"
    chain_class = DDRMChain

    def __post_init__(self):
        check_unit(self.eta, "eta")
        check_unit(self.eta_b, "eta_b")
