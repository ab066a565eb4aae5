"""``python -m fixedpoint_ir`` runs the command line; :func:`run` is also the ``fixedpoint-ir``
script's entry point: Ctrl-C while the command line itself is still being imported ends with
"interrupted" and status 130 too, as everywhere later (see ``fixedpoint_ir.cli.main``)."""
import sys


def run() -> int:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("fixedpoint-ir: interrupted", file=sys.stderr, flush=True)
        return 130
    return main()


if __name__ == "__main__":
    raise SystemExit(run())
