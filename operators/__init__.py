"""Degradation operators (installed as ``fixedpoint_ir.operators``)."""
from .base import Operator
from .color import Colorization
from .denoise import Identity
from .inpainting import Mask
from .superres import AveragePool

__all__ = ["Operator", "Identity", "AveragePool", "Mask", "Colorization"]
