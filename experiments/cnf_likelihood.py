"""Continuous normalizing flows: exact likelihoods by the ODE, checked against exact answers.

The main study of diffeqgen. Writes to ``--out`` (default ``results/cnf_likelihood/``):

1. ``linear_map.png``: Y = A Z, A = [[3/5, 2/5], [1/5, 4/5]], by the flow dz/dt = logm(A) z;
   the CNF log-density beside the analytic N(0, A A^T).
2. ``tanh_flow.png``: dz/dt = tanh(z^3) from N(0, I): histograms of samples at t = 0, .1, ...,
   .5 beside CNF densities, against the exact 1D change of variables.
3 and 5. ``ml_cnf.png``: per dataset with an exact density, a ``cnf.CNF`` trained by flow
   matching (5), then by maximum likelihood with ``cnf.nll_loss`` (3); each model's gap to the
   data's exact NLL on the same test points (a KL estimate, nats).
4. ``solver_study.png``: log-likelihood error against NFE per solver (fixed steps, tolerances)
   against a float64 reference; the exact trace against Hutchinson probes.

Also ``metrics.json`` (every number) and ``summary.md``, which is printed at the end.

    python experiments/cnf_likelihood.py           # default study, a few minutes on 2 cores
    python experiments/cnf_likelihood.py --quick   # seconds, smaller everything (tests)
"""

import functools
import math
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402  (selects the Agg backend)
import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402
from scipy.stats import multivariate_normal, norm  # noqa: E402

from diffeqgen import cnf, data, losses, paths, plotting, solve, train  # noqa: E402

A_MATRIX = np.array([[3 / 5, 2 / 5], [1 / 5, 4 / 5]])
TANH_TIMES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
PATH = paths.get_path("linear")  # x_t = t x1 + (1 - t) x0: N(0, I) at t = 0, data at t = 1
ML_STEPS = 8  # fixed RK4 steps of the maximum-likelihood training solve
# One checkpoint per step: the backward pass keeps the 8 states instead of recomputing them
# (the same gradients, bit for bit; the training step compiles in ~40% less time).
ML_ADJOINT = diffrax.RecursiveCheckpointAdjoint(checkpoints=ML_STEPS)
ML_LOSS = functools.partial(cnf.nll_loss, solver="rk4", steps=ML_STEPS, adjoint=ML_ADJOINT)
FM_LOSS = losses.get_loss("flow_matching", path=PATH)
# --quick: every float32 likelihood solve has 200 rows (chunk = n_test = n_solver =
# n_hutch * hutch_reps), so each field compiles its solve once. A dict is per dataset: ML
# steps go where they pay (flow matching alone brings 8gaussians within 0.01 nats).
SETTINGS = dict(  # name=(full, --quick)
    datasets=("8gaussians,checkerboard", "8gaussians"),
    steps=({"8gaussians": 600, "default": 2000}, 20),
    lin_grid=(60, 20), tanh_n=(3000, 500), tanh_bins=(30, 12),  # sections 1 and 2
    n_test=(4000, 200), n_train=(100_000, 20_000), n_val=(500, 200), grid=(60, 16),
    chunk=(500, 200), fm_steps=(30000, 2000), fm_batch=(512, 256), width=(128, 32),
    ml_batch=(64, 128), ml_lr=(2e-3, 1e-3), fm_lr=(5e-3, 2e-3), ml_every=(100, 20),
    fixed_steps=((2, 4, 8, 16, 32, 64, 128, 256), (2, 8)),  # section 4
    tols=((1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8), (1e-3,)),
    solvers=(("euler", "midpoint", "rk4", "tsit5", "dopri5"), ("euler",)),
    tol_solvers=(("tsit5", "dopri5"), ("dopri5",)), n_solver=(128, 200),
    probes=((1, 4, 16), (4,)), n_hutch=(128, 50), hutch_reps=(16, 4),
)  # fmt: skip
ADAPTIVE = [s for s in solve.ODE_SOLVERS if s not in ("euler", "midpoint", "rk4", "heun")]


