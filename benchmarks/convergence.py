"""How many rounds and network evaluations each solver needs to reach the sequential answer.

For every problem and solver configuration: rounds and NFEs (per image) until the restored image
is within 1e-3 of the sequential chain (max-abs error relative to the image's max), what the
solver reports when it stops (rounds, NFEs, status, true error: the honest-stopping check),
solver overhead as a share of the round time, and wall-clock of the parallel solve next to the
sequential sampler, measured in the same run. Writes ``convergence_<problems>.md`` and one PNG
per problem (residual vs round and error vs round, one curve per solver) to ``--out``, and the
per-round traces of every run as ``convergence_<problems>.json``.

The triangular solver linearises the network around a Gaussian data model (the prior's
``surrogate``: a power-law spectrum for the shipped prior, white for the analytic one); one row
shows the white model on the learned prior for comparison. A last row, *Newton, exact Jacobian*,
is a reference and not a parallel solver: each of its rounds is one batched evaluation like the
others, followed by T sequential Jacobian–vector products of the network (counted separately) to
replay the chain linearised exactly. It shows how few rounds a perfect Jacobian model would need.

    python benchmarks/convergence.py                      # everything (learned prior if shipped)
    python benchmarks/convergence.py --problems analytic  # the analytic mixture prior only
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fixedpoint_ir import GaussianMixturePrior, Sampler
from fixedpoint_ir.backends import Anderson, Broyden, Picard, Triangular
from fixedpoint_ir.operators import AveragePool, Colorization, Mask
from fixedpoint_ir.surrogate import WhiteGaussian

TARGET = 1e-3


@dataclass
class Config:
    name: str
    make: callable
    init: str = "x_T"
    baseline: bool = False
    surrogate: object = None      # None: the prior's own (Sampler default)
    max_steps: int | None = None  # skipped on longer chains (too costly on a CPU)


CONFIGS = [
    Config("Picard (baseline)", lambda T: Picard(tol=0.0), baseline=True),
    Config("Anderson, published (baseline)", lambda T: Anderson.published(max_rounds=T), baseline=True),
    Config("Anderson, triangular", lambda T: Anderson(tol=0.0, max_rounds=T, mixing="triangular",
                                                      exact_prefix=True)),
    Config("Broyden", lambda T: Broyden(tol=1e-4, max_rounds=T, exact_prefix=False)),  # as measured
    Config("Triangular, no linearisation", lambda T: Triangular(tol=TARGET, linearize="none")),
    Config("Triangular, secant", lambda T: Triangular(tol=TARGET, window=None)),
    Config("Triangular, secant, noise-scaled tol", lambda T: Triangular(tol=TARGET, row_tol="noise")),
    Config("Triangular, secant + surrogate init", lambda T: Triangular(tol=TARGET, window=None),
           init="surrogate"),
    Config("Triangular, secant, window 12 + surrogate init",
           lambda T: Triangular(tol=TARGET, window=12), init="surrogate"),
    Config("Triangular, secant, window 8 + surrogate init",
           lambda T: Triangular(tol=TARGET, window=8), init="surrogate"),
    Config("Triangular, secant + surrogate init, white surrogate",
           lambda T: Triangular(tol=TARGET, window=None), init="surrogate", surrogate=WhiteGaussian()),
]
DEFAULT = "Sampler default (Triangular(), surrogate init)"
# The previous and the new default side by side (``--configs default``: cheap enough for T = 50
# and 100 on a shared 2-core CPU, where only the new default runs). At T ≤ 24 the default window
# changes nothing, so the new default there is the new stopping rule alone.
DEFAULT_CONFIGS = [
    Config("Picard (baseline)", lambda T: Picard(tol=0.0), baseline=True, max_steps=0),
    Config("Triangular, previous default (stop='safety', all rows)",
           lambda T: Triangular(tol=TARGET, stop="safety", window=None), init="surrogate", max_steps=20),
    Config(DEFAULT, lambda T: Triangular(tol=TARGET), init="surrogate"),
]
NEWTON = "Newton, exact Jacobian (reference, + T sequential JVPs per round)"



class TimedPrior:
    """Adds up the seconds spent inside the network (to separate solver overhead)."""

    def __init__(self, prior):
        self.prior, self.seconds = prior, 0.0
        self._original = prior.predict_eps

        def timed(x, t):
            start = clock(x.device)
            out = self._original(x, t)
            self.seconds += clock(x.device) - start
            return out

        prior.predict_eps = timed


@dataclass
class Outcome:
    errors: list = field(default_factory=list)
    same_8bit: list = field(default_factory=list)
    residuals: list = field(default_factory=list)
    nfes: list = field(default_factory=list)
    rounds: int = 0
    nfe: int = 0
    status: str = ""
    final_error: float = float("nan")
    seconds: float = 0.0
    network_seconds: float = 0.0

    def first_8bit(self):
        """First round whose 8-bit image equals the sequential chain's to one level everywhere."""
        return next((k + 1 for k, same in enumerate(self.same_8bit) if same), None)

    def first_within(self, target=TARGET):
        for k, err in enumerate(self.errors):
            if err <= target:
                return k + 1, self.nfes[k]
        return None, None


