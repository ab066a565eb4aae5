"""The quality study behind the per-task sampling defaults (``python benchmarks/quality.py --sweep``).

Stage 1 — T = 20, 64×64 hold-out crops (scale 0.25), seed 0, σ_y = 0: mean PSNR / SSIM over the
three photos for a grid of chains and weights (``GRID``), each run with the sequential sampler
(the parallel solve returns the same image: the library's guarantee, tested in tests/test_chains.py).
Stage 2 — the best setting per task (and today's defaults) at T = 50 and 100, and at 128×128
(scale 0.5). Stage 3 — rounds of the default solver (``Sampler``'s, triangular) for today's
defaults and the chosen ones at T = 20, 64×64. Writes ``quality_sweep.md`` / ``.json`` and
``figures/quality_sweep.png``.

The rounds each setting costs are studied in ``benchmarks/quality_rounds.py``, which picked the
registry's defaults; ``python benchmarks/quality_sweep.py --defaults`` measures those defaults at
T = 20, 50 and 100 (``quality_defaults.md``).
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

TASKS = {"sr4": {}, "deblur_gauss": {}, "inpaint_random": {"missing": 0.8}, "colorize": {}}

# name -> Sampler keyword arguments (the chain choice as a name plus its parameters).
GRID = {
    "ddnm etw=0.1 nw=0 (today)": dict(etw=0.1, nw=0.0),
    "ddnm etw=0.85 nw=0.85": dict(etw=0.85, nw=0.85),
    "ddnm etw=1 nw=1": dict(etw=1.0, nw=1.0),
    "ddnm etw=1 nw=1 shared": dict(etw=1.0, nw=1.0, noise="shared"),
    "ddrm eta=0.85 eta_b=1": dict(chain=("ddrm", 0.85, 1.0)),
    "diffpir zeta=0.3": dict(chain=("diffpir", 0.3, 1.0)),
    "diffpir zeta=0.7": dict(chain=("diffpir", 0.7, 1.0)),
    "ddnm etw=0.1 nw=0 t_max=400": dict(etw=0.1, nw=0.0, t_max=400),
    "ddnm etw=0.85 nw=0.85 t_max=400": dict(etw=0.85, nw=0.85, t_max=400),
    "ddnm etw=1 nw=1 t_max=100": dict(etw=1.0, nw=1.0, t_max=100),
    "ddnm etw=1 nw=1 t_max=200": dict(etw=1.0, nw=1.0, t_max=200),
    "ddnm etw=1 nw=1 t_max=250": dict(etw=1.0, nw=1.0, t_max=250),
    "ddnm etw=1 nw=1 t_max=400": dict(etw=1.0, nw=1.0, t_max=400),
    "ddnm etw=1 nw=1 t_max=600": dict(etw=1.0, nw=1.0, t_max=600),
    "ddnm etw=1 nw=1 t_max=400 shared": dict(etw=1.0, nw=1.0, t_max=400, noise="shared"),
    "ddrm eta=0.85 eta_b=1 t_max=400": dict(chain=("ddrm", 0.85, 1.0), t_max=400),
    "diffpir zeta=0.3 t_max=400": dict(chain=("diffpir", 0.3, 1.0), t_max=400),
}
TODAY = "ddnm etw=0.1 nw=0 (today)"


def sampler_kwargs(setting: dict) -> dict:
    """Sampler keyword arguments of a grid entry, the chain tuple turned into its choice object."""
    from fixedpoint_ir.chains import DDRM, DiffPIR

    kw = dict(setting)
    if isinstance(kw.get("chain"), tuple):
        name, p1, p2 = kw["chain"]
        kw["chain"] = DDRM(p1, p2) if name == "ddrm" else DiffPIR(p1, p2)
    else:
        kw["chain"] = "ddnm"
    kw.setdefault("etw", 0.1)
    kw.setdefault("nw", 0.0)
    kw.setdefault("noise", "per_step")
    kw.setdefault("t_max", None)
    return kw


def _cases(size: int, scale: float, task_defaults: bool = False):
    from fixedpoint_ir.operators import degrade
    from fixedpoint_ir.operators.tasks import make_operator
    from fixedpoint_ir.photos import HOLDOUT, holdout_crop

    out = {}
    for task, params in TASKS.items():
        for photo in HOLDOUT:
            gt = holdout_crop(photo, size, scale=scale)[None]
            op = make_operator(task, gt.shape[1:], **params)
            if not task_defaults:
                op.task_config["sampling"] = {}   # every grid entry sets the sampling itself
            out[(task, photo)] = (gt, op, degrade(gt, op, 0.0))
    return out


def evaluate(prior, cases, task: str, setting: dict, steps: int, rounds: bool = False) -> dict:
    """Mean PSNR / SSIM over the photos (sequential), and the default solver's rounds if asked."""
    from fixedpoint_ir import Sampler
    from fixedpoint_ir.metrics import psnr, ssim

    ps, ss, rs = [], [], []
    for (t, _), (gt, op, y) in cases.items():
        if t != task:
            continue
        # setting None: nothing passed, the operator's task defaults apply (what a user gets)
        sampler = Sampler(prior, op, steps=steps, **({} if setting is None else sampler_kwargs(setting)))
        if rounds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                result = sampler.restore(y, generator=torch.Generator().manual_seed(0))
            rs.append(result.rounds)
        else:
            result = sampler.sequential(y, generator=torch.Generator().manual_seed(0))
        ps.append(psnr(result.image[0], gt[0]))
        ss.append(ssim(result.image[0], gt[0]))
    row = {"psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss), "per_photo_psnr": ps}
    if rounds:
        row["rounds"] = rs
    return row


def pinv_psnr(cases, task: str) -> float:
    from fixedpoint_ir.metrics import psnr

    v = [psnr(op.A_pinv(y)[0], gt[0]) for (t, _), (gt, op, y) in cases.items() if t == task]
    return sum(v) / len(v)


def run(out: Path, log=print) -> dict:
    from fixedpoint_ir import Prior

    torch.set_num_threads(1)
    prior = Prior.default()
    small, large = _cases(64, 0.25), _cases(128, 0.5)
    results = {"grid": {}, "steps": {}, "large": {}, "rounds": {}, "pinv": {}, "pinv_large": {}}
    saved = out / "quality_sweep.json"
    if saved.exists():   # resume: entries already measured (same code, same seed) are kept
        results.update(json.loads(saved.read_text()))
        results["steps"] = {n: {t: {int(k): v for k, v in d.items()} for t, d in per.items()}
                            for n, per in results["steps"].items()}
    previous = results.get("seconds", 0.0)
    started = time.perf_counter() - previous
    for task in TASKS:
        results["pinv"][task] = pinv_psnr(small, task)
        results["pinv_large"][task] = pinv_psnr(large, task)
        for name, setting in GRID.items():
            if task in results["grid"].get(name, {}):
                continue
            results["grid"].setdefault(name, {})[task] = evaluate(prior, small, task, setting, 20)
            log(f"T=20 64px {task:15s} {name:36s} {results['grid'][name][task]['psnr']:6.2f} dB "
                f"({time.perf_counter() - started:.0f} s)")
    best = {task: max(GRID, key=lambda n: results["grid"][n][task]["psnr"]) for task in TASKS}
    results["best"] = best
    for task in TASKS:
        for name in dict.fromkeys([TODAY, best[task]]):
            if task in results["large"].get(name, {}):
                continue
            for steps in (50, 100):
                results["steps"].setdefault(name, {}).setdefault(task, {})[steps] = \
                    evaluate(prior, small, task, GRID[name], steps)
            results["large"].setdefault(name, {})[task] = evaluate(prior, large, task, GRID[name], 20)
            log(f"{task:15s} {name:36s} T=50 {results['steps'][name][task][50]['psnr']:.2f} "
                f"T=100 {results['steps'][name][task][100]['psnr']:.2f} "
                f"128px {results['large'][name][task]['psnr']:.2f} ({time.perf_counter() - started:.0f} s)")
            (out / "quality_sweep.json").write_text(json.dumps(results, indent=1) + "\n")
    for task in TASKS:
        for name in dict.fromkeys([TODAY, best[task]]):
            if task in results["rounds"].get(name, {}):
                continue
            results["rounds"].setdefault(name, {})[task] = evaluate(prior, small, task, GRID[name], 20, rounds=True)
            log(f"rounds {task:15s} {name:36s} {results['rounds'][name][task]['rounds']} "
                f"({time.perf_counter() - started:.0f} s)")
            (out / "quality_sweep.json").write_text(json.dumps(results, indent=1) + "\n")
    results["seconds"] = time.perf_counter() - started
    (out / "quality_sweep.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


# DeepInverse's DDRM around the same ε-network, 64×64, same crops and y (numbers from issue #15:
# they could not be re-run here, DeepInverse does not install beside this CPU torch).
DDRM_REFERENCE = {"sr4": (20.84, 20.87), "deblur_gauss": (31.78, 32.62),
                  "inpaint_random": (18.65, 20.56), "colorize": (18.12, 19.43)}


def write_report(results: dict, out: Path, command: str) -> None:
    """quality_sweep.md and figures/quality_sweep.png from the results of :func:`run`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(results["grid"])
    fig = Figure(figsize=(12, 6.5), dpi=90)
    FigureCanvasAgg(fig)
    for k, task in enumerate(TASKS):
        ax = fig.add_subplot(1, len(TASKS), k + 1)
        vals = [results["grid"][n][task]["psnr"] for n in names]
        colors = ["tab:red" if n == results["best"][task] else "tab:grey" if n == TODAY else "tab:blue"
                  for n in names]
        ax.barh(range(len(names)), vals, color=colors)
        d20, d100 = DDRM_REFERENCE[task]
        ax.axvline(results["pinv"][task], color="k", ls=":", label="A†y")
        ax.axvline(d20, color="tab:orange", ls="--", label="DDRM 20 (issue)")
        ax.axvline(d100, color="tab:green", ls="--", label="DDRM 100 (issue)")
        lo = min(vals + [results["pinv"][task]]) - 0.5
        ax.set_xlim(max(lo, min(vals) - 1), max(vals + [d100]) + 0.5)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if k == 0 else [], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("mean PSNR (dB), T = 20", fontsize=8)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=6, loc="lower left")
    fig.suptitle("Quality sweep, shipped prior, 64×64 hold-out crops (red: best, grey: old default)", fontsize=9)
    fig.tight_layout()
    (out / "figures").mkdir(exist_ok=True)
    fig.savefig(out / "figures" / "quality_sweep.png")
    lines = ["# Quality sweep: chains and weights at equal steps", "",
             f"Command: `{command}` on this 2-core CPU (shared with other jobs, 1 thread, nice), "
             f"{results.get('seconds', 0) / 60:.1f} min. Shipped prior, hold-out photos astronaut, flower, "
             "grace_hopper, seed 0, σ_y = 0, mean PSNR (dB, [0, 1], clamped) / SSIM over the photos; "
             "sequential sampler (the parallel solve returns the same image). DDRM columns: DeepInverse's "
             "DDRM around the same ε-network, from issue #15 (not re-run here).", "",
             *([results["note"], ""] if results.get("note") else []),
             "## T = 20, 64×64 (scale 0.25)", "",
             "| setting | " + " | ".join(TASKS) + " |", "|---|" + "---:|" * len(TASKS)]
    lines.append("| A†y | " + " | ".join(f"{results['pinv'][t]:.2f}" for t in TASKS) + " |")
    for n in names:
        cells = []
        for t in TASKS:
            r = results["grid"][n][t]
            cell = f"{r['psnr']:.2f} / {r['ssim']:.3f}"
            cells.append(f"**{cell}**" if n == results["best"][t] else cell)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("| DDRM 20 steps (issue) | " + " | ".join(f"{DDRM_REFERENCE[t][0]:.2f}" for t in TASKS) + " |")
    lines.append("| DDRM 100 steps (issue) | " + " | ".join(f"{DDRM_REFERENCE[t][1]:.2f}" for t in TASKS) + " |")
    if results.get("steps"):
        lines += ["", "## Today's default and the best setting at T = 50 / 100 (64×64) and at 128×128 (scale 0.5, T = 20)", "",
                  "| task | setting | T = 20 | T = 50 | T = 100 | 128×128, T = 20 (A†y) |", "|---|---|---:|---:|---:|---:|"]
        for t in TASKS:
            for n in dict.fromkeys([TODAY, results["best"][t]]):
                s = results["steps"].get(n, {}).get(t)
                big = results["large"].get(n, {}).get(t)
                if s is None:
                    continue
                s = {int(k): v for k, v in s.items()}
                lines.append(f"| {t} | {n} | {results['grid'][n][t]['psnr']:.2f} | {s[50]['psnr']:.2f} | "
                             f"{s[100]['psnr']:.2f} | "
                             + (f"{big['psnr']:.2f} ({results['pinv_large'][t]:.2f})" if big else "—") + " |")
    if results.get("rounds"):
        lines += ["", "## Rounds of the default solver (triangular, tol 1e-3), T = 20, 64×64", "",
                  "| task | setting | rounds per photo | PSNR of the parallel result |", "|---|---|---|---:|"]
        for t in TASKS:
            for n in dict.fromkeys([TODAY, results["best"][t]]):
                r = results["rounds"].get(n, {}).get(t)
                if r:
                    lines.append(f"| {t} | {n} | {r['rounds']} | {r['psnr']:.2f} |")
    lines += ["", "![sweep](figures/quality_sweep.png)", ""]
    (out / "quality_sweep.md").write_text("\n".join(lines))


def defaults_at_steps(out: Path, log=print) -> None:
    """The task registry's sampling defaults (the Sampler given no sampling argument, as a user
    runs it) and today's (etw = 0.1, nw = 0) at T = 20, 50 and 100, 64×64, sequential, next to
    DDRM's numbers: ``quality_defaults.md`` / ``.json``."""
    from fixedpoint_ir import Prior
    from fixedpoint_ir.operators.tasks import TASKS as REGISTRY

    torch.set_num_threads(1)
    prior = Prior.default()
    cases, defaults = _cases(64, 0.25), _cases(64, 0.25, task_defaults=True)
    started = time.perf_counter()
    rows = {}
    for task in TASKS:
        for label, setting in (("today", dict(etw=0.1, nw=0.0)), ("task default", None)):
            for steps in (20, 50, 100):
                r = evaluate(prior, cases if setting else defaults, task, setting, steps)
                shown = setting or REGISTRY[task].sampling
                rows.setdefault(task, {}).setdefault(label, {"setting": shown})[steps] = r
                log(f"{task:15s} {label:13s} T={steps:3d} {r['psnr']:.2f} dB ({time.perf_counter() - started:.0f} s)")
    (out / "quality_defaults.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# The task defaults at T = 20, 50 and 100", "",
             "Command: `python benchmarks/quality_sweep.py --defaults` on this 2-core CPU (1 thread), "
             f"{(time.perf_counter() - started) / 60:.1f} min. Shipped prior, 64×64 hold-out crops (scale 0.25), "
             "seed 0, σ_y = 0, sequential sampler; mean PSNR (dB) / SSIM over astronaut, flower, grace_hopper. "
             "DDRM: DeepInverse's DDRM around the same ε-network, from issue #15 (not re-run here).", "",
             "| task | setting | T = 20 | T = 50 | T = 100 | DDRM 20 | DDRM 100 |", "|---|---|---:|---:|---:|---:|---:|"]
    for task, per in rows.items():
        for label, r in per.items():
            setting = " ".join(f"{k}={v:g}" for k, v in r["setting"].items())
            lines.append(f"| {task} | {label}: {setting} | "
                         + " | ".join(f"{r[s]['psnr']:.2f} / {r[s]['ssim']:.3f}" for s in (20, 50, 100))
                         + f" | {DDRM_REFERENCE[task][0]:.2f} | {DDRM_REFERENCE[task][1]:.2f} |")
    (out / "quality_defaults.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    import sys

    here = Path(__file__).resolve().parent / "results"
    if "--defaults" in sys.argv:
        defaults_at_steps(here, log=lambda line: print(line, flush=True))
        sys.exit(0)
    write_report(json.loads((here / "quality_sweep.json").read_text()), here,
                 "python benchmarks/quality.py --sweep")
    sys.exit(0)
