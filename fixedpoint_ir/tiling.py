"""Tiled evaluation of fixed-size priors, so that any image size can be restored.

A prior built for one input size (the 256×256 ADM / DDPM checkpoints: ``prior.image_size``) cannot
run on a larger image. :class:`TiledPrior` wraps it as a prior of ANY size: ``predict_eps(x, t)``
cuts x into overlapping tiles of the network's size, evaluates every tile (of every image in the
batch) through the wrapped prior — one batched call, chunked by the wrapped prior's ``max_batch``
— and blends the tile outputs into one ε of the image's size.

Because tiling happens at the level of the prior, everything else in the chain runs on the whole
image: x_T, the noises ξ_j and the data-consistency step A†(A x0 − y) are those of the full image,
so overlapping tiles see the same x_T and ξ at every pixel by construction, and the operator
(a blur, a ×4 down-sampling) never sees a tile border.

Blending. Along each axis the tiles are spread evenly from the first to the last pixel with
at least ``overlap`` pixels shared by neighbours. A tile's weight at a pixel is the product, over
the tile's *interior* edges (those not on the image border), of a ramp of the distance d to that
edge: 0 for d < ``margin`` (the network's zero padding corrupts the outermost pixels of a tile),
then a raised-cosine ramp sin²(π/2 · (d − margin + ½) / ramp) over ``ramp = overlap − 2·margin``
pixels, then 1. The blended ε is Σ w_i ε_i / Σ w_i. Consequences:

* every pixel takes ε only from tiles in which it lies at least ``margin`` pixels from the tile's
  interior edges, so for a network whose receptive field reaches at most ``margin`` pixels the
  tiled ε EQUALS the whole-image ε (up to round-off) — everywhere, not just away from the seams;
* for a U-Net with a wider field, the disagreement between tiles is faded over the ramp with a
  smooth (C¹) weight, so no seam line appears (tests/test_tiling.py measures the gradient across
  the tile boundaries of a restoration).

Images smaller than the tile along an axis are **reflect-padded** to the tile size along that
axis (the ε of the padding is discarded); an axis shorter than half the tile cannot be reflected
and raises a ``ValueError`` naming both sizes. An image of exactly the tile size goes straight
through.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .priors.base import Prior

__all__ = ["TiledPrior", "tile_starts", "tile_weights", "needs_tiling"]


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair (H, W), got {value!r}") from None
    return a, b


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` pixels, neighbours sharing at
    least ``overlap`` pixels, spread evenly (first at 0, last at size − tile)."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    n = 1 + math.ceil((size - tile) / stride)
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _ramp(d: Tensor, margin: int, ramp: int) -> Tensor:
    u = ((d - margin + 0.5) / ramp).clamp(0, 1)
    return torch.where(d < margin, torch.zeros_like(d), torch.sin(0.5 * math.pi * u) ** 2)


def tile_weights(size: int, tile: int, starts: list[int], margin: int, ramp: int,
                 dtype=torch.float64) -> list[Tensor]:
    """The 1-D blending weight (length ``tile``) of each tile along one axis."""
    out = []
    k = torch.arange(tile, dtype=dtype)
    for i, s in enumerate(starts):
        w = torch.ones(tile, dtype=dtype)
        if i > 0:  # interior left edge
            w = w * _ramp(k, margin, ramp)
        if i < len(starts) - 1:  # interior right edge
            w = w * _ramp(tile - 1 - k, margin, ramp)
        out.append(w)
    return out


def needs_tiling(prior: Prior, image_hw: tuple[int, int]) -> bool:
    """True when ``prior`` has a fixed input size (``image_size``) different from the image's."""
    size = getattr(prior, "image_size", None)
    return size is not None and tuple(int(s) for s in size) != tuple(int(s) for s in image_hw)


