"""Wall-clock per solver round when the round's states are spread over processes / devices (issue 8).

Two modes, one script, no downloads (random-weight networks with a fixed seed):

CPU (default; launches its own processes on 127.0.0.1 with gloo, like torchrun would):

    python benchmarks/scaling.py                      # 1 proc x 2 threads vs 2 procs x 1 thread
    python benchmarks/scaling.py --size 64 --steps 20 --rounds 5 --out benchmarks/results/scaling.md

GPU (NCCL, any number of GPUs; also runs end to end on one GPU):

    torchrun --standalone --nproc_per_node=4 benchmarks/scaling.py --gpu \
        --size 256 --steps 20 --images 1 --rounds 5 --out benchmarks/results/scaling_gpu.md

  With K ranks it times one round on 1 device (the plain prior, no communication: the baseline),
  then on the groups of the first 2, 4, …, K ranks (DistributedPrior on a sub-group), and prints a
  markdown table of seconds per round and the speed-up over one device; rank 0 writes it to --out.
  On one GPU the table has the plain baseline and the DistributedPrior path on a group of one (its
  overhead). ``--gpu --device cpu`` runs the same mode on CPU with gloo (for checking the script).

A round is one call of the chain map F: ONE batched network call on all T·N states (split over the
ranks and all-gathered) plus the cheap replay (on every rank). Every configuration iterates Picard
from the same start, and the table reports how far its states end from the one-device run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# A random-weight, ADM-like ε-network (self-contained; ~1 M parameters at width 32).

def _groups(ch: int) -> int:
    g = min(16, ch)
    while ch % g:
        g -= 1
    return g


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb, 2 * cout)
        self.n2, self.c2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb):
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.e(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.c2(F.silu(self.n2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.heads, self.norm = heads, nn.GroupNorm(_groups(ch), ch)
        self.qkv, self.proj = nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x, emb=None):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        o = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(o.transpose(-1, -2).reshape(n, c, h, w))


class BenchUNet(nn.Module):
    """Three levels (w, 2w, 2w channels), one ResBlock per level down and two up, a middle
    ResBlock–attention–ResBlock at 1/4 resolution, scale-shift timestep conditioning."""

    def __init__(self, channels: int = 3, width: int = 32, attention: bool = True):
        super().__init__()
        w, emb = width, 4 * width
        self.width = w
        self.temb = nn.Sequential(nn.Linear(w, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(channels, w, 3, padding=1)
        chs = [w, 2 * w, 2 * w]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = w
        for i, co in enumerate(chs):
            self.down.append(ResBlock(c, co, emb))
            c = co
            self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if i < 2 else nn.Identity())
        self.mid1, self.mid2 = ResBlock(c, c, emb), ResBlock(c, c, emb)
        self.attn = Attention(c) if attention else None
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, co in reversed(list(enumerate(chs))):
            self.up.append(ResBlock(c + co, co, emb))
            c = co
            self.upsample.append(nn.Conv2d(c, c, 3, padding=1) if i > 0 else nn.Identity())
        self.out = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))

    def forward(self, x, t):
        emb = self.temb(timestep_embedding(t, self.width).to(x.dtype))
        h = self.inp(x)
        skips = []
        for block, down in zip(self.down, self.downsample):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid1(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        h = self.mid2(h, emb)
        for block, up in zip(self.up, self.upsample):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return 0.1 * self.out(h)


def build_network(args) -> nn.Module:
    torch.manual_seed(args.seed)
    if args.net == "unet":
        return BenchUNet(width=args.width, attention=not args.no_attention)
    if args.net == "adm":  # the project's guided-diffusion UNet, random weights
        from fixedpoint_ir.priors.adm import ADMUNet
        return ADMUNet(image_size=args.size, in_channels=3, model_channels=args.width, out_channels=3,
                       num_res_blocks=args.res_blocks,
                       # attention at 32, 16 and 8 pixels, as in the public 256x256 model
                       attention_resolutions=tuple(sorted({max(1, args.size // r) for r in (32, 16, 8)})),
                       channel_mult=(1, 1, 2, 2, 4, 4) if args.size >= 256 else (1, 2, 2, 4),
                       num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True)
    if args.net == "small_unet":
        from fixedpoint_ir.priors.small_unet import SmallUNet
        net = SmallUNet(base_channels=args.width)
        for m in net.modules():  # undo the zero init of the output convs: random but non-trivial
            if isinstance(m, nn.Conv2d) and not m.weight.any():
                nn.init.normal_(m.weight, std=1e-2)
        return net
    raise ValueError(f"unknown --net {args.net!r}")


# --------------------------------------------------------------------------------------------------
# One configuration: time R rounds of F.

def time_rounds(args, device: torch.device, group=None, distributed: bool = False):
    """Seconds of each timed round and the final states (Picard from x_T, same start everywhere)."""
    from fixedpoint_ir import ModulePrior, Sampler
    from fixedpoint_ir.distributed import DistributedPrior
    from fixedpoint_ir.operators import AveragePool

    net = build_network(args).to(device).eval()
    if args.dtype != "float32":
        net = net.to(getattr(torch, args.dtype))
    prior = ModulePrior(net, max_batch=args.max_batch).to(device)
    if distributed:
        prior = DistributedPrior(prior, group=group)
    sampler = Sampler(prior, AveragePool(4), "picard", steps=args.steps)
    g = torch.Generator().manual_seed(args.seed + 1)
    x0 = torch.rand((args.images, 3, args.size, args.size), generator=g) * 2 - 1
    y = AveragePool(4).A(x0)
    x_T = torch.randn(x0.shape, generator=g)
    noise = torch.randn((args.steps, *x0.shape), generator=g)  # drawn on CPU: same on every device
    chain = sampler.chain(y.to(device), x_T=x_T.to(device), noise=noise.to(device))
    f = sampler.fixed_point_map(chain)
    z = sampler.initial_states(chain, y.to(device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for r in range(args.warmup + args.rounds):
            sync()
            start = time.perf_counter()
            z = f(z)
            sync()
            if r >= args.warmup:
                times.append(time.perf_counter() - start)
    return times, z


def summary(times):
    return dict(median=statistics.median(times), min=min(times), mean=statistics.fmean(times))


def num_params(args) -> int:
    return sum(p.numel() for p in build_network(args).parameters())


# --------------------------------------------------------------------------------------------------
# CPU mode: launch the configurations as separate processes.

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_worker(args) -> None:
    """One process of a CPU configuration (run by :func:`cpu_main`)."""
    torch.set_num_threads(args.threads)
    from fixedpoint_ir.distributed import init_from_env, shutdown

    info = init_from_env(backend="gloo", timeout=600, device="cpu")
    times, z = time_rounds(args, torch.device("cpu"), distributed=info.world_size > 1)
    if info.rank == 0:
        torch.save(z, args.state_out)
        print("RESULT " + json.dumps(dict(times=times, world=info.world_size, threads=args.threads)), flush=True)
    shutdown()


def launch_cpu(args, procs: int, threads: int, state_out: str) -> dict:
    port = _free_port()
    base = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
            "--state-out", state_out] + _common_flags(args)
    running = []
    for rank in range(procs):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   CUDA_VISIBLE_DEVICES="", GLOO_SOCKET_IFNAME="lo")
        if procs > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                       WORLD_SIZE=str(procs), LOCAL_WORLD_SIZE=str(procs))
        else:
            for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(k, None)
        running.append(subprocess.Popen(base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=3600) for p in running]
    for p, (_, err) in zip(running, outs):
        if p.returncode:
            raise RuntimeError(f"a benchmark process failed ({p.returncode}):\n{err[-3000:]}")
    line = next(l for l in outs[0][0].splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _common_flags(args) -> list[str]:
    flags = ["--size", str(args.size), "--steps", str(args.steps), "--images", str(args.images),
             "--rounds", str(args.rounds), "--warmup", str(args.warmup), "--net", args.net,
             "--width", str(args.width), "--seed", str(args.seed), "--dtype", args.dtype,
             "--res-blocks", str(args.res_blocks)]
    if args.max_batch:
        flags += ["--max-batch", str(args.max_batch)]
    if args.no_attention:
        flags.append("--no-attention")
    return flags


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs visible, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def cpu_main(args) -> str:
    configs = [(1, 2), (2, 1), (1, 1)]
    runs: dict = {c: [] for c in configs}
    states = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        # Interleave the configurations and repeat them: the machine is shared, and a burst of
        # other work hits whichever configuration runs at that moment.
        for rep in range(args.repeats):
            for procs, threads in configs:
                path = os.path.join(tmp, f"z_{procs}x{threads}.pt")
                res = launch_cpu(args, procs, threads, path)
                runs[(procs, threads)].append(summary(res["times"]))
                states[(procs, threads)] = torch.load(path)
                print(f"repeat {rep + 1}: {procs} proc x {threads} thread: median "
                      f"{runs[(procs, threads)][-1]['median']:.3f} s/round", flush=True)
    load_after = os.getloadavg()[0]
    results = {c: dict(median=statistics.median(r["median"] for r in runs[c]),
                       min=min(r["min"] for r in runs[c]),
                       spread=(min(r["median"] for r in runs[c]), max(r["median"] for r in runs[c])))
               for c in configs}
    ref = results[(1, 2)]["median"]
    scale = states[(1, 2)].abs().max().item()
    rows = args.steps * args.images
    lines = [
        "# Seconds per solver round: processes vs threads on CPU",
        "",
        f"Command: `python benchmarks/scaling.py {' '.join(_cli_tail())}`",
        "",
        f"Machine: {machine_line()}. Date: {datetime.date.today().isoformat()}.",
        "",
        f"Network: random-weight {args.net} (width {args.width}, {num_params(args) / 1e6:.2f} M parameters), "
        f"{args.dtype}; AveragePool x4 DDNM chain, {args.size}x{args.size} RGB, T = {args.steps}, "
        f"{args.images} image(s): {rows} states per round. Picard from x_T; {args.warmup} warm-up round(s), "
        f"then {args.rounds} timed rounds per run; {args.repeats} runs per configuration, interleaved. "
        "2-process runs: gloo on 127.0.0.1, DistributedPrior (contiguous slices, all-gather), replay on "
        f"every rank. Load average (1 min) {load_before:.2f} before, {load_after:.2f} after.",
        "",
        "| processes x threads | s / round (median of runs) | run medians (min–max) | s / round (best round) "
        "| speed vs 1 x 2 | max abs diff of final states vs 1 x 2 (relative) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for procs, threads in configs:
        r = results[(procs, threads)]
        diff = (states[(procs, threads)] - states[(1, 2)]).abs().max().item()
        lines.append(f"| {procs} x {threads} | {r['median']:.3f} | {r['spread'][0]:.3f}–{r['spread'][1]:.3f} | "
                     f"{r['min']:.3f} | {ref / r['median']:.2f}x | {diff / scale:.1e} |")
    lines += ["", "'speed vs 1 x 2' > 1 means faster than one process with two threads. The machine is "
              "shared with other work (2 cores), so single runs can be several times slower when another "
              "job starts; compare the medians and the best rounds, not single runs."]
    return "\n".join(lines) + "\n"


def _cli_tail() -> list[str]:
    return [a for a in sys.argv[1:]]


# --------------------------------------------------------------------------------------------------
# GPU mode: run under torchrun, any number of ranks.

def gpu_main(args) -> str | None:
    import torch.distributed as dist
    from fixedpoint_ir.distributed import init_from_env, shutdown

    want_cpu = args.device == "cpu"
    if not want_cpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA (or pass --device cpu to check the script with gloo)")
    if "WORLD_SIZE" not in os.environ:  # plain `python scaling.py --gpu`: a world of one
        os.environ.update(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    info = init_from_env(backend="gloo" if want_cpu else "nccl", timeout=args.timeout,
                         device="cpu" if want_cpu else None)
    if want_cpu:
        torch.set_num_threads(args.threads)
    if not want_cpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    world, rank, device = info.world_size, info.rank, info.device
    sizes = sorted({k for k in (2 ** i for i in range(world.bit_length())) if k <= world} | {world})
    rows = []

    # 1 device, plain prior: the baseline (the other ranks wait).
    if rank == 0:
        times, z_ref = time_rounds(args, device)
        rows.append(("1 (plain prior)", 1, summary(times), 0.0))
    dist.barrier()
    for k in sizes:
        group = dist.new_group(ranks=list(range(k)))  # every rank creates every group
        if rank < k:
            times, z = time_rounds(args, device, group=group, distributed=True)
            if rank == 0:
                diff = ((z.float() - z_ref.float()).abs().max() / z_ref.float().abs().max()).item()
                rows.append((f"{k} (DistributedPrior)", k, summary(times), diff))
        dist.barrier()
    text = None
    if rank == 0:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_line()
        base = rows[0][2]["median"]
        states = args.steps * args.images
        launcher = (f"torchrun --standalone --nproc_per_node={world}" if "TORCHELASTIC_RUN_ID" in os.environ
                    else "python")
        lines = [
            "# Seconds per solver round over several devices",
            "",
            f"Command: `{launcher} benchmarks/scaling.py {' '.join(_cli_tail())}`",
            "",
            f"Devices: {world} x {name}; backend {info.backend}; torch {torch.__version__}. "
            f"Date: {datetime.date.today().isoformat()}.",
            "",
            f"Network: random-weight {args.net} (width {args.width}, {num_params(args) / 1e6:.1f} M parameters), "
            f"{args.dtype}{', TF32' if args.tf32 and not want_cpu else ''}; AveragePool x4 DDNM chain, "
            f"{args.size}x{args.size} RGB, T = {args.steps}, {args.images} image(s): {states} states per round"
            f"{f', max_batch {args.max_batch} per device' if args.max_batch else ''}. Picard from x_T; "
            f"{args.warmup} warm-up round(s), then {args.rounds} timed rounds.",
            "",
            "| devices | states per device | s / round (median) | s / round (min) | speed-up vs 1 device | "
            "max abs diff of states vs 1 device (relative) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for label, k, s, diff in rows:
            lines.append(f"| {label} | {math.ceil(states / k)} | {s['median']:.4f} | {s['min']:.4f} | "
                         f"{base / s['median']:.2f}x | {diff:.1e} |")
        text = "\n".join(lines) + "\n"
    shutdown()
    return text


# --------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="GPU mode (run under torchrun; NCCL)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="device of --gpu mode")
    p.add_argument("--size", type=int, default=64, help="image size (square)")
    p.add_argument("--steps", type=int, default=20, help="T, states per image")
    p.add_argument("--images", type=int, default=1, help="images per batch (N)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--net", choices=["unet", "adm", "small_unet"], default="unet",
                   help="unet: self-contained ADM-like conv UNet; adm / small_unet: the project's networks")
    p.add_argument("--width", type=int, default=32, help="base channels")
    p.add_argument("--res-blocks", type=int, default=2, help="ResBlocks per level (--net adm)")
    p.add_argument("--no-attention", action="store_true", help="no attention block (--net unet)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="network dtype (the chain stays float32)")
    p.add_argument("--max-batch", type=int, default=None, help="network chunk size per device")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convs on GPU")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (workers, --device cpu)")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (CPU mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="collective timeout (s)")
    p.add_argument("--out", type=str, default=None, help="write the markdown table here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--state-out", type=str, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        cpu_worker(args)
        return
    text = gpu_main(args) if args.gpu else cpu_main(args)
    if text is None:
        return
    print(text)
    out = args.out if args.out is not None else (None if args.gpu else str(ROOT / "benchmarks/results/scaling.md"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
