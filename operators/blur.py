"""Deblurring operators: separable kernels with an SVD pseudo-inverse, and 2-D kernels via FFT.

Separable blurs (:class:`SeparableBlur`, :class:`GaussianBlur`, :class:`AnisotropicGaussianBlur`)
are true convolutions with zero padding and an output of the image's size ("same"): with L taps
and centre c = L // 2, y_i = Σ_t k[t] x_{i − (t − c)} on each axis, pixels outside the image
being 0. EVERY tap is used. The published DDRM / DDNM builder of the 1-D blur matrix loops over
``range(i − L//2, i + L//2)`` and so silently drops the last tap; numbers from this package
therefore differ slightly from the published tables (for the 5-tap σ = 10 kernel the dropped tap
carries ≈ 20 % of the weight).

Singular values below ``threshold`` times the largest are zeroed and A itself is the truncated
operator (see :class:`~fixedpoint_ir.operators.separable.SeparableOperator`), so A† is its exact
Moore–Penrose inverse and ``is_projector`` holds. ``threshold=0`` keeps the plain blur (its
pseudo-inverse is then exact but may amplify noise enormously).

:class:`ConvolutionBlur` takes any 2-D kernel (motion blur: :func:`motion_kernel`) and applies it
by FFT with a circular boundary; frequencies whose |K(f)| is below ``threshold`` times the largest
are zeroed, in A as well, so A† = F⁻¹ diag(1/K) F on the kept frequencies is exact.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Operator, _check_positive_int
from .separable import SeparableOperator

__all__ = ["SeparableBlur", "GaussianBlur", "AnisotropicGaussianBlur", "ConvolutionBlur",
           "gaussian_kernel", "motion_kernel", "blur_matrix", "DEFAULT_THRESHOLD"]

#: Default relative truncation of the singular values (DDRM / DDNM zero those below 3e-2).
DEFAULT_THRESHOLD = 3e-2


def _check_kernel(kernel, name: str, dim: int) -> Tensor:
    try:
        k = torch.as_tensor(kernel, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be a {dim}-D array of numbers: {e}") from None
    if k.dim() != dim or k.numel() == 0:
        raise ValueError(f"{name} must be a non-empty {dim}-D array, got shape {tuple(k.shape)}")
    if not torch.isfinite(k).all():
        raise ValueError(f"{name} contains NaN or Inf")
    if not (k != 0).any():
        raise ValueError(f"{name} is all zeros")
    return k.clone()


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    return float(threshold)


def gaussian_kernel(sigma: float, size: int) -> Tensor:
    """The normalised 1-D Gaussian exp(−x²/2σ²) sampled at x = −size//2 … size//2 (float64).

    ``size`` must be odd (the kernel is centred on a pixel). ``gaussian_kernel(10, 5)`` is the
    nearly flat kernel of the published "deblur_gauss" task.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) \
            or sigma <= 0:
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    size = _check_positive_int(size, "size")
    if size % 2 == 0:
        raise ValueError(f"size must be odd (a kernel centred on a pixel), got {size}")
    x = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return k / k.sum()


def blur_matrix(kernel: Tensor, size: int) -> Tensor:
    """The (size, size) zero-padded "same" convolution matrix of a 1-D kernel, every tap used.

    M[i, p] = k[i − p + c] with c = len(k) // 2 where 0 ≤ i − p + c < len(k).
    """
    k = torch.as_tensor(kernel, dtype=torch.float64)
    n, c = int(size), k.numel() // 2
    i = torch.arange(n).view(-1, 1)
    p = torch.arange(n).view(1, -1)
    t = i - p + c
    valid = (t >= 0) & (t < k.numel())
    return torch.where(valid, k[t.clamp(0, k.numel() - 1)], torch.zeros((), dtype=torch.float64))


