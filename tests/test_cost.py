"""solver="auto", the batch-cost model and the memory planner (issue 12)."""
import math

import pytest
import torch

from fixedpoint_ir import GaussianMixturePrior, Sampler
from fixedpoint_ir import cost as cost_module
from fixedpoint_ir import memory as memory_module
from fixedpoint_ir.backends import Picard, Triangular
from fixedpoint_ir.cost import BatchCost, choose, expected_rows, measure_batch_cost, predict_parallel, \
    predict_sequential
from fixedpoint_ir.memory import MemoryPlanError, PeakTensorBytes, plan_memory
from fixedpoint_ir.operators import AveragePool

from helpers import CountingPrior


def _curve(per_state: float, overhead: float = 1.0):
    """A fake measurement: c(B) = overhead + per_state · B (seconds)."""
    def measure(prior, shape, *, dtype, device, largest, enough=None):
        batches = tuple(b for b in (1, 2, 4, 8, 16, 32) if b <= max(largest, 1))
        return BatchCost(batches, tuple(overhead + per_state * b for b in batches), 1e3, tuple(shape))
    return measure


def test_batch_cost_interpolates_and_extrapolates_with_the_last_slope():
    c = BatchCost((1, 2, 4), (1.0, 1.5, 3.5), 0.0, (3, 8, 8))
    assert c(1) == 1.0 and c(3) == pytest.approx(2.5) and c(8) == pytest.approx(7.5)
    assert c(0.5) == pytest.approx(0.5) and c.ratio(4) == pytest.approx(3.5)


def test_expected_rows_follow_the_table_and_the_window():
    for steps, rounds, evaluations in cost_module.TRIANGULAR_WORK:
        rows = expected_rows(Triangular(window=None), steps)
        assert len(rows) == round(rounds * steps) and rows[0] == steps
        assert abs(sum(rows) - evaluations * steps) <= len(rows)
    assert max(expected_rows(Triangular(), 100)) == 24          # the default window
    assert max(expected_rows(Triangular(window=8), 20)) == 8
    assert expected_rows(Picard(), 7) == [7] * 7
    assert expected_rows(Picard(max_rounds=3), 7) == [7] * 3


def test_predictions_are_sums_of_the_curve():
    c = BatchCost((1, 2), (1.0, 2.0), 0.0, (3, 8, 8))
    assert predict_sequential(c, 20, 1) == pytest.approx(20.0)
    assert predict_parallel(c, [20, 10], 1) == pytest.approx(30.0 * (1 + cost_module.ROUND_OVERHEAD))
    assert predict_parallel(c, [2], 3, scale=2.0) == pytest.approx(12.0 * (1 + cost_module.ROUND_OVERHEAD))
    flat = BatchCost((1, 2, 4), (1.0, 1.0, 1.0), 0.0, (3, 8, 8))     # chunks of 4: 3 + 1 calls
    assert predict_parallel(flat, [13], 1, chunk=4) == pytest.approx(4 * (1 + cost_module.ROUND_OVERHEAD))
    assert predict_sequential(flat, 5, 8, chunk=4) == pytest.approx(10.0)


@pytest.mark.parametrize("per_state, expected", [(1.0, "sequential"), (0.001, "parallel")])
def test_choose_follows_the_cost_curve(per_state, expected):
    prior = GaussianMixturePrior(0.5, 0.05)
    choice = choose(prior, Triangular(), steps=20, images=1, image_shape=(3, 8, 8),
                    measure=_curve(per_state))
    assert choice.mode == expected
    assert (choice.parallel_s < choice.sequential_s) == (expected == "parallel")
    assert "evaluations expected" in choice.describe() and expected in choice.describe()


@pytest.mark.parametrize("per_state, expected", [(1.0, "sequential"), (0.001, "parallel")])
def test_sampler_auto_runs_the_choice_and_the_same_answer(monkeypatch, per_state, expected):
    monkeypatch.setattr(cost_module, "measure_batch_cost", _curve(per_state))
    op = AveragePool(2)
    y = op.A(torch.rand(1, 3, 8, 8, dtype=torch.float64) * 2 - 1)
    sampler = Sampler(CountingPrior(0.5, 0.05), op, "auto", steps=10)
    result = sampler.restore(y, generator=torch.Generator().manual_seed(0))
    reference = sampler.sequential(y, generator=torch.Generator().manual_seed(0))
    assert result.choice.mode == expected
    assert expected in result.summary() and "predicted parallel" in result.summary()
    if expected == "sequential":
        assert result.report is None and result.nfe == 10
        torch.testing.assert_close(result.image, reference.image, rtol=0, atol=0)
    else:
        assert result.report is not None
        torch.testing.assert_close(result.image, reference.image, rtol=0, atol=1e-3)


