"""Solver accuracy against NFE on a problem with exact answers (SPEC J).

The target is the 2D Gaussian mixture ``data.mixture("mixture")`` carried along the linear path
(t = 0 noise, t = 1 data). Its marginal velocity and score are closed form
(``diffeqgen.groundtruth``), so:

1. **Likelihood (ODE).** ``cnf.log_prob`` of the exact velocity field must return the mixture's
   exact ``log_prob`` at t = 1: the error is pure solver error. Every ODE solver, fixed steps and
   adaptive tolerances, error against NFE.
2. **Sampling (ODE).** The endpoint of the flow from N(0, I) samples against a float64 dopri8
   reference at rtol = 1e-12: RMS endpoint error against NFE.
3. **Sampling (SDE).** The generative SDE dX = [v + g^2/2 s] dt + g dW with g = 1 and the exact
   v, s has the mixture as its law at t = 1: the error of the samples' mean and covariance
   against the mixture's exact moments (a weak error), beside its Monte Carlo floor (the same
   error for exact samples of the same size), against NFE.

4. **Few-step samplers against every ODE solver** (``sample_ode(solver="dpm++2m", grid=...)``)
   on the linear and the VP path: the trajectory error (RMS distance of the endpoints to the
   float64 dopri8 solution at tolerance 1e-12 from the same noise) against NFE from 1 to 1000,
   and the smallest NFE at which each reaches the trajectory error of Euler with 1000 steps
   (the headline; goal <= 20 NFE). Each few-step sampler runs on the uniform-in-t grid at every
   NFE and on its own default grid (log-SNR; Karras for EDM Heun) at a few NFE; UniPC also on
   grids fitted to the field by ``solve.optimize_grid`` (a pilot batch of noise drawn apart from
   the evaluation noise; the fit's cost is reported beside, not in, the NFE).
5. **Distribution error** of the few-step samples: the moment error as in 3, at n = 100000
   samples (its Monte Carlo floor is then ~0.005, where at n = 2000 W2 cannot rank samplers).

Runs in float64. Writes ``results/benchmarks/solver_accuracy.{json,png,md}`` (1-3) and
``solver_accuracy_fewstep.{json,png,md}`` (4-5), or into ``--out``; ``--part`` runs either alone.
``--quick`` (the tests): one setting per solver kind and one NFE per few-step sampler, written as
``*_quick.*`` so that it never overwrites the full results. A quick run is compile-bound: its
distribution study reuses the trajectory study's compiled solves (same batch shape, drawn in
chunks) and it compiles at XLA backend optimisation level 0.
"""

import argparse
import functools
import gc
import json
import os
import pathlib
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffeqgen import cnf, data, groundtruth, losses, nn, paths, sdes, solve, train  # noqa: E402

FIXED_SOLVERS = [
    "euler",
    "midpoint",
    "heun",
    "ralston",
    "rk4",
    "bosh3",
    "tsit5",
    "dopri5",
    "dopri8",
]
ADAPTIVE_SOLVERS = ["bosh3", "tsit5", "dopri5", "dopri8"]
SDE_SOLVERS = ["euler_maruyama", "heun", "sra1", "shark"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few solvers, points, steps (tests)")
    p.add_argument("--n", type=int, default=None, help="points per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/benchmarks"))
    p.add_argument(
        "--part",
        choices=["all", "classic", "fewstep"],
        default="all",
        help="studies 1-3 (classic), 4-5 (fewstep) or both",
    )
    return p.parse_args(argv)


def likelihood_study(field, mixture, x, steps_list, tols, fixed, adaptive):
    exact = np.asarray(mixture.log_prob(x))
    configs = [(name, "fixed", dict(steps=steps)) for name in fixed for steps in steps_list]
    configs += [(name, "adaptive", dict(tol=tol)) for name in adaptive for tol in tols]
    rows = []
    for name, mode, knob in configs:
        solve_kw = knob if mode == "fixed" else dict(rtol=knob["tol"], atol=knob["tol"])
        lp, nfe = cnf.log_prob(field, x, solver=name, **solve_kw)
        err = np.abs(np.asarray(lp) - exact)
        rows.append(
            dict(
                solver=name,
                mode=mode,
                **knob,
                nfe=int(nfe),
                max_err=float(err.max()),
                mean_err=float(err.mean()),
            )
        )
    return rows


def sampling_study(field, x0, steps_list, fixed):
    ref = solve.sample_ode(field, x0, solver="dopri8", rtol=1e-12, atol=1e-12, per_sample=True).x
    rows = []
    for name in fixed:
        for steps in steps_list:
            sol = solve.sample_ode(field, x0, solver=name, steps=steps)
            rms = float(jnp.sqrt(jnp.mean(jnp.sum((sol.x - ref) ** 2, axis=-1))))
            rows.append(dict(solver=name, steps=steps, nfe=int(sol.nfe), rms_err=rms))
    return rows