class SeparableBlur(SeparableOperator):
    """Blur with a separable kernel k_h ⊗ k_w (see the module docstring for boundary and taps).

    Args:
        kernel_h: 1-D kernel along the height (applied down the columns).
        kernel_w: 1-D kernel along the width; defaults to ``kernel_h``.
        threshold: relative truncation of the singular values of A (default 3e-2, as DDRM /
            DDNM); A is the truncated operator, so the four Moore–Penrose identities hold exactly.

    Kernels are used as given (not renormalised). A kernel longer than the image side raises.
    """

    def __init__(self, kernel_h, kernel_w=None, threshold: float = DEFAULT_THRESHOLD):
        super().__init__(_check_threshold(threshold))
        self.register_buffer("kernel_h", _check_kernel(kernel_h, "kernel_h", 1))
        self.register_buffer("kernel_w", self.kernel_h.clone() if kernel_w is None
                             else _check_kernel(kernel_w, "kernel_w", 1))

    def check_size(self, height, width):
        if self.kernel_h.numel() > height:
            raise ValueError(f"kernel_h has {self.kernel_h.numel()} taps, more than the image "
                             f"height {height}")
        if self.kernel_w.numel() > width:
            raise ValueError(f"kernel_w has {self.kernel_w.numel()} taps, more than the image "
                             f"width {width}")
        return height, width

    def matrices(self, height, width):
        return blur_matrix(self.kernel_h.cpu(), height), blur_matrix(self.kernel_w.cpu(), width)

    def extra_repr(self) -> str:
        return (f"taps=({self.kernel_h.numel()}, {self.kernel_w.numel()}), "
                f"threshold={self.threshold:g}")


class GaussianBlur(SeparableBlur):
    """Isotropic Gaussian blur: :func:`gaussian_kernel` (σ, size) on both axes.

    The defaults σ = 10, size = 5 are the published "deblur_gauss" kernel (nearly a 5-tap box).
    """

    def __init__(self, sigma: float = 10.0, size: int = 5, threshold: float = DEFAULT_THRESHOLD):
        k = gaussian_kernel(sigma, size)
        super().__init__(k, k, threshold)
        self.sigma, self.size = float(sigma), int(size)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, size={self.size}, threshold={self.threshold:g}"


class AnisotropicGaussianBlur(SeparableBlur):
    """Gaussian blur with different σ along the height and the width (both ``size`` taps).

    The defaults (σ_h = 1, σ_w = 20, 9 taps) follow the published "deblur_aniso" task, which
    pairs a σ = 1 and a σ = 20 nine-tap kernel.
    """

    def __init__(self, sigma_h: float = 1.0, sigma_w: float = 20.0, size: int = 9,
                 threshold: float = DEFAULT_THRESHOLD):
        super().__init__(gaussian_kernel(sigma_h, size), gaussian_kernel(sigma_w, size), threshold)
        self.sigma_h, self.sigma_w, self.size = float(sigma_h), float(sigma_w), int(size)

    def extra_repr(self) -> str:
        return (f"sigma_h={self.sigma_h:g}, sigma_w={self.sigma_w:g}, size={self.size}, "
                f"threshold={self.threshold:g}")


