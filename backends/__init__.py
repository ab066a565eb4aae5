"""Fixed-point solvers (installed as ``fixedpoint_ir.backends``), one module per family.

Importing this package registers every solver by name (see ``fixedpoint_ir.solver.get_solver``).
"""
from .anderson import Anderson
from .broyden import Broyden
from .paradigms import ParaDiGMS
from .parataa import ParaTAA
from .picard import Picard
from .torchdeq_backend import TorchDEQ
from .triangular import Triangular

__all__ = ["Picard", "Anderson", "Broyden", "TorchDEQ", "Triangular", "ParaDiGMS", "ParaTAA"]
