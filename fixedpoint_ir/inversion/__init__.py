"""DEQ inversion: gradients with respect to the chain's noise, and optimising it (DESIGN §5).

The restored image is the last row of the fixed point z* = F(z*; x_T, ξ) of the chain map
(DESIGN §3); x_T is the start and ξ_j the fresh noise of step j (read where nw > 0). For a loss
L(x_0*) three gradients are offered, each giving ∂L/∂x_T and, when the chain reads its noises,
∂L/∂ξ:

``implicit`` (exact, memory bounded; :mod:`.adjoint`)
    The implicit function theorem: with J = ∂F/∂z at z* and g = ∂L/∂z* (non-zero on the last
    row only), the adjoint w solves w = g + w J, and ∂L/∂x_T = w ∂F/∂x_T, ∂L/∂ξ = w ∂F/∂ξ. z*
    comes from the sampler's own solver (no graph); w J is a vector–Jacobian product: one
    backward pass through the cheap replay, then ONE batched network VJP over the state rows
    (chunked by ``chunk`` or the prior's ``max_batch``; the network is re-run per chunk, so no
    network activations are kept between products). J is strictly lower triangular, so the
    adjoint system is strictly upper triangular: it is solved by back-substitution
    (``adjoint="sequential"``, the default: T − 1 single-row VJPs) or handed to any
    :class:`~fixedpoint_ir.solver.FixedPointSolver` with its rows reversed (then it is lower
    triangular like F, and Picard is exact after T rounds). ξ_j enters row j of F affinely, so
    ∂L/∂ξ comes out of the final replay pass with no network call. Memory: a few
    (T, N, C, H, W) tensors and one chunk of network activations — it does not grow with T
    beyond the batch of T states.
``one_step`` (the published "phantom" gradient)
    Differentiate k (``phantom_steps``, 1 by default) damped applications z ← (1 − τ) z + τ F(z)
    at the detached z*, as in the DeqIR code (τ = 0.5, k = 5 there). With k = 1, x_T enters only
    through row 0 (the direct term √(b_j/a_0)(I − P)x_T and e_0 = ε(x_T, t_0)): the network's
    Jacobian along the chain is ignored. With τ = 1 and k ≥ T it equals the exact gradient (J is
    nilpotent); k > 1 keeps k network graphs of T states, so its memory grows with k·T.
``unrolled`` (the reference)
    Backpropagation through the sequential chain: T network graphs kept, memory grows with T.

:func:`optimize_noise` runs a first-order optimiser on x_T — and on the ξ_j where the chain reads
them (``variables="auto"``; :mod:`.variables` says why) — with any of them, with a loss history,
the best iterate, a stopping rule and a progress bar. A loss whose gradient is identically zero
(the measurement loss ‖A x_0 − y‖²: the chain enforces A x_0 = y) is refused up front when it is
a :class:`~fixedpoint_ir.losses.MeasurementLoss`, and detected numerically on the first step
otherwise (:class:`ZeroGradientError`, whose message tells that case from x_T being washed out by
per-step noise: :mod:`.errors`).
"""
from __future__ import annotations

from .errors import ZeroGradientError, gradient_is_zero
from .gradient import GRADIENTS, NoiseGradient, NoiseGradientResult, noise_gradient
from .optimize import InversionResult, optimize_noise
from .variables import VARIABLES

__all__ = [
    "GRADIENTS", "VARIABLES", "NoiseGradient", "NoiseGradientResult", "noise_gradient", "optimize_noise",
    "InversionResult", "ZeroGradientError", "gradient_is_zero",
]
