"""The shipped default prior: a :class:`SmallUNet` trained on the photos of :mod:`fixedpoint_ir.photos`.

The weights live in the package (``fixedpoint_ir/weights/default_prior.safetensors``) next to
their SHA-256 (``default_prior.sha256``, ``sha256sum`` format). :func:`default_prior` checks the
hash before loading, rebuilds the network from the configuration stored in the file's metadata,
loads it strictly and returns it frozen, in eval mode, wrapped as a :class:`ModulePrior` with the
schedule it was trained with.

To (re)create the files: ``python -m fixedpoint_ir.train --out DIR …`` and copy
``DIR/default_prior.safetensors`` and ``DIR/default_prior.sha256`` into ``fixedpoint_ir/weights/``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..schedule import alphas_cumprod_from_betas, linear_betas
from .base import ModulePrior
from .small_unet import load_small_unet

__all__ = ["DEFAULT_WEIGHTS", "DEFAULT_WEIGHTS_SHA256", "DEFAULT_SURROGATE", "default_prior",
           "verify_weights", "WeightsMissingError", "WeightsHashError"]

_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
#: The shipped weights file (package data).
DEFAULT_WEIGHTS: Path = _WEIGHTS_DIR / "default_prior.safetensors"
#: The file holding its expected SHA-256 (first whitespace-separated token, hex).
DEFAULT_WEIGHTS_SHA256: Path = _WEIGHTS_DIR / "default_prior.sha256"
#: A power-law Gaussian model of the training crops (``python -m fixedpoint_ir.train --out DIR
#: --surrogate-only --seed 0`` rebuilds it; the triangular solver linearises around it).
DEFAULT_SURROGATE: Path = _WEIGHTS_DIR / "default_prior_surrogate.json"

_TRAIN_HINT = (
    "Train it with `python -m fixedpoint_ir.train --out runs/prior --minutes 120 --threads 2` "
    "(see docs/priors.md, 'The shipped default prior') and copy runs/prior/default_prior.safetensors and "
    "runs/prior/default_prior.sha256 into {dir}."
)


class WeightsMissingError(FileNotFoundError):
    """The default weights (or their hash file) are not installed."""


class WeightsHashError(RuntimeError):
    """The weights file does not have the expected SHA-256."""


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_weights(weights: str | os.PathLike, hash_file: str | os.PathLike) -> str:
    """Check that ``weights`` has the SHA-256 written in ``hash_file``; return the digest.

    Raises :class:`WeightsMissingError` when a file is missing and :class:`WeightsHashError`
    (naming both hashes) when the digests differ.
    """
    weights, hash_file = Path(weights), Path(hash_file)
    for path in (weights, hash_file):
        if not path.is_file():
            raise WeightsMissingError(f"default prior file {path} is missing. "
                                      + _TRAIN_HINT.format(dir=weights.parent))
    tokens = hash_file.read_text().split()
    expected = tokens[0].lower() if tokens else ""
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise WeightsHashError(f"{hash_file} does not hold a SHA-256 hex digest (got {expected!r})")
    actual = _sha256(weights)
    if actual != expected:
        raise WeightsHashError(
            f"SHA-256 mismatch for {weights}: expected {expected} (from {hash_file}), "
            f"got {actual}. The file is corrupted or was replaced without updating the hash; "
            "re-install the package or re-copy both files from the training run."
        )
    return actual


def _alphas_cumprod(schedule_json: str | None) -> torch.Tensor:
    schedule = json.loads(schedule_json) if schedule_json else {"name": "linear"}
    if schedule.get("name") != "linear":
        raise ValueError(f"unsupported noise schedule in the weights metadata: {schedule!r}")
    betas = linear_betas(int(schedule.get("num_steps", 1000)), float(schedule.get("beta_start", 1e-4)),
                         float(schedule.get("beta_end", 0.02)))
    return alphas_cumprod_from_betas(betas)


def default_prior(device: str | torch.device | None = None, max_batch: int | None = None) -> ModulePrior:
    """The shipped default prior as a frozen :class:`ModulePrior` (fully convolutional: any H, W).

    Args:
        device: where to put the network (default CPU).
        max_batch: largest number of images per network call (see :class:`Prior`).

    Raises:
        WeightsMissingError: the weights or hash file is not installed (the message says how to
            train them).
        WeightsHashError: the weights file's SHA-256 differs from the stored one.
    """
    verify_weights(DEFAULT_WEIGHTS, DEFAULT_WEIGHTS_SHA256)
    module, meta = load_small_unet(DEFAULT_WEIGHTS)
    prior = ModulePrior(module, alphas_cumprod=_alphas_cumprod(meta.get("schedule")), max_batch=max_batch,
                        channels=module.config["out_channels"])
    prior.metadata = meta
    if DEFAULT_SURROGATE.is_file():
        from ..surrogate import PowerLawGaussian

        prior.surrogate = PowerLawGaussian.load(DEFAULT_SURROGATE)
    prior.eval().requires_grad_(False)
    if device is not None:
        prior.to(device)
    return prior
