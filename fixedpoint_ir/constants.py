"""Defaults that the command line shows in ``--help`` before importing torch (the Sampler's
signature uses these same constants)."""

#: The Sampler's default solver and number of steps T.
DEFAULT_SOLVER = "triangular"
DEFAULT_STEPS = 20