def motion_kernel(length: float = 9.0, angle: float = 0.0, size: int | None = None) -> Tensor:
    """A linear motion-blur kernel: a segment of ``length`` pixels through the centre at ``angle``
    degrees (counter-clockwise from the +width axis), anti-aliased, normalised to sum 1 (float64).

    The segment is sampled at 16 points per pixel and each point is spread bilinearly over its
    four neighbours. ``size`` (odd) defaults to the smallest odd integer ≥ length + 2. Deterministic
    (the published motion tasks draw random trajectories instead).
    """
    for name, v in (("length", length), ("angle", angle)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if length <= 0:
        raise ValueError(f"length must be positive, got {length!r}")
    if size is None:
        size = int(math.ceil(length)) + 2
        size += 1 - size % 2
    size = _check_positive_int(size, "size")
    if size % 2 == 0:
        raise ValueError(f"size must be odd (a kernel centred on a pixel), got {size}")
    if length > size:
        raise ValueError(f"length {length} does not fit in a kernel of size {size}")
    c = size // 2
    n = max(2, int(math.ceil(16 * length)))
    s = torch.linspace(-length / 2, length / 2, n, dtype=torch.float64)
    theta = math.radians(angle)
    xs = c + s * math.cos(theta)  # width axis
    ys = c - s * math.sin(theta)  # height axis (rows grow downwards)
    k = torch.zeros(size, size, dtype=torch.float64)
    x0, y0 = xs.floor(), ys.floor()
    fx, fy = xs - x0, ys - y0
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                      (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        r = (y0 + dy).long().clamp(0, size - 1)
        q = (x0 + dx).long().clamp(0, size - 1)
        k.index_put_((r, q), w, accumulate=True)
    return k / k.sum()


class ConvolutionBlur(Operator):
    """Blur with any 2-D kernel, applied by FFT with a circular (periodic) boundary.

    y = k ⊛ x (true circular convolution, the kernel's tap (kh//2, kw//2) at the output pixel),
    per channel, same size as the image. With K = FFT of the zero-padded, centred kernel, the
    singular values of A are |K(f)|; those below ``threshold`` · max|K| are zeroed, in A as well
    (A := F⁻¹ diag(K·keep) F), so A† = F⁻¹ diag(keep / K) F is exact Moore–Penrose.

    Args:
        kernel: 2-D kernel (kh, kw), used as given (not renormalised).
        threshold: relative truncation of the spectrum, default 3e-2.
    """

    is_projector = True

    def __init__(self, kernel, threshold: float = DEFAULT_THRESHOLD):
        super().__init__()
        self.register_buffer("kernel", _check_kernel(kernel, "kernel", 2))
        self.threshold = _check_threshold(threshold)
        self._cache: dict = {}

    def y_shape(self, image_shape):
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        c, h, w = image_shape
        kh, kw = self.kernel.shape
        if kh > h or kw > w:
            raise ValueError(f"kernel of size {kh}x{kw} is larger than the image {h}x{w}")
        return (c, h, w)

    def spectrum(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """(K·keep, keep) in complex128 / bool for an image of size height × width (cached)."""
        key = (height, width)
        if key not in self._cache:
            self.y_shape((1, height, width))
            kh, kw = self.kernel.shape
            pad = torch.zeros(height, width, dtype=torch.float64)
            rows = (torch.arange(kh) - kh // 2) % height
            cols = (torch.arange(kw) - kw // 2) % width
            pad.index_put_((rows.view(-1, 1).expand(kh, kw), cols.view(1, -1).expand(kh, kw)),
                           self.kernel.cpu(), accumulate=True)
            K = torch.fft.fft2(pad)
            mag = K.abs()
            keep = (mag > 0) & (mag >= self.threshold * mag.max())
            self._cache[key] = (torch.where(keep, K, torch.zeros_like(K)), keep)
        return self._cache[key]

    def singular_values(self, image_shape) -> Tensor:
        """|K(f)| per frequency (truncated ones 0), float64, shape (H, W)."""
        return self.spectrum(image_shape[1], image_shape[2])[0].abs()

    def _fourier(self, t: Tensor, multiplier: Tensor) -> Tensor:
        cdtype = torch.complex128 if t.dtype == torch.float64 else torch.complex64
        m = multiplier.to(device=t.device, dtype=cdtype)
        return torch.fft.ifft2(torch.fft.fft2(t.to(cdtype)) * m).real.to(t.dtype)

    def _check_t(self, t: Tensor, name: str) -> None:
        if not isinstance(t, Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape (N, C, H, W), got {shape}")
        self.y_shape(tuple(t.shape[1:]))

    def A(self, x: Tensor) -> Tensor:
        self._check_t(x, "x")
        K, _ = self.spectrum(*x.shape[-2:])
        return self._fourier(x, K)

    def A_pinv(self, y: Tensor) -> Tensor:
        self._check_t(y, "y")
        K, keep = self.spectrum(*y.shape[-2:])
        return self._fourier(y, torch.where(keep, 1.0 / torch.where(keep, K, torch.ones_like(K)),
                                          torch.zeros_like(K)))

    def A_adjoint(self, y: Tensor) -> Tensor:
        self._check_t(y, "y")
        K, _ = self.spectrum(*y.shape[-2:])
        return self._fourier(y, K.conj())

    def filtered_pinv(self, r: Tensor, weights) -> Tensor:
        self._check_t(r, "r")
        K, keep = self.spectrum(*r.shape[-2:])
        mag = torch.where(keep, K.abs(), torch.ones_like(K.abs()))
        safe = torch.where(keep, K, torch.ones_like(K))
        mult = torch.where(keep, weights(mag).to(K.dtype) / safe, torch.zeros_like(K))
        return self._fourier(r, mult)

    def _image_shape_for(self, y: Tensor):
        return tuple(y.shape[1:])

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel.shape)}, threshold={self.threshold:g}"
