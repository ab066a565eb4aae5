"""Restoration quality through the command line, next to the same problem on the float y.

For sr4, deblur_gauss, inpaint_random (80 % missing) and colorize on the three hold-out photos
(64×64 crops at scale 0.25, written as 8-bit PNGs, which are the ground truth here):

* ``cli``: ``fixedpoint-ir degrade GT.png -o y.png --task …`` then ``restore y.png --steps 20``
  with no other option (the default parallel solver; restore reads the exact float y that degrade
  writes next to the picture, ``y.png.y.npy``);
* ``cli, 8-bit only``: the same without ``y.png.y.npy`` (restore sees the 8-bit picture only and
  treats its rounding as noise σ_y = (2/255)/√12), ``--sequential``;
* ``float y``: ``degrade --float`` (``.npy``) then ``restore --sequential``: the problem on the float y.

    nice python benchmarks/quality_cli.py        # writes results/quality_cli.md
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

TASKS = {"sr4": [], "deblur_gauss": [], "inpaint_random": ["--param", "missing=0.8"], "colorize": []}


def main() -> int:
    import torch

    from fixedpoint_ir.cli import main as cli
    from fixedpoint_ir.images import read_image, write_image
    from fixedpoint_ir.metrics import psnr
    from fixedpoint_ir.photos import HOLDOUT, holdout_crop

    torch.set_num_threads(1)
    out = Path(__file__).resolve().parent / "results"
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for task, extra in TASKS.items():
            for photo in HOLDOUT:
                gt_path = tmp / f"{photo}.png"
                write_image(holdout_crop(photo, 64, scale=0.25)[None], gt_path, overwrite=True)
                gt = read_image(gt_path)[0][0]
                d = tmp / f"{task}_{photo}"
                d.mkdir()
                q = ["--quiet"]
                assert cli(["degrade", str(gt_path), "-o", str(d / "y.png"), "--task", task, *extra, *q]) == 0
                assert cli(["restore", str(d / "y.png"), "-o", str(d / "cli.png"), "--steps", "20", *q]) == 0
                assert cli(["degrade", str(gt_path), "-o", str(d / "y.npy"), "--task", task, "--float",
                            *extra, *q]) == 0
                assert cli(["restore", str(d / "y.npy"), "-o", str(d / "float.png"), "--steps", "20",
                            "--sequential", *q]) == 0
                (d / "y.png.y.npy").unlink()
                assert cli(["restore", str(d / "y.png"), "-o", str(d / "8bit.png"), "--steps", "20",
                            "--sequential", *q]) == 0
                row = {"task": task, "photo": photo,
                       **{k: psnr(read_image(d / f"{k}.png")[0][0], gt) for k in ("cli", "float", "8bit")}}
                rows.append(row)
                print(row, f"{time.perf_counter() - started:.0f} s", flush=True)
    (out / "quality_cli.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# Quality through the command line (64×64 hold-out crops, T = 20, seed 0)", "",
             "Command: `nice python benchmarks/quality_cli.py` on this 2-core CPU (shared with other "
             f"jobs), {(time.perf_counter() - started) / 60:.1f} min. PSNR in dB on [0, 1] against the "
             "8-bit ground-truth PNG; mean of astronaut, flower, grace_hopper. See the module "
             "docstring for the three columns.", "",
             "| task | cli (degrade, restore --steps 20) | float y (--float, sequential) | cli − float y | "
             "8-bit picture only (σ_y from the rounding) | 8-bit − float y |", "|---|---:|---:|---:|---:|---:|"]
    for task in TASKS:
        r = [x for x in rows if x["task"] == task]
        m = {k: sum(x[k] for x in r) / len(r) for k in ("cli", "float", "8bit")}
        lines.append(f"| {task} | {m['cli']:.2f} | {m['float']:.2f} | {m['cli'] - m['float']:+.2f} | "
                     f"{m['8bit']:.2f} | {m['8bit'] - m['float']:+.2f} |")
    (out / "quality_cli.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
