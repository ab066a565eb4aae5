"""Does "converged" mean the image is within tol of the sequential chain, for every backend?

Runs every backend on learned-prior problems (the shipped prior, a crop of random ground truth,
T = 20, tol 1e-3; each task with its own sampling defaults and with the reference code's etw 0.1,
nw 0) and prints status, rounds, the solver's image-error estimate (the quantity compared with
tol) and the true distance to the sequential chain (max-abs, relative to max(1, max|image|)).

    OMP_NUM_THREADS=1 python benchmarks/honesty.py --size 16
"""
from __future__ import annotations

import argparse
import warnings

import torch

TOL = 1e-3
TASKS = ("deblur_gauss", "inpaint_random", "colorize")
SAMPLINGS = ("task", "ddim")


def backends(tol: float = TOL) -> dict:
    from fixedpoint_ir import Anderson, Broyden, Picard, TorchDEQ, Triangular

    return {"picard": Picard(tol=tol), "anderson": Anderson(tol=tol), "broyden": Broyden(tol=tol),
            "torchdeq_anderson": TorchDEQ("anderson", tol=tol), "torchdeq_broyden": TorchDEQ("broyden", tol=tol),
            "triangular": Triangular(tol=tol)}


def image_error(image: torch.Tensor, ref: torch.Tensor) -> float:
    """max|image − ref| per image, relative to max(1, max|ref|); the largest over the images."""
    scale = ref.flatten(1).abs().amax(1).clamp_min(1.0)
    return float(((image - ref).flatten(1).abs().amax(1) / scale).max())


def outcomes(prior, task: str, size: int, sampling: str, dtype=torch.float32, seed: int = 1) -> dict:
    """{backend: (Result, true image error)} for one problem."""
    from fixedpoint_ir import Sampler
    from fixedpoint_ir.operators.tasks import make_operator

    op = make_operator(task, (3, size, size))
    kwargs = {} if sampling == "task" else dict(etw=0.1, nw=0.0, t_max=prior.num_train_steps)
    truth = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1
    y = op.A(truth)
    ref = Sampler(prior, op, "picard", steps=20, **kwargs).sequential(
        y, generator=torch.Generator().manual_seed(0)).image
    out = {}
    for name, solver in backends().items():
        sampler = Sampler(prior, op, solver, steps=20, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = sampler.restore(y, generator=torch.Generator().manual_seed(0))
        out[name] = (result, image_error(result.image, ref))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from fixedpoint_ir import Prior

    prior = Prior.default()
    print(f"| problem ({args.size}x{args.size}, T=20) | backend | status | rounds | image error estimate "
          "| true image error |")
    print("|---|---|---|---:|---:|---:|")
    for task in TASKS:
        for sampling in SAMPLINGS:
            for name, (r, err) in outcomes(prior, task, args.size, sampling).items():
                est = r.report.image_error
                print(f"| {task}, {sampling} | {name} | {r.status.value} | {r.rounds} | "
                      f"{'—' if est is None else f'{est:.1e}'} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
