"""``fixedpoint-ir restore``: restore degraded image files."""
from __future__ import annotations

import os
from pathlib import Path

from .common import (CLIError, _Console, _check_output_folders, _check_outputs, _check_suffix, _device,
                     _expand_inputs, _import_torch, _make_output_folder, _solver_from_option)
from .figures import _panels, _scores, write_comparison
from .problems import _build_problem
from .running import (_clipping_warning, _load_prior, _make_sampler, _optimize_noise, _range_warnings, _run,
                      _show_progress, _summary, _tiled)


def cmd_restore(args, console: _Console) -> int:
    if getattr(args, "optimize_noise", False) and not args.reference:
        raise CLIError("--optimize-noise needs --reference REF (the image to steer toward)")
    from ..constants import WRITABLE_SUFFIXES

    inputs = _expand_inputs(args.inputs)
    out = Path(args.output)
    many = len(inputs) > 1 or out.is_dir() or args.output.endswith(("/", os.sep))
    if many:
        if out.exists() and not out.is_dir():
            raise CLIError(f"with several inputs the output {out} must be a folder")
        if not out.exists() and out.suffix.lower() in WRITABLE_SUFFIXES and not args.output.endswith(("/", os.sep)):
            raise CLIError(f"{len(inputs)} inputs but the output {out} looks like one image file: give a "
                           f"folder (e.g. -o restored/) for several inputs")
        outputs = [out / (p.stem + ".png") for p in inputs]
    else:
        outputs = [out]
        _check_suffix(out)
    compares: list[Path | None] = [None] * len(inputs)
    if args.compare:
        cmp = Path(args.compare)
        if many:
            compares = [cmp / (p.stem + "_compare.png") for p in inputs]
        else:
            if cmp.suffix.lower() != ".png":
                raise CLIError(f"--compare writes a PNG figure: give a .png name, got {cmp}")
            compares = [cmp]
    gts: list[Path | None] = [None] * len(inputs)
    if args.ground_truth:
        gt_arg = Path(args.ground_truth)
        if many:
            if not gt_arg.is_dir():
                raise CLIError("with several inputs --ground-truth must be a folder holding files "
                               "named like the inputs")
            gts = [gt_arg / p.name for p in inputs]
        else:
            gts = [gt_arg]
        if not args.compare:
            console.note("--ground-truth is used for the scores printed and the --compare figure")
    for p in inputs + [g for g in gts if g is not None]:
        if not p.exists():
            raise FileNotFoundError(f"image file not found: {p}")
    _check_outputs(outputs + [c for c in compares if c is not None], inputs
                   + [g for g in gts if g is not None], args.overwrite)
    _import_torch()   # the checks above answer without it
    from ..images import read_image, write_image

    _solver_from_option(args.solver)   # fail before loading anything
    device = _device(args.device)
    if many:
        _make_output_folder(out)
        if args.compare:
            _make_output_folder(Path(args.compare))
    _check_output_folders(outputs + [c for c in compares if c is not None])
    # Read and check every input before the first (slow) restoration.
    problems = []
    from ..constants import FLOAT_SUFFIXES
    from ..images import read_observation

    for p in inputs:
        x, notes = (read_observation(p), []) if p.suffix.lower() in FLOAT_SUFFIXES else read_image(p)
        problems.append(_build_problem(p, x, args, notes))
    prior = _load_prior(args, device, console)
    for problem, output, compare, gt_path in zip(problems, outputs, compares, gts):
        for note in problem.notes:
            console.note(f"{problem.source}: {note}")
        gt = None
        if gt_path is not None:
            gt, gt_notes = read_image(gt_path)
            for note in gt_notes:
                console.note(f"{gt_path}: {note}")
            if tuple(gt.shape[1:]) != tuple(problem.image_shape):
                raise CLIError(f"the ground truth {gt_path} is {gt.shape[-2]}x{gt.shape[-1]}, the "
                               f"restored image is {problem.image_shape[1]}x{problem.image_shape[2]}")
        the_prior = _tiled(prior, problem.image_shape[1:], args.tile_overlap, console)
        sampler = _make_sampler(the_prior, problem.operator, args, problem.sigma_y,
                                progress=_show_progress(args))
        for warning in problem.warnings + _range_warnings(prior, problem.image_shape, args.checkpoint):
            console.warn(f"{problem.source}: {warning}")
        y = problem.y.to(device)
        if getattr(args, "optimize_noise", False):
            image = _optimize_noise(sampler, y, args, problem, device, console)
        else:
            result = _run(sampler, y, args.seed, device, args.sequential, console,
                      verbose=args.verbose)
            image = result.image.detach().cpu()
        problem.operator.to("cpu")  # the sampler moved it to the device
        clipped = _clipping_warning(image)
        if clipped:
            console.warn(f"{problem.source}: {clipped}")
        write_image(image, output, overwrite=args.overwrite)
        line = (f"{problem.source} -> {output}" if getattr(args, "optimize_noise", False)
                else _summary(problem.source, result, sampler, args.sequential) + f" -> {output}")
        if gt is not None:
            line += f"; {_scores(image, gt)} (A†y: {_scores(problem.operator.A_pinv(problem.y), gt)})"
        console.info(line)
        if compare is not None:
            write_comparison(compare, _panels(problem, image, gt), overwrite=args.overwrite,
                             title=f"{problem.operator.task_config['task']}  ·  {Path(problem.source).name}")
            console.info(f"comparison figure: {compare}")
    return 0
