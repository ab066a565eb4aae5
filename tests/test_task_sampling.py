"""Per-T task sampling defaults (issue #22): ``sampling["from_steps"]`` and what the Sampler uses."""
import json

import pytest

from fixedpoint_ir import Sampler
from fixedpoint_ir.operators import make_operator
from fixedpoint_ir.operators.tasks import TASKS, sampling_for_steps
from fixedpoint_ir.priors import GaussianMixturePrior

RULE = {"etw": 1.0, "nw": 1.0, "t_max": 600,
        "from_steps": {"50": {"etw": 0.1, "nw": 0.0, "t_max": None}, "200": {"etw": 0.5}}}


@pytest.mark.parametrize("steps, expected", [
    (20, {"etw": 1.0, "nw": 1.0, "t_max": 600}),
    (49, {"etw": 1.0, "nw": 1.0, "t_max": 600}),
    (50, {"etw": 0.1, "nw": 0.0}),                       # None removes t_max: the whole schedule
    (199, {"etw": 0.1, "nw": 0.0}),
    (250, {"etw": 0.5, "nw": 1.0, "t_max": 600}),        # the largest threshold ≤ T alone applies
])
def test_the_largest_threshold_at_most_T_overrides_the_base(steps, expected):
    assert sampling_for_steps(RULE, steps) == expected
    assert "from_steps" in RULE and RULE["etw"] == 1.0     # the rule itself is left unchanged


def test_a_sampling_without_rules_is_returned_as_is():
    assert sampling_for_steps({"etw": 0.75, "t_max": 500}, 100) == {"etw": 0.75, "t_max": 500}


def test_bad_steps_or_thresholds_are_refused_by_name():
    with pytest.raises(ValueError, match="steps must be a positive int"):
        sampling_for_steps(RULE, 0)
    with pytest.raises(ValueError, match="from_steps"):
        sampling_for_steps({"from_steps": {"many": {}}}, 20)


def test_the_sampler_takes_the_task_defaults_of_its_T_and_they_travel_as_json():
    op = make_operator("sr4", (3, 8, 8))
    op.task_config["sampling"] = json.loads(json.dumps(RULE))   # as read back from a sidecar
    prior = GaussianMixturePrior()
    few, many = Sampler(prior, op, steps=20), Sampler(prior, op, steps=100)
    assert (few.etw, few.nw, few.t_max) == (1.0, 1.0, 600)
    assert (many.etw, many.nw, many.t_max) == (0.1, 0.0, None)
    assert Sampler(prior, op, steps=100, etw=0.3).etw == 0.3        # an argument still wins


def test_every_registered_rule_resolves_at_20_and_100_steps():
    for task in TASKS.values():
        for steps in (20, 100):
            resolved = sampling_for_steps(task.sampling, steps)
            assert "from_steps" not in resolved
            assert set(resolved) <= {"etw", "nw", "noise", "chain", "t_max", "fix_null_mean"}, task.name


@pytest.mark.parametrize("task", ["sr4", "deblur_gauss", "inpaint_random", "colorize"])
@pytest.mark.parametrize("steps", [20, 100])
def test_the_task_defaults_at_each_T_reach_their_sequential_chain(task, steps):
    """Whatever the registry's per-T defaults are (a later start for colour included), their fixed
    point is the sequential chain: T Picard rounds reproduce it, and it keeps the observation."""
    import torch
    from fixedpoint_ir.backends import Picard

    op = make_operator(task, (3, 8, 8))
    prior = GaussianMixturePrior(0.5, 0.05)
    truth = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.6 - 0.8
    y = op.A(truth)
    sequential = Sampler(prior, op, steps=steps).sequential(y, generator=torch.Generator().manual_seed(3)).image
    exact = Sampler(prior, op, Picard(tol=0.0, max_rounds=steps), steps=steps).restore(
        y, generator=torch.Generator().manual_seed(3)).image
    assert torch.allclose(exact, sequential, atol=1e-10, rtol=0)
    assert torch.allclose(op.A(sequential), y, atol=1e-6)   # DDNM's last correction keeps A x = y