def clock(device):
    """Wall-clock seconds, after the device's queued work is done (CUDA runs asynchronously)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def seeded(seed, device):
    return torch.Generator(device=device).manual_seed(seed)


def relative_error(image, reference):
    return float((image - reference).abs().max() / reference.abs().max())


def to_8bit(image):
    """[-1, 1] → {0, …, 255}, as an image file would store it."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round()


def same_8bit(image, reference):
    """What a user sees: every pixel of the 8-bit image within one level of the sequential one."""
    return bool((to_8bit(image) - to_8bit(reference)).abs().max() <= 1)


def run_config(prior, operator, y, steps, config, seed, reference, sampling=None):
    """One solve, with the true error after every round. ``sampling``: the Sampler's chain
    settings (default etw = 0.1, nw = 0, this benchmark's)."""
    solver = config.make(steps)
    sampler = Sampler(prior, operator, solver, steps=steps, init=config.init, surrogate=config.surrogate,
                      **(dict(etw=0.1, nw=0.0) if sampling is None else sampling))
    timer = TimedPrior(prior)
    out = Outcome()
    box = {}
    original_chain = sampler.chain

    def chain(*args, **kwargs):
        box["chain"] = original_chain(*args, **kwargs)
        return box["chain"]

    sampler.chain = chain
    returns_iterate = isinstance(solver, Anderson) and not solver.return_image

    def callback(info):
        image = (info.z if returns_iterate else info.fz)[-1]
        out.errors.append(relative_error(image, reference))
        out.same_8bit.append(same_8bit(image, reference))
        out.residuals.append(info.residual)
        out.nfes.append(box["chain"].nfe)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        start = clock(y.device)
        result = sampler.restore(y, generator=seeded(seed, y.device), callback=callback)
        out.seconds = clock(y.device) - start
    prior.predict_eps = timer._original
    out.network_seconds = timer.seconds
    out.rounds, out.nfe, out.status = result.rounds, result.nfe, result.status.value
    out.final_error = relative_error(result.image, reference)
    return out


def newton_reference(prior, operator, y, steps, seed, reference, max_rounds=10, sampling=None, done=None,
                     network_jvp=None):
    """Newton's method on the whole trajectory with the network's exact Jacobian: per round, one
    batched evaluation at the current inputs, then the chain replayed with e_j linearised exactly
    (e_j(x) ≈ E_j + J_j (x − U_j), one JVP per row, sequential). Starts from the surrogate.
    ``sampling``: the Sampler's chain settings (default etw = 0.1, nw = 0, this benchmark's).
    ``done(outcome)``: when to stop (default: the image within TARGET / 100 of the reference).
    ``network_jvp(prior, x, t, v)``: J v (default autograd's double-backward JVP)."""
    from torch.autograd.functional import jvp

    sampler = Sampler(prior, operator, "picard", steps=steps, **(sampling or dict(etw=0.1, nw=0.0)))
    chain = sampler.chain(y, generator=seeded(seed, y.device))
    out, jvps = Outcome(), 0
    z = chain.surrogate_trajectory()
    start = clock(y.device)
    for _ in range(max_rounds):
        inputs = chain.network_inputs(z)
        e = chain.eps(z)
        x, rows = chain.x_T, []
        for j in range(chain.num_rows):
            t = chain.coefficients.timesteps[j].expand(x.shape[0])
            if network_jvp is None:
                _, jd = jvp(lambda v: prior.eps(v, t), inputs[j].contiguous(), (x - inputs[j]).contiguous())
            else:
                jd = network_jvp(prior, inputs[j], t, x - inputs[j])
            jvps += x.shape[0]
            x = chain.step(j, x, e[j] + jd)
            rows.append(x)
        change = float((torch.stack(rows) - z).abs().max())
        z = torch.stack(rows)
        out.errors.append(relative_error(z[-1], reference))
        out.same_8bit.append(same_8bit(z[-1], reference))
        out.residuals.append(change)
        out.nfes.append(chain.nfe)
        if (done(out) if done is not None else out.errors[-1] <= TARGET / 100):
            break
    out.seconds = clock(y.device) - start
    out.rounds, out.nfe, out.status = len(out.errors), chain.nfe, f"reference ({jvps} JVPs)"
    out.final_error = out.errors[-1]
    return out


