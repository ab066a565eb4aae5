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
