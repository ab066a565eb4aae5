"""DDNM+ (Wang et al., ICLR 2023, Eq. 19): the chain for noisy observations (σ_y > 0)."""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..chain import Chain

__all__ = ["DDNMPlusChain"]


class DDNMPlusChain(Chain):
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
