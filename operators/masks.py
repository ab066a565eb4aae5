"""Inpainting masks: boolean tensors, True = observed pixel (use them with :class:`Mask`).

Every generator returns a mask of shape (H, W), shared over channels, or — with ``channels=C`` —
(C, H, W), one mask per channel. Random masks are reproducible from an integer ``seed`` (or a
``torch.Generator``), so a task can be rebuilt from its parameters; any mask can also be written
to and read from a PNG (white = observed) with :func:`save_mask` / :func:`mask_from_image`.

PIL is imported only by the functions that need it (text, scratches, files).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

from .base import _check_positive_int

__all__ = ["random_mask", "box_mask", "stripe_mask", "text_mask", "scratch_mask", "mask_from_image",
           "save_mask", "DEFAULT_TEXT"]

DEFAULT_TEXT = "Lorem ipsum dolor sit amet, consectetur adipiscing elit"


def _size(size) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W) or an int, got {size!r}") from None
    return _check_positive_int(h, "size[0] (height)"), _check_positive_int(w, "size[1] (width)")


def _channels(channels) -> int | None:
    return None if channels is None else _check_positive_int(channels, "channels")


def _fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _generator(seed, generator) -> torch.Generator:
    if generator is not None:
        if seed is not None:
            raise ValueError("give seed or generator, not both")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _broadcast(mask: Tensor, channels: int | None) -> Tensor:
    return mask if channels is None else mask.unsqueeze(0).expand(channels, *mask.shape).clone()


def random_mask(size, missing: float = 0.5, *, channels: int | None = None, seed: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Exactly round(missing · H · W) pixels missing, chosen uniformly (per channel if ``channels``).

    Reproducible from ``seed`` (default 0) or drawn from ``generator``.
    """
    h, w = _size(size)
    missing = _fraction(missing, "missing")
    c = _channels(channels)
    g = _generator(seed, generator)
    n_missing = int(round(missing * h * w))
    masks = []
    for _ in range(c or 1):
        m = torch.ones(h * w, dtype=torch.bool)
        m[torch.randperm(h * w, generator=g)[:n_missing]] = False
        masks.append(m.view(h, w))
    return masks[0] if c is None else torch.stack(masks)


def box_mask(size, top: float = 0.25, left: float = 0.25, height: float = 0.5, width: float = 0.5, *,
             channels: int | None = None) -> Tensor:
    """One missing rectangle. All four numbers are fractions of the image size in [0, 1]
    (rounded to whole pixels); the default is the centred half-size box."""
    h, w = _size(size)
    top, left = _fraction(top, "top"), _fraction(left, "left")
    height, width = _fraction(height, "height"), _fraction(width, "width")
    if top + height > 1 + 1e-12 or left + width > 1 + 1e-12:
        raise ValueError(f"the box (top={top}, left={left}, height={height}, width={width}) "
                         "does not fit inside the image")
    r0, c0 = int(round(top * h)), int(round(left * w))
    r1, c1 = min(h, r0 + int(round(height * h))), min(w, c0 + int(round(width * w)))
    m = torch.ones(h, w, dtype=torch.bool)
    m[r0:r1, c0:c1] = False
    return _broadcast(m, _channels(channels))


def stripe_mask(size, period: int = 8, width: int = 4, direction: str = "horizontal", offset: int = 0, *,
                channels: int | None = None) -> Tensor:
    """Missing stripes ``width`` pixels wide every ``period`` pixels.

    ``direction="horizontal"``: missing rows (i − offset) mod period < width; ``"vertical"``:
    missing columns.
    """
    h, w = _size(size)
    period = _check_positive_int(period, "period")
    if isinstance(width, bool) or not isinstance(width, int) or not 0 <= width <= period:
        raise ValueError(f"width must be an int in [0, period={period}], got {width!r}")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise ValueError(f"offset must be an int, got {offset!r}")
    if direction not in ("horizontal", "vertical"):
        raise ValueError(f"direction must be 'horizontal' or 'vertical', got {direction!r}")
    n = h if direction == "horizontal" else w
    keep = (torch.arange(n) - offset) % period >= width
    m = keep.view(-1, 1).expand(h, w) if direction == "horizontal" else keep.view(1, -1).expand(h, w)
    return _broadcast(m.clone(), _channels(channels))


def _font(font_size):
    from PIL import ImageFont

    if font_size is None:
        return ImageFont.load_default()
    font_size = _check_positive_int(font_size, "font_size")
    try:
        return ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1: only the fixed bitmap font
        raise ValueError("font_size needs Pillow >= 10.1 (FreeType default font); "
                         "use font_size=None") from None