def parse_args(argv=None):
    p = _common.make_parser(__doc__, "cnf_likelihood")
    datasets = "2D datasets with an exact density, comma-separated (default {}; --quick {})"
    exact = _common.choices("dataset", data.names(exact=True))  # the gaps need log p_data
    p.add_argument("--datasets", type=exact, help=datasets.format(*SETTINGS["datasets"]))
    steps = "ML CNF training steps (default per dataset {}; --quick {})".format(*SETTINGS["steps"])
    p.add_argument("--steps", type=_common.integer("--steps"), help=steps)
    solver = f"adaptive solver of every likelihood evaluation, one of {', '.join(ADAPTIVE)}"
    p.add_argument(
        "--solver", type=_common.choice("adaptive solver", ADAPTIVE), default="dopri5", help=solver
    )
    for flag in ("rtol", "atol"):
        p.add_argument(f"--{flag}", type=_common.positive(f"--{flag}"), default=1e-6, help=flag)
    args = p.parse_args(argv)
    cfg = args.cfg = _common.config(args, SETTINGS, steps=args.steps)
    cfg["datasets"] = args.datasets or cfg["datasets"].split(",")
    args.ev = dict(solver=args.solver, rtol=args.rtol, atol=args.atol)  # every likelihood solve
    return args


@functools.cache  # one object per setting: the datasets sharing it share one compiled step
def optimizer(lr, steps, clip=None):
    return train.make_optimizer(lr, schedule="cosine", num_steps=max(steps, 2), grad_clip=clip)


def log_prob(study, vf, x, **kw) -> tuple[np.ndarray, float]:
    """``cnf.log_prob_chunked`` at the flags' settings (one compile per field), as NumPy."""
    lp, nfe = cnf.log_prob_chunked(vf, x, chunk_size=study.cfg["chunk"], **study.ev | kw)
    return np.asarray(lp), nfe


def heat(ax, values, lim, title, **kw):
    return plotting.heatmap(ax, values, lim=lim, title=title, **kw)


# ----------------------------------------------------------------------------- 1. linear map
def linear_field(t, z, m):
    """dz/dt = M z with M = ``args`` (at t = 1 it realises z -> expm(M) z)."""
    return m @ z


def linear_map(args) -> dict:
    log_a = scipy.linalg.logm(A_MATRIX)
    imag = float(np.max(np.abs(np.imag(log_a))))
    if imag > 1e-12:
        raise RuntimeError(f"logm(A) is not real (max |imag| = {imag})")
    log_a, lim = np.real(log_a), 3.0
    pts, _ = _common.cells(lim, args.cfg["lin_grid"])
    lp, nfe = log_prob(args, linear_field, pts, args=jnp.asarray(log_a, jnp.float32))
    cov = A_MATRIX @ A_MATRIX.T
    exact = multivariate_normal(cov=cov).logpdf(pts.astype(np.float64))
    err = np.abs(lp - exact)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    span = dict(vmin=exact.min(), vmax=exact.max())
    heat(axes[0], exact, lim, "analytic log N(0, A A^T)", **span)
    heat(axes[1], lp, lim, f"CNF log p (dz/dt = logm(A) z), NFE {nfe:.0f}", **span)
    im = heat(axes[2], err, lim, f"|error|, max {err.max():.1e}", cmap="magma")
    fig.colorbar(im, ax=axes[2])
    _common.save(fig, args.out / "linear_map.png")
    expm_error = float(np.max(np.abs(scipy.linalg.expm(log_a) - A_MATRIX)))
    return dict(
        logm_A=log_a.tolist(), logm_max_imag=imag, expm_logm_error=expm_error, cov=cov.tolist(),
        max_abs_error=float(err.max()), mean_abs_error=float(err.mean()), nfe_per_sample=nfe,
        grid=args.cfg["lin_grid"], target=1e-4, passed=bool(err.max() < 1e-4),
    )  # fmt: skip


# ---------------------------------------------------------------------------- 2. tanh(z^3)
def tanh_field(t, z, args):
    return jnp.tanh(z**3)


