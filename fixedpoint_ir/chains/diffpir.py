"""The DiffPIR chain (Zhu, Zhang, Liang, Cao, Wen, Timofte, Van Gool, "Denoising Diffusion Models
for Plug-and-Play Image Restoration", CVPR 2023 workshops, Algorithm 1).

One step from t (ᾱ_t = a, σ̄_t = √((1−a)/a)) to the next level (ᾱ = b):

    x̂0   = (x_t − √(1−a) ε(x_t, t)) / √a                               (the prior's denoiser)
    x̂0'  = argmin_z ‖y − A z‖² + ρ_t ‖z − x̂0‖²,  ρ_t = λ σ_y² / σ̄_t²    (data proximal step)
    ε̂    = (x_t − √a x̂0') / √(1−a)                                     (the noise that x̂0' implies)
    x'   = √b x̂0' + √(1−b) (√(1−ζ) ε̂ + √ζ ξ)

In the spectral basis the proximal step is x̂0' = x̂0 + V diag(s²/(s² + ρ)) Vᵀ (A†y − x̂0)
= x̂0 + V diag(s/(s² + ρ)) Uᵀ (y − A x̂0), i.e. :meth:`~fixedpoint_ir.operators.Operator.filtered_pinv`
with weights s²/(s² + ρ); σ_y = 0 gives ρ = 0 and DDNM's projection A†y + (I−P) x̂0. The step is
affine in x_t for a fixed ε and uses ε at the previous state only: a strictly lower-triangular
recurrence, solved in parallel to the sequential answer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..chain import Chain
from .spectral import SpectralChoice, check_unit

__all__ = ["DiffPIR", "DiffPIRChain", "proximal_weights"]


def proximal_weights(rho: float):
    """s ↦ s²/(s² + ρ): the proximal step's weight on each singular direction."""
    return lambda s: s.square() / (s.square() + rho)


class DiffPIRChain(Chain):
    """The DiffPIR chain over the states of the fixed-point system (see the module docstring)."""

    def __init__(self, prior, coefficients, x_T: Tensor, noise: Tensor, operator, y: Tensor, *,
                 sigma_y: float = 0.0, zeta: float = 0.3, lam: float = 1.0, surrogate=(0.0, 0.25)):
        super().__init__(prior, coefficients, x_T, noise, None, None, surrogate)
        DiffPIR(zeta, lam).check_operator(operator, sigma_y)
        self.operator, self.y = operator, y
        self.sigma_y, self.zeta, self.lam = float(sigma_y), float(zeta), float(lam)
        a, b = coefficients.a.tolist(), coefficients.b.tolist()
        self._rho = [self.lam * self.sigma_y ** 2 * v / (1.0 - v) for v in a]   # λ σ_y² / σ̄_t²
        self._keep = [math.sqrt(max(0.0, 1.0 - v)) * math.sqrt(1.0 - self.zeta) for v in b]
        self._fresh = [math.sqrt(max(0.0, 1.0 - v)) * math.sqrt(self.zeta) for v in b]

    @property
    def reads_noise(self) -> bool:
        """Where ζ > 0: the fresh share of the re-noising."""
        return any(self._fresh)

    def data_step(self, x0: Tensor, j: int) -> Tensor:
        """x̂0' = argmin_z ‖y − A z‖² + ρ_j ‖z − x̂0‖²."""
        residual = self.y - self.operator.A(x0)
        if self._rho[j] == 0:
            return x0 + self.operator.A_pinv(residual)
        return x0 + self.operator.filtered_pinv(residual, proximal_weights(self._rho[j]))

    def step(self, j: int, x: Tensor, e: Tensor) -> Tensor:
        x0 = self.data_step((x - self._sqrt_1ma[j] * e) / self._sqrt_a[j], j)
        eps_hat = (x - self._sqrt_a[j] * x0) / self._sqrt_1ma[j]
        x_next = self._sqrt_b[j] * x0 + self._keep[j] * eps_hat
        if self._fresh[j]:
            x_next = x_next + self._fresh[j] * self.noise[j]
        return x_next


@dataclass(frozen=True)
class DiffPIR(SpectralChoice):
    """DiffPIR's parameters: ``zeta`` (ζ, share of fresh noise in the re-noising) and ``lam``
    (λ, strength of the prior in the proximal step; only matters when σ_y > 0)."""

    zeta: float = 0.3
    lam: float = 1.0
    name = "diffpir"
    chain_class = DiffPIRChain

    def __post_init__(self):
        check_unit(self.zeta, "zeta")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) \
                or not math.isfinite(self.lam) or self.lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {self.lam!r}")
