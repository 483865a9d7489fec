"""Our Sinkhorn (``couplings.sinkhorn_log_plan``, ``metrics.sinkhorn_divergence``) vs ott-jax.

Two workloads at batch 256 and 1024 (x0 ~ N(0, I) in 2D, x1 from ``8gaussians``), each one jitted
function timed as the median of several runs after a warm-up, compile time (first call) reported
apart, every timer blocking on the result:

1. **Minibatch-OT coupling** (what a training step of ``losses.interpolant_loss(coupling="ot")``
   or ``couplings.minibatch_ot()`` runs): the entropic plan at a final regulariser of 1% of the
   mean cost, then each source point draws its partner from its row. diffeqgen: 50 log-domain
   iterations with epsilon scaling (``couplings.ot_pairing``). ott-jax ``Sinkhorn`` with the same
   geometry (``relative_epsilon="mean"``): (a) the same budget and schedule, exactly 50
   iterations decaying epsilon geometrically from 100x to 1x over 30 iterations
   (``Epsilon(init=100, decay=0.01**(1/30))``); (b) ott's defaults (convergence threshold 1e-3,
   checked every 10 iterations, no epsilon scaling). Quality: expected pairing cost under the
   plan divided by the exact assignment's (``scipy.optimize.linear_sum_assignment``), and the
   largest relative error of the plan's column sums.
2. **Sinkhorn divergence, value and gradient** in x (what a loss using it runs), epsilon = 0.05
   (absolute, squared data units): ``metrics.sinkhorn_divergence`` (epsilon scaling, then until
   the L1 marginal error is below tol = 1e-3, ott's default threshold, or 1e-4, our default;
   envelope gradient) against ``ott.tools.sinkhorn_divergence.sinkhorn_divergence`` on
   ``PointCloud`` (ott's defaults: threshold 1e-3, implicit differentiation), with the values
   side by side and each gradient's relative error against a tightly converged one
   (``tol=1e-6``).

ott-jax is optional (``pip install ott-jax``); without it only diffeqgen is timed.
Writes ``results/benchmarks/ot.json`` and ``ot.md``.
"""

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from scipy.optimize import linear_sum_assignment

from diffeqgen import data, metrics
from diffeqgen.couplings import ot_pairing, sinkhorn_log_plan, squared_cost

REL_EPS, ITERS, DIV_EPS = 0.01, 50, 0.05


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batch 64 only, 2 repeats (tests)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/benchmarks"))
    return p.parse_args(argv)


def timed(fn, repeats):
    """(first-call seconds, median of ``repeats`` later calls) for a blocking ``fn``."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return first, statistics.median(runs)


def ott_available():
    try:
        import ott  # noqa: F401
    except ImportError:
        return None
    import importlib.metadata

    return importlib.metadata.version("ott-jax")


def ott_plan_fn(mode):
    """Jitted (x0, x1) -> (log plan, iterations) with ott-jax's Sinkhorn."""
    from ott.geometry import epsilon_scheduler, pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    @jax.jit
    def plan(x0, x1):
        base = pointcloud.PointCloud(x0, x1, epsilon=REL_EPS, relative_epsilon="mean")
        if mode == "matched":
            target = base.epsilon  # REL_EPS x mean cost
            eps = epsilon_scheduler.Epsilon(target, init=1.0 / REL_EPS, decay=REL_EPS ** (1 / 30))
            geom = pointcloud.PointCloud(x0, x1, epsilon=eps)
            solver = sinkhorn.Sinkhorn(
                min_iterations=ITERS, max_iterations=ITERS, inner_iterations=1, threshold=0.0
            )
        else:
            geom, solver = base, sinkhorn.Sinkhorn()
        out = solver(linear_problem.LinearProblem(geom))
        cost = geom.cost_matrix
        log_p = (out.f[:, None] + out.g[None, :] - cost) / geom.epsilon
        return log_p, out.n_iters

    return plan


def quality(log_p, x0, x1):
    """Expected pairing cost / exact assignment cost, and max relative column-sum error."""
    p = np.exp(np.asarray(log_p, np.float64))
    p = p / p.sum(1, keepdims=True) / p.shape[0]  # rows exactly 1/n, as the row draw uses them
    c = np.asarray(squared_cost(x0, x1), np.float64)
    r, cidx = linear_sum_assignment(c)
    n = c.shape[0]
    return float((p * c).sum() / c[r, cidx].mean()), float(np.abs(p.sum(0) * n - 1).max())


