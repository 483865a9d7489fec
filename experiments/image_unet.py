"""Images: flow, score and class-conditional UNets on the 8x8 digits, scored by a digit classifier.

Data: the 8x8 scikit-learn digits in [-1, 1] (``data.digits``, fixed-seed train/test split), or
MNIST from a local file with ``--data PATH`` (``data.load_mnist``; IDX with ``--labels PATH``,
or a Keras-style .npz). Time convention: t = 0 noise N(0, I), t = 1 data. Every network is a
``nn.UNet`` trained by ``train.fit`` (the library's one loop):

1. digits corrupted at t = 0, .25, .5, .75, 1 on the linear and the cosine path;
2. a velocity UNet by conditional flow matching (linear path), sampled by the flow ODE with
   Euler steps and with adaptive Tsit5 (NFE stated);
3. a score UNet by conditional score matching (linear path); samples of the flow-plus-score SDE
   dX = [v + sigma_t^2 / 2 s] dt + sigma_t dW (``sdes.generative_sde``, Euler-Maruyama) for
   sigma_t = a (1 - t), several a (0 = the flow ODE), FD against a;
4. noise schedules: a second velocity UNet on the cosine path, compared with the linear one on FD;
5. class-conditional flow matching with label dropout and classifier-free guidance
   (``solve.guided``): one row per class, classifier accuracy and FD against the guidance weight;
6. bits per dimension of the flow model on dequantised test digits through ``cnf.log_prob``
   (Hutchinson), beside the exact trace on a few of them;
7. ``samples.npz``: 1000 unconditional digits of the best sampler, and conditional digits with
   their labels;
8. ``metrics.json`` and ``summary.md``.

Scores (``diffeqgen.images``): a small classifier trained here on the training digits; FD between
its penultimate features of generated digits and of half the test digits, beside the floor (FD
between the two disjoint halves of the test set), averaged over random halvings; the class
histogram of generated digits (entropy, smallest class share).

Run ``python experiments/image_unet.py`` (27 min measured on 2 CPU cores heavily shared with
other jobs; see ``summary.md``) or ``--quick``.
"""

import json
import pathlib
import sys
import time

