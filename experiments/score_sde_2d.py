"""Score SDE against probability-flow ODE against flow matching: Gaussian -> dog (texts 000, 001).

Time-conditioned MLPs are trained on diffusion paths of the dog silhouette: by default a noise
predictor (eps) on the VP SDE and, as in text 001, a denoiser D(t, x) ~ E[x1 | x_t] on the
zero-drift VE path with g(s) = scale * s ("ve_t"); a third MLP is trained by conditional flow
matching on the linear path for comparison. Each diffusion model is sampled by

* the reverse-time SDE with Euler-Maruyama, N = 1000 steps,
* a predictor-corrector sampler (Euler-Maruyama predictor + one Langevin corrector step),
* the probability-flow ODE with Euler, N = 40 steps, and with adaptive Tsit5 and Dopri5,

and the flow-matching model by the same ODE solvers. Every sample set (2000 points) is scored
against 2000 held-out dog samples by exact W2 and by MMD with one fixed, stated bandwidth, each
printed beside its floor (the same metric between independent real sets). The table follows
text 000 Table II: training and sampling run time (separately), NFE, MMD, W2, best validation
loss. Time convention: t = 0 noise, t = 1 data.

Run ``python experiments/score_sde_2d.py`` (about 5-6 minutes on 2 busy CPU cores) or ``--quick``.
"""

import argparse
import pathlib
import sys
import time
from dataclasses import dataclass

