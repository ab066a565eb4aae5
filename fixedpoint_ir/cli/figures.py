"""The side-by-side comparison figure and the scores printed with it."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # torch is imported where it is used: `--help` never needs it
    import torch

from .problems import Problem, image_from_observation


def _display(x: torch.Tensor):
    import torch
    import numpy as np

    a = ((x.detach().to("cpu", torch.float64)[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
    return (a[..., 0], "gray") if a.shape[2] == 1 else (np.ascontiguousarray(a), None)


def write_comparison(path: Path, panels: list[tuple[str, torch.Tensor]], overwrite: bool = False,
                     title: str | None = None) -> Path:
    """A side-by-side figure of images in [-1, 1] (1 or 3 channels, any sizes), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..images import atomic_path

    n = len(panels)
    fig = Figure(figsize=(2.6 * n, 2.9 if title else 2.7), dpi=100)
    FigureCanvasAgg(fig)
    for i, (label, img) in enumerate(panels):
        ax = fig.add_subplot(1, n, i + 1)
        a, cmap = _display(img)
        ax.imshow(a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _scores(x, gt) -> str:
    from ..metrics import psnr, ssim

    return f"PSNR {psnr(x[0], gt[0]):.2f} dB, SSIM {ssim(x[0], gt[0]):.3f}"


def _panels(problem: Problem, restored: torch.Tensor, gt: torch.Tensor | None):
    import torch

    op, y = problem.operator, problem.y
    with torch.no_grad():
        pinv = op.A_pinv(y)
    panels = [("degraded (y)", image_from_observation(y, op).cpu())]
    pinv_label, restored_label = "A†y", "restored"
    if gt is not None:
        pinv_label += "\n" + _scores(pinv.cpu(), gt)
        restored_label += "\n" + _scores(restored.cpu(), gt)
    panels += [(pinv_label, pinv.cpu()), (restored_label, restored.cpu())]
    if gt is not None:
        panels.append(("ground truth", gt))
    return panels
