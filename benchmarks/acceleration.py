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
import math
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


class _Recorder(Triangular):
    """The triangular solver recording what its replay linearises around (for ``--rho``)."""

    def solve(self, f, z0, callback=None):
        self.log = []
        return super().solve(f, z0, callback)

    def _replay(self, f, z, e_cache, at, scale, prefix, secants=None):
        fz, inputs = super()._replay(f, z, e_cache, at, scale, prefix, secants)
        self.log.append(dict(at=at.clone(), inputs=inputs.clone(), scale=scale.clone(), prefix=prefix.clone(),
                             e=e_cache.clone()))
        return fz, inputs


def _recorded_solve(prior, op, y, T, setting, seed):
    """One solve of the secant model (the default when the ρ and gain studies were made) with the
    per-round log (``_Recorder``), the chain it built and, per round, (F(z), accepted prefix): what
    the offline ρ and gain studies read."""
    solver = _Recorder(linearize="secant")
    sampler = Sampler(prior, op, solver, steps=T, **SETTINGS[setting])
    box, iterates = {}, []
    original = sampler.chain
    sampler.chain = lambda *a, **k: box.setdefault("chain", original(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sampler.restore(y, generator=convergence.seeded(seed, y.device),
                        callback=lambda info: iterates.append((info.fz.clone(), list(info.extra["prefix"]))))
    return solver, box["chain"], iterates


def rho(args, path, data):
    """ρ per row and round along the replay's own directions (offline, from a logged run)."""
    from torch.autograd.functional import jvp   # forward mode fails on the shipped UNet (a view)

    for setting in args.settings:
        for problem, prior, op, y, T in problems(args.tasks, args.photos, args.steps, setting):
            key = f"rho | {setting} | {problem}"
            if key in data["entries"]:
                continue
            solver, chain, _ = _recorded_solve(prior, op, y, T, setting, args.seed)
            timesteps = chain.coefficients.timesteps
            rows_out = []
            for k, rec in enumerate(solver.log):
                p = int(rec["prefix"].min())
                rows = [j for j in range(p + 1, T) if j % args.row_stride == 0 or j == p + 1]
                u, d = rec["at"][rows, 0], (rec["inputs"] - rec["at"])[rows, 0]
                keep = [i for i in range(len(rows)) if float(d[i].abs().max()) > 0]
                if not keep:
                    continue
                rows, u, d = [rows[i] for i in keep], u[keep], d[keep]
                t = timesteps[rows]
                _, jd = jvp(lambda v: prior.eps(v, t), u.contiguous(), d.contiguous())
                js = torch.stack([chain.surrogate_jvp(j, d[i:i + 1])[0] for i, j in enumerate(rows)])
                gamma = rec["scale"][rows, 0].view(-1, 1, 1, 1)
                flat = lambda v: v.flatten(1).double()  # noqa: E731
                jd_, js_ = flat(jd), flat(js)
                norm = jd_.norm(dim=1).clamp_min(1e-300)
                best = (jd_ * js_).sum(1) / (js_ * js_).sum(1).clamp_min(1e-300)
                patch = {size: _best_patch_rho(jd.double(), js.double(), size) for size in (16, 8, 4)}
                for i, j in enumerate(rows):
                    rows_out.append(dict(**{f"rho_patch{size}_oracle": float(v[i]) for size, v in patch.items()},
                        round=k + 1, row=j, gamma=float(gamma[i]), best_gamma=float(best[i]),
                        rho=float((jd_[i] - gamma[i].flatten().double() * js_[i]).norm() / norm[i]),
                        rho_surrogate=float((jd_[i] - js_[i]).norm() / norm[i]),
                        rho_best_scalar=float((jd_[i] - best[i] * js_[i]).norm() / norm[i]),
                        d_max=float(d[i].abs().max())))
            data["entries"][key] = dict(setting=setting, problem=problem, steps=T, rows=rows_out)
            save(path, data)
            med = lambda name: statistics.median(r[name] for r in rows_out)  # noqa: E731
            print(f"{key}: median ρ {med('rho'):.3f}, surrogate {med('rho_surrogate'):.3f}, "
                  f"best scalar {med('rho_best_scalar'):.3f} ({len(rows_out)} rows×rounds)", flush=True)


def _best_patch_rho(jd, js, size):
    """ρ of the best scalar per size×size patch (all channels), fitted on the direction itself: an
    oracle, a lower bound for any spatially varying secant gain of that resolution."""
    pool = lambda v: torch.nn.functional.avg_pool2d(v.sum(1, keepdim=True), size)  # noqa: E731
    gamma = pool(jd * js) / pool(js * js).clamp_min(1e-300)
    fitted = torch.nn.functional.interpolate(gamma, scale_factor=size, mode="nearest") * js
    return (jd - fitted).flatten(1).norm(dim=1) / jd.flatten(1).norm(dim=1).clamp_min(1e-300)


def gain(args, path, data):
    """Does a linear model's gain from row j to the image bound the true one? (item 5's gate for
    gain-weighted acceptance). δ_j = the baseline iterate's error at row j (z_j^k − z*_j, at the
    round k where row j was accepted, and at the first round for a large δ) and one random δ of the
    same max-abs size; the true gain is max|Δ image| / max|δ| of the sequential chain re-run from
    z*_j + δ (all rows' perturbed chains batched per time step), the model's the same quantity for
    the chain with ε linearised by the surrogate's Jacobian (γ = 1) and by the solver's last γ."""
    for setting in args.settings:
        for problem, prior, op, y, T in problems(args.tasks, args.photos, args.steps, setting):
            key = f"gain | {setting} | {problem}"
            if key in data["entries"]:
                continue
            solver, chain, iterates = _recorded_solve(prior, op, y, T, setting, args.seed)
            star = chain.sequential()                                     # (T, 1, C, H, W)
            e_star = chain.eps(star)                                      # ε along the sequential chain
            gamma = solver.log[-1]["scale"][:, 0]
            gen = torch.Generator().manual_seed(0)
            starts, deltas, kinds = [], [], []
            for j in range(T - 1):
                accepted_at = next((k for k, (_, pre) in enumerate(iterates) if pre[0] > j), len(iterates) - 1)
                for kind, k in (("error at acceptance", accepted_at), ("error at round 1", 0)):
                    d = iterates[k][0][j] - star[j]
                    if float(d.abs().max()) > 0:
                        starts.append(j), deltas.append(d), kinds.append(kind)
                d = torch.randn(star[j].shape, generator=gen, dtype=star.dtype)
                size = max(float(deltas[-1].abs().max()) if deltas else 1e-3, 1e-6)
                starts.append(j), deltas.append(d * size / float(d.abs().max())), kinds.append("random")
            starts_t = torch.tensor(starts)
            true = _propagate(chain, star, e_star, starts_t, torch.cat(deltas), exact=True)
            model1 = _propagate(chain, star, e_star, starts_t, torch.cat(deltas), slope=torch.ones(T))
            model_g = _propagate(chain, star, e_star, starts_t, torch.cat(deltas), slope=gamma)
            size = torch.cat(deltas).flatten(1).abs().amax(1)
            out = [dict(row=int(j), kind=kind, delta=float(size[i]),
                        true=float(true[i] / size[i]), surrogate=float(model1[i] / size[i]),
                        secant=float(model_g[i] / size[i]))
                   for i, (j, kind) in enumerate(zip(starts, kinds))]
            data["entries"][key] = dict(setting=setting, problem=problem, steps=T, rows=out)
            save(path, data)
            worst = max(r["true"] / max(r["surrogate"], 1e-30) for r in out)
            print(f"{key}: largest true/model gain (γ = 1) {worst:.2f}; median true gain "
                  f"{statistics.median(r['true'] for r in out):.3f}", flush=True)


def _propagate(chain, star, e_star, starts, deltas, exact=False, slope=None):
    """max|Δ image| for the chain from row starts[i] perturbed by deltas[i] (batched per step):
    with the network (``exact``) or with ε linearised at the sequential chain (surrogate × slope)."""
    T = star.shape[0]
    x = star[starts, 0] + deltas                      # state after row j: z_j + δ
    for i in range(1, T):
        live = starts < i                             # chains that have reached row i
        if not bool(live.any()):
            continue
        u = x[live]
        if exact:
            with torch.no_grad():
                e = chain.prior.eps(u, chain.coefficients.timesteps[i].expand(u.shape[0]))
        else:
            e = e_star[i, 0] + float(slope[i]) * chain.surrogate_jvp(i, u - star[i - 1, 0])
        x[live] = chain.step(i, u, e)
    return (x - star[-1, 0]).flatten(1).abs().amax(1)


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
    (rho if args.rho else gain if args.gain else measure)(args, path, data)


if __name__ == "__main__":
    sys.exit(main())
