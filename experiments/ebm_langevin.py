"""Energy-based models by Langevin MCMC, the cost of the MCMC gradient, and self-healing samplers.

1. EBMs (``dg.ebm.energy_mlp``) trained with ``dg.ebm.ebm_loss`` on 8gaussians and pinwheel by
   the one ``dg.train.fit`` loop, persistent chains in a replay buffer (unadjusted Langevin
   during training). Samples: fresh MALA chains from uniform noise on the EMA energy (2000 per
   dataset), scored by exact W2 and MMD^2 (fixed bandwidth) beside their floors; the learned
   density exp(-E) (normalised on a grid) beside the true density (8gaussians) or a data
   histogram (pinwheel), and the grid-normalised test NLL beside the true one where known.
2. The MCMC gradient (text 003 2B): on the trained 8gaussians energy, the variance (trace of the
   covariance over repeated draws, fixed data batch) and warm wall time of one short-run
   ``ebm_loss`` gradient against the number of chains and of Langevin steps.
3. Self-healing (text 001), on a trained score model: an eps network (MLP 3 x 64) trained on
   8gaussians along the VP path, used through its score and probability-flow velocity
   (``dg.paths.as_score`` / ``as_vector_field``): samples drawn exactly from p_t at t = t_p
   (``dg.groundtruth``) are perturbed by Gaussian noise of std delta and finished
   to t_max by the probability-flow ODE (Heun), the reverse SDE (Euler-Maruyama) and
   predictor-corrector (one Langevin corrector step), all with the same number of field
   evaluations; W2 to the data against t_p and delta.
4. ``metrics.json``, ``summary.md``, figures, ``samples.npz``.

Time convention: t = 0 noise, t = 1 data. Run ``python experiments/ebm_langevin.py`` (a few
minutes on 2 CPU cores) or ``--quick`` (under a minute).
"""

import pathlib
import sys
import time
from functools import partial

