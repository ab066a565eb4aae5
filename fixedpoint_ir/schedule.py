"""Noise schedules and the DDIM timestep subsequence (DESIGN §2).

Everything here is plain tensor arithmetic in float64: the coefficients are computed once per
sampler and cast to the working dtype by the chain.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "linear_betas",
    "alphas_cumprod_from_betas",
    "check_alphas_cumprod",
    "uniform_timesteps",
    "StepCoefficients",
]


def linear_betas(num_steps: int = 1000, start: float = 1e-4, end: float = 0.02) -> Tensor:
    """The linear β schedule of DDPM (Ho et al., 2020) used by the public ADM / DDPM checkpoints."""
    return torch.linspace(start, end, num_steps, dtype=torch.float64)


def alphas_cumprod_from_betas(betas: Tensor) -> Tensor:
    """ᾱ_t = ∏_{i ≤ t} (1 − β_i)."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def check_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """Validate a prior's ᾱ schedule: 1-D, finite, in (0, 1], strictly decreasing."""
    if not isinstance(alphas_cumprod, Tensor):
        alphas_cumprod = torch.as_tensor(alphas_cumprod)
    if alphas_cumprod.dim() != 1 or alphas_cumprod.numel() < 2:
        raise ValueError(
            "alphas_cumprod must be a 1-D tensor with at least 2 entries, "
            f"got shape {tuple(alphas_cumprod.shape)}"
        )
    ac = alphas_cumprod.detach().to(torch.float64)
    if not torch.isfinite(ac).all() or (ac <= 0).any() or (ac > 1).any():
        raise ValueError("alphas_cumprod must be finite and lie in (0, 1]")
    if not (ac[1:] < ac[:-1]).all():
        raise ValueError("alphas_cumprod must be strictly decreasing (ᾱ_t = ∏(1 − β_i) with β_i > 0)")
    return ac


def uniform_timesteps(steps: int, num_train_steps: int = 1000) -> Tensor:
    """The DDIM subsequence t_0 > t_1 > … > t_{T−1} = 0 (DESIGN §2).

    skip = num_train_steps // steps and seq = [0, skip, …] with `steps` entries, reversed. For
    T = 20 this gives 950, 900, …, 0: x_T lives at t_0 = 950, not at 999.
    """
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if not 1 <= steps <= num_train_steps:
        raise ValueError(f"steps must lie in [1, {num_train_steps}], got {steps}")
    skip = num_train_steps // steps
    return torch.arange(0, skip * steps, skip, dtype=torch.long).flip(0)


@dataclass(frozen=True)
class StepCoefficients:
    """Per-step scalars of the chain, one entry per state row j (all float64, shape (T,)).

    a[j] = ᾱ_{t_j}, b[j] = ᾱ_{s_j} (b[T−1] = 1), c1[j] = √(1−b_j)·nw, c2[j] = √(1−b_j)·√(1−etw²).
    """

    timesteps: Tensor
    a: Tensor
    b: Tensor
    c1: Tensor
    c2: Tensor

    @classmethod
    def build(cls, alphas_cumprod: Tensor, timesteps: Tensor, etw: float, nw: float) -> "StepCoefficients":
        for name, value in (("etw", etw), ("nw", nw)):
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        ac = check_alphas_cumprod(alphas_cumprod).cpu()
        timesteps = torch.as_tensor(timesteps, dtype=torch.long).cpu()
        if timesteps.dim() != 1 or timesteps.numel() == 0:
            raise ValueError("timesteps must be a non-empty 1-D tensor")
        if (timesteps < 0).any() or (timesteps >= ac.numel()).any():
            raise ValueError(f"timesteps must lie in [0, {ac.numel()}), got {timesteps.tolist()}")
        if timesteps.numel() > 1 and not (timesteps[1:] < timesteps[:-1]).all():
            raise ValueError("timesteps must be strictly decreasing")
        a = ac[timesteps]
        b = torch.cat([ac[timesteps[1:]], torch.ones(1, dtype=torch.float64)])
        root = (1.0 - b).clamp_min(0.0).sqrt()
        c1 = root * float(nw)
        c2 = root * (1.0 - float(etw) ** 2) ** 0.5
        return cls(timesteps=timesteps, a=a, b=b, c1=c1, c2=c2)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())
