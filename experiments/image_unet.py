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
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

from diffeqgen import images, losses, nn, sdes, solve, train  # noqa: E402

STUDY = "image_unet"
K = 10  # digit classes; label K is the null class of classifier-free guidance
NULL = K
FULL = dict(
    channels=(8, 16),
    embed_dim=32,
    blocks=(2, 3),  # residual blocks per level, in the bottleneck
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
    bpd_steps=None,  # adaptive dopri5; an int: fixed Euler steps (cheaper to compile)
    fd_reps=10,
    max_ref=200,
)
QUICK = dict(
    FULL,
    channels=(8,),
    embed_dim=16,
    blocks=(1, 1),  # ~25 % less compile time than (2, 3); 200 steps keep the test bounds
    steps=200,
    lr=3e-3,
    clf_steps=400,
    n_gen=100,
    euler_steps=(),
    sde_steps=10,
    sde_scales=(0.0, 1.0),
    weights=(0.0, 3.0),
    cond_steps=10,
    n_bpd=4,
    n_exact=1,
    bpd_steps=8,
    fd_reps=3,
    max_ref=100,
)
SHOW = 64  # digits in a sample grid (8 x 8)


def parse_args(argv=None):
    p = _common.make_parser(__doc__, STUDY)
    _common.add_image_data(p)
    p.add_argument(
        "--steps", type=_common.integer("steps"), default=None, help="training steps per model"
    )
    args = p.parse_args(argv)
    _common.check_image_data(p, args)
    args.cfg = _common.config(args, {k: (FULL[k], QUICK[k]) for k in FULL}, steps=args.steps)
    return args


def load(args):
    """``(x_train, y_train, x_test, y_test, name)`` of ``--data`` (default the 8x8 digits)."""
    return _common.load_images(args.data, args.labels)


