"""A degradation of your own: any linear function of the image becomes an operator.

`LinearOperator.from_function` takes A as a Python function; it finds the pseudo-inverse A† by
conjugate gradients on the normal equations and the adjoint Aᵀ by autograd, and checks that A is
linear. Here A keeps every other column and averages the colour channels (half the resolution in
width, no colour). Writes `custom_operator.png`.
"""
import torch

from fixedpoint_ir import Prior, Sampler
from fixedpoint_ir.metrics import psnr
from fixedpoint_ir.operators import LinearOperator, degrade
from fixedpoint_ir.photos import holdout_crop
from _figure import save_panels


def A(image):  # drop every other column, then average the colour channels
    return image[:, :, :, ::2].mean(dim=1, keepdim=True)


x = holdout_crop("grace_hopper", 64, scale=0.25)[None]
operator = LinearOperator.from_function(A, image_shape=(3, 64, 64), tol=1e-5, max_iter=50)
y = degrade(x, operator)                                          # (1, 1, 64, 32)
result = Sampler(Prior.default(), operator, steps=20, etw=1.0, nw=1.0).sequential(
    y, generator=torch.Generator().manual_seed(0))
print(result.summary())
print(f"PSNR: A†y {float(psnr(operator.A_pinv(y), x)):.2f} dB, restored {float(psnr(result.image, x)):.2f} dB")
save_panels("custom_operator.png", [[("y (grey, 64×32)", y), ("A†y", operator.A_pinv(y)),
                                     ("restored", result.image), ("ground truth", x)]])
