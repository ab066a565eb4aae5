"""Gaussian data models whose ε-prediction costs nothing: initial guesses and Jacobian models.

For data x0 ~ N(μ, Σ) noised as x = √ᾱ x0 + √(1−ᾱ) ε, the exact ε-prediction is affine in x,

    ε(x) = √(1−ᾱ) (ᾱΣ + (1−ᾱ)I)⁻¹ (x − √ᾱ μ),      with Jacobian  J_ᾱ = √(1−ᾱ) (ᾱΣ + (1−ᾱ)I)⁻¹.

A real network is not affine, but near a natural image its Jacobian shrinks the frequencies the
data hardly use far more than the others. The structure-aware solver (``backends/triangular.py``)
runs the chain with such an ε as a free first guess of the trajectory, and replays each round
with the network output linearised around its last evaluation as E + γ·J_ᾱ(u − U), γ a per-row
secant scale of this model's Jacobian.

* :class:`WhiteGaussian` — Σ = var·I (one number per pixel): J is a scalar per noise level.
* :class:`PowerLawGaussian` — a stationary model: Σ diagonal in a colour basis × Fourier basis,
  with the power-law spectrum of natural images, S_c(f) = A_c (f² + f0²)^(−α/2) (f in cycles per
  pixel, so one model serves every image size). :meth:`PowerLawGaussian.fit` estimates it from
  example images; the shipped default prior carries one fitted on its training crops.

Boundaries are periodic (the FFT's): harmless for a surrogate that only has to be close.
"""
from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["GaussianSurrogate", "WhiteGaussian", "PowerLawGaussian", "as_surrogate"]


def _per_item(a: Tensor | float, like: Tensor) -> Tensor:
    """ᾱ as a tensor broadcastable against ``like`` (B, C, H, W): a scalar or one value per item."""
    a = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    if a.dim() == 0:
        return a
    if a.dim() != 1 or a.shape[0] != like.shape[0]:
        raise ValueError(f"alpha_bar must be a scalar or have shape ({like.shape[0]},), got {tuple(a.shape)}")
    return a.view(-1, *([1] * (like.dim() - 1)))


class GaussianSurrogate(ABC):
    """ε of Gaussian data: :meth:`jvp` applies J_ᾱ, :meth:`eps` the affine map (module docstring)."""

    @abstractmethod
    def jvp(self, d: Tensor, alpha_bar: Tensor | float) -> Tensor:
        """J_ᾱ d for d of shape (B, C, H, W); ``alpha_bar`` a scalar or one value per item."""

    @abstractmethod
    def mean(self, like: Tensor) -> Tensor:
        """μ, broadcastable against ``like`` (B, C, H, W)."""

    def check(self, like: Tensor) -> None:
        """Raise ValueError if the model cannot describe images shaped like ``like``."""

    def eps(self, x: Tensor, alpha_bar: Tensor | float) -> Tensor:
        """ε(x) = J_ᾱ (x − √ᾱ μ)."""
        a = _per_item(alpha_bar, x)
        return self.jvp(x - a.sqrt() * self.mean(x), alpha_bar)


class WhiteGaussian(GaussianSurrogate):
    """Every pixel N(mean, var), independent: J_ᾱ = √(1−ᾱ)/(ᾱ·var + 1 − ᾱ), a scalar."""

    def __init__(self, mean: float = 0.0, var: float = 0.25):
        mean, var = float(mean), float(var)
        if not (math.isfinite(mean) and math.isfinite(var)) or var < 0:
            raise ValueError(f"WhiteGaussian needs a finite mean and var >= 0, got mean={mean}, var={var}")
        self.mean_value, self.var = mean, var

    def slope(self, alpha_bar: Tensor) -> Tensor:
        """The scalar Jacobian for each ᾱ."""
        return (1 - alpha_bar).sqrt() / (alpha_bar * self.var + 1 - alpha_bar)

    def jvp(self, d, alpha_bar):
        return self.slope(_per_item(alpha_bar, d)) * d

    def mean(self, like):
        return torch.tensor(self.mean_value, dtype=like.dtype, device=like.device)

    def __repr__(self):
        return f"WhiteGaussian(mean={self.mean_value:g}, var={self.var:g})"


