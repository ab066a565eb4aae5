"""Accelerating the triangular solver's own iteration, and where its Jacobian model is wrong (issue #19, 4–5).

Per problem and sampling setting, today's ``Triangular()`` and each acceleration option side by
side, in the same run: rounds until the restored image is within 1e-3 of the sequential chain
(relative max-abs, true error), the solver's own stop round, status and true error there, the
first 8-bit-equal round and NFE/T. For the baseline also the free diagnostic of the research note
(§5 item 1): per row and round of the geometric tail (true image error ≤ 0.1, rows not yet
accepted), the cosine between the row's last two changes and their max-abs ratio.

``--rho`` measures the fidelity of the baseline's Jacobian model along the directions it actually
replays: for every evaluated row and round, d = (the row's replay input) − (its last evaluation
point U), ρ = ‖J d − γ J_s d‖ / ‖J d‖ with J d the network's exact JVP (autograd) at U, J_s the
Gaussian surrogate's Jacobian and γ the row's secant scale; also ρ of the raw surrogate (γ = 1)
and of the best scalar per row and round (γ* = ⟨J d, J_s d⟩/‖J_s d‖², a lower bound for any
per-row scalar secant).

Problems: the shipped prior on the hold-out crops (64×64, scale 0.25), sr4 / deblur_gauss /
inpaint_random, as ``benchmarks/convergence.py`` builds them. Settings: ``bench`` (etw = 0.1,
nw = 0, convergence.py's) and ``defaults`` (the task defaults, Sampler with no sampling argument).
Results go to ``results/acceleration_<tag>.json`` entry by entry (a re-run resumes); ``--report``
writes ``results/acceleration.md`` from every such file.

    nice python benchmarks/acceleration.py --settings bench --tag bench
    nice python benchmarks/acceleration.py --settings defaults --tag defaults
    nice python benchmarks/acceleration.py --rho --tasks sr4 --photos astronaut --tag rho
    python benchmarks/acceleration.py --report
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import convergence  # noqa: E402  (problem builders and criteria, as they are today)

from fixedpoint_ir import Sampler  # noqa: E402
from fixedpoint_ir.backends import Triangular  # noqa: E402

TARGET = convergence.TARGET
SETTINGS = {"bench": dict(etw=0.1, nw=0.0), "defaults": {}}
SECANT = 'secant model (the default until multisecant, accelerate="none")'
CONFIGS = {
    SECANT: lambda: Triangular(linearize="secant"),
    # Measured on the secant model (the default then); kept on it so a re-run means the same.
    "anderson m=2": lambda: Triangular(linearize="secant", accelerate="anderson", memory=2),
    "anderson m=3": lambda: Triangular(linearize="secant", accelerate="anderson", memory=3),
    "aitken": lambda: Triangular(linearize="secant", accelerate="aitken"),
    "damping k=0.3": lambda: Triangular(linearize="secant", accelerate="damping", damping=0.3),
    "anchored": lambda: Triangular(linearize="secant", far_rows="anchored"),
    "multisecant m=1": lambda: Triangular(linearize="multisecant", secants=1),
    "multisecant m=2": lambda: Triangular(linearize="multisecant", secants=2),
    "multisecant m=3": lambda: Triangular(linearize="multisecant", secants=3),
    "multisecant m=5": lambda: Triangular(linearize="multisecant", secants=5),
    "multisecant m=3 + anderson m=2": lambda: Triangular(linearize="multisecant", accelerate="anderson"),
}
# Entries recorded under an earlier name of the same configuration.
ALIASES = {'Triangular() (default, accelerate="none")': SECANT}
BASELINE = SECANT
RESULTS = Path(__file__).parent / "results"


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=Path(__file__).parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def problems(tasks, photos, steps, setting):
    """The learned problems; ``defaults`` keeps each task's sampling (the Sampler resolves it per T)."""
    for name, prior, op, y, T in convergence.learned_problems(photos, steps=(steps,), tasks=tuple(tasks),
                                                              task_sampling=setting == "defaults"):
        if any(f", {task}," in name for task in tasks):
            yield name, prior, op, y, T


class _Tail:
    """The free diagnostic: cos θ and change ratio of each unaccepted row in the tail."""

    def __init__(self):
        self.last_fz, self.last_delta, self.cos, self.ratio = None, None, [], []

    def __call__(self, info, error):
        fz = info.fz.double()
        if self.last_fz is not None:
            delta = (fz - self.last_fz).flatten(2)
            if self.last_delta is not None and error <= 0.1:
                prefix = torch.tensor(info.extra["prefix"])
                for j in range(delta.shape[0]):
                    for n in range(delta.shape[1]):
                        a, b = delta[j, n], self.last_delta[j, n]
                        if j < prefix[n] or a.abs().max() == 0 or b.abs().max() == 0:
                            continue
                        self.cos.append(float((a @ b) / (a.norm() * b.norm())))
                        self.ratio.append(float(a.abs().max() / b.abs().max()))
            self.last_delta = delta
        self.last_fz = fz


