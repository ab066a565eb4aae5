"""Reading and writing image files (the command line's only contact with the file system's images).

Images in the library are NCHW tensors in [-1, 1] (DESIGN §1); files hold [0, 1] values. The
mapping is x = 2·v − 1 on reading and v = clamp((x + 1) / 2, 0, 1) on writing.

:func:`read_image` accepts whatever Pillow opens and converts it to RGB, saying what it did in the
returned notes (the CLI prints them):

* grey (``L``, ``1``, ``I``, ``I;16``, ``F``): the grey value is copied to the three channels;
* 16-bit files (grey or grey+alpha PNG / TIFF, ``I;16`` / ``I``): scaled by 1/65535, so full white
  stays 1.0 (not 65535/255). Pillow reads 16-bit *RGB* PNGs at 8-bit precision only; that is
  detected from the PNG header and noted;
* 32-bit float (``F``) images: taken as [0, 1] values and clamped;
* an alpha channel (``RGBA``, ``LA``, ``PA``, palette images with transparency): **composited on
  white** (a transparent pixel becomes white, as a viewer shows it on a white page);
* palette (``P``) and other colour modes (``CMYK``, ``YCbCr``, ``LAB``, ``HSV``): converted to RGB;
* an EXIF orientation tag is applied (the image is rotated as a viewer shows it).

:func:`write_image` writes atomically: into a temporary file in the target's folder, then
``os.replace`` — a crash never leaves a half-written output, and an existing file is only replaced
when ``overwrite=True``. The temporary file is named ``.NAME.<pid>-<hex>.partial.SUFFIX`` (hidden,
never a name an output could have); a process killed mid-write (SIGKILL, power loss) cannot remove
it, so the next write to the same target removes those whose process no longer runs. Pillow is
imported lazily (it is the ``images`` extra).
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageReadError", "read_image", "write_image", "atomic_path", "to_unit", "from_unit",
           "image_size", "WRITABLE_SUFFIXES", "remove_stale_partials", "check_writable"]

#: File suffixes :func:`write_image` accepts (the format follows the suffix).
from .constants import WRITABLE_SUFFIXES  # noqa: E402  (torch-free, for the command line)


class ImageReadError(ValueError):
    """A file exists but is not an image Pillow can decode (the message names the path)."""


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] → [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def from_unit(v: Tensor) -> Tensor:
    """[0, 1] → [-1, 1]."""
    return v * 2 - 1


def _png_bit_depth(path: Path) -> int | None:
    """The bit depth in a PNG's IHDR chunk (None for other files)."""
    try:
        with open(path, "rb") as f:
            head = f.read(25)
    except OSError:
        return None
    if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image file not found: {os.fspath(path)}")
    if p.is_dir():
        raise ImageReadError(f"cannot read {os.fspath(path)}: it is a folder, not an image file")
    return p


