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

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...schedule import alphas_cumprod_from_betas, linear_betas
from .configs import (_apply_adm_overrides, _apply_ddpm_overrides, _build_and_load, _ddpm_betas,
                      betas_from_scheduler_config, infer_adm_config, infer_ddpm_config)
from .diffusers_folders import _check_scheduler_config, _load_diffusers_folder, _load_from_hub, _looks_like_hub_id
from .formats import (ADM_ARCHITECTURE, DDPM_ARCHITECTURE, _FORMAT_NAMES, _closest_format, _reference_shapes,
                      _shape_key, detect_format)
from .network import CheckpointPrior, _check_class_label, _Network
from .reading import CheckpointError, _extract_state_dict, _read_file, convert_to_safetensors, read_state_dict

__all__ = [
    "CheckpointError",
    "CheckpointPrior",
    "load_prior",
    "read_state_dict",
    "detect_format",
    "infer_adm_config",
    "infer_ddpm_config",
    "betas_from_scheduler_config",
    "convert_to_safetensors",
]


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