def sampling_of(op, setting, T) -> dict:
    """The chain settings a run uses: the task's own, resolved for T, under ``defaults``."""
    from fixedpoint_ir.operators.tasks import sampling_for_steps

    if setting != "defaults":
        return dict(SETTINGS[setting])
    return sampling_for_steps(op.task_config.get("sampling") or {}, T)


def today(entry) -> bool:
    """Whether an entry ran with today's chain settings for its task and T. Entries without a record
    of them were measured before it was kept: with the task defaults of their commit, and ``bench``
    ones from the task's t_max where the task had one (until convergence.py's fix 0e14b5e)."""
    from fixedpoint_ir.operators.tasks import TASKS, sampling_for_steps

    if entry["setting"] != "defaults":
        return entry.get("sampling") == SETTINGS[entry["setting"]]
    task = entry["problem"].split(", ")[2]
    return entry.get("sampling") == sampling_for_steps(TASKS[task].sampling, entry["steps"])


def run(prior, op, y, T, setting, solver, seed, reference_states, diagnose=False):
    sampler = Sampler(prior, op, solver, steps=T, **SETTINGS[setting])
    reference = reference_states[-1]
    box, errors, same, nfes = {}, [], [], []
    # Research note §4: how far each row beyond the first window is from its final state when it
    # enters the window (relative max-abs), the quantity far_rows="anchored" is meant to lower.
    width = getattr(solver, "window", None) or T
    entry_errors: dict[int, float] = {}
    tail = _Tail() if diagnose else None
    original = sampler.chain

    def chain(*args, **kwargs):
        box["chain"] = original(*args, **kwargs)
        return box["chain"]

    sampler.chain = chain

    def callback(info):
        image = info.fz[-1]
        errors.append(convergence.relative_error(image, reference))
        same.append(convergence.same_8bit(image, reference))
        nfes.append(box["chain"].nfe)
        if tail is not None:
            tail(info, errors[-1])
        front = min(int(info.extra.get("prefix", [0])[0]) + width, T) if "prefix" in info.extra else T
        for j in range(width, front):
            if j not in entry_errors:
                star = reference_states[j]
                entry_errors[j] = float((info.z[j] - star).abs().max() / star.abs().max())

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sampler.restore(y, generator=convergence.seeded(seed, y.device), callback=callback)
    within = next((k + 1 for k, e in enumerate(errors) if e <= TARGET), None)
    entry = dict(sampling=sampling_of(op, setting, T), errors=errors, nfes=nfes, rounds_to_tol=within,
                 nfe_to_tol=nfes[within - 1] if within else None,
                 stop_rounds=result.rounds, stop_nfe=result.nfe, status=result.status.value,
                 stop_error=convergence.relative_error(result.image, reference),
                 first_8bit=next((k + 1 for k, s in enumerate(same) if s), None),
                 fallbacks=result.info.get("safeguard_fallbacks") if hasattr(result, "info") else None,
                 seconds=time.perf_counter() - start)
    if tail is not None:
        entry["tail_cos"], entry["tail_ratio"] = tail.cos, tail.ratio
    if entry_errors:
        entry["window_entry_errors"] = [entry_errors[j] for j in sorted(entry_errors)]
    return entry


def sequential(prior, op, y, T, setting, seed):
    sampler = Sampler(prior, op, "picard", steps=T, **SETTINGS[setting])
    return sampler.sequential(y, generator=convergence.seeded(seed, y.device)).states


def save(path, data):
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def measure(args, path, data):
    for setting in args.settings:
        for problem, prior, op, y, T in problems(args.tasks, args.photos, args.steps, setting):
            reference = None
            for name in args.configs:
                key = f"{setting} | {problem} | {name}"
                if key in data["entries"]:
                    continue
                if reference is None:
                    reference = sequential(prior, op, y, T, setting, args.seed)
                entry = run(prior, op, y, T, setting, CONFIGS[name](), args.seed, reference,
                            diagnose=name == BASELINE)
                data["entries"][key] = dict(setting=setting, problem=problem, config=name, steps=T, **entry)
                save(path, data)
                print(f"{key}: to 1e-3 {entry['rounds_to_tol']}, stop {entry['stop_rounds']} "
                      f"{entry['status']} err {entry['stop_error']:.1e}, 8-bit {entry['first_8bit']}, "
                      f"NFE {entry['stop_nfe']} ({entry['seconds']:.0f} s)", flush=True)