def exact_tanh_log_density_1d(u: np.ndarray, t: float) -> np.ndarray:
    """Log p_t(u) of one coordinate of dz/dt = tanh(z^3) from N(0, 1), in float64.

    The scalar flow phi_t solves d phi/dt = f(phi), f(z) = tanh(z^3). Its derivative obeys
    d/dt phi' = f'(phi) phi', so log phi'(z0) = int_0^t f'(phi_s) ds, and since
    d/ds log|f(phi_s)| = f'(phi_s), phi'(z0) = f(phi_t(z0)) / f(z0). Hence
    log p_t(u) = log N(z0; 0, 1) + log|f(z0)| - log|f(u)| with z0 = phi_t^{-1}(u) from a
    backward float64 solve (DOP853, rtol 1e-12). (u = 0 is a fixed point; the grid avoids it.)
    """
    f = lambda z: np.tanh(z**3)  # noqa: E731
    z0 = solve_ivp(lambda s, z: f(z), (t, 0.0), u, method="DOP853", rtol=1e-12, atol=1e-14).y[:, -1]
    return norm.logpdf(z0) + np.log(np.abs(f(z0))) - np.log(np.abs(f(u)))


def tanh_flow(args, key) -> dict:
    lim, bins, n = 3.0, args.cfg["tanh_bins"], args.cfg["tanh_n"]
    z0 = jr.normal(key, (n, 2))
    kw = dict(t0=0.0, t1=TANH_TIMES[-1], rtol=1e-7, atol=1e-7, saveat=jnp.asarray(TANH_TIMES))
    sol = solve.sample_ode(tanh_field, z0, solver="dopri5", **kw)
    xs = np.asarray(sol.xs)
    pts, c = _common.cells(lim, bins)
    normalised = lambda log_p: np.exp(log_p) / np.exp(log_p).sum()  # noqa: E731  (equal cells)
    tv = lambda p, q: 0.5 * float(np.abs(p - q).sum())  # noqa: E731
    fig, axes = plt.subplots(2, len(TANH_TIMES), figsize=(2.2 * len(TANH_TIMES), 5.4))
    metrics = []
    for i, t in enumerate(TANH_TIMES):
        hist, _, _ = np.histogram2d(xs[i, :, 1], xs[i, :, 0], bins=bins, range=[[-lim, lim]] * 2)
        hist = hist.ravel() / hist.sum()
        lp, nfe = log_prob(args, tanh_field, pts, t1=t) if t else (norm.logpdf(pts).sum(1), 0.0)
        e1 = exact_tanh_log_density_1d(c.astype(np.float64), t)
        exact = (e1[None, :] + e1[:, None]).ravel()
        q_cnf, q_ex, seen = normalised(lp), normalised(exact), hist > 0
        kl = float(np.sum(hist[seen] * np.log(hist[seen] / q_cnf[seen])))
        metrics.append(dict(t=t, tv_hist_cnf=tv(hist, q_cnf), tv_hist_exact=tv(hist, q_ex),
                            tv_cnf_exact=tv(q_cnf, q_ex), kl_hist_cnf=kl, nfe_per_sample=nfe,
                            max_abs_log_error=float(np.max(np.abs(lp - exact)))))  # fmt: skip
        vmax, title = max(hist.max(), q_cnf.max()), f"CNF t={t:.1f}\nTV {tv(hist, q_cnf):.3f}"
        heat(axes[0, i], hist, lim, f"samples t={t:.1f}", vmin=0, vmax=vmax)
        heat(axes[1, i], q_cnf, lim, title, vmin=0, vmax=vmax)
    fig.suptitle("dz/dt = tanh(z^3): histograms of samples (top) and CNF densities (bottom)")
    _common.save(fig, args.out / "tanh_flow.png")
    return dict(times=metrics, n_samples=n, bins=bins, sample_nfe=int(sol.nfe))


# ----------------------------------------------------- 3 and 5. flow matching, maximum likelihood
def score(args, field, test, name) -> dict:
    """Test NLL of ``field``, and its gap: mean log p_data - log p_model (a KL estimate) +- s.e.

    The gap's standard error is that of the paired mean, far below the NLL's own.
    """
    (lp, nfe), secs, _ = _common.timed(log_prob, args, field, test)
    d, n = np.asarray(data.log_prob(name, jnp.asarray(test)), np.float64) - lp, len(lp)
    return dict(
        test_nll=float(-lp.mean()), test_nll_se=float(lp.std(ddof=1) / math.sqrt(n)),
        entropy=data.entropy(name), gap=float(d.mean()), gap_se=float(d.std(ddof=1) / math.sqrt(n)),
        n_test=n, nfe=nfe, eval_seconds=secs,
    )  # fmt: skip