sys.path.append(str(pathlib.Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402  (selects the Agg backend)
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from diffeqgen import data, losses, metrics, nn, paths, plotting, sdes, solve, train  # noqa: E402

STUDY = "score_sde_2d"
DATASET = "dog"
DIFFUSION_PATHS = ("vp", "ve_t", "ve", "subvp")
KINDS = ("denoiser", "eps", "score")
LOSS = dict(denoiser="denoiser", eps="eps", score="score_matching", velocity="flow_matching")

SETTINGS = dict(  # name=(full, --quick)
    width=(128, 64),
    depth=(4, 3),
    steps=(12_000, 600),
    batch=(512, 256),
    lr=(2e-3, 2e-3),
    n=(2000, 400),
    n_val=(2000, 500),
    sde_steps=(1000, 200),
    ode_steps=(40, 40),
    pc_steps=(500, 100),
    rtol=(1e-5, 1e-3),
    atol=(1e-5, 1e-3),
    val_every=(500, 200),
    floor_repeats=(3, 2),
)


@dataclass
class Spec:
    """One trained model: its name, path, what the network predicts and its loss."""

    name: str
    path_name: str
    path: object
    kind: str
    loss: object


def parse_args(argv=None):
    p = _common.make_parser(__doc__, STUDY)
    p.add_argument(
        "--paths",
        default=None,
        help="comma-separated diffusion models PATH[:KIND], PATH from "
        f"{', '.join(DIFFUSION_PATHS)}, KIND (what the network predicts) from {', '.join(KINDS)}, "
        "default --kind (default vp:eps,ve_t:denoiser; --quick: vp:eps)",
    )
    kind = _common.choice("kind", KINDS)
    p.add_argument("--kind", type=kind, default="eps", help=f"default network output ({KINDS})")
    pos = _common.positive
    help_ = "sigma_max of the 've' path (library default when omitted)"
    p.add_argument("--sigma-max", type=pos("sigma_max"), help=help_)
    help_ = "scale of the 've_t' path (g(s) = scale * s); p_0 has std scale/sqrt(3)"
    p.add_argument("--ve-scale", type=pos("ve_scale"), default=8.0, help=help_)
    count = _common.integer
    p.add_argument("--steps", type=count("steps"), help="training steps per model")
    p.add_argument("--sde-steps", type=count("sde_steps"), help="Euler-Maruyama steps (N)")
    p.add_argument("--ode-steps", type=count("ode_steps"), help="Euler steps of the PF-ODE")
    p.add_argument("--snr", type=pos("snr"), default=0.16, help="corrector signal-to-noise ratio")
    help_ = "adaptive ODE solvers (default tsit5,dopri5; --quick: tsit5)"
    solvers = _common.choices("adaptive solver", solve.ODE_SOLVERS)
    p.add_argument("--adaptive", type=solvers, help=help_)
    _common.add_mmd_bandwidth(p)
    p.add_argument("--no-fm", action="store_true", help="skip the flow-matching comparison")
    args = p.parse_args(argv)
    args.cfg = _common.config(
        args, SETTINGS, steps=args.steps, sde_steps=args.sde_steps, ode_steps=args.ode_steps
    )
    args.adaptive = args.adaptive or (["tsit5"] if args.quick else ["tsit5", "dopri5"])
    entries = (args.paths or ("vp:eps" if args.quick else "vp:eps,ve_t:denoiser")).split(",")
    try:
        args.paths = []
        for name, _, k in (e.strip().partition(":") for e in entries if e.strip()):
            args.paths.append((_common.choice("path", DIFFUSION_PATHS)(name), kind(k or args.kind)))
        # Building the paths validates their names and parameters before any training.
        args.specs = build_specs(args)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        p.error(str(e))
    if not args.paths:
        p.error("--paths must name at least one diffusion path")
    return args


def build_specs(args):
    """One Spec per trained model: the diffusion models of ``--paths``, then flow matching."""
    kw = {"ve_t": {"scale": args.ve_scale}}
    if args.sigma_max is not None:
        kw["ve"] = {"sigma_max": args.sigma_max}
    specs = []
    for name, kind in args.paths + ([] if args.no_fm else [("linear", "velocity")]):
        path = paths.get_path(name, **kw.get(name, {}))
        label = "flow matching (linear)" if kind == "velocity" else f"{kind} ({name})"
        specs.append(Spec(label, name, path, kind, losses.get_loss(LOSS[kind], path=path)))
    return specs


dog = data.sampler(DATASET)


def train_model(spec, cfg, args, key, val):
    model_key, train_key = jr.split(key)
    model = nn.MLP(2, 2, width=cfg["width"], depth=cfg["depth"], key=model_key)
    name = f"{'quick' if args.quick else 'full'}_{spec.path_name}_{spec.kind}_s{args.seed}.eqx"
    opt = train.make_optimizer(cfg["lr"], schedule="cosine", num_steps=cfg["steps"])
    return _common.fit(
        args, name, model, spec.loss, dog, optimizer=opt, key=train_key, num_steps=cfg["steps"],
        batch_size=cfg["batch"], val_data=val, val_every=cfg["val_every"],
        checkpoint_every=cfg["val_every"],
    )  # fmt: skip


def prior(spec, key, n, mu, var):
    """Gaussian start at t = t_min matching the mean and variance of p_{t_min}.

    p_{t_min} is the data scaled by alpha(t_min) plus N(0, sigma(t_min)^2 I); its first two
    moments use the training data's mean ``mu`` and per-coordinate variance ``var`` (for VP,
    alpha(t_min) ~ 0 and this is N(0, I); for ve_t it corrects the data's share of the spread).
    """
    t0 = spec.path.t_min
    a, s = spec.path.alpha(t0), spec.path.sigma(t0)
    return a * mu + jnp.sqrt(s**2 + a**2 * var) * jr.normal(key, (n, 2))


def samplers_for(spec, model, cfg, args):
    """Return {sampler name: function (key, x0) -> Solution} for one trained model."""
    path, kind = spec.path, spec.kind
    t0, t1 = path.t_min, path.t_max
    field = paths.as_vector_field(model, path, kind)
    out = {}
    if kind != "velocity":
        score = paths.as_score(model, path, kind)
        sde = sdes.reverse_sde(path, score)
        out[f"reverse SDE, Euler-Maruyama N={cfg['sde_steps']}"] = lambda k, x0: solve.sample_sde(
            sde, x0, key=k, t0=t0, t1=t1, steps=cfg["sde_steps"]
        )
        out[f"PC: EM N={cfg['pc_steps']} + Langevin (snr {args.snr})"] = lambda k, x0: (
            solve.predictor_corrector(
                sde, score, x0, key=k, t0=t0, t1=t1, steps=cfg["pc_steps"], snr=args.snr
            )
        )
    out[f"ODE Euler N={cfg['ode_steps']}"] = lambda k, x0: solve.sample_ode(
        field, x0, t0=t0, t1=t1, solver="euler", steps=cfg["ode_steps"]
    )
    tol = dict(t0=t0, t1=t1, rtol=cfg["rtol"], atol=cfg["atol"])
    for s in args.adaptive:
        out[f"ODE {s} (rtol {cfg['rtol']:g})"] = lambda k, x0, s=s: solve.sample_ode(
            field, x0, solver=s, **tol
        )
    return out


# ------------------------------------------------------------------------------------ plots
def plot_fields(spec, model, x0_big, real, out, times=(0.25, 0.5, 0.75, 0.95), noised=None):
    """Score and velocity quivers over the model's own density p_t, and the denoiser output.

    Rows: (1) learned score, (2) learned velocity (probability-flow field), both over a
    histogram of the model's marginal p_t (the PF-ODE, Tsit5, run from ``x0_big`` and saved at
    ``times``); (3) the denoiser E[x1 | x_t] of the model at those points: the "blurry dog" of
    text 001 that sharpens as t -> 1. Real data in light grey for reference.

    ``noised=(x1, eps)`` (``--quick``): the points are the data's own p_t instead,
    alpha(t) x1 + sigma(t) eps, which saves the compile of the saved-at PF-ODE solve.
    """
    path, kind = spec.path, spec.kind
    field = paths.as_vector_field(model, path, kind)
    score = paths.as_score(model, path, kind)
    ts = np.clip(np.asarray(times, np.float32), path.t_min, path.t_max)
    if noised is None:
        sol = solve.sample_ode(
            field, x0_big, t0=path.t_min, t1=path.t_max, solver="tsit5", saveat=jnp.asarray(ts)
        )
        xs, over = np.asarray(sol.xs), "learned p_t"
    else:
        x1, eps = (np.asarray(a) for a in noised)
        xs = np.stack([float(path.alpha(t)) * x1 + float(path.sigma(t)) * eps for t in ts])
        over = "the data's p_t"
    lim = 4.5
    gx, gy, grid = _common.grid(lim, 21)
    fig, axes = plt.subplots(3, len(ts), figsize=(3 * len(ts), 9), squeeze=False)
    for j, t in enumerate(ts.tolist()):
        xt = jnp.asarray(xs[j])
        pred = _common.field_on(model, t, xt)
        den = np.asarray(paths.convert(pred, xt, t, path, source=kind, target="denoiser"))
        for i, (fn, label) in enumerate([(score, "score"), (field, "velocity")]):
            vec = _common.field_on(fn, t, grid)
            ax = axes[i, j]
            plotting.hist2d(ax, xt, lim=lim, bins=50, cmap="Greys")
            n = np.linalg.norm(vec, axis=-1, keepdims=True)
            # Lengths relative to this panel's 90th-percentile norm, clipped at 1 (the field's
            # scale changes by orders of magnitude with t; directions are what matter here).
            u = vec / max(float(np.quantile(n, 0.9)), 1e-8)
            u = u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), 1.0)
            ax.quiver(
                gx.ravel(), gy.ravel(), u[:, 0], u[:, 1], color="tab:red", scale=25, width=0.004
            )
            ax.set_title(f"{label} over {over}, t = {t:.2f}", fontsize=7)
        plotting.scatter(axes[2, j], real, lim=lim, s=4, alpha=1.0, color="0.85")
        plotting.scatter(axes[2, j], den[:2000], lim=lim, s=4, alpha=0.4, color="tab:blue")
        axes[2, j].set_title(f"denoiser E[x1 | x_t], t = {t:.2f}", fontsize=7)
    fig.suptitle(f"{spec.name}: learned fields", fontsize=9)
    _common.save(fig, out)


