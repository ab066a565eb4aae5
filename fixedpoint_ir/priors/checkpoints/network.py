"""The loaded network as a prior: ``net(x, t) -> ε`` (class labels, v / x0 predictions) and
:class:`CheckpointPrior`."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..base import ModulePrior
from .reading import CheckpointError

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
