"""The DDPM UNet ``Model`` of the DDIM / SDEdit / DDRM / DDNM code bases (``models/diffusion.py``).

An independent implementation, written from the layout and forward specification in
``tests/fixtures/checkpoints/README.md``: its state dict has the key names and shapes of the
released ``celeba_hq.ckpt`` (and the DDIM CIFAR-10 / CelebA / LSUN checkpoints, which share the
architecture), so those load with ``load_state_dict(strict=True)``, and its forward pass matches the
reference implementation to float32 rounding.

The constructor takes the nested ``config`` of the layout files (``config.model.*``,
``config.data.*``, ``config.diffusion.*``), either as one mapping / namespace or as keyword
sections: ``DDPMModel(layout["config"])`` and ``DDPMModel(**layout["config"])`` are the same.
GroupNorm statistics and the attention softmax are computed in float32 whatever the parameter
dtype, so the model can be cast to float16 / bfloat16.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DDPMModel", "ddpm_timestep_embedding", "DDPM_CELEBAHQ_256_CONFIG"]

#: Configuration of ``celeba_hq.ckpt`` (DDNM / SDEdit / DDRM).
DDPM_CELEBAHQ_256_CONFIG: dict = {
    "model": {"type": "simple", "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 1, 2, 2, 4, 4],
              "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0, "var_type": "fixedsmall",
              "ema_rate": 0.999, "ema": True, "resamp_with_conv": True},
    "data": {"dataset": "CelebA_HQ", "image_size": 256, "channels": 3},
    "diffusion": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                  "num_diffusion_timesteps": 1000},
}


def ddpm_timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of DDPM: ``[sin(t·f_i), cos(t·f_i)]``, ``f_i = 10000^(−i/(half−1))``."""
    half = dim // 2
    if half < 2:
        raise ValueError(f"the DDPM timestep embedding needs ch >= 4, got {dim}")
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000) / (half - 1)))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class _Norm(nn.GroupNorm):
    """GroupNorm(32, eps 1e-6), computed in float32 and cast back."""

    def __init__(self, channels: int):
        super().__init__(32, channels, eps=1e-6, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class _Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class _Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))   # asymmetric: right and bottom only
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class _ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _Norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _Norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb)).to(h.dtype)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class _AttnBlock(nn.Module):
    """Single-head self-attention with 1×1 Conv2d ``q``, ``k``, ``v``, ``proj_out``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _Norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(b, 1, c, hh * ww).transpose(-1, -2) for m in (self.q, self.k, self.v))
        if q.dtype in (torch.float32, torch.float64) or q.is_cuda:
            a = F.scaled_dot_product_attention(q, k, v)
        else:   # explicit form with a float32 softmax
            logits = (q @ k.transpose(-1, -2)) * c ** -0.5
            a = torch.softmax(logits.float(), dim=-1).to(q.dtype) @ v
        a = a.transpose(-1, -2).reshape(b, c, hh, ww)
        return x + self.proj_out(a)


def _section(config: Any, name: str) -> Any:
    sec = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
    if sec is None:
        raise ValueError(f"the DDPM config has no '{name}' section")
    return sec


def _get(section: Any, key: str, default: Any = ...) -> Any:
    if isinstance(section, Mapping):
        if key in section:
            return section[key]
    elif hasattr(section, key):
        return getattr(section, key)
    if default is ...:
        raise ValueError(f"the DDPM config lacks '{key}'")
    return default


class DDPMModel(nn.Module):
    """The DDPM ε-network: ``model(x, t) -> (N, out_ch, image_size, image_size)``.

    Args:
        config: mapping or namespace with sections ``model`` (``type``, ``in_channels``, ``out_ch``,
            ``ch``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions`` (pixel resolutions),
            ``dropout``, ``resamp_with_conv``), ``data`` (``image_size``) and ``diffusion``
            (``num_diffusion_timesteps``, read only for ``type="bayesian"``, which adds a ``logvar``
            parameter). Other entries (``var_type``, ``ema``, the β schedule, …) are ignored.
        model, data, diffusion: the same sections given as keywords.
    """

    def __init__(self, config: Any = None, *, model: Any = None, data: Any = None, diffusion: Any = None):
        super().__init__()
        if config is None:
            config = {"model": model, "data": data, "diffusion": diffusion or {}}
        elif model is not None or data is not None or diffusion is not None:
            raise TypeError("pass either config or the model/data/diffusion sections, not both")
        m, d = _section(config, "model"), _section(config, "data")
        self.type = str(_get(m, "type", "simple"))
        ch, out_ch = int(_get(m, "ch")), int(_get(m, "out_ch"))
        ch_mult = tuple(int(c) for c in _get(m, "ch_mult"))
        num_res_blocks = int(_get(m, "num_res_blocks"))
        attn_resolutions = {int(r) for r in _get(m, "attn_resolutions")}
        dropout = float(_get(m, "dropout", 0.0))
        in_channels = int(_get(m, "in_channels"))
        resamp_with_conv = bool(_get(m, "resamp_with_conv", True))
        resolution = int(_get(d, "image_size"))

        if self.type == "bayesian":
            steps = int(_get(_section(config, "diffusion"), "num_diffusion_timesteps"))
            self.logvar = nn.Parameter(torch.zeros(steps))
        elif self.type != "simple":
            raise ValueError(f"unknown DDPM model type {self.type!r} (expected 'simple' or 'bayesian')")

        self.ch, self.temb_ch = ch, 4 * ch
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.resolution, self.in_channels, self.out_ch = resolution, in_channels, out_ch

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        res = resolution
        in_mult = (1,) + ch_mult
        self.down = nn.ModuleList()
        block_in = ch
        for level in range(self.num_resolutions):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[level], ch * ch_mult[level]
            for _ in range(num_res_blocks):
                stage.block.append(_ResnetBlock(block_in, block_out, self.temb_ch, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    stage.attn.append(_AttnBlock(block_in))
            if level != self.num_resolutions - 1:
                stage.downsample = _Downsample(block_in, resamp_with_conv)
                res //= 2
            self.down.append(stage)

        self.mid = nn.Module()
        self.mid.block_1 = _ResnetBlock(block_in, block_in, self.temb_ch, dropout)
        self.mid.attn_1 = _AttnBlock(block_in)
        self.mid.block_2 = _ResnetBlock(block_in, block_in, self.temb_ch, dropout)

        ups = []
        for level in reversed(range(self.num_resolutions)):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for i in range(num_res_blocks + 1):
                skip_in = ch * (ch_mult[level] if i < num_res_blocks else in_mult[level])
                stage.block.append(_ResnetBlock(block_in + skip_in, block_out, self.temb_ch, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    stage.attn.append(_AttnBlock(block_in))
            if level != 0:
                stage.upsample = _Upsample(block_in, resamp_with_conv)
                res *= 2
            ups.insert(0, stage)
        self.up = nn.ModuleList(ups)   # indexed by resolution level: up.0 is full resolution

        self.norm_out = _Norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] != self.resolution or x.shape[3] != self.resolution:
            raise ValueError(f"this DDPM model needs H == W == image_size = {self.resolution}, "
                             f"got {x.shape[2]}x{x.shape[3]}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        dense0, dense1 = self.temb.dense
        temb = ddpm_timestep_embedding(t, self.ch).to(dense0.weight.dtype)
        temb = dense1(F.silu(dense0(temb)))

        hs = [self.conv_in(x.to(self.conv_in.weight.dtype))]
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage.block):
                h = block(hs[-1], temb)
                if len(stage.attn):
                    h = stage.attn[i](h)
                hs.append(h)
            if level != self.num_resolutions - 1:
                hs.append(stage.downsample(hs[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)

        for level in reversed(range(self.num_resolutions)):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def namespace(config: Mapping) -> SimpleNamespace:
    """Nested mapping → nested namespace (the form the original code reads)."""
    return SimpleNamespace(**{k: namespace(v) if isinstance(v, Mapping) else v for k, v in config.items()})
