"""``python -m fixedpoint_ir`` runs the command line (same as the ``fixedpoint-ir`` script)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
