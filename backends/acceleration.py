"""Accelerating the triangular solver's own iteration (issue #19, item 5).

The triangular solver's round is a map z ↦ G(z): evaluate the network where the inputs moved,
replay the chain linearised (``backends/triangular.py``). Its tail converges geometrically, and on
the learned prior consecutive changes of a row point in nearly opposite directions (the secant
model overshoots). Three ways to use that, each applied only to rows strictly after the first
unaccepted row and inside this round's window, so the accepted prefix and the first unaccepted row
take the plain step and the solver stays exact after T rounds:

* ``"anderson"``: ParaTAA's triangular Anderson (Tang et al., ICML 2024, ``taa_step``): row j's
  mixing coefficients minimise the residuals of rows p..j (the unaccepted rows it depends on),
  memory m (2–3), Tikhonov λ relative to the Gram's trace, float64 Grams.
* ``"aitken"``: per-row Aitken relaxation z_j ← z_j + R_j / (1 − r_j), r_j = ⟨R_j^k, R_j^{k−1}⟩ /
  ‖R_j^{k−1}‖² (Anderson with memory 2 and no coupling between rows).
* ``"damping"``: ELK-style damping of the Jacobian model (Gonzalez et al. 2024): the secant scales γ
  of rows past the first unaccepted one are replayed as (1 − k)·γ. Applied in the replay, not here.

Any history is dropped when the solver falls back to a plain (Picard) round.
"""
from __future__ import annotations

import torch
from torch import Tensor

ACCELERATIONS = ("none", "anderson", "aitken", "damping")
AITKEN_RATE = (-0.9, 0.5)   # r clipped: relaxation 1/(1 − r) stays within [0.53, 2]


class RowAccelerator:
    """Extrapolates the replay's output row by row (``"anderson"`` or ``"aitken"``)."""

    def __init__(self, kind: str, memory: int = 2, regularization: float = 1e-3):
        if kind not in ("anderson", "aitken"):
            raise ValueError(f"kind must be 'anderson' or 'aitken', got {kind!r}")
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 2:
            raise ValueError(f"memory must be an int ≥ 2, got {memory!r}")
        if not regularization >= 0:
            raise ValueError(f"regularization must be non-negative, got {regularization!r}")
        self.kind, self.memory, self.regularization = kind, memory, regularization
        self.iterates: list[Tensor] = []       # z of the last rounds, newest last
        self.residuals: list[Tensor] = []      # G(z) − z of the same rounds
        self.valid: Tensor | None = None       # (rows, n): rounds in a row's current history

    def reset(self) -> None:
        self.iterates, self.residuals, self.valid = [], [], None

    def __call__(self, z: Tensor, fz: Tensor, mix: Tensor) -> Tensor:
        """The next iterate: fz, except for entries ``mix`` (rows, n) that have history.

        ``mix`` marks the rows that may be extrapolated (in the window, after the first
        unaccepted row); a row outside it loses its history (it is either frozen or replayed
        with the surrogate, a different map).
        """
        residual = fz - z
        count = torch.zeros_like(mix, dtype=torch.long) if self.valid is None else self.valid
        count = torch.where(mix, (count + 1).clamp(max=self.memory), torch.zeros_like(count))
        self.iterates = (self.iterates + [z])[-self.memory:]
        self.residuals = (self.residuals + [residual])[-self.memory:]
        self.valid = count
        if len(self.iterates) < 2:
            return fz
        if self.kind == "aitken":
            out = z + self._aitken(residual, count >= 2)
        else:
            # Only the rows with history take part (a window's worth): rows before them add
            # nothing to the prefix sums, so the slice is exact and bounds the float64 buffers.
            rows = (count >= 2).any(1).nonzero()
            if not rows.numel():
                return fz
            lo, hi = int(rows.min()), int(rows.max()) + 1
            out = fz.clone()
            out[lo:hi] = z[lo:hi] + self._anderson(lo, hi, count[lo:hi])
        ok = torch.isfinite(out).flatten(2).all(-1) & mix
        return torch.where(ok.view(*ok.shape, *(1,) * (z.dim() - 2)), out, fz)

    def _aitken(self, residual: Tensor, usable: Tensor) -> Tensor:
        flat, last = residual.flatten(2).double(), self.residuals[-2].flatten(2).double()
        rate = (flat * last).sum(-1) / (last * last).sum(-1).clamp_min(1e-300)
        rate = torch.where(usable, rate.clamp(*AITKEN_RATE), torch.zeros_like(rate))
        factor = (1.0 / (1.0 - rate)).to(residual.dtype)
        return factor.view(*factor.shape, *(1,) * (residual.dim() - 2)) * residual

    def _anderson(self, lo: int, hi: int, count: Tensor) -> Tensor:
        """Type-II Anderson in difference form with ParaTAA's triangular least squares.

        With ΔZ, ΔR the differences of a row's stored iterates and residuals (k = count − 1
        columns), B_j = Σ_{p ≤ i ≤ j} ΔR_iᵀΔR_i, g_j = Σ ΔR_iᵀR_i (rows i with the same history),
        γ_j = (B_j + λ·tr(B_j)/k·I)⁻¹ g_j and z_j ← z_j + R_j − (ΔZ_j + ΔR_j) γ_j.
        """
        residual = self.residuals[-1][lo:hi]
        shape = residual.shape
        z_hist = torch.stack([z[lo:hi] for z in self.iterates]).flatten(3).double()   # (h, rows, n, D)
        r_hist = torch.stack([r[lo:hi] for r in self.residuals]).flatten(3).double()
        h = z_hist.shape[0]
        dz, dr = z_hist[1:] - z_hist[:-1], r_hist[1:] - r_hist[:-1]   # (h−1, rows, n, D)
        # Columns older than a row's history are masked out (their Gram rows become identity).
        age = torch.arange(h - 1, 0, -1, device=residual.device).view(-1, 1, 1)  # column i spans rounds
        usable = (age < count.unsqueeze(0))                                       # (h−1, rows, n)
        dz, dr = dz * usable.unsqueeze(-1), dr * usable.unsqueeze(-1)
        gram = torch.einsum("arnd,brnd->rnab", dr, dr)
        rhs = torch.einsum("arnd,rnd->rna", dr, r_hist[-1])
        has = count >= 2
        # Triangular coupling: prefix sums over the rows, restricted to rows with history.
        weight = has.to(gram.dtype)
        gram = torch.cumsum(gram * weight[..., None, None], dim=0)
        rhs = torch.cumsum(rhs * weight[..., None], dim=0)
        k = usable.sum(0).clamp_min(1).to(gram.dtype)                              # (rows, n)
        trace = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)
        eye = torch.eye(h - 1, dtype=gram.dtype, device=gram.device)
        reg = (self.regularization * trace / k).clamp_min(1e-300)
        unused = (~usable).permute(1, 2, 0).to(gram.dtype)                        # keep it invertible
        system = gram + reg[..., None, None] * eye + torch.diag_embed(unused)
        gamma = torch.linalg.solve(system, rhs.unsqueeze(-1)).squeeze(-1)          # (rows, n, h−1)
        gamma = torch.where(has.unsqueeze(-1), gamma, torch.zeros_like(gamma))
        step = r_hist[-1] - torch.einsum("arnd,rna->rnd", dz + dr, gamma)
        return step.to(residual.dtype).view(shape)
