"""What DEQ inversion optimises: x_T alone, or x_T and the noises ξ_j the chain draws.

Under a chain with fresh noise at every step (nw > 0; the task defaults of every noiseless
task use nw = 0.75–1) the restored image hardly depends on x_T: each step re-noises the
denoised estimate with c1_j ξ_j, so x_T's influence is washed out after the first steps and the
noises carry the randomness. Optimising x_T alone then moves a reference loss by a fraction of a
percent. The ξ_j are as exact to differentiate as x_T (the adjoint gives both in one sweep), so
``variables="auto"`` optimises them whenever the chain reads them.

The parameterisation is the plain one of the DEQ inversion literature (x_T and ξ themselves, as
DeqIR's code does for x_T); ``keep_norm`` optionally projects every one of them back to its
initial norm after each step (the shell where N(0, I) samples live). A sampler with
``noise="shared"`` (one ξ for all steps) optimises that one ξ: its gradient is the sum over steps.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["VARIABLES", "InversionVariables"]

VARIABLES = ("auto", "x_T", "all")


def _norms(t: Tensor) -> Tensor:
    """Per-image norms of (…, N, C, H, W) (one per leading index), shaped to broadcast."""
    return t.flatten(-3).norm(dim=-1)[..., None, None, None]


class InversionVariables:
    """The optimised tensors: x_T (N, C, H, W) and, when included, ξ (T or 1, N, C, H, W).

    Args:
        x_T: the starting x_T; noise: the chain's ξ (T, N, C, H, W).
        variables: ``"auto"`` (ξ too when the chain reads it), ``"x_T"`` or ``"all"``.
        reads_noise: whether the chain reads its noises (:attr:`Chain.reads_noise`).
        shared: the sampler draws one ξ for all steps (``noise="shared"``).
    """

    def __init__(self, x_T: Tensor, noise: Tensor, variables: str, reads_noise: bool, shared: bool):
        if variables not in VARIABLES:
            raise ValueError(f"variables must be one of {VARIABLES}, got {variables!r}")
        if variables == "all" and not reads_noise:
            raise ValueError("variables='all' but this chain never reads its noises ξ_j (nw = 0): "
                             "only x_T moves the restoration; use variables='x_T' or 'auto'")
        self.with_noise = reads_noise and variables != "x_T"
        self.steps = noise.shape[0]
        self.x_T = x_T.detach().clone().requires_grad_()
        self.initial_noise = noise.detach()
        self.shared = bool(shared) and self.with_noise
        self.noise: Tensor | None = None
        if self.with_noise:
            if self.shared and not torch.equal(noise[:1].expand_as(noise), noise):
                raise ValueError("the sampler uses one noise for all steps (noise='shared'), but the "
                                 "given noise has different rows: give noise whose rows are equal, "
                                 "or use a sampler with noise='per_step'")
            start = noise[:1] if self.shared else noise
            self.noise = start.detach().clone().requires_grad_()
        self._x_norms = _norms(self.x_T.detach())
        self._noise_norms = None if self.noise is None else _norms(self.noise.detach())

    @property
    def names(self) -> tuple[str, ...]:
        return ("x_T", "noise") if self.with_noise else ("x_T",)

    def describe(self) -> str:
        if not self.with_noise:
            return "x_T"
        return "x_T and the shared noise ξ" if self.shared else \
            f"x_T and the {self.steps} per-step noises ξ_j"

    def parameters(self) -> list[Tensor]:
        return [self.x_T] if self.noise is None else [self.x_T, self.noise]

    def current(self) -> tuple[Tensor, Tensor]:
        """(x_T, ξ of shape (T, N, C, H, W)) now, detached copies."""
        x_T = self.x_T.detach().clone()
        if self.noise is None:
            return x_T, self.initial_noise
        noise = self.noise.detach().clone()
        return x_T, (noise.expand(self.steps, *noise.shape[1:]) if self.shared else noise)

    def set_grads(self, grad: Tensor, noise_grad: Tensor | None) -> None:
        self.x_T.grad = grad.to(self.x_T.dtype)
        if self.noise is not None:
            g = torch.zeros_like(self.noise) if noise_grad is None else noise_grad.to(self.noise.dtype)
            self.noise.grad = g.sum(0, keepdim=True) if self.shared else g

    @torch.no_grad()
    def keep_norms(self) -> None:
        """Rescale x_T (per image) and every ξ_j (per step and image) to their initial norms."""
        self.x_T.mul_(self._x_norms / _norms(self.x_T).clamp_min(1e-30))
        if self.noise is not None:
            self.noise.mul_(self._noise_norms / _norms(self.noise).clamp_min(1e-30))
