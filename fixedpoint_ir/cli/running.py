"""Building the prior and sampler from the command-line options, and running them."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # torch is imported where it is used: `--help` never needs it
    import torch

from .common import CLIError, _Console, _solver_from_option


def _load_prior(args, device: torch.device, console: _Console):
    from ..priors.base import Prior

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
    from ..tiling import TiledPrior, needs_tiling

    if not needs_tiling(prior, image_hw):
        return prior
    tiled = TiledPrior(prior, overlap=overlap)
    rows, cols = tiled.layout(*image_hw)
    th, tw = tiled.tile
    console.note(f"the prior takes {th}x{tw} images: restoring the {image_hw[0]}x{image_hw[1]} image "
                 f"as {len(rows)}x{len(cols)} overlapping tiles (overlap {tiled.overlap[0]} px, blended)")
    return tiled


def _make_sampler(prior, op, args, sigma_y: float, progress: bool):
    from ..sampler import Sampler

    from ..cost import enable_disk_cache

    enable_disk_cache()   # batch costs measured once per prior, device and size, across runs
    solver = _solver_from_option(args.solver)
    # the CLI default, auto: parallel only where it is predicted faster
    kwargs = {"solver": "auto" if solver is None else solver}
    for name in ("steps", "etw", "nw", "chain", "t_max", "fix_null_mean"):
        value = getattr(args, name, None)
        if value is not None:
            kwargs[name] = value
    choice = getattr(args, "surrogate", None)
    if choice is not None:
        from ..surrogate import PowerLawGaussian, WhiteGaussian

        if choice == "white":
            kwargs["surrogate"] = WhiteGaussian()
        elif not Path(choice).is_file():
            raise FileNotFoundError(f"--surrogate: no such file {choice!r} (give 'white' or a JSON "
                                    "file written by PowerLawGaussian.save)")
        else:
            kwargs["surrogate"] = PowerLawGaussian.load(choice)   # ValueError names the file
    return Sampler(prior, op, progress=progress, sigma_y=sigma_y, **kwargs)


def _run(sampler, y, seed: int, device: torch.device, sequential: bool, console: _Console,
         verbose: bool = False):
    import torch

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
    if verbose:
        for line in _verbose_lines(result):
            console.info(line)
    return result


def _verbose_lines(result) -> list[str]:
    """--verbose: the auto choice, the memory plan and the per-round time split."""
    lines = []
    if result.choice is not None:
        lines.append(f"solver: {result.choice.describe()}; batch costs measured at "
                     f"{result.choice.measured_at}")
    if result.memory is not None:
        lines.append(f"memory: max_batch {result.memory.max_batch}, {result.memory.describe()}")
    report = result.report
    if report is not None and report.round_times:
        rows = report.info.get("rows_evaluated", [])
        for k, part in enumerate(report.round_times):
            evaluated = f", {rows[k]} states" if k < len(rows) else ""
            lines.append(f"round {k + 1}: network {part['network']:.3f} s, replay {part['replay']:.3f} s, "
                         f"bookkeeping {part['bookkeeping']:.3f} s{evaluated}")
        total = report.time_split()
        share = lambda v: 100 * v / max(total["total"], 1e-12)  # noqa: E731
        lines.append(f"all rounds: network {share(total['network']):.1f} %, replay {share(total['replay']):.1f} %, "
                     f"bookkeeping {share(total['bookkeeping']):.1f} % of {total['total']:.2f} s")
    return lines


def _optimize_noise(sampler, y, args, problem, device, console: _Console) -> torch.Tensor:
    """--optimize-noise: optimise x_T toward --reference through the equilibrium (DEQ inversion)."""
    import torch
    from ..images import read_image
    from ..inversion import optimize_noise
    from ..losses import ColorLoss, ReferenceLoss

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
                            steps=args.opt_steps, lr=args.opt_lr, progress=_show_progress(args))
    console.info(f"noise optimisation: {result.summary()}")
    return result.image.detach().cpu()


def _summary(label: str, result, sampler, sequential: bool) -> str:
    """One line: how the image was obtained, in steps (the sequential chain) or rounds (a solver),
    and for a solver its status with the quantity compared with tol."""
    how = "sequential" if sequential else type(sampler.solver).__name__.lower()
    if getattr(result, "choice", None) is not None:
        how = result.choice.describe()
    if result.report is None:   # the chain itself: nothing to certify
        what = f"sequential chain, {result.rounds} steps"
    else:
        from ..solver import describe_status

        what = f"{describe_status(result.status)}, {result.rounds} rounds"
        error, tol = result.report.image_error, sampler.solver.tol
        if error is not None and result.converged:
            how_known = "exact" if error == 0 else "estimated"
            what += f", image within {error:.1e} of the sequential chain ({how_known}; tol {tol:g})"
        elif error is not None:
            what += f", estimated distance to the sequential chain {error:.1e} > tol {tol:g}"
    how = f"T={sampler.steps}" if how == "sequential" else f"{how}, T={sampler.steps}"
    return f"{label}: {what}, {result.nfe} NFEs, {result.seconds:.1f} s wall-clock ({how})"


def _show_progress(args) -> bool:
    """Progress bars only for a person watching: not with --quiet, not when stderr is no terminal."""
    import sys

    return not args.quiet and sys.stderr.isatty()


# --- issue 14: say when the prior is outside what it was trained for -------------------------------
#: Share of the restored values beyond the image range (by more than 8/255) that earns a warning.
CLIPPED_SHARE = 0.05


def _range_warnings(prior, image_shape, checkpoint) -> list[str]:
    """Warnings for images smaller than the crops the shipped prior was trained on."""
    crop = (getattr(prior, "metadata", None) or {}).get("crop") if not checkpoint else None
    h, w = (int(s) for s in tuple(image_shape)[-2:])
    if crop is None or min(h, w) >= int(crop):
        return []
    return [f"{h}x{w} is smaller than the {crop}x{crop} crops the shipped prior was trained on: expect a "
            f"poor result (colours especially: colorize / old_photo give saturated, wrong colours)"]


def _clipping_warning(image: torch.Tensor) -> str | None:
    """A warning when much of the restored image lies outside [-1, 1] (the file holds it clipped)."""
    share = float((image.detach().abs() > 1 + 16 / 255).float().mean())
    if share <= CLIPPED_SHARE:
        return None
    return (f"{100 * share:.0f} % of the restored values lie outside the image range and are clipped "
            "in the file: the prior could not restore this image (too small, or unlike its training "
            "images); the output is unreliable")