def test_measure_stops_once_batches_stop_paying():
    clock = [0.0]

    class Timed(CountingPrior):      # c(B) = B (a CPU) or 1 (an idle GPU), on a fake clock
        per_state = 1.0

        def predict_eps(self, x, t):
            clock[0] += 1.0 + self.per_state * (x.shape[0] - 1)
            return super().predict_eps(x, t)

    linear = Timed(0.5, 0.05)
    c = measure_batch_cost(linear, (3, 4, 5), largest=32, timer=lambda: clock[0])
    assert c.batches == (1, 2) and c.seconds == (1.0, 2.0)
    flat = Timed(0.5, 0.05)
    flat.per_state = 0.0
    c = measure_batch_cost(flat, (3, 4, 6), largest=16, timer=lambda: clock[0])
    assert c.batches == (1, 2, 4, 8, 16) and c.seconds == (1.0,) * 5
    calls = flat.calls
    assert measure_batch_cost(flat, (3, 4, 6), largest=16) is c and flat.calls == calls   # cached


def test_peak_tensor_bytes_counts_live_tensors():
    with PeakTensorBytes() as peak:
        a = torch.zeros(1000, dtype=torch.float64)
        b = torch.ones(500, dtype=torch.float64) + 1
        del a, b
        c = torch.zeros(100)
    assert 12000 <= peak.peak < 20000 and c.numel() == 100


def test_plan_picks_the_largest_chunk_that_fits():
    state = 3 * 10 * 10 * 4
    per_input = 1000 * memory_module.ACTIVATION_SLACK + 3 * state
    budget = 9 * 20 * state + int(7.5 * per_input)
    plan = plan_memory(rows=20, images=1, image_shape=(3, 10, 10), itemsize=4, input_bytes=1000,
                       inputs_per_image=1, mode="triangular", budget_bytes=budget)
    assert plan.max_batch == 7 and plan.peak_bytes <= budget
    assert plan_memory(rows=20, images=1, image_shape=(3, 10, 10), itemsize=4, input_bytes=1000,
                       inputs_per_image=1, mode="triangular", budget_bytes=10 ** 9).max_batch == 20
    assert plan_memory(rows=20, images=1, image_shape=(3, 10, 10), itemsize=4, input_bytes=1000,
                       inputs_per_image=1, mode="sequential", budget_bytes=10 ** 9).max_batch == 1
    with pytest.raises(MemoryPlanError, match=r"10x10 image with 20 steps.*options: a smaller image"):
        plan_memory(rows=20, images=1, image_shape=(3, 10, 10), itemsize=4, input_bytes=1000,
                    inputs_per_image=1, mode="triangular", budget_bytes=9 * 20 * state)


def test_sampler_lowers_max_batch_for_the_run_and_restores_it(monkeypatch):
    calls = []

    class Recording(CountingPrior):
        def predict_eps(self, x, t):
            calls.append(x.shape[0])
            return super().predict_eps(x, t)

    prior = Recording(0.5, 0.05)
    monkeypatch.setattr(memory_module, "available_bytes", lambda device: 10 ** 9)
    monkeypatch.setattr(memory_module, "measure_input_bytes", lambda *a, **k: 10 ** 9 / 4 * 0.7 / 1.25)
    op = AveragePool(2)
    y = op.A(torch.rand(1, 3, 8, 8, dtype=torch.float64) * 2 - 1)
    result = Sampler(prior, op, Picard(), steps=6).restore(y, generator=torch.Generator().manual_seed(0))
    assert result.memory.max_batch == 3 and max(calls) <= 3 and prior.max_batch is None


def test_refused_before_any_network_call(monkeypatch):
    prior = CountingPrior(0.5, 0.05)
    monkeypatch.setattr(memory_module, "available_bytes", lambda device: 2 ** 20)
    op = AveragePool(4)
    y = torch.zeros(1, 3, 100, 75, dtype=torch.float64)   # a 400x300 image
    for solver in ("auto", "triangular"):
        with pytest.raises(MemoryPlanError, match="400x300"):
            Sampler(prior, op, solver, steps=20).restore(y)
    assert prior.calls == 0


