"""Does DEQ inversion work from the task defaults? (issue 21, item 2)

The quick start's problem — the hold-out astronaut crop at 64×64 (scale 0.25), ×4 average-pool
super-resolution, the shipped prior, ``Sampler(prior, operator, steps=T)`` with no sampling
argument (sr4's defaults: etw = nw = 1, t_max = 600) — and ``optimize_noise`` at its defaults
(implicit gradient, Adam, lr 0.05, seed 0) for a few steps, once optimising what
``variables="auto"`` picks (x_T and the per-step noises, since the chain reads them) and once x_T
alone. Losses: L2 to the ground truth (an oracle: how far the noise can steer the image) and to a
bicubic upsampling of y (no oracle). Prints and writes the relative loss decrease and PSNR before
and after; resumable (rows already in the JSON are skipped).

    nice python benchmarks/inversion_defaults.py            # -> results/inversion_defaults.{json,md}
    nice python benchmarks/inversion_defaults.py --T 10 --targets "ground truth (oracle)" --variables auto \
        --opt-steps 15 --out inversion_defaults_15  [--keep-norm --out inversion_defaults_15_keep_norm]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def psnr(a, b) -> float:
    import torch

    x, y = ((a.clamp(-1, 1) + 1) / 2), ((b.clamp(-1, 1) + 1) / 2)
    mse = float(torch.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def run_one(T: int, variables: str, target: str, opt_steps: int, size: int, keep_norm: bool = False) -> dict:
    import torch
    import torch.nn.functional as F

    from fixedpoint_ir import Prior, Sampler
    from fixedpoint_ir.inversion import ZeroGradientError, optimize_noise
    from fixedpoint_ir.losses import ReferenceLoss
    from fixedpoint_ir.operators import degrade, make_operator
    from fixedpoint_ir.photos import holdout_crop

    prior = Prior.default()
    x = holdout_crop("astronaut", size, scale=0.25)[None]
    operator = make_operator("sr4", tuple(x.shape[1:]))
    y = degrade(x, operator)
    sampler = Sampler(prior, operator, steps=T)
    reference = x if target == "ground truth (oracle)" else \
        F.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    start = time.perf_counter()
    try:
        res = optimize_noise(sampler, y, ReferenceLoss(reference), variables=variables, steps=opt_steps,
                             keep_norm=keep_norm, patience=None, generator=torch.Generator().manual_seed(0), progress=False)
    except ZeroGradientError as err:   # x_T washed out: what a user of variables="x_T" gets
        return {"T": T, "variables": variables, "target": target, "optimised": variables,
                "history": [], "decrease": 0.0, "psnr_before": math.nan, "psnr_after": math.nan,
                "seconds": time.perf_counter() - start, "refused": str(err).split(":")[0]}
    return {"T": T, "variables": variables, "target": target, "keep_norm": keep_norm,
            "optimised": res.described + (", keep_norm" if keep_norm else ""),
            "history": res.history, "decrease": res.relative_decrease,
            "psnr_before": psnr(res.initial_image, x), "psnr_after": psnr(res.image, x),
            "seconds": time.perf_counter() - start, "etw": sampler.etw, "nw": sampler.nw,
            "t_max": sampler.t_max}


def write_md(rows: list[dict], command: str, md: Path) -> None:
    import torch

    lines = ["# DEQ inversion from the task defaults", "",
             f"Command: `{command}`. Machine: 2-core CPU, shared with other jobs, one thread, "
             f"torch {torch.__version__}.", "",
             "Quick-start problem (astronaut 64×64 crop, scale 0.25, sr4), shipped prior, "
             "`Sampler(prior, operator, steps=T)` (etw = nw = 1, t_max = 600), `optimize_noise` "
             "defaults (implicit gradient, Adam, lr 0.05; patience off), seed 0. PSNR of the best iterate.", "",
             "| T | loss to | optimised | loss per step | decrease | PSNR before → after | s |",
             "|---:|---|---|---|---:|---|---:|"]
    for r in rows:
        if r.get("refused"):
            lines.append(f"| {r['T']} | {r['target']} | {r['optimised']} | ZeroGradientError: "
                         f"{r['refused']} | — | — | {r['seconds']:.0f} |")
            continue
        hist = " → ".join(f"{v:.4g}" for v in r["history"])
        lines.append(f"| {r['T']} | {r['target']} | {r['optimised']} | {hist} | "
                     f"{100 * r['decrease']:.1f} % | {r['psnr_before']:.2f} → {r['psnr_after']:.2f} | "
                     f"{r['seconds']:.0f} |")
    md.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[10, 20])
    p.add_argument("--opt-steps", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--targets", nargs="+", default=["ground truth (oracle)", "bicubic(y)"])
    p.add_argument("--variables", nargs="+", default=["auto", "x_T"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep-norm", action="store_true", help="optimize_noise(keep_norm=True)")
    p.add_argument("--out", default="inversion_defaults", help="results/OUT.{json,md}")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    command = " ".join(["python benchmarks/inversion_defaults.py", *(sys.argv[1:] if argv is None else argv)])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json, out_md = RESULTS / f"{args.out}.json", RESULTS / f"{args.out}.md"
    rows = json.loads(out_json.read_text()) if out_json.is_file() else []
    done = {(r["T"], r["variables"], r["target"]) for r in rows}
    for T in args.T:
        for target in args.targets:
            for variables in args.variables:
                if (T, variables, target) in done:
                    continue
                r = run_one(T, variables, target, args.opt_steps, args.size, args.keep_norm)
                print(f"T={T} {target:22s} {r['optimised']:40s} {r.get('refused', '')} decrease {100 * r['decrease']:5.1f} % "
                      f"PSNR {r['psnr_before']:.2f} -> {r['psnr_after']:.2f} ({r['seconds']:.0f} s)",
                      flush=True)
                rows.append(r)
                out_json.write_text(json.dumps(rows, indent=1))
                write_md(rows, command, out_md)


if __name__ == "__main__":
    main()
