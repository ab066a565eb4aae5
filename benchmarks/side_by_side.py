"""Which parallel sampler should I use? Every solver on the same problems, side by side.

Per cell (solver × problem × T × setting): rounds and network evaluations per image (NFE) until
the restored image is (a) within 1e-3 (max-abs, relative to the image's max) of the sequential
chain with the same noise, (b) equal to it in 8 bits (one level everywhere), and (c) what the solver
returns by its own stop rule, with the true error of that image. Newton with the network's exact
Jacobian (one batched evaluation + T sequential JVPs per round) is the floor: the rounds a perfect
Jacobian model would need.

Settings: ``defaults`` are the task's sampling defaults (what ``Sampler(prior, op)`` gives);
``paper`` is etw = 0.1, nw = 0 from pure noise over the whole schedule (DeqIR's). Problems are the
shipped prior on 64×64 hold-out crops (``convergence.learned_problems``), named ``photo/task``.

Every cell is appended as one JSON line to ``--out`` (default
``results/solvers_side_by_side.jsonl``) as soon as it is measured; a re-run skips the cells already
there, and several processes may share the file (it is locked per write). A solver that diverges
(``SolverDivergedError``: no image to compare) is printed and left out of the file. ``--report`` writes the
table and plots (``side_by_side_report.py``) from whatever has been measured.

    python benchmarks/side_by_side.py --steps 20 --settings paper defaults
    python benchmarks/side_by_side.py --steps 50 --problems 'flower/*' --solvers newton
    python benchmarks/side_by_side.py --report
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import fnmatch
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import convergence
from fixedpoint_ir.solver import SolverDivergedError

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "solvers_side_by_side.jsonl"
TASKS = ("sr4", "deblur_gauss", "inpaint_random")
PAPER = {"etw": 0.1, "nw": 0.0}
SETTINGS = ("defaults", "paper")


def make_solver(name: str, steps: int):
    """The solver called ``name``, at its defaults (what a user gets)."""
    from fixedpoint_ir import backends

    makers = {"picard": lambda: backends.Picard(), "paradigms": lambda: backends.ParaDiGMS(),
              "parataa": lambda: backends.ParaTAA(), "triangular": lambda: backends.Triangular(),
              "anderson_published": lambda: backends.Anderson.published()}
    return makers[name]()


NEWTON = "newton"
SOLVER_NAMES = ("picard", "paradigms", "parataa", "anderson_published", "triangular", NEWTON)
LABELS = {"picard": "Picard", "paradigms": "ParaDiGMS", "parataa": "ParaTAA",
          "anderson_published": "Anderson.published() (DeqIR)", "triangular": "Triangular (default)",
          NEWTON: "Newton, exact Jacobian (floor)"}


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, 2-core CPU shared with other jobs, 1 thread"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cell_key(solver: str, problem: str, steps: int, setting: str) -> str:
    return f"{solver} | {problem} | T={steps} | {setting}"


def load(path: Path) -> dict[str, dict]:
    """The cells measured so far (the last line wins for a repeated key)."""
    if not path.exists():
        return {}
    cells = {}
    for line in path.read_text().splitlines():
        if line.strip():
            cell = json.loads(line)
            cells[cell["key"]] = cell
    return cells


#: Options of cells measured before cells recorded them: the triangular default then was the secant model.
LEGACY_OPTIONS = {"triangular": {"linearize": "secant"}}


def solver_options(name: str) -> dict:
    """The settings that define the solver ``name`` at its defaults today (Newton: none)."""
    if name == NEWTON:
        return {}
    solver = make_solver(name, 20)
    return {k: v for k, v in vars(solver).items() if isinstance(v, (str, int, float, bool, type(None)))}


def is_today(cell: dict, sampling: dict) -> bool:
    """Whether a cell ran with today's chain settings and today's defaults of its solver (a task's
    defaults or a solver's may have changed since: such a cell is measured again and the new line
    wins; the report leaves it out)."""
    if cell.get("sampling") != sampling:
        return False
    recorded = cell.get("options", LEGACY_OPTIONS.get(cell.get("solver"), {}))
    current = solver_options(cell["solver"]) if "solver" in cell else {}
    return all(current.get(k) == v for k, v in recorded.items())


def is_measured(cells: dict[str, dict], key: str, sampling: dict) -> bool:
    """Whether the cell was measured with today's settings (:func:`is_today`)."""
    return key in cells and is_today(cells[key], sampling)


