"""Side-by-side panels of images in [-1, 1], shared by the examples (not an example itself)."""
from __future__ import annotations


def save_panels(path: str, rows: list[list[tuple[str, "object"]]]) -> None:
    """Write a grid of labelled images (rows of (label, tensor (1, C, H, W) in [-1, 1]))."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns, 2.4 * len(rows)), squeeze=False)
    for axes_row, row in zip(axes, rows):
        for ax in axes_row:
            ax.axis("off")
        for ax, (label, image) in zip(axes_row, row):
            a = ((image.detach().cpu().double()[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(a[..., 0] if a.shape[2] == 1 else a, cmap="gray" if a.shape[2] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