class TiledPrior(Prior):
    """A fixed-size prior evaluated tile by tile on images of any size (see the module docstring).

    Args:
        prior: the wrapped :class:`~fixedpoint_ir.priors.Prior` (its ``alphas_cumprod`` is shared;
            ``max_batch`` reads and writes the wrapped prior's, which bounds every network call).
        tile: (H, W) of the network's input; default ``prior.image_size``.
        overlap: least number of pixels shared by neighbouring tiles; default a quarter of the
            tile (64 for 256×256 tiles); 0 < overlap < tile.
        margin: pixels at each interior tile edge whose ε is discarded; default overlap // 4.
            Needs 2·margin < overlap (the rest of the overlap is the blending ramp).
    """

    def __init__(self, prior: Prior, tile=None, overlap=None, margin=None):
        if not isinstance(prior, Prior):
            raise TypeError(f"prior must be a fixedpoint_ir Prior, got {type(prior).__name__}")
        if tile is None:
            tile = getattr(prior, "image_size", None)
            if tile is None:
                raise ValueError("the prior has no fixed image_size: give tile=(H, W)")
        th, tw = _pair(tile, "tile")
        if th < 2 or tw < 2:
            raise ValueError(f"tile must be at least 2x2, got {th}x{tw}")
        oh, ow = _pair(overlap if overlap is not None else (th // 4, tw // 4), "overlap")
        mh, mw = _pair(margin if margin is not None else (oh // 4, ow // 4), "margin")
        for o, m, t, axis in ((oh, mh, th, "height"), (ow, mw, tw, "width")):
            if not 0 < o < t:
                raise ValueError(f"overlap ({o}) must lie in [1, tile) along the {axis} (tile {t})")
            if m < 0 or 2 * m >= o:
                raise ValueError(f"margin ({m}) must satisfy 0 <= 2*margin < overlap ({o}) along the {axis}")
        super().__init__(prior.alphas_cumprod.detach().clone(), None)
        self.surrogate = prior.surrogate  # the same data, the same free model
        self.prior = prior
        self.tile = (th, tw)
        self.overlap = (oh, ow)
        self.margin = (mh, mw)
        self.image_size = None  # any size

    # max_batch is the wrapped prior's: it bounds the tile batches of every network call
    @property
    def max_batch(self) -> int | None:
        inner = self._modules.get("prior")
        return None if inner is None else inner.max_batch

    @max_batch.setter
    def max_batch(self, value: int | None) -> None:
        inner = self.__dict__.get("_modules", {}).get("prior")
        if inner is not None:
            inner.max_batch = value
        elif value is not None:
            raise ValueError("set max_batch on the wrapped prior")

    def layout(self, height: int, width: int) -> tuple[list[int], list[int]]:
        """Tile start rows and columns for an image of this size (after any reflect padding)."""
        return (tile_starts(max(height, self.tile[0]), self.tile[0], self.overlap[0]),
                tile_starts(max(width, self.tile[1]), self.tile[1], self.overlap[1]))

    def extra_repr(self) -> str:
        return f"tile={self.tile}, overlap={self.overlap}, margin={self.margin}"

    def _pad(self, x: Tensor) -> tuple[Tensor, int, int]:
        (th, tw), (h, w) = self.tile, x.shape[-2:]
        ph, pw = max(0, th - h), max(0, tw - w)
        if ph == 0 and pw == 0:
            return x, 0, 0
        if ph >= h or pw >= w:
            raise ValueError(f"the image ({h}x{w}) is smaller than half the network's input "
                             f"({th}x{tw}) along one axis: it cannot be reflect-padded to the "
                             f"tile size; use a larger image or a prior of another size")
        return F.pad(x, (0, pw, 0, ph), mode="reflect"), ph, pw

    def predict_eps(self, x: Tensor, t: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if (h, w) == self.tile:
            return self.prior.eps(x, t)
        xp, ph, pw = self._pad(x)
        H, W = xp.shape[-2:]
        th, tw = self.tile
        rows, cols = self.layout(H, W)
        n = x.shape[0]
        tiles = torch.cat([xp[:, :, r:r + th, c:c + tw] for r in rows for c in cols])
        e = self.prior.eps(tiles, t.repeat(len(rows) * len(cols)))
        wr = tile_weights(H, th, rows, self.margin[0], self.overlap[0] - 2 * self.margin[0], x.dtype)
        wc = tile_weights(W, tw, cols, self.margin[1], self.overlap[1] - 2 * self.margin[1], x.dtype)
        out = torch.zeros((n, e.shape[1], H, W), dtype=e.dtype, device=e.device)
        total = torch.zeros((H, W), dtype=e.dtype, device=e.device)
        k = 0
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                weight = (wr[i].to(e.device, e.dtype)[:, None] * wc[j].to(e.device, e.dtype)[None, :])
                out[:, :, r:r + th, c:c + tw] += weight * e[k * n:(k + 1) * n]
                total[r:r + th, c:c + tw] += weight
                k += 1
        out = out / total
        return out[:, :, :h, :w]