def moment_error(x, mixture):
    """|mean error| + Frobenius |covariance error| of a sample set against the exact moments."""
    x = jnp.asarray(x, jnp.float64)
    mean_err = jnp.linalg.norm(x.mean(0) - mixture.mean())
    cov_err = jnp.linalg.norm(jnp.cov(x, rowvar=False) - mixture.covariance())
    return float(mean_err + cov_err)


def sde_study(mixture, path, key, n, steps_list, solvers):
    sde = sdes.generative_sde(
        groundtruth.velocity_field(mixture, path), groundtruth.score_field(mixture, path), 1.0
    )
    k_x0, k_floor, k_sde = jr.split(key, 3)
    x0 = jr.normal(k_x0, (n, mixture.dim))
    floors = [moment_error(mixture.sample(jr.fold_in(k_floor, r), n), mixture) for r in range(5)]
    floor = float(np.mean(floors))
    rows = []
    for name in solvers:
        for steps in steps_list:
            sol = solve.sample_sde(sde, x0, key=k_sde, solver=name, steps=steps)
            rows.append(
                dict(
                    solver=name,
                    steps=steps,
                    nfe=int(sol.nfe),
                    moment_err=moment_error(sol.x, mixture),
                    floor=floor,
                )
            )
    return rows, floor


# network evaluations per fixed step (FSAL solvers reuse the last stage: +1 for the first step)
STAGES = dict(euler=1, midpoint=2, heun=2, ralston=2, rk4=4, bosh3=3, tsit5=6, dopri5=6,
              dopri8=13)  # fmt: skip
FEWSTEP = list(solve.FEWSTEP_SAMPLERS)
TWO_EVAL = {"dpm++2s", "edm_heun"}
FEW_PATHS = ["linear", "vp"]
# samplers also run on a grid fitted to the field by solve.optimize_grid (pilot noise drawn apart
# from the evaluation noise), starting from the uniform grid (the start barely matters: UniPC-20
# from the quadratic grid reached 1.4e-3 linear, from uniform 1.3e-3; VP 1.7e-3 from either)
FITTED = ["unipc"]
FIT_START = "uniform"


def fitted_study(field, x0, ref, pilot, targets, iters, start):
    """UniPC on grids fitted by ``solve.optimize_grid`` on ``pilot`` (not ``x0``), per NFE.

    The error is measured as for every other row (same noise ``x0``, same reference); the
    fit's own cost (reference and ``iters`` sampler runs with their gradients on the pilot)
    is recorded apart in ``fit``.
    """
    rows = []
    for name in FITTED:
        for target in targets:
            steps = _steps_for(name, target)
            t = time.perf_counter()
            ts, info = solve.optimize_grid(field, pilot, solver=name, steps=steps, init=start,
                                           iters=iters)  # fmt: skip
            sol = solve.sample_ode(field, x0, solver=name, grid=ts)
            rows.append(
                dict(solver=name, grid="fitted", steps=steps, nfe=int(sol.nfe),
                     rms_err=_rms(sol.x, ref), kind="fewstep", start=start,
                     fit=dict(info, seconds=time.perf_counter() - t),
                     ts=[round(float(v), 6) for v in ts])
            )  # fmt: skip
    return rows


def _rms(a, b):
    return float(jnp.sqrt(jnp.mean(jnp.sum((a - b) ** 2, axis=-1))))


def _f64(tree):
    """Every floating array leaf of ``tree`` in float64 (the benchmark's exact answers need it)."""
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree)


def _steps_for(name, target):
    """Grid intervals giving about ``target`` NFE (two-evaluation steps; 3M's warm-up call)."""
    steps = max(1, round(target / 2)) if name in TWO_EVAL else target
    return max(1, steps - 1) if name == "dpm++3m" and target > 2 else steps


def _default_grid(name):
    return "karras" if name == "edm_heun" else "logsnr"


