"""Tiled evaluation of fixed-size priors (fixedpoint_ir.tiling).

Exactness: for a network whose receptive field is at most the tile margin, the tiled ε equals the
whole-image ε everywhere, so a restoration with tiling equals the whole-image one. For wider
receptive fields the two agree away from the seams, and the seams stay invisible in a real
restoration with the shipped prior.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fixedpoint_ir import GaussianMixturePrior, ModulePrior, Prior, Sampler
from fixedpoint_ir.operators import AveragePool
from fixedpoint_ir.tiling import TiledPrior, needs_tiling, tile_starts


class ConvEps(nn.Module):
    """ε = exact mixture ε (per pixel) + a random conv net of receptive-field radius Σ dilations."""

    def __init__(self, dilations=(1, 1, 1), width=6, seed=0, scale=0.3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3] + [width] * (len(dilations) - 1) + [3]
        self.convs = nn.ModuleList()
        for cin, cout, d in zip(chans[:-1], chans[1:], dilations):
            conv = nn.Conv2d(cin, cout, 3, padding=d, dilation=d)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / (3 * cin ** 0.5))
                conv.bias.zero_()
            self.convs.append(conv)
        self.analytic = GaussianMixturePrior(mu=0.5, var=0.05)
        self.scale = scale
        self.radius = sum(dilations)
        self.calls: list[int] = []

    def forward(self, x, t):
        self.calls.append(x.shape[0])
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = torch.tanh(h)
        return self.analytic.predict_eps(x, t) + self.scale * torch.tanh(h)


def _priors(tile, dilations=(1, 1, 1), dtype=torch.float64, max_batch=None):
    net = ConvEps(dilations).to(dtype).requires_grad_(False)
    whole = ModulePrior(net)
    fixed = ModulePrior(net, image_size=tile, max_batch=max_batch)
    return net, whole, fixed


def test_tile_layout_covers_with_overlap():
    for size, tile, overlap in [(40, 16, 8), (37, 16, 12), (256, 64, 16), (65, 64, 16), (16, 16, 4)]:
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] == max(0, size - tile)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tiled_eps_equals_whole_image_eps_for_a_local_network():
    """Receptive field (3) ≤ margin (3): exact everywhere, max_batch respected, any batch of t."""
    net, whole, fixed = _priors((16, 16), max_batch=5)
    tiled = TiledPrior(fixed, overlap=8, margin=3)
    assert tiled.max_batch == 5 and tiled.image_size is None
    assert torch.equal(tiled.alphas_cumprod, fixed.alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 40, 37, generator=g, dtype=torch.float64)
    t = torch.tensor([999, 500, 3])
    net.calls.clear()
    e = tiled.eps(x, t)
    rows, cols = tiled.layout(40, 37)
    assert len(rows) * len(cols) > 4
    assert sum(net.calls) == 3 * len(rows) * len(cols) and max(net.calls) <= 5
    torch.testing.assert_close(e, whole.eps(x, t), atol=1e-12, rtol=0)


def test_tiled_restoration_equals_whole_image_restoration():
    """The chain, x_T, ξ and the data consistency run on the whole image: same result."""
    net, whole, fixed = _priors((16, 16))
    tiled = TiledPrior(fixed, overlap=8, margin=3)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 40, 36, generator=g, dtype=torch.float64) * 2 - 1
    op = AveragePool(4)
    y = op.A(x)
    a = Sampler(tiled, op, steps=4, nw=0.5).sequential(y, generator=torch.Generator().manual_seed(0))
    b = Sampler(whole, op, steps=4, nw=0.5).sequential(y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.image, b.image, atol=1e-9, rtol=0)
    assert float((a.image - x).abs().mean()) > 0.01  # a real restoration, not the ground truth
    # the parallel solver reaches the same fixed point through the tiled prior
    c = Sampler(tiled, op, solver="picard", steps=4, nw=0.5).restore(y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(c.image, b.image, atol=1e-7, rtol=0)


def _seam_distance(size, tile, starts):
    """Distance of each pixel to the nearest interior tile edge along one axis."""
    idx = torch.arange(size)
    d = torch.full((size,), 10 ** 6)
    for i, s in enumerate(starts):
        if i > 0:
            d = torch.minimum(d, (idx - s).abs())
        if i < len(starts) - 1:
            d = torch.minimum(d, (idx - (s + tile - 1)).abs())
    return d


def test_wide_receptive_field_agrees_away_from_seams():
    """Receptive field 8 > margin 2: tiles disagree near their edges only."""
    net, whole, fixed = _priors((32, 32), dilations=(1, 2, 2, 3))
    tiled = TiledPrior(fixed, overlap=8, margin=2)
    x = torch.randn(2, 3, 80, 72, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([700, 100])
    diff = (tiled.eps(x, t) - whole.eps(x, t)).abs().amax(dim=(0, 1))
    rows, cols = tiled.layout(80, 72)
    # farther than the receptive field from every interior tile edge: exact
    far = (_seam_distance(80, 32, rows)[:, None] > net.radius) & \
          (_seam_distance(72, 32, cols)[None, :] > net.radius)
    assert far.sum() > 500
    assert float(diff[far].max()) < 1e-12
    assert float(diff.max()) > 1e-4  # the wide field does make the tiles disagree somewhere


def test_seams_stay_invisible_with_the_shipped_prior():
    """Default prior evaluated as a fixed 64x64 network on an 80x80 photo crop (2x2 tiles)."""
    from fixedpoint_ir.operators.tasks import make_operator
    from fixedpoint_ir.photos import holdout_crop

    default = Prior.default()
    fixed = ModulePrior(default.module, alphas_cumprod=default.alphas_cumprod, image_size=(64, 64))
    tiled = TiledPrior(fixed)
    size = 80
    rows, cols = tiled.layout(size, size)
    assert len(rows) == len(cols) == 2
    x = holdout_crop("astronaut", size, scale=size / 256)[None]
    op = make_operator("inpaint_random", (3, size, size))
    y = op.A(x)
    kw = dict(steps=4)
    a = Sampler(tiled, op, **kw).sequential(y, generator=torch.Generator().manual_seed(0)).image
    b = Sampler(default, op, **kw).sequential(y, generator=torch.Generator().manual_seed(0)).image
    assert torch.isfinite(a).all()
    # band of the tile boundaries: from the second tile's left edge to the first tile's right edge
    lo, hi = rows[1] - 2, rows[0] + 64 + 2
    grad_c = lambda z: (z[..., :, 1:] - z[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # noqa: E731
    grad_r = lambda z: (z[..., 1:, :] - z[..., :-1, :]).abs().mean(dim=(0, 1, 3))  # noqa: E731
    for grad in (grad_c, grad_r):
        ga, gb = grad(a), grad(b)
        # across every boundary column/row, at most 1.5x the untiled image's gradient there
        assert float((ga[lo:hi] / gb[lo:hi]).max()) <= 1.5
        # and the band is no rougher, relative to elsewhere, than in the untiled image
        outside = torch.cat([ga[:lo], ga[hi:]]).mean() / torch.cat([gb[:lo], gb[hi:]]).mean()
        assert float(ga[lo:hi].mean() / gb[lo:hi].mean()) <= 1.25 * float(outside)
    # and the restorations agree closely (the prior is not local: GroupNorm, a wide field)
    assert float((a - b).abs().mean()) < 0.05


def test_passthrough_padding_and_errors():
    net, whole, fixed = _priors((16, 16))
    tiled = TiledPrior(fixed)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    t = torch.tensor([10, 20])
    assert torch.equal(tiled.eps(x, t), fixed.eps(x, t))
    small = torch.randn(1, 3, 12, 40, dtype=torch.float64)  # height < tile: reflect-padded
    e = tiled.eps(small, torch.tensor([5]))
    assert e.shape == small.shape and torch.isfinite(e).all()
    with pytest.raises(ValueError, match=r"7x40.*16x16"):
        tiled.eps(torch.randn(1, 3, 7, 40, dtype=torch.float64), torch.tensor([5]))
    with pytest.raises(ValueError, match="image_size"):
        TiledPrior(whole)
    with pytest.raises(ValueError, match="overlap"):
        TiledPrior(fixed, overlap=16)
    with pytest.raises(ValueError, match="margin"):
        TiledPrior(fixed, overlap=4, margin=2)
    with pytest.raises(TypeError):
        TiledPrior(net)
    tiled.max_batch = 3
    assert fixed.max_batch == 3 and tiled.max_batch == 3
    assert needs_tiling(fixed, (32, 32)) and not needs_tiling(fixed, (16, 16))
    assert not needs_tiling(whole, (32, 32))


def test_cli_wraps_fixed_size_priors_only():
    from fixedpoint_ir.cli import _Console, _tiled

    net, whole, fixed = _priors((16, 16))
    console = _Console(quiet=True)
    assert isinstance(_tiled(fixed, (40, 40), None, console), TiledPrior)
    assert _tiled(fixed, (16, 16), None, console) is fixed
    assert _tiled(whole, (40, 40), None, console) is whole