def _warmup(cfg):
    """Learning-rate warm-up steps: 100, or a fifth of the steps of a shorter run."""
    return min(100, cfg["steps"] // 5)


def fit_unet(args, name, loss, batch_data, cfg, key, num_classes=None):
    k_model, k_fit = jr.split(key)
    model = nn.UNet(
        1, channels=cfg["channels"], embed_dim=cfg["embed_dim"], res_blocks=cfg["blocks"][0],
        mid_blocks=cfg["blocks"][1], num_classes=num_classes, key=k_model,
    )  # fmt: skip
    opt = train.make_optimizer(
        cfg["lr"], schedule="cosine", num_steps=cfg["steps"], warmup=_warmup(cfg)
    )
    return _common.fit(
        args, f"{name}.eqx", model, loss, batch_data, optimizer=opt, key=k_fit,
        num_steps=cfg["steps"], batch_size=cfg["batch"], steps_per_call=100,
        checkpoint_every=max(500, cfg["steps"] // 4),
    )  # fmt: skip


def summary(m):
    cfg, best, cond = m["config"], m["best"], m["conditional"]
    floor = m["fd_floor"]
    bar = m["quality_bar"]
    lines = [
        f"# Images: flow, score and class-conditional UNets on {m['data']}",
        "",
        f"Data: {m['n_train']} training and {m['n_test']} test images in [-1, 1]. Networks: "
        f"`nn.UNet(channels={tuple(cfg['channels'])}, embed_dim={cfg['embed_dim']}, res_blocks="
        f"{cfg['blocks'][0]}, mid_blocks={cfg['blocks'][1]})`, each trained by `train.fit` for "
        f"{cfg['steps']} steps, batch {cfg['batch']}, Adam lr "
        f"{cfg['lr']} (cosine, warm-up {_warmup(cfg)}), EMA 0.999 (sampled). Classifier "
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
        _bpd_text(m["bpd"], cfg["bpd_steps"]),
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


def _bpd_text(b, steps):
    solver = "dopri5 rtol = atol = 1e-4" if steps is None else f"Euler {steps} steps"
    few = ", ".join(
        f"{e:.3f} / {h:.3f}" for e, h in zip(b["exact_few"], b["hutchinson_few"], strict=True)
    )
    return (
        f"Flow model (linear path) on {b['n']} uniformly dequantised test images ("
        f"{b['num_levels']} levels, bin width 2/{b['num_levels'] - 1}; an upper bound on the "
        f"discrete code length): {b['hutchinson']:.3f} +- {b['hutchinson_se']:.3f} bits/dim by "
        f"`cnf.log_prob(trace='hutchinson')` (one Rademacher probe, {solver}, NFE "
        f"{b['hutchinson_nfe']:.0f}). On the first {b['n_exact']} images, exact trace / "
        f"Hutchinson: {few} bits/dim (exact NFE {b['exact_nfe']:.0f})."
    )


def main(argv=None):
    args = parse_args(argv)
    cfg = args.cfg
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg):
        _common.log_since(t_start, msg)

    names = ("clf", "flow", "score", "cosine", "cond", "noise", "sde", "bpd", "show")
    keys = dict(zip(names, jr.split(jr.key(args.seed), len(names)), strict=True))
    x, y, xt, yt, name = load(args)
    shape = x.shape[1:]
    log(f"{name}: train {x.shape}, test {xt.shape}")

    clf = images.train_classifier(x, y, key=keys["clf"], num_steps=cfg["clf_steps"])
    clf_acc = images.accuracy(clf, xt, yt)
    score = _common.FDScorer(clf, xt, cfg["fd_reps"], cfg["max_ref"], args.seed)
    log(f"classifier test accuracy {clf_acc:.3f}; FD floor {score.floor:.2f}")

    # 1. Corrupted digits.
    _common.corruption_figure(xt[:3], keys["show"], args.out / "corrupted.png")

    # 2. Flow matching, linear path: Euler and adaptive.
    xj = jnp.asarray(x)
    fm = losses.get_loss("flow_matching", path="linear")
    res_flow = fit_unet(args, "flow", fm, xj, cfg, keys["flow"])
    flow = res_flow.ema_model
    x0 = _common.flat_draw(jr.normal, keys["noise"], (score.m, *shape))  # FD: sets of m images
    samplers = _common.flow_ode_samplers(flow, cfg["euler_steps"], "flow ODE linear, ")
    rows_lin, samples = _common.run_samplers(samplers, x0, None, score, t_start)

    # 3. Score matching and the flow-plus-score SDE.
    sm = losses.get_loss("score_matching", path="linear")
    res_score = fit_unet(args, "score", sm, xj, cfg, keys["score"])
    score_net = res_score.ema_model
    sde_samplers = {
        f"flow + score SDE, a = {a:g}": lambda x0, key, a=a: solve.sample_sde(
            sdes.generative_sde(flow, score_net, _common.LinearScale(jnp.asarray(a, jnp.float32))),
            x0, key=key, steps=cfg["sde_steps"],
        )
        for a in cfg["sde_scales"]
    }  # fmt: skip
    sde_rows, sde_samples = _common.run_samplers(sde_samplers, x0, keys["sde"], score, t_start)
    for r, a in zip(sde_rows, cfg["sde_scales"], strict=True):
        r["a"] = a
    samplers |= sde_samplers
    samples |= sde_samples

    # 4. A second noise schedule: the cosine path.
    res_cos = fit_unet(args, "cosine", losses.get_loss("flow_matching", path="cosine"), xj, cfg,
                       keys["cosine"])  # fmt: skip
    cos_samplers = _common.flow_ode_samplers(
        res_cos.ema_model, cfg["euler_steps"], "flow ODE cosine, "
    )
    rows_cos, cos_samples = _common.run_samplers(cos_samplers, x0, None, score, t_start)
    samplers |= cos_samplers
    samples |= cos_samples

    # 5. Class-conditional with classifier-free guidance.
    cfm = losses.get_loss(
        "flow_matching", path="linear", cond_dropout=cfg["dropout"], null_cond=NULL
    )
    res_cond = fit_unet(args, "conditional", cfm, (xj, jnp.asarray(y)), cfg, keys["cond"], K)
    npc = _per_class(cfg, score.m)
    labels = jnp.repeat(jnp.arange(K, dtype=jnp.int32), npc)
    xc0 = _common.flat_draw(jr.normal, jr.fold_in(keys["noise"], 1), (K * npc, *shape))
    guidance, cond_samples = [], {}
    for w in cfg["weights"]:
        g = solve.guided(res_cond.ema_model, w, NULL)
        sol = solve.sample_ode(g, xc0, cond=labels, solver="euler", steps=cfg["cond_steps"])
        cond_samples[w] = np.asarray(sol.x)
        acc = images.accuracy(clf, sol.x, labels)
        guidance.append(dict(w=w, accuracy=acc, fd=score(sol.x), nfe=int(sol.nfe)))
        log(f"guided w = {w:g}: accuracy {acc:.3f}, FD {guidance[-1]['fd']:.2f}")
    best_g = max(guidance, key=lambda r: (r["accuracy"], -r["w"]))

    # 6. Bits per dimension of the flow model.
    bpd = _common.image_bits_per_dim(
        flow, xt, cfg["n_bpd"], cfg["n_exact"], keys["bpd"], _common.image_levels(args.data),
        cfg["bpd_steps"],
    )  # fmt: skip
    log(f"bpd (Hutchinson) {bpd['hutchinson']:.3f}; exact few {bpd['exact_few']}")

    # 7-8. The best unconditional sampler, samples, figures, report.
    fds = {r["solver"]: r["fd"] for r in rows_lin + sde_rows + rows_cos}
    best_name = min(fds, key=fds.get)
    best_fd = fds[best_name]
    # n_gen digits of the best sampler, in chunks of m noise draws (no new compilation).
    best_x = _common.sample_in_chunks(samplers[best_name], cfg["n_gen"], x0.shape, keys["noise"])
    log(f"best: {best_name}, FD {best_fd:.2f} ({best_fd / score.floor:.2f} x floor)")
    hist = _common.class_histogram(clf, best_x, K)
    np.savez_compressed(
        args.out / "samples.npz",
        unconditional=best_x.astype(np.float32),
        conditional=cond_samples[best_g["w"]].astype(np.float32),
        conditional_labels=np.asarray(labels).astype(np.int8),
    )
    tsit5 = "tsit5 (rtol = atol = 1e-3)"
    shown = [
        *[f"flow ODE linear, euler {n}" for n in cfg["euler_steps"][-1:]],
        f"flow ODE linear, {tsit5}",
        f"flow + score SDE, a = {cfg['sde_scales'][-1]:g}",
        f"flow ODE cosine, {tsit5}",
    ]
    _common.grids_figure(
        {"test digits": xt[:SHOW]}
        | {k.replace("flow ODE ", "").replace(f" ({tsit5[7:-1]})", ""): samples[k] for k in shown},
        args.out / "samples.png",
    )
    per_row = np.arange(K)[:, None] * npc + np.arange(min(K, npc))[None, :]
    _common.grids_figure(
        {f"w = {w:g}": cond_samples[w][per_row.ravel()] for w in sorted({0.0, best_g["w"]})},
        args.out / "conditional.png",
        rows=K,
        cols=min(K, npc),
    )
    training = {
        "flow (linear)": _common.training_row(res_flow),
        "score (linear)": _common.training_row(res_score),
        "flow (cosine)": _common.training_row(res_cos),
        "conditional": _common.training_row(res_cond),
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
    _common.image_curves_figure(m, args.out / "curves.png")
    m["wall_seconds"] = time.perf_counter() - t_start
    m["config"] = json.loads(json.dumps(cfg))  # tuples -> lists
    _common.write_report(args.out, m, summary(m))
    print(f"wrote {args.out} in {m['wall_seconds']:.0f} s")
    return m


if __name__ == "__main__":
    _common.run_interruptible(main)
