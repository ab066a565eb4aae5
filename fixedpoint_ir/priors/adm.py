"""The ADM UNet of guided-diffusion ("Diffusion Models Beat GANs", Dhariwal & Nichol 2021).

An independent implementation, written from the layout and forward specification in
``tests/fixtures/checkpoints/README.md``: the module tree reproduces the key names and shapes of the
released ``256x256_diffusion_uncond.pt`` / ``256x256_diffusion.pt`` state dicts, so those files load
with ``load_state_dict(strict=True)`` and no key rewriting, and the forward pass matches the
reference implementation to float32 rounding.

The constructor takes exactly the ``config`` entries of the fixture layout files (the constructor
arguments of guided-diffusion's ``UNetModel``). :func:`adm_config_from_flags` converts the
``MODEL_FLAGS`` of the guided-diffusion scripts (pixel attention resolutions, ``channel_mult`` as a
string) into such a config.

Precision: GroupNorm statistics and the attention softmax are computed in float32 whatever the
parameter dtype, so the network can be cast to float16 / bfloat16 with ``.to(dtype)``. The legacy
``use_fp16=True`` mode (float32 model whose convolutions in the UNet torso are float16) is also
reproduced.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ADMUNet",
    "adm_config_from_flags",
    "adm_timestep_embedding",
    "ADM_256_UNCOND_CONFIG",
    "ADM_256_COND_CONFIG",
    "ADM_DEFAULT_CHANNEL_MULT",
]

#: ``channel_mult`` that guided-diffusion's ``create_model`` picks when the flag is ``""``.
ADM_DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}

#: Configuration of ``256x256_diffusion_uncond.pt`` (ImageNet 256, unconditional, learned σ).
ADM_256_UNCOND_CONFIG: dict = {
    "image_size": 256, "in_channels": 3, "model_channels": 256, "out_channels": 6,
    "num_res_blocks": 2, "attention_resolutions": (8, 16, 32), "dropout": 0.0,
    "channel_mult": (1, 1, 2, 2, 4, 4), "conv_resample": True, "dims": 2, "num_classes": None,
    "use_checkpoint": False, "use_fp16": False, "num_heads": 4, "num_head_channels": 64,
    "num_heads_upsample": -1, "use_scale_shift_norm": True, "resblock_updown": True,
    "use_new_attention_order": False,
}

#: Configuration of ``256x256_diffusion.pt`` (ImageNet 256, 1000 classes, learned σ).
ADM_256_COND_CONFIG: dict = {**ADM_256_UNCOND_CONFIG, "num_classes": 1000}


def adm_timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of ADM: ``[cos(t·f_i), sin(t·f_i)]`` with ``f_i = max_period^(−i/half)``.

    Computed in float32 (as the original) from integer- or float-valued ``t`` of shape (N,).
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(max_period) / half)
    args = t.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics and affine map are computed in float32, then cast back."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels, eps=1e-5)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


def _attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ / √d) v for (B, heads, T, d) tensors, softmax in float32.

    Uses the fused kernel when it keeps the float32 softmax (float32/float64 everywhere, any dtype
    on CUDA whose fused kernels accumulate in float32); otherwise the explicit reference form:
    q and k each scaled by d^(−1/4), logits in the working dtype, softmax in float32.
    """
    if q.dtype in (torch.float32, torch.float64) or q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v)
    scale = q.shape[-1] ** -0.25
    logits = (q * scale) @ (k * scale).transpose(-1, -2)
    weights = torch.softmax(logits.float(), dim=-1).to(q.dtype)
    return weights @ v


class _TimestepBlock(nn.Module):
    """Marker: a block whose forward takes the embedding as a second argument."""


