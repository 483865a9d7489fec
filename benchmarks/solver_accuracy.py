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

Runs in float64. Writes ``results/benchmarks/solver_accuracy.{json,png,md}`` (or into ``--out``).
``--quick`` (the test): one step count, tolerance and SDE setting for one solver of each kind,
written as ``solver_accuracy_quick.*`` so that it never overwrites the full results.
"""

import argparse
import json
import pathlib
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffeqgen import cnf, data, groundtruth, paths, sdes, solve  # noqa: E402

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


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    n = args.n or (64 if args.quick else 1000)
    steps_list = [4] if args.quick else [2, 4, 8, 16, 32, 64, 128, 256]
    tols = [1e-3] if args.quick else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-10]
    sde_steps = [10] if args.quick else [10, 20, 40, 100, 250, 1000]
    fixed = ["euler"] if args.quick else FIXED_SOLVERS
    adaptive = ["tsit5"] if args.quick else ADAPTIVE_SOLVERS
    sde_solvers = ["euler_maruyama"] if args.quick else SDE_SOLVERS
    name = "solver_accuracy_quick" if args.quick else "solver_accuracy"
    key = jr.key(args.seed)
    k_data, k_noise, k_sde = jr.split(key, 3)
    mixture = data.mixture("mixture")
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


if __name__ == "__main__":
    main()
