"""Small shared test helpers: counting priors, a problem factory."""
from __future__ import annotations

from pathlib import Path

import torch

from fixedpoint_ir import GaussianMixturePrior
from fixedpoint_ir.operators import AveragePool, Colorization, Identity, Mask


class CountingPrior(GaussianMixturePrior):
    """The analytic mixture prior, counting network calls and evaluated images."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.images = 0

    def predict_eps(self, x, t):
        self.calls += 1
        self.images += x.shape[0]
        return super().predict_eps(x, t)


def make_operator(name: str, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if name == "none":
        return None
    if name == "sr":
        return AveragePool(2)
    if name == "inpaint":
        return Mask(torch.rand(size, size, generator=g) > 0.5)
    if name == "colorize":
        return Colorization()
    if name == "denoise":
        return Identity()
    raise KeyError(name)


OPERATOR_NAMES = ["none", "sr", "inpaint", "colorize", "denoise"]


def ground_truth(size: int = 8, n: int = 1, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g, dtype=dtype) * 2 - 1)


def observe(operator, x):
    return None if operator is None else operator.A(x)


class FaultyMap:
    """Wraps F to inject faults: a huge perturbation on call ``kick_at`` (a divergent step), NaN
    on the calls in ``nan_calls`` (a broken network); F itself otherwise."""

    def __init__(self, chain, kick_at=None, nan_calls=()):
        self.chain, self.kick_at, self.nan_calls, self.calls = chain, kick_at, nan_calls, 0

    def __call__(self, z):
        self.calls += 1
        out = self.chain(z)
        if self.calls == self.kick_at:
            out = out + 1e3 * torch.randn_like(out)
        if self.calls in self.nan_calls:
            out = out * float("nan")
        return out


#: The checkpoint-compatibility fixtures (layouts and small numeric checkpoints, 5.9 MB; their
#: README says what each file is), kept in the repository so that a plain clone runs every test.
CHECKPOINT_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