def append(path: Path, cell: dict) -> None:
    """One JSON line, under an exclusive lock (several processes share the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps(cell) + "\n")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_UN)


def problems(patterns: list[str], steps: int):
    """(name, prior, operator, y) for the hold-out photos × TASKS matching the patterns."""
    from fixedpoint_ir.operators.tasks import make_operator
    from fixedpoint_ir.photos import HOLDOUT, holdout_crop
    from fixedpoint_ir.priors.default import default_prior

    prior = default_prior()
    for task in TASKS:
        for photo in HOLDOUT:
            name = f"{photo}/{task}"
            if not any(fnmatch.fnmatch(name, p) for p in patterns):
                continue
            x = holdout_crop(photo, 64, scale=0.25)[None]
            op = make_operator(task, tuple(x.shape[1:]), generator=torch.Generator().manual_seed(0))
            yield name, prior, op, op.A(x)


def sampling_of(operator, setting: str, steps: int) -> dict:
    """The Sampler's chain settings for a setting name at T = ``steps`` (the operator's own for
    ``defaults``, resolved for T as the Sampler resolves them)."""
    from fixedpoint_ir.operators.tasks import sampling_for_steps

    if setting == "paper":
        return dict(PAPER)
    return sampling_for_steps(operator.task_config.get("sampling") or {}, steps)


def _operator_for(operator, setting: str):
    """The paper's setting starts from pure noise: the task's t_max must not apply."""
    if setting == "paper":
        operator.task_config = {**operator.task_config, "sampling": {}}
    return operator


def reference(prior, operator, y, steps, setting, seed):
    from fixedpoint_ir import Sampler

    sampler = Sampler(prior, operator, "picard", steps=steps, **sampling_of(operator, setting, steps))
    return sampler.sequential(y, generator=convergence.seeded(seed, y.device)).image


def run_solver(prior, operator, y, steps, setting, name, seed, ref) -> dict:
    """One solve through the Sampler (its default init), with the true error after every round."""
    config = convergence.Config(name, lambda T: make_solver(name, T), init="surrogate")
    out = convergence.run_config(prior, operator, y, steps, config, seed, ref, sampling_of(operator, setting, steps))
    return dict(errors=out.errors, same_8bit=out.same_8bit, nfes=out.nfes, rounds=out.rounds, nfe=out.nfe,
                status=out.status, final_error=out.final_error, seconds=out.seconds, jvps=0)


def run_newton(prior, operator, y, steps, setting, seed, ref, max_rounds) -> dict:
    """Exact-Jacobian Newton from the surrogate start, until the image is within 1e-3 and equal
    in 8 bits (or ``max_rounds``)."""
    from exact_jvp import forward_jvp

    start = time.perf_counter()
    out = convergence.newton_reference(prior, operator, y, steps, seed, ref, max_rounds,
                                       sampling=sampling_of(operator, setting, steps), network_jvp=forward_jvp,
                                       done=lambda o: o.errors[-1] <= convergence.TARGET and o.same_8bit[-1])
    jvps = int(out.status.split("(")[1].split()[0])
    return dict(errors=out.errors, same_8bit=out.same_8bit, nfes=out.nfes, rounds=out.rounds, nfe=out.nfe,
                status="reference", final_error=out.final_error, seconds=time.perf_counter() - start,
                jvps=jvps)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solvers", nargs="+", default=list(SOLVER_NAMES), choices=SOLVER_NAMES)
    parser.add_argument("--problems", nargs="+", default=["*"],
                        help="photo/task patterns (fnmatch), e.g. 'flower/*' (default: all 9)")
    parser.add_argument("--steps", nargs="+", type=int, default=[20])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--newton-rounds", type=int, default=15, help="most Newton rounds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="only write the table and plots")
    args = parser.parse_args(argv)
    if args.report:
        import side_by_side_report

        side_by_side_report.write(args.out)
        return
    torch.set_num_threads(1)
    command = "python benchmarks/side_by_side.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for steps in args.steps:
        for setting in args.settings:
            for problem, prior, operator, y in problems(args.problems, steps):
                operator = _operator_for(operator, setting)
                sampling = sampling_of(operator, setting, steps)
                todo = [s for s in args.solvers if not is_measured(load(args.out), cell_key(s, problem, steps, setting),
                                                                   sampling)]
                if not todo:
                    continue
                ref = reference(prior, operator, y, steps, setting, args.seed)
                for name in todo:
                    key = cell_key(name, problem, steps, setting)
                    if is_measured(load(args.out), key, sampling):   # another process did it meanwhile
                        continue
                    if name == NEWTON:
                        cell = run_newton(prior, operator, y, steps, setting, args.seed, ref, args.newton_rounds)
                    else:
                        try:
                            cell = run_solver(prior, operator, y, steps, setting, name, args.seed, ref)
                        except SolverDivergedError as error:   # no image to compare: said, not tabled
                            print(f"{key}: diverged: {str(error).split(';')[0]}", flush=True)
                            continue
                    cell.update(key=key, solver=name, options=solver_options(name), problem=problem, steps=steps,
                                setting=setting, sampling=sampling, seed=args.seed, command=command,
                                machine=machine(), commit=commit(),
                                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
                    append(args.out, cell)
                    print(f"{key}: {cell['rounds']} rounds, {cell['nfe']} NFE, {cell['status']}, "
                          f"error {cell['final_error']:.1e}, {cell['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
