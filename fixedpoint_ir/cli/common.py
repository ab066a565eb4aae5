"""What every sub-command shares: the user-error type, the console, argument and path checks."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import sys
import threading
from pathlib import Path

PROG = "fixedpoint-ir"
SIDECAR_FORMAT = "fixedpoint-ir degrade"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


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


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold Ctrl-C back until the block ends, then raise KeyboardInterrupt.

    For the import of torch: a KeyboardInterrupt raised while its C++ start-up calls back into
    Python aborts the process (pybind11: "terminate called after throwing …", status -6) instead
    of reaching ``main``.
    """
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:   # e.g. ignored (nohup)
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _import_torch() -> None:
    """Import torch (seconds) once the cheap argument checks passed, Ctrl-C held back meanwhile."""
    with _interrupts_deferred():
        import torch  # noqa: F401


def _sampler_defaults() -> dict:
    """The Sampler's default solver and steps, without importing torch (for ``--help``)."""
    from ..constants import DEFAULT_SOLVER, DEFAULT_STEPS

    return {"solver": DEFAULT_SOLVER, "steps": DEFAULT_STEPS}


def _solver_from_option(name: str | None):
    """The solver of ``--solver`` (None for auto, the default); an unknown name is a user error
    that lists every accepted value, auto included."""
    if name in (None, "auto"):
        return None
    from ..solver import available_solvers, get_solver

    if name not in available_solvers():
        raise ValueError(f"unknown solver {name!r} for --solver; choose auto (the default) or one of: "
                         f"{', '.join(available_solvers())}")
    return get_solver(name)


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


def _check_output_folders(outputs: list[Path]) -> None:
    """Every output's folder exists and accepts a new file now, before any slow or network work."""
    from ..images import check_writable

    for folder in dict.fromkeys((o.parent if str(o.parent) else Path(".")) for o in outputs):
        if not folder.exists():
            raise CLIError(f"the output folder {folder} does not exist: create it first "
                           f"(mkdir -p {folder}) or choose another output")
        if not folder.is_dir():
            raise CLIError(f"the output folder {folder} is a file, not a folder")
        try:
            check_writable(folder)
        except OSError as e:
            raise CLIError(f"cannot write to the output folder {folder}: "
                           f"{e.strerror or e} (choose a writable output)") from None


def _make_output_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create the output folder {folder}: {e.strerror or e}") from None


#: torch.Generator.manual_seed takes 64-bit seeds.
SEED_MAX = 2 ** 64 - 1


def _seed(text: str) -> int:
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64 - 1], got {text}")
    return v


def _check_suffix(path: Path, what: str = "output") -> None:
    from ..constants import WRITABLE_SUFFIXES

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


def _device(name: str):
    import torch

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

