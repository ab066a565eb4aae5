"""Load pretrained ε-networks from checkpoint files as :class:`~fixedpoint_ir.priors.base.Prior` s.

:func:`load_prior` recognises the format from the file itself, not from its name:

* guided-diffusion ADM UNets (``256x256_diffusion_uncond.pt``, the class-conditional
  ``256x256_diffusion.pt``, and other ADM configurations, inferred from the tensor shapes);
* the DDPM ``Model`` of DDIM / SDEdit / DDRM / DDNM (``celeba_hq.ckpt``, the DDIM CIFAR-10 / CelebA /
  LSUN checkpoints, and the DDIM runner's own ``ckpt.pth`` lists, EMA weights preferred);
* diffusers ``UNet2DModel`` folders (``config.json`` + ``diffusion_pytorch_model.safetensors`` /
  ``.bin``, at the top or in ``unet/``, with the β schedule from ``scheduler_config.json``), and
  hub names such as ``"google/ddpm-cifar10-32"`` when online (diffusers is imported lazily: it is
  the optional ``diffusers`` extra);
* plain state dicts with or without a ``module.`` (DataParallel) prefix, in ``torch.save`` files
  (read with ``weights_only=True``: nothing in a file is ever executed) or ``.safetensors`` files
  (whose ``architecture`` / ``config`` metadata, when present, gives the exact configuration).

Every failure is a :class:`CheckpointError` (a ``ValueError``) whose message starts with the path.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..schedule import alphas_cumprod_from_betas, linear_betas
from .adm import ADM_256_COND_CONFIG, ADM_256_UNCOND_CONFIG, ADM_DEFAULT_CHANNEL_MULT, ADMUNet
from .base import ModulePrior
from .ddpm import DDPM_CELEBAHQ_256_CONFIG, DDPMModel

__all__ = [
    "CheckpointError",
    "CheckpointPrior",
    "load_prior",
    "read_state_dict",
    "detect_format",
    "infer_adm_config",
    "infer_ddpm_config",
    "betas_from_scheduler_config",
]

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
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".pkl", ".tar")


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit a supported architecture."""

    def __init__(self, path: Any, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


# ------------------------------------------------------------------------------------------------
# The prior
# ------------------------------------------------------------------------------------------------
class _Network(nn.Module):
    """Calls the loaded network as ``net(x, t) -> ε``.

    Adds the class label of class-conditional models, converts v / x0 predictions of diffusers
    models to ε, and runs under ``torch.inference_mode()`` when autograd is off (with autograd on,
    as in DEQ inversion, gradients flow to ``x``; the parameters never require grad).
    """

    def __init__(self, net: nn.Module, kind: str, *, num_classes: int | None = None,
                 class_label: int | None = None, prediction_type: str = "epsilon",
                 alphas_cumprod: Tensor | None = None, compile: bool | Mapping = False):
        super().__init__()
        self.net = net
        self.kind = kind
        self.num_classes = num_classes
        self.class_label = class_label
        self.prediction_type = prediction_type
        if prediction_type != "epsilon":
            self.register_buffer("ac", alphas_cumprod.to(torch.float64), persistent=False)
        if compile:
            opts = dict(compile) if isinstance(compile, Mapping) else {}
            self.__dict__["_fn"] = torch.compile(net, **opts)   # not a submodule: same state dict
        else:
            self.__dict__["_fn"] = net

    def _labels(self, x: Tensor) -> Tensor | None:
        if self.class_label is None:
            return None
        return torch.full((x.shape[0],), int(self.class_label), dtype=torch.long, device=x.device)

    def _call(self, x: Tensor, t: Tensor) -> Tensor:
        y = self._labels(x)
        if self.kind == "diffusers":
            kwargs = {} if y is None else {"class_labels": y}
            out = self._fn(x, t, **kwargs).sample
        elif y is not None:
            out = self._fn(x, t, y)
        else:
            out = self._fn(x, t)
        if self.prediction_type != "epsilon":
            c = x.shape[1]
            ab = self.ac.to(x.device)[t.to(x.device)].to(torch.float32)[:, None, None, None]
            pred, xf = out[:, :c].float(), x.float()
            if self.prediction_type == "v_prediction":
                e = ab.sqrt() * pred + (1 - ab).sqrt() * xf
            else:   # "sample": the network predicts x0
                e = (xf - ab.sqrt() * pred) / (1 - ab).sqrt()
            out = torch.cat([e.to(out.dtype), out[:, c:]], dim=1)
        return out

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self._call(x, t)
        with torch.inference_mode():
            out = self._call(x, t)
        return out.clone()   # a normal tensor: callers may update it in place or save it for autograd


class CheckpointPrior(ModulePrior):
    """A :class:`ModulePrior` made by :func:`load_prior`, remembering where it came from.

    Attributes:
        path: the file or folder (or hub name) it was loaded from.
        format: ``"adm"``, ``"ddpm"`` or ``"diffusers"``.
        config: the architecture configuration used to build the network.
        network: the bare network (``ADMUNet``, ``DDPMModel`` or ``diffusers.UNet2DModel``).
        description: what was recognised (e.g. the public checkpoint it matches).
        class_label: the label given to a class-conditional network (settable).
    """

    def __init__(self, network: _Network, alphas_cumprod: Tensor, max_batch: int | None, channels: int,
                 image_size: tuple[int, int] | None, *, path: str, format: str, config: Any,
                 description: str):
        super().__init__(network, alphas_cumprod=alphas_cumprod, max_batch=max_batch, channels=channels,
                         image_size=image_size)
        self.path, self.format, self.config, self.description = path, format, config, description

    @property
    def network(self) -> nn.Module:
        return self.module.net

    @property
    def num_classes(self) -> int | None:
        return self.module.num_classes

    @property
    def class_label(self) -> int | None:
        return self.module.class_label

    @class_label.setter
    def class_label(self, value: int | None) -> None:
        self.module.class_label = _check_class_label(self.path, value, self.module.num_classes)

    def extra_repr(self) -> str:
        size = "any" if self.image_size is None else f"{self.image_size[0]}x{self.image_size[1]}"
        label = "" if self.class_label is None else f", class_label={self.class_label}"
        return f"format={self.format!r}, image_size={size}, max_batch={self.max_batch}{label}"


def _check_class_label(path: Any, label: Any, num_classes: int | None) -> int | None:
    if num_classes is None:
        if label is not None:
            raise CheckpointError(path, f"the model is unconditional; class_label must be None, got {label!r}")
        return None
    if label is None:
        raise CheckpointError(path, f"the model is class-conditional ({num_classes} classes); pass "
                                    f"class_label=<int in [0, {num_classes})>")
    if isinstance(label, Tensor):
        if label.numel() != 1 or label.is_floating_point():
            raise CheckpointError(path, f"class_label must be one integer, got a tensor of shape "
                                        f"{tuple(label.shape)} and dtype {label.dtype}")
        label = int(label.item())
    if isinstance(label, bool) or not isinstance(label, int):
        raise CheckpointError(path, f"class_label must be an int, got {label!r}")
    if not 0 <= label < num_classes:
        raise CheckpointError(path, f"class_label {label} is out of range: the model has {num_classes} "
                                    f"classes, labels lie in [0, {num_classes})")
    return label


# ------------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------------
def _safetensors_header(path: Path, head: bytes, size: int) -> dict | None:
    """The parsed safetensors header, ``None`` if the file is not safetensors; raises if truncated."""
    if len(head) < 9:
        return None
    n = int.from_bytes(head[:8], "little")
    if head[8:9] != b"{" or n < 2:
        return None
    if 8 + n > size:
        raise CheckpointError(path, f"truncated safetensors file: the header alone announces {8 + n} "
                                    f"bytes, the file has {size}")
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "corrupt safetensors header (not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise CheckpointError(path, f"corrupt safetensors header (entry {name!r})") from None
    if 8 + n + end > size:
        raise CheckpointError(path, f"truncated safetensors file: the header announces {8 + n + end} "
                                    f"bytes, the file has {size}")
    return header


def _read_file(path: Path) -> tuple[Any, dict | None]:
    """Load a checkpoint file without executing anything from it: (object, safetensors metadata)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if size == 0:
        raise CheckpointError(path, "empty file, not a checkpoint")
    header = _safetensors_header(path, head, size)
    if header is not None:
        from safetensors.torch import load_file
        try:
            return load_file(str(path)), header.get("__metadata__") or None
        except Exception as exc:   # safetensors raises its own error types
            raise CheckpointError(path, f"unreadable safetensors file ({type(exc).__name__}: {exc})") from None
    is_zip = head[:4] == b"PK\x03\x04"
    if not is_zip and head[:1] != b"\x80":   # neither a torch zip archive nor a (legacy) pickle
        raise CheckpointError(path, "not a checkpoint file: neither a torch.save archive nor a safetensors "
                                    f"file (first bytes {head[:8]!r})")
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(path, "truncated or corrupt torch.save archive (no zip central directory)")
    try:
        # no mmap: parameters backed by the file would break (SIGBUS) if the file is rewritten later
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found is None:
            detail = re.search(r"WeightsUnpickler error: \s*([^\n]+)", text)
            detail = detail.group(1).strip() if detail else (text.strip().splitlines() or [""])[0]
            raise CheckpointError(path, f"unreadable or corrupt torch.save file ({detail})") from None
        raise CheckpointError(path, (
            f"the file holds Python objects other than tensors and plain containers ({found.group(1)}); "
            "loading them would execute code from the file, which load_prior refuses. If you trust the "
            "file, extract its state dict yourself and save that with torch.save or safetensors.")) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(path, f"unreadable or truncated torch.save file ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return obj, None


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _extract_state_dict(obj: Any, path: Any) -> tuple[dict[str, Tensor], str]:
    """The network's state dict inside a loaded object, and where it was found."""
    where = "a plain state dict"
    if _is_tensor_mapping(obj):
        sd = obj
    elif isinstance(obj, Mapping):
        for key in ("ema", "ema_state_dict", "ema_model", "state_dict", "model_state_dict", "model"):
            if _is_tensor_mapping(obj.get(key)):
                sd, where = obj[key], f"the {key!r} entry of a checkpoint dict"
                break
        else:
            keys = ", ".join(repr(k) for k in list(obj)[:8])
            raise CheckpointError(path, f"no state dict found: a dict whose entries ({keys}) are not all "
                                        "tensors and none of which is a state dict")
    elif isinstance(obj, (list, tuple)):
        found = [i for i, e in enumerate(obj) if _is_tensor_mapping(e)]
        ddim_runner = (len(obj) >= 4 and 0 in found and isinstance(obj[1], Mapping)
                       and not isinstance(obj[2], (Mapping, list, tuple)))
        if ddim_runner and len(obj) >= 5 and 4 in found:
            sd, where = obj[4], "ema_state (element 4) of a DDIM runner checkpoint list"
        elif ddim_runner:
            sd, where = obj[0], "model_state (element 0) of a DDIM runner checkpoint list (no EMA)"
        elif len(found) == 1:
            sd, where = obj[found[0]], f"element {found[0]} of a checkpoint list"
        else:
            raise CheckpointError(path, f"a list of {len(obj)} items with {len(found)} state dicts "
                                        f"(at {found}); cannot tell which holds the network")
    else:
        raise CheckpointError(path, f"not a state dict: the file holds a {type(obj).__name__}")
    return _strip_prefixes(dict(sd)), where


def _strip_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The network state dict of a checkpoint file (wrappers and ``module.`` prefixes removed)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(path, "no such file")
    return _extract_state_dict(_read_file(p)[0], path)[0]


# ------------------------------------------------------------------------------------------------
# Recognising and configuring architectures
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# diffusers folders and hub names
# ------------------------------------------------------------------------------------------------
def _import_diffusers(path: Any):
    try:
        import diffusers
    except ImportError:
        raise CheckpointError(path, "diffusers folders and hub names need the optional diffusers package "
                                    "(pip install 'fixedpoint-ir[diffusers]')") from None
    return diffusers


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"cannot read the {what} ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, f"the {what} is not a JSON object")
    return data


def _check_unet_config(path: Any, config: Mapping) -> None:
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise CheckpointError(path, f"the folder holds a diffusers {cls}; only unconditional-image "
                                    "UNet2DModel ε-networks are supported")


def _check_scheduler_config(path: Any, config: Mapping) -> str:
    cls = str(config.get("_class_name", ""))
    if "ScoreSdeVe" in cls or "KarrasVe" in cls:
        raise CheckpointError(path, f"{cls} is a variance-exploding scheduler; only variance-preserving "
                                    "(DDPM/DDIM-style) models are supported")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise CheckpointError(path, f"unsupported prediction_type {prediction!r}")
    return prediction


def _load_diffusers_folder(folder: Path, path: Any, dtype: torch.dtype, device: torch.device):
    if (folder / "unet" / "config.json").is_file():
        unet_dir = folder / "unet"
    elif (folder / "config.json").is_file():
        unet_dir = folder
    else:
        raise CheckpointError(path, "not a model folder: expected a diffusers UNet2DModel folder with "
                                    "config.json and diffusion_pytorch_model.safetensors (or .bin), at its "
                                    "top or in unet/")
    config = _read_json(unet_dir / "config.json", "model config")
    _check_unet_config(path, config)
    weights = [unet_dir / f"diffusion_pytorch_model.{ext}" for ext in ("safetensors", "bin")]
    if not any(w.is_file() for w in weights):
        raise CheckpointError(path, f"{unet_dir} has config.json but no diffusion_pytorch_model.safetensors "
                                    "or diffusion_pytorch_model.bin")
    for w in weights:   # fail on garbage or truncated weights with our own message
        if w.is_file():
            size = w.stat().st_size
            with open(w, "rb") as f:
                head = f.read(16)
            if w.suffix == ".safetensors" and _safetensors_header(w, head, size) is None:
                raise CheckpointError(w, "not a safetensors file")
            if w.suffix == ".bin" and head[:4] == b"PK\x03\x04" and not zipfile.is_zipfile(w):
                raise CheckpointError(w, "truncated or corrupt torch.save archive")
            break
    candidates = [folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json",
                  unet_dir / "scheduler_config.json"]
    if unet_dir == folder:
        candidates.append(folder.parent / "scheduler" / "scheduler_config.json")
    sched_path = next((c for c in candidates if c.is_file()), None)
    sched = _read_json(sched_path, "scheduler config") if sched_path is not None else {}
    diffusers = _import_diffusers(path)
    try:
        import importlib.util
        extra = {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}
        unet = diffusers.UNet2DModel.from_pretrained(str(unet_dir), torch_dtype=dtype, local_files_only=True,
                                                     **extra)
    except Exception as exc:
        raise CheckpointError(path, f"diffusers could not load the UNet2DModel ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    where = f"diffusers folder {unet_dir}" + (f", schedule from {sched_path}" if sched_path else
                                              ", no scheduler config: DDPMScheduler defaults")
    return unet, dict(unet.config), sched, where


def _load_from_hub(name: str, dtype: torch.dtype):
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    if offline:
        raise CheckpointError(name, "not a local file or folder, and HF_HUB_OFFLINE is set, so the Hugging Face "
                                    "hub cannot be reached. Download the model folder while online (e.g. "
                                    f"`huggingface-cli download {name} --local-dir <folder>`) and pass that "
                                    "local folder instead.")
    diffusers = _import_diffusers(name)
    unet = None
    errors = []
    for sub in ("unet", None):
        try:
            unet = diffusers.UNet2DModel.from_pretrained(name, subfolder=sub, torch_dtype=dtype)
            break
        except Exception as exc:   # network errors, missing files, wrong class
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if unet is None:
        raise CheckpointError(name, f"not a local path, and loading it from the Hugging Face hub failed "
                                    f"({'; '.join(errors)})")
    _check_unet_config(name, unet.config)
    sched = {}
    for sub in ("scheduler", None):
        try:
            sched = dict(diffusers.DDPMScheduler.load_config(name, subfolder=sub))
            break
        except Exception:
            continue
    return unet, dict(unet.config), sched, f"hub model {name}"


def _looks_like_hub_id(s: str) -> bool:
    return (re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", s) is not None
            and not s.lower().endswith(_TORCH_SUFFIXES))


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64,
           "fp64": torch.float64, "double": torch.float64}


