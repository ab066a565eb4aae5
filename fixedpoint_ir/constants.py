"""Constants the command line needs before it imports torch (``--help``, argument checks); the
modules that use them with torch (``sampler``, ``images``) import them from here."""

#: The Sampler's default solver and number of steps T.
DEFAULT_SOLVER = "triangular"
DEFAULT_STEPS = 20

#: Image files that can be written (PNG is lossless, JPEG is not).
WRITABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Files holding a float observation exactly (a NumPy array or a torch tensor).
FLOAT_SUFFIXES = (".npy", ".pt")