def trajectory_study(mixture, path_name, x0, nfe_targets, sparse_targets, generic_steps, generic,
                     fit):  # fmt: skip
    """Endpoint RMS error against the float64 dopri8 reference (tol 1e-12), every solver.

    ``fit``: (pilot noise, NFE targets per field, iterations) of the fitted-grid rows.
    """
    path = paths.get_path(path_name)
    field = groundtruth.velocity_field(mixture, path)
    ref = solve.sample_ode(field, x0, solver="dopri8", rtol=1e-12, atol=1e-12, per_sample=True).x
    rows = []
    for name in generic:
        for steps in generic_steps:
            if steps * STAGES[name] > 1100:
                break
            sol = solve.sample_ode(field, x0, solver=name, steps=steps)
            rows.append(
                dict(solver=name, grid="uniform", steps=steps, nfe=int(sol.nfe),
                     rms_err=_rms(sol.x, ref), kind="generic")
            )  # fmt: skip
    for name in FEWSTEP:
        grids = [("uniform", nfe_targets)]
        grids += [(g, sparse_targets) for g in (_default_grid(name), "quadratic")]
        for grid, targets in grids:
            for target in targets:
                steps = _steps_for(name, target)
                sol = solve.sample_ode(field, x0, solver=name, steps=steps, grid=grid)
                rows.append(
                    dict(solver=name, grid=grid, steps=steps, nfe=int(sol.nfe),
                         rms_err=_rms(sol.x, ref), kind="fewstep")
                )  # fmt: skip
    pilot, fit_targets, iters = fit
    return rows + fitted_study(field, x0, ref, pilot, fit_targets[path_name], iters, FIT_START)


def headline(rows):
    """Smallest measured NFE at which each (solver, grid) reaches Euler-1000's error."""
    target = [r["rms_err"] for r in rows if r["solver"] == "euler" and r["steps"] == 1000]
    if not target:
        return None, {}
    target = target[0]
    best = {}
    for r in rows:
        label = f"{r['solver']} ({r['grid']})" if r["kind"] == "fewstep" else r["solver"]
        best.setdefault(label, None)
        if r["rms_err"] <= target and (best[label] is None or r["nfe"] < best[label]):
            best[label] = r["nfe"]
    return target, best


def sample_in_chunks(field, x0, chunk, **kw):
    """``solve.sample_ode`` over ``x0`` in batches of ``chunk`` rows (the last one padded).

    Every call then has the batch shape of the trajectory study, so it reuses the solves that
    study compiled (a new batch shape compiles every sampler again). Returns (x, nfe).
    """
    n = x0.shape[0]
    pad = -n % chunk
    xp = jnp.concatenate([x0, jnp.zeros((pad, *x0.shape[1:]), x0.dtype)]) if pad else x0
    outs, nfe = [], None
    for i in range(0, n + pad, chunk):
        sol = solve.sample_ode(field, xp[i : i + chunk], **kw)
        outs.append(sol.x)
        nfe = int(sol.nfe)
    return jnp.concatenate(outs)[:n], nfe


def distribution_study(mixture, path_name, key, n, nfe_list, both_grids, chunk, floor_reps=3):
    """Moment error (as in the SDE study) of n few-step samples against the exact mixture.

    The samples are drawn ``chunk`` at a time (``sample_in_chunks``): the trajectory study's
    batch size, whose compiled solves are reused.
    """
    path = paths.get_path(path_name)
    field = groundtruth.velocity_field(mixture, path)
    k_x0, k_floor = jr.split(key)
    x0 = jr.normal(k_x0, (n, mixture.dim)) * path.sigma(0.0)
    floor = float(
        np.mean([moment_error(mixture.sample(jr.fold_in(k_floor, r), n), mixture)
                 for r in range(floor_reps)])
    )  # fmt: skip
    rows = []
    for steps in nfe_list:
        x, nfe = sample_in_chunks(field, x0, chunk, solver="euler", steps=steps)
        rows.append(dict(solver="euler", grid="uniform", nfe=nfe,
                         moment_err=moment_error(x, mixture)))  # fmt: skip
    for name in FEWSTEP:
        for grid in ("uniform", _default_grid(name)) if both_grids else ("uniform",):
            for target in nfe_list:
                steps = _steps_for(name, target)
                x, nfe = sample_in_chunks(field, x0, chunk, solver=name, steps=steps, grid=grid)
                rows.append(dict(solver=name, grid=grid, nfe=nfe,
                                 moment_err=moment_error(x, mixture)))  # fmt: skip
    return rows, floor


def likelihood_vs_nfe(field, x, exact, steps_list, solvers, floor_tol=1e-8):
    """Max |log p error| of ``cnf.log_prob`` with fixed-step solvers against ``exact``.

    The few-step samplers integrate the state only (noise to data), not the divergence, so
    they have no likelihood: this is the generic solvers' curve. The last row is dopri5 at
    ``floor_tol``, the floor of the comparison (for the VP path the t = 0 marginal is not
    exactly the prior N(0, sigma(0)^2 I) because alpha(0) > 0).
    """
    exact = np.asarray(exact)
    rows = []
    runs = [(name, dict(steps=k)) for name in solvers for k in steps_list]
    runs.append(("dopri5", dict(rtol=floor_tol, atol=floor_tol, max_steps=100_000)))
    for name, kw in runs:
        if kw.get("steps", 0) * STAGES[name] > 1100:
            continue
        lp, nfe = cnf.log_prob(field, x, solver=name, **kw)
        err = np.abs(np.asarray(lp) - exact)
        rows.append(dict(solver=name, steps=kw.get("steps"), nfe=int(nfe),
                         max_err=float(err.max()), mean_err=float(err.mean())))  # fmt: skip
    return rows