sys.path.append(str(pathlib.Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402  (selects the Agg backend)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from diffeqgen import (  # noqa: E402
    data,
    ebm,
    groundtruth,
    losses,
    metrics,
    nn,
    paths,
    plotting,
    sdes,
    solve,
    train,
)

STUDY = "ebm_langevin"
DATASETS = ("8gaussians", "pinwheel")
LIM = 4.5  # plotting box and grid normalisation box [-LIM, LIM]^2 (both sets lie well inside)
SETTINGS = dict(  # name=(full, --quick)
    width=(64, 32), depth=(3, 2), steps=(4000, 150), batch=(256, 128), lr=(1e-3, 2e-3),  # 1.
    buffer=(8192, 1024), k_train=(20, 10), h_train=(0.01, 0.01), alpha=(0.0, 0.0),
    alpha_ablation=(0.1, None),  # 8gaussians retrained with this energy regulariser
    base_std=(2.0, 2.0), n=(2000, 500), mala_steps=(1000, 100), h_mala=(0.05, 0.05),
    floor_repeats=(3, 2),
    chains=((16, 64, 256, 1024), (16, 64)), k_grad=((5, 20, 80), (5, 20)),  # 2.
    grad_repeats=(16, 4),
    t_perturb=((0.1, 0.3, 0.5, 0.7, 0.9), (0.5,)), deltas=((0.0, 0.5, 1.0, 2.0), (0.0, 1.0)),  # 3.
    heal_steps=(500, 100),
    heal_train=(6000, 1500),  # training steps of the eps network of section 3
)  # fmt: skip


def parse_args(argv=None):
    p = _common.make_parser(__doc__, STUDY)
    p.add_argument("--datasets", type=_common.choices("dataset", DATASETS), default=DATASETS)
    p.add_argument("--steps", type=_common.integer("steps"), help="training steps per EBM")
    _common.add_mmd_bandwidth(p)
    args = p.parse_args(argv)
    args.cfg = _common.config(args, SETTINGS, steps=args.steps)
    return args


# ------------------------------------------------------------------------- 1. trained EBMs
def train_ebm(name, cfg, args, key):
    k_model, k_buf, k_fit = jr.split(key, 3)
    net = ebm.energy_mlp(
        2, width=cfg["width"], depth=cfg["depth"], base_std=cfg["base_std"], key=k_model
    )
    model = ebm.with_buffer(net, jr.uniform(k_buf, (cfg["buffer"], 2), minval=-LIM, maxval=LIM))
    loss = partial(
        ebm.ebm_loss, step_size=cfg["h_train"], num_steps=cfg["k_train"], alpha=cfg["alpha"],
        init_scale=LIM,
    )  # fmt: skip
    opt = ebm.with_replay(train.make_optimizer(cfg["lr"], grad_clip=1.0))
    tag = "" if cfg["alpha"] == SETTINGS["alpha"][0] else f"_alpha{cfg['alpha']:g}"
    return _common.fit(
        args, _common.run_name(args, name + tag), model, loss, data.sampler(name), optimizer=opt,
        key=k_fit, num_steps=cfg["steps"], batch_size=cfg["batch"], steps_per_call=50,
        checkpoint_every=500,
    )  # fmt: skip


def grid_log_density(energy, n_grid=120):
    """log(exp(-E) / Z) on a grid over [-LIM, LIM]^2, Z by quadrature: (points, log p, log Z)."""
    _, _, pts = _common.grid(LIM, n_grid)
    e = jax.vmap(lambda x: energy.energy(1.0, x))(pts)
    cell = (2 * LIM / (n_grid - 1)) ** 2
    log_z = jax.nn.logsumexp(-e) + jnp.log(cell)
    return pts, np.asarray(-e - log_z), float(log_z)


def study_ebm(name, cfg, args, key, label):
    k_train, k_test, k_floor, k_sample = jr.split(key, 4)
    sampler, n = data.sampler(name), cfg["n"]
    res = train_ebm(name, cfg, args, k_train)
    model = res.ema_model
    x0 = jr.uniform(k_sample, (n, 2), minval=-LIM, maxval=LIM)
    sol, t_sample, _ = _common.timed(
        ebm.mala, model, x0, key=jr.fold_in(k_sample, 1), step_size=cfg["h_mala"],
        num_steps=cfg["mala_steps"],
    )  # fmt: skip
    x = np.asarray(sol.x)
    real = sampler(k_test, n)
    bw = args.mmd_bandwidth or None
    floors = _common.floors(sampler, n, key=k_floor, bandwidth=bw, repeats=cfg["floor_repeats"])
    scores = _common.scored(jnp.asarray(x), real, bw, floors)
    pts, log_p, log_z = grid_log_density(model)
    e_test = jax.vmap(lambda y: model.energy(1.0, y))(real)
    row = dict(
        dataset=label, alpha=cfg["alpha"], **scores,
        outside=float(np.mean(np.max(np.abs(x), axis=1) > LIM)), floors=floors,
        acceptance=float(np.mean(np.asarray(sol.num_accepted)) / cfg["mala_steps"]),
        test_nll=float(jnp.mean(e_test) + log_z), train_seconds=float(res.wall_seconds),
        sample_seconds=t_sample, nfe=int(sol.nfe),
    )  # fmt: skip
    true_log_p = _common.known(data.log_prob, name, pts)  # None: no closed form (pinwheel)
    if true_log_p is not None:
        row["true_nll"] = float(-jnp.mean(data.log_prob(name, real)))
    print(
        f"{row['dataset']}: W2 {row['w2']:.4f} ({row['w2_over_floor']:.2f}x floor "
        f"{floors['w2']:.4f}), MMD^2 {row['mmd']:.2e} (floor {floors['mmd']:.2e}), MALA acceptance "
        f"{row['acceptance']:.2f}, test NLL {row['test_nll']:.3f}, outside {row['outside']:.3f}"
    )
    plots = dict(x=x, real=np.asarray(real), log_p=log_p, true_log_p=true_log_p)
    return row, plots, res.history, model


def plot_ebms(plots, out):
    fig, axes = plt.subplots(len(plots), 3, figsize=(9, 3 * len(plots)), squeeze=False)
    for ax, (name, p) in zip(axes, plots.items(), strict=True):
        plotting.heatmap(ax[0], np.exp(p["log_p"]), lim=LIM, title=f"{name}: learned exp(-E)/Z")
        if p["true_log_p"] is not None:
            plotting.heatmap(ax[1], np.exp(p["true_log_p"]), lim=LIM, title="true density")
        else:
            plotting.hist2d(ax[1], p["real"], lim=LIM, bins=80, title="data (no closed form)")
        plotting.scatter(ax[2], p["x"], lim=LIM, s=2)
        ax[2].set_title("MALA samples from noise", fontsize=9)
    _common.save(fig, out / "ebm_samples.png")


# ------------------------------------------------------------------- 2. the MCMC gradient
def gradient_cost(model, cfg, key):
    """Variance and warm wall time of one short-run ebm_loss gradient (fixed data batch)."""
    batch = data.sample("8gaussians", key, cfg["batch"])
    # the energy without its replay buffer (short-run chains start from noise)
    energy = ebm.EnergyModel(model.net, model.time_conditioned, base_std=model.base_std)
    rows = []
    for k in cfg["k_grad"]:
        for m in cfg["chains"]:
            loss = partial(ebm.ebm_loss, step_size=cfg["h_train"], num_steps=k, num_chains=m,
                           alpha=cfg["alpha"], init_scale=LIM)  # fmt: skip
            grad = jax.jit(lambda mod, kk, loss=loss: ravel_pytree(jax.grad(
                lambda mm: loss(mm, kk, batch)[0])(mod))[0])  # fmt: skip
            keys = jr.split(jr.fold_in(key, 1000 * k + m), cfg["grad_repeats"])
            gs, seconds = _common.warm_runs(partial(grad, energy), keys)
            var = float(np.sum(np.var(np.stack(gs), axis=0, ddof=1)))
            rows.append(dict(chains=m, steps=k, grad_var=var, seconds=seconds))
    return rows


def plot_gradient(rows, out):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("grad_var", "seconds"), strict=True):
        _common.plot_by(ax, rows, "steps", "chains", key, label="K = {}")
    axes[0].set_ylabel("gradient variance (trace of covariance)")
    axes[1].set_ylabel("wall time per gradient (s, warm, median)")
    for ax in axes:
        ax.set(xscale="log", yscale="log", xlabel="number of chains")
        ax.legend(fontsize=7, title="Langevin steps")
    _common.save(fig, out / "mcmc_gradient.png")


# ----------------------------------------------------------------------- 3. self-healing
def heal_model(cfg, args, key, path):
    """The trained score model of section 3: eps prediction on ``path``, EMA weights."""
    net = nn.MLP(2, 2, width=64, depth=3, activation="silu", key=jr.fold_in(key, 1))
    opt = train.make_optimizer(2e-3, schedule="cosine", num_steps=cfg["heal_train"])
    res = _common.fit(
        args, _common.run_name(args, "heal_eps"), net, partial(losses.eps_loss, path=path),
        data.sampler("8gaussians"), optimizer=opt, key=jr.fold_in(key, 2),
        num_steps=cfg["heal_train"], batch_size=256, steps_per_call=min(500, cfg["heal_train"]),
    )  # fmt: skip
    return res.ema_model, res.wall_seconds


def self_healing(cfg, args, key, real):
    """W2 after a perturbation of std delta at t_p, finished by ODE / reverse SDE / PC."""
    mix, path = data.mixture("8gaussians"), paths.get_path("vp")
    model, train_seconds = heal_model(cfg, args, jr.fold_in(key, 10**6), path)
    score = paths.as_score(model, path, "eps")
    velocity = paths.as_vector_field(model, path, "eps")
    sde = sdes.reverse_sde(path, score)
    t1, n = path.t_max, len(real)
    entropy = data.entropy("8gaussians")
    finish = {
        "probability-flow ODE (Heun)": lambda x, k, t0, s: solve.sample_ode(
            velocity, x, t0=t0, t1=t1, solver="heun", steps=max(s // 2, 1)),
        "reverse SDE (Euler-Maruyama)": lambda x, k, t0, s: solve.sample_sde(
            sde, x, key=k, t0=t0, t1=t1, steps=s),
        "predictor-corrector (EM + 1 Langevin)": lambda x, k, t0, s: solve.predictor_corrector(
            sde, score, x, key=k, t0=t0, t1=t1, steps=max(s // 2, 1)),
    }  # fmt: skip
    rows = []
    for i, tp in enumerate(cfg["t_perturb"]):
        steps = 2 * max(int(round(cfg["heal_steps"] * (t1 - tp) / 2)), 1)  # even: equal NFE
        x_tp = groundtruth.marginal(mix, path, tp).sample(jr.fold_in(key, i), n)
        for j, delta in enumerate(cfg["deltas"]):
            z = jr.normal(jr.fold_in(key, 100 + 10 * i + j), x_tp.shape)
            x = x_tp + delta * z
            for name, fn in finish.items():
                sol = fn(x, jr.fold_in(key, 1000 + 10 * i + j), tp, steps)
                w2 = float(metrics.wasserstein(sol.x, real))
                xent = float(-jnp.mean(data.log_prob("8gaussians", sol.x))) - entropy
                rows.append(dict(sampler=name, t_perturb=tp, delta=delta, w2=w2, xent=xent,
                                 nfe=int(sol.nfe)))  # fmt: skip
    return rows, train_seconds


def plot_healing(rows, floor, out):
    """Rows: W2 and cross-entropy excess against t_p; one column per perturbation size."""
    deltas = sorted({r["delta"] for r in rows})
    fig, axes = plt.subplots(2, len(deltas), figsize=(3.6 * len(deltas), 6.6), squeeze=False)
    for j, d in enumerate(deltas):
        for i, key in enumerate(("w2", "xent")):
            rs = [r for r in rows if r["delta"] == d]
            _common.plot_by(axes[i, j], rs, "sampler", "t_perturb", key)
        axes[0, j].axhline(floor, color="k", ls=":", lw=1, label="W2 floor")
        axes[1, j].axhline(0.0, color="k", ls=":", lw=1)
        axes[0, j].set_title(f"perturbation std delta = {d:g}", fontsize=9)
        axes[1, j].set_xlabel("time of the perturbation t_p")
    axes[0, 0].set_ylabel("W2 to the data")
    axes[1, 0].set_ylabel("E_samples[-log p] - H(p) (nats)")
    axes[0, 0].legend(fontsize=6)
    _common.save(fig, out / "self_healing.png")


# ---------------------------------------------------------------------------------- report
def summary(m, cfg, args):
    lines = [
        f"# {STUDY}: EBMs by Langevin MCMC, the MCMC gradient, self-healing samplers",
        "",
        f"Seed {args.seed}, {'quick' if args.quick else 'full'} run, {m['total_seconds']:.0f} s "
        f"in all (2 shared CPU cores). EnergyMLP {cfg['depth']} x {cfg['width']} (SiLU), "
        f"plus |x|^2 / (2 * {cfg['base_std']:g}^2) (confining base), {cfg['steps']} Adam "
        f"steps (lr {cfg['lr']:g}, clip 1) of batch {cfg['batch']}, "
        f"persistent chains: replay buffer of {cfg['buffer']}, {cfg['k_train']} ULA steps of "
        f"h = {cfg['h_train']:g} per update, 5% restarts from uniform noise, energy regulariser "
        f"alpha = {cfg['alpha']:g}. Samples: {cfg['n']} fresh MALA chains from uniform noise on "
        f"[-{LIM}, {LIM}]^2, {cfg['mala_steps']} steps of h = {cfg['h_mala']:g}, on the EMA "
        f"energy. MMD^2: unbiased, RBF bandwidth {args.mmd_bandwidth or 'median'}; W2 exact. "
        "Floors: the same metric between independent real sets of the same size. Test NLL: "
        f"E(x) + log Z with Z by quadrature on a 120^2 grid over [-{LIM}, {LIM}]^2.",
        "",
        "## 1. Trained EBMs",
        "",
        *_common.table(
            "dataset | W2 | W2 floor | W2 / floor | MMD^2 | MMD^2 floor | MALA acceptance | "
            "test NLL | true NLL | outside box | train s",
            [
                f"{r['dataset']} | {r['w2']:.4f} | {r['floors']['w2']:.4f} | "
                f"{r['w2_over_floor']:.2f} | {r['mmd']:.2e} | {r['floors']['mmd']:.2e} | "
                f"{r['acceptance']:.2f} | {r['test_nll']:.3f} | {_common.opt(r.get('true_nll'))} | "
                f"{r['outside']:.3f} | {r['train_seconds']:.0f}"
                for r in m["ebm"]
            ],
            "lrrrrrrrrrr",
        ),
        "",
        f"Outside box: fraction of samples outside [-{LIM}, {LIM}]^2 (the data lie inside).",
        "",
    ]
    for r in m["ebm"]:
        ok = "met" if r["w2_over_floor"] <= 2 else "NOT met"
        lines.append(f"- {r['dataset']}: W2 within 2x of the floor: {ok}.")
    ab = [r for r in m["ebm"] if r["alpha"] != cfg["alpha"]]
    if ab:
        lines.append(
            f"- With the energy regulariser alpha (E(data)^2 + E(samples)^2) at "
            f"{ab[0]['alpha']:g}, the same run has {ab[0]['outside']:.1%} of its samples outside "
            "the box, trapped in low-energy wells beyond the data (beyond the plotted box), and "
            f"W2 {ab[0]['w2_over_floor']:.1f} x the floor: the term also pulls the (large) energy "
            "of far-out model samples towards 0."
        )
    g = m["gradient"]
    lines += [
        "",
        "## 2. The MCMC gradient (8gaussians energy, short-run chains from noise)",
        "",
        *_common.table(
            "chains | Langevin steps | gradient variance | seconds per gradient",
            _common.rows("{chains} | {steps} | {grad_var:.3e} | {seconds:.4f}", g),
            "rrrr",
        ),
        "",
    ]
    for k in sorted({r["steps"] for r in g}):
        rs = sorted((r for r in g if r["steps"] == k), key=lambda r: r["chains"])
        logs = np.log([[r["chains"], r["grad_var"]] for r in rs])
        slope = np.polyfit(logs[:, 0], logs[:, 1], 1)[0]
        lines.append(f"- K = {k}: variance ~ chains^{slope:.2f} (1/m would be -1).")
    h = m["self_healing"]
    lines += [
        "",
        f"## 3. Self-healing (a trained eps network on the VP path: MLP 3x64, "
        f"{m['heal_model']['steps']} steps)",
        "",
        f"Exact samples of p_(t_p) perturbed by N(0, delta^2 I) noise, finished to t_max. W2 to "
        f"{m['n_heal']} data points (floor {m['heal_floor']:.4f}; at this n the W2 of a good "
        "sampler is within the floor's noise) and the cross-entropy excess "
        "E_samples[-log p] - H(p) under the exact density (standard error about 0.02 nats; "
        "near 0 for the target, > 0 for spread-out samples).",
        "",
        *_common.table(
            "sampler | t_p | delta | W2 | cross-entropy excess | NFE",
            _common.rows(
                "{sampler} | {t_perturb:g} | {delta:g} | {w2:.4f} | {xent:+.3f} | {nfe}", h
            ),
            "lrrrrr",
        ),
        "",
    ]
    big = max(r["delta"] for r in h)
    for tp in sorted({r["t_perturb"] for r in h}):
        ode, sde, pc = [r for r in h if r["delta"] == big and r["t_perturb"] == tp]  # ODE, SDE, PC
        healed = "recover" if max(sde["xent"], pc["xent"]) < ode["xent"] else "do not recover"
        lines.append(
            f"- t_p = {tp:g}, delta = {big:g}: W2 ODE {ode['w2']:.3f}, SDE {sde['w2']:.3f}, PC "
            f"{pc['w2']:.3f}; cross-entropy excess ODE {ode['xent']:+.3f}, SDE "
            f"{sde['xent']:+.3f}, PC {pc['xent']:+.3f}: the stochastic samplers {healed} better "
            "than the ODE."
        )
    lines += ["", "Figures: `ebm_samples.png`, `mcmc_gradient.png`, `self_healing.png`, "
              "`losses.png`. Samples: `samples.npz`."]  # fmt: skip
    return lines


def main(argv=None):
    args = parse_args(argv)
    cfg, out = args.cfg, args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    k_ebm, k_grad, k_heal, k_real = jr.split(jr.key(args.seed), 4)
    rows, plots, models, histories = [], {}, {}, {}
    runs = [(name, name, cfg, i) for i, name in enumerate(args.datasets)]  # label, data, cfg, key
    if cfg["alpha_ablation"] is not None and "8gaussians" in args.datasets:
        i, ab = args.datasets.index("8gaussians"), {"alpha": cfg["alpha_ablation"]}
        runs.append((f"8gaussians, alpha = {ab['alpha']:g}", "8gaussians", cfg | ab, i))
    stage = _common.Stages(STUDY, len(runs) + 2)
    for label, name, c, i in runs:
        row, plots[label], histories[label], models[label] = stage(
            label, study_ebm, name, c, args, jr.fold_in(k_ebm, i), label
        )
        rows.append(row)
    grad_model = models.get("8gaussians", next(iter(models.values())))
    grad_rows = stage("MCMC gradient", gradient_cost, grad_model, cfg, k_grad)
    real = data.sample("8gaussians", k_real, cfg["n"])
    heal_floor = _common.floors(
        data.sampler("8gaussians"), cfg["n"], key=jr.fold_in(k_real, 1), bandwidth=0.5,
        repeats=cfg["floor_repeats"],
    )["w2"]  # fmt: skip
    heal_rows, heal_train_seconds = stage("self-healing", self_healing, cfg, args, k_heal, real)
    stage.close()
    plot_ebms(plots, out)
    plot_gradient(grad_rows, out)
    plot_healing(heal_rows, heal_floor, out)
    _common.plot_losses(histories, out / "losses.png", "EBM surrogate (not a likelihood)")
    np.savez_compressed(
        out / "samples.npz", **{n: plots[n]["x"].astype(np.float32) for n in args.datasets},
        **{f"{n}_real": plots[n]["real"].astype(np.float32) for n in args.datasets},
    )  # fmt: skip
    m = dict(
        study=STUDY, seed=args.seed, quick=args.quick, config=cfg, ebm=rows, gradient=grad_rows,
        self_healing=heal_rows, heal_floor=heal_floor, n_heal=cfg["n"],
        heal_model=dict(kind="eps", path="vp", net="MLP 3 x 64 silu", steps=cfg["heal_train"],
                        train_seconds=heal_train_seconds),
        total_seconds=time.perf_counter() - t_start,
    )  # fmt: skip
    _common.write_report(out, m, summary(m, cfg, args))
    print(f"total {m['total_seconds']:.0f} s; wrote {out}")


if __name__ == "__main__":
    _common.run_interruptible(main)
