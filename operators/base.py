"""The Operator interface: a linear degradation A with its pseudo-inverse A† (DESIGN §6).

Operators act on batches of images of shape (N, C, H, W) and return observations of shape
(N, *y_shape). They never import the sampler.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

__all__ = ["Operator"]

ImageShape = tuple[int, int, int]


class Operator(nn.Module, ABC):
    """A linear degradation y = A x with a pseudo-inverse A†.

    Subclasses implement :meth:`A`, :meth:`A_pinv` and :meth:`y_shape` (the observation shape for
    an image shape, raising ``ValueError`` when the operator does not fit that image).
    ``A_dagger`` is an alias of ``A_pinv`` (the name other inverse-problem libraries use).

    ``is_projector`` is True when A†A is an orthogonal projector (A A† A = A, A†A symmetric), which
    the closed form of the chain map relies on. Operators whose A† is exact Moore–Penrose are.
    """

    is_projector: bool = True

    @abstractmethod
    def A(self, x: Tensor) -> Tensor:
        """Degrade a batch of images (N, C, H, W) -> (N, *y_shape)."""

    @abstractmethod
    def A_pinv(self, y: Tensor) -> Tensor:
        """Pseudo-inverse A†: (N, *y_shape) -> (N, C, H, W)."""

    @abstractmethod
    def y_shape(self, image_shape: ImageShape) -> tuple[int, ...]:
        """Shape of one observation for one image of shape (C, H, W); ValueError if it does not fit."""

    def A_dagger(self, y: Tensor) -> Tensor:
        return self.A_pinv(y)

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    # Derived maps: P = A†A projects onto the row space ("range" part of the image).
    def project_range(self, x: Tensor) -> Tensor:
        """P x = A†A x."""
        return self.A_pinv(self.A(x))

    def project_null(self, x: Tensor) -> Tensor:
        """(I − P) x: the part of x the observation does not see."""
        return x - self.project_range(x)

    def data_consistency(self, x0: Tensor, y: Tensor) -> Tensor:
        """The range/null-space correction x0 − A†(A x0 − y) = A†y + (I − P) x0 (DDNM)."""
        return x0 - self.A_pinv(self.A(x0) - y)

    # Validation helpers shared by every operator and by the sampler.
    def check_image(self, x: Tensor, name: str = "x") -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a tensor of shape (N, C, H, W), got {shape}")
        self.y_shape(tuple(x.shape[1:]))

    def check_observation(self, y: Tensor, image_shape: ImageShape, name: str = "y") -> None:
        expected = self.y_shape(tuple(image_shape))
        if not isinstance(y, Tensor) or tuple(y.shape[1:]) != tuple(expected) or y.dim() != len(expected) + 1:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"{name} must have shape (N, {', '.join(map(str, expected))}) for "
                             f"{type(self).__name__} on images of shape {tuple(image_shape)}, got {shape}")

    def extra_repr(self) -> str:
        return ""


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