def coupling_rows(sizes, repeats, key):
    rows = []
    version = ott_available()
    for n in sizes:
        k0, k1, kd = jr.split(jr.fold_in(key, n), 3)
        x0 = jr.normal(k0, (n, 2))
        x1 = data.sample("8gaussians", k1, n)
        ours = jax.jit(lambda k, a, b: ot_pairing(k, a, b, epsilon=REL_EPS, num_iters=ITERS))
        first, med = timed(lambda ours=ours, x0=x0, x1=x1, kd=kd: ours(kd, x0, x1), repeats)
        log_p = sinkhorn_log_plan(squared_cost(x0, x1), epsilon=REL_EPS, num_iters=ITERS)
        ratio, col = quality(log_p, x0, x1)
        rows.append(
            dict(
                n=n,
                impl="diffeqgen _ot (50 it, eps scaling)",
                first_call_s=first,
                median_s=med,
                iterations=ITERS,
                cost_ratio=ratio,
                col_err=col,
            )
        )
        if version is None:
            continue
        for mode, label in (
            ("matched", "ott-jax (50 it, eps scaling)"),
            ("default", "ott-jax (defaults, thr 1e-3)"),
        ):
            plan = ott_plan_fn(mode)

            def ott_pairing(k, a, b, plan=plan):
                log_p, _ = plan(a, b)
                return jr.categorical(k, log_p, axis=1)

            step = jax.jit(ott_pairing)
            first, med = timed(lambda step=step, x0=x0, x1=x1, kd=kd: step(kd, x0, x1), repeats)
            log_p, iters = plan(x0, x1)
            ratio, col = quality(log_p, x0, x1)
            rows.append(
                dict(
                    n=n,
                    impl=label,
                    first_call_s=first,
                    median_s=med,
                    iterations=int(iters),
                    cost_ratio=ratio,
                    col_err=col,
                )
            )
    return rows


def divergence_rows(sizes, repeats, key):
    rows = []
    version = ott_available()
    for n in sizes:
        k0, k1 = jr.split(jr.fold_in(key, 10 * n))
        x = jr.normal(k0, (n, 2))
        y = data.sample("8gaussians", k1, n)
        ref = jax.jit(
            jax.grad(
                lambda a, b: metrics.sinkhorn_divergence(
                    a, b, epsilon=DIV_EPS, tol=1e-6, max_iters=50_000
                )
            )
        )(x, y)

        def gerr(g, ref=ref):
            return float(jnp.linalg.norm(g - ref) / jnp.linalg.norm(ref))

        for tol in (1e-3, 1e-4):
            ours = jax.jit(
                jax.value_and_grad(
                    lambda a, b, tol=tol: metrics.sinkhorn_divergence(
                        a, b, epsilon=DIV_EPS, tol=tol
                    )
                )
            )
            first, med = timed(lambda ours=ours, x=x, y=y: ours(x, y), repeats)
            val, grad = ours(x, y)
            rows.append(
                dict(
                    n=n,
                    impl=f"diffeqgen metrics.sinkhorn_divergence (tol {tol:g})",
                    grad_err=gerr(grad),
                    first_call_s=first,
                    median_s=med,
                    value=float(val),
                )
            )
        if version is None:
            continue
        from ott.geometry import pointcloud
        from ott.tools import sinkhorn_divergence as sd

        def ott_div(a, b):
            out = sd.sinkhorn_divergence(pointcloud.PointCloud, a, b, epsilon=DIV_EPS)
            return out[0]

        theirs = jax.jit(jax.value_and_grad(ott_div))
        first, med = timed(lambda theirs=theirs, x=x, y=y: theirs(x, y), repeats)
        val2, grad2 = theirs(x, y)
        rows.append(
            dict(
                n=n,
                impl="ott-jax sinkhorn_divergence (defaults)",
                first_call_s=first,
                median_s=med,
                value=float(val2),
                grad_err=gerr(grad2),
            )
        )
    return rows


def write_md(res, path):
    lines = [
        "# Sinkhorn: diffeqgen's own against ott-jax",
        "",
        f"Machine: {res['machine']}; ott-jax {res['ott_jax'] or 'not installed'}. Median of "
        f"{res['repeats']} runs after the first (compiling) call; jitted; float32.",
        "",
        "## Minibatch-OT coupling (plan + row draws), eps = 1% of the mean cost",
        "",
        "| n | implementation | iterations | compile s | median ms | cost / exact | col err |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["coupling"]:
        lines.append(
            f"| {r['n']} | {r['impl']} | {r['iterations']} | {r['first_call_s']:.2f} | "
            f"{1e3 * r['median_s']:.2f} | {r['cost_ratio']:.4f} | {r['col_err']:.3f} |"
        )
    lines += [
        "",
        f"## Sinkhorn divergence, value and gradient in x, eps = {DIV_EPS}",
        "",
        "| n | implementation | compile s | median ms | value | grad rel. error |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in res["divergence"]:
        gd = r.get("grad_err")
        lines.append(
            f"| {r['n']} | {r['impl']} | {r['first_call_s']:.2f} | {1e3 * r['median_s']:.2f} | "
            f"{r['value']:.5f} | {'' if gd is None else f'{gd:.2e}'} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    args = parse_args(argv)
    sizes = (64,) if args.quick else (256, 1024)
    repeats = args.repeats or (2 if args.quick else 15)
    key = jr.key(args.seed)
    res = dict(
        machine=f"{platform.machine()}, {jax.device_count()} device(s) "
        f"({jax.default_backend()}), JAX {jax.__version__}",
        ott_jax=ott_available(),
        repeats=repeats,
        coupling=coupling_rows(sizes, repeats, key),
        divergence=divergence_rows(sizes, repeats, key),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    name = "ot_quick" if args.quick else "ot"
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=1))
    write_md(res, args.out / f"{name}.md")
    print((args.out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
