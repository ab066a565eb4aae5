"""Which Jacobian model would the triangular solver's replay need? ρ of candidate models along the
directions it actually replays (issue #19, item 4; research note §5 item 2).

From one logged solve of the secant model (``model_studies._recorded_solve``; the default solver
until the multisecant model measured better here), for every unaccepted row j and
round k: d = (row j's replay input) − U_j (its last evaluation point), J d the network's exact JVP
at U_j (forward-mode AD, ``exact_jvp.forward_jvp``), and each model's M d; ρ = ‖J d − M d‖ / ‖J d‖.
Models (none calls the network beyond what the solver already evaluates):

- ``secant``: the logged solver's γ_j J_s (J_s the Gaussian surrogate's Jacobian, γ_j the row's secant scale);
- ``own m``: a multisecant (type-II Broyden) update of γ_j J_s by row j's last m secant pairs
  (s, y) = (U^k − U^{k'}, E^k − E^{k'}) of consecutive network evaluations: exact along each s;
- ``rows ±r``: the same with the latest pair of every row within r of j (rows of one round are
  evaluated in the same batch, and neighbouring rows' Jacobians are close), plus row j's own.

A model is worth building into the solver only if it lowers ρ measurably (the issue's rule); the
research note asks for half of the secant model's.

    nice python benchmarks/jacobian_models.py --settings defaults --photos flower astronaut
    python benchmarks/jacobian_models.py --report
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import acceleration  # noqa: E402
import model_studies  # noqa: E402
from exact_jvp import forward_jvp  # noqa: E402

from fixedpoint_ir.backends import multisecant as multisecant_module  # noqa: E402,F401  (its ridge, patched by tests)
from fixedpoint_ir.backends.multisecant import SecantHistory  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODELS = ("secant", "own 1", "own 2", "own 3", "rows ±1", "rows ±2", "rows ±4")


def secant_pairs(log, width):
    """Per round k and row, the (s, y) pairs of row j's consecutive network evaluations up to round
    k, newest last. Row j is evaluated in round 1 if it is in the first window, later exactly when
    its evaluation point U moves; its first evaluation only replaces the surrogate's e (no pair)."""
    rows = log[0]["at"].shape[0]
    history = [[] for _ in range(rows)]
    last = [None] * rows               # (U, E) of the row's latest network evaluation
    out = []
    for k, rec in enumerate(log):
        for j in range(rows):
            u, e = rec["at"][j, 0], rec["e"][j, 0]
            evaluated = (k == 0 and j < width) or (k > 0 and not torch.equal(u, log[k - 1]["at"][j, 0]))
            if evaluated:
                if last[j] is not None:
                    history[j].append((u - last[j][0], e - last[j][1]))
                last[j] = (u, e)
        out.append([list(h) for h in history])
    return out


class _RowModel:
    """Row j's B = J_s of the chain, as the solver's SecantHistory reads it (one row, one image)."""

    def __init__(self, chain, j):
        self.chain, self.j = chain, j

    def surrogate_jvp(self, rows, d):
        return self.chain.surrogate_jvp(self.j, d)


def multisecant(chain, j, gamma, pairs, d):
    """M d of the solver's own multisecant model (backends/multisecant.py) for row j with these
    (s, y) pairs, oldest first, and B = γ J_s."""
    du = d.unsqueeze(0)
    if not pairs:
        return (gamma * chain.surrogate_jvp(j, du))[0]
    history = SecantHistory(d.unsqueeze(0).unsqueeze(0), len(pairs))
    zero = torch.zeros(1, dtype=torch.long)
    for s, y in pairs:
        history.push(zero, zero, s.unsqueeze(0), y.unsqueeze(0))
    history.prepare(_RowModel(chain, j), torch.full((1, 1), gamma, dtype=d.dtype))
    return (gamma * chain.surrogate_jvp(j, du) + history.correction(0, du))[0]


