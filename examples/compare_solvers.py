"""Solvers side by side: the same restoration by the triangular solver and by Picard iteration.

Both solve the same fixed-point system and reach the sequential chain's image; only the number of
rounds (parallel depth) and network evaluations differ. A callback records each round's residual
and the distance of the current image to the sequential answer. Writes `compare_solvers.png`.
"""
import torch

from fixedpoint_ir import Prior, Sampler
from fixedpoint_ir.operators import degrade, make_operator
from fixedpoint_ir.photos import holdout_crop

prior = Prior.default()
x = holdout_crop("astronaut", 64, scale=0.25)[None]
operator = make_operator("sr4", tuple(x.shape[1:]))
y = degrade(x, operator)
seed, steps = 0, 10   # T = 10: Picard needs about T rounds of T states, under a minute on a CPU
reference = Sampler(prior, operator, steps=steps).sequential(y, generator=torch.Generator().manual_seed(seed))

traces = {}
for solver in ("triangular", "picard"):
    errors = []
    def record(info, errors=errors):   # the image is the last state row
        errors.append(float((info.fz[-1] - reference.image).abs().max() / reference.image.abs().max()))
    result = Sampler(prior, operator, steps=steps, solver=solver).restore(
        y, generator=torch.Generator().manual_seed(seed), callback=record)
    traces[solver] = (result.residuals, errors)
    print(f"{solver:10s} {result.summary()}; final error {errors[-1]:.1e}")

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
for solver, (residuals, errors) in traces.items():
    left.semilogy(range(1, len(residuals) + 1), residuals, marker="o", label=solver)
    right.semilogy(range(1, len(errors) + 1), errors, marker="o", label=solver)
left.set(xlabel="round", ylabel="relative residual ‖F(z) − z‖", title="residual")
right.axhline(1e-3, color="grey", linestyle="--", label="tol 1e-3")
right.set(xlabel="round", ylabel="max |x − x_seq| / max |x_seq|", title="error against the sequential chain")
for ax in (left, right):
    ax.legend()
fig.tight_layout()
fig.savefig("compare_solvers.png", dpi=100)