def plot_losses(histories, out):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, h in histories.items():
        plotting.loss_curve(ax, h, label=name, window=1, val_fmt="o-")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (each model its own objective)")
    ax.legend(fontsize=6)
    _common.save(fig, out)


# ---------------------------------------------------------------------------------- report
def notes(rows, floors):
    """Observations computed from the table (so they stay true when the numbers change)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        b = min(rs, key=lambda r: r["w2"])
        line = (
            f"- {model}: best sampler {b['sampler']} (W2 {b['w2']:.4f} = "
            f"{b['w2'] / floors['w2']:.2f} x floor)"
        )
        sde = [r for r in rs if r["sampler"].startswith("reverse SDE")]
        ode = [r for r in rs if r["sampler"].startswith("ODE")]
        if sde and ode:
            o = min(ode, key=lambda r: r["w2"])
            verdict = "better" if sde[0]["w2"] < o["w2"] else "worse"
            line += (
                f"; the reverse SDE (W2 {sde[0]['w2']:.4f}, NFE {sde[0]['nfe']}) is "
                f"{verdict} than its best probability-flow ODE ({o['sampler']}, W2 "
                f"{o['w2']:.4f}, NFE {o['nfe']})"
            )
        out.append(line + ".")
    best_by_kind = {}
    for r in rows:
        best_by_kind[r["kind"]] = min(best_by_kind.get(r["kind"], np.inf), r["w2"])
    if "denoiser" in best_by_kind and "eps" in best_by_kind:
        if best_by_kind["denoiser"] > best_by_kind["eps"]:
            out.append(
                "- The denoiser network of text 001 (loss ||D - x1||^2) does worse than eps "
                "prediction: its loss weights the low-noise end by sigma^2 relative to the eps "
                "loss, so D is least accurate exactly where the score (alpha D - x) / sigma^2 "
                "divides its error by sigma^2; samples pile up on the silhouette's edges."
            )
    return out


def summary(rows, floors, bandwidth, cfg, args, total):
    opt, chosen = _common.opt, "median heuristic on real data"
    if args.mmd_bandwidth:
        chosen = "set by --mmd-bandwidth; the median heuristic, about 2.3 here, is too wide to see "
        chosen += "the silhouette's detail"
    lines = [
        f"# {STUDY}: Gaussian -> dog, score SDE vs probability-flow ODE vs flow matching",
        "",
        f"Seed {args.seed}, {'quick' if args.quick else 'full'} run, {total:.0f} s in all. "
        f"MLP {cfg['depth']} x {cfg['width']} (SiLU, sinusoidal time embedding), Adam, lr "
        f"{cfg['lr']:g} with cosine decay, {cfg['steps']} steps of batch {cfg['batch']} per model; "
        f"{cfg['n']} samples per sampler scored against {cfg['n']} held-out dog samples.",
        f"MMD: squared, unbiased, RBF kernel of bandwidth {bandwidth:.4f}, fixed for every row "
        f"({chosen}). W2: exact, by optimal assignment.",
        "Train s: wall time of training (compile included). Sample s: warm wall time of one "
        "sampling call (compile s: extra time of the first call; --quick times one call "
        "and leaves it out). NFE: vector-field evaluations "
        "per sample (score/denoiser network calls; the PC corrector's calls included).",
        "",
        *_common.table(
            "model | sampler | train s | sample s | compile s | NFE | MMD | W2 | best val loss",
            [
                f"{r['model']} | {r['sampler']} | {r['train_seconds']:.1f} | "
                f"{r['sample_seconds']:.2f} | {opt(r['compile_seconds'], '.1f')} | {r['nfe']} | "
                f"{r['mmd']:.5f} | {r['w2']:.4f} | {r['best_val_loss']:.4f}"
                for r in rows
            ]
            + [
                f"floor (real vs real, mean of {floors['repeats']}) | - | - | - | - | - | "
                f"{floors['mmd']:.5f} +- {floors['mmd_sd']:.5f} | {floors['w2']:.4f} +- "
                f"{floors['w2_sd']:.4f} | -"
            ],
        ),
    ]
    best = min(rows, key=lambda r: r["w2"])
    ratio = best["w2"] / floors["w2"]
    lines += [
        "",
        f"Best: {best['model']} with {best['sampler']}: W2 {best['w2']:.4f} = {ratio:.2f} x the "
        f"floor {floors['w2']:.4f} (target <= 1.5 x: {'met' if ratio <= 1.5 else 'NOT met'}).",
        "",
    ]
    lines += notes(rows, floors)
    lines += [
        "",
        "Figures: `samples.png` (every sampler), `fields_*.png` (rows: learned score and "
        "velocity quivers over the model's own p_t from its PF-ODE; the denoiser E[x1 | x_t] of "
        "those points, the 'blurry dog' of text 001 sharpening as t -> 1), `losses.png`.",
    ]
    return lines


def main(argv=None):
    args = parse_args(argv)
    cfg, out = args.cfg, args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    key = jr.key(args.seed)
    k_val, k_test, k_floor, k_models, k_sample, k_plot = jr.split(key, 6)
    n = cfg["n"]
    val = dog(k_val, cfg["n_val"])
    real = dog(k_test, n)
    moments = dog(jr.fold_in(k_val, 1), 10_000)  # training-distribution draws, for the prior
    mu, var = moments.mean(0), moments.var(0)
    bandwidth = float(metrics.mmd(real, dog(k_floor, n), args.mmd_bandwidth or None).bandwidth)
    # Floors: the metrics between independent real sets of n, mean and sd over a few draws.
    reps = cfg["floor_repeats"]
    floors = _common.floors(dog, n, key=k_floor, bandwidth=bandwidth, repeats=reps)
    print(
        f"floors at n={n} (mean of {reps}): W2 {floors['w2']:.4f} +- {floors['w2_sd']:.4f}, "
        f"MMD {floors['mmd']:.5f} +- {floors['mmd_sd']:.5f} (bw {bandwidth:.4f})"
    )

    rows, samples, histories, models = [], {}, {}, {}
    for i, spec in enumerate(args.specs):
        print(f"[{i + 1}/{len(args.specs)}] training {spec.name}")
        res = train_model(spec, cfg, args, jr.fold_in(k_models, i), val)
        model = models[spec.name] = res.ema_model
        h = histories[spec.name] = {k: np.asarray(v) for k, v in res.history.items()}
        best_val = float(np.min(h["val_loss"])) if len(h.get("val_loss", [])) else float("nan")
        smp = samplers_for(spec, model, cfg, args)
        for j, (sname, fn) in enumerate(tqdm(smp.items(), desc=f"sampling {spec.name}")):
            ks, kx = jr.split(jr.fold_in(k_sample, 100 * i + j))
            x0 = prior(spec, kx, n, mu, var)
            sol, warm, first = _common.timed(fn, ks, x0, repeat=not args.quick)
            x = samples[f"{spec.name} | {sname}"] = np.asarray(sol.x)
            if not np.all(np.isfinite(x)):
                print(f"  {sname}: non-finite samples", file=sys.stderr)
            row = dict(model=spec.name, path=spec.path_name, kind=spec.kind, sampler=sname)
            compile_s = None if args.quick else max(first - warm, 0.0)
            row |= dict(train_seconds=float(res.wall_seconds), sample_seconds=warm)
            row |= dict(compile_seconds=compile_s, nfe=int(sol.nfe), best_val_loss=best_val)
            row |= dict(mmd_floor=floors["mmd"], w2_floor=floors["w2"])
            rows.append(row | _common.scored(jnp.asarray(x), real, bandwidth, floors))
            tqdm.write(_common.line(f"  {sname:42s}", rows[-1], floors))

    lim = float(np.abs(np.asarray(real)).max() * 1.3)
    sets = {"real (held out)": np.asarray(real)} | samples
    fig = plotting.scatter_grid(sets, ncols=min(4, len(sets)), lim=lim, panel_size=3.0, s=4)
    _common.save(fig, out / "samples.png")
    plot_losses(histories, out / "losses.png")
    for i, spec in enumerate(args.specs):
        x0_big = prior(spec, jr.fold_in(k_plot, i), 5000 if args.quick else 20_000, mu, var)
        file = out / f"fields_{spec.path_name}_{spec.kind}.png"
        if args.quick:  # two times, over the data's p_t: no PF-ODE compile (see plot_fields)
            k1, k2 = jr.split(jr.fold_in(k_plot, 100 + i))
            noised = (dog(k1, len(x0_big)), jr.normal(k2, x0_big.shape))
            plot_fields(spec, models[spec.name], None, np.asarray(real), file, (0.5, 0.95), noised)
        else:
            plot_fields(spec, models[spec.name], x0_big, np.asarray(real), file)
    arrays = {f"s{i}": v.astype(np.float32) for i, v in enumerate(samples.values())}
    names = np.array(list(samples))
    np.savez_compressed(out / "samples.npz", real=np.asarray(real), **arrays, names=names)
    total = time.perf_counter() - t_start
    best = min(rows, key=lambda r: r["w2"])
    result = dict(
        study=STUDY, seed=args.seed, quick=args.quick, config=cfg, n=n, mmd_bandwidth=bandwidth,
        mmd_estimator="unbiased", floors=floors, rows=rows,
        best={k: best[k] for k in ("model", "sampler", "w2", "w2_over_floor")},
        total_seconds=total,
    )  # fmt: skip
    _common.write_report(out, result, summary(rows, floors, bandwidth, cfg, args, total))
    print(
        f"best: {best['model']} / {best['sampler']}: W2 {best['w2']:.4f} = "
        f"{best['w2_over_floor']:.2f} x floor; total {total:.0f} s; wrote {out}"
    )


if __name__ == "__main__":
    _common.run_interruptible(main)
