"""DEQ inversion (issue 7): the cost of ∂L/∂x_T, and what optimising x_T does to a restoration.

Part 1 — memory and time (default). Peak memory and seconds per gradient of a reference loss
with respect to x_T, for the three gradient modes (``implicit`` with the Picard adjoint and with
back-substitution, the published ``one_step`` phantom gradient, ``unrolled`` backpropagation)
at T = 10, 20, 50. Problem: ×4 average-pool super-resolution of a 3×32×32 image (float32); the
prior is the analytic mixture ε plus 0.1 × the default prior's architecture
(:class:`~fixedpoint_ir.priors.small_unet.SmallUNet`, 2.26 M parameters, random weights; a
plain residual conv net with ``--network conv``), wrapped in a ModulePrior with
``max_batch`` = 8: one network call never holds more than 8 states, so the forward solve and
the implicit adjoint have bounded network activations, whatever T (8 < T − 1 for every T
measured, so every T runs full batches of the same size). Every configuration runs in a
fresh subprocess (glibc ``MALLOC_MMAP_THRESHOLD_=65536``, so that freed tensors go back to the
system and the peak follows live memory); "peak" is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
after one gradient minus the resident set just before it, once the model and the data are built
and one warm-up gradient of the same mode on a T = 2 chain has run (torch's one-time lazy
initialisation, tens of MiB whatever T, is not charged to the mode). The same script records,
in float64, the relative difference between the implicit and the unrolled gradient and the
cosine of the one-step gradient to the exact one.

Part 2 — quality (``--quality``). PSNR before / after optimising x_T on hold-out crops
(:func:`fixedpoint_ir.photos.holdout_crop`) with the learned default prior
(:func:`fixedpoint_ir.priors.default.default_prior`) when its weights are installed — otherwise
with the analytic :class:`GaussianMixturePrior` and the report says so — for ×4 super-resolution
with a reference loss (to a bicubic upsampling of y: no oracle; and to the ground truth: an oracle
showing how far x_T can steer) and for reference-based colorization (a low-frequency colour loss
to a 4×4 colour thumbnail of the photo), with figures.

    nice python benchmarks/inversion.py                   # part 1 -> results/inversion_memory.md
    nice python benchmarks/inversion.py --quality --no-memory   # part 2 -> results/inversion_quality.md + figures
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MEMORY_MD = RESULTS / "inversion_memory.md"
QUALITY_MD = RESULTS / "inversion_quality.md"

MODES = {   # label -> NoiseGradient options
    "implicit (Picard adjoint)": {"mode": "implicit", "adjoint": "picard"},
    "implicit (back-substitution)": {"mode": "implicit", "adjoint": "sequential"},
    "one_step (τ=0.5, k=1)": {"mode": "one_step", "tau": 0.5, "phantom_steps": 1},
    "unrolled": {"mode": "unrolled"},
}


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_problem(T: int, dtype_name: str = "float32", network: str = "small_unet", size: int = 32,
                  width: int = 64, blocks: int = 4, max_batch: int | None = 8, seed: int = 0,
                  nw: float = 0.0):
    """(sampler, y, x_T, noise, loss) of the memory benchmark (with nw > 0 the gradient includes ∂L/∂ξ)."""
    import torch
    from torch import nn

    from fixedpoint_ir import GaussianMixturePrior, ModulePrior, Sampler
    from fixedpoint_ir.losses import ReferenceLoss
    from fixedpoint_ir.operators import AveragePool
    from fixedpoint_ir.solver import get_solver

    dtype = getattr(torch, dtype_name)

    class ConvEps(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.analytic = GaussianMixturePrior(0.5, 0.05)
            self.inp = nn.Conv2d(3, width, 3, padding=1)
            self.temb = nn.Linear(16, width)
            self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(blocks))
            self.out = nn.Conv2d(width, 3, 3, padding=1)
            with torch.no_grad():
                for p in self.parameters():
                    fan_in = p[0].numel() if p.dim() > 1 else 1
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in) * (0.5 if p.dim() > 1 else 0.1))
            self.to(dtype).requires_grad_(False)

        def forward(self, x, t):
            freqs = torch.exp(-math.log(1000.0) * torch.arange(8, dtype=x.dtype) / 8)
            a = t.to(x.dtype)[:, None] * freqs[None]
            emb = self.temb(torch.cat([a.cos(), a.sin()], dim=1))[:, :, None, None]
            h = torch.nn.functional.silu(self.inp(x) + emb)
            for conv in self.blocks:
                h = h + torch.nn.functional.silu(conv(h))
            return self.analytic.predict_eps(x, t) + 0.1 * self.out(h)

    class UNetEps(nn.Module):   # the architecture of the learned default prior, random weights
        def __init__(self):
            super().__init__()
            from fixedpoint_ir.priors.small_unet import SmallUNet

            g = torch.Generator().manual_seed(seed)
            self.analytic = GaussianMixturePrior(0.5, 0.05)
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                self.net = SmallUNet()
            with torch.no_grad():   # the init zeroes the output conv: give it small random weights
                self.net.conv_out.weight.copy_(torch.randn(self.net.conv_out.weight.shape, generator=g) * 0.02)
            self.to(dtype).requires_grad_(False).eval()

        def forward(self, x, t):
            return self.analytic.predict_eps(x, t) + 0.1 * self.net(x, t)

    prior = ModulePrior(UNetEps() if network == "small_unet" else ConvEps(), max_batch=max_batch)
    op = AveragePool(4)
    sampler = Sampler(prior, op, solver=get_solver("picard", tol=0.0), steps=T, etw=0.1, nw=nw)
    g = torch.Generator().manual_seed(seed + 1)
    gt = torch.rand(1, 3, size, size, generator=g, dtype=dtype) * 2 - 1
    y = op.A(gt)
    x_T = torch.randn(1, 3, size, size, generator=g, dtype=dtype)
    noise = torch.randn(T, 1, 3, size, size, generator=g, dtype=dtype) if nw else \
        torch.zeros(T, 1, 3, size, size, dtype=dtype)
    return sampler, y, x_T, noise, ReferenceLoss(gt)


NETWORKS = {
    "small_unet": "the default prior's SmallUNet (32/64/128 channels, 2.26 M parameters)",
    "conv": "a residual conv net (width 64, 4 blocks, time embedding)",
}


def _worker(spec: dict) -> dict:
    import torch

    from fixedpoint_ir.inversion import NoiseGradient

    torch.set_num_threads(spec["threads"])
    # warm-up: the same gradient on a T = 2 chain, so that the one-time lazy initialisation of
    # torch's kernels (tens of MiB, whatever T) is in the baseline and not charged to the mode
    w_sampler, w_y, w_x_T, w_noise, w_loss = build_problem(2, network=spec["network"], nw=spec["nw"])
    NoiseGradient(w_sampler, w_y, w_loss, noise=w_noise, **MODES[spec["label"]])(w_x_T)
    del w_sampler, w_y, w_x_T, w_noise, w_loss
    sampler, y, x_T, noise, loss = build_problem(spec["T"], network=spec["network"], nw=spec["nw"])
    fn = NoiseGradient(sampler, y, loss, noise=noise, **MODES[spec["label"]])
    rss_before, before = _rss_mib(), _maxrss_mib()
    t0 = time.perf_counter()
    r = fn(x_T)
    first = time.perf_counter() - t0
    after = _maxrss_mib()
    peak = after - rss_before
    times = [first]
    for _ in range(spec["reps"] - 1):
        t0 = time.perf_counter()
        fn(x_T)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    fn.forward(x_T)   # the forward part alone: the Picard solve (the sequential chain for unrolled)
    forward = time.perf_counter() - t0
    return {"label": spec["label"], "T": spec["T"], "peak_mib": peak, "loadavg": os.getloadavg()[0],
            "baseline_maxrss_mib": before, "baseline_rss_mib": rss_before, "hidden": after <= before,
            "seconds": min(times), "forward_seconds": forward, "nfe": r.nfe, "vjps": r.vjps,
            "rounds": r.rounds, "adjoint_rounds": r.adjoint_rounds, "loss": r.loss}


def _run_worker(spec: dict) -> dict:
    # glibc's dynamic mmap threshold keeps freed tensors in the heap and makes ru_maxrss depend
    # on allocation history (±5 MiB between identical runs); a fixed threshold returns every
    # allocation over 64 KiB to the system on free, so the peak follows live memory.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def accuracy(T: int, network: str = "small_unet", nw: float = 0.0) -> dict:
    """float64: implicit vs unrolled relative difference, one-step cosine and norm ratio."""
    import torch

    from fixedpoint_ir.inversion import noise_gradient

    from fixedpoint_ir.solver import get_solver

    sampler, y, x_T, noise, loss = build_problem(T, "float64", network, nw=nw)
    ref = noise_gradient(sampler, y, loss, x_T, noise=noise, mode="unrolled")
    exact = ref.grad
    # start the other modes' Picard solves at the fixed point: one round confirms it (residual
    # ~1e-16 < 1e-12) instead of T rounds of T evaluations
    sampler.solver = get_solver("picard", tol=1e-12)
    kw = {"noise": noise, "init": ref.states}
    imp_result = noise_gradient(sampler, y, loss, x_T, mode="implicit", adjoint="sequential", **kw)
    imp = imp_result.grad
    out = {"T": T, "implicit_vs_unrolled": float((imp - exact).norm() / exact.norm())}
    if ref.noise_grad is not None:   # ∂L/∂ξ (nw > 0)
        out["noise_implicit_vs_unrolled"] = float((imp_result.noise_grad - ref.noise_grad).norm()
                                                  / ref.noise_grad.norm())
    for tau, k in ((0.5, 1), (0.5, 5)):
        g = noise_gradient(sampler, y, loss, x_T, mode="one_step", tau=tau, phantom_steps=k, **kw).grad
        out[f"cos_tau{tau}_k{k}"] = float(g.flatten() @ exact.flatten() / (g.norm() * exact.norm()))
        out[f"ratio_tau{tau}_k{k}"] = float(g.norm() / exact.norm())
    del torch
    return out


def memory_part(args) -> None:
    rows = []
    for T in args.T:
        for label in MODES:
            spec = {"label": label, "T": T, "threads": args.threads, "reps": args.reps,
                    "network": args.network, "nw": args.nw}
            r = _run_worker(spec)
            rows.append(r)
            print(f"T={T:3d} {label:30s} peak {r['peak_mib']:8.1f} MiB  {r['seconds']:8.3f} s  "
                  f"nfe {r['nfe']:5d}  vjps {r['vjps']:5d}", flush=True)
    import torch

    torch.set_num_threads(args.threads)   # more threads than free cores stall tiny ops on a shared machine
    acc = [accuracy(T, args.network, args.nw) for T in args.T]
    for a in acc:
        print(a, flush=True)
    _memory_md(args).with_suffix(".json").write_text(json.dumps({"rows": rows, "accuracy": acc,
                                                          "command": args.command}, indent=1))
    write_memory_md(rows, acc, args)


def write_memory_md(rows, acc, args) -> None:
    by = {(r["label"], r["T"]): r for r in rows}
    Ts = args.T
    lines = [
        "# DEQ inversion: memory and time per gradient of L(x_0) with respect to x_T"
        + (" and the per-step noises ξ" if args.nw else ""),
        "",
        f"Machine: this 2-core CPU ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical cores, shared with other jobs), torch {_torch_version()}, "
        f"{args.threads} thread(s) per worker; 1-minute load average during the runs "
        f"{min(r['loadavg'] for r in rows):.1f}–{max(r['loadavg'] for r in rows):.1f}. "
        f"Command: `{args.command}`.",
        "",
        "Problem: ×4 average-pool super-resolution of one 3×32×32 image, float32, reference "
        f"(L2) loss; prior = analytic mixture ε + 0.1 × {NETWORKS[args.network]} (random "
        "weights) in a ModulePrior with max_batch = 8 (no network call holds more than 8 "
        "states; 8 < T − 1 for every T here, so every T runs full batches of the same size); "
        f"Picard forward solve (exact after T rounds), nw = {args.nw:g}. Peak = ru_maxrss after one "
        "gradient minus the resident set just before it, in a fresh process with "
        "MALLOC_MMAP_THRESHOLD_=65536, after building everything and a warm-up gradient of the "
        "same mode on a T = 2 chain (one-time lazy initialisation of torch kernels). Time = best "
        f"of {args.reps} gradient(s) (forward solve + backward), wall-clock on a shared machine; "
        "'fwd s' is the forward part alone (the parallel Picard solve: T rounds of T network "
        "evaluations on a CPU; the sequential chain for unrolled).",
        "",
        "| mode | " + " | ".join(f"peak MiB T={T}" for T in Ts) + " | " +
        " | ".join(f"s (fwd s) T={T}" for T in Ts) + f" | peak T={Ts[-1]} / T={Ts[0]} |",
        "|---|" + "---:|" * (2 * len(Ts) + 1),
    ]
    for label in MODES:
        peaks = [by[(label, T)]["peak_mib"] for T in Ts]
        secs = [f"{by[(label, T)]['seconds']:.2f} ({by[(label, T)]['forward_seconds']:.2f})" for T in Ts]
        ratio = peaks[-1] / peaks[0] if peaks[0] > 0 else float("nan")
        marks = ["*" if by[(label, T)]["hidden"] else "" for T in Ts]
        lines.append(f"| {label} | " + " | ".join(f"{p:.1f}{m}" for p, m in zip(peaks, marks)) + " | " +
                     " | ".join(secs) + f" | {ratio:.2f} |")
    imp = [by[("implicit (back-substitution)", T)]["peak_mib"] for T in Ts]
    pic = [by[("implicit (Picard adjoint)", T)]["peak_mib"] for T in Ts]
    unr = [by[("unrolled", T)]["peak_mib"] for T in Ts]
    state_mib = [T * 3 * 32 * 32 * 4 / 2**20 for T in Ts]
    lines += [
        "",
        f"Implicit peak T={Ts[-1]} / T={Ts[0]}: {pic[-1] / pic[0]:.2f} (Picard adjoint), "
        f"{imp[-1] / imp[0]:.2f} (back-substitution) — criterion ≤ 1.2; unrolled: "
        f"{unr[-1] / unr[0]:.2f}. One copy of the chain's states (T × 3×32×32 float32) is "
        + ", ".join(f"{m:.2f} MiB at T={T}" for m, T in zip(state_mib, Ts)) + ": what grows in the "
        "implicit and one-step columns is a handful of such copies (the forward Picard solve and "
        "the adjoint keep z, F(z), ε, w …), never network activations. (* = the gradient's peak "
        "did not exceed the warm-up's high-water mark: a lower bound.)",
    ]
    lines += [
        "",
        "Network work per gradient (per image): forward evaluations (the Picard solve, T rounds of "
        "T states, plus re-evaluations) and vector–Jacobian products through the network:",
        "",
        "| mode | " + " | ".join(f"NFE / VJPs T={T}" for T in Ts) + " |",
        "|---|" + "---:|" * len(Ts),
    ]
    for label in MODES:
        lines.append(f"| {label} | " + " | ".join(
            f"{by[(label, T)]['nfe']} / {by[(label, T)]['vjps']}" for T in Ts) + " |")
    lines += [
        "",
        "Accuracy (same problem in float64): relative difference ‖g − g_unrolled‖ / ‖g_unrolled‖ of "
        "the implicit gradient, and cosine / norm ratio of the published one-step (phantom) gradient "
        "to the exact one (τ = 0.5; k = 1 is the one-step gradient, k = 5 the DeqIR code's default):",
        "",
        "| T | implicit vs unrolled" + (" (the larger of x_T's and ξ's)" if args.nw else "") + " | cos one-step k=1 | norm ratio k=1 | cos phantom k=5 | norm ratio k=5 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for a in acc:
        if "noise_implicit_vs_unrolled" in a:
            a = dict(a, implicit_vs_unrolled=max(a["implicit_vs_unrolled"], a["noise_implicit_vs_unrolled"]))
        lines.append(f"| {a['T']} | {a['implicit_vs_unrolled']:.1e} | {a['cos_tau0.5_k1']:.3f} | "
                     f"{a['ratio_tau0.5_k1']:.2f} | {a['cos_tau0.5_k5']:.3f} | {a['ratio_tau0.5_k5']:.2f} |")
    lines.append("")
    path = _memory_md(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


def _memory_md(args) -> Path:
    """The committed nw = 0 table, or one per nw > 0 (the gradient then includes ∂L/∂ξ)."""
    return MEMORY_MD if not args.nw else RESULTS / f"inversion_memory_nw{args.nw:g}.md"


def _torch_version() -> str:
    import torch

    return torch.__version__


# --- part 2: quality ------------------------------------------------------------------------------

def _learned_prior():
    """(prior, description): the learned default prior, or the analytic fallback."""
    try:
        from fixedpoint_ir.priors.default import default_prior

        return default_prior(), "learned default prior (fixedpoint_ir.priors.default.default_prior)"
    except Exception as exc:   # missing module or weights: fall back, and say so
        from fixedpoint_ir import GaussianMixturePrior

        return (GaussianMixturePrior(0.0, 0.25),
                f"FALLBACK GaussianMixturePrior(mu=0, var=0.25) — the learned prior is not "
                f"available here ({type(exc).__name__}: {exc})")


def psnr(a, b) -> float:
    import torch

    x, y = ((a.clamp(-1, 1) + 1) / 2).double(), ((b.clamp(-1, 1) + 1) / 2).double()
    mse = float(torch.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def quality_part(args) -> None:
    import torch
    import torch.nn.functional as F

    from fixedpoint_ir import Sampler
    from fixedpoint_ir.inversion import optimize_noise
    from fixedpoint_ir.losses import ColorLoss, ReferenceLoss, RestorationLoss
    from fixedpoint_ir.operators import AveragePool, Colorization
    from fixedpoint_ir.photos import HOLDOUT, holdout_crop

    torch.set_num_threads(args.threads)
    prior, prior_desc = _learned_prior()
    rows, figures = [], {}
    tasks = {
        "sr4 + loss to bicubic(y)": "sr_bicubic",
        "sr4 + loss to ground truth (oracle)": "sr_oracle",
        "colorization + 4×4 colour reference": "color",
    }
    for name in HOLDOUT[: args.crops]:
        gt = holdout_crop(name, args.size, scale=args.scale).unsqueeze(0)
        for task, kind in tasks.items():
            op = AveragePool(4) if kind.startswith("sr") else Colorization()
            y = op.A(gt)
            sampler = Sampler(prior, op, solver="picard", steps=args.steps, etw=0.1, nw=0.0)
            if kind == "sr_bicubic":
                loss = RestorationLoss(lambda lr: F.interpolate(lr, scale_factor=4, mode="bicubic",
                                                                align_corners=False).clamp(-1, 1),
                                       source=y)
                ref_img = loss.reference
            elif kind == "sr_oracle":
                loss, ref_img = ReferenceLoss(gt), gt
            else:
                loss = ColorLoss(gt, size=4, mode="pooled")
                ref_img = F.interpolate(F.adaptive_avg_pool2d(gt, 4), size=gt.shape[-2:], mode="nearest")
            t0 = time.perf_counter()
            res = optimize_noise(sampler, y, loss, generator=torch.Generator().manual_seed(args.seed),
                                 gradient=args.gradient, adjoint="sequential", steps=args.opt_steps,
                                 lr=args.lr, patience=None, progress=args.progress)
            secs = time.perf_counter() - t0
            before, after = psnr(res.initial_image, gt), psnr(res.image, gt)
            rows.append({"photo": name, "task": task, "before": before, "after": after,
                         "ref_psnr": psnr(ref_img, gt), "loss0": res.initial_loss, "loss": res.loss,
                         "steps": res.steps, "seconds": secs})
            print(f"{name:14s} {task:38s} PSNR {before:6.2f} -> {after:6.2f} dB "
                  f"(reference {rows[-1]['ref_psnr']:.2f}), loss {res.initial_loss:.4g} -> {res.loss:.4g}, "
                  f"{secs:.1f} s", flush=True)
            figures.setdefault(kind, []).append((name, gt, op.A_pinv(y), ref_img, res.initial_image,
                                                 res.image, before, after))
    _figures(figures, tasks)
    _write_quality_md(rows, prior_desc, args)


def _figures(figures, tasks) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = lambda t: ((t[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()  # noqa: E731
    titles = {v: k for k, v in tasks.items()}
    for kind, items in figures.items():
        fig, axes = plt.subplots(len(items), 5, figsize=(10, 2.2 * len(items)), squeeze=False)
        for row, (name, gt, back, ref, before, after, pb, pa) in zip(axes, items):
            for ax, img, title in zip(row, (gt, back, ref, before, after),
                                      (name, "A†y", "loss reference", f"before {pb:.2f} dB",
                                       f"after {pa:.2f} dB")):
                ax.imshow(show(img))
                ax.set_title(title, fontsize=8)
                ax.axis("off")
        fig.suptitle(titles[kind], fontsize=10)
        fig.tight_layout()
        path = RESULTS / f"inversion_{kind}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(f"wrote {path}")


def _write_quality_md(rows, prior_desc, args) -> None:
    lines = [
        "# DEQ inversion: PSNR before / after optimising x_T",
        "",
        f"Prior: {prior_desc}.",
        f"Machine: this 2-core CPU, torch {_torch_version()}, {args.threads} thread(s). "
        f"Command: `{args.command}`.",
        "",
        f"Hold-out crops {args.size}×{args.size} (scale {args.scale}), T = {args.steps}, etw = 0.1, "
        f"nw = 0, Picard forward solve; {args.gradient} gradient (back-substitution adjoint), Adam, "
        f"lr = {args.lr}, {args.opt_steps} steps, best iterate kept; seed {args.seed}. PSNR on "
        "[0, 1] RGB over the whole crop; 'reference' is the PSNR of the loss's own target.",
        "",
        "| photo | task | PSNR before | PSNR after | reference | loss before → after | s |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['photo']} | {r['task']} | {r['before']:.2f} | {r['after']:.2f} | "
                     f"{r['ref_psnr']:.2f} | {r['loss0']:.4g} → {r['loss']:.4g} | {r['seconds']:.0f} |")
    lines += ["", "Figures: inversion_sr_bicubic.png, inversion_sr_oracle.png, inversion_color.png.", ""]
    QUALITY_MD.parent.mkdir(parents=True, exist_ok=True)
    QUALITY_MD.write_text("\n".join(lines))
    print(f"wrote {QUALITY_MD}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--no-memory", action="store_true", help="skip part 1")
    p.add_argument("--quality", action="store_true", help="run part 2 (PSNR before/after, figures)")
    p.add_argument("--T", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--network", default="small_unet", choices=sorted(NETWORKS))
    p.add_argument("--nw", type=float, default=0.0,
                   help="fresh-noise weight of part 1's chain (> 0: the gradient includes ∂L/∂ξ)")
    # part 2
    p.add_argument("--crops", type=int, default=3, help="how many hold-out photos")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--scale", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=20, help="T of the quality runs")
    p.add_argument("--opt-steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--gradient", default="implicit", choices=["implicit", "one_step", "unrolled"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    args.command = " ".join(["python benchmarks/inversion.py", *(sys.argv[1:] if argv is None else argv)])
    if not args.no_memory:
        memory_part(args)
    if args.quality:
        quality_part(args)


if __name__ == "__main__":
    main()
