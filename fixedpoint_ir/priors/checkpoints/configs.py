"""Architecture configurations inferred from tensor shapes, keyword overrides, β schedules, and
building the network on the meta device before adopting the stored tensors."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ...schedule import linear_betas
from ..adm import ADM_256_COND_CONFIG, ADM_256_UNCOND_CONFIG, ADM_DEFAULT_CHANNEL_MULT, ADMUNet
from ..ddpm import DDPM_CELEBAHQ_256_CONFIG, DDPMModel
from .formats import _FORMAT_NAMES, _indices, _reference_shapes, _shape_key
from .reading import CheckpointError

def infer_adm_config(state_dict: Mapping[str, Tensor]) -> dict:
    """The :class:`ADMUNet` config of an ADM state dict, read from its keys and shapes.

    The public 256×256 checkpoints are recognised exactly. Otherwise the widths, ``channel_mult``,
    ``num_res_blocks``, attention levels, resampling kind, scale-shift norm and number of classes
    come from the shapes; what shapes cannot tell takes guided-diffusion's values: 64 channels per
    attention head (``num_head_channels``; 4 heads when a width is not a multiple of 64), the legacy
    QKV order, and ``image_size`` from the default ``channel_mult`` table (else 256). Override those
    through :func:`load_prior`'s keyword arguments when a model differs.
    """
    sd = state_dict
    shapes = _shape_key(sd)
    if shapes == _reference_shapes("adm_256_uncond"):
        return dict(ADM_256_UNCOND_CONFIG)
    if shapes == _reference_shapes("adm_256_cond"):
        return dict(ADM_256_COND_CONFIG)
    mc = int(sd["time_embed.0.weight"].shape[1])
    n_out = len(_indices(sd, "output_blocks."))
    if n_out == 0:
        raise ValueError("no output_blocks: not a UNetModel (an ADM classifier / encoder?)")
    ups, updown = [], False
    for k in _indices(sd, "output_blocks."):
        for s in _indices(sd, f"output_blocks.{k}."):
            if s >= 1 and f"output_blocks.{k}.{s}.in_layers.0.weight" in sd:
                ups.append(k)
                updown = True
            elif s >= 1 and f"output_blocks.{k}.{s}.conv.weight" in sd:
                ups.append(k)
    conv_resample = True
    if ups:
        nrb = ups[0]
    else:
        n_in = max(_indices(sd, "input_blocks.")) + 1
        downs = [i for i in range(1, n_in) if f"input_blocks.{i}.0.in_layers.0.weight" not in sd]
        if downs:
            nrb = downs[0] - 1
            conv_resample = f"input_blocks.{downs[0]}.0.op.weight" in sd
        else:
            nrb = n_out - 1
    if n_out % (nrb + 1):
        raise ValueError(f"{n_out} output blocks do not split into levels of {nrb + 1}")
    levels = n_out // (nrb + 1)
    mult, attn = [], []
    for level in range(levels):
        idx = 1 + level * (nrb + 1)
        key = f"input_blocks.{idx}.0.out_layers.3.weight"
        if key not in sd:
            raise ValueError(f"missing {key}")
        width = int(sd[key].shape[0])
        mult.append(width // mc if width % mc == 0 else width / mc)
        if f"input_blocks.{idx}.1.qkv.weight" in sd:
            attn.append(2 ** level)
    mid = int(sd["middle_block.0.out_layers.3.weight"].shape[0])
    scale_shift = int(sd["middle_block.0.emb_layers.1.weight"].shape[0]) == 2 * mid
    widths = {int(v.shape[1]) for k, v in sd.items() if k.endswith(".qkv.weight")}
    head_ch = 64 if all(w % 64 == 0 for w in widths) else -1
    mult_t = tuple(mult)
    known = {**{tuple(m): s for s, m in ADM_DEFAULT_CHANNEL_MULT.items()}, (1, 2, 2, 2): 32}  # + improved-diffusion
    image_size = known.get(mult_t, 256)
    return {
        "image_size": image_size, "in_channels": int(sd["input_blocks.0.0.weight"].shape[1]),
        "model_channels": mc, "out_channels": int(sd["out.2.weight"].shape[0]), "num_res_blocks": nrb,
        "attention_resolutions": tuple(attn), "dropout": 0.0, "channel_mult": mult_t,
        "conv_resample": conv_resample, "dims": 2,
        "num_classes": int(sd["label_emb.weight"].shape[0]) if "label_emb.weight" in sd else None,
        "use_checkpoint": False, "use_fp16": False, "num_heads": 4, "num_head_channels": head_ch,
        "num_heads_upsample": -1, "use_scale_shift_norm": scale_shift, "resblock_updown": updown,
        "use_new_attention_order": False,
    }


def infer_ddpm_config(state_dict: Mapping[str, Tensor], image_size: int | None = None) -> dict:
    """The nested :class:`DDPMModel` config of a DDPM state dict, read from its keys and shapes.

    ``image_size`` cannot be read from the weights: unless given, it is inferred assuming attention
    at 16×16 (as in every public DDPM config: CIFAR-10 32, CelebA 64, CelebA-HQ / LSUN 256), or 256
    for a model without attention. ``attn_resolutions`` follow from it.
    """
    sd = state_dict
    shapes = _shape_key(sd)
    if image_size is None and shapes == _reference_shapes("ddpm_celebahq_256"):
        return json.loads(json.dumps(DDPM_CELEBAHQ_256_CONFIG))
    ch = int(sd["conv_in.weight"].shape[0])
    levels = _indices(sd, "down.")
    if not levels or levels != list(range(len(levels))):
        raise ValueError("down.<level> blocks missing or not numbered 0..L-1")
    nrb = len(_indices(sd, "down.0.block."))
    mult = []
    for level in levels:
        key = f"down.{level}.block.0.conv1.weight"
        if key not in sd:
            raise ValueError(f"missing {key}")
        mult.append(int(sd[key].shape[0]) // ch)
    attn_levels = [lv for lv in levels if f"down.{lv}.attn.0.q.weight" in sd]
    if image_size is None:
        image_size = 16 * 2 ** attn_levels[0] if attn_levels else 256
    image_size = int(image_size)
    model = {
        "type": "bayesian" if "logvar" in sd else "simple",
        "in_channels": int(sd["conv_in.weight"].shape[1]), "out_ch": int(sd["conv_out.weight"].shape[0]),
        "ch": ch, "ch_mult": mult, "num_res_blocks": nrb,
        "attn_resolutions": [image_size // 2 ** lv for lv in attn_levels], "dropout": 0.0,
        "var_type": "fixedsmall",
        "resamp_with_conv": len(levels) == 1 or "down.0.downsample.conv.weight" in sd,
    }
    steps = int(sd["logvar"].shape[0]) if "logvar" in sd else 1000
    return {"model": model, "data": {"image_size": image_size, "channels": model["in_channels"]},
            "diffusion": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                          "num_diffusion_timesteps": steps}}


def _apply_adm_overrides(config: dict, overrides: dict) -> dict:
    import inspect
    valid = [p for p in inspect.signature(ADMUNet.__init__).parameters if p != "self"]
    for key, value in overrides.items():
        if key not in valid:
            raise TypeError(f"unknown ADM config override {key!r}; valid keys: {', '.join(valid)}")
        config[key] = value
    return config


def _apply_ddpm_overrides(config: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if key in ("model", "data", "diffusion") and isinstance(value, Mapping):
            config.setdefault(key, {}).update(value)
            continue
        for section in ("model", "data", "diffusion"):
            if key in config.get(section, {}) or (section == "model" and key in (
                    "type", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
                    "dropout", "resamp_with_conv")):
                config[section][key] = value
                break
        else:
            if key == "image_size":
                config["data"]["image_size"] = value
            else:
                raise TypeError(f"unknown DDPM config override {key!r}; use keys of config.model / "
                                "config.data / config.diffusion, or model={...}, data={...}, diffusion={...}")
    return config


def _ddpm_betas(path: Any, diffusion: Mapping) -> Tensor:
    schedule = diffusion.get("beta_schedule", "linear")
    start, end = float(diffusion.get("beta_start", 1e-4)), float(diffusion.get("beta_end", 0.02))
    n = int(diffusion.get("num_diffusion_timesteps", 1000))
    if schedule == "linear":
        return linear_betas(n, start, end)
    if schedule == "quad":
        return torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
    if schedule == "const":
        return torch.full((n,), end, dtype=torch.float64)
    raise CheckpointError(path, f"unsupported beta_schedule {schedule!r} in the config (linear, quad, const)")


def betas_from_scheduler_config(config: Mapping) -> Tensor:
    """β_t (float64) from a diffusers scheduler config: ``trained_betas`` or ``beta_schedule`` =
    ``linear`` / ``scaled_linear`` / ``squaredcos_cap_v2`` (defaults: DDPMScheduler's 1000 linear
    steps 1e-4…0.02)."""
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return torch.as_tensor(config["trained_betas"], dtype=torch.float64)
    schedule = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if schedule == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
    if schedule == "squaredcos_cap_v2":
        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)],
                            dtype=torch.float64)
    raise ValueError(f"unsupported beta_schedule {schedule!r} (linear, scaled_linear, squaredcos_cap_v2)")


def _build_and_load(path: Any, fmt: str, config: Any, sd: dict[str, Tensor], dtype: torch.dtype,
                    device: torch.device, how: str) -> nn.Module:
    """Build the network on the meta device, check keys and shapes, then adopt the stored tensors.

    Consumes ``sd`` (its tensors are moved into the model)."""
    try:
        with torch.device("meta"):
            model = ADMUNet(**config) if fmt == "adm" else DDPMModel(config)
    except (TypeError, ValueError, KeyError, ZeroDivisionError) as exc:
        raise CheckpointError(path, f"cannot build a {_FORMAT_NAMES[fmt]} from the {how} config "
                                    f"{config}: {exc}") from None
    model = model.to(dtype)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise CheckpointError(path, (
            f"the keys do not match the {_FORMAT_NAMES[fmt]} built from the {how} config: "
            f"{len(missing)} missing (first: {missing[:5]}), {len(unexpected)} unexpected "
            f"(first: {unexpected[:5]}). Config: {config}. Pass the right configuration as keyword "
            "overrides to load_prior if the model differs from the inferred one."))
    wrong = [k for k in expected if tuple(sd[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(path, (
            f"shape mismatch for {k!r}: the checkpoint has {list(sd[k].shape)}, the {_FORMAT_NAMES[fmt]} "
            f"built from the {how} config expects {list(expected[k].shape)} ({len(wrong)} tensors differ: "
            f"{wrong[:5]}). Config: {config}"))
    bad = [k for k in expected if expected[k].is_floating_point() != sd[k].is_floating_point()]
    if bad:
        raise CheckpointError(path, f"non-floating tensors where parameters are expected: {bad[:5]}")
    tensors = {}
    for k in expected:   # pop: each stored tensor is released once converted (peak ≈ one copy)
        v = sd.pop(k)
        tensors[k] = v.to(device=device, dtype=expected[k].dtype) if v.is_floating_point() else v.to(device)
        del v
    model.load_state_dict(tensors, strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:   # pragma: no cover - neither architecture has buffers
        raise CheckpointError(path, f"tensors not provided by the checkpoint: {leftover[:5]}")
    return model