def image_size(path) -> tuple[int, int]:
    """(H, W) of an image file without decoding its pixels."""
    from PIL import Image, UnidentifiedImageError

    p = _check_path(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"cannot read {os.fspath(path)}: refused as a possible decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImageReadError(f"cannot read {os.fspath(path)}: not an image file Pillow can open ({e})") from None
    return h, w


def read_image(path) -> tuple[Tensor, list[str]]:
    """Read an image file as a float32 tensor (1, 3, H, W) in [-1, 1], with notes on conversions.

    Returns:
        (image, notes): notes is a list of one-line messages ("converted grey to RGB", …), empty
        for a plain 8-bit RGB file.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ImageReadError: the path is a folder, or Pillow cannot decode the file (a ``ValueError``).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = _check_path(path)
    name = os.fspath(path)
    notes: list[str] = []
    try:
        with Image.open(p) as im:
            im.load()
            fmt = im.format
            try:
                orientation = im.getexif().get(0x0112, 1)
                if orientation not in (None, 1):
                    im = ImageOps.exif_transpose(im)
                    notes.append(f"applied the EXIF orientation tag ({orientation})")
            except Exception:  # a broken EXIF block must not make the image unreadable
                pass
            mode = im.mode
            array, kind = _to_rgb_array(im, notes)
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"cannot read {name}: refused as a possible decompression bomb ({e}). If the "
                             "file is trusted, downscale it first; images that large do not fit a "
                             "diffusion prior anyway") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot read {name}: not an image file Pillow can open ({e})") from None
    if fmt == "PNG" and mode in ("RGB", "RGBA") and _png_bit_depth(p) == 16:
        notes.append("16-bit RGB PNG: Pillow reads it at 8-bit precision")
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    if not torch.isfinite(x).all():
        raise ImageReadError(f"cannot read {name}: it contains NaN or Inf values")
    return from_unit(x.clamp(0, 1)).unsqueeze(0).contiguous(), notes


def _composite_white(rgb: np.ndarray, alpha: np.ndarray, notes: list[str], what: str) -> np.ndarray:
    if (alpha < 1).any():
        notes.append(f"{what} with an alpha channel: composited on white")
    else:
        notes.append(f"{what} with an (opaque) alpha channel: alpha dropped")
    return rgb * alpha[..., None] + (1 - alpha[..., None])


def _to_rgb_array(im, notes: list[str]) -> tuple[np.ndarray, str]:
    """(H, W, 3) float array in [0, 1] from a decoded PIL image, appending notes."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.float64) / 255.0, "rgb"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        scale = 65535.0
        notes.append("16-bit grey image: scaled by 1/65535 and converted to RGB")
        if a.min(initial=0) < 0 or a.max(initial=0) > scale:
            notes.append(f"values outside [0, {scale:g}] were clamped")
        g = np.clip(a / scale, 0, 1)
        return np.repeat(g[..., None], 3, axis=2), "grey"
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        notes.append("32-bit float grey image: values taken as [0, 1] (clamped) and converted to RGB")
        return np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=2), "grey"
    if mode in ("L", "1"):
        notes.append("grey image converted to RGB" if mode == "L"
                     else "1-bit (black and white) image converted to RGB")
        g = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        return np.repeat(g[..., None], 3, axis=2), "grey"
    if mode in ("LA", "La"):
        a = np.asarray(im.convert("LA"), dtype=np.float64) / 255.0
        g = np.repeat(a[..., :1], 3, axis=2)
        return _composite_white(g, a[..., 1], notes, "grey image"), "grey"
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        if mode == "P":
            notes.append("palette image converted to RGB")
        a = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
        return _composite_white(a[..., :3], a[..., 3], notes, "image" if mode != "P" else "palette image"), "rgb"
    if mode == "P":
        notes.append("palette image converted to RGB")
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0, "rgb"
    # CMYK, YCbCr, LAB, HSV, I;16 variants Pillow knows how to convert
    notes.append(f"{mode} image converted to RGB")
    return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0, "rgb"


PARTIAL = ".partial"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True   # someone else's process (or not a pid we can ask about): leave its file alone
    return True


