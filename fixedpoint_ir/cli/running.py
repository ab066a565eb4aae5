"""Building the prior and sampler from the command-line options, and running them."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .common import CLIError, _Console


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

    kwargs = {}
    if args.solver is not None:
        from ..solver import get_solver

        kwargs["solver"] = get_solver(args.solver)  # ValueError lists the known solvers
    for name in ("steps", "etw", "nw", "chain", "t_max"):
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
                            steps=args.opt_steps, lr=args.opt_lr, progress=not args.quiet)
    console.info(f"noise optimisation: {result.summary()}")
    return result.image.detach().cpu()


def _summary(label: str, result, sampler, sequential: bool) -> str:
    how = "sequential" if sequential else type(sampler.solver).__name__.lower()
    return (f"{label}: {result.status.value}, {result.rounds} rounds, {result.nfe} NFEs, "
            f"{result.seconds:.1f} s wall-clock ({how}, T={sampler.steps})")
