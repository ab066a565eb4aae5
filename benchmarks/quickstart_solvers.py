"""The README quick start's problem with each solver at its defaults: rounds, status and distance
from the sequential chain.

×4 super-resolution of the 64×64 astronaut hold-out crop (scale 0.25), shipped prior, T = 20,
seed 0, the task's sampling defaults. For each solver: rounds, network evaluations per image, its
status, the largest difference from the sequential image on [-1, 1] and in 8-bit levels (what a
saved file shows).

    python benchmarks/quickstart_solvers.py
"""
from __future__ import annotations

import warnings

import torch


def to_8bit(image: torch.Tensor) -> torch.Tensor:
    return ((image.clamp(-1, 1) + 1) * 127.5).round()


def main() -> None:
    from fixedpoint_ir import Prior, Sampler
    from fixedpoint_ir.backends import Anderson, Broyden, Triangular
    from fixedpoint_ir.operators import degrade, make_operator
    from fixedpoint_ir.photos import holdout_crop

    torch.set_num_threads(1)
    prior = Prior.default()
    x = holdout_crop("astronaut", 64, scale=0.25)[None]
    operator = make_operator("sr4", tuple(x.shape[1:]))
    y = degrade(x, operator)
    reference = Sampler(prior, operator, steps=20).sequential(y, generator=torch.Generator().manual_seed(0)).image
    print("| solver | rounds | NFEs per image | status | max abs diff | max 8-bit levels |")
    print("|---|---:|---:|---|---:|---:|")
    for name, solver in (("Triangular()", Triangular()), ("Anderson()", Anderson()), ("Broyden()", Broyden()),
                         ("Anderson.published()", Anderson.published())):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = Sampler(prior, operator, solver, steps=20).restore(y, generator=torch.Generator().manual_seed(0))
        diff = float((r.image - reference).abs().max())
        levels = int((to_8bit(r.image) - to_8bit(reference)).abs().max())
        print(f"| {name} | {r.rounds} | {r.nfe} | {r.status.value} | {diff:.1e} | {levels} |", flush=True)


if __name__ == "__main__":
    main()
