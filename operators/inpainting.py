"""Inpainting: keep the known pixels."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Operator

__all__ = ["Mask"]


class Mask(Operator):
    """A = A† = multiplication by a 0/1 mask (1 = observed). y keeps the image shape.

    Args:
        mask: boolean (or 0/1) tensor of shape (H, W), shared over channels, or (C, H, W) for a
            mask per channel.

    Masks of the usual kinds (random pixels, box, stripes, text, scratches, an image file) are
    made by :mod:`fixedpoint_ir.operators.masks`; :meth:`save` writes the mask as a PNG (white =
    observed) and :meth:`from_file` reads one back.
    """

    singular_value = 1.0
    diagonal = True

    def __init__(self, mask: Tensor):
        super().__init__()
        mask = torch.as_tensor(mask)
        if mask.dim() not in (2, 3):
            raise ValueError(f"mask must have shape (H, W) or (C, H, W), got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            if mask.is_floating_point() and not torch.isfinite(mask).all():
                raise ValueError("mask must not contain NaN or Inf")
            if not ((mask == 0) | (mask == 1)).all():
                raise ValueError("mask must be boolean or hold only 0 and 1")
            mask = mask.bool()
        self.register_buffer("mask", mask)

    def y_shape(self, image_shape):
        c, h, w = image_shape
        mh, mw = self.mask.shape[-2:]
        if (mh, mw) != (h, w):
            raise ValueError(f"mask of size {mh}x{mw} does not fit an image of size {h}x{w}")
        if self.mask.dim() == 3 and self.mask.shape[0] != c:
            raise ValueError(f"a per-channel mask has {self.mask.shape[0]} channels, the image has {c}")
        return (c, h, w)

    def A(self, x: Tensor) -> Tensor:
        self.check_image(x)
        return x * self.mask.to(x.dtype)

    def A_pinv(self, y: Tensor) -> Tensor:
        return y * self.mask.to(y.dtype)

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self.A_pinv(y)

    def save(self, path) -> None:
        """Write the mask as an 8-bit PNG, white (255) = observed; a per-channel mask as RGB."""
        from .masks import save_mask

        save_mask(self.mask, path)

    @classmethod
    def from_file(cls, path, size: tuple[int, int] | None = None, *, per_channel: bool = False,
                  threshold: float = 0.5) -> "Mask":
        """A mask read from an image file (see :func:`~fixedpoint_ir.operators.masks.mask_from_image`)."""
        from .masks import mask_from_image

        return cls(mask_from_image(path, size, per_channel=per_channel, threshold=threshold))

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mask.shape)}, observed={self.mask.float().mean().item():.3f}"
