"""One input file → its operator and observation y (task, degrade sidecar, mask), and back."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # torch is imported where it is used: `--help` never needs it
    import torch

from .common import PROG, CLIError, _find, _parse_params


def _grey_weights(op) -> torch.Tensor:
    """The channel weights that turn an RGB file into a one-channel observation."""
    import torch
    from ..operators import Colorization

    c = _find(op, Colorization)
    if c is None:
        return torch.full((3,), 1 / 3, dtype=torch.float64)
    return c.weights.detach().to("cpu", torch.float64)


def observation_from_image(x: torch.Tensor, op, image_shape, notes: list[str] | None = None) -> torch.Tensor:
    """The observation y (1, *y_shape) held by an image file read as x (1, 3, h, w).

    Three-channel observations are x itself; one-channel observations (colorization, old photos)
    are Σ_c w_c x_c with the operator's channel weights (a grey file, read as three equal
    channels, gives (Σ w) · grey — exactly what :func:`image_from_observation` wrote).
    """
    import torch

    expected = tuple(op.y_shape(tuple(image_shape)))
    h, w = x.shape[-2:]
    if tuple(expected[-2:]) != (h, w):
        raise CLIError(f"the input is {h}x{w} but the task expects an observation of "
                       f"{expected[-2]}x{expected[-1]} for a {image_shape[1]}x{image_shape[2]} image")
    if expected[0] == 3:
        return x
    if expected[0] == 1:
        wts = _grey_weights(op).to(x.dtype)
        grey = torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
        if notes is not None and not grey:
            notes.append("colour input turned into one grey channel with the task's weights "
                             f"({', '.join(f'{float(v):.3g}' for v in wts)})")
        return (x * wts.view(1, 3, 1, 1)).sum(1, keepdim=True)
    raise CLIError(f"observations with {expected[0]} channels cannot be read from an image file")


def image_from_observation(y: torch.Tensor, op) -> torch.Tensor:
    """What to write for an observation y: 3 channels as is; 1 channel as y / Σw (grey)."""
    if y.shape[1] == 1:
        total = float(_grey_weights(op).sum())
        return y / (total if total != 0 else 1.0)
    return y


def _image_shape_for(task: str, params: dict, y_hw: tuple[int, int]) -> tuple[int, int, int]:
    from ..operators.tasks import task_defaults

    defaults = task_defaults(task)  # raises for unknown tasks, listing the known ones
    factor = params.get("factor", defaults.get("factor", 1))
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise CLIError(f"factor must be a positive int, got {factor!r}")
    return (3, y_hw[0] * factor, y_hw[1] * factor)


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _mask_path(path: Path) -> Path:
    return path.with_name(path.name + ".mask.png")


def _exact_path(path: Path) -> Path:
    """Where ``degrade`` writes the exact float32 y next to an 8-bit observation picture."""
    return path.with_name(path.name + ".y.npy")


@dataclass
class Problem:
    """One input's operator and observation."""

    operator: object
    image_shape: tuple[int, int, int]
    y: torch.Tensor
    sigma_y: float
    notes: list[str] = field(default_factory=list)
    source: str = ""
    warnings: list[str] = field(default_factory=list)   # shown even with --quiet


