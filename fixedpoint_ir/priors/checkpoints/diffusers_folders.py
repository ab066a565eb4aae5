"""diffusers ``UNet2DModel`` folders and Hugging Face hub names (diffusers is imported lazily: it is
the optional ``diffusers`` extra)."""
from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .reading import _TORCH_SUFFIXES, CheckpointError, _safetensors_header

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
    reason = _hub_unreachable()
    if reason is not None:   # fail in seconds, not after a minute of retries and a misleading message
        raise CheckpointError(name, f"not a local file or folder, and the Hugging Face hub cannot be reached "
                                    f"({reason}): this machine looks offline. Download the model folder "
                                    f"where there is a connection (e.g. `huggingface-cli download {name} "
                                    "--local-dir <folder>`) and pass that local folder instead.")
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


#: Seconds to wait for the hub's address and a TCP connection before calling the machine offline.
HUB_PROBE_TIMEOUT_S = 5.0


def _hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub (``HF_ENDPOINT``, default huggingface.co) cannot be reached now, or None.

    Name resolution has no timeout of its own, so the probe runs in a daemon thread that is
    abandoned after ``timeout`` seconds.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{host}:{port}: {exc.strerror or exc}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return outcome[0] if outcome else f"{host}:{port}: no answer within {timeout:g} s"
