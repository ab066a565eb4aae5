"""The ``fixedpoint-ir`` command (also ``python -m fixedpoint_ir``).

Sub-commands::

    fixedpoint-ir restore INPUT [INPUT ...] -o OUTPUT --task sr4 [options]
    fixedpoint-ir degrade INPUT -o OUTPUT --task sr4 [--seed 0] [--sigma-y S]
    fixedpoint-ir demo [-o DIR] [--task sr4] [--size 128] [--steps 20]
    fixedpoint-ir tasks

``degrade`` writes the observation y as an 8-bit image (for super-resolution the small image, for
inpainting the masked image, for colorization the grey image) and, next to it, ``OUTPUT.json``
(the task's parameters, the random mask's seed, the image size, σ_y) and, for masks,
``OUTPUT.mask.png`` (white = observed). ``restore`` finds ``INPUT.json`` next to its input (or
takes ``--config``) and rebuilds exactly the same operator. The observation is the 8-bit file:
restore enforces data consistency with that quantised y (an error of at most 1/510 per pixel on
the [0, 1] scale, far below what the prior can resolve).

Errors that are the user's (a missing or unreadable file, an existing output without
``--overwrite``, an output that would replace the input, a task that does not fit the image size,
an unknown task or solver) exit with status 2 and one line on stderr; ``--debug`` shows the
traceback. Conversions of the input (grey, alpha, palette, 16-bit) are reported as notes.
"""
from __future__ import annotations

import argparse
import glob
import inspect
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["main", "build_parser", "CLIError"]

