"""Four tasks side by side: super-resolution, deblurring, inpainting and colorization.

Each task is built by `make_operator` on the same 64×64 hold-out crop and restored with its own
default sampling settings (`fixedpoint-ir tasks` lists them) by the sequential chain, which is what
`solver="auto"` runs on a CPU. Writes `tasks_gallery.png`, one row per task: the observation y,
the pseudo-inverse A†y, the restoration and the ground truth.
"""
import torch

from fixedpoint_ir import Prior, Sampler
from fixedpoint_ir.metrics import psnr
from fixedpoint_ir.operators import degrade, make_operator
from fixedpoint_ir.photos import holdout_crop
from _figure import save_panels

prior = Prior.default()
x = holdout_crop("flower", 64, scale=0.25)[None]
rows = []
for task in ("sr4", "deblur_gauss", "inpaint_random", "colorize"):
    operator = make_operator(task, tuple(x.shape[1:]))
    y = degrade(x, operator)
    restored = Sampler(prior, operator, steps=20).sequential(y, generator=torch.Generator().manual_seed(0))
    print(f"{task:15s} A†y {float(psnr(operator.A_pinv(y), x)):5.2f} dB -> restored {float(psnr(restored.image, x)):5.2f} dB")
    rows.append([(f"{task}: y", y), ("A†y", operator.A_pinv(y)), ("restored", restored.image), ("ground truth", x)])
save_panels("tasks_gallery.png", rows)
