"""Memory planning: estimate a solve's peak before it starts, size the network chunks to fit.

The peak of a restoration is (a) the solver's state buffers, a few tensors of shape
(T, N, C, H, W), and (b) the activations of ONE network call on a chunk of ``max_batch`` inputs
(``Prior.eps`` splits every batch into such chunks). (a) is known from the shapes; (b) is measured
once per prior and input size by counting the bytes of the live tensors of one probe call
(:class:`PeakTensorBytes`) — at a small size for fully convolutional priors (activations grow
with the pixel count), at the prior's own size for fixed-size ones. The plan picks the largest
``max_batch`` whose peak stays under ``MEMORY_FRACTION`` of the device's free memory, or refuses
up front (:class:`MemoryPlanError`) — never an out-of-memory crash after minutes of work.
"""
from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MEMORY_FRACTION", "MemoryPlan", "MemoryPlanError", "PeakTensorBytes", "available_bytes",
           "input_scale", "inputs_per_image", "measure_input_bytes", "plan_for", "plan_memory", "probe_shape", "state_copies"]

#: Share of the free memory a solve plans to use (the rest: allocator slack, other programs).
MEMORY_FRACTION = 0.7
#: Measured live-tensor bytes are multiplied by this (allocator rounding, library scratch space).
ACTIVATION_SLACK = 1.25

# Tensors of shape (T, N, C, H, W) alive at the peak, per mode (counted in the code: the
# sequential chain keeps its trajectory, its stacked copy and the noises; the triangular solver
# z, its inputs, evaluation points, cached e, F(z), the new inputs, the noises and a replay
# temporary; Picard z, F(z), the noises and the replay's temporaries; Anderson/Broyden add
# their histories). The noises are counted even where the DDNM chain has nw = 0 and stores none
# (Sampler.chain): an upper bound by one copy there. ParaDiGMS and ParaTAA: their PeakTensorBytes
# peaks were 1.7× and 3.1× Picard's (T = 20, 32×32, nw = 0.5; ParaTAA keeps two iterates and two
# residuals per row, its one-step and order-p maps), scaled to Picard's count here.
# The triangular solver with Anderson mixing (accelerate="anderson") keeps two iterates and
# two residuals besides: its PeakTensorBytes peak was 1.68× the plain solver's (T = 20, 32×32,
# nw = 1; 1.35× at T = 48 with the 24-row window; `python benchmarks/state_copies.py`), scaled to
# the plain solver's count here. The multisecant model (linearize="multisecant", 3 pairs) keeps its
# pairs and their residuals against the secant model: 1.59× (T = 20) and 1.53× (T = 48), same command.
_STATE_COPIES = {"sequential": 3, "triangular": 9, "triangular+anderson": 16, "triangular+multisecant": 15,
                 "picard": 5, "anderson": 18, "broyden": 16, "paradigms": 9, "parataa": 16}


class MemoryPlanError(ValueError):
    """The restoration cannot fit the device's memory with any chunk size (raised before any work)."""


class PeakTensorBytes:
    """Context manager: the peak bytes of live tensors created by torch operations inside it.

    A TorchDispatchMode sees every operation's outputs; each new storage counts until its tensor
    is freed. Views share their base's storage and are not counted twice.
    """

    def __init__(self):
        self.live = self.peak = 0
        self._ptrs: set[int] = set()
        self._mode = None

    def _release(self, ptr: int, nbytes: int) -> None:
        self._ptrs.discard(ptr)
        self.live -= nbytes

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, Tensor):
                        storage = t.untyped_storage()
                        ptr, nbytes = storage.data_ptr(), storage.nbytes()
                        if ptr and ptr not in counter._ptrs:
                            counter._ptrs.add(ptr)
                            counter.live += nbytes
                            counter.peak = max(counter.peak, counter.live)
                            weakref.finalize(t, counter._release, ptr, nbytes)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False


def _fixed_size(prior) -> tuple[int, int] | None:
    """(H, W) a prior's network must be called at (tiles, fixed-size checkpoints), or None."""
    tile = getattr(prior, "tile", None)
    if tile is not None:
        return tuple(tile)
    size = getattr(prior, "image_size", None)
    return None if size is None else tuple(size)


def probe_shape(prior, image_shape: tuple[int, int, int], probe_pixels: int = 64 * 64) -> tuple[int, int, int]:
    """The input shape to probe a prior at: its own size if it has one, else the image, shrunk to
    at most ``probe_pixels`` pixels (fully convolutional networks: cost and memory per pixel)."""
    c, h, w = image_shape
    fixed = _fixed_size(prior)
    if fixed is not None:
        return (c, *fixed)
    if h * w <= probe_pixels:
        return (c, h, w)
    side = int(math.isqrt(probe_pixels))
    return (c, min(h, side), min(w, side))


def inputs_per_image(prior, image_shape: tuple[int, int, int]) -> int:
    """Network inputs per image as ``max_batch`` counts them: the tiles of a tiled prior, else 1."""
    layout = getattr(prior, "layout", None)
    if layout is not None and getattr(prior, "tile", None) is not None:
        rows, cols = layout(*image_shape[1:])
        return len(rows) * len(cols)
    return 1


def input_scale(prior, image_shape: tuple[int, int, int]) -> float:
    """One network input of the image in units of a probe-shaped input (pixel ratio for a fully
    convolutional prior; 1 for tiles and fixed-size priors)."""
    if _fixed_size(prior) is not None:
        return 1.0
    _, ph, pw = probe_shape(prior, image_shape)
    return image_shape[1] * image_shape[2] / (ph * pw)


