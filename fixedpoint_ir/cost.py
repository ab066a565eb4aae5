"""When parallel pays: the measured cost of a batched network call, and parallel vs sequential.

DESIGN §10: with c(B) the time of one network call on B states and B_k the rows evaluated in
solver round k, the parallel solve costs about Σ_k c(B_k) (plus replay and bookkeeping), the
sequential chain T·c(1). :func:`measure_batch_cost` times c(B) for B = 1, 2, 4, … (a few calls,
stopping as soon as batches stop paying) and caches it per prior, device, dtype and input shape
(in memory, and on disk after :func:`enable_disk_cache` or with ``$FIXEDPOINT_IR_CACHE_DIR``);
:func:`expected_rows` says how many rows a solver evaluates per round (its own
``expected_rows(steps)`` if it has one, else the table below); :func:`choose` compares the two
predictions and says why.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .memory import input_scale, inputs_per_image, measure_input_bytes, probe_shape

__all__ = ["BatchCost", "Choice", "enable_disk_cache", "measure_batch_cost", "expected_rows", "predict_parallel",
           "predict_sequential", "choose", "record_sequential_call", "recorded_sequential_call",
           "TRIANGULAR_WORK"]

#: Default triangular solver (multisecant, surrogate init, estimate stopping rule, window 24):
#: (T, rounds / T, network evaluations per image / T), medians of the ``paper`` cells (etw 0.1,
#: nw 0) of ``benchmarks/side_by_side.py --solvers triangular`` (64×64, CPU): T = 20 over the 9
#: problems, T = 50 and T = 100 over flower × sr4 / deblur_gauss / inpaint_random. Interpolated in
#: T, the last entry's fractions beyond it.
TRIANGULAR_WORK = ((20, 11 / 20, 155 / 20), (50, 24 / 50, 474 / 50), (100, 45 / 100, 987 / 100))

#: Replay and bookkeeping of a parallel round, as a share of its network time (measured 1-6.5 %
#: with the row-loop replay in ``benchmarks/results/convergence_learned.md``).
ROUND_OVERHEAD = 0.05
#: Stop measuring larger batches once c(B) >= this × B·c(1): batches no longer pay.
NO_GAIN = 0.75

_CACHE: dict[str, "BatchCost"] = {}


@dataclass(frozen=True)
class BatchCost:
    """c(B) for network inputs of ``shape``: ``seconds[i]`` for a batch of ``batches[i]``, and the
    activation bytes of one input (``input_bytes``, for :mod:`fixedpoint_ir.memory`)."""

    batches: tuple[int, ...]
    seconds: tuple[float, ...]
    input_bytes: float
    shape: tuple[int, int, int]

    def __call__(self, b: float) -> float:
        """Seconds for b inputs: piecewise linear through the measurements, beyond them the last
        slope (at least the average cost per input of the last measured batch… never below it)."""
        xs, ys = self.batches, self.seconds
        if b <= xs[0]:
            return ys[0] * b / xs[0]
        for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
            if b <= x1:
                return y0 + (y1 - y0) * (b - x0) / (x1 - x0)
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else ys[0]
        return ys[-1] + max(slope, 0.0) * (b - xs[-1])

    def ratio(self, b: float) -> float:
        """c(b) / c(1)."""
        return self(b) / self(1)


def _prior_key(prior) -> str:
    params = sum(p.numel() for p in prior.parameters())
    inner = getattr(prior, "prior", None)
    name = type(prior).__name__ + (f"({type(inner).__name__})" if inner is not None else "")
    module = getattr(prior, "module", None) or getattr(inner, "module", None)
    return f"{name}:{type(module).__name__}:{params}"


def _cache_key(prior, shape, dtype, device) -> str:
    device = torch.device(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu:{os.cpu_count()}:{torch.get_num_threads()}threads"
    return f"{_prior_key(prior)}|{where}|{dtype}|{'x'.join(map(str, shape))}"


_DISK_DIR: Path | None = None


def enable_disk_cache(folder: str | os.PathLike | None = None) -> None:
    """Also keep measurements on disk, in ``folder`` (default: ``$XDG_CACHE_HOME/fixedpoint-ir``
    or ``~/.cache/fixedpoint-ir``). ``$FIXEDPOINT_IR_CACHE_DIR`` overrides it; set it empty to
    keep measurements in memory only. The command line enables this."""
    global _DISK_DIR
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    _DISK_DIR = Path(folder) if folder is not None else Path(base) / "fixedpoint-ir"


def _disk_cache() -> Path | None:
    folder = os.environ.get("FIXEDPOINT_IR_CACHE_DIR")
    if folder is not None:
        return Path(folder) / "batch_cost.json" if folder else None
    return None if _DISK_DIR is None else _DISK_DIR / "batch_cost.json"


def _load_disk(key: str) -> dict | None:
    path = _disk_cache()
    if path is None or not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text()).get(key)
        return entry if isinstance(entry, dict) else None
    except (OSError, ValueError):
        return None   # a broken cache is re-measured, never fatal


def _store_disk(key: str, entry: dict) -> None:
    path = _disk_cache()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[key] = entry
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except (OSError, ValueError):
        pass


def _batch_cost(entry: dict | None) -> BatchCost | None:
    if entry is None:
        return None
    try:
        return BatchCost(tuple(entry["batches"]), tuple(entry["seconds"]), float(entry["input_bytes"]),
                         tuple(entry["shape"]))
    except (KeyError, TypeError, ValueError):
        return None


_CALLS: dict[str, float] = {}


def _call_key(prior, image_shape, images: int, dtype, device) -> str:
    return f"{_cache_key(prior, image_shape, dtype, device)}|sequential call on {images}"


def record_sequential_call(prior, image_shape: tuple[int, int, int], images: int, seconds: float, *,
                           dtype=torch.float32, device="cpu") -> None:
    """Remember what one network call on ``images`` full-size images took in a sequential run
    (cached like the batch costs). :func:`choose` calibrates its probe-based predictions with it:
    a 64×64 probe scaled by pixels overestimated a 400×600 photo by 87 % on this CPU."""
    if not (math.isfinite(seconds) and seconds > 0):
        return
    key = _call_key(prior, image_shape, images, dtype, device)
    _CALLS[key] = float(seconds)
    _store_disk(key, {"seconds": float(seconds)})


def recorded_sequential_call(prior, image_shape, images: int, *, dtype=torch.float32, device="cpu") -> float | None:
    """The seconds :func:`record_sequential_call` kept for this prior, shape, batch, dtype and device."""
    key = _call_key(prior, image_shape, images, dtype, device)
    if key not in _CALLS:
        entry = _load_disk(key)
        seconds = None if entry is None else entry.get("seconds")
        if not isinstance(seconds, (int, float)) or not seconds > 0:
            return None
        _CALLS[key] = float(seconds)
    return _CALLS[key]


def measure_batch_cost(prior, shape: tuple[int, int, int], *, dtype=torch.float32, device="cpu",
                       largest: int = 32, enough=None, timer=time.perf_counter) -> BatchCost:
    """Time one network call on B = 1, 2, 4, … inputs of ``shape`` (cached; see the module docstring).

    One warm-up call (which also measures the activation memory of one input), then one timed
    call per B, stopping when c(B) ≥ ``NO_GAIN``·B·c(1), at ``largest``, or when
    ``enough(cost_so_far)`` says the question is settled. The prior's own ``max_batch`` is lifted
    during the measurement (c(B) is the cost of ONE call).
    """
    key = _cache_key(prior, shape, dtype, device)
    if key in _CACHE:
        return _CACHE[key]
    cached = _batch_cost(_load_disk(key))
    if cached is not None:
        _CACHE[key] = cached
        return cached
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((largest, *shape), generator=g, dtype=dtype, device=device)
    t = torch.full((largest,), prior.num_train_steps // 2, dtype=torch.long, device=device)
    saved = prior.max_batch
    batches, seconds = [], []
    try:
        prior.max_batch = None
        input_bytes = measure_input_bytes(prior, shape, dtype=dtype, device=device)   # also a warm-up
        with torch.no_grad():
            b = 1
            while b <= largest:
                sync()
                start = timer()
                prior.eps(x[:b], t[:b])
                sync()
                batches.append(b)
                seconds.append(max(timer() - start, 1e-9))
                if b > 1 and seconds[-1] >= NO_GAIN * b * seconds[0]:
                    break
                if enough is not None and enough(BatchCost(tuple(batches), tuple(seconds), 0.0, tuple(shape))):
                    break
                if b < largest:
                    b = min(2 * b, largest)
                else:
                    break
    finally:
        prior.max_batch = saved
    cost = BatchCost(tuple(batches), tuple(seconds), input_bytes, tuple(shape))
    _CACHE[key] = cost
    _store_disk(key, asdict(cost))
    return cost


def _interpolate_work(steps: int) -> tuple[float, float]:
    table = TRIANGULAR_WORK
    if steps <= table[0][0] or len(table) == 1:
        return table[0][1], table[0][2]
    for (t0, r0, n0), (t1, r1, n1) in zip(table, table[1:]):
        if steps <= t1:
            w = (steps - t0) / (t1 - t0)
            return r0 + w * (r1 - r0), n0 + w * (n1 - n0)
    return table[-1][1], table[-1][2]


def expected_rows(solver, steps: int) -> list[int]:
    """Rows evaluated (per image) in each round the solver is expected to take at T = ``steps``.

    A solver may say itself (``solver.expected_rows(steps)``). The triangular solver: the rounds
    and evaluations of :data:`TRIANGULAR_WORK`, all rows (or its window) in round 1, the rest
    spread evenly. Generic solvers (Picard, Anderson, Broyden): all T rows in each of their
    ``max_rounds`` (default T) rounds.
    """
    own = getattr(solver, "expected_rows", None)
    if callable(own):
        return [int(r) for r in own(steps)]
    limit = solver.max_rounds or steps
    if getattr(solver, "name", "") != "triangular":
        return [steps] * limit
    per_round, per_eval = _interpolate_work(steps)
    width = min(steps, getattr(solver, "window", None) or steps)
    rounds = max(1, min(limit, round(per_round * steps)))
    total = min(per_eval * steps, rounds * width)
    rest = max(0.0, total - width)
    later = [] if rounds == 1 else [max(1, min(width, round(rest / (rounds - 1))))] * (rounds - 1)
    return [width] + later


def _call(cost: BatchCost, inputs: float, chunk: float | None) -> float:
    """Seconds of ``Prior.eps`` on ``inputs``, split in chunks of at most ``chunk``."""
    if chunk is None or inputs <= chunk:
        return cost(inputs)
    full, rest = divmod(inputs, chunk)
    return full * cost(chunk) + (cost(rest) if rest > 0 else 0.0)


def predict_parallel(cost: BatchCost, rows_per_round: list[int], images: int, scale: float = 1.0,
                     chunk: float | None = None) -> float:
    """Seconds of the parallel solve: one call per round on rows × images inputs (each ``scale``
    probe-shaped inputs; split in chunks of ``chunk``), plus :data:`ROUND_OVERHEAD`."""
    return sum(_call(cost, r * images * scale, chunk) for r in rows_per_round) * (1 + ROUND_OVERHEAD)


def predict_sequential(cost: BatchCost, steps: int, images: int, scale: float = 1.0,
                       chunk: float | None = None) -> float:
    """Seconds of the sequential chain: T calls on the N images."""
    return steps * _call(cost, images * scale, chunk)


@dataclass(frozen=True)
class Choice:
    """What ``solver="auto"`` runs, the two predictions (seconds) and why."""

    mode: str            # "parallel" or "sequential"
    parallel_s: float
    sequential_s: float
    reason: str
    measured_at: str = ""

    def describe(self) -> str:
        return (f"{self.mode} (auto: predicted parallel {self.parallel_s:.3g} s vs sequential "
                f"{self.sequential_s:.3g} s: {self.reason})")


def choose(prior, solver, *, steps: int, images: int, image_shape: tuple[int, int, int],
           dtype=torch.float32, device="cpu", max_inputs: int | None = None,
           measure=None) -> Choice:
    """Parallel or sequential, whichever is predicted faster (ties go to sequential: it is exact
    and needs less memory).

    Fully convolutional priors on a large image are first measured at a 64×64 probe: batches
    only get relatively dearer as inputs grow, so if the probe already says sequential that is
    the answer; otherwise the image's own size is measured. A probe-based prediction is scaled
    by what the last sequential run at this size measured per call (:func:`record_sequential_call`;
    ``Sampler`` records every sequential run), when there was one. ``max_inputs``, the memory plan's
    chunk (network inputs per call), caps the batches measured at that size and splits the
    predicted calls. ``measure`` is injectable (tests use fake cost curves).
    """
    measure = measure or measure_batch_cost
    probe = probe_shape(prior, image_shape)
    rows = expected_rows(solver, steps)

    def run(shape, scale, limit=None):
        needed = max(rows) * images * scale
        cap = max(1, min(32, math.ceil(needed), limit or 32))

        def settled(cost: BatchCost) -> bool:   # even if larger batches cost no more: sequential
            flat = sum(cost(min(r * images * scale, cost.batches[-1])) for r in rows)
            return flat >= predict_sequential(cost, steps, images, scale)

        return measure(prior, shape, dtype=dtype, device=device, largest=cap, enough=settled)

    unit = input_scale(prior, image_shape)          # probe-shaped inputs per network input
    scale = inputs_per_image(prior, image_shape) * unit
    chunk = None if max_inputs is None else max_inputs * unit
    cost = run(probe, scale)
    where = f"{probe[1]}x{probe[2]}"
    if tuple(probe) != tuple(image_shape) and unit > 1 \
            and predict_parallel(cost, rows, images, scale, chunk) < predict_sequential(cost, steps, images, scale, chunk):
        scale, chunk = float(inputs_per_image(prior, image_shape)), max_inputs
        cost = run(tuple(image_shape), scale, max_inputs)
        where = f"{image_shape[1]}x{image_shape[2]}"
    parallel = predict_parallel(cost, rows, images, scale, chunk)
    sequential = predict_sequential(cost, steps, images, scale, chunk)
    batch = cost(rows[0] * images * scale) / cost(images * scale)
    why = (f"a batch of {rows[0]} states costs {batch:.1f}x one, {len(rows)} rounds and "
           f"{sum(rows)} evaluations expected vs {steps}")
    full_call = recorded_sequential_call(prior, image_shape, images, dtype=dtype, device=device) \
        if tuple(cost.shape) != tuple(image_shape) else None
    if full_call is not None:   # the probe scaled by pixels, calibrated by a full-size run
        factor = full_call / _call(cost, images * scale, chunk)
        parallel, sequential = parallel * factor, sequential * factor
        where += f", calibrated by a sequential run at {image_shape[1]}x{image_shape[2]} (x{factor:.2f})"
    mode = "parallel" if parallel < sequential else "sequential"
    return Choice(mode, parallel, sequential, why, where)
