"""``python -m fixedpoint_ir`` runs the command line; :func:`run` is also the ``fixedpoint-ir``
script's entry point: Ctrl-C while the command line itself is still being imported ends with
"interrupted" and status 130 too, as everywhere later (see ``fixedpoint_ir.cli.main``)."""
import os
import sys


def run() -> int:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("fixedpoint-ir: interrupted", file=sys.stderr, flush=True)
        status = 130
    else:
        status = main()
    if status == 130:
        # CPython remembers a KeyboardInterrupt that ended any code it ran through PyRun_* (as some
        # extension imports do) and then re-kills itself with SIGINT at exit (status -2), even
        # though ours was caught; the interrupt is handled and every output already cleaned up.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return status


if __name__ == "__main__":
    raise SystemExit(run())
