"""Several processes and devices per solver round, with ``torch.distributed`` (NCCL on GPUs, gloo on CPU).

Distribution happens at the :class:`~fixedpoint_ir.priors.Prior` level, so the single-process API,
the chain and every solver backend stay as they are:

    from fixedpoint_ir import Sampler
    from fixedpoint_ir.distributed import distribute, init_from_env

    info = init_from_env()                       # torchrun's env vars; gloo on CPU, NCCL on CUDA
    sampler = distribute(Sampler(prior.to(info.device), operator, solver="anderson", steps=100))
    result = sampler.restore(y.to(info.device), generator=g)     # same call on every rank

A complete script that runs as is with and without ``torchrun`` (``distribute`` returns the
sampler unchanged when there is no process group): ``examples/restore_distributed.py``.

Design (issue 8):

- A round evaluates ε on the whole batch u of shape (T·N, C, H, W) (T states × N images) in one
  call ``prior.eps(u, t)``. :class:`DistributedPrior` splits that batch into ``world_size``
  contiguous slices (``torch.tensor_split``: uneven counts differ by at most one row, an empty slice
  is fine), evaluates its own slice with the wrapped prior (still chunked by that prior's
  ``max_batch``, which is therefore a per-rank limit), and all-gathers the slices (padded to the
  largest slice and trimmed) so that **every rank receives the full ε batch**.
- The cheap part — the replay of the chain, the residuals, the solver's decisions (Anderson
  weights, stopping, freezing) — then runs identically on every rank. We chose this over "replay on
  rank 0 and broadcast z" because it needs no second collective, keeps no rank idle while another
  replays, and keeps the solver state consistent by construction: the ranks start from the same
  (x_T, ξ, y) (draw them with the same seed, or on rank 0 and broadcast), receive bit-identical ε,
  and run the same deterministic code on the same kind of device. The result is available on
  every rank; usually only rank 0 writes it.
- Before the big gather, the ranks exchange one small status vector per round: whether the local
  evaluation succeeded (so an exception in one rank's network — a bad input, out of memory — ends
  the round on *every* rank with an error naming that rank, instead of a hang), the batch size, and
  a checksum of the round's inputs (x, t). With ``check=True`` (the default) the checksums must
  agree, else :class:`RankMismatchError`: this catches ranks that were given different x_T / noise /
  y (for instance an unseeded ``restore(y)``, which draws x_T from each process's own global RNG)
  or whose solver states drifted apart (different code or device types), which would otherwise give
  silently wrong images or mismatched collectives. It costs two reductions over the round's inputs
  (negligible next to the network); ``check=False`` or ``FIXEDPOINT_IR_DIST_CHECK=0`` turns it off.
- A rank that dies (killed, crashed outside the network call) closes its connections, and a rank
  that hangs stops answering; the others then fail in the next collective — at once, or after the
  process group's ``timeout`` (:func:`init_from_env` sets one) — with :class:`DistributedRoundError`.
  Under ``torchrun`` the elastic agent then stops the remaining workers.

``max_batch``, ``alphas_cumprod`` and the device follow the wrapped prior. The network-evaluation
count of a :class:`~fixedpoint_ir.chain.Chain` stays the logical one (T per image per round);
:attr:`DistributedPrior.local_rows` counts the rows this rank actually evaluated and
:attr:`DistributedPrior.calls` the batched calls (one per solver round; error messages name it).
"""
from __future__ import annotations

import atexit
import copy
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .priors.base import Prior

__all__ = [
    "DistributedPrior", "DistInfo", "DistributedRoundError", "RemoteRankError", "RankMismatchError",
    "distribute", "distributed_sampler", "restore_batch", "shard", "init_from_env", "shutdown", "split_sizes", "assert_ranks_agree",
    "DEFAULT_TIMEOUT_S",
]

#: Default timeout (seconds) of a collective: how long a rank waits for a dead or hung peer.
DEFAULT_TIMEOUT_S = 300.0

_TIMEOUT_ENV = "FIXEDPOINT_IR_DIST_TIMEOUT"
_CHECK_ENV = "FIXEDPOINT_IR_DIST_CHECK"


