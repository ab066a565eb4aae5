"""Image files: reading every common mode into RGB [-1, 1] with notes, atomic writes, metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fixedpoint_ir.images import ImageReadError, read_image, write_image
from fixedpoint_ir.metrics import SSIM_SETTINGS, consistency, psnr, ssim

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def _rgb(h=12, w=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_roundtrip_exact(tmp_path):
    a = _rgb()
    Image.fromarray(a).save(tmp_path / "a.png")
    x, notes = read_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 12, 10) and x.dtype == torch.float32 and notes == []
    assert x.min() >= -1 and x.max() <= 1
    write_image(x, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), a)


def test_grey_rgba_palette_16bit_are_converted_with_notes(tmp_path):
    g = np.arange(120, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(g, mode="L").save(tmp_path / "grey.png")
    x, notes = read_image(tmp_path / "grey.png")
    assert x.shape == (1, 3, 12, 10) and any("grey" in n for n in notes)
    assert torch.equal(x[0, 0], x[0, 2])
    assert torch.allclose(x[0, 0], torch.from_numpy(g / 255.0 * 2 - 1).float(), atol=1e-6)

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    x, notes = read_image(tmp_path / "rgba.png")
    assert any("composited on white" in n for n in notes)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # opaque red stays red
    assert torch.allclose(x[0, :, 1, 1], torch.ones(3))                     # transparent -> white

    Image.fromarray(_rgb()).convert("P").save(tmp_path / "pal.png")
    x, notes = read_image(tmp_path / "pal.png")
    assert x.shape == (1, 3, 12, 10) and any("palette" in n for n in notes)

    g16 = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    x, notes = read_image(tmp_path / "g16.png")
    assert any("16-bit" in n for n in notes)
    assert torch.allclose(((x[0, 0] + 1) / 2).double(), torch.from_numpy(g16 / 65535.0), atol=1e-6)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_write_is_atomic_and_refuses_existing(tmp_path):
    x = torch.rand(1, 3, 5, 6) * 4 - 2  # out of range: clamped
    p = tmp_path / "o.png"
    write_image(x, p)
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_image(torch.zeros(1, 3, 5, 6), p)
    assert p.read_bytes() == before
    write_image(torch.zeros(1, 3, 5, 6), p, overwrite=True)
    assert np.asarray(Image.open(p)).max() in (127, 128)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["o.png"]  # no temporary left behind
    with pytest.raises(ValueError, match="format"):
        write_image(x, tmp_path / "o.xyz")
    write_image(torch.zeros(1, 1, 5, 6), tmp_path / "grey.png")
    assert Image.open(tmp_path / "grey.png").mode == "L"


def test_metrics_conventions():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 16, 16, generator=g) * 2 - 1
    assert psnr(x, x) == math.inf and ssim(x, x) == pytest.approx(1.0)
    noisy = x + 0.1 * torch.randn(3, 16, 16, generator=g)
    mse = (((noisy + 1) / 2).clamp(0, 1) - (x + 1) / 2).square().mean()
    assert psnr(noisy, x) == pytest.approx(float(-10 * torch.log10(mse)), rel=1e-6)
    batch = psnr(torch.stack([noisy, x]), x.unsqueeze(0))
    assert batch.shape == (2,) and math.isinf(batch[1])
    from skimage.metrics import structural_similarity

    ref = structural_similarity(((noisy + 1) / 2).clamp(0, 1).permute(1, 2, 0).double().numpy(),
                                ((x + 1) / 2).permute(1, 2, 0).double().numpy(), **SSIM_SETTINGS)
    assert ssim(noisy, x) == pytest.approx(ref)
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
    from fixedpoint_ir.operators import Colorization

    op = Colorization()
    assert consistency(op, x, op.A(x[None])[0]) == pytest.approx(0.0, abs=1e-7)


def test_a_write_killed_midway_leaves_nothing_a_later_write_keeps(tmp_path):
    """SIGKILL inside the atomic write leaves the hidden partial file (nothing can remove it then);
    the next write to the same target removes it, and the partial never has the output's name."""
    import signal
    import subprocess
    import sys

    target = tmp_path / "out.png"
    code = ("import os, signal, sys; from fixedpoint_ir.images import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half a png')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1 and left[0].startswith(".out.png.") and left[0].endswith(".partial.png"), left
    assert not target.exists()
    write_image(torch.zeros(1, 3, 4, 4), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
