"""The side-by-side table and plots from the cells ``side_by_side.py`` measured (a JSON line each).

Writes ``solvers_side_by_side.md`` next to the cells and one figure per (T, setting) under
``figures/``: the true error of the restored image after every round, all solvers on one axis per
problem.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import torch

import side_by_side as sbs

TARGET = 1e-3
SETTING_TEXT = {"defaults": "task defaults (what `Sampler(prior, op)` gives)",
                "paper": "etw = 0.1, nw = 0, pure noise, whole schedule (DeqIR's)"}


def first(cell: dict, test) -> tuple[int | None, int | None]:
    """(rounds, NFE) at the first round whose record passes ``test``."""
    for k, (err, same) in enumerate(zip(cell["errors"], cell["same_8bit"])):
        if test(err, same):
            return k + 1, cell["nfes"][k]
    return None, None


def to_target(cell):
    return first(cell, lambda err, same: err <= TARGET)


def to_8bit(cell):
    return first(cell, lambda err, same: same)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _span(values, total) -> str:
    reached = [v for v in values if v is not None]
    if not reached:
        return f"— (0/{total})"
    text = f"{_median(reached):g}"
    if min(reached) != max(reached):
        text += f" ({min(reached)}–{max(reached)})"
    return text + ("" if len(reached) == total else f" [{len(reached)}/{total}]")


def summary_rows(cells: list[dict]) -> list[str]:
    lines = ["| solver | problems | rounds to 1e-3 | NFE to 1e-3 | rounds to 8-bit | NFE to 8-bit | "
             "stop: rounds | stop: NFE | stop: status | stop: true error (median, max) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name in sbs.SOLVER_NAMES:
        mine = [c for c in cells if c["solver"] == name]
        if not mine:
            continue
        n = len(mine)
        a, b = [to_target(c) for c in mine], [to_8bit(c) for c in mine]
        statuses = statistics.multimode([c["status"] for c in mine])
        counts = ", ".join(f"{s} {sum(c['status'] == s for c in mine)}" for s in
                           dict.fromkeys(c["status"] for c in mine))
        errors = [c["final_error"] for c in mine]
        stop = "— (reference, no stop rule)" if name == sbs.NEWTON else None
        label = sbs.LABELS[name] + (f", {_median([c['jvps'] for c in mine]):g} JVPs (median)"
                                    if name == sbs.NEWTON else "")
        lines.append(
            f"| {label} | {n} | {_span([r for r, _ in a], n)} | {_span([f for _, f in a], n)} | "
            f"{_span([r for r, _ in b], n)} | {_span([f for _, f in b], n)} | "
            + (f"{stop} | — | — | — |" if stop else
               f"{_span([c['rounds'] for c in mine], n)} | {_span([c['nfe'] for c in mine], n)} | "
               f"{counts or statuses} | {statistics.median(errors):.1e}, {max(errors):.1e} |"))
    return lines


def detail_rows(cells: list[dict]) -> list[str]:
    lines = ["| problem | solver | to 1e-3: rounds / NFE | 8-bit: rounds / NFE | stop: rounds / NFE | "
             "status | true error at stop | seconds |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for cell in sorted(cells, key=lambda c: (c["problem"].split("/")[1], c["problem"],
                                             sbs.SOLVER_NAMES.index(c["solver"]))):
        pair = lambda rf: "—" if rf[0] is None else f"{rf[0]} / {rf[1]}"  # noqa: E731
        status = cell["status"] + (f" ({cell['jvps']} JVPs)" if cell["solver"] == sbs.NEWTON else "")
        lines.append(f"| {cell['problem']} | {sbs.LABELS[cell['solver']]} | {pair(to_target(cell))} | "
                     f"{pair(to_8bit(cell))} | {cell['rounds']} / {cell['nfe']} | {status} | "
                     f"{cell['final_error']:.1e} | {cell['seconds']:.0f} |")
    return lines


def plot(cells: list[dict], title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    problems = sorted({c["problem"] for c in cells}, key=lambda p: (p.split("/")[1], p))
    columns = min(3, len(problems))
    lines_of_plots = -(-len(problems) // columns)
    fig = Figure(figsize=(4.4 * columns, 3.2 * lines_of_plots + 0.8), dpi=90)
    FigureCanvasAgg(fig)
    colours = dict(zip(sbs.SOLVER_NAMES, ["tab:grey", "tab:orange", "tab:green", "tab:purple", "tab:blue",
                                          "black"]))
    for k, problem in enumerate(problems):
        ax = fig.add_subplot(lines_of_plots, columns, k + 1)
        for cell in sorted((c for c in cells if c["problem"] == problem),
                           key=lambda c: sbs.SOLVER_NAMES.index(c["solver"])):
            rounds = range(1, len(cell["errors"]) + 1)
            ax.semilogy(rounds, [max(e, 1e-9) for e in cell["errors"]], marker=".", ms=3,
                        color=colours[cell["solver"]], ls=":" if cell["solver"] == sbs.NEWTON else "-",
                        label=sbs.LABELS[cell["solver"]])
            if cell["solver"] != sbs.NEWTON:   # where the solver's own rule stopped it
                ax.scatter([cell["rounds"]], [max(cell["final_error"], 1e-9)], s=30, marker="x",
                           color=colours[cell["solver"]])
        ax.axhline(TARGET, color="k", lw=0.6, ls="--")
        ax.set_title(problem, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylabel("max |x − x*| / max |x*|" if k % columns == 0 else "", fontsize=8)
        ax.tick_params(labelsize=7)
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    order = [sbs.LABELS[s] for s in sbs.SOLVER_NAMES if sbs.LABELS[s] in handles]
    fig.legend([handles[label] for label in order], order, loc="lower center", ncol=len(order), fontsize=7)
    fig.suptitle(title + " (× marks each solver's own stop)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def is_current(cell: dict) -> bool:
    """Whether the cell ran with today's chain settings for its task, T and setting and today's
    defaults of its solver (an older cell stays in the JSON lines, out of the tables)."""
    from fixedpoint_ir.operators.tasks import make_operator

    task = cell["problem"].split("/")[1]
    operator = make_operator(task, (3, 64, 64), generator=torch.Generator().manual_seed(0))
    return sbs.is_today(cell, sbs.sampling_of(operator, cell["setting"], cell["steps"]))


def write(cells_path: Path) -> Path:
    every = list(sbs.load(cells_path).values())
    cells = [c for c in every if is_current(c)]
    out = cells_path.with_suffix(".md")
    commands = sorted({c["command"] for c in cells})
    commits = sorted({c["commit"] for c in cells})
    dates = sorted(c["date"] for c in cells)
    lines = ["# Which parallel sampler? Every solver side by side", "",
             f"Cells: `{cells_path.name}` (one JSON line each, with its per-round trace). Measured "
             f"{dates[0] if dates else '—'} … {dates[-1] if dates else '—'} UTC at commit(s) {', '.join(commits)} "
             f"on {sbs.machine()} (torch CPU, float32). Commands:", ""]
    lines += [f"    {c}" for c in commands] + ["", "Report: `python benchmarks/side_by_side.py --report`.", "",
              "Shipped prior, 64×64 hold-out crops (scale 0.25), seed 1, σ_y = 0, every solver at its defaults "
              "through `Sampler` (default init, the surrogate trajectory; ParaDiGMS and ParaTAA start from "
              "x_T as published). Error: max |x − x*| / max |x*| of the restored image against the sequential "
              "chain with the same noise. *to 1e-3*: first round within 1e-3. *8-bit*: first round whose 8-bit "
              "image equals the sequential one to one level in every pixel. *stop*: what the solver returns by "
              "its own rule (converged = certified, stopped = its change-based rule fired, max_rounds = its "
              "round limit) and the true error of that image. Counts are medians over the problems (range); "
              "[k/n]: only k of n problems reached it. NFE: network evaluations per image; Newton's JVPs "
              "(each ≈ 6.7 network passes on this CPU, `jvp_cost.md`) are not in its NFE.", ""]
    if len(cells) < len(every):
        lines += [f"{len(every) - len(cells)} cells measured with earlier task defaults are kept in the JSON "
                  "lines and left out of the tables (re-run the command to measure them again).", ""]
    for steps in sorted({c["steps"] for c in cells}):
        for setting in sbs.SETTINGS:
            group = [c for c in cells if c["steps"] == steps and c["setting"] == setting]
            if not group:
                continue
            problems = sorted({c["problem"] for c in group})
            title = f"T = {steps}, {SETTING_TEXT[setting]}"
            figure = out.parent / "figures" / f"side_by_side_T{steps}_{setting}.png"
            plot(group, title, figure)
            # Medians compare like with like: the problems every (non-reference) solver has finished.
            sets = [{c["problem"] for c in group if c["solver"] == s} for s in sbs.SOLVER_NAMES if s != sbs.NEWTON]
            common = set.intersection(*[p for p in sets if p]) if any(sets) else set(problems)
            compared = [c for c in group if c["problem"] in common or c["solver"] == sbs.NEWTON]
            newton = sorted({c["problem"] for c in group if c["solver"] == sbs.NEWTON})
            lines += [f"## {title}", "", f"Medians over {len(common)} problems every solver finished "
                      f"({', '.join(sorted(common))}); Newton over {', '.join(newton) or 'none'}. "
                      f"Measured: {', '.join(problems)}.", ""] + summary_rows(compared) + \
                ["", f"![{title}](figures/{figure.name})", "", "<details><summary>every cell</summary>", ""] + \
                detail_rows(group) + ["", "</details>", ""]
    out.write_text("\n".join(lines + missing_rows(cells)) + "\n")
    return out


def missing_rows(cells: list[dict]) -> list[str]:
    """The cells of the issue's grid that were not measured (9 problems at T = 20, flower × 3 at
    T = 50 and 100; every solver, both settings)."""
    from fixedpoint_ir.photos import HOLDOUT

    done = {(c["solver"], c["problem"], c["steps"], c["setting"]) for c in cells}
    grid = {20: [f"{p}/{t}" for t in sbs.TASKS for p in HOLDOUT],
            50: [f"flower/{t}" for t in sbs.TASKS], 100: [f"flower/{t}" for t in sbs.TASKS]}
    lines = []
    for steps, problems in grid.items():
        for setting in sbs.SETTINGS:
            for solver in sbs.SOLVER_NAMES:
                left = [p for p in problems if (solver, p, steps, setting) not in done]
                if left:
                    lines.append(f"| {steps} | {setting} | {sbs.LABELS[solver]} | "
                                 f"{'all ' + str(len(left)) if len(left) == len(problems) else ', '.join(left)} |")
    if not lines:
        return []
    return ["## Not measured (CPU time ran out)", "", "| T | setting | solver | problems |",
            "|---:|---|---|---|"] + lines + [""]