def sequential_reference(prior, operator, y, steps, seed):
    sampler = Sampler(prior, operator, "picard", steps=steps, etw=0.1, nw=0.0)
    start = clock(y.device)
    result = sampler.sequential(y, generator=seeded(seed, y.device))
    return result.image, clock(y.device) - start


def analytic_problems(size=32, device="cpu"):
    gen = torch.Generator().manual_seed(0)
    prior = GaussianMixturePrior(mu=0.5, var=0.05)
    # Ground truth drawn from the prior itself.
    sign = torch.where(torch.rand(1, 3, size, size, generator=gen) < 0.5, -1.0, 1.0)
    x = (0.5 * sign + 0.05 ** 0.5 * torch.randn(1, 3, size, size, generator=gen)).clamp(-1, 1)
    mask = torch.rand(size, size, generator=gen) > 0.5
    ops = {"sr4": AveragePool(4), "inpaint (50 % pixels)": Mask(mask), "colorize": Colorization()}
    for steps in (20, 50):
        for name, op in ops.items():
            op = op.to(device)
            yield f"mixture prior 3×{size}×{size}, {name}, T = {steps}", prior.to(device), op, op.A(x.to(device)), steps


def learned_problems(photos=None, size=64, device="cpu", steps=(20,), task_sampling=False,
                     tasks=("sr4", "deblur_gauss", "inpaint_random")):
    """Shipped prior × hold-out crops × tasks (sr4 / deblur_gauss / inpaint_random). The chain
    settings are etw = 0.1, nw = 0 from pure noise unless ``task_sampling`` (then the tasks')."""
    from fixedpoint_ir.operators.tasks import make_operator
    from fixedpoint_ir.photos import HOLDOUT, holdout_crop
    from fixedpoint_ir.priors.default import default_prior

    prior = default_prior()
    for T in steps:
        for task in tasks:
            for photo in photos or HOLDOUT:
                x = holdout_crop(photo, size, scale=0.25)[None]
                op = make_operator(task, tuple(x.shape[1:]), generator=torch.Generator().manual_seed(0))
                # This benchmark's setting is etw = 0.1, nw = 0 from pure noise: without this the
                # Sampler would still start at the task's default t_max.
                if not task_sampling:
                    op.task_config = {**op.task_config, "sampling": {}}
                op = op.to(device)
                yield (f"learned prior, {photo} 64×64, {task}, T = {T}", prior.to(device), op,
                       op.A(x.to(device)), T)