class PowerLawGaussian(GaussianSurrogate):
    """Stationary Gaussian images with a power-law spectrum per decorrelated colour channel.

    Args:
        mean: (C,) per-channel mean.
        basis: (C, C) orthonormal colour basis; row k is the k-th decorrelated channel
            (channel k of the image in that basis is Σ_c basis[k, c] · x_c).
        amplitude: (C,) A_k of S_k(f) = A_k (f² + cutoff²)^(−exponent/2).
        exponent: α (natural images: about 2).
        cutoff: f0 in cycles per pixel (keeps the spectrum finite at f = 0).
    """

    def __init__(self, mean, basis, amplitude, exponent: float, cutoff: float):
        self.mean_value = torch.as_tensor(mean, dtype=torch.float64).flatten()
        self.basis = torch.as_tensor(basis, dtype=torch.float64)
        self.amplitude = torch.as_tensor(amplitude, dtype=torch.float64).flatten()
        self.exponent, self.cutoff = float(exponent), float(cutoff)
        c = self.mean_value.numel()
        if self.basis.shape != (c, c) or self.amplitude.shape != (c,):
            raise ValueError(f"mean (C,), basis (C, C) and amplitude (C,) must agree; got "
                             f"{tuple(self.mean_value.shape)}, {tuple(self.basis.shape)}, "
                             f"{tuple(self.amplitude.shape)}")
        finite = all(bool(torch.isfinite(t).all()) for t in (self.mean_value, self.basis, self.amplitude))
        if not finite or not math.isfinite(self.exponent) or not self.cutoff > 0 \
                or bool((self.amplitude <= 0).any()):
            raise ValueError("PowerLawGaussian needs finite parameters, amplitude > 0 and cutoff > 0")
        if not torch.allclose(self.basis @ self.basis.T, torch.eye(c, dtype=torch.float64), atol=1e-6):
            raise ValueError("basis must be orthonormal (basis @ basis.T = I)")
        self._cache: dict = {}

    @property
    def channels(self) -> int:
        return self.mean_value.numel()

    def spectrum(self, height: int, width: int, dtype=torch.float64, device=None) -> Tensor:
        """S_k on the FFT grid of an H×W image: shape (C, H, W), variance per pixel and frequency."""
        key = (height, width, dtype, device)
        if key not in self._cache:
            fy = torch.fft.fftfreq(height, dtype=torch.float64).view(-1, 1)
            fx = torch.fft.fftfreq(width, dtype=torch.float64).view(1, -1)
            shape = (fy ** 2 + fx ** 2 + self.cutoff ** 2) ** (-self.exponent / 2)
            self._cache[key] = (self.amplitude.view(-1, 1, 1) * shape).to(dtype=dtype, device=device)
        return self._cache[key]

    def check(self, d: Tensor) -> None:
        if d.dim() != 4 or d.shape[1] != self.channels:
            raise ValueError(f"this surrogate models {self.channels}-channel images (B, C, H, W); "
                             f"got shape {tuple(d.shape)}")

    def _gain(self, a: Tensor, height: int, width: int, dtype, device) -> Tensor:
        """√(1−ᾱ)/(ᾱS + 1 − ᾱ) on the rfft2 grid (the half spectrum), per colour channel."""
        s = self.spectrum(height, width, dtype, device)[..., : width // 2 + 1]
        return (1 - a).sqrt() / (a * s + 1 - a)

    def jvp(self, d, alpha_bar):
        self.check(d)
        h, w = d.shape[-2:]
        if isinstance(alpha_bar, (int, float)) or torch.as_tensor(alpha_bar).dim() == 0:
            # One noise level for the whole batch (the solver's replay): cache the filter.
            key = ("gain", float(alpha_bar), h, w, d.dtype, d.device)
            if key not in self._cache:
                if len(self._cache) > 512:     # bounded: one filter per noise level and size in use
                    self._cache.clear()
                self._cache[key] = self._gain(torch.tensor(float(alpha_bar), dtype=torch.float64), h, w,
                                              torch.float64, None).to(dtype=d.dtype, device=d.device)
            gain = self._cache[key]
        else:
            gain = self._gain(_per_item(alpha_bar, d), h, w, d.dtype, d.device)
        key = ("basis", d.dtype, d.device)
        if key not in self._cache:
            self._cache[key] = self.basis.to(dtype=d.dtype, device=d.device)
        basis = self._cache[key]
        spec = torch.fft.rfft2(torch.einsum("kc,bchw->bkhw", basis, d))
        filtered = torch.fft.irfft2(spec * gain, s=(h, w))
        return torch.einsum("kc,bkhw->bchw", basis, filtered)

    def mean(self, like):
        self.check(like)
        return self.mean_value.to(like.dtype).to(like.device).view(1, -1, 1, 1)

    # --- estimation and files --------------------------------------------------------------------
    @classmethod
    def fit(cls, images: Tensor) -> "PowerLawGaussian":
        """Fit to example images (N, C, H, W): channel means, colour PCA, and per PCA channel a
        power law fitted to the periodogram by least squares in log–log (frequencies weighted so
        that every octave counts alike); α and f0 are shared by the channels."""
        if images.dim() != 4 or images.shape[0] < 1 or images.shape[-1] < 4 or images.shape[-2] < 4:
            raise ValueError(f"images must have shape (N, C, H, W) with H, W >= 4, got {tuple(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images contain NaN or Inf")
        x = images.to(torch.float64)
        n, c, h, w = x.shape
        mean = x.mean((0, 2, 3))
        centred = x - mean.view(1, -1, 1, 1)
        cov = torch.einsum("nchw,ndhw->cd", centred, centred) / (n * h * w)
        _, vectors = torch.linalg.eigh(cov)
        basis = vectors.T.flip(0).contiguous()                        # largest variance first
        rotated = torch.einsum("kc,nchw->nkhw", basis, centred)
        periodogram = (torch.fft.fft2(rotated).abs() ** 2).mean(0) / (h * w)   # (C, H, W)
        fy = torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1)
        fx = torch.fft.fftfreq(w, dtype=torch.float64).view(1, -1)
        f2 = (fy ** 2 + fx ** 2).expand(h, w)
        keep = f2 > 0
        weight = 1.0 / f2[keep]                                      # equal weight per octave in 2-D
        weight = weight / weight.sum()
        log_s = periodogram.clamp_min(1e-20).log()[:, keep]
        best = None
        for cutoff in torch.logspace(-3, -0.7, 24, dtype=torch.float64).tolist():
            log_f = (f2[keep] + cutoff ** 2).log()
            for exponent in torch.linspace(0.5, 4.0, 36, dtype=torch.float64).tolist():
                offset = log_s + exponent / 2 * log_f               # log A_k per frequency
                log_a = (offset * weight).sum(1)
                loss = float((((offset - log_a[:, None]) ** 2) * weight).sum())
                if best is None or loss < best[0]:
                    best = (loss, cutoff, exponent, log_a)
        _, cutoff, exponent, log_a = best
        return cls(mean, basis, log_a.exp(), exponent, cutoff)

    def to_dict(self) -> dict:
        return dict(kind="power_law_gaussian", mean=self.mean_value.tolist(), basis=self.basis.tolist(),
                    amplitude=self.amplitude.tolist(), exponent=self.exponent, cutoff=self.cutoff)

    @classmethod
    def from_dict(cls, data: dict) -> "PowerLawGaussian":
        if not isinstance(data, dict) or data.get("kind") != "power_law_gaussian":
            raise ValueError("not a power-law Gaussian surrogate (expected kind 'power_law_gaussian')")
        try:
            return cls(data["mean"], data["basis"], data["amplitude"], data["exponent"], data["cutoff"])
        except KeyError as missing:
            raise ValueError(f"power-law Gaussian surrogate is missing the field {missing}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the parameters as JSON (atomically)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PowerLawGaussian":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read a surrogate from {path}: {err}") from err
        return cls.from_dict(data)

    def __repr__(self):
        return (f"PowerLawGaussian(channels={self.channels}, exponent={self.exponent:.2f}, "
                f"cutoff={self.cutoff:.3g}, amplitude={[round(v, 8) for v in self.amplitude.tolist()]})")


def as_surrogate(value) -> GaussianSurrogate:
    """A :class:`GaussianSurrogate` from itself or a (mean, var) pair (a white model)."""
    if isinstance(value, GaussianSurrogate):
        return value
    try:
        mean, var = value
    except (TypeError, ValueError):
        raise TypeError(f"surrogate must be a GaussianSurrogate or a (mean, var) pair, got {value!r}") from None
    return WhiteGaussian(mean, var)