def remove_stale_partials(path) -> list[Path]:
    """Remove the temporary files of writes to ``path`` whose process died (killed mid-write).

    Only names :func:`atomic_path` makes (``.NAME.<pid>-<hex>.partial.SUFFIX``) whose pid no longer
    runs on this machine are removed; returns them.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    prefix, end = f".{target.name}.", f"{PARTIAL}{target.suffix}"
    removed = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(end)]
    except OSError:
        return removed
    for name in names:
        pid_text = name[len(prefix):len(name) - len(end)].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_running(int(pid_text)):
            with contextlib.suppress(OSError):
                (folder / name).unlink()
                removed.append(folder / name)
    return removed


def check_writable(folder) -> None:
    """Raise ``OSError`` (with the reason) unless a file can be created in ``folder`` now.

    Creates and removes one empty hidden file: permission bits alone do not tell (root, read-only
    mounts, full disks with quotas), so it is tried.
    """
    folder = Path(folder) if str(folder) else Path(".")
    probe = folder / f".fixedpoint-ir-write-test.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_path(path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is moved onto ``path``.

    The temporary file keeps ``path``'s suffix (so writers that pick the format from the suffix
    work). Raises ``FileExistsError`` before anything is written when ``path`` exists and
    ``overwrite`` is False. On an exception the temporary file is removed and ``path`` untouched.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{os.fspath(path)} already exists (pass --overwrite to replace it)")
    if target.is_dir():
        raise IsADirectoryError(f"{os.fspath(path)} is a folder, not a file name")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"the folder {os.fspath(folder)} does not exist")
    remove_stale_partials(target)
    # O_EXCL: never clobber anything; mode 0o666 & ~umask, like a file the writer would create
    # itself (tempfile.mkstemp would leave it readable by the owner only).
    for _ in range(100):
        tmp_path = folder / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL}{target.suffix}"
        try:
            os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover
        raise FileExistsError(f"cannot create a temporary file next to {os.fspath(path)}")
    try:
        yield tmp_path
        if not overwrite and target.exists():  # appeared while we were writing
            raise FileExistsError(f"{os.fspath(path)} already exists (pass --overwrite to replace it)")
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _to_uint8(x: Tensor) -> np.ndarray:
    if not isinstance(x, Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"write_image writes one image; got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (1|3, H, W) or (1, 1|3, H, W), got {tuple(x.shape)}")
    x = torch.nan_to_num(x.detach().to("cpu", torch.float64), nan=0.0)
    v = (to_unit(x) * 255.0).round().to(torch.uint8)
    a = v.permute(1, 2, 0).numpy()
    return a[..., 0] if a.shape[2] == 1 else a


def write_image(x: Tensor, path, overwrite: bool = False) -> Path:
    """Write an image tensor in [-1, 1] ((1, C, H, W) or (C, H, W), C = 1 or 3) as an 8-bit file.

    Values are mapped to [0, 1] and clamped (NaN → mid-grey), then rounded to 8 bits. The format
    follows the suffix (:data:`WRITABLE_SUFFIXES`; PNG is lossless, JPEG is not). The write is
    atomic; an existing file is refused (``FileExistsError``) unless ``overwrite``. Callers that
    read an input must make sure ``path`` is not that input (the CLI compares resolved paths).
    """
    from PIL import Image

    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in WRITABLE_SUFFIXES:
        raise ValueError(f"cannot tell the image format of {os.fspath(path)!r}: use one of "
                         f"{', '.join(WRITABLE_SUFFIXES)} (PNG recommended: lossless)")
    a = _to_uint8(x)
    image = Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB")
    with atomic_path(target, overwrite=overwrite) as tmp:
        kwargs = {"quality": 95} if suffix in (".jpg", ".jpeg", ".webp") else {}
        image.save(tmp, **kwargs)
    return target


# --- float observations (issue 15): y written and read back exactly, no 8-bit quantisation ------
from .constants import FLOAT_SUFFIXES  # noqa: E402

#: Standard deviation of the rounding error of an 8-bit file on the [-1, 1] scale: a uniform error
#: over one step 2/255 has standard deviation (2/255)/√12.
QUANTISATION_SIGMA_8BIT = 2.0 / 255.0 / 12 ** 0.5


def write_observation(y: Tensor, path, overwrite: bool = False) -> Path:
    """Write an observation (1, C, h, w) or (C, h, w) exactly as float32: ``.npy`` (NumPy) or ``.pt``
    (torch), on the [-1, 1] scale, shape (C, h, w)."""
    p = Path(path)
    if p.suffix.lower() not in FLOAT_SUFFIXES:
        raise ValueError(f"a float observation is written as {' or '.join(FLOAT_SUFFIXES)}, got {p}")
    y = y.detach().to("cpu", torch.float32)
    if y.dim() == 4:
        if y.shape[0] != 1:
            raise ValueError(f"write_observation writes one observation, got a batch of {y.shape[0]}")
        y = y[0]
    if y.dim() != 3 or not torch.isfinite(y).all():
        raise ValueError(f"y must be a finite tensor of shape (C, h, w), got {tuple(y.shape)}")
    with atomic_path(p, overwrite=overwrite) as tmp:
        if p.suffix.lower() == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, y.numpy())
        else:
            torch.save(y.clone(), tmp)
    return p


def read_observation(path) -> Tensor:
    """Read a float observation written by :func:`write_observation`: (1, C, h, w) float32."""
    p = _check_path(path)
    name = os.fspath(path)
    try:
        if p.suffix.lower() == ".npy":
            y = torch.from_numpy(np.load(p, allow_pickle=False).astype(np.float32))
        else:
            y = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoding failure is the file's fault
        raise ImageReadError(f"cannot read {name}: not a float observation array ({e})") from None
    if not isinstance(y, Tensor) or y.dim() not in (2, 3):
        raise ImageReadError(f"cannot read {name}: expected an array of shape (C, h, w) or (h, w), got "
                             f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    if not torch.isfinite(y).all():
        raise ImageReadError(f"cannot read {name}: it contains NaN or Inf values")
    y = y.to(torch.float32)
    return (y.unsqueeze(0) if y.dim() == 2 else y).unsqueeze(0).contiguous()