class DistributedRoundError(RuntimeError):
    """A collective of a solver round failed: another rank crashed, hung past the timeout, or ran
    different code (mismatched collectives)."""


class RemoteRankError(DistributedRoundError):
    """Another rank raised while evaluating its slice of the round; ``ranks`` lists them."""

    def __init__(self, message: str, ranks: list[int]):
        super().__init__(message)
        self.ranks = ranks


class RankMismatchError(DistributedRoundError):
    """``check=True`` found ranks whose round inputs differ (their solver states drifted apart)."""


# --------------------------------------------------------------------------------------------------
# Process-group setup

@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank, its device and the backend
    (``None`` when running as a single process without a process group)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def _timeout_seconds(timeout: float | datetime.timedelta | None) -> float:
    if timeout is None:
        env = os.environ.get(_TIMEOUT_ENV)
        timeout = float(env) if env else DEFAULT_TIMEOUT_S
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    timeout = float(timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    return timeout


def init_from_env(backend: str | None = None, timeout: float | datetime.timedelta | None = None,
                  device: str | torch.device | None = None) -> DistInfo:
    """Initialise the default process group from the variables ``torchrun`` sets.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without
    ``WORLD_SIZE`` (a plain ``python script.py``) nothing is initialised and a single-process
    :class:`DistInfo` is returned, so the same script runs with and without ``torchrun``. When a
    default group already exists, it is described, not re-created.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available (and ``device`` is
            not a CPU), gloo otherwise.
        timeout: seconds (or a timedelta) a collective waits for the other ranks before failing;
            default ``$FIXEDPOINT_IR_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`. It must exceed the
            longest time between two rounds on any rank (one slice of network evaluations plus the
            replay); it bounds how long a hung rank can stall the others. With NCCL the timeout is
            enforced by the watchdog (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default), which
            tears the process down.
        device: the device of this rank; default ``cuda:LOCAL_RANK`` with NCCL (made the current
            CUDA device), CPU with gloo.
    """
    timeout_s = _timeout_seconds(timeout)
    world_size = _env_int("WORLD_SIZE")
    if dist.is_available() and dist.is_initialized():
        backend_now = dist.get_backend()
        local_rank = _env_int("LOCAL_RANK", 0)
        dev = _pick_device(backend_now, local_rank, device)
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend_now)
    if world_size is None:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return DistInfo(0, 1, 0, dev, None)
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    rank = _env_int("RANK")
    if rank is None:
        raise ValueError("WORLD_SIZE is set but RANK is not; launch with torchrun "
                         "(or set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} must lie in [0, WORLD_SIZE={world_size})")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"{name} is not set; launch with torchrun or set it "
                             "(MASTER_ADDR=127.0.0.1 for one machine)")
    local_rank = _env_int("LOCAL_RANK", rank)
    if backend is None:
        wants_cpu = device is not None and torch.device(device).type == "cpu"
        backend = "nccl" if torch.cuda.is_available() and not wants_cpu else "gloo"
    backend = backend.lower()
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("backend 'nccl' needs CUDA; use backend='gloo' on CPU")
    dev = _pick_device(backend, local_rank, device)
    if dev.type == "cuda":
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA "
                               "devices are visible; use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    # Tear the group down at exit, also after an error (an abandoned gloo group can abort the
    # interpreter on exit and hide the real exit status).
    atexit.register(shutdown)
    return DistInfo(rank, world_size, local_rank, dev, backend)


