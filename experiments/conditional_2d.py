"""Class-conditional flow matching with classifier-free guidance on the 8 Gaussians (issue 8, s. 2).

The eight components of ``8gaussians`` are the classes: class c is N(mu_c, s^2 I) (s = 0.354), so
every class-conditional density log p(x | c) is exact. A class-conditional MLP velocity
(``nn.MLP(num_classes=8)``, label 8 = null) is trained by flow matching on the linear path with
label dropout (``cond_dropout``: a dropped label becomes the null class, so the same network is
also the unconditional model). Time convention: t = 0 noise N(0, I), t = 1 data.

Evaluation, all through the public API: per class, ``solve.sample_ode(field, x0, cond=labels)``
with the guided field ``solve.guided(model, w, null)`` for several w (w = 0 is the plain
conditional model), scored by the exact W2 against held-out points of that class beside the
class's floor (``metrics.floor_stats`` on the class's exact sampler at the same n); the
unconditional (null-label) model against the whole mixture; the fraction of samples that the exact
Bayes classifier assigns to their class; and the exact conditional log-likelihood
``cnf.log_prob(field, x, cond=labels)`` of held-out points against the true log p(x | c), for
the conditional model and for each guided field (a guided field is a flow too).

Run ``python experiments/conditional_2d.py`` (a few minutes on 2 CPU cores) or ``--quick``.
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

from diffeqgen import cnf, data, losses, metrics, nn, solve, train  # noqa: E402

STUDY = "conditional_2d"
MIX = data.mixture("8gaussians")
K = MIX.num_components  # classes 0..K-1; label K is the null class
NULL = K
STD = float(np.sqrt(MIX.covariances[0, 0, 0]))
CLASSES = [
    data.GaussianMixture(MIX.means[c : c + 1], MIX.covariances[c : c + 1], jnp.ones(1))
    for c in range(K)
]

WIDTH, DEPTH, LR, DROPOUT = 64, 3, 3e-3, 0.15  # network, Adam learning rate, label dropout
FULL = dict(
    steps=15000,
    batch=512,
    n_class=1000,
    n_null=2000,
    n_ll=2000,
    n_show=150,
    floor_reps=5,
    weights=(0.0, 0.1, 0.25, 0.5, 1.0, 2.0),
)
QUICK = dict(
    FULL, steps=2000, batch=256, n_class=200, n_null=400, n_ll=400, floor_reps=2, weights=(0.0, 1.0)
)


def parse_args(argv=None):
    p = _common.make_parser(__doc__, STUDY)
    p.add_argument("--steps", type=int, default=None, help="training steps")
    args = p.parse_args(argv)
    args.cfg = dict(QUICK if args.quick else FULL, width=WIDTH, depth=DEPTH, lr=LR, dropout=DROPOUT)
    if args.steps is not None:
        if args.steps < 1:
            p.error(f"--steps must be an integer >= 1, got {args.steps}")
        args.cfg["steps"] = args.steps
    return args


def labelled(key, n):
    """A batch ``(x, labels)`` of 8gaussians: a class uniformly, then x ~ N(mu_c, s^2 I)."""
    c_key, z_key = jr.split(key)
    c = jr.randint(c_key, (n,), 0, K)
    return MIX.means[c] + STD * jr.normal(z_key, (n, 2)), c


def class_log_probs(x):
    """Exact log p(x | c) for every class: shape (n, K)."""
    return jnp.stack([m.log_prob(x) for m in CLASSES], axis=-1)


def score_guidance(w, x, labels, real, class_floors, nfe):
    """Scores of one guidance weight, per class and as means over the classes.

    Per class: W2 to its held-out points (and over its floor), the fraction the exact Bayes
    classifier puts in the class, the shift of the sample mean from mu_c (norm ``offset``;
    ``radial``, its component along mu_c, > 0 away from the ring's centre) and the standard
    deviations about the sample mean along mu_c (``sd_radial``) and across it, towards the
    neighbouring classes (``sd_tangential``), in units of s (1 for the data).
    """
    x, labels = np.asarray(x), np.asarray(labels)
    bayes = np.asarray(jnp.argmax(class_log_probs(x), axis=-1))  # equal weights
    rows = []
    for c, floor in enumerate(class_floors):
        xc, mu = x[labels == c], np.asarray(MIX.means[c])
        u, d = mu / np.linalg.norm(mu), xc - xc.mean(0)
        w2 = float(metrics.wasserstein(xc, real[labels == c]))
        rows.append(
            dict(
                w2=w2,
                w2_over_floor=w2 / floor["w2"],
                accuracy=float(np.mean(bayes[labels == c] == c)),
                offset=float(np.linalg.norm(xc.mean(0) - mu)),
                radial=float((xc.mean(0) - mu) @ u),
                sd_radial=float(np.std(d @ u) / STD),
                sd_tangential=float(np.std(d @ np.array([-u[1], u[0]])) / STD),
            )
        )
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "w2"}
    ratios = [r["w2_over_floor"] for r in rows]
    mean["w2_over_floor_mean"] = mean.pop("w2_over_floor")
    return dict(w=w, nfe=nfe, classes=rows, w2_over_floor_max=float(np.max(ratios)), **mean)


def w2_floor(sampler, n, key, repeats):
    """W2 floor (``metrics.floor_stats``): mean and population sd over independent real pairs."""
    fs = metrics.floor_stats(metrics.wasserstein, sampler, n, key=key, repeats=repeats)
    return dict(w2=fs.mean, w2_sd=float(np.std(fs.values)))


def _gap(log_p, true):
    """Mean model log-likelihood, and the mean gap true - model with its standard error."""
    d = np.asarray(true, np.float64) - log_p
    return dict(
        model=float(log_p.mean()), gap=float(d.mean()), gap_se=float(d.std() / np.sqrt(len(d)))
    )


def _log(t_start, msg):
    print(f"[{time.perf_counter() - t_start:4.0f} s] {msg}", flush=True)


def log_lik(field, x, labels):
    """Mean and per-point exact log-likelihood of a field through ``cnf.log_prob``."""
    log_p, nfe = cnf.log_prob(field, x, cond=labels, solver="dopri5", rtol=1e-6, atol=1e-6)
    return np.asarray(log_p, np.float64), float(nfe)


def plot_samples(sets, out, lim=4.6):
    cols = (len(sets) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 5.4), squeeze=False)
    for ax in axes.flat[len(sets) :]:
        ax.axis("off")
    for ax, (title, (x, c)) in zip(axes.flat, sets.items(), strict=False):
        colors = np.where(
            np.asarray(c)[:, None] == NULL, 0.4, plt.cm.tab10(np.asarray(c) % 10)[:, :3]
        )
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6, linewidths=0, c=colors)
        ax.scatter(*np.asarray(MIX.means).T, marker="+", color="k", s=25, lw=0.8)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xticks=[], yticks=[], aspect="equal")
        ax.set_title(title, fontsize=8)
    _common.save(fig, out, dpi=110)


def plot_vs_w(m, out):
    ws = [r["w"] for r in m["guidance"]]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    ratio = np.array([[c["w2_over_floor"] for c in r["classes"]] for r in m["guidance"]])
    axes[0].plot(ws, ratio, color="0.6", lw=0.7)
    axes[0].plot(ws, ratio.mean(1), "o-", color="C0", lw=2, label="mean over classes")
    axes[0].axhline(1.0, color="k", ls=":", lw=1, label="floor")
    axes[0].set(xlabel="guidance weight w", ylabel="per-class W2 / floor")
    axes[0].legend(fontsize=7)
    axes[1].plot(ws, [r["sd_tangential"] for r in m["guidance"]], "o-", label="tangential sd / s")
    axes[1].plot(ws, [r["sd_radial"] for r in m["guidance"]], "v-", label="radial sd / s")
    axes[1].plot(ws, [r["radial"] / STD for r in m["guidance"]], "s-", label="outward shift / s")
    axes[1].axhline(1.0, color="k", ls=":", lw=1)
    axes[1].set(xlabel="guidance weight w", ylabel="per class, mean over classes")
    err = axes[1].twinx()
    err.plot(ws, [100 * (1 - r["accuracy"]) for r in m["guidance"]], "^--", color="C3")
    err.set_ylabel("Bayes error (%, red)", color="C3")
    axes[1].legend(fontsize=7)
    ll = m["loglik"]
    axes[2].plot(ws, [r["model"] for r in ll["guided"]], "o-", label="model (cnf.log_prob)")
    axes[2].axhline(ll["true"], color="k", ls=":", lw=1, label="true E log p(x | c)")
    axes[2].set(xlabel="guidance weight w", ylabel="held-out mean log p(x | c) (nats)")
    axes[2].legend(fontsize=7)
    _common.save(fig, out, dpi=110)


def _reading(m):
    """Sentences read off the numbers (no claim that the numbers do not make)."""
    g0, ll0 = m["guidance"][0], m["loglik"]["guided"][0]
    out = [
        f"At w = 0 the per-class W2 is {g0['w2_over_floor_mean']:.2f} x its floor on average "
        f"(max {g0['w2_over_floor_max']:.2f}), and the held-out conditional log-likelihood is "
        f"{ll0['gap']:+.4f} +- {ll0['gap_se']:.4f} nats from the exact one."
    ]
    if len(m["guidance"]) > 1:
        g, llw = m["guidance"][-1], m["loglik"]["guided"][-1]
        way = "outward" if g["radial"] > 0 else "inward"
        out.append(
            f"Guidance does not sample p(x | c): at w = {g['w']:g} W2 is "
            f"{g['w2_over_floor_mean']:.2f} x floor; the class means moved {way} by "
            f"{abs(g['radial']) / STD:.2f} s (w = 0: {g0['radial'] / STD:+.2f} s), the spread "
            f"towards the neighbouring classes is {g['sd_tangential']:.2f} s (w = 0: "
            f"{g0['sd_tangential']:.2f} s) and along the radius {g['sd_radial']:.2f} s (w = 0: "
            f"{g0['sd_radial']:.2f} s); the Bayes error is {100 * (1 - g['accuracy']):.2f} % "
            f"(w = 0: {100 * (1 - g0['accuracy']):.2f} %), and the held-out log-likelihood of "
            f"the guided flow is {llw['model']:.2f} nats (w = 0: {ll0['model']:.2f}). "
            "Guidance pushes each class away from the others; on this separated problem "
            "there is little class error for it to remove, so it mainly costs fidelity."
        )
    return [" ".join(out)]


def summary(m):
    cfg, ll = m["config"], m["loglik"]
    floors = m["class_floors"]
    lines = [
        "# Class-conditional flow matching and guidance on `8gaussians` (issue 8, section 2)",
        "",
        f"Classes: the {K} components of `8gaussians` (class c = N(mu_c, {STD:.3f}^2 I), exact "
        f"log p(x | c)). Model: `nn.MLP(2, 2, width={cfg['width']}, depth={cfg['depth']}, "
        f"num_classes={K})` (label {NULL} = null), flow matching on the linear path with label "
        f"dropout p = {cfg['dropout']} (`losses.get_loss('flow_matching', cond_dropout=..., "
        f"null_cond={NULL})`), {cfg['steps']} steps, batch {cfg['batch']}, Adam lr {cfg['lr']} "
        f"(cosine), EMA 0.999 (sampled). Sampling: `solve.sample_ode(solve.guided(model, w, "
        f"{NULL}), x0, cond=labels)` (adaptive Tsit5), {cfg['n_class']} samples per class from "
        "the same noise for every w, each class scored by exact W2 against "
        f"{cfg['n_class']} held-out points of that class. Floor: `metrics.floor_stats` on the "
        f"class's exact sampler at n = {cfg['n_class']}, mean over {cfg['floor_reps']} pairs "
        f"(mean over classes {np.mean([f['w2'] for f in floors]):.4f}). Bayes error: the "
        "fraction of a class's samples that the exact classifier argmax_c p(x | c) puts in "
        "another class (the true data's is about 0.1 %).",
        "",
        "| w | mean W2 / floor | max W2 / floor | Bayes error | outward shift / s | "
        "radial sd / s | tangential sd / s | held-out log p(x \\| c) | gap to truth (nats) | "
        "NFE (sampling) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, lg in zip(m["guidance"], ll["guided"], strict=True):
        lines.append(
            f"| {r['w']:g} | {r['w2_over_floor_mean']:.2f} | {r['w2_over_floor_max']:.2f} | "
            f"{100 * (1 - r['accuracy']):.2f} % | {r['radial'] / STD:+.3f} | "
            f"{r['sd_radial']:.3f} | {r['sd_tangential']:.3f} | "
            f"{lg['model']:.4f} | {lg['gap']:+.4f} +- {lg['gap_se']:.4f} | {r['nfe']} |"
        )
    w0 = m["guidance"][0]
    lines += [
        "",
        "Per class at w = 0 (W2, floor mean +- sd):",
        "",
        "| class | W2 | floor | W2 / floor |",
        "|---:|---:|---:|---:|",
    ]
    for c, (r, f) in enumerate(zip(w0["classes"], floors, strict=True)):
        lines.append(
            f"| {c} | {r['w2']:.4f} | {f['w2']:.4f} +- {f['w2_sd']:.4f} | {r['w2'] / f['w2']:.2f} |"
        )
    u = m["unconditional"]
    lines += [
        "",
        f"Unconditional model (every label = null; it learns from the {100 * DROPOUT:.0f} % of "
        f"dropped labels; {u['n']} samples): W2 {u['w2']:.4f} to the "
        f"whole mixture, floor {u['floor']:.4f} +- {u['floor_sd']:.4f} ({u['w2'] / u['floor']:.2f} "
        f"x floor); held-out log p(x) {ll['null']['model']:.4f} vs true {ll['null_true']:.4f} "
        f"(gap {ll['null']['gap']:+.4f} +- {ll['null']['gap_se']:.4f} nats).",
        "",
        f"Exact conditional log-likelihood (`cnf.log_prob(field, x, cond=labels)`, dopri5 "
        f"rtol = atol = 1e-6, exact trace) on {cfg['n_ll']} held-out labelled points: model "
        f"{ll['guided'][0]['model']:.4f}, truth {ll['true']:.4f} nats, gap "
        f"{ll['guided'][0]['gap']:+.4f} +- {ll['guided'][0]['gap_se']:.4f} (the gap estimates the "
        "mean conditional KL(p || q), >= 0). The label is worth "
        f"{ll['info_model']:.4f} nats to the model (mean log q(x | c) - log q(x | null)) against "
        f"{ll['info_true']:.4f} exactly (log p(x | c) - log p(x); log 8 = {np.log(8):.4f} for "
        "separated classes).",
        "",
        *_reading(m),
        "",
        f"Wall time {m['wall_seconds']:.0f} s (training {m['training']['seconds']:.0f} s at "
        f"{m['training']['steps_per_second']:.0f} steps/s) on a shared 2-core machine with "
        "other jobs running: timings are indicative only.",
        "",
        "Figures: `samples.png` (held-out data, the unconditional model and the guided samples "
        "per class, coloured by class), `vs_w.png` (per-class W2 / floor, spreads, outward "
        "shift, Bayes error and held-out log-likelihood against w). Samples: `samples.npz`.",
    ]
    return lines


def main(argv=None):
    args = parse_args(argv)
    cfg = args.cfg
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    k_model, k_fit, k_real, k_floor, k_noise, k_ll = jr.split(jr.key(args.seed), 6)

    model = nn.MLP(2, 2, width=WIDTH, depth=DEPTH, num_classes=K, key=k_model)
    loss = losses.get_loss("flow_matching", path="linear", cond_dropout=DROPOUT, null_cond=NULL)
    opt = train.make_optimizer(LR, schedule="cosine", num_steps=cfg["steps"], warmup=200)
    every = max(200, cfg["steps"] // 10)
    res = _common.fit(
        args, "model.eqx", model, loss, labelled, optimizer=opt, key=k_fit,
        num_steps=cfg["steps"], batch_size=cfg["batch"], steps_per_call=200, val_data=labelled,
        val_every=every, checkpoint_every=every,
    )  # fmt: skip
    field = res.ema_model
    _log(t_start, f"trained in {res.wall_seconds:.0f} s (compile {res.compile_seconds:.0f} s)")

    # Held-out points of each class, and each class's floor at the same n.
    n = cfg["n_class"]
    labels = jnp.repeat(jnp.arange(K), n)
    real = np.concatenate(
        [np.asarray(CLASSES[c].sample(jr.fold_in(k_real, c), n)) for c in range(K)]
    )
    reps = cfg["floor_reps"]
    class_floors = [w2_floor(CLASSES[c].sample, n, jr.fold_in(k_floor, c), reps) for c in range(K)]
    _log(t_start, "class floors: " + " ".join(f"{f['w2']:.4f}" for f in class_floors))

    # Guided sampling: the same noise x0 for every w (common random numbers). Every field is a
    # `solve.guided` module of the same structure (w = 0 is the model itself, bit for bit), so
    # the sampler and cnf.log_prob compile once for all w and for the null label.
    x0 = jr.normal(k_noise, (K * n, 2))
    guidance, samples = [], {}
    for w in cfg["weights"]:
        sol = solve.sample_ode(solve.guided(field, w, NULL), x0, cond=labels)
        samples[w] = np.asarray(sol.x)
        guidance.append(score_guidance(w, samples[w], labels, real, class_floors, int(sol.nfe)))
        _log(t_start, f"w = {w:g}: W2 / floor mean {guidance[-1]['w2_over_floor_mean']:.2f}")

    # The unconditional model (null label) against the whole mixture.
    n_null = cfg["n_null"]
    x0_null = jr.normal(jr.fold_in(k_noise, 1), (K * n, 2))
    uncond = solve.guided(field, 0.0, NULL)
    x_null = np.asarray(solve.sample_ode(uncond, x0_null, cond=jnp.full_like(labels, NULL)).x)
    x_null = x_null[:n_null]
    mix_real = np.asarray(MIX.sample(jr.fold_in(k_real, K), n_null))
    mix_floor = w2_floor(MIX.sample, n_null, jr.fold_in(k_floor, K), reps)
    w2_null = float(metrics.wasserstein(x_null, mix_real))
    unconditional = dict(n=n_null, w2=w2_null, floor=mix_floor["w2"], floor_sd=mix_floor["w2_sd"])
    _log(t_start, f"unconditional: W2 {unconditional['w2']:.4f} (floor {mix_floor['w2']:.4f})")

    # Exact conditional log-likelihood of held-out labelled points, for every w and the null.
    x_ll, c_ll = labelled(k_ll, cfg["n_ll"])
    true_c = np.asarray(jnp.take_along_axis(class_log_probs(x_ll), c_ll[:, None], 1)[:, 0])
    true_m = np.asarray(MIX.log_prob(x_ll))
    guided_ll, lps = [], {}
    for w in cfg["weights"]:
        lp, nfe = log_lik(solve.guided(field, w, NULL), x_ll, c_ll)
        guided_ll.append(dict(w=w, nfe=nfe, **_gap(lp, true_c)))
        lps[w] = lp
        _log(t_start, f"w = {w:g}: log p(x | c) {lp.mean():.4f} (true {true_c.mean():.4f})")
    lp_null, _ = log_lik(uncond, x_ll, jnp.full_like(c_ll, NULL))
    loglik = dict(
        true=float(true_c.mean()),
        guided=guided_ll,
        null=_gap(lp_null, true_m),
        null_true=float(true_m.mean()),
        info_model=float(np.mean(lps[0.0] - lp_null)),
        info_true=float(np.mean(true_c - true_m)),
    )

    # Figures and files.
    s = cfg["n_show"]
    show = np.concatenate([np.arange(c * n, c * n + s) for c in range(K)])
    sets = {
        "held-out data": (real[show], np.asarray(labels)[show]),
        "unconditional (null)": (x_null[: K * s], np.full(min(K * s, n_null), NULL)),
    }
    for w in cfg["weights"]:
        sets[f"w = {w:g}"] = (samples[w][show], np.asarray(labels)[show])
    plot_samples(sets, args.out / "samples.png")
    np.savez_compressed(
        args.out / "samples.npz",
        labels=np.asarray(labels)[show].astype(np.int8),
        real=real[show].astype(np.float32),
        unconditional=x_null[: K * s].astype(np.float32),
        **{f"w{w:g}": samples[w][show].astype(np.float32) for w in cfg["weights"]},
    )
    training = dict(
        seconds=res.wall_seconds, steps_per_second=res.steps_per_second,
        compile_seconds=res.compile_seconds, final_val_loss=float(res.history["val_loss"][-1]),
    )  # fmt: skip
    m = dict(
        study=STUDY, seed=args.seed, quick=args.quick, config=cfg, std=STD,
        class_floors=class_floors, guidance=guidance, unconditional=unconditional,
        loglik=loglik, training=training,
    )  # fmt: skip
    plot_vs_w(m, args.out / "vs_w.png")
    m["wall_seconds"] = time.perf_counter() - t_start
    _common.write_report(args.out, m, summary(m))
    print(f"wrote {args.out} in {m['wall_seconds']:.0f} s")
    return m


if __name__ == "__main__":
    _common.run_interruptible(main)
