"""Offline studies of the triangular solver's Jacobian model (``acceleration.py --rho`` / ``--gain``).

``rho``: the secant model's error ρ along the directions its replay actually takes, against the
network's exact JVP (plus the best scalar per row and per patch, oracles). ``gain``: whether a
linear model's row-to-image gain bounds the true one (the gate of gain-weighted acceptance). Both
read one logged solve of the secant model (``_recorded_solve``), which ``jacobian_models.py``
reuses. Results go into ``acceleration.py``'s files and report.
"""
from __future__ import annotations

import statistics
import warnings

import torch

import convergence
from acceleration import SETTINGS, problems, save
from fixedpoint_ir import Sampler
from fixedpoint_ir.backends import Triangular



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