def study(prior, op, y, T, setting, seed, row_stride):
    solver, chain, _ = model_studies._recorded_solve(prior, op, y, T, setting, seed)
    timesteps = chain.coefficients.timesteps
    pairs = secant_pairs(solver.log, min(solver.window or T, T))
    out = []
    for k, rec in enumerate(solver.log):
        p = int(rec["prefix"].min())
        rows = [j for j in range(p + 1, T) if (j % row_stride == 0 or j == p + 1)
                and float((rec["inputs"][j] - rec["at"][j]).abs().max()) > 0]
        if not rows:
            continue
        u = rec["at"][rows, 0].contiguous()
        d = (rec["inputs"] - rec["at"])[rows, 0].contiguous()
        jd = forward_jvp(prior, u, timesteps[rows], d).double()
        for i, j in enumerate(rows):
            gamma = float(rec["scale"][j, 0])
            norm = float(jd[i].norm())
            model = lambda pairs: multisecant(chain, j, gamma, pairs, d[i]).double()  # noqa: E731
            row = dict(round=k + 1, row=j, d_max=float(d[i].abs().max()))
            row["secant"] = float((jd[i] - model([])).norm()) / norm
            own = pairs[k][j]
            for name in MODELS[1:]:
                kind, n = name.split()
                if kind == "own":
                    chosen = own[-int(n):]
                else:
                    r = int(n.lstrip("±"))
                    chosen = [pairs[k][i2][-1] for i2 in range(max(0, j - r), min(T, j + r + 1))
                              if i2 != j and pairs[k][i2]] + own[-1:]
                row[name] = float((jd[i] - model(chosen)).norm()) / norm if chosen else row["secant"]
            row["pairs_own"] = len(own)
            out.append(row)
    return out


def report(path: Path) -> str:
    """Median ρ per problem and model (and the ratio to the secant model's)."""
    data = json.loads(path.read_text())
    lines = ["# Jacobian models along the triangular solver's own directions", "",
             f"`{data['command']}` (and earlier runs into the same file), commit {data['commit']}, "
             f"{data['machine']}. Shipped prior, 64×64 hold-out crops, seed 1, the default solver's logged "
             "run; ρ = ‖J d − M d‖ / ‖J d‖ against the network's forward-mode JVP, median over every "
             "unaccepted row and round. `own m`: the row's last m secant pairs; `rows ±r`: the latest pair "
             "of each row within r, plus its own (see the script's docstring).", "",
             "| setting | problem | rows×rounds | " + " | ".join(MODELS) + " |",
             "|---|---|---:|" + "---:|" * len(MODELS)]
    for entry in data["entries"].values():
        rows = entry["rows"]
        med = {m: statistics.median(r[m] for r in rows) for m in MODELS}
        cells = [f"{med[m]:.3f}" + ("" if m == "secant" else f" ({med[m] / med['secant']:.2f}×)") for m in MODELS]
        problem = entry["problem"].replace("learned prior, ", "")
        lines.append(f"| {entry['setting']} | {problem} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=list(acceleration.SETTINGS), default=["defaults"])
    parser.add_argument("--tasks", nargs="+", default=["sr4", "deblur_gauss", "inpaint_random"])
    parser.add_argument("--photos", nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--row-stride", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "jacobian_models.json")
    parser.add_argument("--report", action="store_true", help="write jacobian_models.md from --out")
    args = parser.parse_args(argv)
    if args.report:
        text = report(args.out)
        args.out.with_suffix(".md").write_text(text)
        print(text)
        return
    torch.set_num_threads(1)
    data = json.loads(args.out.read_text()) if args.out.exists() else dict(entries={})
    data.update(command="python benchmarks/jacobian_models.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                machine=f"2-core CPU, shared ({platform.machine()}, 1 thread, torch {torch.__version__})",
                commit=acceleration.commit())
    for setting in args.settings:
        for problem, prior, op, y, T in acceleration.problems(args.tasks, args.photos, args.steps, setting):
            key = f"{setting} | {problem}"
            if key in data["entries"]:
                continue
            rows = study(prior, op, y, T, setting, args.seed, args.row_stride)
            data["entries"][key] = dict(setting=setting, problem=problem, steps=T,
                                        sampling=acceleration.sampling_of(op, setting, T), rows=rows)
            acceleration.save(args.out, data)
            print(key + ": median ρ " + ", ".join(
                f"{m} {statistics.median(r[m] for r in rows):.3f}" for m in MODELS) + f" ({len(rows)} rows×rounds)",
                flush=True)


if __name__ == "__main__":
    sys.exit(main())