_INPUT_BYTES: dict[tuple, float] = {}


def measure_input_bytes(prior, shape: tuple[int, int, int], *, dtype=torch.float32, device="cpu") -> float:
    """Peak live-tensor bytes of one network call on one input of ``shape`` (cached per prior,
    shape, dtype, device). Priors without parameters (the analytic ones) are elementwise: a few
    copies of the input, no probe call."""
    while getattr(prior, "world_size", None) is not None and hasattr(prior, "prior"):
        prior = prior.prior   # a DistributedPrior: probe the local network, not a collective call
    params = list(prior.parameters())
    nbytes = math.prod(shape) * torch.tensor([], dtype=dtype).element_size()
    if not params:
        return 8.0 * nbytes
    key = (type(prior).__name__, sum(p.numel() for p in params), tuple(shape), str(dtype), str(device))
    if key not in _INPUT_BYTES:
        x = torch.randn((1, *shape), dtype=dtype, device=device)
        t = torch.full((1,), prior.num_train_steps // 2, dtype=torch.long, device=device)
        with torch.no_grad(), PeakTensorBytes() as peak:
            prior.eps(x, t)
        _INPUT_BYTES[key] = float(max(peak.peak, nbytes))
    return _INPUT_BYTES[key]


def available_bytes(device) -> int:
    """Free memory of the device: CUDA's free bytes, or on a CPU the smaller of the system's
    MemAvailable and the cgroup's remaining limit."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    candidates = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                candidates.append(int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 1 << 62   # unknown: do not refuse
    return max(0, min(candidates))


def state_copies(mode: str) -> int:
    """(T, N, C, H, W) tensors alive at the peak of ``mode`` (a solver name or "sequential")."""
    return _STATE_COPIES.get(mode, 6)


@dataclass(frozen=True)
class MemoryPlan:
    """The chosen chunk size and the peak it predicts (bytes)."""

    max_batch: int
    peak_bytes: int
    states_bytes: int
    chunk_bytes: int
    budget_bytes: int

    def describe(self) -> str:
        gib = 2 ** 30
        return (f"peak ~{self.peak_bytes / gib:.2f} GiB (states {self.states_bytes / gib:.2f} + network "
                f"chunk of {self.max_batch}: {self.chunk_bytes / gib:.2f}) of a "
                f"{self.budget_bytes / gib:.2f} GiB budget")


def plan_memory(*, rows: int, images: int, image_shape: tuple[int, int, int], itemsize: int,
                input_bytes: float, inputs_per_image: int, mode: str, budget_bytes: int,
                requested_max_batch: int | None = None) -> MemoryPlan:
    """The largest network chunk (``max_batch``, in network inputs) whose peak fits ``budget_bytes``.

    rows × images states of ``image_shape`` are kept ``state_copies(mode)`` times; one network
    input (an image, or a tile of a tiled prior: ``inputs_per_image`` per image) costs
    ``input_bytes`` of activations. Raises :class:`MemoryPlanError` naming the sizes and the
    options when not even one input fits.
    """
    c, h, w = image_shape
    state = c * h * w * itemsize
    states = int(state_copies(mode) * rows * images * state)
    per_input = input_bytes * ACTIVATION_SLACK + 3 * state / inputs_per_image   # + its x, e and t
    largest = max(1, (images if mode == "sequential" else rows * images) * inputs_per_image)
    room = budget_bytes - states
    fits = int(room // per_input) if room > 0 else 0
    if fits < 1:
        gib = 2 ** 30
        options = ["a smaller image (or restore it in parts)", "fewer steps"]
        if mode != "sequential":
            options.append("the sequential chain (fewest states kept)")
        options.append("a device with more free memory")
        raise MemoryPlanError(
            f"restoring a {h}x{w} image with {rows} steps ({mode}) needs about "
            f"{(states + per_input) / gib:.1f} GiB ({states / gib:.1f} GiB of states + "
            f"{per_input / gib:.1f} GiB for one network call), more than the {budget_bytes / gib:.1f} GiB "
            f"budget ({MEMORY_FRACTION:.0%} of the free memory); options: {', '.join(options)}")
    max_batch = min(fits, largest)
    if requested_max_batch is not None:
        max_batch = min(max_batch, requested_max_batch)
    chunk = int(max_batch * per_input)
    return MemoryPlan(max_batch, states + chunk, states, chunk, int(budget_bytes))


def plan_for(prior, *, rows: int, images: int, image_shape: tuple[int, int, int], dtype, device,
             mode: str, fraction: float = MEMORY_FRACTION) -> MemoryPlan:
    """:func:`plan_memory` for a prior and a chain's sizes: probes the prior (cached), reads the
    device's free memory, keeps the prior's own ``max_batch`` as a cap."""
    probe = probe_shape(prior, image_shape)
    per_input = measure_input_bytes(prior, probe, dtype=dtype, device=device) * input_scale(prior, image_shape)
    return plan_memory(rows=rows, images=images, image_shape=tuple(image_shape),
                       itemsize=torch.tensor([], dtype=dtype).element_size(), input_bytes=per_input,
                       inputs_per_image=inputs_per_image(prior, image_shape), mode=mode,
                       budget_bytes=int(fraction * available_bytes(device)),
                       requested_max_batch=prior.max_batch)
