"""Noise without a component along the null space's constant images (issue #22).

Where A does not see an image-wide constant — colorization's global colour: the spatial mean of
each channel minus the grey, a flat fill of missing pixels — nothing in y decides it, and with
fresh noise at every step (etw = nw = 1) the chain's early steps take it from the draw: the
colorized photo comes out warm, grey or orange by seed (`python benchmarks/quality_seeds.py
--colour-trace`: the chroma mean is set in the first 5 of 20 steps and kept). Drawing x_T and the
ξ_j orthogonal to these few directions (2 per image for colour) leaves the prior and y to decide
them: the per-photo PSNR spread over seeds drops from 4.7 to under 1 dB (docs/quality.md).

The directions are S = span{(I − A†A) 1_c}, 1_c the constant image of channel c: at most C of
them, computed once per operator and image shape, exact for any operator with a correct A†.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["null_mean_basis", "remove_null_mean"]


def null_mean_basis(operator, image_shape: tuple[int, int, int], *, dtype=torch.float32,
                    device=None) -> Tensor:
    """An orthonormal basis (k, C, H, W) of S = span{(I − A†A) 1_c} (k ≤ C; k = 0 when A sees
    every constant image, as average pooling and blurs with unit DC gain do)."""
    c = image_shape[0]
    constants = torch.zeros((c, *image_shape), dtype=dtype, device=device)
    for channel in range(c):
        constants[channel, channel] = 1.0
    unseen = (constants - operator.A_pinv(operator.A(constants))).to(torch.float64)
    # Gram-Schmidt by QR of the flattened images; directions A (nearly) sees are dropped, so that
    # rounding dust of A†A 1_c is not made into a direction.
    q, r = torch.linalg.qr(unseen.reshape(c, -1).T)
    keep = r.diagonal().abs() > 1e-4 * constants[0].norm().item()
    basis = q[:, keep].T.reshape(-1, *image_shape)
    return basis.to(dtype=dtype, device=device)


def remove_null_mean(noise: Tensor, basis: Tensor) -> Tensor:
    """``noise`` (…, C, H, W) minus its orthogonal projection onto the basis (k, C, H, W)."""
    if basis.shape[0] == 0:
        return noise
    coeff = torch.einsum("...chw,kchw->...k", noise, basis)
    return noise - torch.einsum("...k,kchw->...chw", coeff, basis)
