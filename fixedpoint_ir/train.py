"""Train the default prior: :class:`~fixedpoint_ir.priors.small_unet.SmallUNet` on the shipped photos.

    python -m fixedpoint_ir.train --out runs/prior --minutes 120 --threads 2

The objective is the DDPM ε-loss (Ho et al., 2020): t uniform in [0, 1000), the linear β schedule
1e-4 … 0.02 (the schedule of :class:`~fixedpoint_ir.priors.base.Prior`), x_t = √ᾱ_t x_0 +
√(1−ᾱ_t) ε and loss ‖ε_θ(x_t, t) − ε‖². AdamW with a linear warm-up, gradient clipping, and an
exponential moving average (EMA) of the weights; the EMA weights are the ones written out.

Data: random crops (default 64×64) of the :data:`~fixedpoint_ir.photos.TRAIN` photos at a random
scale (log-uniform in [--min-scale, --max-scale] of the photo's size, on --scale-levels values;
resampled with ``F.interpolate(mode="bicubic", antialias=True)``), a random flip and a random 90°
rotation (together all 8 symmetries of the square). The hold-out photos are never loaded (asserted).

Outputs, each written atomically (temporary file + rename) into ``--out``:

* ``default_prior.safetensors`` — EMA weights; metadata: ``config`` (model JSON), ``schedule``,
  ``steps``, ``seed`` and the other training settings;
* ``default_prior.sha256`` — its SHA-256 in ``sha256sum`` format (copy both into
  ``fixedpoint_ir/weights/`` to ship them);
* ``training_log.json`` — command line, seed, device, versions, wall-clock, steps, loss curve;
* ``loss_curve.png`` — the loss curve;
* ``default_prior_surrogate.json`` — a power-law Gaussian model of the same crops
  (:func:`fit_surrogate`), the prior's free stand-in for initial guesses and Jacobian models.
  ``--surrogate-only`` writes just this file (no training).

With ``--save-every`` the files are refreshed during training, so an interrupted run still
leaves usable weights.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import photos as photo_data
from .priors.small_unet import SmallUNet, _atomic_write_bytes, _umask_mode, save_small_unet
from .schedule import alphas_cumprod_from_betas, linear_betas
from .surrogate import PowerLawGaussian

__all__ = ["main", "parse_args", "random_crops", "SCHEDULE", "WEIGHTS_NAME", "HASH_NAME",
           "LOG_NAME", "CURVE_NAME", "SURROGATE_NAME", "sha256_of", "write_sha256", "fit_surrogate"]

#: The noise schedule every SmallUNet prior is trained with (stored in the weights' metadata).
SCHEDULE: dict[str, Any] = {"name": "linear", "num_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}

WEIGHTS_NAME = "default_prior.safetensors"
HASH_NAME = "default_prior.sha256"
LOG_NAME = "training_log.json"
SURROGATE_NAME = "default_prior_surrogate.json"
CURVE_NAME = "loss_curve.png"


# --------------------------------------------------------------------------------------------------
# data

def random_crops(images: Sequence[Tensor], batch_size: int, crop: int, generator: torch.Generator,
                 min_scale: float = 0.25, max_scale: float = 1.0, scale_levels: int = 16) -> Tensor:
    """A batch (B, 3, crop, crop) of augmented random crops of ``images`` (each (3, H, W)).

    Per sample: a photo chosen uniformly; a scale s log-uniform in [min_scale, max_scale]
    (one of ``scale_levels`` equally likely log-spaced values from min_scale to max_scale; 0
    keeps it continuous); a square
    window of side round(crop / s) (shrunk to fit the photo) at a uniform position, resized to
    crop×crop with antialiased bicubic interpolation and clamped to [-1, 1]; then a horizontal
    flip with probability ½ and a rotation by k·90°, k uniform in {0, 1, 2, 3} (together the 8
    symmetries of the square). Samples with the same window side are resized in one call, so a
    batch costs a few dozen kernel launches on a GPU rather than several per sample. Random
    numbers come from ``generator`` (CPU) only; the crops are on the images' device.
    """
    if not images:
        raise ValueError("no images to crop from")
    r = torch.rand(batch_size, 3, generator=generator, dtype=torch.float64)
    which = torch.randint(len(images), (batch_size,), generator=generator).tolist()
    flip = torch.rand(batch_size, generator=generator) < 0.5
    rot = torch.randint(4, (batch_size,), generator=generator)
    lo, hi = math.log(min_scale), math.log(max_scale)
    u = r[:, 0]
    if scale_levels == 1 or scale_levels < 0:
        raise ValueError(f"scale_levels must be 0 (continuous) or >= 2, got {scale_levels}")
    if scale_levels and hi > lo:   # equally likely levels, both ends included
        u = (u * scale_levels).floor().clamp_(max=scale_levels - 1) / (scale_levels - 1)
    scales = torch.exp(lo + (hi - lo) * u).tolist()

    groups: dict[int, list[tuple[int, Tensor]]] = {}
    for i in range(batch_size):
        img = images[which[i]]
        H, W = img.shape[-2:]
        side = min(max(crop, round(crop / scales[i])), H, W)
        top = min(int(float(r[i, 1]) * (H - side + 1)), H - side)
        left = min(int(float(r[i, 2]) * (W - side + 1)), W - side)
        groups.setdefault(side, []).append((i, img[:, top:top + side, left:left + side]))

    device, dtype = images[0].device, images[0].dtype
    out = torch.empty(batch_size, images[0].shape[0], crop, crop, device=device, dtype=dtype)
    for side, members in groups.items():
        idx = torch.tensor([i for i, _ in members], device=device)
        patches = torch.stack([p for _, p in members])
        if side != crop:
            patches = F.interpolate(patches, size=(crop, crop), mode="bicubic", align_corners=False,
                                    antialias=True).clamp_(-1.0, 1.0)
        out[idx] = patches

    flip = flip.to(device)
    out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    rotated = out.clone()
    for k in (1, 2, 3):
        sel = (rot == k).nonzero().flatten()
        if sel.numel():
            sel = sel.to(device)
            rotated[sel] = torch.rot90(out[sel], k, dims=(-2, -1))
    return rotated.contiguous()


def fit_surrogate(images: Sequence[Tensor], crop: int, *, samples: int = 2048, seed: int = 0,
                  min_scale: float = 0.25, max_scale: float = 1.0, scale_levels: int = 16) -> PowerLawGaussian:
    """A :class:`~fixedpoint_ir.surrogate.PowerLawGaussian` fitted to ``samples`` training crops
    drawn exactly as the training loop draws them."""
    gen = torch.Generator().manual_seed(seed)
    batches = [random_crops(images, min(256, samples), crop, gen, min_scale, max_scale, scale_levels)
               for _ in range(max(1, samples // 256))]
    return PowerLawGaussian.fit(torch.cat(batches).cpu())


# --------------------------------------------------------------------------------------------------
# files

def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_sha256(weights: Path, hash_file: Path) -> str:
    digest = sha256_of(weights)
    _atomic_write_bytes(hash_file, f"{digest}  {weights.name}\n".encode())
    return digest


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _write_curve(path: Path, curve: list[dict[str, float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        steps = [c["step"] for c in curve]
        ax.plot(steps, [c["loss"] for c in curve], lw=1, label="training loss (window mean)")
        ax.plot(steps, [c["loss_smooth"] for c in curve], lw=2, label="mean of the last 5 windows")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("ε-MSE")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _umask_mode())
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------------
# training

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fixedpoint_ir.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--steps", type=int, default=None,
                   help="number of optimiser steps (default: no limit, --minutes decides)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget; stop when reached")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=64, help="training crop side in pixels")
    p.add_argument("--min-scale", type=float, default=0.25, help="smallest random downscale factor")
    p.add_argument("--max-scale", type=float, default=1.0, help="largest random downscale factor")
    p.add_argument("--scale-levels", type=int, default=16,
                   help="number of log-spaced scale values (0: continuous; fewer = faster batches on GPU)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.999,
                   help="EMA decay (ramped up as min(decay, (1+n)/(10+n)) over the first steps)")
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--channel-mults", type=str, default="1,2,4")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--extra", action="store_true", help="also train on photos.EXTRA (not natural scenes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=str, default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training model")
    p.add_argument("--log-every", type=int, default=50, help="loss-curve sampling interval (steps)")
    p.add_argument("--save-every", type=int, default=0,
                   help="also write the outputs every N steps (0: only at the end)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--surrogate-only", action="store_true",
                   help=f"only fit the Gaussian surrogate of the crops and write {SURROGATE_NAME}")
    args = p.parse_args(argv)
    if args.steps is None and args.minutes is None and not args.surrogate_only:
        p.error("give --steps, --minutes or both")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be positive")
    if args.minutes is not None and args.minutes <= 0:
        p.error("--minutes must be positive")
    if args.batch_size < 1 or args.crop < 1 or args.log_every < 1:
        p.error("--batch-size, --crop and --log-every must be positive")
    if not 0 < args.min_scale <= args.max_scale <= 1:
        p.error("need 0 < --min-scale <= --max-scale <= 1")
    if args.scale_levels < 0 or args.scale_levels == 1:
        p.error("--scale-levels must be 0 (continuous) or >= 2")
    args.channel_mults = tuple(int(m) for m in args.channel_mults.split(","))
    return args


def _trailing_mean(curve: list[dict[str, float]], value: float, n: int = 5) -> float:
    """Mean of ``value`` and the previous n − 1 window losses (the 'smoothed' curve)."""
    values = [c["loss"] for c in curve[-(n - 1):]] + [value]
    return sum(values) / len(values)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        e = [p for p in ema.parameters()]
        m = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(e, m, 1.0 - decay)


@torch.no_grad()
def _fixed_eval(model: torch.nn.Module, images: Sequence[Tensor], crop: int, seed: int, n: int,
                alphas_cumprod: Tensor, device: torch.device) -> dict[str, float]:
    """ε-MSE of ``model`` on a fixed (seeded) set of training crops at a few timesteps."""
    g = torch.Generator().manual_seed(seed + 1_000_003)
    x0 = random_crops(images, n, crop, g)
    noise = torch.randn(x0.shape, generator=g).to(device)
    x0 = x0.to(device)
    out = {}
    for t in (50, 250, 500, 750, 950):
        ab = alphas_cumprod[t]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        pred = model(xt, torch.full((n,), t, dtype=torch.long, device=device))
        out[str(t)] = float(F.mse_loss(pred.float(), noise))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda given but CUDA is not available")
        torch.backends.cudnn.benchmark = True      # fixed shapes: let cuDNN pick its fastest kernels
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    # data: training photos only, never a hold-out one
    photos = photo_data.train_photos(extra=args.extra)
    for name in photos:
        assert name not in photo_data.HOLDOUT, f"hold-out photo {name!r} in the training set"
    names = list(photos)
    images = [photos[n].to(device) for n in names]
    for n, img in zip(names, images):
        if min(img.shape[-2:]) < args.crop:
            raise SystemExit(f"photo {n} ({img.shape[-2]}x{img.shape[-1]}) is smaller than --crop {args.crop}")

    surrogate = fit_surrogate(images, args.crop, seed=args.seed, min_scale=args.min_scale,
                              max_scale=args.max_scale, scale_levels=args.scale_levels)
    surrogate.save(out_dir / SURROGATE_NAME)
    if args.surrogate_only:
        print(f"wrote {out_dir / SURROGATE_NAME}: {surrogate!r}", file=sys.stderr)
        return 0

    torch.manual_seed(args.seed)
    data_gen = torch.Generator().manual_seed(args.seed)
    noise_gen = torch.Generator(device=device).manual_seed(args.seed + 1)

    model = SmallUNet(base_channels=args.base_channels, channel_mults=args.channel_mults,
                      dropout=args.dropout).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    train_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    alphas_cumprod = alphas_cumprod_from_betas(
        linear_betas(SCHEDULE["num_steps"], SCHEDULE["beta_start"], SCHEDULE["beta_end"])
    ).to(device=device, dtype=torch.float32)
    num_t = SCHEDULE["num_steps"]

    curve: list[dict[str, float]] = []
    window: list[Tensor] = []
    step = 0
    t_start = time.perf_counter()
    budget = None if args.minutes is None else 60.0 * args.minutes
    info: dict[str, Any] = {}

    def save(final: bool) -> None:
        elapsed = time.perf_counter() - t_start
        meta = {
            "schedule": SCHEDULE,
            "steps": step,
            "seed": args.seed,
            "objective": "ddpm-eps",
            "ema_decay": args.ema_decay,
            "batch_size": args.batch_size,
            "crop": args.crop,
            "scale_range": [args.min_scale, args.max_scale],
            "scale_levels": args.scale_levels,
            "lr": args.lr,
            "train_photos": names,
            "torch": torch.__version__,
        }
        weights = out_dir / WEIGHTS_NAME
        save_small_unet(ema, weights, meta)
        digest = write_sha256(weights, out_dir / HASH_NAME)
        log = {
            "command": [sys.executable, "-m", "fixedpoint_ir.train", *argv_list],
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "seed": args.seed,
            "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or platform.machine()),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "model_config": model.config,
            "parameters": model.num_parameters(),
            "schedule": SCHEDULE,
            "train_photos": names,
            "steps": step,
            "wall_clock_s": round(elapsed, 3),
            "steps_per_s": round(step / elapsed, 4) if elapsed > 0 else None,
            "finished": final,
            "stop_reason": info.get("stop_reason"),
            "weights_sha256": digest,
            "loss_curve": curve,
        }
        if "fixed_eval" in info:
            log["fixed_eval_ema"] = info["fixed_eval"]
        _write_json(out_dir / LOG_NAME, log)
        _write_curve(out_dir / CURVE_NAME, curve,
                     f"SmallUNet {model.num_parameters() / 1e6:.2f}M, batch {args.batch_size}, "
                     f"crop {args.crop}, {step} steps, {elapsed / 60:.1f} min on {device}")

    from tqdm.auto import tqdm

    bar = tqdm(total=args.steps, disable=args.no_progress, unit="step", mininterval=1.0, dynamic_ncols=True)
    model.train()
    try:
        while True:
            if args.steps is not None and step >= args.steps:
                info["stop_reason"] = "steps"
                break
            if budget is not None and time.perf_counter() - t_start >= budget:
                info["stop_reason"] = "minutes"
                break
            for group in opt.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
            x0 = random_crops(images, args.batch_size, args.crop, data_gen, args.min_scale, args.max_scale,
                              args.scale_levels)
            t = torch.randint(num_t, (args.batch_size,), generator=noise_gen, device=device)
            noise = torch.randn(x0.shape, generator=noise_gen, device=device)
            ab = alphas_cumprod[t].view(-1, 1, 1, 1)
            xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                pred = train_model(xt, t)
            loss = F.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            _ema_update(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))
            step += 1
            window.append(loss.detach())
            if step % args.log_every == 0:
                value = float(torch.stack(window).mean())
                window.clear()
                if not math.isfinite(value):
                    raise FloatingPointError(f"training loss became {value} at step {step}")
                curve.append({"step": step, "loss": value, "loss_smooth": _trailing_mean(curve, value),
                              "lr": opt.param_groups[0]["lr"],
                              "elapsed_s": round(time.perf_counter() - t_start, 2)})
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            bar.update(1)
            if args.save_every and step % args.save_every == 0:
                save(final=False)
    finally:
        bar.close()
    if window:
        value = float(torch.stack(window).mean())
        curve.append({"step": step, "loss": value, "loss_smooth": _trailing_mean(curve, value),
                      "lr": opt.param_groups[0]["lr"],
                      "elapsed_s": round(time.perf_counter() - t_start, 2)})
    info["fixed_eval"] = _fixed_eval(ema, images, args.crop, args.seed, min(64, 4 * args.batch_size),
                                     alphas_cumprod, device)
    save(final=True)
    elapsed = time.perf_counter() - t_start
    print(f"{step} steps in {elapsed:.1f} s ({step / max(elapsed, 1e-9):.2f} steps/s); "
          f"last loss {curve[-1]['loss'] if curve else float('nan'):.4f}; "
          f"EMA eps-MSE at t=50/250/500/750/950: "
          + "/".join(f"{v:.4f}" for v in info["fixed_eval"].values())
          + f"; wrote {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