class _EmbedSequential(nn.Sequential):
    """A Sequential that passes the timestep embedding to the blocks that take one."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _TimestepBlock) else layer(x)
        return x


class _Upsample(nn.Module):
    """Nearest ×2, then (optionally) a 3×3 conv registered as ``conv``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.conv = None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class _Downsample(nn.Module):
    """A stride-2 3×3 conv registered as ``op``, or 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class _ResBlock(_TimestepBlock):
    """ADM residual block with optional up/down resampling and scale-shift conditioning."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = _Upsample(channels, False), _Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = _Downsample(channels, False), _Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class _AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions, ``qkv`` / ``proj_out`` as Conv1d layers."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        if num_head_channels == -1:
            heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels="
                                 f"{num_head_channels}")
            heads = channels // num_head_channels
        if heads < 1 or channels % heads:
            raise ValueError(f"{channels} channels cannot be split into {heads} heads")
        self.num_heads = heads
        self.new_order = use_new_attention_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        n = x.shape[-1]
        qkv = self.qkv(self.norm(x))
        heads, d = self.num_heads, c // self.num_heads
        if self.new_order:   # q, k, v split first, then heads
            q, k, v = (z.reshape(b, heads, d, n) for z in qkv.chunk(3, dim=1))
        else:                # legacy: per head, [q_h, k_h, v_h]
            q, k, v = qkv.reshape(b, heads, 3 * d, n).split(d, dim=2)
        a = _attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))   # (b, h, n, d)
        a = a.transpose(-1, -2).reshape(b, c, n)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


def _as_ints(values, name: str) -> tuple[int, ...]:
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of ints, got {values!r}") from None