PROG = "fixedpoint-ir"
SIDECAR_FORMAT = "fixedpoint-ir degrade"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
class _Console:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def note(self, msg: str) -> None:
        if not self.quiet:
            print(f"note: {msg}", file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def _sampler_defaults() -> dict:
    from .sampler import Sampler

    sig = inspect.signature(Sampler.__init__)
    return {k: v.default for k, v in sig.parameters.items() if v.default is not inspect.Parameter.empty}


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse outputs that are inputs (always) or exist (unless overwrite), before any work."""
    seen: dict[Path, Path] = {}
    for out in outputs:
        for inp in inputs:
            if _same_file(out, inp):
                raise CLIError(f"the output {out} is the input file: choose another output name "
                               "(the input is never overwritten)")
        key = out.resolve()
        if key in seen:
            raise CLIError(f"two outputs would be written to {out}")
        seen[key] = out
        if out.is_dir():
            raise CLIError(f"the output {out} is a folder; give a file name")
        if out.exists() and not overwrite:
            raise CLIError(f"the output {out} already exists (pass --overwrite to replace it)")


def _check_suffix(path: Path, what: str = "output") -> None:
    from .images import WRITABLE_SUFFIXES

    if path.suffix.lower() not in WRITABLE_SUFFIXES:
        raise CLIError(f"cannot tell the image format of the {what} {path}: use one of "
                       f"{', '.join(WRITABLE_SUFFIXES)} (PNG recommended: lossless)")


def _expand_inputs(patterns: list[str]) -> list[Path]:
    out: list[Path] = []
    for pattern in patterns:
        if not os.path.exists(pattern) and any(ch in pattern for ch in "*?["):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise FileNotFoundError(f"no file matches {pattern}")
            out.extend(Path(m) for m in matches if not m.endswith((".json", ".mask.png")))
        else:
            out.append(Path(pattern))
    return out


def _parse_params(items: list[str] | None) -> dict:
    params = {}
    for item in items or []:
        if "=" not in item:
            raise CLIError(f"--param expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"unknown device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise CLIError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    return device


def _find(op, cls):
    for m in op.modules():
        if isinstance(m, cls):
            return m
    return None


def _grey_weights(op) -> torch.Tensor:
    """The channel weights that turn an RGB file into a one-channel observation."""
    from .operators import Colorization

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
    from .operators.tasks import task_defaults

    defaults = task_defaults(task)  # raises for unknown tasks, listing the known ones
    factor = params.get("factor", defaults.get("factor", 1))
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise CLIError(f"factor must be a positive int, got {factor!r}")
    return (3, y_hw[0] * factor, y_hw[1] * factor)


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _mask_path(path: Path) -> Path:
    return path.with_name(path.name + ".mask.png")


@dataclass
class Problem:
    """One input's operator and observation."""

    operator: object
    image_shape: tuple[int, int, int]
    y: torch.Tensor
    sigma_y: float
    notes: list[str] = field(default_factory=list)
    source: str = ""


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
    from .operators import Mask
    from .operators.masks import mask_from_image
    from .operators.tasks import operator_from_config

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


def _build_problem(input_path: Path, x: torch.Tensor, args, notes: list[str]) -> Problem:
    from .operators.tasks import make_operator

    params = _parse_params(getattr(args, "param", None))
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
    elif args.mask:
        if args.task and not args.task.startswith("inpaint"):
            raise CLIError(f"--mask applies to inpainting tasks, not {args.task!r}")
        shape = (3, h, w)
        op = make_operator("inpaint_file", shape, path=os.fspath(Path(args.mask)), **params)
        sigma_y = op.task_config["sigma_y"]
    elif args.task:
        shape = _image_shape_for(args.task, params, (h, w))
        op = make_operator(args.task, shape, **params)
        sigma_y = op.task_config["sigma_y"]
        if op.task_config["task"] in ("inpaint_random", "old_photo") and "seed" not in params:
            notes.append(f"no mask given (--mask, --config or an INPUT.json sidecar): using the "
                         f"{args.task} mask of seed {op.task_config['params'].get('seed')}")
    else:
        from .operators.tasks import list_tasks

        raise CLIError(f"give --task (one of: {', '.join(list_tasks())}), --mask, or --config")
    if args.sigma_y is not None:
        sigma_y = args.sigma_y
    y = observation_from_image(x, op, shape, notes)
    return Problem(op, shape, y, float(sigma_y or 0.0), notes, os.fspath(input_path))


def _load_prior(args, device: torch.device, console: _Console):
    from .priors.base import Prior

    if args.checkpoint:
        path = Path(args.checkpoint)
        if not path.exists() and not ("/" in args.checkpoint and not args.checkpoint.startswith((".", "/"))
                                      and args.checkpoint.count("/") == 1):
            raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
        prior = Prior.from_checkpoint(args.checkpoint, device=device, max_batch=args.max_batch)
    else:
        prior = Prior.default(device=device, max_batch=args.max_batch)
    return prior


def _tiled(prior, image_hw, overlap, console: _Console):
    from .tiling import TiledPrior, needs_tiling

    if not needs_tiling(prior, image_hw):
        return prior
    tiled = TiledPrior(prior, overlap=overlap)
    rows, cols = tiled.layout(*image_hw)
    th, tw = tiled.tile
    console.note(f"the prior takes {th}x{tw} images: restoring the {image_hw[0]}x{image_hw[1]} image "
                 f"as {len(rows)}x{len(cols)} overlapping tiles (overlap {tiled.overlap[0]} px, blended)")
    return tiled


def _make_sampler(prior, op, args, sigma_y: float, progress: bool):
    from .sampler import Sampler

    kwargs = {}
    if args.solver is not None:
        from .solver import get_solver

        kwargs["solver"] = get_solver(args.solver)  # ValueError lists the known solvers
    for name in ("steps", "etw", "nw"):
        value = getattr(args, name, None)
        if value is not None:
            kwargs[name] = value
    choice = getattr(args, "surrogate", None)
    if choice is not None:
        from .surrogate import PowerLawGaussian, WhiteGaussian

        if choice == "white":
            kwargs["surrogate"] = WhiteGaussian()
        elif not Path(choice).is_file():
            raise FileNotFoundError(f"--surrogate: no such file {choice!r} (give 'white' or a JSON "
                                    "file written by PowerLawGaussian.save)")
        else:
            kwargs["surrogate"] = PowerLawGaussian.load(choice)   # ValueError names the file
    return Sampler(prior, op, progress=progress, sigma_y=sigma_y, **kwargs)


def _run(sampler, y, seed: int, device: torch.device, sequential: bool, console: _Console):
    generator = torch.Generator(device=device).manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if sequential:
            result = sampler.sequential(y, generator=generator)
        else:
            result = sampler.restore(y, generator=generator)
    for w in caught:
        if issubclass(w.category, (RuntimeWarning, UserWarning)):
            console.warn(str(w.message))
    return result


def _optimize_noise(sampler, y, args, problem, device, console: _Console) -> torch.Tensor:
    """--optimize-noise: optimise x_T toward --reference through the equilibrium (DEQ inversion)."""
    from .images import read_image
    from .inversion import optimize_noise
    from .losses import ColorLoss, ReferenceLoss

    if not args.reference:
        raise CLIError("--optimize-noise needs --reference REF (the image to steer toward)")
    reference, notes = read_image(Path(args.reference))
    for note in notes:
        console.note(f"{args.reference}: {note}")
    if args.reference_loss == "color":
        loss = ColorLoss(reference.to(device))
    else:
        if tuple(reference.shape[1:]) != tuple(problem.image_shape):
            raise CLIError(f"the reference {args.reference} is {reference.shape[-2]}x{reference.shape[-1]}, "
                           f"the restored image is {problem.image_shape[1]}x{problem.image_shape[2]}")
        loss = ReferenceLoss(reference.to(device), norm=args.reference_loss)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    result = optimize_noise(sampler, y, loss, generator=generator, gradient=args.gradient,
                            steps=args.opt_steps, lr=args.opt_lr, progress=not args.quiet)
    console.info(f"noise optimisation: {result.summary()}")
    return result.image.detach().cpu()


def _summary(label: str, result, sampler, sequential: bool) -> str:
    how = "sequential" if sequential else type(sampler.solver).__name__.lower()
    return (f"{label}: {result.status.value}, {result.rounds} rounds, {result.nfe} NFEs, "
            f"{result.seconds:.1f} s wall-clock ({how}, T={sampler.steps})")


# ------------------------------------------------------------------------------------------------
# the comparison figure
# ------------------------------------------------------------------------------------------------
def _display(x: torch.Tensor):
    import numpy as np

    a = ((x.detach().to("cpu", torch.float64)[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
    return (a[..., 0], "gray") if a.shape[2] == 1 else (np.ascontiguousarray(a), None)


def write_comparison(path: Path, panels: list[tuple[str, torch.Tensor]], overwrite: bool = False,
                     title: str | None = None) -> Path:
    """A side-by-side figure of images in [-1, 1] (1 or 3 channels, any sizes), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .images import atomic_path

    n = len(panels)
    fig = Figure(figsize=(2.6 * n, 2.9 if title else 2.7), dpi=100)
    FigureCanvasAgg(fig)
    for i, (label, img) in enumerate(panels):
        ax = fig.add_subplot(1, n, i + 1)
        a, cmap = _display(img)
        ax.imshow(a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _scores(x, gt) -> str:
    from .metrics import psnr, ssim

    return f"PSNR {psnr(x[0], gt[0]):.2f} dB, SSIM {ssim(x[0], gt[0]):.3f}"


def _panels(problem: Problem, restored: torch.Tensor, gt: torch.Tensor | None):
    op, y = problem.operator, problem.y
    with torch.no_grad():
        pinv = op.A_pinv(y)
    panels = [("degraded (y)", image_from_observation(y, op).cpu())]
    pinv_label, restored_label = "A†y", "restored"
    if gt is not None:
        pinv_label += "\n" + _scores(pinv.cpu(), gt)
        restored_label += "\n" + _scores(restored.cpu(), gt)
    panels += [(pinv_label, pinv.cpu()), (restored_label, restored.cpu())]
    if gt is not None:
        panels.append(("ground truth", gt))
    return panels


# ------------------------------------------------------------------------------------------------
# sub-commands
# ------------------------------------------------------------------------------------------------
def cmd_restore(args, console: _Console) -> int:
    if getattr(args, "optimize_noise", False) and not args.reference:
        raise CLIError("--optimize-noise needs --reference REF (the image to steer toward)")
    from .images import read_image, write_image

    inputs = _expand_inputs(args.inputs)
    out = Path(args.output)
    many = len(inputs) > 1 or out.is_dir() or args.output.endswith(("/", os.sep))
    if many:
        if out.exists() and not out.is_dir():
            raise CLIError(f"with several inputs the output {out} must be a folder")
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
    if args.solver is not None:
        from .solver import get_solver

        get_solver(args.solver)  # fail before loading anything
    device = _device(args.device)
    if many:
        out.mkdir(parents=True, exist_ok=True)
        if args.compare:
            Path(args.compare).mkdir(parents=True, exist_ok=True)
    # Read and check every input before the first (slow) restoration.
    problems = []
    for p in inputs:
        x, notes = read_image(p)
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
                                progress=not args.quiet and not args.sequential)
        y = problem.y.to(device)
        if getattr(args, "optimize_noise", False):
            image = _optimize_noise(sampler, y, args, problem, device, console)
        else:
            result = _run(sampler, y, args.seed, device, args.sequential, console)
            image = result.image.detach().cpu()
        problem.operator.to("cpu")  # the sampler moved it to the device
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


def cmd_degrade(args, console: _Console) -> int:
    from .images import read_image, write_image
    from .operators import Mask, degrade
    from .operators.masks import save_mask
    from .operators.tasks import TASKS, make_operator

    inp, out = Path(args.input), Path(args.output)
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
    outputs = [out, sidecar] + ([mask_png] if mask_op is not None else [])
    _check_outputs(outputs, [inp] + ([Path(args.mask)] if args.mask else []), args.overwrite)
    sigma_y = float(op.task_config["sigma_y"])
    y = degrade(x.to(torch.float64), op, sigma_y, torch.Generator().manual_seed(args.seed)).to(torch.float32)
    picture = image_from_observation(y, op)
    if (picture.abs() > 1 + 1 / 255).any():
        notes.append("the observation has values outside the image range; the file holds them "
                     "clamped (restore uses the clamped y)")
    for note in notes:
        console.note(f"{inp}: {note}")
    write_image(picture, out, overwrite=args.overwrite)
    if mask_op is not None:
        from .images import atomic_path

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
        "quantisation": "the observation is stored as an 8-bit image; restore enforces data "
                        "consistency with that quantised y",
    }
    from .images import atomic_path

    with atomic_path(sidecar, overwrite=args.overwrite) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    console.info(f"{inp}: {task} observation {tuple(y.shape[1:])} -> {out} (settings: {sidecar}"
                 + (f", mask: {mask_png}" if mask_op is not None else "") + ")")
    return 0


def cmd_demo(args, console: _Console) -> int:
    from .images import write_image
    from .metrics import psnr, ssim
    from .operators import degrade
    from .operators.tasks import make_operator
    from .photos import HOLDOUT, holdout_crop

    if args.photo not in HOLDOUT:
        raise CLIError(f"unknown demo photo {args.photo!r}; choose one of {', '.join(HOLDOUT)}")
    if args.size < 16:
        raise CLIError(f"--size must be at least 16, got {args.size}")
    if args.solver is not None:
        from .solver import get_solver

        get_solver(args.solver)
    device = _device(args.device)
    folder = Path(args.output)
    stem = f"{args.photo}_{args.task}"
    paths = {k: folder / f"{stem}_{k}.png" for k in ("ground_truth", "degraded", "restored", "compare")}
    params = _parse_params(args.param)
    shape = (3, args.size, args.size)
    op = make_operator(args.task, shape, **params)
    _check_outputs(list(paths.values()), [], args.overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    gt = holdout_crop(args.photo, args.size, scale=min(1.0, args.size / 256))[None]
    sigma_y = float(op.task_config["sigma_y"] if args.sigma_y is None else args.sigma_y)
    y = degrade(gt, op, sigma_y, torch.Generator().manual_seed(args.seed))
    console.info(f"demo: {args.photo} ({args.size}x{args.size} hold-out crop, never seen in training), "
                 f"task {args.task}: {op.task_config['params']}")
    prior = _load_prior(args, device, console)
    prior = _tiled(prior, shape[1:], args.tile_overlap, console)
    sampler = _make_sampler(prior, op, args, sigma_y, progress=not args.quiet and not args.sequential)
    result = _run(sampler, y.to(device), args.seed, device, args.sequential, console)
    restored = result.image.detach().cpu()
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


def cmd_tasks(args, console: _Console) -> int:
    from .operators.tasks import describe_tasks
    from .solver import available_solvers

    print(describe_tasks())
    print()
    print(f"solvers: {', '.join(available_solvers())} (default: the Sampler's, "
          f"{_sampler_defaults().get('solver')!s})")
    return 0


# ------------------------------------------------------------------------------------------------
# the parser
# ------------------------------------------------------------------------------------------------
def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def _pos_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _sampler_options(p: argparse.ArgumentParser) -> None:
    d = _sampler_defaults()
    g = p.add_argument_group("sampling")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="ADM / DDPM / diffusers checkpoint (default: the shipped prior)")
    g.add_argument("--solver", metavar="NAME",
                   help=f"fixed-point solver (default: the Sampler's, {d.get('solver')}); "
                        "`fixedpoint-ir tasks` lists them")
    g.add_argument("--sequential", action="store_true",
                   help="run the plain sequential chain instead (T network calls in a row: the "
                        "same answer, often faster on a CPU)")
    g.add_argument("--steps", type=_pos_int, metavar="T", help=f"sampling steps (default {d.get('steps')})")
    g.add_argument("--etw", type=float, metavar="ETA", help=f"eta, weight of eps in a step (default {d.get('etw')})")
    g.add_argument("--nw", type=float, metavar="W", help=f"weight of fresh noise (default {d.get('nw')})")
    g.add_argument("--sigma-y", type=_nonneg_float, metavar="S",
                   help="observation noise std on the [-1, 1] scale (default: the config's or task's)")
    g.add_argument("--seed", type=int, default=0, help="seed of x_T and the noises (default 0)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, … (default cpu)")
    g.add_argument("--max-batch", type=_pos_int, metavar="N",
                   help="most images per network call (bounds memory)")
    g.add_argument("--surrogate", metavar="white|PATH",
                   help="Gaussian data model the triangular solver linearises around: 'white', or a "
                        "PowerLawGaussian JSON (default: the prior's own; white for checkpoints)")
    g.add_argument("--tile-overlap", type=_pos_int, metavar="PX", help=argparse.SUPPRESS)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bars, notes or summaries")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Diffusion image restoration solved as one parallel fixed-point problem (DeqIR).",
        epilog=f"Try `{PROG} demo`, then `{PROG} degrade photo.png -o y.png --task sr4` and "
               f"`{PROG} restore y.png -o restored.png`.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("restore", help="restore degraded image files",
                       description="Restore degraded image files with the default prior (or --checkpoint).")
    r.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="degraded image(s) (for SR the low-resolution image); globs are expanded")
    r.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help="restored image file (a folder when there are several inputs)")
    r.add_argument("--task", help="the degradation (`fixedpoint-ir tasks`); not needed with a config")
    r.add_argument("--mask", metavar="PATH", help="inpainting mask image (white = observed)")
    r.add_argument("--config", metavar="JSON",
                   help="settings written by `degrade` (default: INPUT.json when it exists)")
    r.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="override a task parameter, e.g. --param missing=0.8 (repeatable)")
    r.add_argument("--compare", metavar="FIG.png", help="write a side-by-side figure")
    o = r.add_argument_group("noise optimisation (DEQ inversion)")
    o.add_argument("--optimize-noise", action="store_true",
                   help="optimise x_T so that the restoration approaches --reference")
    o.add_argument("--reference", metavar="REF", help="reference image for --optimize-noise")
    o.add_argument("--reference-loss", choices=["l2", "l1", "color"], default="l2",
                   help="distance to the reference: l2 / l1, or color (low-frequency colour, for "
                        "reference-based colorization; default l2)")
    o.add_argument("--opt-steps", type=_pos_int, default=20, metavar="N",
                   help="most optimisation steps (default 20)")
    o.add_argument("--opt-lr", type=float, default=0.05, metavar="LR", help="Adam learning rate (default 0.05)")
    o.add_argument("--gradient", choices=["implicit", "one_step", "unrolled"], default="implicit",
                   help="gradient with respect to x_T (default implicit: exact, memory independent of T)")
    r.add_argument("--ground-truth", metavar="GT", help="clean image, for scores and the figure")
    _sampler_options(r)
    _common(r)
    r.set_defaults(func=cmd_restore)

    dg = sub.add_parser("degrade", help="make a degraded observation (and its settings) from an image",
                        description="Degrade an image with a task; writes OUTPUT, OUTPUT.json and, "
                                    "for masks, OUTPUT.mask.png so that `restore OUTPUT` rebuilds the "
                                    "same operator.")
    dg.add_argument("input", metavar="INPUT")
    dg.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="observation image (PNG)")
    dg.add_argument("--task", help="the degradation (`fixedpoint-ir tasks`)")
    dg.add_argument("--mask", metavar="PATH", help="inpainting mask image (white = observed)")
    dg.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="override a task parameter, e.g. --param missing=0.8 (repeatable)")
    dg.add_argument("--seed", type=int, default=0, help="seed of random masks and of the noise (default 0)")
    dg.add_argument("--sigma-y", type=_nonneg_float, metavar="S",
                    help="observation noise std on the [-1, 1] scale (default: the task's)")
    _common(dg)
    dg.set_defaults(func=cmd_degrade)

    dm = sub.add_parser("demo", help="degrade and restore a shipped hold-out photo (offline)",
                        description="Degrade a crop of a hold-out photo (never seen in training), "
                                    "restore it with the default prior and write the figure.")
    dm.add_argument("-o", "--output", default="fixedpoint-ir-demo", metavar="DIR",
                    help="output folder (default ./fixedpoint-ir-demo)")
    dm.add_argument("--task", default="sr4", help="the degradation (default sr4)")
    dm.add_argument("--size", type=_pos_int, default=128, help="crop size in pixels (default 128)")
    dm.add_argument("--photo", default="astronaut", help="astronaut, flower or grace_hopper")
    dm.add_argument("--param", action="append", metavar="KEY=VALUE", help=argparse.SUPPRESS)
    _sampler_options(dm)
    _common(dm)
    dm.set_defaults(func=cmd_demo)

    t = sub.add_parser("tasks", help="list the tasks and solvers")
    t.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    t.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 user error, 1 internal error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    console = _Console(quiet=getattr(args, "quiet", False))
    debug = getattr(args, "debug", False)
    try:
        return args.func(args, console)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            PermissionError, ValueError, KeyError) as e:
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001
        if debug:
            raise
        from .solver import SolverDivergedError

        if isinstance(e, SolverDivergedError):
            print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
            return 2
        print(f"{PROG} {args.command}: internal error: {type(e).__name__}: {e} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
