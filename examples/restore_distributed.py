"""Restore one image with the rounds of the parallel solver spread over several processes.

Runs as is, with or without torchrun (one process: nothing is distributed)::

    python examples/restore_distributed.py                                   # one process
    torchrun --standalone --nproc_per_node=2 examples/restore_distributed.py # 2 CPU processes (gloo)
    torchrun --standalone --nproc_per_node=4 examples/restore_distributed.py --device cuda  # 4 GPUs (NCCL)

It degrades a hold-out photo crop (×4 super-resolution), restores it on every rank with the same
seed (each rank evaluates its share of the states of every round), and rank 0 writes the image.
"""
from __future__ import annotations

import argparse

import torch

from fixedpoint_ir import Prior, Sampler
from fixedpoint_ir.distributed import distribute, init_from_env
from fixedpoint_ir.images import write_image
from fixedpoint_ir.operators import degrade, make_operator
from fixedpoint_ir.photos import holdout_crop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="restored_distributed.png", help="image rank 0 writes")
    parser.add_argument("--size", type=int, default=64, help="crop size in pixels (default 64)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps T (default 20)")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args()

    info = init_from_env(device=None if args.device == "cuda" else args.device)
    x = holdout_crop("astronaut", args.size, scale=min(1.0, args.size / 256))[None]
    operator = make_operator("sr4", tuple(x.shape[1:]))
    y = degrade(x, operator).to(info.device)
    prior = Prior.default(device=info.device)
    sampler = distribute(Sampler(prior, operator, steps=args.steps))   # unchanged without torchrun
    g = torch.Generator(device=info.device).manual_seed(0)             # the same seed on every rank
    result = sampler.restore(y, generator=g)
    if info.is_main:
        write_image(result.image.cpu(), args.output, overwrite=args.overwrite)
        print(f"{info.world_size} process(es): {result.summary()} -> {args.output}")


if __name__ == "__main__":
    main()
