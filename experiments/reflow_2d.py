"""Reflow (rectified flow) on 2D data: one round makes 1-step Euler sampling nearly exact.

For each dataset (``moons``, ``8gaussians``): a teacher velocity model (MLP, SiLU) is trained by
conditional flow matching on the linear path (x_t = t x1 + (1 - t) x0, x0 ~ N(0, I) independent
of the data: the "1-rectified flow"). One round of reflow: ``couplings.reflow_pairs`` integrates
the teacher (RK4) from fresh noise to get deterministic pairs (x0, x1 = teacher flow of x0), and a
student, initialised from the teacher, is retrained by the same loss on those pairs
(``couplings.pair_sampler`` handed to ``train.fit``). Time convention: t = 0 noise, t = 1 data.

Reported (``results/reflow_2d/``): the headline, the exact W2 (assignment) of 5000 one-step Euler
samples of the reflowed model against 5000 held-out real samples, beside the W2 floor at n = 5000
(mean over 5 pairs of independent real sets); a before/after table at n = 1000 (the exact
assignment of the teacher's far-from-data few-step samples at n = 5000 takes many minutes): W2
and MMD^2 beside their floors for Euler with 1, 2 and 4 steps (NFE = steps) before (teacher) and
after (student) reflow, plus an adaptive Tsit5 reference of each model, and the RMS distance
between each sample and the teacher's own RK4 sample from the same noise (how well the map is
reproduced); the straightness of each flow (``couplings.straightness``: mean path length /
chord, and Liu et al.'s S); ``metrics.json``, ``summary.md`` and ``reflow.png`` (trajectories and
1-step samples).

Run ``python experiments/reflow_2d.py`` (3.5 to 7 minutes on 2 busy CPU cores) or ``--quick``.
"""

import json
import pathlib
import sys
import time

import matplotlib