def train_models(args, name, key) -> dict:
    """Flow matching (5) on the linear path, then ``cnf.nll_loss`` from its EMA weights (3)."""
    cfg = args.cfg
    model_key, fm_key, ml_key, test_key, val_key, s1, s2, train_key = jr.split(key, 8)
    test = np.asarray(data.sample(name, test_key, cfg["n_test"]))
    # A finite training set (rows drawn with replacement): every dataset then shares one
    # compiled training step per loss (a sampler function would compile each anew).
    train_set = data.sample(name, train_key, cfg["n_train"])
    model = cnf.CNF(2, width=cfg["width"], depth=3, activation="silu", key=model_key)
    steps = cfg["steps"]  # an int (--steps, --quick) or per dataset
    ml_steps = steps if isinstance(steps, int) else steps.get(name, steps["default"])
    fm_steps, every = cfg["fm_steps"], min(cfg["ml_every"], ml_steps)
    fm = _common.fit(
        args, f"fm_{name}.eqx", model, FM_LOSS, train_set, optimizer=optimizer(cfg["fm_lr"],
        fm_steps), key=fm_key, num_steps=fm_steps, batch_size=cfg["fm_batch"],
        steps_per_call=min(1000, fm_steps), ema_decay=0.999,
    )  # fmt: skip
    ml = _common.fit(
        args, f"ml_{name}.eqx", fm.ema_model, ML_LOSS, train_set, optimizer=optimizer(cfg["ml_lr"],
        ml_steps, 1.0), key=ml_key, num_steps=ml_steps, batch_size=cfg["ml_batch"], ema_decay=0.99,
        steps_per_call=every, val_every=every, val_data=data.sample(name, val_key, cfg["n_val"]),
    )  # fmt: skip
    runs = {}
    for kind, res, k in (("fm", fm, s1), ("ml", ml, s2)):
        field = paths.as_vector_field(res.ema_model, PATH, "velocity")  # N(0, I) at t = 0
        s = score(args, field, test, name)
        s |= dict(train_seconds=res.wall_seconds, train_steps=len(res.history["loss"]))
        samples = np.asarray(solve.sample_ode(field, jr.normal(k, (2000, 2))).x)
        runs[kind] = dict(result=res, field=field, test=test, samples=samples, metrics=s)
    runs["ml"]["metrics"]["final_val_nll_rk4"] = float(ml.history["val_loss"][-1])
    return runs


