"""Distributed rounds (issue 8): 2 gloo processes on CPU give the single-process result, and a
failing rank ends the run with a clear error in bounded time instead of a hang.

Each launch starts two independent Python processes (this file run as a script) with the variables
torchrun would set, on 127.0.0.1 only; every process writes its results, or its error, to a folder
that the test then reads. The single-process reference is computed in the pytest process.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from fixedpoint_ir import GaussianMixturePrior, ModulePrior, Sampler
from fixedpoint_ir.backends import Anderson, Picard
from fixedpoint_ir.distributed import split_sizes
from fixedpoint_ir.operators import AveragePool

DTYPE = torch.float64
LAUNCH_TIMEOUT_S = 60.0   # a launch that takes longer than this is a hang
INIT_TIMEOUT_S = 60.0       # rendezvous and the equality runs: generous (the machine may be loaded)
COLLECTIVE_TIMEOUT_S = 4.0  # the failure scenarios run on a sub-group with this timeout

# --------------------------------------------------------------------------------------------------
# Problems, built identically in every process from fixed seeds.


class TinyConvEps(nn.Module):
    """A random conv ε-network with a timestep input (fixed seed)."""

    def __init__(self, channels: int = 3, width: int = 8):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        self.temb = nn.Linear(1, width)

    def forward(self, x, t):
        h = torch.tanh(self.inp(x) + self.temb(t.to(x.dtype)[:, None] / 1000.0)[:, :, None, None])
        h = torch.tanh(self.mid(h))
        return 0.5 * self.out(h) + 0.3 * x


def make_prior(kind: str, max_batch: int | None = None):
    if kind == "gmm":
        return GaussianMixturePrior(mu=0.5, var=0.05, max_batch=max_batch)
    if kind == "conv":
        torch.manual_seed(1234)
        return ModulePrior(TinyConvEps().to(DTYPE).eval(), max_batch=max_batch)
    raise ValueError(kind)


#: name -> (prior, operator, solver, steps T, images N, nw, mode, max_batch, closed_form)
CASES = {
    # uneven split: T = 5 rows x N = 1 image over 2 ranks -> 3 + 2 rows
    "gmm-ddim-picard": ("gmm", None, "picard", 5, 1, 0.0, "parallel", None, False),
    "gmm-pool-picard": ("gmm", "pool", "picard", 5, 1, 0.3, "parallel", None, False),
    "gmm-ddim-anderson": ("gmm", None, "anderson", 5, 1, 0.0, "parallel", None, False),
    "gmm-pool-anderson": ("gmm", "pool", "anderson", 5, 1, 0.0, "parallel", None, False),
    "gmm-pool-closed": ("gmm", "pool", "picard", 5, 1, 0.3, "parallel", None, True),
    # a random conv net; 7 rows x 2 images = 14 rows -> 7 + 7, each rank chunked by max_batch = 3
    "conv-ddim-picard": ("conv", None, "picard", 7, 2, 0.0, "parallel", 3, False),
    "conv-pool-picard": ("conv", "pool", "picard", 5, 1, 0.0, "parallel", None, False),
    "conv-ddim-anderson": ("conv", None, "anderson", 5, 1, 0.0, "parallel", None, False),
    "conv-pool-anderson": ("conv", "pool", "anderson", 7, 2, 0.3, "parallel", 3, False),
    # the sequential sampler: one row per call over 2 ranks -> rank 1 holds an empty slice
    "gmm-pool-sequential": ("gmm", "pool", "picard", 5, 1, 0.0, "sequential", None, False),
}


def make_solver(name: str):
    if name == "picard":
        return Picard(tol=0.0)                   # T rounds: exact
    return Anderson(tol=1e-9, max_rounds=6)       # stops on the round limit, mid-way


def run_case(name: str, wrap=None, callback=None):
    """Run one case; ``wrap`` turns the sampler into a distributed one."""
    prior_kind, op, solver, steps, n, nw, mode, max_batch, closed = CASES[name]
    operator = AveragePool(2) if op == "pool" else None
    sampler = Sampler(make_prior(prior_kind, max_batch), operator, make_solver(solver), steps=steps,
                      nw=nw, closed_form=closed)
    if wrap is not None:
        sampler = wrap(sampler)
    g = torch.Generator().manual_seed(7)
    shape = (3, 8, 8)
    x0 = torch.randn((n, *shape), generator=g, dtype=DTYPE)
    y = operator.A(x0) if operator is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Anderson stops on its round limit
        if mode == "sequential":
            res = sampler.sequential(y, image_shape=shape, num_images=n, generator=g)
        elif operator is None:
            res = sampler.sample(shape, n, generator=g, callback=callback)
        else:
            res = sampler.restore(y, generator=g, callback=callback)
    return res


# --------------------------------------------------------------------------------------------------
# Launching two ranks on 127.0.0.1.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def launch(scenario: str, out: Path, world: int = 2, timeout: float = LAUNCH_TIMEOUT_S):
    """Start ``world`` ranks of this file; returns (return codes, stderr texts, seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    procs = []
    start = time.monotonic()
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                   GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                   PYTHONUNBUFFERED="1")
        log = open(out / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, __file__, scenario, str(out)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, text=True))
        log.close()
    # Like torchrun's agent: once a rank has failed, the others get a grace period, then are killed.
    grace, first_failure = COLLECTIVE_TIMEOUT_S + 2.0, None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if now - start > timeout:
            _kill(procs)
            pytest.fail(f"scenario {scenario!r} did not finish within {timeout:.0f} s (hang)")
        if first_failure is None and any(p.poll() not in (None, 0) for p in procs):
            first_failure = now
        if first_failure is not None and now - first_failure > grace:
            _kill(procs)
            break
        time.sleep(0.05)
    codes = [p.returncode for p in procs]
    errs = [(out / f"rank{rank}.log").read_text() for rank in range(world)]
    return codes, errs, time.monotonic() - start