def text_mask(size, text: str = DEFAULT_TEXT, *, font_size: int | None = None, repeat: bool = True,
              line_spacing: float = 1.5, channels: int | None = None) -> Tensor:
    """Pixels covered by ``text`` rendered with PIL's default font are missing.

    The text is wrapped to the image width and, with ``repeat``, repeated line after line until
    the image is covered (the "lorem ipsum" masks of the inpainting literature); otherwise it is
    written once from the top-left corner. ``font_size`` None is PIL's default size. The glyph
    raster depends on the Pillow version: save the mask (:func:`save_mask`) to reuse it exactly.
    """
    from PIL import Image, ImageDraw

    h, w = _size(size)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if not (isinstance(line_spacing, (int, float)) and line_spacing > 0):
        raise ValueError(f"line_spacing must be a positive number, got {line_spacing!r}")
    font = _font(font_size)
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)
    bbox = draw.textbbox((0, 0), "Ag", font=font)
    line_height = max(1, int(round((bbox[3] - bbox[1]) * line_spacing)))
    words, lines, current = text.split(), [], ""
    for word in words:  # greedy wrap to the image width
        trial = f"{current} {word}".strip()
        if current and draw.textlength(trial, font=font) > w:
            lines.append(current)
            current = word
        else:
            current = trial
    lines.append(current)
    y, i = 0, 0
    while y < h and (repeat or i < len(lines)):
        draw.text((0, y - bbox[1]), lines[i % len(lines)], fill=255, font=font)
        y += line_height
        i += 1
    covered = torch.from_numpy(np.asarray(image).copy()) > 127
    return _broadcast(~covered, _channels(channels))


def scratch_mask(size, lines: int = 8, width: int = 1, *, channels: int | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """``lines`` random straight scratches (missing), each ``width`` pixels wide, end points drawn
    uniformly on the image (reproducible from ``seed``) — the defects of old photographs."""
    from PIL import Image, ImageDraw

    h, w = _size(size)
    if isinstance(lines, bool) or not isinstance(lines, int) or lines < 0:
        raise ValueError(f"lines must be a non-negative int, got {lines!r}")
    width = _check_positive_int(width, "width")
    g = _generator(seed, generator)
    pts = torch.rand(lines, 4, generator=g, dtype=torch.float64)
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in pts.tolist():
        draw.line([(x0 * (w - 1), y0 * (h - 1)), (x1 * (w - 1), y1 * (h - 1))], fill=255, width=width)
    covered = torch.from_numpy(np.asarray(image).copy()) > 127
    return _broadcast(~covered, _channels(channels))


def mask_from_image(path, size=None, *, per_channel: bool = False, threshold: float = 0.5) -> Tensor:
    """Read a mask from an image file: pixels brighter than ``threshold`` (of the full range) are
    observed (white = observed, black = missing).

    Grey (or any mode, converted to "L") gives an (H, W) mask; ``per_channel=True`` reads RGB and
    gives (3, H, W). ``size`` (H, W), when given, must match the file's size. Raises ``ValueError``
    naming the path when the file cannot be read or has the wrong size.
    """
    from PIL import Image, UnidentifiedImageError

    threshold = _fraction(threshold, "threshold")
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB" if per_channel else "L")
    except (FileNotFoundError, IsADirectoryError, PermissionError, UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read the mask image {path!r}: {e}") from None
    a = torch.from_numpy(np.asarray(im).copy()).to(torch.float64) / 255.0
    m = a > threshold
    if per_channel:
        m = m.permute(2, 0, 1).contiguous()
    if size is not None:
        h, w = _size(size)
        if tuple(m.shape[-2:]) != (h, w):
            raise ValueError(f"the mask image {path!r} is {m.shape[-2]}x{m.shape[-1]}, "
                             f"the image is {h}x{w}")
    return m


def save_mask(mask: Tensor, path) -> None:
    """Write a mask as an 8-bit PNG (white = observed): (H, W) as grey, (3, H, W) as RGB."""
    from PIL import Image

    m = torch.as_tensor(mask).bool().cpu()
    if m.dim() == 2:
        Image.fromarray(m.numpy().astype(np.uint8) * 255).save(os.fspath(path), format="PNG")
    elif m.dim() == 3 and m.shape[0] == 3:
        Image.fromarray(m.permute(1, 2, 0).numpy().astype(np.uint8) * 255).save(os.fspath(path), format="PNG")
    else:
        raise ValueError(f"only (H, W) and (3, H, W) masks can be saved as PNG, got {tuple(m.shape)}")
