"""Recognising a state dict's architecture (ADM, DDPM, diffusers) from its keys and shapes."""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..adm import ADM_256_COND_CONFIG, ADM_256_UNCOND_CONFIG, ADMUNet
from ..ddpm import DDPM_CELEBAHQ_256_CONFIG, DDPMModel

ADM_ARCHITECTURE = "guided_diffusion.unet.UNetModel"
DDPM_ARCHITECTURE = "models.diffusion.Model"

_FORMAT_NAMES = {
    "adm": "guided-diffusion ADM UNet (UNetModel, e.g. 256x256_diffusion_uncond.pt)",
    "ddpm": "DDPM Model of DDIM/SDEdit/DDRM (models/diffusion.py, e.g. celeba_hq.ckpt)",
    "diffusers": "diffusers UNet2DModel state dict",
}
_SIGNATURES = {
    "adm": ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight"),
    "ddpm": ("temb.dense.0.weight", "conv_in.weight", "norm_out.weight", "conv_out.weight"),
    "diffusers": ("time_embedding.linear_1.weight", "conv_in.weight", "conv_out.weight"),
}


def _pattern(key: str) -> str:
    return re.sub(r"\d+", "#", key)


@functools.lru_cache(maxsize=None)
def _reference_shapes(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        if name == "adm_256_uncond":
            model = ADMUNet(**ADM_256_UNCOND_CONFIG)
        elif name == "adm_256_cond":
            model = ADMUNet(**ADM_256_COND_CONFIG)
        elif name == "ddpm_celebahq_256":
            model = DDPMModel(DDPM_CELEBAHQ_256_CONFIG)
        else:
            raise KeyError(name)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=None)
def _reference_patterns(fmt: str) -> frozenset[str]:
    if fmt == "adm":
        return frozenset(_pattern(k) for k in _reference_shapes("adm_256_cond"))
    if fmt == "ddpm":
        return frozenset(_pattern(k) for k in _reference_shapes("ddpm_celebahq_256"))
    keys = ["time_embedding.linear_#", "conv_in", "conv_norm_out", "conv_out", "class_embedding"]
    resnet = ["norm#", "conv#", "time_emb_proj", "conv_shortcut"]
    attn = ["group_norm", "to_q", "to_k", "to_v", "to_out.#", "query", "key", "value", "proj_attn"]
    for part in ("down_blocks.#", "up_blocks.#", "mid_block"):
        keys += [f"{part}.resnets.#.{r}" for r in resnet] + [f"{part}.attentions.#.{a}" for a in attn]
    keys += ["down_blocks.#.downsamplers.#.conv", "up_blocks.#.upsamplers.#.conv"]
    return frozenset(f"{k}.{s}" for k in keys for s in ("weight", "bias"))


def _closest_format(sd: Mapping[str, Tensor]) -> tuple[str, list[str], list[str]]:
    """(format, missing signature keys, unexpected keys) of the known format nearest to ``sd``."""
    pats = {_pattern(k) for k in sd}
    best, best_score = "adm", -1.0
    for fmt in ("adm", "ddpm", "diffusers"):
        ref = _reference_patterns(fmt)
        score = len(pats & ref) / max(len(pats | ref), 1) + 0.01 * sum(k in sd for k in _SIGNATURES[fmt])
        if score > best_score:
            best, best_score = fmt, score
    ref = _reference_patterns(best)
    missing = [k for k in _SIGNATURES[best] if k not in sd]
    unexpected = [k for k in sd if _pattern(k) not in ref]
    return best, missing, unexpected


def detect_format(state_dict: Mapping[str, Tensor]) -> str | None:
    """``"adm"``, ``"ddpm"`` or ``"diffusers"`` from the key names, ``None`` if none fits."""
    for fmt in ("adm", "ddpm", "diffusers"):
        if all(k in state_dict for k in _SIGNATURES[fmt]):
            return fmt
    return None


def _indices(sd: Mapping[str, Tensor], prefix: str) -> list[int]:
    found = set()
    for k in sd:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _shape_key(sd: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}
