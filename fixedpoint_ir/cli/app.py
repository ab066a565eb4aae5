"""The argument parser, ``fixedpoint-ir tasks`` and ``main`` (exit statuses, one-line errors)."""
from __future__ import annotations

import argparse
import math
import sys

from .common import PROG, CLIError, _Console, _interrupts_deferred, _sampler_defaults, _seed


def _command(module: str, name: str):
    """The sub-command ``name`` of ``module``, imported when it runs (argument parsing, ``--help``
    and argument errors never import torch)."""
    def run(args, console: _Console) -> int:
        import importlib

        with _interrupts_deferred():
            command = getattr(importlib.import_module(f".{module}", __package__), name)
        return command(args, console)
    return run


cmd_restore = _command("restore", "cmd_restore")
cmd_degrade = _command("degrade", "cmd_degrade")
cmd_demo = _command("demo", "cmd_demo")


def cmd_tasks(args, console: _Console) -> int:
    from ..operators.tasks import describe_tasks
    from ..solver import available_solvers

    print(describe_tasks())
    print()
    print(f"solvers: {', '.join(available_solvers())}, or auto (the command line's default: "
          f"{_sampler_defaults().get('solver')!s} or the sequential chain, whichever is predicted faster)")
    return 0



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
                   help=f"fixed-point solver, or auto (default): measure what a batch of states costs "
                        f"against one and run the {d.get('solver')} solver or the sequential chain, "
                        "whichever is predicted faster; `fixedpoint-ir tasks` lists them")
    g.add_argument("--sequential", action="store_true",
                   help="run the plain sequential chain (T network calls in a row: the same answer)")
    g.add_argument("--steps", type=_pos_int, metavar="T", help=f"sampling steps (default {d.get('steps')})")
    g.add_argument("--etw", type=float, metavar="ETA",
                   help="the paper's eta: how much of the network's predicted noise each step keeps, "
                        "c2 = sqrt(1-abar)*sqrt(1-ETA^2); 0 keeps all of it (plain DDIM), 1 none "
                        "(default: the task's, see `fixedpoint-ir tasks`)")
    g.add_argument("--nw", type=float, metavar="W",
                   help="weight of fresh random noise added at each step, c1 = sqrt(1-abar)*W; 0 "
                        "adds none, as the reference code (default: the task's)")
    g.add_argument("--chain", choices=["ddnm", "ddrm", "diffpir"],
                   help="update rule: ddnm (DeqIR's), ddrm (Kawar et al. 2022, eta 0.85, eta_b 1) or "
                        "diffpir (Zhu et al. 2023, zeta 0.3) (default: the task's)")
    g.add_argument("--t-max", type=_pos_int, metavar="T",
                   help="start the chain around A†y at this training timestep instead of from pure "
                        "noise (default: the task's, see `fixedpoint-ir tasks`; 1000: the whole schedule)")
    g.add_argument("--fix-null-mean", action=argparse.BooleanOptionalAction, default=None,
                   help="draw the noise without the image-wide constants the degradation does not see "
                        "(colorization's global colour), so the seed cannot set a colour cast "
                        "(default: the task's; on for colorize)")
    g.add_argument("--sigma-y", type=_nonneg_float, metavar="S",
                   help="observation noise std on the [-1, 1] scale (default: the config's or task's)")
    g.add_argument("--seed", type=_seed, default=0, help="seed of x_T and the noises, 0 to 2**64-1 (default 0)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, … (default cpu)")
    g.add_argument("--max-batch", type=_pos_int, metavar="N",
                   help="most images per network call (bounds memory)")
    g.add_argument("--surrogate", metavar="white|PATH",
                   help="Gaussian data model the triangular solver linearises around: 'white', or a "
                        "PowerLawGaussian JSON (default: the prior's own; white for checkpoints)")
    g.add_argument("--verbose", action="store_true",
                   help="also print why auto chose, the memory plan and each round's time split "
                        "(network / replay / bookkeeping)")
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
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("restore", help="restore degraded image files",
                       description="Restore degraded image files with the default prior (or --checkpoint).")
    r.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="degraded image(s) (for SR the low-resolution image); globs are expanded")
    r.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help="restored image file (a folder when there are several inputs)")
    r.add_argument("--task", help="the degradation (`fixedpoint-ir tasks`); not needed with a config")
    r.add_argument("--mask", metavar="PATH",
                   help="mask image of the input's size, white = observed, black = missing: for "
                        "inpainting, and for old_photo the scratches of the scan")
    r.add_argument("--config", metavar="JSON",
                   help="settings written by `degrade` (default: INPUT.json when it exists)")
    r.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="override a task parameter, e.g. --param missing=0.8 (repeatable)")
    r.add_argument("--compare", metavar="FIG.png", help="write a side-by-side figure")
    o = r.add_argument_group("noise optimisation (DEQ inversion)")
    o.add_argument("--optimize-noise", action="store_true",
                   help="optimise the noise (x_T, and the per-step noises where the chain draws them) so that the restoration approaches --reference")
    o.add_argument("--reference", metavar="REF", help="reference image for --optimize-noise")
    o.add_argument("--reference-loss", choices=["l2", "l1", "color"], default="l2",
                   help="distance to the reference: l2 / l1, or color (low-frequency colour, for "
                        "reference-based colorization; default l2)")
    o.add_argument("--opt-steps", type=_pos_int, default=20, metavar="N",
                   help="most optimisation steps (default 20)")
    o.add_argument("--opt-lr", type=float, default=0.05, metavar="LR", help="Adam learning rate (default 0.05)")
    o.add_argument("--gradient", choices=["implicit", "one_step", "unrolled"], default="implicit",
                   help="gradient with respect to the noise (default implicit: exact, memory independent of T)")
    r.add_argument("--ground-truth", metavar="GT", help="clean image, for scores and the figure")
    _sampler_options(r)
    _common(r)
    r.set_defaults(func=cmd_restore)

    dg = sub.add_parser("degrade", help="make a degraded observation (and its settings) from an image",
                        description="Degrade an image with a task; writes OUTPUT, OUTPUT.json and, "
                                    "for masks, OUTPUT.mask.png so that `restore OUTPUT` rebuilds the "
                                    "same operator.")
    dg.add_argument("input", metavar="INPUT", help="a clean image file (PNG, JPEG, …) to degrade")
    dg.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="observation image (PNG)")
    dg.add_argument("--task", help="the degradation (`fixedpoint-ir tasks`)")
    dg.add_argument("--float", action="store_true",
                    help="write the observation itself as a float32 array (OUTPUT .npy or .pt), exactly; "
                         "without it the PNG picture is 8-bit and the exact y goes to OUTPUT.y.npy")
    dg.add_argument("--mask", metavar="PATH", help="inpainting mask image (white = observed)")
    dg.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="override a task parameter, e.g. --param missing=0.8 (repeatable)")
    dg.add_argument("--seed", type=_seed, default=0,
                    help="seed of random masks and of the noise, 0 to 2**64-1 (default 0)")
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
    """Run the command line; returns the exit status (0 success, 2 user or file-system error, 1
    internal error, 130 interrupted by Ctrl-C at any point, start-up included)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130


def _main(argv: list[str] | None) -> int:
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
    except (CLIError, OSError, ValueError, KeyError) as e:   # the user's or the machine's, not ours
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if isinstance(e, OSError) and e.strerror and e.filename:   # "[Errno 30] …" → readable
            message = f"cannot write or read {e.filename}: {e.strerror}"
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001
        if debug:
            raise
        from ..solver import SolverDivergedError

        if isinstance(e, SolverDivergedError):
            print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
            return 2
        print(f"{PROG} {args.command}: internal error: {type(e).__name__}: {e} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
