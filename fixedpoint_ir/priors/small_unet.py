"""SmallUNet: the small, fully convolutional ε-network of the shipped default prior.

A DDPM/ADM-style U-Net cut down to run on a CPU: three resolution levels, one residual block per
level on the way down and on the way up (plus one more in the attention-free middle), GroupNorm +
SiLU, and the timestep injected into every residual block as a per-channel scale and shift
(ADM's ``use_scale_shift_norm``). No attention anywhere, so the cost is linear in the number of
pixels and the network runs at any image size: inputs are reflect-padded to a multiple of
2^(levels−1) and the output is cropped back.

The constructor arguments are kept in :attr:`SmallUNet.config` (a JSON-able dict) and saved in
the safetensors metadata by :func:`save_small_unet`, so that :func:`load_small_unet` can rebuild
the exact network before a strict state-dict load.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SmallUNet",
    "timestep_embedding",
    "save_small_unet",
    "load_small_unet",
    "read_metadata",
    "FORMAT_NAME",
]

#: Value of the ``format`` key in the safetensors metadata written by :func:`save_small_unet`.
FORMAT_NAME = "fixedpoint_ir.SmallUNet/1"


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (integer) timesteps, shape (N,) -> (N, dim), as in DDPM / ADM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


def _groups(channels: int, max_groups: int) -> int:
    g = min(max_groups, channels)
    while channels % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    """GN → SiLU → conv3×3 → GN·(1+scale)+shift from t → SiLU → dropout → conv3×3 (zero-init) + skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch, groups), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch, groups), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SmallUNet(nn.Module):
    """A small attention-free U-Net ε-network ``forward(x, t) -> ε`` (same shape as x).

    Args:
        in_channels, out_channels: image channels (3 for RGB).
        base_channels: width of the first level.
        channel_mults: width multiplier per resolution level; ``len(channel_mults)`` levels, i.e.
            ``len − 1`` halvings of the resolution.
        num_res_blocks: residual blocks per level on the way down (the way up has one more, as in
            ADM, to merge the skip connections).
        middle: one extra residual block at the lowest resolution.
        groups: largest GroupNorm group count (reduced to a divisor of the channel count).
        dropout: dropout inside the residual blocks (training only).

    The defaults (32 channels, multipliers 1, 2, 4: 32/64/128 channels at full, half and quarter
    resolution) give 2.26 M parameters.

    Any H, W works: the input is reflect-padded (replicate when the image is too small to reflect)
    up to a multiple of :attr:`multiple` = 2^(levels−1) and the output is cropped back.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 4), num_res_blocks: int = 1,
                 middle: bool = True, groups: int = 16, dropout: float = 0.0):
        super().__init__()
        channel_mults = tuple(int(m) for m in channel_mults)
        if not channel_mults or min(channel_mults) < 1:
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got {channel_mults}")
        if base_channels < 1 or num_res_blocks < 1:
            raise ValueError("base_channels and num_res_blocks must be positive")
        self.config: dict[str, Any] = dict(
            in_channels=int(in_channels), out_channels=int(out_channels),
            base_channels=int(base_channels), channel_mults=list(channel_mults),
            num_res_blocks=int(num_res_blocks), middle=bool(middle), groups=int(groups),
            dropout=float(dropout),
        )
        self.multiple = 2 ** (len(channel_mults) - 1)
        ch = base_channels
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_chs = [ch]
        for level, mult in enumerate(channel_mults):
            out = base_channels * mult
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, out, emb_dim, groups, dropout))
                ch = out
                skip_chs.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)

        self.mid = ResBlock(ch, ch, emb_dim, groups, dropout) if middle else None

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            out = base_channels * mult
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + skip_chs.pop(), out, emb_dim, groups, dropout))
                ch = out
            if level > 0:
                self.up.append(Upsample(ch))

        self.norm_out = nn.GroupNorm(_groups(ch, groups), ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _pad(self, x: Tensor) -> tuple[Tensor, int, int]:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x, h, w

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config["base_channels"]).to(x.dtype))
        x, h, w = self._pad(x)
        if x.device.type == "cpu":
            # oneDNN convolutions are ~20 % faster in NHWC on CPU; the result is the same.
            x = x.contiguous(memory_format=torch.channels_last)
        hs = [self.conv_in(x)]
        for layer in self.down:
            hs.append(layer(hs[-1], emb) if isinstance(layer, ResBlock) else layer(hs[-1]))
        out = hs[-1]
        if self.mid is not None:
            out = self.mid(out, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                out = layer(torch.cat([out, hs.pop()], dim=1), emb)
            else:
                out = layer(out)
        out = self.conv_out(F.silu(self.norm_out(out)))
        return out[..., :h, :w].contiguous()


# --------------------------------------------------------------------------------------------------
# (De)serialisation: safetensors with the config in the metadata.

def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _umask_mode())   # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_small_unet(model: SmallUNet, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``model``'s weights to ``path`` (safetensors, atomically: temp file + rename).

    The metadata holds ``format``, ``config`` (JSON of :attr:`SmallUNet.config`) and every entry of
    ``metadata`` (non-string values are JSON-encoded).
    """
    from safetensors.torch import save

    meta = {"format": FORMAT_NAME, "config": json.dumps(model.config, sort_keys=True)}
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _atomic_write_bytes(Path(path), save(tensors, metadata=meta))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors metadata (string → string) of a weights file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_small_unet(path: str | os.PathLike, device: str | torch.device | None = None
                    ) -> tuple[SmallUNet, dict[str, str]]:
    """Rebuild a :class:`SmallUNet` from a file written by :func:`save_small_unet`.

    The network is built from the ``config`` in the metadata and loaded strictly (every tensor
    must match, none may be missing or extra). Returns ``(model, metadata)``; the model is in
    eval mode on ``device`` (default CPU).
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT_NAME or "config" not in meta:
        raise ValueError(f"{path} is not a SmallUNet weights file (metadata format "
                         f"{meta.get('format')!r}, expected {FORMAT_NAME!r} with a 'config' entry)")
    model = SmallUNet(**json.loads(meta["config"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval()
    if device is not None:
        model.to(device)
    return model, meta
