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

import functools
import json
import pathlib
import sys
import time
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
sys.path.append(str(pathlib.Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from diffeqgen import data, losses, metrics, nn, paths, sdes, solve, train  # noqa: E402
from diffeqgen._checks import check_choice, check_int, check_positive  # noqa: E402

STUDY = "score_sde_2d"
DATASET = "dog"
DIFFUSION_PATHS = ("vp", "ve_t", "ve", "subvp")
KINDS = ("denoiser", "eps", "score")

FULL = dict(
    width=128,
    depth=4,
    steps=12_000,
    batch=512,
    lr=2e-3,
    n=2000,
    n_val=2000,
    sde_steps=1000,
    ode_steps=40,
    pc_steps=500,
    rtol=1e-5,
    atol=1e-5,
    val_every=500,
    floor_repeats=3,
)
QUICK = dict(
    width=64,
    depth=3,
    steps=600,
    batch=256,
    lr=2e-3,
    n=400,
    n_val=500,
    sde_steps=200,
    ode_steps=40,
    pc_steps=100,
    rtol=1e-3,
    atol=1e-3,
    val_every=200,
    floor_repeats=2,
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
    p.add_argument("--kind", default="eps", help=f"default network output, one of {KINDS}")
    p.add_argument(
        "--sigma-max",
        type=float,
        default=None,
        help="sigma_max of the 've' path (library default when omitted)",
    )
    p.add_argument(
        "--ve-scale",
        type=float,
        default=8.0,
        help="scale of the 've_t' path (g(s) = scale * s); p_0 has std scale/sqrt(3)",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps per model")
    p.add_argument("--sde-steps", type=int, default=None, help="Euler-Maruyama steps (N)")
    p.add_argument("--ode-steps", type=int, default=None, help="Euler steps of the PF-ODE")
    p.add_argument("--snr", type=float, default=0.16, help="corrector signal-to-noise ratio")
    p.add_argument(
        "--adaptive",
        default=None,
        help="adaptive ODE solvers (default tsit5,dopri5; --quick: tsit5)",
    )
    p.add_argument(
        "--mmd-bandwidth",
        type=float,
        default=0.5,
        help="RBF bandwidth of the MMD, in data units (0 = median heuristic)",
    )
    p.add_argument("--no-fm", action="store_true", help="skip the flow-matching comparison")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.paths is None:
        args.paths = "vp:eps" if args.quick else "vp:eps,ve_t:denoiser"
    if args.adaptive is None:
        args.adaptive = "tsit5" if args.quick else "tsit5,dopri5"
    try:
        args.kind = check_choice("kind", args.kind, KINDS)
        entries = [e.strip() for e in args.paths.split(",") if e.strip()]
        if not entries:
            raise ValueError("--paths must name at least one diffusion path")
        args.paths = []
        for e in entries:
            name, _, kind = e.partition(":")
            args.paths.append(
                (
                    check_choice("path", name.strip(), DIFFUSION_PATHS),
                    check_choice("kind", kind.strip() or args.kind, KINDS),
                )
            )
        args.adaptive = [s.strip() for s in args.adaptive.split(",") if s.strip()]
        for s in args.adaptive:
            solve.get_solver(s)  # unknown solver names raise here, before training
        check_positive("snr", args.snr)
        if args.sigma_max is not None:
            check_positive("sigma_max", args.sigma_max)
        check_positive("ve_scale", args.ve_scale)
        check_positive("mmd_bandwidth", args.mmd_bandwidth, allow_zero=True)
        for k in ("steps", "sde_steps", "ode_steps"):
            v = getattr(args, k)
            if v is not None:
                cfg[k] = check_int(k, v, minimum=1)
        # Building the paths validates their names and parameters before any training.
        args.specs = build_specs(args)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    args.cfg = cfg
    return args


def build_specs(args):
    specs = []
    for name, kind in args.paths:
        kw = {}
        if name == "ve" and args.sigma_max is not None:
            kw = {"sigma_max": args.sigma_max}
        if name == "ve_t":
            kw = {"scale": args.ve_scale}
        path = paths.get_path(name, **kw)
        loss = {
            "denoiser": losses.denoiser_loss,
            "eps": losses.eps_loss,
            "score": losses.score_matching_loss,
        }[kind]
        specs.append(Spec(f"{kind} ({name})", name, path, kind, functools.partial(loss, path=path)))
    if not args.no_fm:
        path = paths.get_path("linear")
        specs.append(
            Spec(
                "flow matching (linear)",
                "linear",
                path,
                "velocity",
                functools.partial(losses.flow_matching_loss, path=path),
            )
        )
    return specs


dog = data.sampler(DATASET)


def train_model(spec, cfg, args, key, val):
    model_key, train_key = jr.split(key)
    model = nn.MLP(2, 2, width=cfg["width"], depth=cfg["depth"], key=model_key)
    tag = "quick" if args.quick else "full"
    res = _common.fit(
        args,
        f"{tag}_{spec.path_name}_{spec.kind}_s{args.seed}.eqx",
        model,
        spec.loss,
        dog,
        optimizer=train.make_optimizer(cfg["lr"], schedule="cosine", num_steps=cfg["steps"]),
        key=train_key,
        num_steps=cfg["steps"],
        batch_size=cfg["batch"],
        val_data=val,
        val_every=cfg["val_every"],
        checkpoint_every=cfg["val_every"],
    )
    return res


def prior(spec, key, n, mu, var):
    """Gaussian start at t = t_min matching the mean and variance of p_{t_min}.

    p_{t_min} is the data scaled by alpha(t_min) plus N(0, sigma(t_min)^2 I); its first two
    moments use the training data's mean ``mu`` and per-coordinate variance ``var`` (for VP,
    alpha(t_min) ~ 0 and this is N(0, I); for ve_t it corrects the data's share of the spread).
    """
    t0 = spec.path.t_min
    a, s = spec.path.alpha(t0), spec.path.sigma(t0)
    return a * mu + jnp.sqrt(s**2 + a**2 * var) * jr.normal(key, (n, 2))


def timed(fn, repeat=True):
    """Run ``fn`` twice (compile, then warm): return (result, warm seconds, first-call seconds).

    With ``repeat=False`` (quick mode) run once and report that time for both.
    """
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    if not repeat:
        return out, first, first
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t, first


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
    for s in args.adaptive:
        out[f"ODE {s} (rtol {cfg['rtol']:g})"] = functools.partial(
            _adaptive, field, s, t0, t1, cfg["rtol"], cfg["atol"]
        )
    return out


def _adaptive(field, solver, t0, t1, rtol, atol, k, x0):
    return solve.sample_ode(field, x0, t0=t0, t1=t1, solver=solver, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------ plots
def plot_samples(samples, real, out):
    names = list(samples)
    ncol = min(4, len(names) + 1)
    nrow = -(-(len(names) + 1) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3 * ncol, 3 * nrow), squeeze=False)
    lim = np.abs(real).max() * 1.3
    panels = [("real (held out)", real)] + [(n, samples[n]) for n in names]
    for ax, (title, x) in zip(axes.flat, panels, strict=False):
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
        ax.set_title(title, fontsize=7)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_fields(spec, model, x0_big, real, out, times=(0.25, 0.5, 0.75, 0.95)):
    """Score and velocity quivers over the model's own density p_t, and the denoiser output.

    Rows: (1) learned score, (2) learned velocity (probability-flow field), both over a
    histogram of the model's marginal p_t (the PF-ODE, Tsit5, run from ``x0_big`` and saved at
    ``times``); (3) the denoiser E[x1 | x_t] of the model at those points: the "blurry dog" of
    text 001 that sharpens as t -> 1. Real data in light grey for reference.
    """
    path, kind = spec.path, spec.kind
    field = paths.as_vector_field(model, path, kind)
    score = paths.as_score(model, path, kind)
    ts = np.clip(np.asarray(times, np.float32), path.t_min, path.t_max)
    sol = solve.sample_ode(
        field, x0_big, t0=path.t_min, t1=path.t_max, solver="tsit5", saveat=jnp.asarray(ts)
    )
    xs = np.asarray(sol.xs)
    lim = 4.5
    g = np.linspace(-lim, lim, 21, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    grid = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1))
    fig, axes = plt.subplots(3, len(ts), figsize=(3 * len(ts), 9), squeeze=False)
    for j, t in enumerate(ts.tolist()):
        xt = xs[j]
        v = np.asarray(jax.vmap(lambda x, t=t: field(t, x, None))(grid))
        sc = np.asarray(jax.vmap(lambda x, t=t: score(t, x, None))(grid))
        pred = jax.vmap(lambda x, t=t: model(t, x, None))(jnp.asarray(xt))
        den = np.asarray(
            paths.convert(pred, jnp.asarray(xt), t, path, source=kind, target="denoiser")
        )
        for i, (vec, label) in enumerate([(sc, "score"), (v, "velocity")]):
            ax = axes[i, j]
            ax.hist2d(xt[:, 0], xt[:, 1], bins=50, range=[[-lim, lim], [-lim, lim]], cmap="Greys")
            n = np.linalg.norm(vec, axis=-1, keepdims=True)
            # Lengths relative to this panel's 90th-percentile norm, clipped at 1 (the field's
            # scale changes by orders of magnitude with t; directions are what matter here).
            u = vec / max(float(np.quantile(n, 0.9)), 1e-8)
            u = u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), 1.0)
            ax.quiver(
                gx.ravel(), gy.ravel(), u[:, 0], u[:, 1], color="tab:red", scale=25, width=0.004
            )
            ax.set_title(f"{label} over learned p_t, t = {t:.2f}", fontsize=7)
        ax = axes[2, j]
        ax.scatter(real[:, 0], real[:, 1], s=1, c="0.85")
        ax.scatter(den[:2000, 0], den[:2000, 1], s=1, alpha=0.4, c="tab:blue")
        ax.set_title(f"denoiser E[x1 | x_t], t = {t:.2f}", fontsize=7)
        for ax in axes[:, j]:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{spec.name}: learned fields", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_losses(histories, out):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, h in histories.items():
        (line,) = ax.plot(h["step"], h["loss"], lw=0.6, alpha=0.6, label=f"{name} train")
        if len(h.get("val_step", [])):
            ax.plot(
                h["val_step"],
                h["val_loss"],
                "o-",
                ms=2,
                color=line.get_color(),
                label=f"{name} val",
            )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (each model its own objective)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------- report
def _opt(v):
    return "-" if v is None else f"{v:.1f}"


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
        k = r["kind"]
        best_by_kind[k] = min(best_by_kind.get(k, np.inf), r["w2"])
    if "denoiser" in best_by_kind and "eps" in best_by_kind:
        if best_by_kind["denoiser"] > best_by_kind["eps"]:
            out.append(
                "- The denoiser network of text 001 (loss ||D - x1||^2) does worse than eps "
                "prediction: its loss weights the low-noise end by sigma^2 relative to the eps "
                "loss, so D is least accurate exactly where the score (alpha D - x) / sigma^2 "
                "divides its error by sigma^2; samples pile up on the silhouette's edges."
            )
    return out


def write_summary(out, rows, floors, bandwidth, cfg, args, total):
    lines = [
        f"# {STUDY}: Gaussian -> dog, score SDE vs probability-flow ODE vs flow matching",
        "",
        f"Seed {args.seed}, {'quick' if args.quick else 'full'} run, {total:.0f} s in all. "
        f"MLP {cfg['depth']} x {cfg['width']} (SiLU, sinusoidal time embedding), Adam, lr "
        f"{cfg['lr']:g} with cosine decay, {cfg['steps']} steps of batch {cfg['batch']} per model; "
        f"{cfg['n']} samples per sampler scored against {cfg['n']} held-out dog samples.",
        f"MMD: squared, unbiased, RBF kernel of bandwidth {bandwidth:.4f}, fixed for every row ("
        + (
            "median heuristic on real data"
            if not args.mmd_bandwidth
            else "set by --mmd-bandwidth; the median heuristic, about 2.3 here, is too wide to see "
            "the silhouette's detail"
        )
        + "). W2: exact, by optimal assignment.",
        "Train s: wall time of training (compile included). Sample s: warm wall time of one "
        "sampling call (compile s: extra time of the first call; --quick times one call "
        "and leaves it out). NFE: vector-field evaluations "
        "per sample (score/denoiser network calls; the PC corrector's calls included).",
        "",
        "| model | sampler | train s | sample s | compile s | NFE | MMD | W2 | best val loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['sampler']} | {r['train_seconds']:.1f} | "
            f"{r['sample_seconds']:.2f} | {_opt(r['compile_seconds'])} | {r['nfe']} | "
            f"{r['mmd']:.5f} | {r['w2']:.4f} | {r['best_val_loss']:.4f} |"
        )
    lines.append(
        f"| floor (real vs real, mean of {floors['repeats']}) | - | - | - | - | - | "
        f"{floors['mmd']:.5f} +- {floors['mmd_sd']:.5f} | {floors['w2']:.4f} +- "
        f"{floors['w2_sd']:.4f} | - |"
    )
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
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    args = parse_args(argv)
    cfg = args.cfg
    out = args.out
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
        model = res.ema_model
        models[spec.name] = model
        h = {k: np.asarray(v) for k, v in res.history.items()}
        histories[spec.name] = h
        best_val = float(np.min(h["val_loss"])) if len(h.get("val_loss", [])) else float("nan")
        smp = samplers_for(spec, model, cfg, args)
        for j, (sname, fn) in enumerate(tqdm(smp.items(), desc=f"sampling {spec.name}")):
            ks, kx = jr.split(jr.fold_in(k_sample, 100 * i + j))
            x0 = prior(spec, kx, n, mu, var)
            sol, warm, first = timed(lambda fn=fn, ks=ks, x0=x0: fn(ks, x0), not args.quick)
            x = np.asarray(sol.x)
            if not np.all(np.isfinite(x)):
                print(f"  {sname}: non-finite samples", file=sys.stderr)
            w2, mm = _common.score(jnp.asarray(x), real, bandwidth)
            row = dict(
                model=spec.name,
                path=spec.path_name,
                kind=spec.kind,
                sampler=sname,
                train_seconds=float(res.wall_seconds),
                sample_seconds=warm,
                compile_seconds=None if args.quick else max(first - warm, 0.0),
                nfe=int(sol.nfe),
                mmd=mm,
                w2=w2,
                best_val_loss=best_val,
                mmd_floor=floors["mmd"],
                w2_floor=floors["w2"],
                w2_over_floor=w2 / floors["w2"],
            )
            rows.append(row)
            samples[f"{spec.name} | {sname}"] = x
            tqdm.write(
                f"  {sname:42s} NFE {row['nfe']:5d}  W2 {w2:.4f} (floor "
                f"{floors['w2']:.4f})  MMD {mm:.5f} (floor {floors['mmd']:.5f})"
            )

    plot_samples(samples, np.asarray(real), out / "samples.png")
    plot_losses(histories, out / "losses.png")
    for i, spec in enumerate(args.specs):
        x0_big = prior(spec, jr.fold_in(k_plot, i), 5000 if args.quick else 20_000, mu, var)
        plot_fields(
            spec,
            models[spec.name],
            x0_big,
            np.asarray(real),
            out / f"fields_{spec.path_name}_{spec.kind}.png",
        )
    np.savez_compressed(
        out / "samples.npz",
        real=np.asarray(real),
        **{f"s{i}": v.astype(np.float32) for i, v in enumerate(samples.values())},
        names=np.array(list(samples)),
    )
    total = time.perf_counter() - t_start
    best = min(rows, key=lambda r: r["w2"])
    result = dict(
        study=STUDY,
        seed=args.seed,
        quick=args.quick,
        config=cfg,
        n=n,
        mmd_bandwidth=bandwidth,
        mmd_estimator="unbiased",
        floors=floors,
        rows=rows,
        best=dict(
            model=best["model"],
            sampler=best["sampler"],
            w2=best["w2"],
            w2_over_floor=best["w2_over_floor"],
        ),
        total_seconds=total,
    )
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    write_summary(out, rows, floors, bandwidth, cfg, args, total)
    print(
        f"best: {best['model']} / {best['sampler']}: W2 {best['w2']:.4f} = "
        f"{best['w2_over_floor']:.2f} x floor; total {total:.0f} s; wrote {out}"
    )


if __name__ == "__main__":
    _common.run_interruptible(main)
