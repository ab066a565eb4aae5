"""The adjoint of the chain's fixed point: ∂L/∂x_T and ∂L/∂ξ in one sweep (DESIGN §5).

With J = ∂F/∂z at z* and g = ∂L/∂z* (non-zero on the last row only), the adjoint w solves
w = g + w J; then ∂L/∂x_T = w ∂F/∂x_T and ∂L/∂ξ = w ∂F/∂ξ. J is strictly lower triangular (row j
of F reads z_{j−1} through the network only), so the adjoint system is strictly upper triangular
and exact after T − 1 back-substitution steps or T Picard rounds. The inputs x_T and ξ enter F
without any further network call beyond row 0's: ξ_j enters row j affinely (c1_j ξ_j, and through
the correction), so w ∂F/∂ξ is one backward pass through the cheap replay, in the same pass that
gives w ∂F/∂x_T's direct term.

Memory: the replay graph (a few (T, N, C, H, W) tensors) and one chunk of network activations,
re-run per vector–Jacobian product — nothing grows with T beyond the batch of T states.
"""
from __future__ import annotations

import warnings

import torch
from einops import rearrange, repeat
from torch import Tensor

from ..chain import Chain
from ..solver import FixedPointSolver, SolverReport, Status

__all__ = ["Linearization", "AdjointMap", "solve_adjoint"]


class Linearization:
    """Vector–Jacobian products of F(z; x_T, ξ) at (z*, x_T, ξ) with bounded memory.

    F = replay(e(z), x_T, ξ) with e_j = ε(u_j, t_j), u_0 = x_T, u_j = z_{j−1}. The replay graph (the
    update rule with e as a leaf) is kept — a few state tensors per row — while the network is
    re-run per chunk of rows for every product, so no network activations outlive a chunk.
    ``chain.x_T`` must require grad; so must ``chain.noise`` when ``wrt_noise``.
    """

    def __init__(self, chain: Chain, z: Tensor, chunk: int | None, wrt_noise: bool = False):
        self.chain, self.z = chain, z
        self.rows = chain.num_rows
        self.wrt_noise = wrt_noise
        with torch.no_grad():
            e = chain.eps(z)
        with torch.enable_grad():
            self.e_leaf = e.detach().requires_grad_()
            self.out = chain.replay(self.e_leaf)
        fz = self.out.detach()
        self.fixed_point_residual = float((fz - z).norm() / (fz.norm() + 1e-30))
        self.timesteps = chain.coefficients.timesteps.to(z.device)
        self.chunk = chunk or chain.prior.max_batch or self.rows
        self.vjps = 0

    def replay_vjp(self, w: Tensor, inputs: bool = False) -> tuple[Tensor, list[Tensor | None]]:
        """c_j = Σ_i w_i ∂F_i/∂e_j and, with ``inputs``, [w ∂F/∂x_T (direct path only), w ∂F/∂ξ]."""
        leaves = [self.e_leaf]
        if inputs:
            leaves.append(self.chain.x_T)
            if self.wrt_noise:
                leaves.append(self.chain.noise)
        with torch.enable_grad():
            grads = torch.autograd.grad(self.out, leaves, w, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]
        return grads[0], grads[1:]

    def network_vjp(self, c: Tensor, start: int, stop: int) -> Tensor:
        """Rows [start, stop) of c_j ∂ε(u_j, t_j)/∂u_j (row j's input is x_T for j = 0, else z_{j−1})."""
        out = []
        for s in range(start, stop, self.chunk):
            t_stop = min(s + self.chunk, stop)
            with torch.no_grad():
                u = self.chain.network_inputs(self.z, s, t_stop)
            with torch.enable_grad():
                u = u.detach().requires_grad_()
                rows, n = u.shape[0], u.shape[1]
                t = repeat(self.timesteps[s:t_stop], "t -> (t n)", n=n)
                e = self.chain.prior.eps(rearrange(u, "t n c h w -> (t n) c h w"), t)
                (du,) = torch.autograd.grad(e, u, rearrange(c[s:t_stop], "t n c h w -> (t n) c h w"),
                                            allow_unused=True)
            out.append(torch.zeros_like(u) if du is None else du.detach())
            self.vjps += rows
            del e, u
        return torch.cat(out)

    def input_grads(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        """(w ∂F/∂x_T, w ∂F/∂ξ or None): x_T's direct path plus the row-0 network input."""
        c, inputs = self.replay_vjp(w, inputs=True)
        grad_x_T = inputs[0] + self.network_vjp(c, 0, 1)[0]
        return grad_x_T, (inputs[1] if self.wrt_noise else None)


class AdjointMap:
    """The adjoint map w ↦ g + w ∂F/∂z, with its rows in reversed order.

    Row m of w ∂F/∂z is c_{m+1} ∂ε_{m+1}/∂u (u_{m+1} = z_m) and depends on rows ≥ m + 1 of w
    only: strictly upper triangular. Reversing the rows (row r holds original row T − 1 − r) makes
    it strictly lower triangular like F itself, so the solver backends — and their assumptions
    (Picard exact after T rounds, exact prefixes) — apply unchanged. ``rows(w, start, stop)``
    gives rows [start, stop) of the map (exact whatever the other rows hold) for structured solvers.
    """

    def __init__(self, lin: Linearization, g: Tensor):
        self.lin, self.g = lin, g
        self.num_rows = lin.rows

    def original_rows(self, w: Tensor, lo: int, hi: int) -> Tensor:
        """Rows [lo, hi) of g + w ∂F/∂z in the original order (w in the original order)."""
        T = self.num_rows
        c, _ = self.lin.replay_vjp(w)
        out = self.g[lo:hi].clone()
        a, b = lo + 1, min(hi + 1, T)
        if a < b:
            out[: b - a] += self.lin.network_vjp(c, a, b)
        return out

    def __call__(self, w_rev: Tensor) -> Tensor:
        return self.original_rows(w_rev.flip(0), 0, self.num_rows).flip(0)

    def rows(self, w_rev: Tensor, start: int, stop: int) -> Tensor:
        T = self.num_rows
        return self.original_rows(w_rev.flip(0), T - stop, T - start).flip(0)


def solve_adjoint(lin: Linearization, g: Tensor,
                  solver: FixedPointSolver | None) -> tuple[Tensor, int, SolverReport | None]:
    """(w, rounds, report): the adjoint of g (already normalised) by back-substitution (solver
    None: row T − 2 down to row 0, exact) or by a solver on the row-reversed map."""
    adj = AdjointMap(lin, g)
    if solver is None:
        w = adj.g.clone()
        for m in range(lin.rows - 2, -1, -1):   # back-substitution, last row first
            w[m] = adj.original_rows(w, m, m + 1)[0]
        return w, lin.rows - 1, None
    with torch.no_grad():
        report = solver.solve(adj, adj.g.flip(0))
    if report.status is not Status.CONVERGED:
        warnings.warn(f"the adjoint solve stopped with status {report.status.value} after "
                      f"{report.rounds} rounds: the implicit gradient is approximate "
                      "(use adjoint='sequential', or 'picard' with adjoint_tol=0: both exact)",
                      RuntimeWarning, stacklevel=4)
    return report.solution.flip(0), report.rounds, report