def report(out: Path) -> str:
    entries = {}
    commands = []
    for file in sorted(out.glob("acceleration_*.json")):
        data = json.loads(file.read_text())
        # Keyed by file too: a re-measurement with changed task defaults must not replace the record.
        entries.update({f"{file.stem} | {k}": dict(e, commit=data["commit"]) if isinstance(e, dict) else e
                        for k, e in data["entries"].items()})
        commands.append(f"`{data['command']}` ({data['machine']}, commit {data['commit']})")
    med = lambda v: statistics.median(v) if v else float("nan")  # noqa: E731
    lines = ["# Accelerating the triangular solver (issue #19, items 4–5)", "",
             "Produced by:", ""] + [f"- {c}" for c in commands] + [
             "", "Shipped prior, hold-out crops 64×64 (scale 0.25), seed 1. *to 1e-3*: first round with the "
             "restored image within 1e-3 (relative max-abs) of the sequential chain (median; a run that never "
             "got there counts as T). *stop*: the solver's own stop round (median), *lag*: stop − to 1e-3 "
             "(largest), *8-bit*: first round with the 8-bit image equal to the sequential one to one level "
             "(median), *NFE/T* at the stop (median), *worst converged error*: largest true error among runs "
             "reported converged (must be ≤ 1e-3).", ""]
    runs = [dict(e, config=ALIASES.get(e["config"], e["config"])) for k, e in entries.items()
            if not k.split(" | ")[1].startswith(("rho", "gain"))]
    # Today's task defaults first, then each earlier commit's (the docs quote both).
    eras = ["today"] + sorted({e["commit"] for e in runs if not today(e)})
    for setting, era, T in [(s_, era, T) for s_ in SETTINGS for era in eras
                            for T in sorted({e["steps"] for e in runs if e["setting"] == s_})]:
        cell = [e for e in runs if e["setting"] == setting and e["steps"] == T
                and (today(e) if era == "today" else not today(e) and e["commit"] == era)]
        # A configuration re-run beside another in a later file is the same computation (rounds do
        # not depend on the machine's load): count each problem once.
        cell = list({(e["problem"], e["config"]): e for e in reversed(cell)}.values())[::-1]
        if not cell:
            continue
        what = (SETTINGS[setting] or "task defaults") if era == "today" else \
            f"{'the task defaults' if setting == 'defaults' else SETTINGS[setting]} as run at commit {era}"
        lines += [f"## {setting} ({what}), T = {T}", "",
                  "| configuration | problems | to 1e-3 | stop | lag (max) | 8-bit | NFE/T | "
                  "worst converged error | fallbacks |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name in CONFIGS:
            rows = [e for e in cell if e["config"] == name]
            if not rows:
                continue
            conv = [e["stop_error"] for e in rows if e["status"] == "converged"]
            lag = max((e["stop_rounds"] - (e["rounds_to_tol"] or T)) for e in rows)
            lines.append(
                f"| {name} | {len(rows)} | {med([e['rounds_to_tol'] or T for e in rows]):g} | "
                f"{med([e['stop_rounds'] for e in rows]):g} | {lag} | "
                f"{med([e['first_8bit'] or T for e in rows]):g} | "
                f"{med([e['stop_nfe'] / T for e in rows]):.1f} | "
                f"{max(conv) if conv else float('nan'):.1e} | {sum(e['fallbacks'] or 0 for e in rows)} |")
        present = [c for c in CONFIGS if any(e["config"] == c for e in cell)]
        lines += ["", "Per problem (to 1e-3 / stop), baseline first:", "",
                  "| problem | " + " | ".join(present) + " |", "|---|" + "---:|" * len(present)]
        for problem in dict.fromkeys(e["problem"] for e in cell):
            by = {e["config"]: e for e in cell if e["problem"] == problem}
            lines.append(f"| {problem.replace('learned prior, ', '')} | " + " | ".join(
                f"{by[c]['rounds_to_tol'] or '—'} / {by[c]['stop_rounds']}" if c in by else "" for c in present)
                + " |")
        entering = {name: [x for e in cell if e["config"] == name for x in e.get("window_entry_errors", [])]
                    for name in CONFIGS}
        if any(entering.values()):
            lines += ["", "Rows beyond the first window, true error (relative max-abs) when they enter it, "
                      "median (quartiles): " + "; ".join(
                          f"{name} {med(v):.2e} ({statistics.quantiles(v, n=4)[0]:.1e}–"
                          f"{statistics.quantiles(v, n=4)[2]:.1e})" for name, v in entering.items()
                          if len(v) > 1) + "."]
        base = [e for e in cell if e["config"] == BASELINE and e.get("tail_cos")]
        if base:
            cos = [c for e in base for c in e["tail_cos"]]
            ratio = [r for e in base for r in e["tail_ratio"]]
            lines += ["", f"Free diagnostic (baseline, tail rounds with image error ≤ 0.1, unaccepted "
                      f"rows, {len(cos)} row-rounds): median cos θ between a row's consecutive changes "
                      f"{med(cos):.2f} (quartiles {statistics.quantiles(cos, n=4)[0]:.2f} / "
                      f"{statistics.quantiles(cos, n=4)[2]:.2f}); median change ratio {med(ratio):.2f}; "
                      f"per problem median cos θ: " + ", ".join(
                          f"{med(e['tail_cos']):.2f}" for e in base) + "."]
        lines.append("")
    rhos = {k: e for k, e in entries.items() if k.split(" | ")[1] == "rho"}
    if rhos:
        lines += ["## Jacobian-model fidelity ρ along the replay's directions", "",
                  "ρ = ‖J d − γ J_s d‖/‖J d‖ per evaluated row and round, J d the network's exact JVP (autograd) "
                  "at the row's evaluation point, d = replay input − evaluation point; medians over rows×rounds.",
                  "", "| setting | problem | row-rounds | ρ (γ J_s, the solver's model) | ρ (J_s, γ = 1) | "
                  "ρ (best scalar γ* per row and round) | median γ | median γ* | "
                  "ρ, best scalar per 16² / 8² / 4² patch (oracle) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for e in rhos.values():
            r = e["rows"]
            lines.append(f"| {e['setting']} | {e['problem'].replace('learned prior, ', '')} | {len(r)} | "
                         + " | ".join(f"{med([x[n] for x in r]):.3f}" for n in
                                      ("rho", "rho_surrogate", "rho_best_scalar", "gamma", "best_gamma")) + " | "
                         + " / ".join(f"{med([x[n] for x in r]):.3f}" if n in r[0] else "—" for n in
                                      ("rho_patch16_oracle", "rho_patch8_oracle", "rho_patch4_oracle")) + " |")
        lines.append("")
    gains = [e for k, e in entries.items() if k.split(" | ")[1] == "gain"]
    if gains:
        lines += ["## Row-to-image gain: does the linear model bound the true one?", "",
                  "Gain of row j = max|Δ image| / max|δ| for a perturbation δ of the sequential chain's row j "
                  "(the chain re-run with the network: *true*; with ε linearised by the surrogate's Jacobian, "
                  "γ = 1, or by the solver's last secant γ: *model*), rows 1…T−2. Gain-weighted acceptance "
                  "(tol_j = tol / g_j) is honest only if model ≥ true (within 2×) for every row.", "",
                  "| setting | problem | δ | true gain (median / max) | true ÷ model, γ = 1 (median / max) | "
                  "true ÷ model, secant γ (median / max) |", "|---|---|---|---:|---:|---:|"]
        for e in gains:
            for kind in ("error at acceptance", "error at round 1", "random"):
                r = [x for x in e["rows"] if x["kind"] == kind and x["row"] > 0]
                if not r:
                    continue
                ratio = lambda name: [x["true"] / max(x[name], 1e-30) for x in r]  # noqa: E731
                lines.append(f"| {e['setting']} | {e['problem'].replace('learned prior, ', '')} | {kind} | "
                             f"{med([x['true'] for x in r]):.2f} / {max(x['true'] for x in r):.2f} | "
                             f"{med(ratio('surrogate')):.2f} / {max(ratio('surrogate')):.2f} | "
                             f"{med(ratio('secant')):.2f} / {max(ratio('secant')):.2f} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    (out / "acceleration.md").write_text(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["bench"])
    parser.add_argument("--tasks", nargs="+", default=["sr4", "deblur_gauss", "inpaint_random"])
    parser.add_argument("--photos", nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--rho", action="store_true", help="measure the Jacobian model's fidelity ρ")
    parser.add_argument("--row-stride", type=int, default=1, help="--rho: every k-th row (cost)")
    parser.add_argument("--gain", action="store_true", help="check linear models' row-to-image gain")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out))
        return
    torch.set_num_threads(1)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    path = args.out / f"acceleration_{args.tag}.json"
    data = json.loads(path.read_text()) if path.exists() else dict(entries={})
    data.update(command="python benchmarks/acceleration.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                machine=f"2-core CPU, shared ({platform.machine()}, 1 thread, torch {torch.__version__})",
                commit=commit())
    if args.rho or args.gain:
        import model_studies   # the offline studies of the Jacobian model (ρ, row-to-image gain)

        (model_studies.rho if args.rho else model_studies.gain)(args, path, data)
    else:
        measure(args, path, data)


if __name__ == "__main__":
    sys.exit(main())
