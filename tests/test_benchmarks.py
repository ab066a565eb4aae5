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


def test_sibling_old_defaults_are_the_committed_quality_rounds_choice(quality_rounds, monkeypatch):
    """The siblings' "old default" against which quality_seeds.py measures (and whose rounds set the
    budget) is what benchmarks/quality_rounds.py picked on seed 0 from its committed measurements;
    the registry's defaults themselves are checked against quality_seeds' rule below."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import quality_seeds

    entries = json.loads((BENCHMARKS / "results" / "quality_rounds.json").read_text())
    table = quality_rounds.summarise(entries)
    assert set(table) == set(quality_rounds.CANDIDATES)
    for task in quality_rounds.SIBLINGS:
        picked = quality_rounds.choose(table[task])["setting"]
        assert quality_seeds.label(picked) == quality_seeds.label(quality_seeds.OLD[task]), task
    sys.modules.pop("quality_seeds", None)


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


@pytest.fixture()
def side_by_side(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import exact_jvp
    import side_by_side
    import side_by_side_report

    yield side_by_side, side_by_side_report, exact_jvp
    for name in ("side_by_side", "side_by_side_report", "exact_jvp", "convergence"):
        sys.modules.pop(name, None)


def test_forward_mode_jvp_is_the_networks_exact_jvp(side_by_side):
    """Newton's floor uses forward-mode AD (with GroupNorm written out); it must equal autograd's
    double-backward JVP, and leave GroupNorm as it was."""
    import torch
    import torch.nn.functional as F
    from torch.autograd.functional import jvp

    from fixedpoint_ir.priors.default import default_prior

    _, _, exact_jvp = side_by_side
    prior = default_prior()
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([700, 50])
    group_norm = F.group_norm
    _, reference = jvp(lambda u: prior.eps(u, t), x, v)
    forward = exact_jvp.forward_jvp(prior, x, t, v)
    assert F.group_norm is group_norm
    assert float((forward - reference).abs().max() / reference.abs().max()) < 1e-5


def test_side_by_side_cells_resume_and_report(side_by_side, tmp_path):
    """Cells are appended and read back by key; the report counts rounds to 1e-3 and to 8 bits
    from the traces, and says when a problem never got there."""
    pytest.importorskip("matplotlib")
    sbs, report, _ = side_by_side
    path = tmp_path / "cells.jsonl"
    base = dict(steps=20, setting="paper", sampling=dict(sbs.PAPER), command="c", machine="m",
                commit="x", date="d", jvps=0)
    stale = {"etw": 0.5, "nw": 0.5}                    # measured with chain settings no longer used
    for problem, errors, sampling in (("a/sr4", [0.5, 2e-3, 5e-4], sbs.PAPER),
                                      ("b/sr4", [0.5, 0.2, 0.1], sbs.PAPER),
                                      ("c/sr4", [0.5, 1e-4, 1e-5], stale)):
        for solver in ("triangular", "parataa"):
            sbs.append(path, dict(base, key=sbs.cell_key(solver, problem, 20, "paper"), solver=solver,
                                  problem=problem, errors=errors, same_8bit=[False, True, True],
                                  nfes=[20, 40, 60], rounds=3, nfe=60, status="stopped",
                                  final_error=errors[-1], seconds=1.0, sampling=dict(sampling)))
    cells = sbs.load(path)
    assert len(cells) == 6 and sbs.cell_key("parataa", "b/sr4", 20, "paper") in cells
    assert report.to_target(cells[sbs.cell_key("parataa", "a/sr4", 20, "paper")]) == (3, 60)
    assert report.to_8bit(cells[sbs.cell_key("parataa", "a/sr4", 20, "paper")]) == (2, 40)
    text = report.write(path).read_text()
    assert "| ParaTAA | 2 | 3 [1/2] | 60 [1/2] | 2 | 40 |" in text
    assert (tmp_path / "figures" / "side_by_side_T20_paper.png").is_file()


def test_side_by_side_uses_the_defaults_of_each_T_and_remeasures_stale_cells(side_by_side):
    """``defaults`` resolves a task's per-T sampling as the Sampler does (sr4 switches at T = 50),
    and a cell measured with other chain settings (defaults changed since) counts as not measured."""
    from fixedpoint_ir.operators.tasks import make_operator

    sbs, _, _ = side_by_side
    op = make_operator("sr4", (3, 16, 16))
    at20, at100 = sbs.sampling_of(op, "defaults", 20), sbs.sampling_of(op, "defaults", 100)
    assert "from_steps" not in at20 and at20["t_max"] == 400
    assert at100 == {"etw": 0.1, "nw": 0.0}
    assert sbs.sampling_of(op, "paper", 20) == sbs.PAPER
    cells = {"k": {"sampling": {"etw": 1.0, "nw": 1.0, "t_max": 600}}}
    assert not sbs.is_measured(cells, "k", at20) and not sbs.is_measured(cells, "other", at20)
    assert sbs.is_measured({"k": {"sampling": dict(at20)}}, "k", at20)


def test_side_by_side_remeasures_cells_of_a_changed_solver_default(side_by_side):
    """A cell records its solver's options; one measured with other defaults (or before cells
    recorded them, with the legacy triangular model) is measured again and left out of the report."""
    sbs, _, _ = side_by_side
    sampling = dict(sbs.PAPER)
    today = sbs.solver_options("triangular")
    assert today and "linearize" in today and sbs.solver_options(sbs.NEWTON) == {}
    cell = dict(solver="triangular", sampling=sampling, options=dict(today))
    assert sbs.is_today(cell, sampling)
    assert not sbs.is_today(dict(cell, options=dict(today, tol=0.5)), sampling)
    legacy = dict(solver="triangular", sampling=sampling)
    assert sbs.is_today(legacy, sampling) == (today["linearize"] == sbs.LEGACY_OPTIONS["triangular"]["linearize"])
    assert sbs.is_today(dict(solver="picard", sampling=sampling), sampling)


def test_learned_problems_run_the_task_defaults_only_when_asked(convergence):
    """acceleration.py's 'defaults' setting is the tasks' sampling (it silently ran etw 0.1, nw 0
    for a while, when learned_problems started wiping the task's sampling for its own setting)."""
    from fixedpoint_ir import Sampler

    (_, prior, bench_op, _, _), = [p for p in convergence.learned_problems(["flower"], steps=(50,))
                                   if "deblur" in p[0]]
    (_, _, task_op, _, _), = [p for p in convergence.learned_problems(["flower"], steps=(50,), task_sampling=True)
                              if "deblur" in p[0]]
    bench, task = Sampler(prior, bench_op, steps=50), Sampler(prior, task_op, steps=50)
    assert (bench.etw, bench.nw, bench.t_max) == (0.1, 0.0, None)
    assert (task.etw, task.nw, task.t_max) != (0.1, 0.0, None)


def test_acceleration_report_keeps_runs_with_earlier_task_defaults_apart(convergence, tmp_path, monkeypatch):
    """A re-measurement after the task defaults changed does not overwrite the earlier record, and the
    two are never medians of one table."""
    import acceleration
    from fixedpoint_ir.operators.tasks import TASKS, sampling_for_steps

    problem = "learned prior, flower 64×64, sr4, T = 20"
    run = dict(setting="defaults", problem=problem, config=acceleration.BASELINE, steps=20, errors=[1.0],
               nfes=[20], rounds_to_tol=9, stop_rounds=10, stop_nfe=200, status="converged",
               stop_error=1e-4, first_8bit=8, fallbacks=0)
    key = f"defaults | {problem} | {acceleration.BASELINE}"
    for tag, commit, entry in (("old", "aaaaaaa", dict(run)),
                               ("new", "bbbbbbb", dict(run, stop_rounds=14,
                                                       sampling=sampling_for_steps(TASKS["sr4"].sampling, 20)))):
        (tmp_path / f"acceleration_{tag}.json").write_text(json.dumps(
            dict(command="c", machine="m", commit=commit, entries={key: entry})))
    text = acceleration.report(tmp_path)
    today = text.split("## defaults (task defaults), T = 20", 1)[1].split("##", 1)[0]
    earlier = text.split("## defaults (the task defaults as run at commit aaaaaaa), T = 20", 1)[1].split("##", 1)[0]
    assert "| 1 | 9 | 14 |" in today and "| 1 | 9 | 10 |" in earlier
    sys.modules.pop("acceleration", None)


def test_state_copies_script_finds_andersons_history(monkeypatch, capsys):
    """The measurement behind memory.py's Anderson count: its peak exceeds the plain solver's."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import state_copies

    state_copies.main(["--steps", "8", "--size", "8"])
    rows = [r.split("|") for r in capsys.readouterr().out.splitlines() if r.startswith("| 8 |")]
    ratio = {r[2].strip(): float(r[4]) for r in rows}
    assert ratio["triangular"] == 1.0 and ratio['triangular, accelerate="anderson"'] > 1.0
    sys.modules.pop("state_copies", None)