sys.path.append(str(pathlib.Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402  (selects the Agg backend)
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffeqgen import cnf, data, images, losses, metrics, nn, paths, sdes, solve, train  # noqa: E402

STUDY = "image_unet"
K = 10  # digit classes; label K is the null class of classifier-free guidance
NULL = K
FULL = dict(
    channels=(8, 16),
    embed_dim=32,
    steps=800,
    batch=32,
    lr=2e-3,
    dropout=0.2,
    clf_steps=600,
    n_gen=1000,
    euler_steps=(10, 20),
    sde_steps=20,
    sde_scales=(0.0, 1.0, 2.0),
    weights=(0.0, 1.0, 3.0),
    cond_steps=20,
    n_per_class=10,
    n_bpd=32,
    n_exact=2,
    fd_reps=10,
    max_ref=200,
)
QUICK = dict(
    FULL,
    channels=(8,),
    embed_dim=16,
    steps=150,
    batch=32,
    lr=3e-3,
    clf_steps=400,
    n_gen=100,
    euler_steps=(10,),
    sde_steps=10,
    sde_scales=(0.0, 1.0),
    weights=(0.0, 2.0),
    cond_steps=10,
    n_bpd=4,
    n_exact=1,
    fd_reps=3,
    max_ref=100,
)
SHOW = 64  # digits in a sample grid (8 x 8)


def parse_args(argv=None):
    p = _common.make_parser(__doc__, STUDY)
    p.add_argument(
        "--data",
        type=pathlib.Path,
        default=None,
        help="MNIST: an IDX image file (with --labels) or a Keras-style .npz; default the 8x8 "
        "scikit-learn digits",
    )
    p.add_argument("--labels", type=pathlib.Path, default=None, help="IDX label file for --data")
    p.add_argument(
        "--steps", type=_common.integer("steps"), default=None, help="training steps per model"
    )
    args = p.parse_args(argv)
    if args.labels is not None and args.data is None:
        p.error("--labels needs --data (the IDX image file it labels)")
    for name in ("data", "labels"):
        f = getattr(args, name)
        if f is not None and not f.is_file():
            p.error(f"--{name}: no such file {str(f)!r}")
    args.cfg = _common.config(args, {k: (FULL[k], QUICK[k]) for k in FULL}, steps=args.steps)
    return args


def _log(t_start, msg):
    print(f"[{time.perf_counter() - t_start:5.0f} s] {msg}", flush=True)


def load(args):
    """``(x_train, y_train, x_test, y_test, name)``: digits, or MNIST split with a fixed seed."""
    if args.data is None:
        return (*data.digits("train"), *data.digits("test"), "sklearn 8x8 digits")
    if args.data.suffix == ".npz":
        x, y = data.load_mnist(args.data, split="train")
        try:
            xt, yt = data.load_mnist(args.data, split="test")
        except ValueError:
            xt = yt = None
    else:
        x, y = data.load_mnist(args.data, args.labels)
        xt = yt = None
    if y is None:
        raise SystemExit("error: --data needs labels (--labels for IDX, y_train in an .npz)")
    if xt is None or yt is None:  # hold out a fixed-seed random sixth as the test set
        order = np.random.default_rng(0).permutation(len(x))
        cut = len(x) // 6
        x, y, xt, yt = x[order[cut:]], y[order[cut:]], x[order[:cut]], y[order[:cut]]
    return x, y, xt, yt, f"MNIST ({args.data.name})"


class FDScorer:
    """FD to a reference half of the test set, beside the floor, over random halvings.

    Repeat r splits the test images into disjoint halves A_r, B_r of size m (at most
    ``max_ref``); the floor is FD(A_r, B_r) and a generated set's score FD(G_r, B_r) with G_r m
    of its images (a random subset), averaged over the repeats.
    """

    def __init__(self, classifier, x_test, reps, max_ref, seed):
        self.classifier = classifier
        self.feats = images.features(classifier, x_test)
        self.m = min(len(x_test) // 2, max_ref)
        rng = np.random.default_rng(seed)
        self.splits = [rng.permutation(len(x_test)) for _ in range(reps)]
        self.rng = np.random.default_rng(seed + 1)
        floors = [
            metrics.frechet_distance(self.feats[s[: self.m]], self.feats[s[self.m : 2 * self.m]])
            for s in self.splits
        ]
        self.floor, self.floor_sd = float(np.mean(floors)), float(np.std(floors))

    def __call__(self, x):
        """Mean FD of generated images ``x`` (at least m of them) to the reference halves."""
        f = images.features(self.classifier, np.asarray(x))
        if len(f) < self.m:
            raise ValueError(f"need at least {self.m} generated images to score, got {len(f)}")
        fds = []
        for s in self.splits:
            g = f[self.rng.permutation(len(f))[: self.m]]
            fds.append(metrics.frechet_distance(g, self.feats[s[self.m : 2 * self.m]]))
        return float(np.mean(fds))


class Scale(eqx.Module):
    """sigma_t = a (1 - t): vanishes at the data end, where the score grows like 1 / sigma(t)."""

    a: jax.Array

    def __call__(self, t):
        """sigma_t at scalar t."""
        return self.a * (1.0 - t)


def histogram(classifier, x):
    """Class histogram of images under the classifier: fractions, entropy, smallest share."""
    h = images.class_histogram(images.predict(classifier, np.asarray(x)), K)
    return dict(
        fractions=[float(v) for v in h],
        entropy=images.histogram_entropy(h),
        min_share=float(h.min() * K),
    )


def corrupt_figure(x, key, out):
    """Rows: the same digits on the linear and cosine paths at t = 0, .25, .5, .75, 1."""
    ts = (0.0, 0.25, 0.5, 0.75, 1.0)
    eps = np.asarray(jr.normal(key, x.shape))
    fig, axes = plt.subplots(2 * len(x), len(ts), figsize=(1.3 * len(ts), 1.3 * 2 * len(x)))
    for p, name in enumerate(("linear", "cosine")):
        path = paths.get_path(name)
        for i in range(len(x)):
            for j, t in enumerate(ts):
                a, s = float(path.alpha(t)), float(path.sigma(t))
                ax = axes[p * len(x) + i, j]
                ax.imshow((a * x[i] + s * eps[i])[0], cmap="gray_r", vmin=-1.5, vmax=1.5)
                ax.set(xticks=[], yticks=[])
                if p * len(x) + i == 0 or (i == 0):
                    ax.set_title(f"{name}, t = {t:g}", fontsize=7)
    _common.save(fig, out, dpi=90)


def tile(x, rows, cols):
    """Images (n, 1, h, w) -> one (rows * h, cols * w) mosaic with 1-pixel gaps."""
    x = np.asarray(x)[: rows * cols, 0]
    h, w = x.shape[1:]
    canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for k, img in enumerate(x):
        r, c = divmod(k, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    return canvas


def grids_figure(sets, out, rows=8, cols=8):
    fig, axes = plt.subplots(1, len(sets), figsize=(2.4 * len(sets), 2.7), squeeze=False)
    cmap = plt.get_cmap("gray_r").with_extremes(bad="white")
    for ax, (title, x) in zip(axes[0], sets.items(), strict=True):
        ax.imshow(tile(x, rows, cols), cmap=cmap, vmin=-1, vmax=1)
        ax.set(xticks=[], yticks=[])
        ax.set_title(title, fontsize=7)
    _common.save(fig, out, dpi=110)


def curves_figure(m, out):
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    floor = m["fd_floor"]
    sde = m["sde"]
    axes[0].plot([r["a"] for r in sde], [r["fd"] for r in sde], "o-", label="flow + score SDE")
    axes[0].axhline(floor, color="k", ls=":", lw=1, label="floor")
    axes[0].axhline(2 * floor, color="0.5", ls="--", lw=1, label="2 x floor")
    axes[0].set(xlabel="a in sigma_t = a (1 - t)", ylabel="FD to test digits")
    axes[0].legend(fontsize=7)
    for name, rows in m["schedules"].items():
        axes[1].plot([r["nfe"] for r in rows], [r["fd"] for r in rows], "o-", label=name)
    axes[1].axhline(floor, color="k", ls=":", lw=1, label="floor")
    axes[1].set(xscale="log", xlabel="NFE (Euler steps; last: adaptive Tsit5)", ylabel="FD")
    axes[1].legend(fontsize=7)
    g = m["conditional"]["guidance"]
    ws = [r["w"] for r in g]
    axes[2].plot(ws, [100 * r["accuracy"] for r in g], "o-", color="C0")
    axes[2].set(xlabel="guidance weight w", ylabel="classified as its class (%, blue)")
    fd_ax = axes[2].twinx()
    fd_ax.plot(ws, [r["fd"] for r in g], "s--", color="C3")
    fd_ax.axhline(floor, color="k", ls=":", lw=1)
    fd_ax.set_ylabel("FD (red)", color="C3")
    _common.save(fig, out, dpi=110)


def fit_unet(args, name, loss, batch_data, cfg, key, num_classes=None):
    k_model, k_fit = jr.split(key)
    model = nn.UNet(
        1, channels=cfg["channels"], embed_dim=cfg["embed_dim"], num_classes=num_classes,
        key=k_model,
    )  # fmt: skip
    opt = train.make_optimizer(cfg["lr"], schedule="cosine", num_steps=cfg["steps"], warmup=100)
    return _common.fit(
        args, f"{name}.eqx", model, loss, batch_data, optimizer=opt, key=k_fit,
        num_steps=cfg["steps"], batch_size=cfg["batch"], steps_per_call=100,
        checkpoint_every=max(500, cfg["steps"] // 4),
    )  # fmt: skip


def timing(res):
    return dict(
        seconds=res.wall_seconds,
        compile_seconds=res.compile_seconds,
        steps_per_second=res.steps_per_second,
        final_loss=float(np.mean(res.history["loss"][-100:])),
    )


def ode_samplers(field, cfg):
    """Flow-ODE samplers ``(x0, key) -> Solution``: Euler with each step count, adaptive Tsit5."""
    out = {
        f"euler {n}": lambda x0, key, n=n: solve.sample_ode(field, x0, solver="euler", steps=n)
        for n in cfg["euler_steps"]
    }
    out["tsit5 (rtol = atol = 1e-3)"] = lambda x0, key: solve.sample_ode(
        field, x0, rtol=1e-3, atol=1e-3
    )
    return out


def run_samplers(samplers, x0, key, score, label, t_start):
    """Run each sampler on ``x0``: rows ``(solver, nfe, fd)`` and the samples by name."""
    rows, samples = [], {}
    for name, fn in samplers.items():
        sol = fn(x0, key)
        samples[name] = np.asarray(sol.x)
        rows.append(dict(solver=name, nfe=int(sol.nfe), fd=score(sol.x)))
        _log(t_start, f"{label} {name}: NFE {rows[-1]['nfe']}, FD {rows[-1]['fd']:.2f}")
    return rows, samples


def bits_per_dim(field, x_test, cfg, key):
    """Bits/dim of dequantised test digits: Hutchinson on n_bpd, exact and Hutchinson on n_exact."""
    k_u, k_h, k_e = jr.split(key, 3)
    n = min(cfg["n_bpd"], len(x_test))
    x = jnp.asarray(x_test[:n])
    # Levels v / 8 - 1 (v = 0..16): uniform dequantisation within each level's bin of width 1/8.
    x = x + (jr.uniform(k_u, x.shape) - 0.5) / 8.0
    dim = int(np.prod(x.shape[1:]))

    def bpd(lp):
        return np.asarray(cnf.bits_per_dim(lp, dim, num_levels=17, scale=17 / 8))

    kw = dict(rtol=1e-4, atol=1e-4)
    lp_h, nfe_h = cnf.log_prob(field, x, trace="hutchinson", key=k_h, **kw)
    ne = cfg["n_exact"]
    lp_e, nfe_e = cnf.log_prob(field, x[:ne], trace="exact", **kw)
    b_h, b_e = bpd(lp_h), bpd(lp_e)
    return dict(
        n=n,
        hutchinson=float(b_h.mean()),
        hutchinson_se=float(b_h.std() / np.sqrt(n)),
        hutchinson_nfe=float(nfe_h),
        n_exact=ne,
        exact_few=[float(v) for v in b_e],
        hutchinson_few=[float(v) for v in b_h[:ne]],
        exact_nfe=float(nfe_e),
    )


def summary(m):
    cfg, best, cond = m["config"], m["best"], m["conditional"]
    floor = m["fd_floor"]
    bar = m["quality_bar"]
    lines = [
        f"# Images: flow, score and class-conditional UNets on {m['data']}",
        "",
        f"Data: {m['n_train']} training and {m['n_test']} test images in [-1, 1]. Networks: "
        f"`nn.UNet(channels={tuple(cfg['channels'])}, embed_dim={cfg['embed_dim']})`, each "
        f"trained by `train.fit` for {cfg['steps']} steps, batch {cfg['batch']}, Adam lr "
        f"{cfg['lr']} (cosine, warm-up 100), EMA 0.999 (sampled). Classifier "
        f"(`images.train_classifier`, {cfg['clf_steps']} steps): test accuracy "
        f"{100 * m['classifier']['test_accuracy']:.1f} %. FD (`images.frechet_distance`, its "
        f"{m['classifier']['feature_size']} penultimate features) of m = {m['fd_m']} generated "
        f"images to one half of the test set, mean over {cfg['fd_reps']} random halvings; "
        f"floor = FD between the two disjoint halves = {floor:.2f} +- {m['fd_floor_sd']:.2f}.",
        "",
        "## Quality bar (set for the default run)",
        "",
        f"- best unconditional sampler ({best['name']}): FD {best['fd']:.2f} = "
        f"{best['fd'] / floor:.2f} x floor (bar: <= 2): **{'met' if bar['fd'] else 'NOT met'}**",
        f"- class histogram of its digits: entropy {best['histogram']['entropy']:.3f} nats "
        f"(log 10 = {np.log(10):.3f}), smallest class {best['histogram']['min_share']:.2f} of "
        f"its share (bar: >= 1/3): **{'met' if bar['classes'] else 'NOT met'}**",
        f"- conditional digits classified as their class at the best guidance weight "
        f"(w = {cond['best_w']:g}): {100 * cond['best_accuracy']:.1f} % (bar: >= 90 %): "
        f"**{'met' if bar['conditional'] else 'NOT met'}**",
        "",
        "## Flow ODE (velocity UNet, linear path) and schedules",
        "",
        *_common.table(
            "path | solver | NFE | FD | FD / floor",
            [
                f"{p} | {r['solver'].split(', ')[-1]} | {r['nfe']} | {r['fd']:.2f} | "
                f"{r['fd'] / floor:.2f}"
                for p, rows in m["schedules"].items()
                for r in rows
            ],
            "llrrr",
        ),
        "",
        "## Flow-plus-score SDE (velocity UNet + score UNet, linear path)",
        "",
        f"dX = [v + sigma_t^2 / 2 s] dt + sigma_t dW with sigma_t = a (1 - t), Euler-Maruyama "
        f"{cfg['sde_steps']} steps (a = 0 is the flow ODE by Euler). NFE counts drift "
        "evaluations; each evaluates both networks.",
        "",
        *_common.table(
            "a | NFE | FD | FD / floor",
            [f"{r['a']:g} | {r['nfe']} | {r['fd']:.2f} | {r['fd'] / floor:.2f}" for r in m["sde"]],
            "rrrr",
        ),
        "",
        "## Class-conditional flow matching with classifier-free guidance",
        "",
        f"Label dropout p = {cfg['dropout']} (null label {NULL}); `solve.guided(model, w, "
        f"{NULL})`, Euler {cfg['cond_steps']} steps, {_per_class(cfg, m['fd_m'])} digits per class "
        "(the same noise for every w).",
        "",
        *_common.table(
            "w | classified as its class | FD | FD / floor | NFE",
            [
                f"{r['w']:g} | {100 * r['accuracy']:.1f} % | {r['fd']:.2f} | "
                f"{r['fd'] / floor:.2f} | {r['nfe']}"
                for r in cond["guidance"]
            ],
            "rrrrr",
        ),
        "",
        "## Bits per dimension",
        "",
        _bpd_text(m["bpd"]),
        "",
        "## Training",
        "",
        *_common.table(
            "model | seconds | steps/s | final loss",
            [
                f"{k} | {v['seconds']:.0f} | {v['steps_per_second']:.1f} | {v['final_loss']:.4f}"
                for k, v in m["training"].items()
            ],
            "lrrr",
        ),
        "",
        f"Wall time {m['wall_seconds']:.0f} s on a shared 2-core machine with other jobs "
        "running: timings are indicative only.",
        "",
        "Figures: `corrupted.png` (item 1), `samples.png` (grids of the flow ODE, the SDE, the "
        "cosine path), `conditional.png` (one row per class at w = 0 and the best w), "
        "`curves.png` (FD against a, FD against NFE per path, accuracy and FD against w). "
        "`samples.npz`: the best unconditional sampler's digits and conditional digits with "
        "labels.",
    ]
    return lines


def _per_class(cfg, m):
    """Conditional digits per class: enough for an FD set of m images."""
    return max(cfg["n_per_class"], -(-m // K))


def _bpd_text(b):
    few = ", ".join(
        f"{e:.3f} / {h:.3f}" for e, h in zip(b["exact_few"], b["hutchinson_few"], strict=True)
    )
    return (
        f"Flow model (linear path) on {b['n']} uniformly dequantised test digits (bin width 1/8, "
        f"17 levels; an upper bound on the discrete code length): {b['hutchinson']:.3f} +- "
        f"{b['hutchinson_se']:.3f} bits/dim by `cnf.log_prob(trace='hutchinson')` (one "
        f"Rademacher probe, dopri5 rtol = atol = 1e-4, NFE {b['hutchinson_nfe']:.0f}). On the "
        f"first {b['n_exact']} digits, exact trace / Hutchinson: {few} bits/dim (exact NFE "
        f"{b['exact_nfe']:.0f})."
    )


def main(argv=None):
    args = parse_args(argv)
    cfg = args.cfg
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    keys = dict(
        zip(
            ("clf", "flow", "score", "cosine", "cond", "noise", "sde", "bpd", "show"),
            jr.split(jr.key(args.seed), 9),
            strict=True,
        )
    )
    x, y, xt, yt, name = load(args)
    shape = x.shape[1:]
    _log(t_start, f"{name}: train {x.shape}, test {xt.shape}")

    clf = images.train_classifier(x, y, key=keys["clf"], num_steps=cfg["clf_steps"])
    clf_acc = images.accuracy(clf, xt, yt)
    score = FDScorer(clf, xt, cfg["fd_reps"], cfg["max_ref"], args.seed)
    _log(t_start, f"classifier test accuracy {clf_acc:.3f}; FD floor {score.floor:.2f}")

    # 1. Corrupted digits.
    corrupt_figure(xt[:3], keys["show"], args.out / "corrupted.png")

    # 2. Flow matching, linear path: Euler and adaptive.
    xj = jnp.asarray(x)
    fm = losses.get_loss("flow_matching", path="linear")
    res_flow = fit_unet(args, "flow", fm, xj, cfg, keys["flow"])
    flow = res_flow.ema_model
    x0 = jr.normal(keys["noise"], (score.m, *shape))  # FD compares sets of m images
    samplers = {f"flow ODE linear, {k}": f for k, f in ode_samplers(flow, cfg).items()}
    rows_lin, samples = run_samplers(samplers, x0, None, score, "", t_start)

    # 3. Score matching and the flow-plus-score SDE.
    sm = losses.get_loss("score_matching", path="linear")
    res_score = fit_unet(args, "score", sm, xj, cfg, keys["score"])
    score_net = res_score.ema_model
    sde_samplers = {
        f"flow + score SDE, a = {a:g}": lambda x0, key, a=a: solve.sample_sde(
            sdes.generative_sde(flow, score_net, Scale(jnp.asarray(a, jnp.float32))),
            x0, key=key, steps=cfg["sde_steps"],
        )
        for a in cfg["sde_scales"]
    }  # fmt: skip
    sde_rows, sde_samples = run_samplers(sde_samplers, x0, keys["sde"], score, "", t_start)
    for r, a in zip(sde_rows, cfg["sde_scales"], strict=True):
        r["a"] = a
    samplers |= sde_samplers
    samples |= sde_samples

    # 4. A second noise schedule: the cosine path.
    res_cos = fit_unet(args, "cosine", losses.get_loss("flow_matching", path="cosine"), xj, cfg,
                       keys["cosine"])  # fmt: skip
    cos_samplers = {
        f"flow ODE cosine, {k}": f for k, f in ode_samplers(res_cos.ema_model, cfg).items()
    }
    rows_cos, cos_samples = run_samplers(cos_samplers, x0, None, score, "", t_start)
    samplers |= cos_samplers
    samples |= cos_samples

    # 5. Class-conditional with classifier-free guidance.
    cfm = losses.get_loss(
        "flow_matching", path="linear", cond_dropout=cfg["dropout"], null_cond=NULL
    )
    res_cond = fit_unet(args, "conditional", cfm, (xj, jnp.asarray(y)), cfg, keys["cond"], K)
    npc = _per_class(cfg, score.m)
    labels = jnp.repeat(jnp.arange(K, dtype=jnp.int32), npc)
    xc0 = jr.normal(jr.fold_in(keys["noise"], 1), (K * npc, *shape))
    guidance, cond_samples = [], {}
    for w in cfg["weights"]:
        g = solve.guided(res_cond.ema_model, w, NULL)
        sol = solve.sample_ode(g, xc0, cond=labels, solver="euler", steps=cfg["cond_steps"])
        cond_samples[w] = np.asarray(sol.x)
        acc = images.accuracy(clf, sol.x, labels)
        guidance.append(dict(w=w, accuracy=acc, fd=score(sol.x), nfe=int(sol.nfe)))
        _log(t_start, f"guided w = {w:g}: accuracy {acc:.3f}, FD {guidance[-1]['fd']:.2f}")
    best_g = max(guidance, key=lambda r: (r["accuracy"], -r["w"]))

    # 6. Bits per dimension of the flow model.
    bpd = bits_per_dim(flow, xt, cfg, keys["bpd"])
    _log(t_start, f"bpd (Hutchinson) {bpd['hutchinson']:.3f}; exact few {bpd['exact_few']}")

    # 7-8. The best unconditional sampler, samples, figures, report.
    fds = {r["solver"]: r["fd"] for r in rows_lin + sde_rows + rows_cos}
    best_name = min(fds, key=fds.get)
    best_fd = fds[best_name]
    # n_gen digits of the best sampler, in chunks of m noise draws (no new compilation).
    chunks = []
    for i in range(-(-cfg["n_gen"] // score.m)):
        k_i = jr.fold_in(keys["noise"], 100 + i)
        chunks.append(np.asarray(samplers[best_name](jr.normal(k_i, x0.shape), k_i).x))
    best_x = np.concatenate(chunks)[: cfg["n_gen"]]
    _log(t_start, f"best: {best_name}, FD {best_fd:.2f} ({best_fd / score.floor:.2f} x floor)")
    hist = histogram(clf, best_x)
    np.savez_compressed(
        args.out / "samples.npz",
        unconditional=best_x.astype(np.float32),
        conditional=cond_samples[best_g["w"]].astype(np.float32),
        conditional_labels=np.asarray(labels).astype(np.int8),
    )
    tsit5 = "tsit5 (rtol = atol = 1e-3)"
    shown = [
        f"flow ODE linear, euler {cfg['euler_steps'][-1]}",
        f"flow ODE linear, {tsit5}",
        f"flow + score SDE, a = {cfg['sde_scales'][-1]:g}",
        f"flow ODE cosine, {tsit5}",
    ]
    grids_figure(
        {"test digits": xt[:SHOW]}
        | {k.replace("flow ODE ", "").replace(f" ({tsit5[7:-1]})", ""): samples[k] for k in shown},
        args.out / "samples.png",
    )
    per_row = np.arange(K)[:, None] * npc + np.arange(min(K, npc))[None, :]
    grids_figure(
        {f"w = {w:g}": cond_samples[w][per_row.ravel()] for w in sorted({0.0, best_g["w"]})},
        args.out / "conditional.png",
        rows=K,
        cols=min(K, npc),
    )
    training = {
        "flow (linear)": timing(res_flow),
        "score (linear)": timing(res_score),
        "flow (cosine)": timing(res_cos),
        "conditional": timing(res_cond),
    }
    quality_bar = dict(
        fd=bool(best_fd <= 2 * score.floor),
        classes=bool(hist["min_share"] >= 1 / 3),
        conditional=bool(best_g["accuracy"] >= 0.9),
    )
    m = dict(
        study=STUDY, seed=args.seed, quick=args.quick, data=name, config=cfg,
        n_train=len(x), n_test=len(xt),
        classifier=dict(test_accuracy=clf_acc, feature_size=int(score.feats.shape[1])),
        fd_m=score.m, fd_floor=score.floor, fd_floor_sd=score.floor_sd,
        schedules={"linear": rows_lin, "cosine": rows_cos}, sde=sde_rows,
        conditional=dict(guidance=guidance, best_w=best_g["w"],
                         best_accuracy=best_g["accuracy"], best_fd=best_g["fd"]),
        best=dict(name=best_name, fd=best_fd, fd_over_floor=best_fd / score.floor,
                  histogram=hist),
        bpd=bpd, training=training, quality_bar=quality_bar,
    )  # fmt: skip
    curves_figure(m, args.out / "curves.png")
    m["wall_seconds"] = time.perf_counter() - t_start
    m["config"] = json.loads(json.dumps(cfg))  # tuples -> lists
    _common.write_report(args.out, m, summary(m))
    print(f"wrote {args.out} in {m['wall_seconds']:.0f} s")
    return m


if __name__ == "__main__":
    _common.run_interruptible(main)
