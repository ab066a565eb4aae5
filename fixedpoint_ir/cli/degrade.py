"""``fixedpoint-ir degrade``: make an observation file (and its settings) from an image."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .common import (SIDECAR_FORMAT, CLIError, _Console, _check_output_folders, _check_outputs, _check_suffix,
                     _find, _parse_params)
from .problems import _exact_path, _mask_path, _sidecar_path, image_from_observation


def cmd_degrade(args, console: _Console) -> int:
    from ..images import read_image, write_image
    from ..operators import Mask, degrade
    from ..operators.masks import save_mask
    from ..operators.tasks import TASKS, make_operator

    from ..images import FLOAT_SUFFIXES

    inp, out = Path(args.input), Path(args.output)
    as_float = getattr(args, "float", False)
    if as_float and out.suffix.lower() not in FLOAT_SUFFIXES:
        raise CLIError(f"--float writes the observation as an array: give a {' or '.join(FLOAT_SUFFIXES)} "
                       f"output, got {out}")
    if not as_float:
        _check_suffix(out)
    x, notes = read_image(inp)
    params = _parse_params(args.param)
    shape = tuple(x.shape[1:])
    if args.mask:
        if args.task and not args.task.startswith("inpaint"):
            raise CLIError(f"--mask applies to inpainting tasks, not {args.task!r}")
        task = "inpaint_file"
        params["path"] = os.fspath(Path(args.mask).resolve())
    elif args.task:
        task = args.task
    else:
        raise CLIError("give --task (see `fixedpoint-ir tasks`)")
    if task in TASKS and TASKS[task].seeded and "seed" not in params:
        params["seed"] = args.seed
    op = make_operator(task, shape, sigma_y=args.sigma_y, **params)
    mask_op = _find(op, Mask)
    sidecar, mask_png = _sidecar_path(out), _mask_path(out)
    exact = None if as_float else _exact_path(out)   # the float y next to the 8-bit picture
    outputs = [out, sidecar] + ([mask_png] if mask_op is not None else []) + ([exact] if exact else [])
    _check_outputs(outputs, [inp] + ([Path(args.mask)] if args.mask else []), args.overwrite)
    _check_output_folders(outputs)
    sigma_y = float(op.task_config["sigma_y"])
    y = degrade(x.to(torch.float64), op, sigma_y, torch.Generator().manual_seed(args.seed)).to(torch.float32)
    picture = image_from_observation(y, op)
    if (picture.abs() > 1 + 1 / 255).any():
        notes.append("the observation has values outside the image range; the file holds them "
                     "clamped (restore uses the clamped y)")
    for note in notes:
        console.note(f"{inp}: {note}")
    from ..images import write_observation

    if as_float:
        write_observation(y, out, overwrite=args.overwrite)
    else:
        write_image(picture, out, overwrite=args.overwrite)
        write_observation(y, exact, overwrite=args.overwrite)
    if mask_op is not None:
        from ..images import atomic_path

        with atomic_path(mask_png, overwrite=args.overwrite) as tmp:
            save_mask(mask_op.mask.cpu(), tmp)
    config = {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "observation": out.name,
        "task_config": op.task_config,
        "image_shape": list(shape),
        "observation_shape": list(y.shape[1:]),
        "sigma_y": sigma_y,
        "seed": args.seed,
        "mask": mask_png.name if mask_op is not None else None,
        "source": os.fspath(inp.resolve()),
        "exact_observation": exact.name if exact else None,
        "quantisation": ("the observation is stored as float32 (exact)" if as_float else
                         "the picture is 8-bit; restore reads the exact float32 y from "
                         "exact_observation, or, without it, treats the 8-bit rounding as noise of "
                         "standard deviation (2/255)/sqrt(12) on the [-1, 1] scale"),
    }
    from ..images import atomic_path

    with atomic_path(sidecar, overwrite=args.overwrite) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    console.info(f"{inp}: {task} observation {tuple(y.shape[1:])} -> {out} (settings: {sidecar}"
                 + (f", mask: {mask_png}" if mask_op is not None else "") + ")")
    return 0
