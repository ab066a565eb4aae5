"""The colour photographs shipped inside installed packages: training data and hold-out images.

Every loader returns a float32 tensor of shape (3, H, W) in [-1, 1] (pixel / 255 · 2 − 1) and
works offline: the files are part of the scikit-image, scikit-learn and matplotlib wheels.

* :data:`TRAIN` — the photos the default prior is trained on: scikit-image ``coffee``,
  ``chelsea``, ``rocket``, the left and right views of ``stereo_motorcycle`` and scikit-learn's
  ``china.jpg``.
* :data:`HOLDOUT` — photos the default prior never sees, for benchmarks and demos:
  scikit-image ``astronaut``, scikit-learn ``flower.jpg`` and matplotlib's ``grace_hopper.jpg``.
* :data:`EXTRA` — other colour photographs shipped with scikit-image that are not natural
  scenes (the Hubble deep field, a retina fundus photograph and an immunohistochemistry
  micrograph). They load offline but are NOT in :data:`TRAIN`: mostly black or
  single-hue backgrounds would pull a prior meant for everyday photos away from the hold-out
  images. ``python -m fixedpoint_ir.train --extra`` adds them.

No image called "lena" is ever used. The hold-out photos are kept out of training by
:func:`assert_not_holdout`, which the training code calls on every name it loads.

Searched for other colour photographs in the installed packages (skimage/data, the matplotlib
sample data, sklearn/datasets/images, scipy.datasets): the scikit-image images ``lily``,
``kidney``, ``skin`` … and scipy's ``face`` need a pooch download and are not available offline,
the remaining files are greyscale, synthetic (``colorwheel``, ``logo``) or plots.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TRAIN",
    "HOLDOUT",
    "EXTRA",
    "HOLDOUT_CENTERS",
    "load_photo",
    "load_photos",
    "train_photos",
    "holdout_photos",
    "holdout_crop",
    "assert_not_holdout",
    "to_tensor",
]


def to_tensor(array: np.ndarray) -> Tensor:
    """uint8 (H, W, 3 or 4) array → float32 (3, H, W) in [-1, 1] (alpha dropped)."""
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise TypeError(f"expected a uint8 photograph, got dtype {a.dtype}")
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) colour photograph, got shape {a.shape}")
    t = torch.from_numpy(np.array(a[:, :, :3], copy=True)).permute(2, 0, 1).to(torch.float32)
    return (t / 255.0 * 2.0 - 1.0).contiguous()


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()
    return load


def _motorcycle(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return skimage.data.stereo_motorcycle()[index]   # (left, right, disparity)
    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as e:
            raise ModuleNotFoundError(f"the photo {filename} ships with scikit-learn, which is not "
                                      "installed: pip install 'fixedpoint-ir[images]'") from e
        return load_sample_image(filename)
    return load


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook as cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    # training photos
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _motorcycle(0),
    "motorcycle_right": _motorcycle(1),
    "china": _sklearn("china.jpg"),
    # hold-out photos
    "astronaut": _skimage("astronaut"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _grace_hopper,
    # extra (not natural scenes; opt-in for training)
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
}

TRAIN: tuple[str, ...] = ("coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right", "china")
HOLDOUT: tuple[str, ...] = ("astronaut", "flower", "grace_hopper")
EXTRA: tuple[str, ...] = ("hubble_deep_field", "retina", "immunohistochemistry")

#: Centre of :func:`holdout_crop`'s window, as fractions (row, column) of the photo's height and
#: width: the subject of each photo (the astronaut's face, the dahlia, Grace Hopper's face).
HOLDOUT_CENTERS: dict[str, tuple[float, float]] = {
    "astronaut": (0.22, 0.45),
    "flower": (0.49, 0.47),
    "grace_hopper": (0.42, 0.53),
}

assert not set(TRAIN) & set(HOLDOUT) and not set(EXTRA) & set(HOLDOUT)
assert not any("lena" in n.lower() for n in _LOADERS)


def assert_not_holdout(name: str) -> None:
    """Raise if ``name`` is a hold-out photo (used by the training code on everything it loads)."""
    if name in HOLDOUT:
        raise AssertionError(f"{name!r} is a hold-out photo and must never be used for training")


def load_photo(name: str) -> Tensor:
    """One shipped photograph as a float32 tensor (3, H, W) in [-1, 1]."""
    if "lena" in name.lower():
        raise ValueError("the 'lena' image is not used by this project")
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise KeyError(f"unknown photo {name!r}; known: {sorted(_LOADERS)}") from None
    return to_tensor(loader())


def load_photos(names: tuple[str, ...] | list[str]) -> dict[str, Tensor]:
    return {n: load_photo(n) for n in names}


def train_photos(extra: bool = False) -> dict[str, Tensor]:
    """The training photographs (plus :data:`EXTRA` when ``extra``); never a hold-out one."""
    names = TRAIN + (EXTRA if extra else ())
    for n in names:
        assert_not_holdout(n)
    return load_photos(names)


def holdout_photos() -> dict[str, Tensor]:
    """The hold-out photographs, for benchmarks and demos only."""
    return load_photos(HOLDOUT)


def holdout_crop(name: str, size: int | tuple[int, int], scale: float = 1.0,
                 center: tuple[float, float] | None = None) -> Tensor:
    """A deterministic crop (3, h, w) in [-1, 1] of a hold-out photo, for benchmarks and demos.

    The photo is first resized by ``scale`` (``F.interpolate``, bicubic with antialiasing, then
    clamped to [-1, 1] — the resampling the training code uses; 1.0 =
    native resolution, e.g. 0.25 turns the 512×512 astronaut into 128×128), then the h×w window
    centred on ``center`` (fractions of height and width; default :data:`HOLDOUT_CENTERS`, the
    photo's subject) is cut out, shifted inwards where it would cross the border. The result
    depends on nothing but the arguments.

    Args:
        name: one of :data:`HOLDOUT`.
        size: h = w = size, or (h, w).
        scale: resize factor applied before cropping, in (0, 1].
        center: (row, column) fractions in [0, 1] overriding the default centre.
    """
    if name not in HOLDOUT:
        raise KeyError(f"{name!r} is not a hold-out photo; choose one of {HOLDOUT}")
    h, w = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    if not 0.0 < float(scale) <= 1.0:
        raise ValueError(f"scale must lie in (0, 1], got {scale!r}")
    img = load_photo(name)
    if scale != 1.0:
        H, W = img.shape[-2:]
        new = (max(1, round(H * scale)), max(1, round(W * scale)))
        img = F.interpolate(img[None], size=new, mode="bicubic", align_corners=False,
                            antialias=True)[0].clamp(-1.0, 1.0)
    H, W = img.shape[-2:]
    if h > H or w > W:
        raise ValueError(f"a {h}x{w} crop does not fit in {name} at scale {scale} ({H}x{W})")
    cy, cx = HOLDOUT_CENTERS[name] if center is None else center
    top = min(max(int(round(cy * H - h / 2)), 0), H - h)
    left = min(max(int(round(cx * W - w / 2)), 0), W - w)
    return img[:, top:top + h, left:left + w].contiguous()
