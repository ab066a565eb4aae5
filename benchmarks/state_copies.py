"""Peak live-tensor bytes of one restore per solver, in trajectory-sized units (the memory plan's
``state_copies`` in fixedpoint_ir/memory.py are scaled from these ratios).

A cheap analytic prior (its activations are small), ×4 super-resolution on 32×32 images,
etw = nw = 1; the peak divided by the bytes of one (T, N, C, H, W) trajectory. Ratios between
solvers are what the table uses; the absolute counts include the prior's temporaries.

    python benchmarks/state_copies.py
"""
from __future__ import annotations

import argparse
import warnings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 48])
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args(argv)

    import torch

    from fixedpoint_ir import GaussianMixturePrior, Sampler
    from fixedpoint_ir.backends import Picard, Triangular
    from fixedpoint_ir.memory import PeakTensorBytes
    from fixedpoint_ir.operators import make_operator

    warnings.simplefilter("ignore", RuntimeWarning)
    solvers = {"picard (8 rounds)": lambda: Picard(max_rounds=8), "triangular": Triangular,
               'triangular, accelerate="anderson"': lambda: Triangular(accelerate="anderson"),
               'triangular, linearize="multisecant"': lambda: Triangular(linearize="multisecant")}
    print("| T | solver | peak / trajectory | ÷ triangular's |\n|---:|---|---:|---:|")
    for steps in args.steps:
        op = make_operator("sr4", (3, args.size, args.size))
        x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
        y = op.A(x)
        trajectory = 3 * args.size * args.size * 4 * steps
        peaks = {}
        for name, make in solvers.items():
            sampler = Sampler(GaussianMixturePrior(), op, make(), steps=steps, etw=1.0, nw=1.0)
            with torch.no_grad(), PeakTensorBytes() as peak:
                sampler.restore(y, generator=torch.Generator().manual_seed(0))
            peaks[name] = peak.peak / trajectory
        for name, value in peaks.items():
            print(f"| {steps} | {name} | {value:.2f} | {value / peaks['triangular']:.2f} |")


if __name__ == "__main__":
    main()
