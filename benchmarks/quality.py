"""Restoration quality of the shipped prior on the three hold-out photos, next to A†y.

For every task (sr4, deblur_gauss, inpaint_random with 80 % missing, inpaint_text, colorize) and
every hold-out photo (astronaut, flower, grace_hopper; 128×128 crops at scale 0.5, never seen in
training): the observation y = A x (σ_y = 0), the pseudo-inverse A†y, the sequential chain and the
parallel fixed-point solve (the Sampler's default solver and configuration), with PSNR and SSIM
(fixedpoint_ir.metrics: [0, 1] after clamping, scikit-image SSIM with the Wang et al. setting),
NFEs per image, solver rounds, wall-clock, the largest difference between the parallel and the
sequential image, and for colorize the consistency RMS(A x − y) of the restoration.

Writes ``quality.md``, ``quality.json`` and one figure per task (rows = photos; columns =
observation, A†y, restored, ground truth) to ``--out`` / ``--figures``.

    nice python benchmarks/quality.py                       # everything, T = 20, seed 0
    python benchmarks/quality.py --tasks sr4 --photos astronaut --size 64   # a quick look
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from fixedpoint_ir import Prior, Sampler
from fixedpoint_ir.metrics import consistency, psnr, ssim
from fixedpoint_ir.operators import degrade
from fixedpoint_ir.operators.tasks import make_operator
from fixedpoint_ir.photos import HOLDOUT, holdout_crop

TASKS = {
    "sr4": {},
    "deblur_gauss": {},
    "inpaint_random": {"missing": 0.8},
    "inpaint_text": {},
    "colorize": {},
}


def _observation_picture(y: torch.Tensor, op) -> torch.Tensor:
    from fixedpoint_ir.cli import image_from_observation

    return image_from_observation(y, op)


def run_case(prior, task: str, params: dict, photo: str, size: int, scale: float, steps: int,
             seed: int, parallel: bool = True) -> dict:
    gt = holdout_crop(photo, size, scale=scale)[None]
    op = make_operator(task, gt.shape[1:], **params)
    y = degrade(gt, op, 0.0)
    pinv = op.A_pinv(y)
    sampler = Sampler(prior, op, steps=steps)
    seq = sampler.sequential(y, generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # --sequential-only: the parallel solve's image is the sequential one (to its tolerance).
        par = sampler.restore(y, generator=torch.Generator().manual_seed(seed)) if parallel else seq
    row = {
        "task": task, "photo": photo, "params": op.task_config["params"],
        "solver": type(sampler.solver).__name__, "solver_repr": repr(sampler.solver),
        "steps": steps, "etw": sampler.etw, "nw": sampler.nw,
        "sampling": {"chain": getattr(sampler.chain_choice, "name", "ddnm"), "etw": sampler.etw,
                     "nw": sampler.nw, "noise": sampler.noise, "t_max": sampler.t_max},
        "pinv": {"psnr": psnr(pinv[0], gt[0]), "ssim": ssim(pinv[0], gt[0])},
        "sequential": {"psnr": psnr(seq.image[0], gt[0]), "ssim": ssim(seq.image[0], gt[0]),
                       "nfe": seq.nfe, "rounds": seq.rounds, "seconds": seq.seconds},
        "parallel": {"psnr": psnr(par.image[0], gt[0]), "ssim": ssim(par.image[0], gt[0]),
                     "nfe": par.nfe, "rounds": par.rounds, "seconds": par.seconds,
                     "status": par.status.value,
                     "residual": par.residuals[-1] if par.residuals else None,
                     "warnings": [str(w.message) for w in caught]},
        "max_abs_parallel_minus_sequential": float((par.image - seq.image).abs().max()),
        "consistency": {"pinv": consistency(op, pinv[0], y[0]),
                        "sequential": consistency(op, seq.image[0], y[0]),
                        "parallel": consistency(op, par.image[0], y[0])},
    }
    images = {"observation": _observation_picture(y, op)[0], "pinv": pinv[0], "restored": par.image[0],
              "ground_truth": gt[0]}
    return row, images


def _save_png(fig, path: Path, limit: int = 300_000) -> None:
    """Save a figure as PNG atomically; above ``limit`` bytes, as a 256-colour (dithered) PNG."""
    import io

    import numpy as np
    from PIL import Image

    from fixedpoint_ir.images import atomic_path

    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    if buf.tell() > limit:
        buf = io.BytesIO()
        image.quantize(colors=256, dither=Image.Dither.FLOYDSTEINBERG).save(buf, format="PNG", optimize=True)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(buf.getvalue())


def figure(task: str, rows: list[dict], images: list[dict], path: Path, how: str = "parallel solve") -> None:
    """Rows = photos; columns = observation y, A†y, restored, ground truth; one image pixel is a
    whole number of figure pixels, at least 160 per panel so that the titles fit."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = ["observation", "pinv", "restored", "ground_truth"]
    n = len(rows)
    native = max(max(imgs["ground_truth"].shape[-2:]) for imgs in images)
    zoom = max(1, -(-160 // native))
    size = native * zoom
    gap, title, top = 6, 14, 18
    width = len(cols) * size + (len(cols) + 1) * gap
    height = top + n * (title + size) + gap
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    for i, (row, imgs) in enumerate(zip(rows, images)):
        for j, key in enumerate(cols):
            img = imgs[key]
            if key == "observation" and tuple(img.shape[-2:]) != tuple(imgs["ground_truth"].shape[-2:]):
                img = torch.nn.functional.interpolate(img[None], size=imgs["ground_truth"].shape[-2:],
                                                      mode="nearest")[0]
            h, w = img.shape[-2] * zoom, img.shape[-1] * zoom
            left = gap + j * (size + gap)
            bottom = height - top - (i + 1) * (title + size) + 0
            ax = fig.add_axes([left / width, bottom / height, w / width, h / height])
            x = ((img.detach().double() + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
            if x.shape[2] == 1:
                ax.imshow(x[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(np.ascontiguousarray(x), interpolation="nearest")
            ax.set_axis_off()
            label = {"observation": f"{row['photo']}: y",
                     "pinv": f"A†y {row['pinv']['psnr']:.1f} dB / {row['pinv']['ssim']:.3f}",
                     "restored": f"restored {row['parallel']['psnr']:.1f} dB / {row['parallel']['ssim']:.3f}",
                     "ground_truth": "ground truth"}[key]
            ax.set_title(label, fontsize=7, pad=2)
    fig.suptitle(f"{task} — shipped prior, T = {rows[0]['steps']}, {how}", fontsize=8,
                 y=1 - 4 / height, va="top")
    _save_png(fig, path)


def _fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + ", " + platform.machine()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(rows: list[dict], args, seconds: float, command: str) -> str:
    lines = []
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    solver = rows[0]["solver_repr"] if rows else "?"
    lines += [
        "# Restoration quality of the shipped prior on the hold-out photos",
        "",
        f"Command: `{command}` — run on {now} on this 2-core CPU ({_cpu_name()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; the machine was shared with other "
        f"jobs, so wall-clock times are indicative only). Total {seconds / 60:.1f} min.",
        "",
        f"Photos: {', '.join(args.photos)} (scikit-image / scikit-learn / matplotlib hold-out photos, never "
        f"used in training), {args.size}×{args.size} crops at scale {args.scale} "
        "(`fixedpoint_ir.photos.holdout_crop`, centred on the subject). Prior: the shipped SmallUNet "
        f"(`Prior.default()`). T = {args.steps} steps, seed {args.seed}, σ_y = 0, the Sampler's "
        f"defaults for each task (`operators/tasks.py` SAMPLING: "
        + "; ".join(f"{t}: {r['sampling']}" for t, r in {r['task']: r for r in rows}.items()) + "); "
        f"parallel solver: the Sampler's default, `{solver}`.",
        "",
        "PSNR in dB and SSIM on [0, 1] RGB after clamping, whole image (`fixedpoint_ir.metrics`: "
        "SSIM is scikit-image's with an 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, "
        "population covariances — the Wang et al. setting). 'seq' is the sequential chain (T network "
        "calls in a row), 'par' the parallel fixed-point solve; rounds = parallel depth; NFEs per image. "
        "max abs(par − seq) is the largest pixel difference between the two (on [-1, 1]). "
        "RMS(Ax − y) (colorize) is the consistency of the restoration, clamped to the image range "
        "as it is saved, with its observation, on the [0, 1] scale (before clamping it is exact by "
        "construction: the last DDNM step returns A†y + (I − A†A) x0).",
        "",
        *(["**Run with `--sequential-only`: the 'par' columns repeat the sequential result (no "
           "parallel solve was run; the library guarantees the same image to the solver's "
           "tolerance).**", ""] if getattr(args, "sequential_only", False) else []),
        "On this CPU the parallel solve costs more network evaluations (and wall-clock) than the "
        "sequential chain: all T states go through the network in every round. Its point is the "
        "parallel depth (rounds < T) on an accelerator; see `convergence.md` and `scaling.md`.",
        "",
    ]
    for task in args.tasks:
        trs = [r for r in rows if r["task"] == task]
        if not trs:
            continue
        lines += [f"## {task} ({', '.join(f'{k}={v}' for k, v in trs[0]['params'].items()) or 'defaults'})", ""]
        head = ("| photo | A†y PSNR | A†y SSIM | seq PSNR | seq SSIM | par PSNR | par SSIM | par rounds | "
                "par NFEs | seq NFEs | seq s | par s | max abs(par − seq) |")
        sep = "|---|" + "---:|" * 12
        if task == "colorize":
            head += " RMS(Ax − y) seq | RMS(Ax − y) par |"
            sep += "---:|---:|"
        lines += [head, sep]
        for r in trs + [None]:
            if r is None:
                if len(trs) < 2:
                    break
                mean = lambda f: sum(f(x) for x in trs) / len(trs)  # noqa: E731
                cells = ["**mean**", _fmt(mean(lambda x: x["pinv"]["psnr"])), _fmt(mean(lambda x: x["pinv"]["ssim"]), 3),
                         _fmt(mean(lambda x: x["sequential"]["psnr"])), _fmt(mean(lambda x: x["sequential"]["ssim"]), 3),
                         _fmt(mean(lambda x: x["parallel"]["psnr"])), _fmt(mean(lambda x: x["parallel"]["ssim"]), 3),
                         _fmt(mean(lambda x: x["parallel"]["rounds"]), 1), _fmt(mean(lambda x: x["parallel"]["nfe"]), 0),
                         _fmt(mean(lambda x: x["sequential"]["nfe"]), 0),
                         _fmt(mean(lambda x: x["sequential"]["seconds"]), 1),
                         _fmt(mean(lambda x: x["parallel"]["seconds"]), 1), ""]
                if task == "colorize":
                    cells += [_fmt(mean(lambda x: x["consistency"]["sequential"]), 4),
                              _fmt(mean(lambda x: x["consistency"]["parallel"]), 4)]
            else:
                cells = [r["photo"], _fmt(r["pinv"]["psnr"]), _fmt(r["pinv"]["ssim"], 3),
                         _fmt(r["sequential"]["psnr"]), _fmt(r["sequential"]["ssim"], 3),
                         _fmt(r["parallel"]["psnr"]), _fmt(r["parallel"]["ssim"], 3),
                         f"{r['parallel']['rounds']} ({r['parallel']['status']})", str(r["parallel"]["nfe"]),
                         str(r["sequential"]["nfe"]), _fmt(r["sequential"]["seconds"], 1),
                         _fmt(r["parallel"]["seconds"], 1), f"{r['max_abs_parallel_minus_sequential']:.1e}"]
                if task == "colorize":
                    cells += [_fmt(r["consistency"]["sequential"], 4), _fmt(r["consistency"]["parallel"], 4)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![{task}](figures/{args.name}_{task}.png)", ""]
    # verdicts
    lines += ["## Does the prior beat A†y?", ""]
    for task in args.tasks:
        trs = [r for r in rows if r["task"] == task]
        if not trs:
            continue
        dp = [r["sequential"]["psnr"] - r["pinv"]["psnr"] for r in trs]
        ds = [r["sequential"]["ssim"] - r["pinv"]["ssim"] for r in trs]
        wins = sum(1 for a, b in zip(dp, ds) if a > 0 and b > 0)
        verdict = ("beats A†y" if wins == len(trs) else
                   "does NOT beat A†y" if wins == 0 else "beats A†y only in part")
        lines.append(f"* **{task}**: {verdict} — PSNR {min(dp):+.2f} … {max(dp):+.2f} dB, SSIM {min(ds):+.3f} … "
                     f"{max(ds):+.3f} over A†y (sequential); better on both metrics for {wins} of {len(trs)} photos.")
        if wins < len(trs) and task == "colorize":
            lines.append("  A†y of colorization is the grey image itself (every channel = the mean), already "
                         "close in PSNR/SSIM; the prior must invent the colours, and the small prior, "
                         "trained on six photos, adds a wrong, mostly bluish, cast (see the figure) that "
                         "costs more than it gains.")
        elif wins < len(trs):
            lines.append("  Where the restoration loses, the prior's null-space content is further from the "
                         "truth than A†y's (zero) null-space component.")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--photos", nargs="+", default=list(HOLDOUT), choices=list(HOLDOUT))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--name", default="quality", help="base name of the .md / .json files")
    p.add_argument("--sequential-only", action="store_true",
                   help="skip the parallel solve (its image equals the sequential one): quality only")
    p.add_argument("--sweep", action="store_true",
                   help="the chain / weight study behind the per-task defaults (benchmarks/quality_sweep.py)")
    args = p.parse_args(argv)
    command = "python benchmarks/quality.py" + ("" if argv is None and len(sys.argv) == 1
                                                else " " + " ".join(sys.argv[1:] if argv is None else argv))
    if args.sweep:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from quality_sweep import run as run_sweep
        from quality_sweep import write_report

        args.out.mkdir(parents=True, exist_ok=True)
        write_report(run_sweep(args.out, log=lambda line: print(line, flush=True)), args.out, command)
        return 0
    figures = args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    prior = Prior.default()
    rows, started = [], time.perf_counter()
    for task in args.tasks:
        task_rows, task_images = [], []
        for photo in args.photos:
            t0 = time.perf_counter()
            row, images = run_case(prior, task, TASKS[task], photo, args.size, args.scale, args.steps, args.seed,
                                   parallel=not args.sequential_only)
            rows.append(row)
            task_rows.append(row)
            task_images.append(images)
            print(f"{task:15s} {photo:13s} A†y {row['pinv']['psnr']:6.2f} dB {row['pinv']['ssim']:.3f} | "
                  f"seq {row['sequential']['psnr']:6.2f} dB {row['sequential']['ssim']:.3f} | "
                  f"par {row['parallel']['psnr']:6.2f} dB {row['parallel']['ssim']:.3f} "
                  f"({row['parallel']['rounds']} rounds, {row['parallel']['status']}) | "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=1) + "\n")
        figure(task, task_rows, task_images, figures / f"{args.name}_{task}.png",
                   "sequential chain" if args.sequential_only else "parallel solve")
    seconds = time.perf_counter() - started
    md = report(rows, args, seconds, command)
    (args.out / f"{args.name}.md").write_text(md)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out / (args.name + '.md')} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
