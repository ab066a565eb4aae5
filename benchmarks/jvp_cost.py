"""What a Jacobian–vector product of the shipped network costs, relative to a plain batched pass.

A solver that uses network Jacobian information in its rounds (exact JVPs along a direction,
random-sign probes for a diagonal, Newton–Krylov) pays for it per round; on a CPU the cost of a
batch is about linear in its size, so the ratio below is what such a round costs in plain passes.
Three ways, timed side by side on the same batch of T rows (median of ``--repeats``):

* ``torch.func.jvp`` (forward mode, one pass) — may fail on the network's GroupNorm;
* ``torch.autograd.functional.jvp`` (the double-backward trick);
* a forward difference, ε(u + h·v) evaluated in the same batch as ε(u) (twice the batch), with its
  error against the autograd JVP.

    python benchmarks/jvp_cost.py --threads 1
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20, help="batch of states (T)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from torch.autograd.functional import jvp as autograd_jvp
    from torch.func import jvp as func_jvp

    from fixedpoint_ir import Prior

    prior = Prior.default()
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(args.rows, 3, args.size, args.size, generator=gen)
    v = torch.randn(u.shape, generator=gen)
    t = torch.linspace(900, 100, args.rows).long()
    eps = lambda x: prior.eps(x, t)  # noqa: E731
    h = 1e-2

    def forward():
        with torch.no_grad():
            return eps(u)

    def difference():
        with torch.no_grad():
            both = prior.eps(torch.cat([u, u + h * v]), torch.cat([t, t]))
        return (both[args.rows:] - both[:args.rows]) / h

    def backward_trick():
        return autograd_jvp(eps, u, v)[1]

    try:
        with torch.no_grad():
            func_jvp(eps, (u,), (v,))
        forward_mode, forward_mode_note = (lambda: func_jvp(eps, (u,), (v,))), ""
    except RuntimeError as err:
        forward_mode, forward_mode_note = None, str(err).split("\n")[0][:120]

    forward()  # warm-up
    timings = {"plain pass": [], "forward difference (2× batch)": [], "autograd.functional.jvp": []}
    if forward_mode is not None:
        timings["torch.func.jvp"] = []
    for _ in range(args.repeats):
        for name, fn in (("plain pass", forward), ("forward difference (2× batch)", difference),
                         ("autograd.functional.jvp", backward_trick), ("torch.func.jvp", forward_mode)):
            if name not in timings:
                continue
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    exact, approx = backward_trick(), difference()
    rel = float((approx - exact).norm() / exact.norm())
    base = statistics.median(timings["plain pass"])
    lines = ["# Cost of a Jacobian–vector product of the shipped network", "",
             f"Command: `python benchmarks/jvp_cost.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
             f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
             f"{torch.__version__}; a shared 2-core CPU, medians of {args.repeats}). Batch of {args.rows} "
             f"states, {args.size}×{args.size}.", "",
             "| method | seconds | × a plain pass |", "|---|---:|---:|"]
    for name, values in timings.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {med:.3f} | {med / base:.2f} |")
    if forward_mode is None:
        lines.append(f"| torch.func.jvp | fails: `{forward_mode_note}` | — |")
    lines += ["", f"Forward difference (h = {h:g}) against the autograd JVP: relative error {rel:.1e}.", ""]
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "jvp_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
