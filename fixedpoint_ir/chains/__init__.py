"""Chain choices beyond DDNM: which update rule the sampler's fixed-point system replays.

Every chain here uses the network only at the previous state and noises drawn up front, so its
map F is strictly lower triangular (DESIGN §11): every solver applies and the fixed point is the
chain's own sequential result. A choice is a small frozen dataclass holding the chain's
parameters; ``Sampler(prior, op, chain="ddrm")`` takes the registered defaults, and
``Sampler(prior, op, chain=DDRM(eta=0.5))`` sets them.

* :class:`DDNM` — the range/null-space chain of DeqIR (``fixedpoint_ir.chain``), parameters
  ``etw`` / ``nw`` of the Sampler. The default.
* :class:`~fixedpoint_ir.chains.ddrm.DDRM` — Kawar et al. 2022, per-singular-value mixing.
* :class:`~fixedpoint_ir.chains.diffpir.DiffPIR` — Zhu et al. 2023, proximal data step and re-noising.
"""
from __future__ import annotations

from dataclasses import dataclass

from .ddrm import DDRM, DDRMChain
from .diffpir import DiffPIR, DiffPIRChain

__all__ = ["DDNM", "DDRM", "DiffPIR", "DDRMChain", "DiffPIRChain", "CHAINS", "resolve_chain"]


@dataclass(frozen=True)
class DDNM:
    """The DDIM + range/null-space chain (DESIGN §2); its weights are the Sampler's etw / nw."""

    name = "ddnm"


CHAINS = {"ddnm": DDNM, "ddrm": DDRM, "diffpir": DiffPIR}


def resolve_chain(choice) -> DDNM | DDRM | DiffPIR:
    """A chain choice from a registered name or an instance (``ValueError`` otherwise)."""
    if isinstance(choice, (DDNM, DDRM, DiffPIR)):
        return choice
    if isinstance(choice, str) and choice in CHAINS:
        return CHAINS[choice]()
    raise ValueError(f"chain must be one of {', '.join(repr(c) for c in CHAINS)} or an instance of "
                     f"DDNM / DDRM / DiffPIR, got {choice!r}")
