"""Row-level access to a chain, shared by the published samplers (ParaDiGMS, ParaTAA).

They work on one step of the recurrence at a time rather than on F, so they need the chain's
``step``, ``eps_at``, ``x_T`` and ``posterior_std`` (:class:`fixedpoint_ir.chain.Chain`).
"""
from __future__ import annotations

import torch
from torch import Tensor

NEEDS = ("step", "eps_at", "x_T", "posterior_std")
FILLS = ("last", "given")   # where rows entering the window start: the last state, or z0


def require_chain(f, solver: str) -> None:
    for attr in NEEDS:
        if not hasattr(f, attr):
            raise TypeError(f"{solver} steps the chain row by row: it needs a map with "
                            f"{', '.join(NEEDS)} (a Chain); {type(f).__name__} has no {attr!r}")


def inputs_of(f, z: Tensor) -> Tensor:
    """u_j: x_T for row 0, z_{j−1} otherwise (shape of z)."""
    return torch.cat([f.x_T.unsqueeze(0), z[:-1]])


def evaluate(f, z: Tensor, live: Tensor) -> Tensor | None:
    """e_j(u_j) on the (row, image) entries where ``live`` (T, N) is True, in ONE batch.

    Returns a (T, N, …) tensor (zeros elsewhere), or None when an evaluation is not finite.
    """
    rows, images = live.nonzero(as_tuple=True)
    e = torch.zeros_like(z)
    if rows.numel():
        values = f.eps_at(z, rows, images)
        if not bool(torch.isfinite(values).all()):
            return None
        e[rows, images] = values.to(z.dtype)
    return e


def rms(v: Tensor) -> Tensor:
    """Root mean square per (row, image): (T, N, …) → (T, N)."""
    return v.flatten(2).pow(2).mean(-1).sqrt()
