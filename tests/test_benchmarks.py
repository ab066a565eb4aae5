"""The convergence benchmark runs from a clean checkout and its analytic-prior claims hold."""
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture()
def convergence(monkeypatch):
    import torch

    threads = torch.get_num_threads()
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import convergence

    yield convergence
    sys.modules.pop("convergence", None)
    torch.set_num_threads(threads)   # the benchmark sets its own


def test_convergence_benchmark_meets_the_round_targets_on_the_analytic_problems(convergence, tmp_path):
    """Every analytic problem: ≤ T/3 rounds and ≤ 2.5·T network evaluations to 1e-3 for the best
    configuration, never worse than Picard, and every reported convergence honest."""
    pytest.importorskip("matplotlib")
    convergence.main(["--problems", "analytic", "--out", str(tmp_path), "--threads", "1", "--no-newton"])
    report = (tmp_path / "convergence_analytic.md").read_text()
    targets = report.split("## Targets", 1)[1].strip().splitlines()[2:]
    assert len(targets) == 6
    for row in targets:
        cells = [c.strip() for c in row.strip("|").split("|")]
        rounds, nfes, versus, honest = cells[2], cells[3], cells[4], cells[5]
        assert rounds.endswith("✓") and nfes.endswith("✓") and honest == "✓", row
        ours, picard = (int(v) for v in versus.split(" vs "))
        assert ours <= picard, row
    assert len(list(tmp_path.glob("convergence_*.png"))) == 6
    traces = json.loads((tmp_path / "convergence_analytic.json").read_text())["problems"]
    assert len(traces) == 6 and all(len(run["errors"]) == run["rounds"] for p in traces.values()
                                    for run in p.values())


@pytest.fixture()
def quality_rounds(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import quality_rounds

    yield quality_rounds
    sys.modules.pop("quality_rounds", None)


def test_quality_rounds_choice_respects_the_round_budget(quality_rounds):
    today = dict(quality_rounds.TODAY)
    row = lambda setting, rounds, psnr, ok=True: dict(setting=setting, mean_rounds=rounds, psnr=psnr,  # noqa: E731
                                                      all_converged=ok)
    rows = [row(today, 8.0, 16.0), row({"etw": 1.0}, 10.0, 18.0), row({"etw": 0.9}, 10.1, 19.0),
            row({"etw": 0.8}, 9.0, 18.5, ok=False)]
    assert quality_rounds.choose(rows)["setting"] == {"etw": 1.0}       # 10.1 > 8 + 2; 18.5 unconverged
    assert quality_rounds.choose(rows[1:]) is None                       # no baseline, no choice


def test_sibling_task_defaults_are_the_committed_quality_rounds_choice(quality_rounds):
    """The registry's sampling defaults of the tasks not re-chosen over seeds (issue #22) are what
    benchmarks/quality_rounds.py picks from its committed measurements (re-measure before
    changing either)."""
    from fixedpoint_ir.operators.tasks import TASKS

    entries = json.loads((BENCHMARKS / "results" / "quality_rounds.json").read_text())
    table = quality_rounds.summarise(entries)
    assert set(table) == set(quality_rounds.CANDIDATES)
    for task in quality_rounds.SIBLINGS:
        assert quality_rounds.choose(table[task])["setting"] == TASKS[task].sampling, task


@pytest.fixture()
def quality_seeds(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import quality_seeds

    yield quality_seeds
    sys.modules.pop("quality_seeds", None)


def test_quality_seeds_rule_takes_the_best_mean_over_crops_and_seeds(quality_seeds, monkeypatch):
    a, b = {"etw": 1.0, "nw": 1.0}, {"etw": 0.5, "nw": 0.5}
    entry = lambda s, psnr: {"setting": s, "psnr": psnr, "seeds": [0, 1], "pinv_psnr": [10.0, 10.0],  # noqa: E731
                             "cast": [[0.0, 0.0], [0.0, 0.0]]}
    grid = {"sr4": [a, b]}
    entries = {quality_seeds.key("validation", "sr4", a, 20): entry(a, [[20.0, 12.0], [20.0, 20.0]]),
               quality_seeds.key("validation", "sr4", b, 20): entry(b, [[18.5, 18.5], [18.5, 18.5]])}
    monkeypatch.setattr(quality_seeds, "GRID", grid)     # a's lucky seed (20 dB) does not win
    monkeypatch.setitem(quality_seeds.OLD, "sr4", a)
    rounds = {quality_seeds.label(a): 10.0, quality_seeds.label(b): 13.0}
    monkeypatch.setattr(quality_seeds, "measured_rounds", lambda entries, task: [rounds])
    assert quality_seeds.choose(entries, "sr4", 20) == b
    rounds[quality_seeds.label(b)] = 13.5                    # past the round budget at T = 20 ...
    assert quality_seeds.choose(entries, "sr4", 20) == a
    del rounds[quality_seeds.label(b)]                       # ... and so is a setting with no rounds
    assert quality_seeds.choose(entries, "sr4", 20) == a
    st = quality_seeds.stats(entries[quality_seeds.key("validation", "sr4", a, 20)])
    assert (st["mean"], st["spread"], st["max_spread"], st["above_pinv_min"]) == (18.0, 4.0, 8.0, 2.0)
    del entries[quality_seeds.key("validation", "sr4", b, 20)]
    assert quality_seeds.choose(entries, "sr4", 20) is None      # a candidate unmeasured: no choice


def test_task_defaults_are_the_committed_choice_over_seeds(quality_seeds):
    """For each task studied over seeds and validation crops and each T measured, the registry's
    defaults at that T are the rule's choice on the committed benchmarks/results/quality_seeds.json."""
    from fixedpoint_ir.operators.tasks import TASKS, sampling_for_steps

    entries = json.loads((BENCHMARKS / "results" / "quality_seeds.json").read_text())
    for task in quality_seeds.TASKS:
        for steps in quality_seeds.STEPS:
            chosen = quality_seeds.choose(entries, task, steps)
            assert chosen is not None, (task, steps)
            assert sampling_for_steps(TASKS[task].sampling, steps) == chosen, (task, steps)