def _pick_device(backend: str, local_rank: int, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if backend == "nccl":
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def shutdown() -> None:
    """Destroy the default process group if there is one (also registered to run at exit)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a broken group (a peer died) may fail to tear down; exiting anyway
            pass


# --------------------------------------------------------------------------------------------------
# The distributed prior

def split_sizes(total: int, parts: int) -> list[int]:
    """Row counts of ``torch.tensor_split(range(total), parts)``: contiguous, the first
    ``total % parts`` slices one row longer."""
    if parts < 1:
        raise ValueError(f"parts must be positive, got {parts}")
    base, extra = divmod(int(total), parts)
    return [base + (1 if r < extra else 0) for r in range(parts)]


def _checksum(x: Tensor, t: Tensor) -> Tensor:
    """Three float64 numbers that differ when (x, t) differ in practice: the sum of the per-image
    sums, the same weighted by the image index (so a swap of images changes it), and Σ (t+1)·k.
    No copy of x is made (the sums accumulate in float64)."""
    n = x.shape[0] if x.dim() else 1
    rows = x.detach().reshape(n, -1).sum(dim=1, dtype=torch.float64) if x.numel() \
        else torch.zeros(n, dtype=torch.float64, device=x.device)
    k = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    tt = t.detach().reshape(-1).to(device=x.device, dtype=torch.float64)
    kt = torch.arange(1, tt.numel() + 1, dtype=torch.float64, device=x.device)
    return torch.stack([rows.sum(), (rows * k).sum(), ((tt + 1) * kt).sum()])


class DistributedPrior(Prior):
    """A :class:`Prior` whose ``eps`` spreads each batch over the ranks of a process group.

    Every rank must call :meth:`eps` with the same (x, t) — which holds when every rank runs the
    same sampler on the same inputs — and every rank gets the full result. See the module
    docstring for the design.

    Args:
        prior: the wrapped prior (on this rank's device; same weights on every rank).
        group: the process group (default: the default group; it must be initialised, see
            :func:`init_from_env`). A group that does not contain this rank is an error.
        check: compare a checksum of each round's inputs across ranks and raise
            :class:`RankMismatchError` when they differ (two reductions over the inputs per round).
            Default: on, unless ``$FIXEDPOINT_IR_DIST_CHECK`` is ``0`` / ``false`` / ``off``.
    """

    def __init__(self, prior: Prior, group: dist.ProcessGroup | None = None, check: bool | None = None):
        if not isinstance(prior, Prior):
            raise TypeError(f"prior must be a fixedpoint_ir Prior, got {type(prior).__name__}")
        if isinstance(prior, DistributedPrior):
            raise TypeError("this prior is already distributed")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialised: call "
                               "fixedpoint_ir.distributed.init_from_env() first (under torchrun)")
        super().__init__(prior.alphas_cumprod, None)
        self.surrogate = prior.surrogate  # the same data, the same free model
        self.prior = prior
        self.group = group
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the given process group")
        self.world_size = dist.get_world_size(group)
        self.backend = dist.get_backend(group)
        if check is None:
            check = os.environ.get(_CHECK_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
        self.check = bool(check)
        self.calls = 0
        self.local_rows = 0

    # max_batch is the wrapped prior's (a per-rank chunk size).
    @property
    def max_batch(self) -> int | None:
        inner = self._modules.get("prior") if "_modules" in self.__dict__ else None
        return inner.max_batch if inner is not None else None

    @max_batch.setter
    def max_batch(self, value: int | None) -> None:
        inner = self._modules.get("prior") if "_modules" in self.__dict__ else None
        if inner is not None:
            inner.max_batch = value

    def predict_eps(self, x: Tensor, t: Tensor) -> Tensor:
        """One chunk on this rank only (no communication)."""
        return self.prior.predict_eps(x, t)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, world_size={self.world_size}, backend={self.backend}, check={self.check}"

    # -- the round ---------------------------------------------------------------------------------
    def _comm_device(self, x: Tensor) -> torch.device:
        # NCCL talks CUDA tensors; gloo's all_gather wants CPU tensors.
        return x.device if self.backend == "nccl" else torch.device("cpu")

    def _collective(self, what: str, fn):
        try:
            return fn()
        except DistributedRoundError:
            raise
        except Exception as err:  # gloo: connection closed / timed out; NCCL: DistBackendError
            raise DistributedRoundError(
                f"rank {self.rank} of {self.world_size}: {what} of network call {self.calls} failed; "
                f"another rank probably crashed, hung past the timeout, or ran different code "
                f"({type(err).__name__}: {err})") from err

    def eps(self, x: Tensor, t) -> Tensor:
        """ε for the whole batch x (N, C, H, W): this rank's contiguous slice, then all-gather."""
        t = self.check_input(x, t)
        self.calls += 1
        n, world = x.shape[0], self.world_size
        sizes = split_sizes(n, world)
        start = sum(sizes[: self.rank])
        stop = start + sizes[self.rank]
        comm = self._comm_device(x)

        local, error = None, None
        try:
            if stop > start:
                local = self.prior.eps(x[start:stop], t[start:stop])
                if local.shape != x[start:stop].shape:
                    raise ValueError(f"the prior returned shape {tuple(local.shape)} for a slice of "
                                     f"shape {tuple(x[start:stop].shape)}; ε must have the input's shape")
                local = local.to(x.dtype)
            self.local_rows += stop - start
        except Exception as err:  # reported to every rank below, then re-raised here
            error = err

        # Small exchange: [ok, n, checksum(3)] per rank.
        status = torch.zeros(5, dtype=torch.float64, device=comm)
        status[0] = 0.0 if error is None else 1.0
        status[1] = float(n)
        if self.check:
            status[2:] = _checksum(x, t).to(comm)
        gathered = [torch.empty_like(status) for _ in range(world)]
        self._collective("exchanging the round status",
                         lambda: dist.all_gather(gathered, status, group=self.group))
        table = torch.stack(gathered).cpu()
        failed = [r for r in range(world) if table[r, 0] != 0]
        if failed:
            # Every rank takes part in the message exchange, then the failing ones re-raise.
            messages = self._collective("reporting the failure", lambda: self._gather_messages(error))
            if error is not None:
                raise error
            detail = "; ".join(f"rank {r}: {messages[r]}" for r in failed)
            raise RemoteRankError(f"rank {self.rank} of {world}: network call {self.calls} failed on "
                                  f"rank(s) {failed} while evaluating the network: {detail}", failed)
        if bool((table[:, 1] != n).any()):
            raise RankMismatchError(f"rank {self.rank}: the ranks called eps with different batch sizes "
                                    f"{table[:, 1].long().tolist()} in network call {self.calls}; every rank "
                                    "must run the same sampler on the same inputs")
        if self.check and not bool((table[:, 2:] == table[0, 2:]).all()):
            raise RankMismatchError(
                f"rank {self.rank}: the inputs of network call {self.calls} differ between ranks "
                f"(checksums {table[:, 2:].tolist()}); the ranks' solver states drifted apart — same "
                "seed / x_T / noise / y on every rank? deterministic kernels? same device type?")

        # The big exchange: every rank's slice, padded to the largest one.
        longest = max(sizes)
        if longest == 0:
            return x.new_empty(x.shape)
        buf = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=comm)
        if local is not None:
            buf[: stop - start].copy_(local)
        parts = [torch.empty_like(buf) for _ in range(world)]
        self._collective("gathering the ε slices",
                         lambda: dist.all_gather(parts, buf, group=self.group))
        out = torch.cat([p[:s] for p, s in zip(parts, sizes)])
        return out.to(x.device)

    def _gather_messages(self, error: BaseException | None) -> list[str]:
        messages: list = [None] * self.world_size
        text = "" if error is None else f"{type(error).__name__}: {error}"
        dist.all_gather_object(messages, text, group=self.group)
        return messages


def distribute(sampler, group: dist.ProcessGroup | None = None, check: bool | None = None):
    """A shallow copy of ``sampler`` whose prior is a :class:`DistributedPrior` (the original is
    left untouched).

    The copy's ``restore`` / ``sample`` / ``sequential`` must then be called on every rank of the
    group with the same arguments — in particular the same x_T and noise: pass a
    ``torch.Generator`` seeded identically on every rank (or x_T / noise broadcast from rank 0).
    Each rank gets the full result. ``check``: see :class:`DistributedPrior`.

    Without a process group (a plain ``python script.py``, where :func:`init_from_env` initialises
    nothing) and no ``group`` given, the sampler is returned unchanged, so the same script runs
    with and without ``torchrun`` (``examples/restore_distributed.py``).
    """
    if isinstance(sampler.prior, DistributedPrior):
        return sampler
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return sampler
    out = copy.copy(sampler)
    out.prior = DistributedPrior(sampler.prior, group=group, check=check)
    return out


#: Alias of :func:`distribute`.
distributed_sampler = distribute


def shard(items, group: dist.ProcessGroup | None = None):
    """This rank's contiguous share of ``items`` (a sequence), split like :func:`split_sizes`.

    For data parallelism over *images* (many inputs, each rank restores its own share with a plain,
    undistributed sampler: no communication at all), as opposed to :func:`distribute`, which
    spreads the states of every round of the same images over the ranks (latency of one or a few
    images, or a round that does not fit on one device). Without a process group: all items.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return items
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    sizes = split_sizes(len(items), world)
    start = sum(sizes[:rank])
    return items[start:start + sizes[rank]]


def restore_batch(sampler, ys, seeds, **restore_kwargs):
    """Restore several observations in one batch, each with its own seed, reproducibly.

    Image i gets exactly the x_T and noise that ``sampler.restore(ys[i:i+1],
    generator=torch.Generator(device).manual_seed(seeds[i]))`` would draw (the sampler's own
    drawing code is used, image by image), so the result of an image does not depend on which
    other images share its batch, nor on the number of ranks.

    Args:
        sampler: a :class:`~fixedpoint_ir.Sampler` (plain or :func:`distribute`-d).
        ys: observations, a tensor (B, ...) or a sequence of B tensors of one shape, each (...) or
            (1, ...).
        seeds: B ints, or one int s (image i then gets s + i).
        restore_kwargs: passed on to ``sampler.restore`` (``init``, ``callback``, …; not ``x_T``,
            ``noise``, ``generator``, which this function sets).

    Returns the :class:`~fixedpoint_ir.Result` of the batch (``image`` has shape (B, C, H, W)).
    """
    for name in ("x_T", "noise", "generator", "start_step", "x_init"):
        if name in restore_kwargs:
            raise ValueError(f"restore_batch draws x_T and noise per image; {name!r} is not accepted "
                             "(call sampler.restore directly)")
    if isinstance(ys, Tensor):
        batch = list(ys.split(1))
    else:
        batch = [y if y.dim() and y.shape[0] == 1 and y.dim() > 1 else y.unsqueeze(0) for y in ys]
    if not batch:
        raise ValueError("ys is empty")
    if any(y.shape != batch[0].shape for y in batch):
        raise ValueError(f"all observations of a batch must have one shape, got "
                         f"{sorted({tuple(y.shape[1:]) for y in batch})}; group them by shape")
    if isinstance(seeds, int):
        seeds = [seeds + i for i in range(len(batch))]
    seeds = [int(s) for s in seeds]
    if len(seeds) != len(batch):
        raise ValueError(f"{len(batch)} observations but {len(seeds)} seeds")
    x_T, noise = [], []
    for y, seed in zip(batch, seeds):
        chain = sampler.chain(y, generator=torch.Generator(device=y.device).manual_seed(seed))
        x_T.append(chain.x_T)
        noise.append(chain.noise)
    return sampler.restore(torch.cat(batch), x_T=torch.cat(x_T), noise=torch.cat(noise, dim=1),
                           **restore_kwargs)


def assert_ranks_agree(x: Tensor, group: dist.ProcessGroup | None = None, name: str = "tensor") -> None:
    """Raise :class:`RankMismatchError` unless ``x`` has the same checksum on every rank (collective)."""
    world = dist.get_world_size(group)
    comm = x.device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    mine = torch.cat([torch.tensor([float(x.numel())], dtype=torch.float64),
                      _checksum(x.reshape(1, -1) if x.dim() < 2 else x, torch.zeros(0)).cpu()]).to(comm)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    table = torch.stack(gathered).cpu()
    if not bool((table == table[0]).all()):
        raise RankMismatchError(f"{name} differs between ranks (checksums {table.tolist()})")
