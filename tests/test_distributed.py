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

from fixedpoint_ir import GaussianMixturePrior, ModulePrior, Sampler, get_solver
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
    # the structure-aware solver: evaluates subsets of (row, image) entries -> varying batch sizes
    "gmm-pool-triangular": ("gmm", "pool", "triangular", 7, 2, 0.0, "parallel", None, False),
    "conv-ddim-triangular": ("conv", None, "triangular", 7, 2, 0.3, "parallel", 3, False),
    # the sequential sampler: one row per call over 2 ranks -> rank 1 holds an empty slice
    "gmm-pool-sequential": ("gmm", "pool", "picard", 5, 1, 0.0, "sequential", None, False),
}


def make_solver(name: str):
    if name == "picard":
        return Picard(tol=0.0)                   # T rounds: exact
    if name == "triangular":
        return get_solver("triangular", tol=1e-6)
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
    # Like torchrun's agent: once a rank has failed, the others get a grace period, then are killed;
    # once rank 0 (whose error the tests read) has ended, the others get one second.
    grace, first_failure = COLLECTIVE_TIMEOUT_S + 2.0, None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if now - start > timeout:
            _kill(procs)
            pytest.fail(f"scenario {scenario!r} did not finish within {timeout:.0f} s (hang)")
        if first_failure is None and any(p.poll() not in (None, 0) for p in procs):
            first_failure = now
            if procs[0].poll() not in (None, 0):
                grace = 1.0
        if first_failure is not None and now - first_failure > grace:
            _kill(procs)
            break
        time.sleep(0.05)
    codes = [p.returncode for p in procs]
    errs = [(out / f"rank{rank}.log").read_text() for rank in range(world)]
    return codes, errs, time.monotonic() - start


# --------------------------------------------------------------------------------------------------
# Worker side (``python tests/test_distributed.py <scenario> <out>``).


def _record(out: Path, rank: int, step: str, err: BaseException, t0: float) -> None:
    path = out / f"rank{rank}.json"
    records = json.loads(path.read_text()) if path.exists() else {}
    records[step] = dict(type=type(err).__name__, message=str(err), seconds=time.monotonic() - t0)
    path.write_text(json.dumps(records))


def _worker(scenario: str, out: Path) -> None:
    """``main``: equality cases, a rank mismatch, an error in rank 1's network, then rank 1 raising
    mid-run (its process dies); ``hang``: rank 1 hangs mid-run."""
    import datetime

    import torch.distributed as dist

    from fixedpoint_ir.distributed import assert_ranks_agree, distribute, init_from_env, shard, shutdown

    torch.set_num_threads(1)
    info = init_from_env(timeout=INIT_TIMEOUT_S)
    assert info.backend == "gloo" and info.world_size == 2, info
    rank = info.rank
    # A group of both ranks with a short timeout, for the failure scenarios.
    short = dist.new_group(ranks=[0, 1], timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))

    if scenario == "main":
        results = {}
        for name in CASES:
            res = run_case(name, wrap=distribute)  # default group; check=True by default
            assert_ranks_agree(res.states, name=name)
            results[name] = dict(states=res.states, rounds=res.rounds, nfe=res.nfe, status=res.status.value)
        results["shard"] = shard(list(range(5)))
        torch.save(results, out / f"rank{rank}.pt")

        # Ranks given different x_T (an unseeded run, say) stop at once, on every rank.
        t0 = time.monotonic()
        try:
            sampler = distribute(Sampler(make_prior("gmm"), None, Picard(tol=0.0), steps=5))
            sampler.sample((3, 8, 8), 1, generator=torch.Generator().manual_seed(100 + rank))
        except Exception as err:  # noqa: BLE001
            _record(out, rank, "mismatch", err, t0)

        # rank 1's network raises in its third call; every rank must learn about it.
        def failing_on_rank1(s):
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
        t0 = time.monotonic()
        try:
            run_case("gmm-pool-picard", wrap=failing_on_rank1)
        except Exception as err:  # noqa: BLE001
            _record(out, rank, "raise_in_network", err, t0)

    # rank 1 raises outside eps (its process dies: "crash") or hangs in the middle of a run.
    step = "crash" if scenario == "main" else "hang"

    def callback(info_round):
        if rank == 1 and info_round.round == 2:
            if step == "hang":
                time.sleep(300)
            raise RuntimeError("simulated crash of rank 1 mid-run")
    t0 = time.monotonic()
    try:
        run_case("gmm-pool-picard", wrap=lambda s: distribute(s, group=short), callback=callback)
    except BaseException as err:
        _record(out, rank, step, err, t0)
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
    from fixedpoint_ir.distributed import DistributedPrior, init_from_env, shard

    if not torch.distributed.is_initialized():
        with pytest.raises(RuntimeError, match="init_from_env"):
            DistributedPrior(make_prior("gmm"))
        assert shard([1, 2, 3]) == [1, 2, 3]
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


