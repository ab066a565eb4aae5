"""The quality study behind the per-task sampling defaults (``python benchmarks/quality.py --sweep``).

Stage 1 — T = 20, 64×64 hold-out crops (scale 0.25), seed 0, σ_y = 0: mean PSNR / SSIM over the
three photos for a grid of chains and weights (``GRID``), each run with the sequential sampler
(the parallel solve returns the same image: the library's guarantee, tested in tests/test_chains.py).
Stage 2 — the best setting per task (and today's defaults) at T = 50 and 100, and at 128×128
(scale 0.5). Stage 3 — rounds of the default solver (``Sampler``'s, triangular) for today's
defaults and the chosen ones at T = 20, 64×64. Writes ``quality_sweep.md`` / ``.json`` and
``figures/quality_sweep.png``.
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
    if "chain" in kw:
        name, p1, p2 = kw["chain"]
        kw["chain"] = DDRM(p1, p2) if name == "ddrm" else DiffPIR(p1, p2)
    else:
        kw["chain"] = "ddnm"
    kw.setdefault("etw", 0.1)
    kw.setdefault("nw", 0.0)
    kw.setdefault("noise", "per_step")
    kw.setdefault("t_max", None)
    return kw


def _cases(size: int, scale: float):
    from fixedpoint_ir.operators import degrade
    from fixedpoint_ir.operators.tasks import make_operator
    from fixedpoint_ir.photos import HOLDOUT, holdout_crop

    out = {}
    for task, params in TASKS.items():
        for photo in HOLDOUT:
            gt = holdout_crop(photo, size, scale=scale)[None]
            op = make_operator(task, gt.shape[1:], **params)
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
        sampler = Sampler(prior, op, steps=steps, **sampler_kwargs(setting))
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
    started = time.perf_counter()
    for task in TASKS:
        results["pinv"][task] = pinv_psnr(small, task)
        results["pinv_large"][task] = pinv_psnr(large, task)
        for name, setting in GRID.items():
            results["grid"].setdefault(name, {})[task] = evaluate(prior, small, task, setting, 20)
            log(f"T=20 64px {task:15s} {name:36s} {results['grid'][name][task]['psnr']:6.2f} dB "
                f"({time.perf_counter() - started:.0f} s)")
    best = {task: max(GRID, key=lambda n: results["grid"][n][task]["psnr"]) for task in TASKS}
    results["best"] = best
    for task in TASKS:
        for name in dict.fromkeys([TODAY, best[task]]):
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
            results["rounds"].setdefault(name, {})[task] = evaluate(prior, small, task, GRID[name], 20, rounds=True)
            log(f"rounds {task:15s} {name:36s} {results['rounds'][name][task]['rounds']} "
                f"({time.perf_counter() - started:.0f} s)")
            (out / "quality_sweep.json").write_text(json.dumps(results, indent=1) + "\n")
    results["seconds"] = time.perf_counter() - started
    (out / "quality_sweep.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