def _load_config(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except OSError as e:
        raise CLIError(f"cannot read the config {path}: {e}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise CLIError(f"the config {path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CLIError(f"the config {path} must hold a JSON object")
    if "task_config" not in config:
        if "task" in config:  # a bare operator.task_config
            config = {"task_config": config}
        else:
            raise CLIError(f"the config {path} has no 'task_config' (write one with `{PROG} degrade`)")
    return config


def _operator_from_sidecar(config: dict, config_path: Path, notes: list[str]):
    """The operator of a degrade sidecar; inpainting masks come from the saved mask image."""
    import torch
    from ..operators import Mask
    from ..operators.masks import mask_from_image
    from ..operators.tasks import operator_from_config, sampling_defaults

    tc = config["task_config"]
    if not isinstance(tc, dict) or not {"task", "image_shape", "params"} <= set(tc):
        raise CLIError(f"the config {config_path} is not a task config (needs task, image_shape, params)")
    mask_name = config.get("mask")
    mpath = config_path.parent / mask_name if mask_name else None
    if mpath is not None and str(tc["task"]).startswith("inpaint"):
        if mpath.exists():
            per_channel = bool(tc["params"].get("per_channel", False))
            op = Mask(mask_from_image(mpath, tuple(tc["image_shape"])[-2:], per_channel=per_channel))
            op.task_config = json.loads(json.dumps(tc))
            op.task_config["sampling"] = sampling_defaults(tc)
            if tc["task"] != "inpaint_file":
                try:
                    rebuilt = operator_from_config(tc)
                    same = torch.equal(rebuilt.mask.cpu().bool(), op.mask)
                except (ValueError, OSError):
                    same = False
                if not same:
                    notes.append(f"the mask rebuilt from {config_path.name} differs from {mpath.name} "
                                 "(another Pillow version?): using the mask image")
            return op
        notes.append(f"mask image {mpath} not found: rebuilding the mask from the config")
    try:
        return operator_from_config(tc)
    except (KeyError, TypeError) as e:
        raise CLIError(f"the config {config_path} is not a task config: {e}") from None


def _old_photo_with_mask(shape, mask_path: Path, params: dict):
    """old_photo (scratches on a grey image) with the scratch mask read from an image file."""
    from ..operators.compose import old_photo
    from ..operators.masks import mask_from_image
    from ..operators.tasks import task_config, task_defaults

    unknown = sorted(set(params) - {"weights"})
    if unknown:
        raise CLIError(f"--param {', '.join(unknown)} does not apply to old_photo with --mask "
                       "(only weights)")
    weights = params.get("weights", task_defaults("old_photo")["weights"])
    if not mask_path.is_file():
        raise FileNotFoundError(f"mask image not found: {mask_path}")
    op = old_photo(mask_from_image(mask_path, tuple(shape[-2:])), weights)
    op.task_config = task_config("old_photo", shape,
                                 {"weights": list(weights), "mask_file": os.fspath(mask_path)})
    return op


def _build_problem(input_path: Path, x: torch.Tensor, args, notes: list[str]) -> Problem:
    from ..operators.tasks import make_operator

    params = _parse_params(getattr(args, "param", None))
    warns: list[str] = []
    config_path = Path(args.config) if args.config else None
    if config_path is None:
        candidate = _sidecar_path(input_path)
        if candidate.exists():
            config_path = candidate
            notes.append(f"using the degrade settings in {candidate}")
    h, w = x.shape[-2:]
    if config_path is not None:
        if args.mask:
            raise CLIError("give --mask or a config (--config / INPUT.json sidecar), not both")
        if params:
            raise CLIError("--param cannot be combined with a config (edit the config instead)")
        config = _load_config(config_path)
        tc = config["task_config"]
        if args.task and args.task != tc.get("task"):
            raise CLIError(f"--task {args.task} disagrees with the config {config_path} "
                           f"(task {tc.get('task')!r})")
        op = _operator_from_sidecar(config, config_path, notes)
        shape = tuple(int(s) for s in tc["image_shape"])
        sigma_y = config.get("sigma_y", tc.get("sigma_y", 0.0))
    elif args.mask and args.task == "old_photo":   # issue 14: the scan's own scratch mask
        shape = (3, h, w)
        op = _old_photo_with_mask(shape, Path(args.mask), params)
        sigma_y = op.task_config["sigma_y"]
    elif args.mask:
        if args.task and not args.task.startswith("inpaint"):
            raise CLIError(f"--mask applies to inpainting tasks and old_photo, not {args.task!r}")
        shape = (3, h, w)
        op = make_operator("inpaint_file", shape, path=os.fspath(Path(args.mask)), **params)
        sigma_y = op.task_config["sigma_y"]
    elif args.task:
        shape = _image_shape_for(args.task, params, (h, w))
        op = make_operator(args.task, shape, **params)
        sigma_y = op.task_config["sigma_y"]
        if op.task_config["task"] in ("inpaint_random", "old_photo") and "seed" not in params:
            what = ("synthetic scratch mask" if args.task == "old_photo" else "random mask")
            warns.append(f"no mask given (--mask, --config or an INPUT.json sidecar): using a {what} "
                         f"(seed {op.task_config['params'].get('seed')}) that has nothing to do with "
                         f"this image; pass --mask MASK.png (white = intact, black = damaged, the "
                         f"image's size) to mark the real damage")
    else:
        from ..operators.tasks import list_tasks

        raise CLIError(f"give --task (one of: {', '.join(list_tasks())}), --mask, or --config")
    if args.sigma_y is not None:
        sigma_y = args.sigma_y
    # --- float observations and 8-bit quantisation (issue 15) ---
    from ..images import FLOAT_SUFFIXES, QUANTISATION_SIGMA_8BIT, read_observation

    exact = config.get("exact_observation") if config_path is not None else None
    if input_path.suffix.lower() in FLOAT_SUFFIXES:   # y itself, exactly
        y = x
        op.check_observation(y, shape, name=f"the observation in {input_path}")
    elif exact and (config_path.parent / exact).exists():
        y = read_observation(config_path.parent / exact)
        op.check_observation(y, shape, name=f"the observation in {exact}")
        notes.append(f"using the exact float observation {exact} (the picture is its 8-bit rounding)")
    else:
        y = observation_from_image(x, op, shape, notes)
        if args.sigma_y is None:
            # The file's rounding is noise the correction must not trust fully (DDNM+ / DDRM's σ_y);
            # an explicit --sigma-y is taken as the whole noise level.
            sigma_y = float((float(sigma_y or 0.0) ** 2 + QUANTISATION_SIGMA_8BIT ** 2) ** 0.5)
    # --- end float observations ---
    return Problem(op, shape, y, float(sigma_y or 0.0), notes, os.fspath(input_path), warns)
