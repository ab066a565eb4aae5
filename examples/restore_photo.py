"""Restore a photo: ×4 super-resolution of a hold-out crop with the shipped prior.

The crop (64×64, never seen in training) is degraded by the `sr4` task (4×4 average pooling) and
restored with the task's default sampling settings. `solver="auto"` measures what a batch of
states costs on this machine and runs the parallel solve or the sequential chain, whichever it
predicts faster (the same image either way); the summary line says which and why. Writes
`restore_photo.png` (degraded / restored / ground truth).
"""
import torch

from fixedpoint_ir import Prior, Sampler
from fixedpoint_ir.metrics import psnr
from fixedpoint_ir.operators import degrade, make_operator
from fixedpoint_ir.photos import holdout_crop
from _figure import save_panels

prior = Prior.default()                                   # the shipped learned prior
x = holdout_crop("astronaut", 64, scale=0.25)[None]       # ground truth in [-1, 1], NCHW
operator = make_operator("sr4", tuple(x.shape[1:]))
y = degrade(x, operator)                                  # (1, 3, 16, 16)

sampler = Sampler(prior, operator, steps=20, solver="auto")   # parallel or sequential, whichever is faster
result = sampler.restore(y, generator=torch.Generator().manual_seed(0))
print(result.summary())
print(f"PSNR: A†y {float(psnr(operator.A_pinv(y), x)):.2f} dB, restored {float(psnr(result.image, x)):.2f} dB")

save_panels("restore_photo.png", [[("degraded y (16×16)", y), ("restored", result.image),
                                   ("ground truth", x)]])
