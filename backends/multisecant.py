"""A multisecant Jacobian model for the triangular solver's replay (``linearize="multisecant"``).

The default model replays e_j(u) ≈ E_j + γ_j J_s (u − U_j): the Gaussian surrogate's Jacobian J_s,
scaled per row by the secant of the row's last two network evaluations. Along the directions the
replay actually moves a row it is off by ρ = 0.52–0.79 (median per problem, relative to the
network's exact JVP; ``benchmarks/jacobian_models.py``). This model adds a type-II Broyden
multisecant update of B = γ_j J_s built from the row's last m secant pairs (s_i, y_i) = (ΔU, ΔE) of
consecutive network evaluations (Fang & Saad 2009; Broyden's "good" update for several secants):

    M_j = B + (Y − B S)(SᵀS + λ)⁻¹ Sᵀ,

exact along every stored s (up to λ) and equal to B off their span. It costs no network call and
keeps 2m copies of the trajectory. At the row's own evaluation point M_j (u − U_j) = 0, so the
first unaccepted row is still evaluated exactly and the solver stays exact after T rounds.
"""
from __future__ import annotations

import torch
from torch import Tensor

# λ relative to the Gram's mean diagonal. Nearly parallel pairs taken at different points make the
# fit's gain along their difference large; 1e-3 tames it (flower sr4, T = 100: stop 54 → 45 rounds
# against 1e-6, the same rounds on the twelve T = 20 problems; benchmarks/acceleration.py).
RELATIVE_RIDGE = 1e-3


class SecantHistory:
    """Each (row, image)'s last ``memory`` secant pairs, and the correction they imply.

    Shapes: the trajectory is (rows, n, *state); the history is (memory, rows, n, *state), newest
    last, with ``count`` (rows, n) the pairs each entry holds.
    """

    def __init__(self, like: Tensor, memory: int):
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
            raise ValueError(f"memory must be a positive int, got {memory!r}")
        self.memory = memory
        self.s = torch.zeros((memory,) + tuple(like.shape), dtype=like.dtype, device=like.device)
        self.y = torch.zeros_like(self.s)
        self.count = torch.zeros(like.shape[:2], dtype=torch.long, device=like.device)
        self._residual: Tensor | None = None    # Y − B S, per round (B changes with γ)
        self._gram: Tensor | None = None
        self._held: set[int] = set()             # rows with a pair for some image, this round

    def reset(self) -> None:
        self.count.zero_()
        self._residual = self._gram = None

    def push(self, rows: Tensor, images: Tensor, s: Tensor, y: Tensor) -> None:
        """Store a new pair for each (rows[i], images[i]), dropping its oldest."""
        if rows.numel() == 0:
            return
        self.s[:, rows, images] = torch.cat([self.s[1:, rows, images], s.unsqueeze(0)])
        self.y[:, rows, images] = torch.cat([self.y[1:, rows, images], y.unsqueeze(0)])
        self.count[rows, images] = (self.count[rows, images] + 1).clamp(max=self.memory)

    def prepare(self, f, scale: Tensor, first: int = 0) -> None:
        """Y − B S and the Gram SᵀS (float64) of rows ≥ ``first`` that hold pairs, for this round's
        B = γ J_s; rows before ``first`` (accepted) are not replayed with the model."""
        self._residual = self._gram = None
        held = ((self.count[first:] > 0).any(1).nonzero().flatten() + first).tolist()   # one sync a round
        self._held = set(held)
        if not held:
            return
        lo, hi = held[0], held[-1] + 1
        m, n, state = self.memory, self.s.shape[2], self.s.shape[3:]
        s, y = self.s[:, lo:hi], self.y[:, lo:hi]
        rows = torch.arange(lo, hi, device=s.device).view(1, -1, 1).expand(m, -1, n).reshape(-1)
        bs = f.surrogate_jvp(rows, s.reshape(-1, *state)).view_as(s)
        spatial = (1,) * len(state)
        self._residual = y - scale[lo:hi].view(1, hi - lo, n, *spatial) * bs       # (m, rows, n, ...)
        age = torch.arange(m - 1, -1, -1, device=s.device).view(m, 1, 1)
        self._used = (age < self.count[lo:hi].unsqueeze(0)).permute(1, 2, 0)      # (rows, n, m)
        flat = s.flatten(3)
        gram = torch.stack([torch.stack([(flat[a] * flat[b]).sum(-1, dtype=torch.float64) for b in range(m)], -1)
                            for a in range(m)], -2)                                # (rows, n, m, m)
        used = self._used.to(gram.dtype)
        gram = gram * used.unsqueeze(-1) * used.unsqueeze(-2)
        ridge = RELATIVE_RIDGE * torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1) / used.sum(-1).clamp_min(1)
        eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
        self._gram = gram + ridge.clamp_min(1e-300)[..., None, None] * eye + torch.diag_embed(1 - used)
        self._lo, self._hi = lo, hi

    def holds(self, j: int) -> bool:
        """Whether some image of row j holds a pair this round (decided in :meth:`prepare`, so the
        replay loop does not wait on the device row by row)."""
        return self._gram is not None and j in self._held

    def correction(self, j: int, du: Tensor) -> Tensor:
        """(Y − B S)(SᵀS + λ)⁻¹ Sᵀ du for row j, du (n, *state): zero where the row has no pair."""
        if not self.holds(j):
            return torch.zeros_like(du)
        r = j - self._lo
        rhs = (self.s[:, j].flatten(2) * du.flatten(1).unsqueeze(0)).sum(-1, dtype=torch.float64).T   # (n, m)
        rhs = rhs * self._used[r].to(rhs.dtype)
        coef = torch.linalg.solve(self._gram[r], rhs.unsqueeze(-1)).squeeze(-1).to(du.dtype)       # (n, m)
        return torch.einsum("and,na->nd", self._residual[:, r].flatten(2), coef).view_as(du)