matplotlib.use("Agg")
sys.path.append(str(pathlib.Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffeqgen import couplings, data, losses, metrics, nn, solve, train  # noqa: E402

STUDY = "reflow_2d"
DATASETS = ("moons", "8gaussians")
NFES = (1, 2, 4)
TARGET = 1.5  # headline: 1-step Euler W2 within this factor of the floor after one reflow

FULL = dict(
    width=128,
    depth=4,
    teacher_steps=6000,
    student_steps=6000,
    batch=512,
    lr=2e-3,
    pairs=40_000,
    pair_steps=32,
    n=5000,
    n_table=1000,
    head_floor_reps=5,
    floor_reps=3,
    n_straight=1000,
)
QUICK = dict(
    width=32,
    depth=2,
    teacher_steps=300,
    student_steps=300,
    batch=128,
    lr=2e-3,
    pairs=2000,
    pair_steps=8,
    n=300,
    n_table=200,
    head_floor_reps=2,
    floor_reps=2,
    n_straight=100,
)


def parse_args(argv=None):
    p = _common.make_parser(__doc__, STUDY)
    p.add_argument(
        "--datasets", default=",".join(DATASETS), help="comma-separated 2D datasets to run"
    )
    args = p.parse_args(argv)
    args.cfg = dict(QUICK if args.quick else FULL)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for d in args.datasets:
        if d not in data.names():
            p.error(f"unknown dataset {d!r}; expected one of {', '.join(data.names())}")
    return args


def noise(key, n):
    return jr.normal(key, (n, 2))


def train_model(args, name, model, batches, steps, key):
    cfg = args.cfg
    loss = losses.get_loss("flow_matching", path="linear")
    opt = train.make_optimizer(cfg["lr"], schedule="cosine", num_steps=steps, warmup=200)
    return _common.fit(
        args,
        name,
        model,
        loss,
        batches,
        optimizer=opt,
        key=key,
        num_steps=steps,
        batch_size=cfg["batch"],
        # --quick: 300 steps as 3 x 100 (200 + 100 would compile a second, masked chunk);
        # the result does not depend on steps_per_call
        steps_per_call=100 if args.quick else 200,
        progress=False,
    )


def euler(model, x0, steps):
    return np.asarray(solve.sample_ode(model, x0, solver="euler", steps=steps).x)


def evaluate(model, x0, real, reference, bandwidth):
    """Rows of W2/MMD^2 for Euler at NFES and an adaptive Tsit5 reference of one model.

    Each row also has the RMS distance of each sample to the teacher's RK4 sample from the same
    noise (the reflow target).
    """
    rows = []
    for nfe in (*NFES, None):
        if nfe is None:
            sol = solve.sample_ode(model, x0, solver="tsit5", rtol=1e-5, atol=1e-5)
            x, solver, nfe = np.asarray(sol.x), "tsit5", int(sol.nfe)
        else:
            x, solver = euler(model, x0, nfe), "euler"
        w2, mmd = _common.score(x, real, bandwidth)
        map_err = float(np.sqrt(np.mean(np.sum((x - reference) ** 2, 1))))
        rows.append(dict(solver=solver, nfe=nfe, w2=w2, mmd=mmd, map_rms=map_err))
    return rows


def run_dataset(name, args, key):
    cfg = args.cfg
    k_model, k_teach, k_pairs, k_student, k_eval, k_floor = jr.split(key, 6)
    t0 = time.perf_counter()
    model = nn.MLP(2, 2, width=cfg["width"], depth=cfg["depth"], key=k_model)
    teach = train_model(
        args, f"{name}_teacher.eqx", model, data.sampler(name), cfg["teacher_steps"], k_teach
    )
    teacher = teach.ema_model
    t_teacher = time.perf_counter() - t0

    t0 = time.perf_counter()
    x0p, x1p = couplings.reflow_pairs(
        teacher, k_pairs, cfg["pairs"], source=noise, solver="rk4", steps=cfg["pair_steps"]
    )
    t_pairs = time.perf_counter() - t0
    t0 = time.perf_counter()
    stud = train_model(
        args,
        f"{name}_student.eqx",
        teacher,
        couplings.pair_sampler(x0p, x1p),
        cfg["student_steps"],
        k_student,
    )
    student = stud.ema_model
    t_student = time.perf_counter() - t0

    t0 = time.perf_counter()
    n, nt = cfg["n"], cfg["n_table"]
    k_x0, k_real = jr.split(k_eval)
    x0 = noise(k_x0, n)
    real = np.asarray(data.sample(name, k_real, n))
    bandwidth = metrics.median_bandwidth(real, real[::-1])
    # headline at n: exact W2 of the reflowed 1-step sample beside the W2 floor at n
    head_w2 = float(metrics.wasserstein(euler(student, x0, 1), real))
    head_floor = metrics.floor_stats(
        metrics.wasserstein, data.sampler(name), n, key=k_floor, repeats=cfg["head_floor_reps"]
    )
    # table at nt (the exact assignment of far-from-data samples at n = 5000 is too slow)
    floors = _common.floors(
        data.sampler(name),
        nt,
        key=jr.fold_in(k_floor, 1),
        bandwidth=bandwidth,
        repeats=cfg["floor_reps"],
    )
    x0, real = x0[:nt], real[:nt]
    reference = np.asarray(solve.sample_ode(teacher, x0, solver="rk4", steps=cfg["pair_steps"]).x)
    rows = {
        "teacher": evaluate(teacher, x0, real, reference, bandwidth),
        "reflow": evaluate(student, x0, real, reference, bandwidth),
    }
    ref_w2, _ = _common.score(reference, real, bandwidth)
    xs = x0[: cfg["n_straight"]]
    straight = {}
    for label, m in (("teacher", teacher), ("reflow", student)):
        s = couplings.straightness(m, xs, steps=64)
        straight[label] = dict(length_ratio=float(s.length_ratio), deviation=float(s.deviation))
    t_eval = time.perf_counter() - t0
    show = x0[:300]
    trajs = {
        label: np.asarray(
            solve.sample_ode(m, show, solver="rk4", steps=16, saveat=jnp.linspace(0, 1, 17)).xs
        )
        for label, m in (("teacher", teacher), ("reflow", student))
    }
    one_step = {
        label: euler(m, x0[:2000], 1) for label, m in (("teacher", teacher), ("reflow", student))
    }
    result = dict(
        headline=dict(
            n=n,
            w2=head_w2,
            floor_w2=head_floor.mean,
            floor_w2_sd=head_floor.std,
            floor_values=head_floor.values,
            ratio=head_w2 / head_floor.mean,
            target=TARGET,
            met=bool(head_w2 <= TARGET * head_floor.mean),
        ),
        floors=floors,
        bandwidth=bandwidth,
        teacher_rk4_w2=ref_w2,
        rows=rows,
        straightness=straight,
        seconds=dict(teacher=t_teacher, pairs=t_pairs, student=t_student, eval=t_eval),
        teacher_steps_per_s=teach.steps_per_second,
        student_steps_per_s=stud.steps_per_second,
        final_loss=dict(
            teacher=float(np.mean(teach.history["loss"][-200:])),
            reflow=float(np.mean(stud.history["loss"][-200:])),
        ),
    )
    return result, dict(trajs=trajs, one_step=one_step, real=real[:2000])


def plot(figs, out, lim=4.5):
    names = list(figs)
    fig, axes = plt.subplots(len(names), 4, figsize=(13, 3.3 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        f = figs[name]
        for c, label in enumerate(("teacher", "reflow")):
            ax = axes[r, c]
            xs = f["trajs"][label]
            for i in range(xs.shape[1]):
                ax.plot(xs[:, i, 0], xs[:, i, 1], lw=0.4, alpha=0.4, color="0.3")
            ax.scatter(xs[-1, :, 0], xs[-1, :, 1], s=2, color="C1", zorder=3)
            ax.set_title(f"{name}: {label} trajectories", fontsize=9)
            ax = axes[r, 2 + c]
            ax.scatter(f["real"][:, 0], f["real"][:, 1], s=1, alpha=0.3, color="C0", label="real")
            x = f["one_step"][label]
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5, color="C3", label="1-step Euler")
            ax.set_title(f"{name}: {label}, 1 Euler step", fontsize=9)
            ax.legend(fontsize=7, markerscale=5, loc="lower right")
        for ax in axes[r]:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def write_summary(out, m):
    cfg = m["config"]
    lines = [
        "# Reflow on 2D data: before/after one round",
        "",
        f"MLP {cfg['depth']} x {cfg['width']} (SiLU, sinusoidal time embedding). Teacher: "
        f"conditional flow matching on the linear path, independent coupling (x0 ~ N(0, I)), "
        f"{cfg['teacher_steps']} steps, batch {cfg['batch']}, Adam lr {cfg['lr']} (cosine), EMA "
        f"(sampled). Reflow: {cfg['pairs']} pairs (x0, teacher RK4 flow of x0 with "
        f"{cfg['pair_steps']} steps), student initialised from the teacher and trained "
        f"{cfg['student_steps']} steps by the same loss on the pairs. Table: n = {cfg['n_table']} "
        "samples from the same noise for every row, against n held-out real samples; W2 exact "
        "(assignment), MMD^2 unbiased with a fixed RBF bandwidth (median heuristic on real data). "
        "Floors: W2/MMD^2 between two independent real sets of the same n (mean +- sd over "
        f"{cfg['floor_reps']} pairs). 'RMS to teacher map': root mean squared distance between "
        "each sample and the teacher's RK4 sample from the same noise (the reflow target).",
        "",
    ]
    for name, r in m["datasets"].items():
        f = r["floors"]
        lines += [
            f"## {name}",
            "",
            f"Floors: W2 {f['w2']:.4f} +- {f['w2_sd']:.4f}, MMD^2 {f['mmd']:.2e} +- "
            f"{f['mmd_sd']:.1e}. Teacher RK4 ({cfg['pair_steps']} steps): W2 "
            f"{r['teacher_rk4_w2']:.4f} = {r['teacher_rk4_w2'] / f['w2']:.2f} x floor.",
            "",
            "| model | solver | NFE | W2 | W2 / floor | RMS to teacher map | MMD^2 |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for label in ("teacher", "reflow"):
            for row in r["rows"][label]:
                lines.append(
                    f"| {label} | {row['solver']} | {row['nfe']} | {row['w2']:.4f} | "
                    f"{row['w2'] / f['w2']:.2f} | {row['map_rms']:.4f} | "
                    f"{row['mmd']:.2e} |"
                )
        s = r["straightness"]
        h = r["headline"]
        lines += [
            "",
            f"Straightness (mean path length / chord; Liu et al.'s S): teacher "
            f"{s['teacher']['length_ratio']:.4f} / {s['teacher']['deviation']:.4f}, after "
            f"reflow {s['reflow']['length_ratio']:.4f} / {s['reflow']['deviation']:.4f}.",
            "",
            f"**Headline (n = {h['n']})**: 1-step Euler after one reflow: W2 {h['w2']:.4f} against "
            f"the W2 floor at n = {h['n']} of {h['floor_w2']:.4f} (mean of "
            f"{len(h['floor_values'])} pairs: "
            + ", ".join(f"{v:.4f}" for v in h["floor_values"])
            + f") = {h['ratio']:.2f} x floor (target <= {TARGET}): "
            + ("met." if h["met"] else f"missed by a factor {h['ratio'] / TARGET:.2f}."),
            "",
        ]
        lines += [
            f"Wall time: teacher {r['seconds']['teacher']:.0f} s "
            f"({r['teacher_steps_per_s']:.0f} steps/s), pairs {r['seconds']['pairs']:.1f} s, "
            f"student {r['seconds']['student']:.0f} s, evaluation {r['seconds']['eval']:.0f} s.",
            "",
        ]
    lines.append(f"Total wall time {m['total_seconds']:.0f} s.")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    key = jr.key(args.seed)
    results, figs = {}, {}
    for i, name in enumerate(args.datasets):
        results[name], figs[name] = run_dataset(name, args, jr.fold_in(key, i))
        print(name, json.dumps(results[name]["rows"]["reflow"][0]), flush=True)
    m = dict(
        config=args.cfg,
        quick=args.quick,
        seed=args.seed,
        datasets=results,
        total_seconds=time.perf_counter() - start,
        machine=f"{jax.device_count()} {jax.default_backend()} device(s), JAX {jax.__version__}",
    )
    (args.out / "metrics.json").write_text(json.dumps(m, indent=1))
    plot(figs, args.out / "reflow.png")
    write_summary(args.out, m)
    print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    _common.run_interruptible(main)
