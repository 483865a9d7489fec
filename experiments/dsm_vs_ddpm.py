"""DSM with Langevin sampling against DDPM, on pinwheel and a Gaussian mixture (text 004).

For each dataset (2000 train / 500 test from ``data.train_test_split``; the data are normalised by
the training mean and standard deviation before training and denormalised after sampling, as text
004 notes) three models are trained with the one training loop:

* DSM (text 004 eq. 1): a score network s(x) trained at a single noise level sigma = 0.1 with k = 20
  noise draws per point, MLP 4 x 64, batch 128, lr 1e-3; sampled by unadjusted Langevin dynamics.
* NCSM: the same network made noise-conditional, s(sigma, x), trained over a geometric ladder of
  sigmas (multi-sigma DSM, ``losses.ncsm_loss``); sampled by annealed Langevin dynamics from the
  largest sigma down (``solve.annealed_langevin``).
* DDPM (text 004 Algorithms 1-2): eps-prediction, T = 500, linear beta 1e-4 .. 0.02, MLP 4 x 64 with
  a sinusoidal time embedding of size 32, batch 64, lr 1e-3; ancestral sampling.

Outputs: train and test loss curves with EMA smoothing (alpha = 0.01, as in text 004), 500
generated points against the test set, the KDE log-likelihood table M1-M4 (bandwidth stated) beside
its floor (a second, independent real set of 500), and W2 / MMD against the test set beside their
floors. Time convention of the library: t = 0 noise, t = 1 data (DDPM step k has t = 1 - k / T).

Run ``python experiments/dsm_vs_ddpm.py`` (about 6 minutes on 2 busy CPU cores) or ``--quick``.
"""

import pathlib
import sys
import time

