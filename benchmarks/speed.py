"""When does the parallel solve pay? Batch-cost curves, parallel vs sequential side by side, the
cost model's predictions next to the measurements, the per-round time split and peak memory.

For each prior and image size: c(B), one network call on B states, relative to c(1) (after a
warm-up, best of ``--reps``). Then for T in ``--steps``, on ×4 super-resolution of a hold-out
photo crop, in ONE process so the ratios are comparable:

* the sequential chain (T single-state calls);
* the parallel triangular solver (the Sampler default) with the prior's own surrogate (a
  power-law model for the shipped prior: row-loop replay), and with a white surrogate (replay as
  one parallel scan, ``Chain.linear_replay``); per-round network / replay / bookkeeping split;
* ``solver="auto"`` with an empty cost cache (its measurement included) and its choice;
* the cost model's predicted wall-clock of both (``fixedpoint_ir.cost.choose``);
* peak resident memory of each run (Linux VmHWM, reset before each run).

A parallel run predicted to take longer than ``--max-parallel-s`` is not run (the table says so).
The ADM-256 configuration with random weights (``--adm``) is slow on a CPU (tens of seconds per
state): only its batch-cost curve and the model's predictions are measured unless
``--adm-chains`` is given.

    nice -n 10 python benchmarks/speed.py --threads 1                       # shipped prior, 64 and 256
    nice -n 10 python benchmarks/speed.py --threads 1 --sizes none --adm    # ADM-256 curve + predictions
    python benchmarks/speed.py --device cuda                                # a GPU (TF32 off)
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch

from fixedpoint_ir import Sampler
from fixedpoint_ir import cost as cost_module
from fixedpoint_ir import memory as memory_module
from fixedpoint_ir.backends import Triangular
from fixedpoint_ir.operators import AveragePool
from fixedpoint_ir.photos import holdout_crop
from fixedpoint_ir.surrogate import WhiteGaussian

ROOT = Path(__file__).resolve().parents[1]


def _peak_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mib(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _timed(device, fn):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    _peak_reset()
    start = time.perf_counter()
    out = fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start, _peak_mib(device)


def batch_curve(prior, shape, batches, reps, device) -> list[tuple[int, float]]:
    x = torch.randn(max(batches), *shape, device=device)
    t = torch.full((max(batches),), prior.num_train_steps // 2, device=device, dtype=torch.long)
    with torch.no_grad():
        prior.eps(x[:1], t[:1])   # warm-up
        out = []
        for b in batches:
            best = min(_timed(device, lambda: prior.eps(x[:b], t[:b]))[1] for _ in range(reps))
            out.append((b, best))
    return out


def _adm_prior(device):
    from fixedpoint_ir.priors.adm import ADM_256_UNCOND_CONFIG, ADMUNet
    from fixedpoint_ir.priors.checkpoints import CheckpointPrior, _Network
    from fixedpoint_ir.schedule import alphas_cumprod_from_betas, linear_betas

    with torch.device("meta"):
        net = ADMUNet(**ADM_256_UNCOND_CONFIG)
    net = net.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():   # random nonzero weights (the ADM init zeroes the output layers)
        for p in net.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g, device=device))
            else:
                p.normal_(0.0, (2.0 / p[0].numel()) ** 0.5 * 0.5, generator=g)
    net.eval().requires_grad_(False)
    return CheckpointPrior(_Network(net, "adm"), alphas_cumprod_from_betas(linear_betas()), None, 3,
                           (256, 256), path="<random weights>", format="adm", config=ADM_256_UNCOND_CONFIG,
                           description="random weights")


def _problem(size, device):
    op = AveragePool(4)
    gt = holdout_crop("astronaut", size, scale=min(1.0, size / 256))[None] * 2 - 1
    return op, op.A(gt).to(device)


def _fresh_cost_cache():
    cost_module._CACHE.clear()
    memory_module._INPUT_BYTES.clear()


def run_setting(prior, name, size, steps, args) -> dict:
    device = args.device
    op, y = _problem(size, device)
    gen = lambda: torch.Generator(device=device).manual_seed(0)  # noqa: E731
    row = dict(prior=name, size=size, T=steps)
    seq_sampler = Sampler(prior, op, steps=steps)
    chain = seq_sampler.chain(y, generator=gen())
    choice = cost_module.choose(prior, Triangular(), steps=steps, images=1, image_shape=tuple(chain.x_T.shape[1:]),
                                dtype=chain.x_T.dtype, device=device)
    row.update(pred_parallel_s=choice.parallel_s, pred_sequential_s=choice.sequential_s,
               expected_rounds=len(cost_module.expected_rows(Triangular(), steps)),
               expected_nfe=sum(cost_module.expected_rows(Triangular(), steps)))
    seq, row["sequential_s"], row["sequential_peak_mib"] = _timed(
        device, lambda: seq_sampler.sequential(y, generator=gen()))
    for label, surrogate in (("parallel", None), ("parallel_white", WhiteGaussian())):
        if label == "parallel_white" and size not in args.white_sizes:
            row[label] = dict(skipped="not run (--white-sizes)")
            continue
        if choice.parallel_s > args.max_parallel_s:
            row[label] = dict(skipped=f"predicted {choice.parallel_s:.0f} s > --max-parallel-s")
            continue
        sampler = Sampler(prior, op, steps=steps, surrogate=surrogate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result, seconds, peak = _timed(device, lambda: sampler.restore(y, generator=gen()))
        split = result.report.time_split()
        row[label] = dict(seconds=seconds, peak_mib=peak, rounds=result.rounds, nfe=result.nfe,
                          status=result.status.value, split=split, round_times=result.report.round_times,
                          error=float((result.image - seq.image).abs().max()))
    # The replay alone, row loop vs parallel scan (Chain.replay), next to one network round.
    if size not in args.replay_sizes:
        return _auto_rows(prior, op, y, gen, steps, row, args)
    with torch.no_grad():
        z = chain.surrogate_trajectory()
        _, network_s, _ = _timed(device, lambda: chain.eps(z))
        e = chain.eps(z)
        chain.scan_replay = True
        loop_s = min(_timed(device, lambda: chain.replay_steps(e))[1] for _ in range(3))
        scan_s = min(_timed(device, lambda: chain.replay(e))[1] for _ in range(3))
        white = Sampler(prior, op, steps=steps, surrogate=WhiteGaussian()).chain(y, generator=gen())
        white.scan_replay = True
        at, scale = e.clone(), torch.ones(steps, 1, device=e.device)
        prefix = torch.zeros(1, dtype=torch.long, device=e.device)
        lin_loop_s = min(_timed(device, lambda: Triangular()._replay_rows(white, z, e, at, scale, prefix))[1]
                         for _ in range(3))
        lin_scan_s = min(_timed(device, lambda: white.linear_replay(z, e, at, scale, prefix))[1] for _ in range(3))
    row["replay"] = dict(network_round_s=network_s, loop_s=loop_s, scan_s=scan_s,
                         linear_loop_s=lin_loop_s, linear_scan_s=lin_scan_s)
    return _auto_rows(prior, op, y, gen, steps, row, args)


def _auto_rows(prior, op, y, gen, steps, row, args) -> dict:
    device = args.device
    _fresh_cost_cache()
    auto = Sampler(prior, op, "auto", steps=steps)
    result, row["auto_s"], row["auto_peak_mib"] = _timed(device, lambda: auto.restore(y, generator=gen()))
    row["auto_choice"] = result.choice.describe()
    row["auto_mode"] = result.choice.mode
    row["auto_cached_s"] = _timed(device, lambda: auto.restore(y, generator=gen()))[1] if args.auto_cached else None
    return row


def _fmt_s(v):
    return "—" if v is None else f"{v:.2f}"


def markdown(curves, rows, meta) -> str:
    lines = ["# Parallel vs sequential: wall-clock, the cost model, memory", "",
             f"Command: `{meta['command']}` ({meta['machine']}).", "",
             "## Batch cost c(B)/c(1)", "", "| prior | size | " + " | ".join(f"B={b}" for b, _ in curves[0]["curve"])
             + " | c(1) |", "|---|---|" + "---:|" * (len(curves[0]["curve"]) + 1)]
    for c in curves:
        c1 = c["curve"][0][1]
        lines.append(f"| {c['prior']} | {c['size']} | " + " | ".join(f"{s / c1:.2f}" for _, s in c["curve"])
                     + f" | {c1 * 1000:.0f} ms |")
    if rows:
        lines += ["", "## Side by side (×4 SR, astronaut crop; seconds)", "",
                  "*pred*: the cost model (`fixedpoint_ir.cost.choose`, its expected rounds/NFEs in brackets); "
                  "*auto*: `Sampler(solver=\"auto\")` with an empty cost cache (its measurement included) and "
                  "again with the cache filled; *replay %*: share of the parallel solve spent replaying "
                  "(prior's own surrogate / white surrogate; on a CPU both replay with the row loop); peak = resident "
                  "memory high-water mark of the run.", "",
                  "| prior | size | T | sequential | pred seq | parallel (rounds/NFE) | pred par | parallel, white "
                  "| replay % own / white | auto (cold / cached) | auto chose | auto / best | peak MiB seq / par |",
                  "|---|---|---:|---:|---:|---|---:|---|---|---|---|---:|---|"]
        for r in rows:
            par, white = r["parallel"], r["parallel_white"]
            best = min([r["sequential_s"]] + [p["seconds"] for p in (par, white) if "seconds" in p])

            def cell(p):
                return p.get("skipped", "—") if "seconds" not in p else \
                    f"{p['seconds']:.2f} ({p['rounds']}/{p['nfe']})"

            def share(p):
                return "—" if "seconds" not in p else f"{100 * p['split']['replay'] / p['split']['total']:.1f}"

            lines.append(
                f"| {r['prior']} | {r['size']} | {r['T']} | {r['sequential_s']:.2f} | {r['pred_sequential_s']:.2f} "
                f"| {cell(par)} | {r['pred_parallel_s']:.2f} ({r['expected_rounds']}/{r['expected_nfe']}) "
                f"| {cell(white)} | {share(par)} / {share(white)} | {r['auto_s']:.2f} / {_fmt_s(r['auto_cached_s'])} "
                f"| {r['auto_mode']} | {r['auto_s'] / best:.2f} / "
                f"{'—' if r['auto_cached_s'] is None else format(r['auto_cached_s'] / best, '.2f')} "
                f"| {r['sequential_peak_mib']:.0f} / {par.get('peak_mib', float('nan')):.0f} |")
        lines += ["", "Replay alone (best of 3, ms) next to one round's network call on all T rows (s): F's "
                  "replay (e held fixed) and the triangular solver's linearised replay (white surrogate), "
                  "each as the row loop and as the parallel scan:", "",
                  "| prior | size | T | network round | replay loop / scan | share of round | linearised loop / scan |",
                  "|---|---|---:|---:|---|---|---|"]
        for r in rows:
            if "replay" not in r:
                continue
            p = r["replay"]
            lines.append(f"| {r['prior']} | {r['size']} | {r['T']} | {p['network_round_s']:.2f} | "
                         f"{1e3 * p['loop_s']:.1f} / {1e3 * p['scan_s']:.1f} | "
                         f"{100 * p['loop_s'] / (p['network_round_s'] + p['loop_s']):.1f} % / "
                         f"{100 * p['scan_s'] / (p['network_round_s'] + p['scan_s']):.1f} % | "
                         f"{1e3 * p['linear_loop_s']:.1f} / {1e3 * p['linear_scan_s']:.1f} |")
        lines += ["", "Per-round split of the parallel solves (network / replay / bookkeeping, % of the solve):", ""]
        for r in rows:
            for label in ("parallel", "parallel_white"):
                p = r[label]
                if "split" in p:
                    s = p["split"]
                    lines.append(f"- {r['prior']} {r['size']} T={r['T']} {label}: "
                                 + " / ".join(f"{100 * s[k] / s['total']:.1f}" for k in ("network", "replay", "bookkeeping"))
                                 + f" % of {s['total']:.2f} s; error vs sequential {p['error']:.1e}")
    return "\n".join(lines) + "\n"


def _write(args, curves, rows, command, machine) -> str:
    """Write the .json and .md (after every measurement, so an interrupted run keeps its rows)."""
    meta = dict(command=command, machine=machine)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, curves=curves, rows=rows), indent=1, default=str))
    text = markdown(curves, rows, meta)
    for c in curves:
        for p in c.get("predictions", []):
            text += (f"\n{c['prior']}, T={p['T']}: predicted parallel {p['pred_parallel_s']:.0f} s, sequential "
                     f"{p['pred_sequential_s']:.0f} s (chains not run).")
    out.with_suffix(".md").write_text(text + "\n")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="64,256", help="image sizes for the shipped prior ('none' to skip)")
    ap.add_argument("--steps", default="20,50,100")
    ap.add_argument("--batches", default="1,2,4,8,16,20")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-parallel-s", type=float, default=120.0)
    ap.add_argument("--white-sizes", default="64", help="sizes that also run the white-surrogate solver")
    ap.add_argument("--replay-sizes", default="64", help="sizes whose replay is timed alone (costs a round)")
    ap.add_argument("--no-auto-cached", dest="auto_cached", action="store_false",
                    help="skip the second auto run (with the cost cache filled)")
    ap.add_argument("--adm", action="store_true", help="also the ADM-256 configuration (random weights)")
    ap.add_argument("--adm-batches", default="1,2,4")
    ap.add_argument("--adm-chains", action="store_true", help="also run ADM-256 chains (very slow on a CPU)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed"),
                    help="output path without suffix (.md and .json are written)")
    args = ap.parse_args(argv)
    args.white_sizes = {int(s) for s in args.white_sizes.split(",") if s}
    args.replay_sizes = {int(s) for s in args.replay_sizes.split(",") if s}
    torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cuda":   # batched and single calls must round alike
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    from fixedpoint_ir.priors.base import Prior

    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    machine = (torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda"
               else f"{platform.machine()} CPU, {args.threads} thread(s)") + f", torch {torch.__version__}"
    curves, rows = [], []
    steps = [int(s) for s in args.steps.split(",")]
    if args.sizes != "none":
        prior = Prior.default(device=args.device)
        for size in (int(s) for s in args.sizes.split(",")):
            curve = batch_curve(prior, (3, size, size), [int(b) for b in args.batches.split(",")], args.reps, args.device)
            curves.append(dict(prior="shipped", size=size, curve=curve))
            print(curves[-1], flush=True)
            for t in steps:
                rows.append(run_setting(prior, "shipped", size, t, args))
                _write(args, curves, rows, command, machine)
                print({k: v for k, v in rows[-1].items() if k not in ("parallel", "parallel_white")}, flush=True)
    if args.adm:
        prior = _adm_prior(args.device)
        curve = batch_curve(prior, (3, 256, 256), [int(b) for b in args.adm_batches.split(",")], 1, args.device)
        curves.append(dict(prior="ADM-256 (random)", size=256, curve=curve))
        print(curves[-1], flush=True)
        c = cost_module.BatchCost(tuple(b for b, _ in curve), tuple(s for _, s in curve), 0.0, (3, 256, 256))
        for t in steps:
            rows_t = cost_module.expected_rows(Triangular(), t)
            pred = dict(T=t, pred_parallel_s=cost_module.predict_parallel(c, rows_t, 1),
                        pred_sequential_s=cost_module.predict_sequential(c, t, 1))
            curves[-1].setdefault("predictions", []).append(pred)
            print(pred, flush=True)
            if args.adm_chains:
                rows.append(run_setting(prior, "ADM-256 (random)", 256, t, args))
    text = _write(args, curves, rows, command, machine)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