class ADMUNet(nn.Module):
    """guided-diffusion's ``UNetModel``: ``model(x, t, y=None) -> (N, out_channels, H, W)``.

    Args (the ``config`` of the layout files):
        image_size: resolution the model was trained at (only recorded; the network is fully
            convolutional, the attention placement depends on downsample factors).
        in_channels, model_channels, out_channels: image channels, base width, output channels
            (``2 * in_channels`` for learned-σ models: ε first).
        num_res_blocks: ResBlocks per level.
        attention_resolutions: downsample factors (1, 2, 4, …) at which attention follows a ResBlock.
        dropout: dropout in ResBlocks (inactive in eval mode).
        channel_mult: width multiplier per level (``()`` / ``""``: guided-diffusion's default for
            ``image_size``).
        conv_resample: learned 3×3 convs for plain up/down sampling (unused with ``resblock_updown``).
        dims: must be 2 (images).
        num_classes: number of class labels of a class-conditional model, else ``None``.
        use_checkpoint: gradient checkpointing of the blocks during training backward passes.
        use_fp16: guided-diffusion's mixed mode: torso convolutions in float16.
        num_heads, num_head_channels, num_heads_upsample: attention heads (a fixed head width when
            ``num_head_channels != -1``; ``num_heads_upsample == -1`` means ``num_heads``).
        use_scale_shift_norm: FiLM-style ``GN(h)·(1+scale)+shift`` conditioning.
        resblock_updown: resample with up/down ResBlocks instead of plain layers.
        use_new_attention_order: split q/k/v before heads (not the layout of the public files).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] | str = (1, 2, 4, 8), conv_resample: bool = True,
                 dims: int = 2, num_classes: int | None = None, use_checkpoint: bool = False,
                 use_fp16: bool = False, num_heads: int = 1, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False):
        super().__init__()
        if dims != 2:
            raise ValueError(f"only dims=2 (images) is supported, got dims={dims}")
        if isinstance(channel_mult, str):
            channel_mult = tuple(float(v) for v in channel_mult.split(",") if v.strip())
        channel_mult = tuple(channel_mult)
        if not channel_mult:
            if int(image_size) not in ADM_DEFAULT_CHANNEL_MULT:
                raise ValueError(f"no default channel_mult for image_size={image_size}; pass one")
            channel_mult = ADM_DEFAULT_CHANNEL_MULT[int(image_size)]
        if num_classes is not None and int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        attention_resolutions = set(_as_ints(attention_resolutions, "attention_resolutions"))

        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.model_channels = mc = int(model_channels)
        self.out_channels = int(out_channels)
        self.num_res_blocks = int(num_res_blocks)
        self.attention_resolutions = tuple(sorted(attention_resolutions))
        self.channel_mult = channel_mult
        self.num_classes = None if num_classes is None else int(num_classes)
        self.use_checkpoint = bool(use_checkpoint)
        self.use_fp16 = bool(use_fp16)

        emb_ch = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if self.num_classes is not None:
            self.label_emb = nn.Embedding(self.num_classes, emb_ch)

        def res(ch_in, ch_out, **kw):
            return _ResBlock(ch_in, emb_ch, dropout, ch_out, use_scale_shift_norm=use_scale_shift_norm, **kw)

        def attn(ch, heads):
            return _AttentionBlock(ch, heads, num_head_channels, use_new_attention_order)

        ch = int(channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([_EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(_EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else _Downsample(ch, conv_resample)
                self.input_blocks.append(_EmbedSequential(down))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = _EmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else _Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(_EmbedSequential(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1)))
        if self.use_fp16:
            self.convert_to_fp16()

    # -- precision ---------------------------------------------------------------------------------
    def convert_to_fp16(self) -> None:
        """guided-diffusion's mixed mode: torso convolution weights to float16, the rest float32."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.to(torch.float16)

    @property
    def torso_dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    # -- forward -----------------------------------------------------------------------------------
    def _check_labels(self, y: Tensor | None, n: int) -> Tensor | None:
        if self.num_classes is None:
            if y is not None:
                raise ValueError("this ADM model is unconditional; do not pass class labels y")
            return None
        if y is None:
            raise ValueError(f"this ADM model is class-conditional ({self.num_classes} classes); "
                             "pass class labels y (int64 tensor of shape (N,))")
        y = torch.as_tensor(y)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"class labels must be integers, got dtype {y.dtype}")
        if y.dim() == 0:
            y = y.expand(n)
        if y.shape != (n,):
            raise ValueError(f"class labels must have shape ({n},), got {tuple(y.shape)}")
        if n and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"class labels must lie in [0, {self.num_classes}), got values in "
                             f"[{int(y.min())}, {int(y.max())}]")
        return y.to(torch.long)

    def _run(self, block: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        y = self._check_labels(y, x.shape[0])
        emb_dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(adm_timestep_embedding(t, self.model_channels).to(emb_dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(x.device)).to(emb.dtype)

        h = x.to(self.torso_dtype)
        skips = []
        for block in self.input_blocks:
            h = self._run(block, h, emb)
            skips.append(h)
        h = self._run(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(self.out[2].weight.dtype))


def adm_config_from_flags(image_size: int, num_channels: int = 128, num_res_blocks: int = 2,
                          channel_mult: str | Sequence[float] = "", learn_sigma: bool = False,
                          class_cond: bool = False, use_checkpoint: bool = False,
                          attention_resolutions: str | Sequence[int] = "16,8", num_heads: int = 1,
                          num_head_channels: int = -1, num_heads_upsample: int = -1,
                          use_scale_shift_norm: bool = False, dropout: float = 0.0,
                          resblock_updown: bool = False, use_fp16: bool = False,
                          use_new_attention_order: bool = False, in_channels: int = 3,
                          num_classes: int = 1000, **ignored) -> dict:
    """The :class:`ADMUNet` config for guided-diffusion script flags (``MODEL_FLAGS``).

    ``attention_resolutions`` are pixel resolutions here (``"32,16,8"``) and become downsample
    factors; ``channel_mult=""`` picks the per-image-size default. Diffusion flags (``diffusion_steps``,
    ``noise_schedule``, …) are ignored.
    """
    if isinstance(channel_mult, str):
        mult = tuple(float(v) if "." in v else int(v) for v in channel_mult.split(",") if v.strip())
    else:
        mult = tuple(channel_mult)
    if not mult:
        if int(image_size) not in ADM_DEFAULT_CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size={image_size}")
        mult = ADM_DEFAULT_CHANNEL_MULT[int(image_size)]
    return {
        "image_size": int(image_size), "in_channels": int(in_channels), "model_channels": int(num_channels),
        "out_channels": (2 if learn_sigma else 1) * int(in_channels), "num_res_blocks": int(num_res_blocks),
        "attention_resolutions": tuple(int(image_size) // r for r in _as_ints(attention_resolutions,
                                                                               "attention_resolutions")),
        "dropout": float(dropout), "channel_mult": mult, "conv_resample": True, "dims": 2,
        "num_classes": int(num_classes) if class_cond else None, "use_checkpoint": bool(use_checkpoint),
        "use_fp16": bool(use_fp16), "num_heads": int(num_heads), "num_head_channels": int(num_head_channels),
        "num_heads_upsample": int(num_heads_upsample), "use_scale_shift_norm": bool(use_scale_shift_norm),
        "resblock_updown": bool(resblock_updown), "use_new_attention_order": bool(use_new_attention_order),
    }