@pytest.fixture(scope="module")
def main_launch(tmp_path_factory):
    """One launch of 2 ranks for the equality, mismatch, network-error and crash checks."""
    out = tmp_path_factory.mktemp("main")
    codes, logs, seconds = launch("main", out)
    records = [json.loads(p.read_text()) if (p := out / f"rank{r}.json").exists() else {} for r in range(2)]
    return out, codes, logs, records


def test_two_gloo_ranks_equal_single_process(main_launch):
    out, codes, logs, _ = main_launch
    assert all((out / f"rank{r}.pt").exists() for r in range(2)), "\n".join(l[-3000:] for l in logs)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
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
    assert [ranks[0]["shard"], ranks[1]["shard"]] == [[0, 1, 2], [3, 4]]  # images per rank


def test_ranks_with_different_inputs_stop_with_a_mismatch_error(main_launch):
    _, _, logs, records = main_launch
    for r in range(2):
        rec = records[r].get("mismatch")
        assert rec is not None, logs[r][-3000:]
        assert rec["type"] == "RankMismatchError" and "network call 1 " in rec["message"], rec


def test_error_in_one_ranks_network_reaches_every_rank(main_launch):
    _, _, logs, records = main_launch
    e0, e1 = records[0].get("raise_in_network"), records[1].get("raise_in_network")
    assert e0 is not None and e1 is not None, logs[0][-3000:]
    assert e1["type"] == "FloatingPointError"
    assert e0["type"] == "RemoteRankError"
    assert "rank(s) [1]" in e0["message"] and "simulated failure" in e0["message"]
    assert e0["seconds"] < COLLECTIVE_TIMEOUT_S  # no need to wait for a timeout


def _check_rank0_failed_cleanly(codes, logs, rec, limit):
    assert codes[0] not in (0, None) and codes[1] != 0, (codes, logs[0][-3000:])
    assert rec is not None, logs[0][-3000:]
    assert rec["type"] == "DistributedRoundError", rec
    assert "another rank probably crashed" in rec["message"]
    assert rec["seconds"] < limit, rec


def test_crash_of_one_rank_ends_the_run_with_a_clear_error(main_launch):
    _, codes, logs, records = main_launch
    assert records[1].get("crash", {}).get("message") == "simulated crash of rank 1 mid-run"
    # a dead peer closes its sockets: rank 0 fails at once, long before the timeout
    _check_rank0_failed_cleanly(codes, logs, records[0].get("crash"), COLLECTIVE_TIMEOUT_S)


def test_hang_of_one_rank_ends_the_run_after_the_timeout(tmp_path):
    codes, logs, seconds = launch("hang", tmp_path)
    path = tmp_path / "rank0.json"
    rec = json.loads(path.read_text()).get("hang") if path.exists() else None
    _check_rank0_failed_cleanly(codes, logs, rec, COLLECTIVE_TIMEOUT_S + 20.0)
    assert rec["seconds"] >= COLLECTIVE_TIMEOUT_S * 0.9  # it did wait for the timeout


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))


def test_example_script_runs_with_and_without_torchrun(tmp_path):
    """examples/restore_distributed.py as shipped: one process, then two gloo processes via torchrun
    (torch.distributed.run); both write the same image (up to 8-bit rounding)."""
    import numpy as np
    from PIL import Image

    script = Path(__file__).resolve().parent.parent / "examples" / "restore_distributed.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", CUDA_VISIBLE_DEVICES="")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    small = ["--size", "32", "--steps", "4"]
    one = subprocess.run([sys.executable, str(script), *small, "-o", str(tmp_path / "one.png")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), *small, "-o", str(tmp_path / "two.png")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 process(es)" in two.stdout and "1 process(es)" in one.stdout
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=float) for n in ("one", "two"))
    assert np.abs(a - b).max() <= 1.0