sys.path.append(str(pathlib.Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402  (selects the Agg backend)
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from diffeqgen import data, losses, metrics, nn, paths, plotting, solve, train  # noqa: E402

STUDY = "dsm_vs_ddpm"
MODELS = ("dsm", "ncsm", "ddpm")
EMA_ALPHA = 0.01
KDE = ("M1", "M2", "M3", "M4")

SETTINGS = dict(  # name=(full, --quick)
    dsm_steps=(10_000, 400),
    ncsm_steps=(10_000, 400),
    ddpm_steps=(20_000, 600),
    n_train=(2000, 2000),
    n_test=(500, 500),
    langevin_steps=(2000, 200),
    annealed_steps=(100, 20),
    floor_repeats=(10, 3),
    val_every=(250, 100),
)


def parse_args(argv=None):
    p = _common.make_parser(__doc__, STUDY)
    pos, count = _common.positive, _common.integer
    p.add_argument(
        "--datasets",
        type=_common.choices("dataset", data.names()),
        help="comma-separated data sets (default pinwheel,mixture; --quick: mixture)",
    )
    _common.add_mmd_bandwidth(p)
    models = dict(type=_common.choices("model", MODELS), default=",".join(MODELS))
    p.add_argument("--models", **models, help=f"subset of {MODELS}")
    for flag, kind, default, text in (
        ("sigma", pos, 0.1, "DSM noise level (normalised units)"),
        ("k", count, 20, "noise draws per point in DSM"),
        ("T", count, 500, "DDPM diffusion steps"),
        ("beta_min", float, 1e-4, None),
        ("beta_max", float, 0.02, None),
        ("sigma_min", pos, 0.01, "smallest NCSM sigma"),
        ("sigma_max", pos, 3.0, "largest NCSM sigma"),
        ("num_sigmas", count, 10, "NCSM sigma levels"),
        ("langevin_eps", pos, 1e-3, "Langevin step size of the single-sigma DSM sampler"),
        ("annealed_eps", pos, 1e-5, "annealed Langevin: step h at the smallest sigma; level i "
         "uses h * sigma_i^2 / sigma_min^2 (Song and Ermon 2019; their alpha = 2h)"),
    ):  # fmt: skip
        if kind is not float:
            kind = kind(flag, minimum=2) if flag == "num_sigmas" else kind(flag)
        p.add_argument("--" + flag.replace("_", "-"), type=kind, default=default, help=text)
    for m in MODELS:
        p.add_argument(f"--{m}-steps", type=count(f"{m}_steps"))
    args = p.parse_args(argv)
    args.datasets = args.datasets or (["mixture"] if args.quick else ["pinwheel", "mixture"])
    if args.sigma_max <= args.sigma_min:
        p.error(f"sigma_max must exceed sigma_min, got {args.sigma_max!r} <= {args.sigma_min!r}")
    try:  # the schedule validates T and the betas before any training
        args.schedule = paths.DDPMSchedule(args.T, args.beta_min, args.beta_max)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    steps = {f"{m}_steps": getattr(args, f"{m}_steps") for m in MODELS}
    args.cfg = _common.config(args, SETTINGS, **steps)
    args.sigmas = np.geomspace(args.sigma_max, args.sigma_min, args.num_sigmas).astype(np.float32)
    return args


# ---------------------------------------------------------------------------------- models
def make(name, args, key):
    """Model, loss and ``fit`` settings of one model; every network is an MLP 4 x 64.

    DDPM and NCSM embed t (resp. sigma) sinusoidally in 32 dimensions; the single-sigma DSM
    network sees its constant sigma raw (it is called as model(sigma, x)).
    """
    embed = dict(embedding="none") if name == "dsm" else dict(embedding="sinusoidal", embed_dim=32)
    model = nn.MLP(2, 2, width=64, depth=4, **embed, key=key)
    if name == "dsm":
        loss = losses.get_loss("dsm", sigma=args.sigma, k=args.k)
    elif name == "ncsm":
        loss = losses.get_loss("ncsm", sigmas=tuple(args.sigmas.tolist()), k=args.k)
    else:
        loss = losses.get_loss("ddpm", schedule=args.schedule)
    batch_size = 64 if name == "ddpm" else 128
    return model, loss, dict(num_steps=args.cfg[f"{name}_steps"], batch_size=batch_size)


def generate(name, model, args, key, n):
    """Sample n points in normalised units; return (x, number of network evaluations)."""
    k0, k1 = jr.split(key)
    x0 = jr.normal(k0, (n, 2))
    if name == "ddpm":
        sol = solve.ddpm_sample(model, k1, x0, args.schedule)
        return sol.x, sol.nfe
    if name == "dsm":
        # The score networks are noise-conditional, model(sigma, x, args) (see dsm_loss): the
        # Langevin chain takes the score at the fixed "time" t = sigma.
        steps = args.cfg["langevin_steps"]
        sol = solve.langevin_mcmc(
            model, x0, key=k1, step_size=args.langevin_eps, num_steps=steps, t=args.sigma
        )
        return sol.x, sol.nfe
    # Annealed Langevin (Song and Ermon 2019) from N(0, sigma_1^2 I), largest sigma first.
    x0, steps = x0 * float(args.sigmas[0]), args.cfg["annealed_steps"]
    sigmas, eps = jnp.asarray(args.sigmas), args.annealed_eps
    sol = solve.annealed_langevin(model, x0, sigmas, key=k1, step_size=eps, steps_per_level=steps)
    return sol.x, sol.nfe


def mode_tv(name, x):
    """``metrics.mode_tv`` of ``x`` against the data set's mixture (None if it is no mixture).

    Plain Langevin with a single-sigma score is known to get the relative weights of separated
    modes wrong; this number shows it.
    """
    try:
        return metrics.mode_tv(x, data.mixture(name))
    except (ValueError, KeyError):
        return None


# ----------------------------------------------------------------------------------- plots
def plot_score_fields(trained, norms, tests, args, out):
    """Learned scores: single-sigma DSM at sigma = 0.1 against NCSM at 0.1 and at 1.0.

    Arrows are unit directions (normalised units); colour is log10 |score|. The single-sigma
    score is trained only within a few times 0.1 of the data; elsewhere it is extrapolation, and
    that is the region plain Langevin from N(0, I) has to cross.
    """
    datasets = list(tests)
    gx, gy, grid = _common.grid(3.0, 25)
    panels = [("dsm", args.sigma), ("ncsm", args.sigma), ("ncsm", 1.0)]
    fig, axes = plt.subplots(len(datasets), 3, figsize=(10, 3.3 * len(datasets)), squeeze=False)
    for i, d in enumerate(datasets):
        mu, sd = norms[d]
        z = (tests[d] - mu) / sd
        for j, (m, s) in enumerate(panels):
            ax = axes[i, j]
            sc = _common.field_on(trained[(d, m)], s, grid)
            mag = np.linalg.norm(sc, axis=-1)
            u = sc / np.maximum(mag, 1e-8)[:, None]
            ax.scatter(z[:, 0], z[:, 1], s=2, c="0.7")
            q = ax.quiver(
                gx.ravel(), gy.ravel(), u[:, 0], u[:, 1], np.log10(mag + 1e-8), cmap="viridis",
                scale=35, width=0.004,
            )  # fmt: skip
            fig.colorbar(q, ax=ax, fraction=0.046, label="log10 |score|")
            ax.set_title(f"{m} score at sigma = {s:g} ({d})", fontsize=8)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
    _common.save(fig, out)


def plot_losses(histories, datasets, models, out):
    """Train loss (EMA alpha = 0.01 over the per-step losses, raw in the background) and test loss.

    The test loss is evaluated on the EMA model over the whole test set with a fixed key at
    every validation step, so it is already smooth and is drawn as measured.
    """
    fig, axes = plt.subplots(
        len(datasets), len(models), figsize=(3.6 * len(models), 2.9 * len(datasets)),
        squeeze=False,
    )  # fmt: skip
    for i, d in enumerate(datasets):
        for j, m in enumerate(models):
            ax, h = axes[i, j], histories[f"{m} / {d}"]
            ax.plot(h["step"], h["loss"], color="tab:blue", alpha=0.15, lw=0.5)
            smooth = plotting.ema(h["loss"], EMA_ALPHA)
            ax.plot(h["step"], smooth, color="tab:blue", label="train (EMA 0.01)")
            if len(h["val_loss"]):
                style = dict(ms=2, color="tab:orange", label="test (EMA model)")
                ax.plot(h["val_step"], h["val_loss"], "o-", **style)
            lo = min(np.min(smooth), np.min(h["val_loss"], initial=np.inf))
            hi = np.quantile(h["loss"], 0.99)
            ax.set_ylim(lo - 0.05 * (hi - lo), hi)
            ax.set_title(f"{m} on {d}", fontsize=8)
            ax.set_xlabel("step", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
    _common.save(fig, out)


def plot_scatter(samples, tests, out):
    ds = list(tests)
    ms = sorted({m for (_, m) in samples}, key=MODELS.index)
    fig, axes = plt.subplots(len(ds), len(ms), figsize=(3 * len(ms), 3 * len(ds)), squeeze=False)
    for i, d in enumerate(ds):
        for j, m in enumerate(ms):
            ax = axes[i, j]
            ax.scatter(tests[d][:, 0], tests[d][:, 1], s=3, c="tab:gray", alpha=0.5, label="test")
            x = samples[(d, m)]
            ax.scatter(x[:, 0], x[:, 1], s=3, c="tab:red", alpha=0.6, label=m)
            ax.set_title(f"{m} on {d}: 500 generated vs test", fontsize=7)
            ax.set_aspect("equal")
            ax.legend(fontsize=6, loc="upper right")
    _common.save(fig, out)


# ---------------------------------------------------------------------------------- report
def summary(rows, floors, args, total):
    cfg, opt = args.cfg, _common.opt
    lines = [
        f"# {STUDY}: DSM + Langevin vs NCSM + annealed Langevin vs DDPM (text 004)",
        "",
        f"Seed {args.seed}, {'quick' if args.quick else 'full'} run, {total:.0f} s in all. "
        f"Data: train_test_split 2000 / 500, normalised by the train mean and std; samples "
        "denormalised before scoring. All networks MLP 4 x 64 (SiLU), Adam lr 1e-3.",
        f"DSM: sigma {args.sigma:g}, k {args.k}, batch 128, {cfg['dsm_steps']} iterations; "
        f"Langevin {cfg['langevin_steps']} steps of size {args.langevin_eps:g} from N(0, I). "
        f"NCSM: {args.num_sigmas} sigmas geometric {args.sigma_max:g} .. {args.sigma_min:g}, "
        f"batch 128, {cfg['ncsm_steps']} iterations; annealed Langevin "
        f"{cfg['annealed_steps']} steps per level, step {args.annealed_eps:g} * "
        f"(sigma_i / sigma_min)^2. DDPM: T {args.T}, beta {args.beta_min:g} .. "
        f"{args.beta_max:g}, time embedding 32, batch 64, {cfg['ddpm_steps']} iterations; "
        "ancestral sampling. (sigma values are in normalised units.)",
        "",
        "KDE log-likelihoods (Gaussian KDE, bandwidth per data set stated; M1/M2 = sum/mean "
        "log-likelihood of the 500 test points under the KDE of the generated points, M3/M4 = "
        "generated under the test KDE). Floor: an independent real set of 500 in place of the "
        "generated one, mean +- sd over several such sets (the model rows are single draws). "
        "W2 exact; MMD squared, unbiased, RBF, bandwidth stated ("
        + ("median heuristic" if not args.mmd_bandwidth else "set by --mmd-bandwidth")
        + ").",
        "",
    ]
    body = []
    for d in args.datasets:
        f = floors[d]
        body += [
            f"{d} | {r['model']} | {r['train_seconds']:.1f} | {r['sample_seconds']:.2f} | "
            f"{r['nfe']} | {r['M1']:.1f} | {r['M2']:.4f} | {r['M3']:.1f} | {r['M4']:.4f} | "
            f"{r['w2']:.4f} | {r['mmd']:.5f} | {opt(r['mode_tv'])} | {r['best_test_loss']:.4g}"
            for r in rows
            if r["dataset"] == d
        ]
        body += [
            f"{d} | floor (real vs real, mean of {f['repeats']}) | - | - | - | {f['M1']:.1f} | "
            f"{f['M2']:.4f} +- {f['M2_sd']:.4f} | {f['M3']:.1f} | {f['M4']:.4f} +- "
            f"{f['M4_sd']:.4f} | {f['w2']:.4f} +- {f['w2_sd']:.4f} | {f['mmd']:.5f} +- "
            f"{f['mmd_sd']:.5f} | {opt(f['mode_tv'])} (test set) | -",
            f"{d} | (KDE bandwidth {f['kde_bandwidth']:.4f}, MMD bandwidth "
            f"{f['mmd_bandwidth']:.4f}) | | | | | | | | | | |",
        ]
    header = "data | model | train s | sample s | NFE | M1 | M2 | M3 | M4 | W2 | MMD | mode TV"
    lines += [*_common.table(header + " | best test loss", body), ""]
    for d in args.datasets:
        best = min((r for r in rows if r["dataset"] == d), key=lambda r: r["w2"])
        lines.append(
            f"- {d}: best W2 {best['w2']:.4f} ({best['model']}) = "
            f"{best['w2'] / floors[d]['w2']:.2f} x the floor {floors[d]['w2']:.4f}."
        )
    for d in args.datasets:
        r = {x["model"]: x for x in rows if x["dataset"] == d}
        if "dsm" in r and "ncsm" in r:
            a, b = r["dsm"], r["ncsm"]
            tv = a["mode_tv"] is not None
            tv = f", mode TV {a['mode_tv']:.3f} vs {b['mode_tv']:.3f}" if tv else ""
            lines.append(
                f"- {d}, what the single sigma = {args.sigma:g} costs (DSM + Langevin vs NCSM + "
                f"annealed Langevin): W2 {a['w2']:.4f} vs {b['w2']:.4f}, M2 {a['M2']:.4f} vs "
                f"{b['M2']:.4f}, M4 {a['M4']:.4f} vs {b['M4']:.4f}, MMD {a['mmd']:.5f} vs "
                f"{b['mmd']:.5f}{tv}."
            )
    fl = {d: f["w2"] - f["w2_sd"] for d, f in floors.items()}
    below = [r for r in rows if r["w2"] < fl[r["dataset"]]]
    if below:
        names = ", ".join(f"{r['model']} on {r['dataset']}" for r in below)
        lines.append(
            f"- W2 below the floor (by more than its sd) for {names}: at n = 500 the W2 between "
            "two real sets is dominated by the few far-out points of each set, so a model whose "
            "tails are lighter than the data's scores below it; read such rows with M4 (above "
            "its floor when samples sit in high-density regions) and MMD."
        )
    lines += [
        "",
        "Mode TV (mixture only): total-variation distance between the share of points nearest "
        "(by posterior) to each mixture component and the true weights; the floor row gives "
        "the test set's own value.",
        "",
        "Figures: `losses.png` (train loss EMA-smoothed with alpha 0.01 as in text 004; test loss "
        "of the EMA model at each validation step), `samples.png` (500 generated vs the test "
        "set), `score_fields.png` (learned scores of DSM "
        "at sigma 0.1 and NCSM at 0.1 and 1.0; away from the data the single-sigma score is "
        "extrapolation).",
    ]
    return lines


def main(argv=None):
    args = parse_args(argv)
    cfg, out = args.cfg, args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    key = jr.key(args.seed)
    rows, floors, histories, samples, tests, npz, trained, norms = [], {}, {}, {}, {}, {}, {}, {}
    for di, dname in enumerate(args.datasets):
        k_real2, k_floor, k_models, k_gen = jr.split(jr.fold_in(key, di), 4)
        xtr, xte = data.train_test_split(dname, cfg["n_train"], cfg["n_test"], seed=args.seed)
        xtr, xte = jnp.asarray(xtr), jnp.asarray(xte)
        mu, sd = xtr.mean(0), xtr.std(0)
        ztr, zte = (xtr - mu) / sd, (xte - mu) / sd
        n = xte.shape[0]
        sampler = data.sampler(dname)
        # Floors: the same metrics with independent real sets of 500 in place of the model's,
        # averaged over `repeats` draws (one draw of W2 at n = 500 varies by +-20% here).
        reals = [sampler(jr.fold_in(k_real2, r), n) for r in range(cfg["floor_repeats"])]
        real2 = reals[0]
        kde_bw = float(metrics.kde_log_likelihood(xte, real2)["bandwidth"])  # Scott, test set
        kdes = [metrics.kde_log_likelihood(xte, r, bandwidth=kde_bw) for r in reals]
        mmd_bw = float(metrics.mmd(xte, real2, args.mmd_bandwidth or None).bandwidth)
        f = floors[dname] = {m: float(np.mean([k[m] for k in kdes])) for m in KDE}
        f |= {f"{m}_sd": float(np.std([k[m] for k in kdes])) for m in ("M2", "M4")}
        f |= dict(kde_bandwidth=kde_bw, mmd_bandwidth=mmd_bw)
        f |= _common.floors(sampler, n, key=k_floor, bandwidth=mmd_bw, repeats=len(reals))
        print(
            f"{dname}: floors W2 {f['w2']:.4f} +- {f['w2_sd']:.4f}, MMD {f['mmd']:.5f} (bw "
            f"{mmd_bw:.3f}), KDE M2 {f['M2']:.4f} M4 {f['M4']:.4f} (bw {kde_bw:.3f})"
        )
        npz[f"{dname}_test"] = tests[dname] = np.asarray(xte)
        norms[dname] = (np.asarray(mu), np.asarray(sd))
        f["mode_tv"] = mode_tv(dname, xte)
        npz[f"{dname}_real2"] = np.asarray(real2)
        for mi, mname in enumerate(args.models):
            km, kt = jr.split(jr.fold_in(k_models, mi))
            model, loss, tc = make(mname, args, km)
            print(f"training {mname} on {dname}: {tc['num_steps']} steps, batch {tc['batch_size']}")
            name = f"{'quick' if args.quick else 'full'}_{dname}_{mname}_s{args.seed}.eqx"
            res = _common.fit(
                args, name, model, loss, ztr,
                optimizer=train.make_optimizer(1e-3), key=kt, val_data=zte,
                val_every=cfg["val_every"], checkpoint_every=cfg["val_every"], **tc,
            )  # fmt: skip
            h = histories[f"{mname} / {dname}"] = {k: np.asarray(v) for k, v in res.history.items()}
            trained[(dname, mname)] = res.ema_model
            gen_key = jr.fold_in(k_gen, mi)
            (z, nfe), sample_s, _ = _common.timed(generate, mname, res.ema_model, args, gen_key, n)
            x = z * sd + mu
            kde = metrics.kde_log_likelihood(xte, x, bandwidth=kde_bw)
            best = float(np.min(h["val_loss"])) if len(h["val_loss"]) else float("nan")
            row = dict(dataset=dname, model=mname, train_seconds=float(res.wall_seconds))
            row |= dict(train_steps=tc["num_steps"], batch=tc["batch_size"])
            row |= dict(sample_seconds=sample_s, nfe=int(nfe), best_test_loss=best)
            row |= _common.scored(x, xte, mmd_bw, f) | {m: float(kde[m]) for m in KDE}
            rows.append(row | dict(mode_tv=mode_tv(dname, x)))
            samples[(dname, mname)] = np.asarray(x)
            npz[f"{dname}_{mname}"] = np.asarray(x, dtype=np.float32)
            tqdm.write(
                f"  {mname:5s} {dname}: W2 {row['w2']:.4f} (floor {f['w2']:.4f})  "
                f"MMD {row['mmd']:.5f} (floor {f['mmd']:.5f})  M2 {row['M2']:.4f} "
                f"(floor {f['M2']:.4f})  M4 {row['M4']:.4f} (floor {f['M4']:.4f})"
            )
    plot_losses(histories, args.datasets, args.models, out / "losses.png")
    plot_scatter(samples, tests, out / "samples.png")
    if "dsm" in args.models and "ncsm" in args.models:
        plot_score_fields(trained, norms, tests, args, out / "score_fields.png")
    np.savez_compressed(out / "samples.npz", **npz)
    total = time.perf_counter() - t_start
    result = dict(
        study=STUDY, seed=args.seed, quick=args.quick, config=cfg, sigma=args.sigma, k=args.k,
        T=args.T, ncsm_sigmas=args.sigmas.tolist(), langevin_eps=args.langevin_eps,
        annealed_eps=args.annealed_eps, ema_alpha=EMA_ALPHA, floors=floors, rows=rows,
        total_seconds=total,
    )  # fmt: skip
    _common.write_report(out, result, summary(rows, floors, args, total))
    print(f"total {total:.0f} s; wrote {out}")


if __name__ == "__main__":
    _common.run_interruptible(main)
