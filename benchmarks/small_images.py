"""Why colorization of small images fails with the shipped prior (issue 14): values out of range.

For each task and crop size, the three hold-out photos are degraded and restored with the
sequential chain (T = 20, seed 0; the parallel solvers reach the same image), and the share of
restored values beyond the image range by more than 16/255 is printed (the file holds them
clipped: the "solid saturated red" of 32 px colorizations). The CLI warns above 5 %
(``fixedpoint_ir.cli.running.CLIPPED_SHARE``) and below the 64 px training crops.

    nice python benchmarks/small_images.py --threads 1
"""
from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["colorize", "old_photo", "sr4", "inpaint_random"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from fixedpoint_ir import Prior, Sampler
    from fixedpoint_ir.operators import degrade, make_operator
    from fixedpoint_ir.photos import HOLDOUT, holdout_crop

    prior = Prior.default()
    print("| task | " + " | ".join(f"{s} px" for s in args.sizes) + " |")
    print("|---|" + "---:|" * len(args.sizes))
    for task in args.tasks:
        cells = []
        for size in args.sizes:
            shares = []
            for name in HOLDOUT:
                x = holdout_crop(name, size, scale=min(1.0, size / 256))[None]
                op = make_operator(task, (3, size, size))
                result = Sampler(prior, op, steps=20).sequential(degrade(x, op),
                                                                 generator=torch.Generator().manual_seed(0))
                shares.append(float((result.image.abs() > 1 + 16 / 255).float().mean()))
            cells.append(" / ".join(f"{100 * s:.1f}" for s in shares))
        print(f"| {task} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