def plot(problem, outcomes, path):
    """Residual and error per round, one curve per solver (baselines dashed, the reference dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    colours = plt.cm.tab20.colors
    for i, (name, out) in enumerate(outcomes.items()):
        colour = "black" if name == NEWTON else colours[2 * i if i < 10 else (2 * i + 1) % 20]
        style = dict(color=colour, marker=".", label=name,
                     ls=":" if name == NEWTON else "--" if "baseline" in name else "-")
        rounds = range(1, len(out.errors) + 1)
        axes[0].semilogy(rounds, [max(r, 1e-16) for r in out.residuals], **style)
        axes[1].semilogy(rounds, [max(e, 1e-16) for e in out.errors], **style)
    axes[0].set(title="solver residual", xlabel="round", ylabel="residual (solver's own measure)")
    axes[1].axhline(TARGET, color="k", lw=0.8, ls="--")
    axes[1].set(title="error of the restored image vs sequential", xlabel="round",
                ylabel="max |x − x*| / max |x*|")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(problem, fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def outcomes_to_json(outcomes):
    """Per-round traces of every run, for re-plotting or other analyses."""
    return {name: dict(errors=out.errors, same_8bit=out.same_8bit, residuals=[r if math.isfinite(r) else None for r in out.residuals],
                       nfes=out.nfes, rounds=out.rounds, nfe=out.nfe, status=out.status,
                       final_error=out.final_error, seconds=out.seconds, network_seconds=out.network_seconds)
            for name, out in outcomes.items()}


def default_summary(summary):
    """Per T: medians of the stopping rules and the default solver, and the honest-stop check."""
    lines = ["## Summary per T (medians over the problems)", "",
             "| T | configuration | problems | rounds to 1e-3 | stop: rounds | stop: NFEs (÷T) | "
             "8-bit at round | largest error when converged |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    med = lambda v: statistics.median(v) if v else float("nan")  # noqa: E731
    for steps in sorted({r[2] for r in summary}):
        for name in dict.fromkeys(r[1] for r in summary if r[2] == steps):
            rows = [r for r in summary if r[2] == steps and r[1] == name]
            outs = [r[5] for r in rows]
            converged = [o.final_error for o in outs if o.status == "converged"]
            lines.append(
                f"| {steps} | {name} | {len(rows)} | {med([r[3] or steps for r in rows]):g} | "
                f"{med([o.rounds for o in outs]):g} | {med([o.nfe for o in outs]):g} "
                f"({med([o.nfe for o in outs]) / steps:.1f}) | {med([o.first_8bit() or steps for o in outs]):g} | "
                f"{max(converged) if converged else float('nan'):.1e} |")
    return lines + [""]


def slug(text):
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")[:80]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", choices=["analytic", "learned", "all"], default="all")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-newton", dest="newton", action="store_false",
                        help="skip the exact-Jacobian Newton reference row")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time every solve this many times and keep the median (noisy GPUs: 5)")
    parser.add_argument("--device", default="cpu",
                        help="torch device (cuda: results get a _cuda suffix and the GPU's name)")
    parser.add_argument("--photos", nargs="+", default=None,
                        help="hold-out photos for the learned-prior problems (default: all three)")
    parser.add_argument("--steps", nargs="+", type=int, default=[20],
                        help="T of the learned-prior problems (default: 20)")
    parser.add_argument("--configs", choices=["all", "default"], default="all",
                        help="'default': the previous default (at T = 20 only) and the new one; "
                             "Picard's counts are those of the full run (it is exact after T rounds "
                             "and costs T² evaluations)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    problems = []
    if args.problems in ("analytic", "all"):
        problems += list(analytic_problems(device=args.device))
    if args.problems in ("learned", "all"):
        problems += list(learned_problems(args.photos, device=args.device, steps=args.steps))
    configs = CONFIGS if args.configs == "all" else DEFAULT_CONFIGS
    device = torch.device(args.device)
    # TF32 convolutions round to ~1e-3: batched and one-at-a-time evaluations would then differ by
    # more than the target, whatever the solver. Measure in true float32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    stem = args.problems + ("" if args.configs == "all" else "_default") + \
        ("" if args.steps == [20] else "_T" + "_".join(map(str, args.steps)))
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")

    lines = [
        "# Convergence of the parallel solvers",
        "",
        f"Command: `python benchmarks/convergence.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"({machine}, torch {torch.__version__}, Python {platform.python_version()}).",
        "",
        f"*to {TARGET:g}*: first round whose restored image is within {TARGET:g} (max-abs, relative to "
        "the image's max) of the sequential chain, and the NFEs (network evaluations per image) spent by "
        "then. *stop*: what the solver returns when it stops by its own rule, with the true error of "
        "that image. *overhead*: share of the solve's wall-clock spent outside the network. *par/seq*: "
        "wall-clock of the parallel solve over the sequential sampler, same run. *8-bit*: first round "
        "whose 8-bit image equals the sequential chain's to one level in every pixel. No configuration "
        "here spends Jacobian-vector products, so the network-pass-equivalent cost is the NFE count.",
        "",
    ]
    summary, traces = [], {}
    if problems and (args.configs == "all" or device.type != "cpu"):  # warm-up (CUDA context,
        # kernel selection) so the first timings are not skewed
        _, prior, op, y, steps = problems[0]
        sequential_reference(prior, op, y, steps, args.seed)
        run_config(prior, op, y, steps, CONFIGS[-1], args.seed, y.new_zeros(op.A_pinv(y).shape) + 1)
    for problem, prior, op, y, steps in problems:
        timed = [sequential_reference(prior, op, y, steps, args.seed) for _ in range(args.repeats)]
        reference, seq_seconds = timed[0][0], statistics.median(t for _, t in timed)
        outcomes = {}
        for config in configs:
            if config.max_steps is not None and steps > config.max_steps:
                continue
            if config.surrogate is not None and getattr(prior, "surrogate", None) is None:
                continue  # the prior's own surrogate is this one already
            runs = [run_config(prior, op, y, steps, config, args.seed, reference) for _ in range(args.repeats)]
            outcomes[config.name] = sorted(runs, key=lambda o: o.seconds)[len(runs) // 2]  # median time
            print(problem, "|", config.name, "|", outcomes[config.name].first_within(),
                  outcomes[config.name].rounds, outcomes[config.name].status, flush=True)
        if args.newton:
            outcomes[NEWTON] = newton_reference(prior, op, y, steps, args.seed, reference)
            print(problem, "|", NEWTON, "|", outcomes[NEWTON].first_within(), flush=True)
        timing = f" (median of {args.repeats})" if args.repeats > 1 else ""
        lines += [f"## {problem}", "",
                  f"Sequential sampler: {steps} network calls, {seq_seconds:.3f} s{timing}.", "",
                  f"| solver | rounds to {TARGET:g} | NFEs to {TARGET:g} | stop: rounds | stop: NFEs | "
                  "stop: status | stop: error | 8-bit | overhead | par/seq wall-clock |",
                  "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for name, out in outcomes.items():
            k, nfe = out.first_within()
            if name == NEWTON:
                lines.append(f"| {name} | {k or '—'} | {nfe or '—'} | {out.rounds} | {out.nfe} | "
                             f"{out.status} | {out.final_error:.1e} | {out.first_8bit() or '—'} | — | "
                             f"{out.seconds / seq_seconds:.2f} |")
                continue
            overhead = 1 - out.network_seconds / out.seconds if out.seconds else float("nan")
            lines.append(f"| {name} | {k if k else '—'} | {nfe if nfe else '—'} | {out.rounds} | {out.nfe} | "
                         f"{out.status} | {out.final_error:.1e} | {out.first_8bit() or '—'} | {overhead:.1%} | "
                         f"{out.seconds / seq_seconds:.2f} |")
            summary.append((problem, name, steps, k, nfe, out))
        traces[problem] = outcomes_to_json(outcomes)
        png = args.out / f"convergence_{slug(problem)}{'' if args.configs == 'all' else '_default'}{suffix}.png"
        plot(problem, outcomes, png)
        lines += ["", f"![{problem}]({png.name})", ""]
    # Targets of the issue, checked on the best configuration per problem.
    target_problems = dict.fromkeys(p for p, *_ in summary) if args.configs == "all" else {}
    lines += [] if not target_problems else ["## Targets", "",
              "| problem | best configuration | rounds to 1e-3 (≤ T/3) | NFEs (≤ 2.5·T) | "
              "rounds vs Picard | honest stop (error ≤ 1e-3 when converged) |",
              "|---|---|---:|---:|---:|---|"]
    for problem in target_problems:
        rows = [r for r in summary if r[0] == problem and r[1] != NEWTON]
        picard = next(r for r in rows if r[1].startswith("Picard"))
        candidates = [r for r in rows if r[3] is not None]
        if not candidates:
            lines.append(f"| {problem} | none reached {TARGET:g} | — | — | — vs {picard[3]} | — |")
            continue
        best = min(candidates, key=lambda r: (r[3] > r[2] / 3, r[4] > 2.5 * r[2], r[3], r[4]))
        steps = best[2]
        honest = all(r[5].final_error <= TARGET for r in rows
                     if r[5].status == "converged" and r[1].startswith("Triangular")
                     and "noise" not in r[1])
        lines.append(f"| {problem} | {best[1]} | {best[3]} {'✓' if best[3] <= steps / 3 else '✗'} | "
                     f"{best[4]} {'✓' if best[4] <= 2.5 * steps else '✗'} | {best[3]} vs {picard[3]} | "
                     f"{'✓' if honest else '✗'} |")
    text = "\n".join(lines) + "\n"
    if args.configs == "default":
        lines += default_summary(summary)
        text = "\n".join(lines) + "\n"
    path = args.out / f"convergence_{stem}{suffix}.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    data = path.with_suffix(".json")
    tmp = data.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(command=lines[2], problems=traces), indent=1) + "\n")
    tmp.replace(data)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