# --------------------------------------------------------------------------------------------------
# Worker side (``python tests/test_distributed.py <scenario> <out>``).


def _worker(scenario: str, out: Path) -> None:
    torch.set_num_threads(1)
    from fixedpoint_ir.distributed import assert_ranks_agree, distribute, init_from_env, shutdown

    import datetime

    import torch.distributed as dist

    info = init_from_env(timeout=INIT_TIMEOUT_S)
    assert info.backend == "gloo" and info.world_size == 2, info
    rank = info.rank
    # A group of both ranks with a short timeout, for the failure scenarios.
    short = dist.new_group(ranks=[0, 1], timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    t0 = time.monotonic()
    try:
        if scenario == "equal":
            results = {}
            for name in CASES:
                res = run_case(name, wrap=distribute)  # check=True by default
                assert_ranks_agree(res.states, name=name)
                results[name] = dict(image=res.image, states=res.states, rounds=res.rounds,
                                     nfe=res.nfe, status=res.status.value)
            # Ranks given different x_T (an unseeded run, say) stop at once, on every rank.
            try:
                sampler = distribute(Sampler(make_prior("gmm"), None, Picard(tol=0.0), steps=5))
                sampler.sample((3, 8, 8), 1, generator=torch.Generator().manual_seed(100 + rank))
                results["mismatch"] = "no error"
            except Exception as err:  # noqa: BLE001
                results["mismatch"] = f"{type(err).__name__}: {err}"
            torch.save(results, out / f"rank{rank}.pt")
        elif scenario == "raise_in_network":
            # rank 1's network raises in its third call; rank 0 must learn about it.
            def wrap(s):
                d = distribute(s, group=short)
                if rank == 1:
                    inner, calls = d.prior.prior, [0]
                    original = inner.predict_eps

                    def failing(x, t):
                        calls[0] += 1
                        if calls[0] == 3:
                            raise FloatingPointError("simulated failure in rank 1's network")
                        return original(x, t)
                    inner.predict_eps = failing
                return d
            run_case("gmm-pool-picard", wrap=wrap)
        elif scenario in ("raise_mid_run", "hang"):
            # rank 1 raises (its process dies) or hangs in the middle of the run, outside eps.
            def callback(info_round):
                if rank == 1 and info_round.round == 2:
                    if scenario == "hang":
                        time.sleep(300)
                    raise RuntimeError("simulated crash of rank 1 mid-run")
            run_case("gmm-pool-picard", wrap=lambda s: distribute(s, group=short), callback=callback)
        else:
            raise ValueError(scenario)
    except BaseException as err:
        (out / f"rank{rank}.error.json").write_text(json.dumps(
            dict(type=type(err).__name__, message=str(err), seconds=time.monotonic() - t0)))
        raise
    shutdown()


# --------------------------------------------------------------------------------------------------
# Tests.


def test_split_sizes_cover_uneven_counts():
    assert split_sizes(5, 2) == [3, 2]
    assert split_sizes(1, 2) == [1, 0]
    assert split_sizes(0, 3) == [0, 0, 0]
    for total in range(12):
        for parts in range(1, 5):
            sizes = split_sizes(total, parts)
            ref = [len(c) for c in torch.tensor_split(torch.arange(total), parts)]
            assert sizes == ref and sum(sizes) == total


def test_distributed_prior_needs_a_process_group():
    from fixedpoint_ir.distributed import DistributedPrior, init_from_env

    if not torch.distributed.is_initialized():
        with pytest.raises(RuntimeError, match="init_from_env"):
            DistributedPrior(make_prior("gmm"))
    env = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK") if k in os.environ}
    try:
        info = init_from_env()  # no torchrun variables: a single process, nothing initialised
        assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    finally:
        os.environ.update(env)


@pytest.fixture
def world_of_one():
    """A gloo process group of one rank inside the pytest process (destroyed afterwards)."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_distributed_prior_wraps_without_changing_the_api(world_of_one):
    from fixedpoint_ir.distributed import DistributedPrior, distribute

    inner = make_prior("conv", max_batch=4)
    prior = DistributedPrior(inner)
    assert prior.max_batch == 4 and prior.num_train_steps == inner.num_train_steps
    assert torch.equal(prior.alphas_cumprod, inner.alphas_cumprod)
    prior.max_batch = 2
    assert inner.max_batch == 2  # a per-rank chunk size, forwarded to the wrapped prior
    x = torch.randn(5, 3, 8, 8, dtype=DTYPE)
    t = torch.tensor([999, 800, 600, 400, 10])
    assert torch.equal(prior.eps(x, t), inner.eps(x, t))
    assert prior.eps(x, 500).shape == x.shape  # scalar t
    with pytest.raises(ValueError, match="N, C, H, W"):
        prior.eps(x[0], t)
    with pytest.raises(TypeError, match="already distributed"):
        DistributedPrior(prior)
    sampler = Sampler(inner, AveragePool(2), "picard", steps=4)
    dsampler = distribute(sampler)
    assert dsampler is not sampler and sampler.prior is inner
    assert isinstance(dsampler.prior, DistributedPrior) and distribute(dsampler) is dsampler
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    y = AveragePool(2).A(torch.randn(1, 3, 8, 8, dtype=DTYPE))
    a, b = sampler.restore(y, generator=g1), dsampler.restore(y, generator=g2)
    assert torch.equal(a.states, b.states) and a.nfe == b.nfe
    assert dsampler.prior.local_rows == 4 * 4  # T rows per round, T rounds, all on this rank


def test_two_gloo_ranks_equal_single_process(tmp_path):
    codes, errs, _ = launch("equal", tmp_path)
    assert codes == [0, 0], "\n".join(e[-3000:] for e in errs)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in CASES:
        ref = run_case(name)
        for r, results in enumerate(ranks):
            got = results[name]
            assert got["rounds"] == ref.rounds and got["status"] == ref.status.value, (name, r)
            assert got["nfe"] == ref.nfe, (name, r)
            err = (got["states"] - ref.states).abs().max().item()
            assert err <= 1e-10, f"{name}: rank {r} differs from one process by {err:.3g}"
        # the ranks agree bit for bit (identical replay on identical ε)
        assert torch.equal(ranks[0][name]["states"], ranks[1][name]["states"]), name
    for results in ranks:
        assert results["mismatch"].startswith("RankMismatchError: ") and "round 1" in results["mismatch"]


def _error(tmp_path: Path, rank: int) -> dict:
    path = tmp_path / f"rank{rank}.error.json"
    assert path.exists(), f"rank {rank} ended without an error"
    return json.loads(path.read_text())


def test_error_in_one_ranks_network_reaches_every_rank(tmp_path):
    codes, errs, seconds = launch("raise_in_network", tmp_path)
    assert codes[0] != 0 and codes[1] != 0, errs
    e0, e1 = _error(tmp_path, 0), _error(tmp_path, 1)
    assert e1["type"] == "FloatingPointError"
    assert e0["type"] == "RemoteRankError"
    assert "rank(s) [1]" in e0["message"] and "simulated failure" in e0["message"]
    assert e0["seconds"] < COLLECTIVE_TIMEOUT_S  # no need to wait for a timeout


@pytest.mark.parametrize("scenario", ["raise_mid_run", "hang"])
def test_crash_or_hang_of_one_rank_ends_the_run(tmp_path, scenario):
    codes, errs, seconds = launch(scenario, tmp_path, timeout=LAUNCH_TIMEOUT_S)
    assert codes[0] != 0, errs[0][-3000:]
    e0 = _error(tmp_path, 0)
    assert e0["type"] == "DistributedRoundError", e0
    assert "another rank probably crashed" in e0["message"]
    assert e0["seconds"] < COLLECTIVE_TIMEOUT_S + 20.0, e0  # bounded by the collective timeout
    assert codes[1] != 0


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