def trained_study(mixture, key, quick, n, nfe_targets, fitting):
    """One trained 2D model against its own float64 dopri8 reference (tolerance 1e-12).

    A flow-matching MLP (velocity, linear path) trained here in float64 on the same mixture;
    the few-step samplers read its data prediction through the exact conversion
    (``paths.as_vector_field(model, path, "velocity")``). Trajectory error against NFE for
    Euler, RK4 and every few-step sampler (uniform grid; UniPC also on fitted grids), and
    the likelihood error of ``cnf.log_prob`` with fixed steps against the model's own dopri5
    log-density (tol 1e-10).
    """
    k_data, k_model, k_fit, k_x0, k_eval = jr.split(key, 5)
    path = paths.get_path("linear")
    steps = 200 if quick else 1500
    model = nn.MLP(2, 2, width=64, depth=3, key=k_model)
    fit = train.fit(
        model, functools.partial(losses.flow_matching_loss, path=path),
        mixture.sample(k_data, 20_000), optimizer=train.make_optimizer(2e-3), key=k_fit,
        num_steps=steps, batch_size=256, steps_per_call=100, progress=False,
    )  # fmt: skip
    field = paths.as_vector_field(_f64(fit.ema_model), path, "velocity")
    x0 = jr.normal(k_x0, (n, 2))
    ref = solve.sample_ode(field, x0, solver="dopri8", rtol=1e-12, atol=1e-12, per_sample=True).x
    rows = []
    generic_steps = [1000] if quick else [4, 8, 16, 32, 64, 128, 256, 1000]
    for name in ("euler", "rk4"):
        for k in generic_steps:
            if k * STAGES[name] > 1100:
                break
            sol = solve.sample_ode(field, x0, solver=name, steps=k)
            rows.append(dict(solver=name, grid="uniform", steps=k, nfe=int(sol.nfe),
                             rms_err=_rms(sol.x, ref), kind="generic"))  # fmt: skip
    for name in FEWSTEP:
        for target in nfe_targets:
            k = _steps_for(name, target)
            sol = solve.sample_ode(field, x0, solver=name, steps=k, grid="uniform")
            rows.append(dict(solver=name, grid="uniform", steps=k, nfe=int(sol.nfe),
                             rms_err=_rms(sol.x, ref), kind="fewstep"))  # fmt: skip
    pilot, fit_targets, iters = fitting
    rows += fitted_study(field, x0, ref, pilot, fit_targets["trained"], iters, FIT_START)
    target, best = headline(rows)
    x_eval = jnp.asarray(mixture.sample(k_eval, max(64, n // 4)), jnp.float64)
    own, _ = cnf.log_prob(field, x_eval, solver="dopri5", rtol=1e-10, atol=1e-10, max_steps=100_000)
    lik = likelihood_vs_nfe(field, x_eval, own, [4] if quick else [2, 4, 8, 16, 32, 64, 128, 256],
                            ["euler"] if quick else ["euler", "midpoint", "rk4"])  # fmt: skip
    lik = [r for r in lik if r["steps"] is not None]  # not the tolerance row
    return dict(trajectory=rows, euler1000=target, headline=best, likelihood=lik,
                train_steps=steps, final_loss=float(fit.history["loss"][-1]))  # fmt: skip


def plot_fewstep(few, trained, file):
    panels = {**few, "trained": trained}
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(6.5 * (len(panels) + 1), 5.2))
    axes = np.atleast_1d(axes)
    for ax, (path_name, res) in zip(axes, panels.items(), strict=False):
        rows = res["trajectory"]
        for name in FIXED_SOLVERS:
            r = [q for q in rows if q["solver"] == name and q["kind"] == "generic"]
            ax.loglog([q["nfe"] for q in r], [max(q["rms_err"], 1e-16) for q in r], ":",
                      lw=1, color="0.6" if name != "euler" else "k", label=None)  # fmt: skip
        for name in FEWSTEP:
            for grid, style in (("uniform", "o-"), (_default_grid(name), "x--"),
                                ("quadratic", "+:"), ("fitted", "s-")):  # fmt: skip
                r = [q for q in rows if q["solver"] == name and q["grid"] == grid
                     and q["kind"] == "fewstep"]  # fmt: skip
                ax.loglog([q["nfe"] for q in r], [max(q["rms_err"], 1e-16) for q in r], style,
                          ms=3, label=f"{name} ({grid})")  # fmt: skip
        if res["euler1000"] is not None:
            ax.axhline(res["euler1000"], color="k", ls="-.", lw=0.8, label="Euler-1000 error")
        ax.axvline(20, color="r", ls=":", lw=0.8, label="NFE 20")
        title = (
            "trained flow-matching MLP (linear path), own reference"
            if path_name == "trained"
            else f"{path_name} path, exact mixture field (grey: generic RK solvers)"
        )
        ax.set(xlabel="NFE per sample", ylabel="RMS endpoint error vs dopri8 (tol 1e-12)",
               title=title)  # fmt: skip
        ax.legend(fontsize=6, ncol=2)
    ax = axes[-1]
    for label, res in panels.items():
        for name in sorted({r["solver"] for r in res["likelihood"] if r["steps"] is not None}):
            r = [q for q in res["likelihood"] if q["solver"] == name and q["steps"] is not None]
            ax.loglog([q["nfe"] for q in r], [max(q["max_err"], 1e-16) for q in r], "o-", ms=3,
                      label=f"{label}: {name}")  # fmt: skip
    ax.set(
        xlabel="NFE per point",
        ylabel="max |log p error| (nats)",
        title="cnf.log_prob, fixed steps (exact field: vs exact log p; trained: vs dopri5)",
    )
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(file, dpi=90)
    plt.close(fig)


def fitted_summary(trajectories):
    """The fitted-grid rows: held-out error beside the fit's pilot error and cost."""
    rows = [(k, r) for k, rs in trajectories.items() for r in rs if r["grid"] == "fitted"]
    if not rows:
        return []
    fit = rows[0][1]["fit"]
    lines = [
        "",
        "### Grids fitted to the field (`solve.optimize_grid`)",
        "",
        f"UniPC on a grid fitted by Adam ({fit['iters']} iterations) to a pilot batch of "
        f"{fit['n_pilot']} noise samples drawn apart from the evaluation noise, against the "
        "pilot's own dopri8 reference (tolerance 1e-10), from the named grid in `start`; "
        "`error` is measured as every other row (same evaluation noise and reference). NFE is "
        "that of sampling; the fit costs, per pilot sample, the reference's evaluations plus "
        "`iters` sampler runs, each with its vector-Jacobian product (`pilot cost`).",
        "",
        "| field | NFE | start | error | pilot error | pilot cost (evals + VJPs) | fit s | grid |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in rows:
        f = r["fit"]
        evals = f["reference_nfe"] + f["iters"] * f["sampler_nfe"]
        cost = f"{evals} + {f['iters']}x{f['sampler_nfe']}"
        lines.append(
            f"| {key} | {r['nfe']} | {r['start']} | {r['rms_err']:.2e} | {f['pilot_error']:.2e} "
            f"| {cost} | {f['seconds']:.0f} | {', '.join(f'{v:.3f}' for v in r['ts'])} |"
        )
    return lines


def fewstep_summary(few, n_traj, n_dist):
    lines = [
        "",
        "## Few-step samplers against every ODE solver: trajectory error against NFE",
        "",
        f"RMS endpoint distance to the float64 dopri8 solution (tolerance 1e-12) from the same "
        f"{n_traj} noise samples, exact mixture field. Figure: `solver_accuracy_fewstep.png`.",
        "",
        "### Headline: smallest measured NFE reaching Euler-1000's trajectory error",
        "",
        "| solver (grid) | " + " | ".join(few) + " |",
        "|---|" + "---|" * len(few),
    ]
    labels = []
    for res in few.values():
        labels += [k for k in res["headline"] if k not in labels]
    for label in labels:
        cells = []
        for res in few.values():
            v = res["headline"].get(label)
            cells.append("-" if v is None else str(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| (Euler-1000 error) | "
        + " | ".join(f"{res['euler1000']:.2e}" for res in few.values())
        + " |"
    )
    lines += fitted_summary({**{k: v["trajectory"] for k, v in few.items()}})
    for path_name, res in few.items():
        lines += [
            "",
            f"### {path_name} path: every measurement",
            "",
            "| solver | grid | steps | NFE | RMS error |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['solver']} | {r['grid']} | {r['steps']} | {r['nfe']} | {r['rms_err']:.2e} |"
            for r in res["trajectory"]
        ]
        lines += [
            "",
            f"### {path_name} path: distribution error (n = {n_dist})",
            "",
            f"|mean err| + |cov err|_F against the exact moments; Monte Carlo floor "
            f"{res['dist_floor']:.4f} (exact samples, same n).",
            "",
            "| solver | grid | NFE | moment error | / floor |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['solver']} | {r['grid']} | {r['nfe']} | {r['moment_err']:.4f} | "
            f"{r['moment_err'] / res['dist_floor']:.2f} |"
            for r in res["distribution"]
        ]
    return "\n".join(lines) + "\n"


def trained_summary(trained, few):
    lines = [
        "",
        "## One trained model against its own float64 reference",
        "",
        f"Flow-matching MLP (width 64, depth 3, velocity, linear path) trained here for "
        f"{trained['train_steps']} steps on the mixture (final loss {trained['final_loss']:.3f}); "
        "RMS endpoint distance to its own dopri8 solution at tolerance 1e-12, same noise. "
        f"Euler-1000 error: {trained['euler1000']:.2e}.",
        "",
        "| solver | grid | NFE | RMS error |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['solver']} | {r['grid']} | {r['nfe']} | {r['rms_err']:.2e} |"
              for r in trained["trajectory"]]  # fmt: skip
    lines += ["", "Smallest measured NFE reaching the model's Euler-1000 error:", ""]
    lines += [f"- {k}: {'-' if v is None else v}" for k, v in trained["headline"].items()]
    lines += fitted_summary({"trained": trained["trajectory"]})
    lines += [
        "",
        "## Log-likelihood error against NFE (cnf.log_prob, fixed steps)",
        "",
        "Max |log p error| in nats: exact field against the mixture's exact log p at t = 1 (the "
        "dopri5 row at tol 1e-8 is the floor: on VP the prior N(0, sigma(0)^2 I) is not exactly "
        "the t = 0 marginal); trained model against its own dopri5 log p (tol 1e-10). The few-step "
        "samplers integrate the state only, so they have no likelihood.",
        "",
        "| field | solver | steps | NFE | max err | mean err |",
        "|---|---|---|---|---|---|",
    ]
    for label, rows in [*((k, v["likelihood"]) for k, v in few.items()),
                        ("trained", trained["likelihood"])]:  # fmt: skip
        lines += [
            f"| {label} | {r['solver']} | {r['steps'] if r['steps'] else 'tol 1e-8'} | "
            f"{r['nfe']} | {r['max_err']:.2e} | {r['mean_err']:.2e} |"
            for r in rows
        ]
    return "\n".join(lines) + "\n"


def plot(lik, samp, sde_rows, floor, path):
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    for name in FIXED_SOLVERS:
        r = [row for row in lik if row["solver"] == name and row["mode"] == "fixed"]
        ax.loglog(
            [q["nfe"] for q in r], [max(q["max_err"], 1e-16) for q in r], "o-", ms=3, label=name
        )
    for name in ADAPTIVE_SOLVERS:
        r = [row for row in lik if row["solver"] == name and row["mode"] == "adaptive"]
        ax.loglog(
            [q["nfe"] for q in r],
            [max(q["max_err"], 1e-16) for q in r],
            "x--",
            ms=4,
            label=f"{name} (adaptive)",
        )
    ax.set(
        xlabel="NFE per sample",
        ylabel="max |log p error| (nats)",
        title="Likelihood of the exact field vs exact log p",
    )
    ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    for name in FIXED_SOLVERS:
        r = [row for row in samp if row["solver"] == name]
        ax.loglog(
            [q["nfe"] for q in r], [max(q["rms_err"], 1e-16) for q in r], "o-", ms=3, label=name
        )
    ax.set(
        xlabel="NFE per sample",
        ylabel="RMS endpoint error",
        title="Flow ODE endpoint vs dopri8 (rtol 1e-12)",
    )
    ax.legend(fontsize=6, ncol=2)
    ax = axes[2]
    for name in SDE_SOLVERS:
        r = [row for row in sde_rows if row["solver"] == name]
        ax.loglog([q["nfe"] for q in r], [q["moment_err"] for q in r], "o-", ms=3, label=name)
    ax.axhline(floor, color="k", ls=":", label="Monte Carlo floor (exact samples)")
    ax.set(
        xlabel="NFE (drift evaluations)",
        ylabel="|mean err| + |cov err|_F",
        title="Generative SDE (g = 1) with exact v, s",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary(lik, samp, sde_rows, floor, n, seconds, figure="solver_accuracy.png"):
    lines = [
        "# Solver accuracy against NFE (exact Gaussian-mixture ground truth, float64)",
        "",
        f"{n} points; {seconds:.0f} s on {platform.machine()} with {jax.device_count()} CPU "
        f"device(s). Figure: `{figure}`.",
        "",
        "## Log-likelihood of the exact velocity field (max abs error in nats)",
        "",
        "| solver | mode | steps / tol | NFE | max err | mean err |",
        "|---|---|---|---|---|---|",
    ]
    for r in lik:
        knob = r["steps"] if r["mode"] == "fixed" else f"{r['tol']:.0e}"
        lines.append(
            f"| {r['solver']} | {r['mode']} | {knob} | {r['nfe']} | "
            f"{r['max_err']:.2e} | {r['mean_err']:.2e} |"
        )
    lines += [
        "",
        "## Flow-ODE endpoint RMS error against dopri8 at rtol 1e-12",
        "",
        "| solver | steps | NFE | RMS error |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['solver']} | {r['steps']} | {r['nfe']} | {r['rms_err']:.2e} |" for r in samp]
    lines += [
        "",
        "## Generative SDE, g = 1, exact v and s: error of the first two moments",
        "",
        "|mean error| + Frobenius |covariance error| of the samples against the mixture's exact "
        f"moments; Monte Carlo floor (the same error for exact samples of the same size) "
        f"{floor:.4f}.",
        "",
        "| solver | steps | NFE | moment error | / floor |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['solver']} | {r['steps']} | {r['nfe']} | {r['moment_err']:.4f} | "
        f"{r['moment_err'] / floor:.2f} |"
        for r in sde_rows
    ]
    return "\n".join(lines) + "\n"


def classic(args, n, keys, mixture):
    """Studies 1-3 (linear path): writes solver_accuracy[_quick].{json,md,png}."""
    k_data, k_noise, k_sde = keys
    steps_list = [4] if args.quick else [2, 4, 8, 16, 32, 64, 128, 256]
    tols = [1e-3] if args.quick else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-10]
    sde_steps = [10] if args.quick else [10, 20, 40, 100, 250, 1000]
    fixed = ["euler"] if args.quick else FIXED_SOLVERS
    adaptive = ["tsit5"] if args.quick else ADAPTIVE_SOLVERS
    sde_solvers = ["euler_maruyama"] if args.quick else SDE_SOLVERS
    name = "solver_accuracy_quick" if args.quick else "solver_accuracy"
    path = paths.get_path("linear")
    field = groundtruth.velocity_field(mixture, path)
    start = time.perf_counter()
    x_data = mixture.sample(k_data, n)
    lik = likelihood_study(field, mixture, x_data, steps_list, tols, fixed, adaptive)
    samp = sampling_study(field, jr.normal(k_noise, (n, 2)), steps_list, fixed)
    n_sde = max(n, 256) if args.quick else 2000
    sde_rows, floor = sde_study(mixture, path, k_sde, n_sde, sde_steps, sde_solvers)
    seconds = time.perf_counter() - start
    (args.out / f"{name}.json").write_text(
        json.dumps(
            dict(
                n=n,
                likelihood=lik,
                sampling=samp,
                sde=sde_rows,
                sde_floor=floor,
                seconds=seconds,
                machine=platform.machine(),
            ),
            indent=1,
        )
    )
    text = summary(lik, samp, sde_rows, floor, n, seconds, figure=f"{name}.png")
    (args.out / f"{name}.md").write_text(text)
    plot(lik, samp, sde_rows, floor, args.out / f"{name}.png")
    print(text)


def fewstep(args, n, keys, mixture):
    """Studies 4-5 (linear and VP paths): writes solver_accuracy_fewstep.{json,md,png}."""
    _, k_noise, k_sde = keys
    if args.quick:  # one point per sampler: exercises every code path
        nfe_targets, sparse, generic_steps = [6], [], [1000]
        generic, n_dist, dist_nfe = ["euler"], 512, [6]
        lik_steps, lik_solvers = [4], ["euler"]
        # one grid fit (on VP): the code path, at a compile cost that keeps --quick under a
        # minute (so does n_dist: each chunk of the distribution study is one more call)
        fit_nfe, n_pilot, fit_iters = dict(linear=[], vp=[6], trained=[]), n, 5
    else:
        nfe_targets = [2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50, 100, 1000]
        sparse, generic_steps = [10, 20], [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
        generic, n_dist, dist_nfe = FIXED_SOLVERS, 100_000, [10]
        lik_steps, lik_solvers = [2, 4, 8, 16, 32, 64, 128, 256, 1000], ["euler", "midpoint", "rk4"]
        fit_nfe, n_pilot, fit_iters = (
            dict.fromkeys(("linear", "vp", "trained"), [10, 15, 20]),
            1024,
            300,
        )
    name = "solver_accuracy_fewstep_quick" if args.quick else "solver_accuracy_fewstep"
    start = time.perf_counter()
    few = {}
    x0_traj = jr.normal(jr.fold_in(k_noise, 1), (n, 2))
    fit = (jr.normal(jr.fold_in(k_noise, 2), (n_pilot, 2)), fit_nfe, fit_iters)  # pilot noise
    for i, path_name in enumerate(FEW_PATHS):
        t = time.perf_counter()
        traj = trajectory_study(
            mixture, path_name, x0_traj, nfe_targets, sparse, generic_steps, generic, fit
        )
        target, best = headline(traj)
        dist, dist_floor = distribution_study(
            mixture, path_name, jr.fold_in(k_sde, 100 + i), n_dist, dist_nfe, not args.quick, n
        )
        path = paths.get_path(path_name)
        x_lik = mixture.sample(jr.fold_in(k_sde, 200 + i), max(64, n // 4))
        lik = likelihood_vs_nfe(groundtruth.velocity_field(mixture, path), x_lik,
                                mixture.log_prob(x_lik), lik_steps, lik_solvers)  # fmt: skip
        few[path_name] = dict(
            trajectory=traj, euler1000=target, headline=best, distribution=dist,
            dist_floor=dist_floor, n_dist=n_dist, likelihood=lik,
        )  # fmt: skip
        print(f"few-step, {path_name}: {time.perf_counter() - t:.0f} s", flush=True)
        free_compiled(args.quick)
    t = time.perf_counter()
    trained = trained_study(
        mixture, jr.fold_in(k_sde, 300), args.quick, n,
        [6] if args.quick else [4, 6, 8, 10, 15, 20, 30, 50, 100], fit,
    )  # fmt: skip
    print(f"few-step, trained model: {time.perf_counter() - t:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    (args.out / f"{name}.json").write_text(
        json.dumps(
            dict(n=n, n_dist=n_dist, fewstep=few, trained=trained, seconds=seconds,
                 machine=platform.machine()),
            indent=1,
        )
    )  # fmt: skip
    head = (
        "# Few-step samplers: NFE against accuracy (exact Gaussian-mixture field, float64)\n\n"
        f"{seconds:.0f} s on {platform.machine()} with {jax.device_count()} CPU device(s), "
        "on a machine shared with other jobs (times are not benchmarks).\n"
    )
    text = head + fewstep_summary(few, n, n_dist) + trained_summary(trained, few)
    (args.out / f"{name}.md").write_text(text)
    plot_fewstep(few, trained, args.out / f"{name}.png")
    print(text)


def free_compiled(quick=False):
    """Free the compiled programs of a finished study (none is reused by the next one).

    Each live XLA CPU program holds its own memory mappings, and this benchmark compiles
    thousands (every solver, grid and step count is a program): in one process they reach the
    kernel's ``vm.max_map_count`` (65530 by default), where the next compile fails with "LLVM
    compilation error: Cannot allocate memory" and the process crashes (seen in a full run).
    ``--quick`` compiles about 300 and keeps them: the next part then reuses the traced and
    compiled solves it shares with the previous one (about 3 s less CPU time per quick run).
    """
    if quick:
        return
    jax.clear_caches()
    gc.collect()


def _fast_compiles():
    """--quick: XLA's backend optimisation level 0 (set before the backend starts).

    Each quick solve runs for milliseconds but compiles for seconds, so the run is all compile
    time; level 0 cuts that by about a third and changes the measured errors only at round-off
    (relative 1e-13 measured). No effect if this process already started JAX's backend.
    """
    flag = "--xla_backend_optimization_level=0"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


def main(argv=None):
    """Run the benchmark in float64.

    ``jax_enable_x64`` is set for this call only (``jax.enable_x64``): a caller's own setting
    (e.g. a test's process, which runs the quick mode in-process) is left as it was.
    """
    args = parse_args(argv)
    with jax.enable_x64(True):
        _run(args)


def _run(args):
    if args.quick:
        _fast_compiles()
    args.out.mkdir(parents=True, exist_ok=True)
    n = args.n or (64 if args.quick else 1000)
    keys = jr.split(jr.key(args.seed), 3)
    mixture = _f64(data.mixture("mixture"))  # the named mixtures are stored in float32
    # and their float32 weights sum to 1 only to ~1e-8, which would be a floor of every log p error
    mixture = data.GaussianMixture(mixture.means, mixture.covariances,
                                   mixture.weights / mixture.weights.sum())  # fmt: skip
    if args.part in ("all", "classic"):
        classic(args, n, keys, mixture)
        free_compiled(args.quick)
    if args.part in ("all", "fewstep"):
        fewstep(args, n, keys, mixture)


if __name__ == "__main__":
    main()
