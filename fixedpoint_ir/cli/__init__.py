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

Errors that are the user's or the machine's (a missing, unreadable or oversized file, an existing
output without ``--overwrite``, an output that would replace the input, a missing or read-only
output folder, several inputs with one output file, a task that does not fit the image size, an
unknown task or solver, a diverged solve) exit with status 2 and one line on stderr, and the
outputs are checked before any slow or network work; ``--debug`` shows the traceback.
Conversions of the input (grey, alpha, palette, 16-bit) are reported as notes; what makes the
result doubtful (an image below the shipped prior's training size, a synthetic scratch mask,
heavy clipping) as warnings, also with ``--quiet``.

``--help``, ``--version`` and argument errors answer before torch is imported (the sub-commands
import it when they run); Ctrl-C at any time ends with "interrupted" on stderr and status 130.
"""
from __future__ import annotations

from .app import build_parser, main
from .common import CLIError, _Console

__all__ = ["main", "build_parser", "CLIError", "write_comparison", "image_from_observation",
           "observation_from_image", "_Console", "_tiled"]
#: the helpers that need torch, imported on first use (``--help`` never imports torch)
_LAZY = {"write_comparison": ".figures", "image_from_observation": ".problems",
         "observation_from_image": ".problems", "_tiled": ".running"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