def density_figures(args, runs) -> None:
    """``ml_cnf.png``: per dataset the ML NLL curve, test data, FM and ML samples and densities."""
    lim, names, dots = 4.0, list(runs), dict(lim=4.0, s=4, alpha=0.4)
    pts, _ = _common.cells(lim, args.cfg["grid"])
    fig, axes = plt.subplots(len(names), 7, figsize=(19, 2.9 * len(names)), squeeze=False)
    for ax, ds in zip(axes, names, strict=True):
        ml = runs[ds]["ml"]
        s, h = ml["metrics"], ml["result"].history
        smooth = plotting.loss_curve(
            ax[0], h, label=f"NLL (rk4-{ML_STEPS})", window=max(1, min(50, len(h["loss"]) // 10)),
            val_label=f"validation NLL (rk4-{ML_STEPS}, EMA)", val_fmt="o-",
        )  # fmt: skip
        ax[0].axhline(s["entropy"], color="k", ls="--", lw=1, label="true entropy")
        ax[0].set_ylim(top=min(ax[0].get_ylim()[1], smooth[0] + 0.5) if len(smooth) else None)
        ax[0].set_title(f"{ds}: ML fine-tuning NLL (nats)", fontsize=9)
        ax[0].legend(fontsize=7)
        plotting.scatter(ax[1], ml["test"], title="test data", **dots)
        for j, (kind, label) in enumerate((("fm", "flow matching"), ("ml", "ML CNF"))):
            r = runs[ds][kind]
            title = f"{label} (NLL {r['metrics']['test_nll']:.3f}, gap {r['metrics']['gap']:+.3f})"
            plotting.scatter(ax[2 + 2 * j], r["samples"], color=f"C{2 - j}", title=label, **dots)
            heat(ax[3 + 2 * j], np.exp(log_prob(args, r["field"], pts)[0]), lim, title)
        heat(ax[6], np.exp(np.asarray(data.log_prob(ds, jnp.asarray(pts)))), lim, "true density")
    _common.save(fig, args.out / "ml_cnf.png")


# ----------------------------------------------------------------------------- 4. solvers
def solver_study(args, model, x, key) -> dict:
    cfg = args.cfg
    ref, ref_nfe = cnf.reference_log_prob(model, x)  # float64, dopri8 at rtol = atol = 1e-12
    sweep = dict(fixed=cfg["solvers"], steps=cfg["fixed_steps"], adaptive=cfg["tol_solvers"])
    rows = cnf.error_vs_nfe(model, x, **sweep, tols=cfg["tols"], reference=ref)
    # Hutchinson against the exact trace at the evaluation settings (same solver and tolerances).
    xh = np.asarray(x[: cfg["n_hutch"]])
    exact, _ = log_prob(args, model, xh)
    kw = dict(repeats=cfg["hutch_reps"], exact=exact, **args.ev)
    hutch = [
        cnf.hutchinson_error(model, xh, k, key=jr.fold_in(key, k), **kw) for k in cfg["probes"]
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    title = f"CNF log-likelihood error vs NFE (float64 ref: dopri8, {ref_nfe:.0f} NFE)"
    plotting.error_vs_nfe(axes[0], rows).set_title(title, fontsize=9)
    plotting.hutchinson(axes[1], hutch).set_title("Hutchinson vs exact trace (nats)", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
    _common.save(fig, args.out / "solver_study.png")
    return dict(reference_nfe=ref_nfe, n_points=len(x), rows=rows, hutchinson=hutch)


# ------------------------------------------------------------------------------- the report
def solver_reach(rows) -> list[str]:
    """Table rows per solver: the fewest NFE with mean error < 1e-4 nats, the smallest error."""
    out, at = [], lambda r: f"{r['nfe']:.0f} NFE ({r['mode']} {r['value']:g})"  # noqa: E731
    for solver in dict.fromkeys(r["solver"] for r in rows):
        ok = [r for r in rows if r["solver"] == solver and r["nfe"]]
        hit = min((r for r in ok if r["mean_abs_error"] < 1e-4), key=lambda r: r["nfe"], default=0)
        low = min(ok, key=lambda r: r["mean_abs_error"])
        failed = sum(r["solver"] == solver and r["nfe"] is None for r in rows)
        out.append(f"{solver} | {at(hit) if hit else 'never'} | {low['mean_abs_error']:.1e} at "
                   f"{at(low)} | {low['max_abs_error']:.1e} | {failed}")  # fmt: skip
    return out


def summary(m: dict) -> list[str]:
    lin, tanh, sol, e, cfg = (
        m[k] for k in ("linear_map", "tanh_flow", "solver_study", "eval", "config")
    )
    nll = "{test_nll:.3f} +- {test_nll_se:.3f} | {gap:+.4f} +- {gap_se:.4f} | {nfe:.0f} | "
    nll += "{train_seconds:.0f} ({train_steps})"
    return [
        "# CNF likelihoods (`experiments/cnf_likelihood.py`)",
        "",
        f"Command: `{m['command']}`; wall time {m['wall_seconds']:.0f} s. Every likelihood is "
        f"`diffeqgen.cnf.log_prob` ({e['solver']}, rtol {e['rtol']:g}, atol {e['atol']:g}, batched "
        f"RMS error control over chunks of {cfg['chunk']} points, exact trace unless stated).",
        "",
        "## 1. Linear map Y = A Z, A = [[3/5, 2/5], [1/5, 4/5]]",
        f"The flow dz/dt = logm(A) z (logm real: max |imag| = {lin['logm_max_imag']:.1e}; "
        f"|expm(logm A) - A| = {lin['expm_logm_error']:.1e}) realises A at t = 1. Max |log p "
        f"error| on a {lin['grid']}x{lin['grid']} grid on [-3, 3]^2 against N(0, A A^T): "
        f"**{lin['max_abs_error']:.2e}** (target 1e-4, float32; {lin['nfe_per_sample']:.0f} NFE).",
        "",
        "## 2. dz/dt = tanh(z^3) from N(0, I)",
        "Exact: per coordinate log p_t(u) = log N(z0) + log|f(z0)| - log|f(u)|, z0 = phi_t^-1(u) "
        f"by a float64 solve. TV between {tanh['bins']}x{tanh['bins']} histograms of "
        f"{tanh['n_samples']} samples and the densities on the same cells (hist-exact: the floor).",
        "",
        *_common.table(
            "t | TV(hist, CNF) | TV(hist, exact) | TV(CNF, exact) | max abs log p error | NFE",
            _common.rows(
                "{t:.1f} | {tv_hist_cnf:.4f} | {tv_hist_exact:.4f} | {tv_cnf_exact:.1e} | "
                "{max_abs_log_error:.1e} | {nfe_per_sample:.0f}",
                tanh["times"],
            ),
        ),
        "",
        "## 3 and 5. Flow matching, then maximum likelihood (test NLL, nats)",
        f"One `cnf.CNF` (SiLU MLP 3x{cfg['width']}) per dataset: flow matching on the linear path "
        f"({cfg['fm_steps']} steps, batch {cfg['fm_batch']}; the FM model, scored through its "
        f"probability-flow ODE), then from its EMA weights `cnf.nll_loss` (exact trace, RK4 "
        f"{ML_STEPS} steps; batch {cfg['ml_batch']}, steps in the table; the ML CNF). Gap = mean "
        "of log p_data(x) - log p_model(x) over the test points (a KL estimate >= 0 up to noise), "
        "+- std. error.",
        "",
        *_common.table(
            "dataset | n | entropy | FM NLL | FM gap | NFE | train s (steps) | ML NLL | ML gap | "
            "NFE | train s (steps)",
            [
                f"{ds} | {r['ml_cnf']['n_test']} | {r['ml_cnf']['entropy']:.3f} | "
                + " | ".join(nll.format(**r[k]) for k in ("flow_matching", "ml_cnf"))
                for ds, r in m["datasets"].items()
            ],
        ),
        "",
        f"## 4. Solver study ({m['solver_study_dataset']} ML CNF, {sol['n_points']} test points)",
        "Error of float32 log-likelihoods against a float64 reference (dopri8, rtol 1e-12, "
        f"{sol['reference_nfe']:.0f} NFE); every setting is in metrics.json and the figure.",
        "",
        *_common.table(
            "solver | mean error < 1e-4 nats from | smallest mean error | its max error | failed",
            solver_reach(sol["rows"]),
        ),
        "",
        "Hutchinson (Rademacher probes, fixed per solve) against the exact trace (nats):",
        "",
        *_common.table(
            "probes | std per point | bias +- s.e.",
            _common.rows(
                "{num_probes} | {std:.3f} | {bias:+.4f} +- {bias_se:.4f}", sol["hutchinson"]
            ),
        ),
        "",
        "Figures: linear_map.png, tanh_flow.png, ml_cnf.png, solver_study.png.",
    ]


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg, out, t_start = args.cfg, args.out, time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    keys = dict(zip(("tanh", "models", "hutch"), jr.split(jr.key(args.seed), 3), strict=True))
    m = dict(command=_common.command(argv), quick=args.quick, seed=args.seed, eval=args.ev)
    m["config"] = cfg
    stage = _common.Stages("cnf_likelihood", 5, m.setdefault("timings", {}))
    m["linear_map"] = stage("linear_map", linear_map, args)
    m["tanh_flow"] = stage("tanh_flow", tanh_flow, args, keys["tanh"])
    datasets = enumerate(cfg["datasets"])  # each trains with the models key folded in by position
    runs = stage(
        "fm_and_ml_cnf",
        lambda: {d: train_models(args, d, jr.fold_in(keys["models"], i)) for i, d in datasets},
    )
    ml = runs[m.setdefault("solver_study_dataset", cfg["datasets"][0])]["ml"]
    x, key = ml["test"][: cfg["n_solver"]], keys["hutch"]
    m["solver_study"] = stage("solver_study", solver_study, args, ml["field"], x, key)
    stage("density_figures", density_figures, args, runs)
    stage.close()
    m["datasets"] = {ds: dict(ml_cnf=r["ml"]["metrics"], flow_matching=r["fm"]["metrics"])
                     for ds, r in runs.items()}  # fmt: skip
    m["wall_seconds"] = time.perf_counter() - t_start
    lines = summary(m)
    _common.write_report(out, m, lines)
    print("\n".join(lines))
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in m["timings"].items()))
    print(f"wrote {out}/ in {m['wall_seconds']:.0f} s")
    return m


if __name__ == "__main__":
    main()