def _parse_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
        return _DTYPES[key]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
    return dtype


def load_prior(path: str | os.PathLike, *, device: str | torch.device | None = None,
               dtype: torch.dtype | str = torch.float32, max_batch: int | None = None,
               class_label: int | None = None, compile: bool | Mapping = False,
               **config_overrides: Any) -> CheckpointPrior:
    """A pretrained ε-network as a :class:`~fixedpoint_ir.priors.base.Prior`.

    Args:
        path: a checkpoint file (``.pt`` / ``.ckpt`` / ``.pth`` / ``.safetensors``: the format is read
            from the content), a diffusers ``UNet2DModel`` folder, or a Hugging Face hub name such as
            ``"google/ddpm-cifar10-32"`` (needs diffusers and a connection; with ``HF_HUB_OFFLINE``
            set this fails at once: pass a local folder).
        device: where the network runs (default CPU).
        dtype: parameter dtype, ``torch.float32`` / ``float16`` / ``bfloat16`` (stored tensors are
            cast). The prior still returns ε in the dtype of its input, so the chain stays float32.
        max_batch: most images per network call (memory then follows ``max_batch``, not T).
        class_label: the ImageNet class for class-conditional ADM models (required for them).
        compile: ``True`` (or a dict of :func:`torch.compile` options) to compile the network.
        **config_overrides: architecture settings the weights cannot tell, e.g. ``image_size=64``,
            ``num_head_channels=32``, ``num_heads=4`` (ADM keys) or ``image_size``, ``ch_mult`` …
            (DDPM ``config.model`` / ``config.data`` keys). Not accepted for diffusers folders.

    Returns:
        A :class:`CheckpointPrior` (a :class:`ModulePrior`) in eval mode, on ``device``, whose
        parameters do not require grad; its ``image_size`` is enforced for ADM / DDPM models. The
        schedule is the linear β 1e-4…0.02 over 1000 steps for ADM / DDPM files, the scheduler
        config's for diffusers folders. With autograd off the network runs under
        ``torch.inference_mode()``; with it on, gradients with respect to the input flow.

    Raises:
        CheckpointError: unreadable / truncated / non-checkpoint files, unknown architectures (naming
            the closest known format and the first missing / unexpected keys), shape mismatches,
            class labels out of range.
    """
    dtype = _parse_dtype(dtype)
    device = torch.device("cpu" if device is None else device)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    shown = os.fspath(path)
    p = Path(shown).expanduser()

    if p.is_dir() or (not p.exists() and _looks_like_hub_id(shown)):
        if config_overrides:
            raise TypeError(f"config overrides ({', '.join(config_overrides)}) are not supported for "
                            "diffusers models: their config.json is complete")
        if p.is_dir():
            unet, config, sched, description = _load_diffusers_folder(p, shown, dtype, device)
        else:
            unet, config, sched, description = _load_from_hub(shown, dtype)
        prediction = _check_scheduler_config(shown, sched)
        try:
            ac = alphas_cumprod_from_betas(betas_from_scheduler_config(sched))
        except ValueError as exc:
            raise CheckpointError(shown, f"scheduler config: {exc}") from None
        num_classes = config.get("num_class_embeds")
        label = _check_class_label(shown, class_label, None if num_classes is None else int(num_classes))
        unet = unet.to(device).eval().requires_grad_(False)
        net = _Network(unet, "diffusers", num_classes=num_classes, class_label=label,
                       prediction_type=prediction, alphas_cumprod=ac, compile=compile)
        prior = CheckpointPrior(net, ac, max_batch, int(config.get("in_channels", 3)), None, path=shown,
                                format="diffusers", config=config, description=description)
        return _finish(prior, device)

    if not p.exists():
        raise CheckpointError(shown, "no such file or folder")
    if not p.is_file():
        raise CheckpointError(shown, "not a regular file")

    obj, metadata = _read_file(p)
    sd, where = _extract_state_dict(obj, shown)
    del obj
    if not sd:
        raise CheckpointError(shown, "the state dict is empty")
    arch = (metadata or {}).get("architecture")
    meta_config = None
    if metadata and metadata.get("config"):
        try:
            meta_config = json.loads(metadata["config"])
        except json.JSONDecodeError:
            meta_config = None
    fmt = {ADM_ARCHITECTURE: "adm", DDPM_ARCHITECTURE: "ddpm"}.get(arch) or detect_format(sd)

    if fmt is None:
        closest, missing, unexpected = _closest_format(sd)
        raise CheckpointError(shown, (
            f"unknown architecture ({len(sd)} tensors in {where}). Closest known format: "
            f"{_FORMAT_NAMES[closest]}; missing keys: {missing[:5]}; unexpected keys "
            f"({len(unexpected)}): {unexpected[:5]}"))
    if fmt == "diffusers":
        raise CheckpointError(shown, "this is a diffusers UNet2DModel state dict without its config: pass "
                                     "the folder that holds config.json and the weights instead")

    how = "stored" if meta_config is not None else "inferred"
    shapes = _shape_key(sd)
    if fmt == "adm":
        if meta_config is not None:
            config = dict(meta_config)
        else:
            try:
                config = infer_adm_config(sd)
            except (ValueError, KeyError, IndexError) as exc:
                raise CheckpointError(shown, (
                    f"looks like a {_FORMAT_NAMES['adm']}, but its configuration cannot be inferred from "
                    f"the shapes ({exc}); pass the config as keyword overrides")) from None
        config = _apply_adm_overrides(config, config_overrides)
        if meta_config is None:   # announce what the weights could not tell
            public = shapes in (_reference_shapes("adm_256_uncond"), _reference_shapes("adm_256_cond"))
            guessed = [k for k in ("num_head_channels", "image_size") if k not in config_overrides
                       and not (k == "num_head_channels" and "num_heads" in config_overrides)]
            if not public and guessed:
                warnings.warn(
                    f"{shown}: ADM settings not stored in the weights were assumed: "
                    + ", ".join(f"{k}={config[k]}" for k in guessed)
                    + (f" (num_heads={config['num_heads']})" if config["num_head_channels"] == -1 else "")
                    + ". Pass them to load_prior if the model was trained otherwise (wrong attention heads "
                      "give wrong ε without any error).", stacklevel=2)
        if config_overrides:
            how += " (with overrides)"
        config["use_fp16"] = False   # precision is the dtype argument
        if "channel_mult" in config and isinstance(config["channel_mult"], list):
            config["channel_mult"] = tuple(config["channel_mult"])
        if "attention_resolutions" in config and isinstance(config["attention_resolutions"], list):
            config["attention_resolutions"] = tuple(config["attention_resolutions"])
        nc = config.get("num_classes")
        label = _check_class_label(shown, class_label, None if nc is None else int(nc))   # before the load
        model = _build_and_load(shown, "adm", config, sd, dtype, device, how)
        ac = alphas_cumprod_from_betas(linear_betas())
        channels, size = model.in_channels, model.image_size
        if shapes == _reference_shapes("adm_256_uncond"):
            description = "guided-diffusion 256x256_diffusion_uncond.pt layout"
        elif shapes == _reference_shapes("adm_256_cond"):
            description = "guided-diffusion 256x256_diffusion.pt (class-conditional) layout"
        else:
            description = f"guided-diffusion ADM UNet, {how} config"
        num_classes = model.num_classes
    else:
        if meta_config is not None:
            config = json.loads(json.dumps(meta_config))
        else:
            try:
                config = infer_ddpm_config(sd, image_size=config_overrides.get("image_size"))
            except (ValueError, KeyError, IndexError) as exc:
                raise CheckpointError(shown, (
                    f"looks like a {_FORMAT_NAMES['ddpm']}, but its configuration cannot be inferred from "
                    f"the shapes ({exc}); pass the config as keyword overrides")) from None
        config = _apply_ddpm_overrides(config, config_overrides)
        if config_overrides:
            how += " (with overrides)"
        label = _check_class_label(shown, class_label, None)
        model = _build_and_load(shown, "ddpm", config, sd, dtype, device, how)
        ac = alphas_cumprod_from_betas(_ddpm_betas(shown, config.get("diffusion", {})))
        channels, size, num_classes = model.in_channels, model.resolution, None
        description = ("DDPM celeba_hq.ckpt layout" if shapes == _reference_shapes("ddpm_celebahq_256")
                       else f"DDPM Model, {how} config")
    del sd
    model.eval().requires_grad_(False)
    net = _Network(model, fmt, num_classes=num_classes, class_label=label, compile=compile)
    prior = CheckpointPrior(net, ac, max_batch, channels, (size, size), path=shown, format=fmt,
                            config=config, description=f"{description}; weights from {where}")
    return _finish(prior, device)


def _finish(prior: CheckpointPrior, device: torch.device) -> CheckpointPrior:
    if device.type == "mps":   # no float64 there: keep the schedule buffer on the CPU
        prior.module.to(device)
    else:
        prior.to(device)
    prior.eval()
    for p in prior.parameters():
        p.requires_grad_(False)
    return prior