def test_auto_falls_back_to_sequential_when_the_parallel_states_do_not_fit(monkeypatch):
    prior = CountingPrior(0.5, 0.05)
    state = 3 * 8 * 8 * 8
    budget = (6 * state * 10 + 20 * state) / memory_module.MEMORY_FRACTION   # sequential: 3 copies fit
    monkeypatch.setattr(memory_module, "available_bytes", lambda device: budget)
    monkeypatch.setattr(cost_module, "measure_batch_cost", _curve(0.001))     # parallel would be faster
    op = AveragePool(2)
    y = op.A(torch.rand(1, 3, 8, 8, dtype=torch.float64) * 2 - 1)
    result = Sampler(prior, op, "auto", steps=10).restore(y, generator=torch.Generator().manual_seed(0))
    assert result.choice.mode == "sequential" and "do not fit" in result.summary()
    assert math.isinf(result.choice.parallel_s)


def test_round_time_split_adds_up():
    op = AveragePool(2)
    y = op.A(torch.rand(1, 3, 8, 8, dtype=torch.float64) * 2 - 1)
    result = Sampler(CountingPrior(0.5, 0.05), op, steps=10).restore(y, generator=torch.Generator().manual_seed(0))
    times = result.report.round_times
    assert len(times) == result.rounds
    for part in times:
        assert min(part.values()) >= 0
        assert part["network"] + part["replay"] + part["bookkeeping"] == pytest.approx(part["total"])
    split = result.report.time_split()
    assert split["network"] > 0 and split["replay"] > 0


def test_a_phone_photo_with_the_shipped_prior_is_refused_up_front(monkeypatch):
    """4000x3000 with the default prior against a 24 GiB machine: refused, no full-size network call."""
    from fixedpoint_ir.priors.base import Prior

    prior = Prior.default()
    seen = []
    original = prior.predict_eps
    monkeypatch.setattr(prior, "predict_eps", lambda x, t: seen.append(tuple(x.shape)) or original(x, t))
    monkeypatch.setattr(memory_module, "available_bytes", lambda device: 24 * 2 ** 30)
    y = torch.zeros(1, 3, 750, 1000)
    with pytest.raises(MemoryPlanError, match="3000x4000"):
        Sampler(prior, AveragePool(4), "auto").restore(y)
    assert all(shape[-2:] == (64, 64) for shape in seen)   # only the small memory probe ran


def test_a_sequential_run_calibrates_the_probe_based_prediction(monkeypatch):
    """A large image is timed at a 64×64 probe and scaled by pixels; once a sequential run at the
    image's size has been recorded, both predictions are rescaled by what it measured per call."""
    monkeypatch.setattr(cost_module, "_CALLS", {})
    prior = GaussianMixturePrior(0.5, 0.05)
    shape = (3, 128, 128)                          # 4 probe-sized inputs per image
    before = choose(prior, Triangular(), steps=20, images=1, image_shape=shape, measure=_curve(1.0))
    assert before.mode == "sequential" and before.sequential_s == pytest.approx(20 * (1 + 4))
    assert "calibrated" not in before.measured_at
    cost_module.record_sequential_call(prior, shape, 1, 2.5)
    after = choose(prior, Triangular(), steps=20, images=1, image_shape=shape, measure=_curve(1.0))
    assert after.sequential_s == pytest.approx(20 * 2.5)
    assert after.parallel_s == pytest.approx(before.parallel_s * 2.5 / 5)
    assert "calibrated by a sequential run at 128x128" in after.measured_at
    small = choose(prior, Triangular(), steps=20, images=1, image_shape=(3, 16, 16), measure=_curve(1.0))
    assert "calibrated" not in small.measured_at   # measured at its own size: nothing to calibrate


def test_sampler_records_its_sequential_runs(monkeypatch):
    monkeypatch.setattr(cost_module, "_CALLS", {})
    prior, op = CountingPrior(0.5, 0.05), AveragePool(2)
    y = op.A(torch.rand(2, 3, 8, 8) * 2 - 1)
    assert cost_module.recorded_sequential_call(prior, (3, 8, 8), 2) is None
    Sampler(prior, op, steps=5).sequential(y, generator=torch.Generator().manual_seed(0))
    seconds = cost_module.recorded_sequential_call(prior, (3, 8, 8), 2)
    assert seconds is not None and 0 < seconds < 10
    cost_module.record_sequential_call(prior, (3, 8, 8), 2, math.nan)      # ignored, never stored
    assert cost_module.recorded_sequential_call(prior, (3, 8, 8), 2) == seconds
