"""Time and peak memory of the pretrained-prior networks on the CPU (issue 4).

1. The ADM 256×256 unconditional configuration (``256x256_diffusion_uncond.pt``; random weights,
   float32): seconds per state and peak resident memory at ``max_batch`` 1 and 2.
2. The small ADM configuration of the checkpoint fixtures: peak memory of one solver round of T = 20
   states (20 images in one ``prior.eps`` call) for several ``max_batch`` values. Memory must follow
   ``max_batch``, not T.

Every measurement runs in a fresh subprocess and reads ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
(the process's peak resident set; tracemalloc does not see torch's allocations). "call peak" is the
growth of that peak during the timed ``prior.eps`` calls, over the peak reached after building the
model and its inputs (for the small ADM also after one single-image warm-up call, so that first-call
allocations of the CPU kernels are not counted).

    nice python benchmarks/priors_memory.py                 # writes benchmarks/results/priors_memory.md
    python benchmarks/priors_memory.py --skip-256 --reps 1  # the quick part only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "priors_memory.md"

SMALL_ADM_CONFIG = {   # adm_small_layout.json's config (fixtures README, "Small configuration")
    "image_size": 32, "in_channels": 3, "model_channels": 32, "out_channels": 6, "num_res_blocks": 2,
    "attention_resolutions": (2, 4), "dropout": 0.0, "channel_mult": (1, 1, 1), "conv_resample": True,
    "dims": 2, "num_classes": None, "use_checkpoint": False, "use_fp16": False, "num_heads": 4,
    "num_head_channels": 16, "num_heads_upsample": -1, "use_scale_shift_norm": True,
    "resblock_updown": True, "use_new_attention_order": False,
}


def _maxrss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
    return kib / 1024.0


def _worker(spec: dict) -> dict:
    import torch

    from fixedpoint_ir.priors.adm import ADM_256_UNCOND_CONFIG, ADMUNet
    from fixedpoint_ir.priors.checkpoints import CheckpointPrior, _Network
    from fixedpoint_ir.schedule import alphas_cumprod_from_betas, linear_betas, uniform_timesteps

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    config = ADM_256_UNCOND_CONFIG if spec["model"] == "adm256" else SMALL_ADM_CONFIG
    with torch.device("meta"):
        net = ADMUNet(**config)
    net = net.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # random nonzero weights (the ADM init zeroes the output layers)
        for p in net.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.normal_(0.0, (2.0 / p[0].numel()) ** 0.5 * 0.5, generator=g)
    net.eval().requires_grad_(False)
    size = config["image_size"]
    prior = CheckpointPrior(_Network(net, "adm"), alphas_cumprod_from_betas(linear_betas()), spec["max_batch"], 3,
                            (size, size), path="<random weights>", format="adm", config=config,
                            description="random weights")
    n = spec["images"]
    if n == spec.get("T"):
        t = uniform_timesteps(n)
    else:
        t = torch.full((n,), 500, dtype=torch.long)
    x = torch.randn(n, 3, size, size, generator=g)
    with torch.no_grad():
        if spec.get("warmup"):   # one single-image call: first-call allocations out of the measurement
            prior.eps(x[:1], t[:1])
    before = _maxrss_mib()
    times = []
    with torch.no_grad():
        for _ in range(spec["reps"]):
            t0 = time.perf_counter()
            eps = prior.eps(x, t)
            times.append(time.perf_counter() - t0)
            assert eps.shape == x.shape and torch.isfinite(eps).all()
            del eps
    after = _maxrss_mib()
    return {"before_mib": before, "peak_mib": after, "call_peak_mib": after - before, "times_s": times,
            "threads": torch.get_num_threads(), "params": sum(p.numel() for p in net.parameters())}


def _run(spec: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2, help="timed calls per ADM-256 measurement (default 2)")
    ap.add_argument("--batches", default="1,2", help="max_batch values for ADM 256 (default 1,2)")
    ap.add_argument("--small-batches", default="1,2,5,20", help="max_batch values for the small ADM round")
    ap.add_argument("--T", type=int, default=20, help="states in the small-ADM round (default 20)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--skip-256", action="store_true", help="skip the ADM 256 measurements")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"markdown output (default {RESULTS})")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    import torch
    lines = ["# Prior networks: time and peak memory on the CPU", "",
             f"Command: `{' '.join(['python', 'benchmarks/priors_memory.py'] + (argv if argv is not None else sys.argv[1:]))}`",
             "",
             f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPU cores visible, "
             f"no GPU; Python {platform.python_version()}, torch {torch.__version__}; "
             f"{time.strftime('%Y-%m-%d %H:%M')}.", "",
             "Each row is a fresh subprocess; memory is `ru_maxrss` (peak resident set). *call peak* is its "
             "growth during the timed `prior.eps` calls over the peak after building the model and inputs "
             "(small ADM: and after one single-image warm-up call). "
             "Random float32 weights; `torch.inference_mode`. "
             f"Load average (1/5/15 min) at the start: {' / '.join(f'{v:.2f}' for v in os.getloadavg())} "
             "(other jobs share these cores: timings are indicative, memory is not affected).", ""]

    if not args.skip_256:
        lines += ["## ADM 256×256 unconditional (`256x256_diffusion_uncond.pt` configuration)", "",
                  "| max_batch | images per call | s / state (each rep) | s / state (best) | model+inputs peak MiB | process peak MiB | call peak MiB |",
                  "|---:|---:|---|---:|---:|---:|---:|"]
        for mb in [int(b) for b in args.batches.split(",")]:
            r = _run({"model": "adm256", "max_batch": mb, "images": mb, "reps": args.reps, "threads": args.threads})
            per = [s / mb for s in r["times_s"]]
            lines.append(f"| {mb} | {mb} | {', '.join(f'{p:.2f}' for p in per)} | {min(per):.2f} | "
                         f"{r['before_mib']:.0f} | {r['peak_mib']:.0f} | {r['call_peak_mib']:.0f} |")
            print(lines[-1], flush=True)
        lines += ["", f"Parameters: {r['params']:,}; torch threads: {r['threads']}.", ""]

    lines += [f"## Small ADM (fixtures config, 32×32): one round of T = {args.T} states in one `prior.eps` call", "",
              "| max_batch | network calls | s / round | model+inputs peak MiB | process peak MiB | call peak MiB |",
              "|---:|---:|---:|---:|---:|---:|"]
    for mb in [int(b) for b in args.small_batches.split(",")]:
        r = _run({"model": "small", "max_batch": mb, "images": args.T, "T": args.T, "reps": 1,
                  "threads": args.threads, "warmup": True})
        calls = -(-args.T // mb)
        lines.append(f"| {mb} | {calls} | {r['times_s'][0]:.3f} | {r['before_mib']:.0f} | {r['peak_mib']:.0f} | "
                     f"{r['call_peak_mib']:.1f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Load average at the end: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}.", ""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
