"""``fixedpoint-ir demo``: degrade and restore a shipped hold-out photo crop (offline)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .common import (CLIError, _Console, _check_output_folders, _check_outputs, _device, _make_output_folder,
                     _parse_params, _solver_from_option)
from .figures import _panels, write_comparison
from .problems import Problem, image_from_observation
from .running import (_clipping_warning, _load_prior, _make_sampler, _range_warnings, _run, _show_progress,
                      _summary, _tiled)


def cmd_demo(args, console: _Console) -> int:
    from ..images import write_image
    from ..metrics import psnr, ssim
    from ..operators import degrade
    from ..operators.tasks import make_operator
    from ..photos import HOLDOUT, holdout_crop

    if args.photo not in HOLDOUT:
        raise CLIError(f"unknown demo photo {args.photo!r}; choose one of {', '.join(HOLDOUT)}")
    if args.size < 16:
        raise CLIError(f"--size must be at least 16, got {args.size}")
    _solver_from_option(args.solver)
    device = _device(args.device)
    folder = Path(args.output)
    stem = f"{args.photo}_{args.task}"
    paths = {k: folder / f"{stem}_{k}.png" for k in ("ground_truth", "degraded", "restored", "compare")}
    params = _parse_params(args.param)
    shape = (3, args.size, args.size)
    op = make_operator(args.task, shape, **params)
    _check_outputs(list(paths.values()), [], args.overwrite)
    _make_output_folder(folder)
    _check_output_folders(list(paths.values()))
    started = time.perf_counter()
    gt = holdout_crop(args.photo, args.size, scale=min(1.0, args.size / 256))[None]
    sigma_y = float(op.task_config["sigma_y"] if args.sigma_y is None else args.sigma_y)
    y = degrade(gt, op, sigma_y, torch.Generator().manual_seed(args.seed))
    console.info(f"demo: {args.photo} ({args.size}x{args.size} hold-out crop, never seen in training), "
                 f"task {args.task}: {op.task_config['params']}")
    prior = _load_prior(args, device, console)
    for warning in _range_warnings(prior, shape, args.checkpoint):
        console.warn(f"demo: {warning}")
    prior = _tiled(prior, shape[1:], args.tile_overlap, console)
    sampler = _make_sampler(prior, op, args, sigma_y, progress=_show_progress(args))
    result = _run(sampler, y.to(device), args.seed, device, args.sequential, console, verbose=args.verbose)
    restored = result.image.detach().cpu()
    clipped = _clipping_warning(restored)
    if clipped:
        console.warn(f"demo: {clipped}")
    op.to("cpu")  # the sampler moved it to the device
    problem = Problem(op, shape, y, sigma_y, [], f"{args.photo} crop")
    write_image(gt, paths["ground_truth"], overwrite=args.overwrite)
    write_image(image_from_observation(y, op), paths["degraded"], overwrite=args.overwrite)
    write_image(restored, paths["restored"], overwrite=args.overwrite)
    write_comparison(paths["compare"], _panels(problem, restored, gt), overwrite=args.overwrite,
                     title=f"{args.task} · {args.photo} · default prior · T={sampler.steps}")
    console.info(_summary("restored", result, sampler, args.sequential))
    console.info(f"A†y:      PSNR {psnr(op.A_pinv(y)[0], gt[0]):.2f} dB, SSIM {ssim(op.A_pinv(y)[0], gt[0]):.3f}")
    console.info(f"restored: PSNR {psnr(restored[0], gt[0]):.2f} dB, SSIM {ssim(restored[0], gt[0]):.3f}")
    for key in ("degraded", "restored", "compare"):
        console.info(f"{key + ':':10s}{paths[key]}")
    console.info(f"demo done in {time.perf_counter() - started:.1f} s")
    return 0
