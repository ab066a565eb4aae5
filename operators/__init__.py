"""Degradation operators (installed as ``fixedpoint_ir.operators``).

Every operator provides A, its pseudo-inverse A† (exact Moore–Penrose, of a documented truncation,
or iterative where stated) and the adjoint Aᵀ; see DESIGN §6 and the module docstrings.
"""
from .base import Operator, ddnm_plus_weights
from .blur import (AnisotropicGaussianBlur, ConvolutionBlur, GaussianBlur, SeparableBlur, blur_matrix,
                   gaussian_kernel, motion_kernel)
from .color import BT601, Colorization
from .compose import Compose, old_photo, product_rule_reason
from .denoise import Identity
from .functional import FunctionOperator, LinearOperator, cgls, wrap
from .inpainting import Mask
from .masks import (box_mask, mask_from_image, random_mask, save_mask, scratch_mask, stripe_mask,
                    text_mask)
from .noise import degrade, make_correction
from .separable import SeparableOperator
from .superres import AveragePool, Bicubic, bicubic_matrix, keys_kernel
from .tasks import (TASKS, Task, describe_tasks, list_tasks, make_operator, operator_from_config,
                    task_defaults)

__all__ = [
    "Operator", "Identity", "AveragePool", "Bicubic", "Mask", "Colorization", "BT601",
    "SeparableOperator", "SeparableBlur", "GaussianBlur", "AnisotropicGaussianBlur", "ConvolutionBlur",
    "Compose", "old_photo", "product_rule_reason",
    "LinearOperator", "FunctionOperator", "wrap", "cgls",
    "random_mask", "box_mask", "stripe_mask", "text_mask", "scratch_mask", "mask_from_image", "save_mask",
    "gaussian_kernel", "motion_kernel", "blur_matrix", "bicubic_matrix", "keys_kernel",
    "degrade", "make_correction", "ddnm_plus_weights",
    "TASKS", "Task", "make_operator", "list_tasks", "task_defaults", "operator_from_config",
    "describe_tasks",
]
