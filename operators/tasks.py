"""The registry of named restoration tasks (the CLI and the benchmarks build operators from it).

``make_operator(name, image_shape, generator=None, **overrides)`` builds the operator of a task
with its default parameters, any of which can be overridden. The parameters actually used (random
masks included, through their integer ``seed``) are recorded as a JSON-serialisable dict in
``operator.task_config``; ``operator_from_config(config)`` rebuilds the same operator, so the CLI
can save the config next to a degraded image. A mask that comes from no generator can be saved as
a PNG (:func:`~fixedpoint_ir.operators.masks.save_mask`) and used through the ``inpaint_file`` task.

Each task also names a suggested observation noise ``sigma_y`` (0 except for ``denoise``), on the
[-1, 1] image scale; it is part of the config but not of the operator.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .base import Operator
from .blur import AnisotropicGaussianBlur, ConvolutionBlur, GaussianBlur, motion_kernel
from .color import Colorization
from .compose import old_photo
from .denoise import Identity
from .functional import _as_shape
from .inpainting import Mask
from .masks import (DEFAULT_TEXT, box_mask, mask_from_image, random_mask, scratch_mask, stripe_mask,
                    text_mask)
from .superres import AveragePool, Bicubic

__all__ = ["Task", "TASKS", "make_operator", "list_tasks", "task_defaults", "operator_from_config",
           "describe_tasks", "sampling_defaults", "sampling_for_steps", "task_config"]


@dataclass(frozen=True)
class Task:
    """A named task: a builder ``(image_shape, **params) -> Operator`` and its default params."""

    name: str
    description: str
    build: Callable[..., Operator]
    defaults: dict[str, Any] = field(default_factory=dict)
    sigma_y: float = 0.0
    seeded: bool = False  # has a random ``seed`` parameter
    # Sampler defaults for this task (chain, etw, nw, noise, t_max): see SAMPLING below.
    sampling: dict[str, Any] = field(default_factory=dict)   # per-T: see sampling_for_steps


def _hw(shape):
    return shape[1], shape[2]


def _mask_channels(shape, per_channel):
    return shape[0] if per_channel else None


def _motion(shape, length, angle, size, threshold):
    return ConvolutionBlur(motion_kernel(length, angle, size), threshold=threshold)


def _inpaint_file(shape, path, per_channel, threshold):
    if path is None:
        raise ValueError("the inpaint_file task needs path=<mask image> (white = observed)")
    return Mask(mask_from_image(path, _hw(shape), per_channel=per_channel, threshold=threshold))


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("sr2", "super-resolution x2, average pooling (A† = block replication)",
         lambda s, factor: AveragePool(factor), {"factor": 2}),
    Task("sr4", "super-resolution x4, average pooling (A† = block replication)",
         lambda s, factor: AveragePool(factor), {"factor": 4}),
    Task("sr4_bicubic", "super-resolution x4, bicubic (Keys a = -0.5, reflect borders, SVD A†)",
         lambda s, factor, a, threshold: Bicubic(factor, a, threshold),
         {"factor": 4, "a": -0.5, "threshold": 1e-6}),
    Task("deblur_gauss", "Gaussian deblurring, 5 taps, sigma 10 (the published kernel, all taps used)",
         lambda s, sigma, size, threshold: GaussianBlur(sigma, size, threshold),
         {"sigma": 10.0, "size": 5, "threshold": 3e-2}),
    Task("deblur_aniso", "anisotropic Gaussian deblurring, 9 taps, sigma 1 (height) x 20 (width)",
         lambda s, sigma_h, sigma_w, size, threshold: AnisotropicGaussianBlur(sigma_h, sigma_w, size, threshold),
         {"sigma_h": 1.0, "sigma_w": 20.0, "size": 9, "threshold": 3e-2}),
    Task("deblur_motion", "linear motion deblurring, FFT with circular boundary",
         _motion, {"length": 9.0, "angle": 45.0, "size": 11, "threshold": 3e-2}),
    Task("inpaint_random", "inpainting, random missing pixels (exact count, seeded)",
         lambda s, missing, per_channel, seed: Mask(random_mask(
             _hw(s), missing, channels=_mask_channels(s, per_channel), seed=seed)),
         {"missing": 0.5, "per_channel": False, "seed": 0}, seeded=True),
    Task("inpaint_box", "inpainting, one missing box (fractions of the image size)",
         lambda s, top, left, height, width: Mask(box_mask(_hw(s), top, left, height, width)),
         {"top": 0.25, "left": 0.25, "height": 0.5, "width": 0.5}),
    Task("inpaint_stripes", "inpainting, missing stripes (width pixels every period pixels)",
         lambda s, period, width, direction, offset: Mask(stripe_mask(_hw(s), period, width, direction, offset)),
         {"period": 8, "width": 4, "direction": "horizontal", "offset": 0}),
    Task("inpaint_text", "inpainting, text rendered with PIL's default font (repeated to cover)",
         lambda s, text, font_size, repeat: Mask(text_mask(_hw(s), text, font_size=font_size, repeat=repeat)),
         {"text": DEFAULT_TEXT, "font_size": None, "repeat": True}),
    Task("inpaint_file", "inpainting with a mask image file (white = observed)",
         _inpaint_file, {"path": None, "per_channel": False, "threshold": 0.5}),
    Task("colorize", "colorization, grey = weighted channel sum (A† = w y / ‖w‖²)",
         lambda s, weights: Colorization(weights), {"weights": [1 / 3, 1 / 3, 1 / 3]}),
    Task("denoise", "denoising, A = I (use with sigma_y > 0)",
         lambda s: Identity(), {}, sigma_y=0.1),
    Task("old_photo", "old-photo restoration: scratches (mask) on a grey image (colorization)",
         lambda s, weights, lines, width, seed: old_photo(
             scratch_mask(_hw(s), lines, width, seed=seed), weights),
         {"weights": [1 / 3, 1 / 3, 1 / 3], "lines": 8, "width": 1, "seed": 0}, seeded=True),
]}


# Per-task sampling defaults (the shipped prior, 64×64). sr4, deblur_gauss, inpaint_random and
# colorize: the best mean PSNR over 3 seeds × 4 validation crops (other regions and scales of the
# hold-out photos; never the reported crops) at T = 20 and, under "from_steps", at T = 100, used
# from T = 50 on (`python benchmarks/quality_seeds.py`, results/quality_seeds.md, which also reports
# them on the hold-out crops beside DDRM and the rounds they cost). At T = 20 a setting may cost at
# most 3 default-solver rounds more than the old default (quality_seeds.ROUND_BUDGET): inpainting's
# best, etw = nw = 1 t_max 250 (+1.6 dB on validation), needs 17.7 rounds instead of 10, so T = 20
# takes etw = nw = 0.85 t_max 400 (12.3 rounds) and only T ≥ 50 the former. Colorization draws its
# noise without the global colour (fix_null_mean, fixedpoint_ir/null_mean.py): drawn with it, the
# high-noise steps take the cast from the seed (per-crop spread over seeds up to 4.9 dB at T = 20,
# 4.7 dB at T = 100 on the hold-out crops; --colour-trace); without it, ≤ 1.3 / 0.5 dB, and the whole
# schedule is best at both T (19.35 / 19.20 dB on validation against 19.11 / 19.07 before).
# The other tasks with a noiseless observation (sr2, sr4_bicubic, deblur_aniso / motion,
# inpaint_box / stripes / text, old_photo) by the same rule on quality_rounds.py's grid (weights
# 0.85 / 1, t_max 250 / 500 / whole, etw 0.1 nw 0; at T = 100 fewer candidates): at T = 20 six keep
# their earlier seed-0 choice (inpaint_box and old_photo change), at T = 100 five change.
# `inpaint_file` (the mask is the user's) and `denoise` (σ_y > 0) keep the Sampler's.
SAMPLING: dict[str, dict[str, Any]] = {
    "sr4": {"etw": 1.0, "nw": 1.0, "t_max": 400,
            "from_steps": {"50": {"etw": 0.1, "nw": 0.0, "t_max": None}}},
    "deblur_gauss": {"etw": 1.0, "nw": 1.0, "t_max": 100},
    "inpaint_random": {"etw": 0.85, "nw": 0.85, "t_max": 400,
                       "from_steps": {"50": {"etw": 1.0, "nw": 1.0, "t_max": 250}}},
    "colorize": {"etw": 1.0, "nw": 1.0, "fix_null_mean": True},
    "sr2": {"etw": 1.0, "nw": 1.0, "t_max": 250, "from_steps": {"50": {"etw": 0.1, "nw": 0.0, "t_max": None}}},
    "sr4_bicubic": {"etw": 1.0, "nw": 1.0, "t_max": 500,
                    "from_steps": {"50": {"etw": 0.1, "nw": 0.0, "t_max": None}}},
    "deblur_aniso": {"etw": 1.0, "nw": 1.0, "t_max": 250},
    "deblur_motion": {"etw": 1.0, "nw": 1.0, "t_max": 250},
    "inpaint_box": {"etw": 0.85, "nw": 0.85, "t_max": 500, "from_steps": {"50": {"t_max": 400}}},
    "inpaint_stripes": {"etw": 1.0, "nw": 1.0, "from_steps": {"50": {"t_max": 250}}},
    "inpaint_text": {"etw": 1.0, "nw": 1.0, "t_max": 250},
    "old_photo": {"etw": 1.0, "nw": 1.0, "fix_null_mean": True},
}
for _name, _sampling in SAMPLING.items():
    object.__setattr__(TASKS[_name], "sampling", dict(_sampling))


def sampling_for_steps(sampling: dict[str, Any], steps: int) -> dict[str, Any]:
    """A task's sampling defaults at T = ``steps``.

    ``sampling`` holds the defaults at few steps (etw, nw, noise, chain, t_max, fix_null_mean) and, optionally,
    ``"from_steps"``: {threshold (str, JSON keys): overrides}; the overrides of the largest threshold
    ≤ ``steps`` replace those entries (an override ``None`` removes one, e.g. ``"t_max": None`` for
    the whole schedule). One setting cannot serve every T: with more steps the chain corrects the
    prior less coarsely, and the best stochasticity and start move (issue #22).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    out = {k: v for k, v in sampling.items() if k != "from_steps"}
    rules = sampling.get("from_steps") or {}
    try:
        thresholds = sorted(int(t) for t in rules)
    except (TypeError, ValueError):
        raise ValueError(f"sampling['from_steps'] must map step counts (int strings) to overrides, "
                         f"got keys {list(rules)}") from None
    applicable = [t for t in thresholds if t <= steps]
    if applicable:
        out.update(rules[str(applicable[-1])])
    return {k: v for k, v in out.items() if v is not None}


def list_tasks() -> list[str]:
    """The names of the registered tasks, in registry order."""
    return list(TASKS)


def _task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_defaults(name: str) -> dict[str, Any]:
    """A copy of a task's default parameters."""
    return copy.deepcopy(_task(name).defaults)


def sampling_defaults(config: dict | None) -> dict[str, Any]:
    """The Sampler defaults of a task config (``operator.task_config``): what the config records
    under ``"sampling"`` when it has that entry (a settings file may pin them; ``{}`` means the
    Sampler's own), else the task's (``Task.sampling``; a config written without the entry, by
    hand or by an older version, still gets them). ``{}`` for a config that names no registered
    task and records none.

    Every path that builds a problem — :func:`make_operator`, :func:`operator_from_config`, the
    command line's ``--task``, ``--mask``, ``--config`` and sidecars, and ``Sampler`` itself —
    goes through this function, so a task's defaults travel with it.
    """
    if not isinstance(config, dict):
        return {}
    recorded = config.get("sampling")
    if isinstance(recorded, dict):
        return copy.deepcopy(recorded)
    task = TASKS.get(config.get("task")) if isinstance(config.get("task"), str) else None
    return copy.deepcopy(task.sampling) if task is not None else {}


def task_config(name: str, image_shape, params: dict, sigma_y: float | None = None,
                sampling: dict | None = None) -> dict[str, Any]:
    """The JSON-serialisable settings of a problem: {"task", "image_shape", "params", "sigma_y",
    "sampling"} (σ_y and the sampling defaults the task's unless given)."""
    task = _task(name)
    config = {"task": name, "image_shape": [int(v) for v in image_shape], "params": params,
              "sigma_y": float(task.sigma_y if sigma_y is None else sigma_y)}
    config["sampling"] = sampling_defaults({"task": name, "sampling": sampling})
    json.dumps(config)  # fail here, not when the CLI saves it
    return config


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        import os

        return os.fspath(value)
    return value


def make_operator(name: str, image_shape, generator: torch.Generator | None = None,
                  sigma_y: float | None = None, **overrides) -> Operator:
    """The operator of task ``name`` for images of shape (C, H, W), defaults overridden by keyword.

    For seeded tasks (random masks), ``seed`` defaults to 0; with a ``generator`` and no explicit
    ``seed``, the seed is drawn from it. The parameters used are stored (JSON-serialisable) in
    ``operator.task_config`` = {"task", "image_shape", "params", "sigma_y", "sampling"} (the
    task's Sampler defaults, which ``Sampler`` uses for arguments left at None). The operator is
    checked against the image shape (e.g. a scale factor that does not divide it raises here).
    """
    task = _task(name)
    shape = _as_shape(image_shape)
    unknown = sorted(set(overrides) - set(task.defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for task {name!r}; "
                         f"its parameters are: {', '.join(task.defaults) or 'none'}")
    params = task_defaults(name)
    params.update({k: _jsonable(v) for k, v in overrides.items()})
    if task.seeded and "seed" not in overrides and generator is not None:
        params["seed"] = int(torch.randint(0, 2 ** 31 - 1, (), generator=generator))
    op = task.build(shape, **params)
    op.y_shape(shape)
    op.task_config = task_config(name, shape, params, sigma_y)
    return op


def operator_from_config(config: dict | str) -> Operator:
    """Rebuild an operator from ``operator.task_config`` (a dict or its JSON text); its sampling
    defaults are :func:`sampling_defaults` of the config."""
    if isinstance(config, str):
        config = json.loads(config)
    try:
        name, shape, params = config["task"], config["image_shape"], config["params"]
    except (KeyError, TypeError):
        raise ValueError("config must be a dict with keys 'task', 'image_shape', 'params'") from None
    op = make_operator(name, shape, sigma_y=config.get("sigma_y"), **params)
    op.task_config["sampling"] = sampling_defaults(config)   # a config's own entry wins
    return op


def describe_tasks() -> str:
    """A Markdown table of the tasks and their default parameters."""
    rows = ["| task | operator | default parameters | σ_y | sampling defaults |", "|---|---|---|---|---|"]
    for t in TASKS.values():
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.defaults.items()) or "—"
        sampling = ", ".join(f"{k}={_fmt(v)}" for k, v in t.sampling.items() if k != "from_steps") \
            or "the Sampler's"
        for threshold, overrides in (t.sampling.get("from_steps") or {}).items():
            sampling += f"; T ≥ {threshold}: " + ", ".join(
                f"{k}={_fmt(v) if v is not None else 'full schedule' if k == 't_max' else 'unset'}"
                for k, v in overrides.items())
        rows.append(f"| `{t.name}` | {t.description} | {params} | {t.sigma_y:g} | {sampling} |")
    return "\n".join(rows)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, str) and len(v) > 20:
        return repr(v[:17] + "...")
    return repr(v) if isinstance(v, str) else str(v)
