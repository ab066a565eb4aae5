"""Reading checkpoint files without running anything in them: safetensors, torch.save archives and
legacy pickles (``weights_only=True``), and the state dict inside whatever wrapper holds it."""
from __future__ import annotations

import json
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".pkl", ".tar")


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit a supported architecture."""

    def __init__(self, path: Any, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


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
    except pickle.UnpicklingError:
        # torch's weights-only unpickler refused something. Tell code from corruption by listing the
        # globals the pickle names (never by torch's wording, which suggests weights_only=False).
        code = _unsafe_globals(path, is_zip)
        if code:
            raise CheckpointError(path, (
                f"the file holds Python code ({', '.join(code[:5])}{', …' if len(code) > 5 else ''}) that "
                "torch.load would run while loading it. It was not run: load_prior reads tensors only. "
                "If you trust the file's source, convert it once to safetensors: python -c \"from "
                "fixedpoint_ir.priors.checkpoints import convert_to_safetensors as c; "
                f"c('{path}', '{path.with_suffix('.safetensors')}', trusted=True)\" and load that "
                "file.")) from None
        raise CheckpointError(path, "unreadable or corrupt torch.save file (its pickle cannot be "
                                    "decoded)") from None
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


def _pickle_globals(path: Path) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in the pickles at the start of a legacy file."""
    found: list[str] = []
    with open(path, "rb") as f:
        while True:   # legacy torch.save: several pickles in a row, then raw storage bytes
            strings: list[str] = []
            try:
                for op, arg, _ in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        found.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:   # raw bytes after the pickles, or a corrupt stream
                break
    return found


def _unsafe_globals(path: Path, is_zip: bool) -> list[str]:
    """The globals of a checkpoint that torch's weights-only loader does not allow (code), sorted."""
    try:
        if is_zip:
            return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))))
        names = _pickle_globals(path)
    except Exception:
        return []
    try:
        from torch._weights_only_unpickler import _get_allowed_globals   # private: best effort
        allowed = set(_get_allowed_globals())
    except Exception:
        allowed = set()
    return sorted({n for n in names if n not in allowed and not (not allowed and n.startswith(
        ("torch.", "collections.OrderedDict")))})


def convert_to_safetensors(source: str | os.PathLike, target: str | os.PathLike, *, trusted: bool = False) -> Path:
    """Convert a checkpoint that holds code (a full pickle) to a safetensors file of its state dict.

    This RUNS the code in ``source`` (``torch.load(weights_only=False)``), so it refuses unless
    ``trusted=True``: do it only for files from a source you trust. The network's state dict (found
    as :func:`read_state_dict` finds it) is written to ``target``, which then loads without code.
    """
    if not trusted:
        raise ValueError("convert_to_safetensors runs the code stored in the file: pass trusted=True "
                         "only for a file whose source you trust")
    from safetensors.torch import save_file

    obj = torch.load(Path(source), map_location="cpu", weights_only=False)
    sd, _ = _extract_state_dict(obj, source)
    out = Path(target)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out))
    return out
