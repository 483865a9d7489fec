"""Pieces shared by the experiment scripts: flags, floors, scoring, tables, figures, Ctrl-C.

Scripts import this module as ``_common`` (``python experiments/x.py`` puts ``experiments/`` on
``sys.path``); importing it selects Matplotlib's non-interactive Agg backend. Only code whose
logic is the same in several scripts lives here; every function reproduces the numbers the scripts
produced before it was shared. Everything here uses the public API of diffeqgen only.
"""

import argparse
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from diffeqgen import metrics, plotting, train  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_parser(doc, study):
    """Argument parser with the flags every trained study has.

    Args:
        doc: the script's module docstring; its first paragraph is the description.
        study: the study's name, giving the defaults ``results/<study>`` and
            ``checkpoints/<study>`` under the repository root.

    Returns:
        An ``argparse.ArgumentParser`` (defaults shown in ``--help``) with ``--quick``,
        ``--seed``, ``--out``, ``--checkpoints`` and ``--resume``.
    """
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny run (< 1 min) for the tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / study)
    p.add_argument(
        "--checkpoints",
        type=pathlib.Path,
        default=ROOT / "checkpoints" / study,
        help="folder for training checkpoints (gitignored)",
    )
    p.add_argument("--resume", action="store_true", help="resume training from the checkpoints")
    return p


# --- flag types: a bad value fails in argparse ("error: argument --x: ..."), before any work ---


def positive(name, *, allow_zero=False):
    """Argparse ``type``: a finite float > 0 (>= 0 with ``allow_zero``); errors name ``name``."""

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not (math.isfinite(v) and (v >= 0 if allow_zero else v > 0)):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"{name} must be a finite number {bound}, got {v!r}")
        return v

    return parse


def integer(name, *, minimum=1):
    """Argparse ``type``: an integer >= ``minimum``; errors name ``name``."""

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(
                f"{name} must be an integer >= {minimum}, got {text!r}"
            )
        return v

    return parse


def choices(name, allowed):
    """Argparse ``type``: a comma-separated list of names from ``allowed`` (at least one)."""

    def parse(text):
        out = [c.strip() for c in text.split(",") if c.strip()]
        if not out:
            raise argparse.ArgumentTypeError(f"--{name}s must name at least one {name}")
        for c in out:
            if c not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown {name} {c!r}; expected one of: {', '.join(map(str, allowed))}"
                )
        return out

    return parse


def choice(name, allowed):
    """Argparse ``type``: one name from ``allowed``."""
    many = choices(name, allowed)

    def parse(text):
        out = many(text)
        if len(out) != 1:
            raise argparse.ArgumentTypeError(f"{name} must be one name, got {text!r}")
        return out[0]

    return parse


def command(argv=None):
    """The command line of this run, for the report: the script's name and its arguments."""
    return " ".join([pathlib.Path(sys.argv[0]).name, *(argv or sys.argv[1:])])


def config(args, settings, **overrides):
    """The study's settings: ``settings`` maps name -> ``(full, quick)``; pick by ``--quick``.

    Every override that is not None replaces its setting.
    """
    cfg = {k: v[1] if args.quick else v[0] for k, v in settings.items()}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def add_mmd_bandwidth(p, default=0.5):
    """Add ``--mmd-bandwidth`` (RBF bandwidth of the MMD in data units; 0 = median heuristic)."""
    p.add_argument(
        "--mmd-bandwidth",
        type=positive("mmd_bandwidth", allow_zero=True),
        default=default,
        help="RBF bandwidth of the MMD, in data units (0 = median heuristic)",
    )


def run_name(args, stem):
    """Checkpoint file name of one run: ``<quick|full>_<stem>_s<seed>.eqx``."""
    return f"{'quick' if args.quick else 'full'}_{stem}_s{args.seed}.eqx"


def fit(args, name, model, loss_fn, data, **kwargs):
    """``diffeqgen.train.fit`` with a checkpoint in ``args.checkpoints``, resumed on ``--resume``.

    Args:
        args: parsed flags of :func:`make_parser` (``checkpoints`` and ``resume`` are used).
        name: file name of the checkpoint inside ``args.checkpoints`` (created if missing).
        model: as in ``train.fit``.
        loss_fn: as in ``train.fit``.
        data: as in ``train.fit``.
        **kwargs: the other keywords of ``train.fit`` (optimizer, key, num_steps, ...).

    Returns:
        The ``TrainResult`` of ``train.fit``.
    """
    args.checkpoints.mkdir(parents=True, exist_ok=True)
    return train.fit(
        model, loss_fn, data, checkpoint=args.checkpoints / name, resume=args.resume, **kwargs
    )


def score(x, real, bandwidth):
    """Exact W2 and unbiased MMD^2 (fixed RBF bandwidth) of a sample set against real data.

    Args:
        x: generated samples, shape ``(n, d)``.
        real: held-out real samples, shape ``(n, d)`` (equal size, for the exact W2).
        bandwidth: RBF bandwidth of the MMD.

    Returns:
        ``(w2, mmd)`` as Python floats.
    """
    return float(metrics.wasserstein(x, real)), float(metrics.mmd(x, real, bandwidth).value)


def floors(sampler, n, *, key, bandwidth, repeats):
    """W2 and MMD^2 floors (``metrics.floor_stats``): independent real sets of ``n`` points.

    W2 and MMD use the two halves of ``jr.split(key)``; repeat ``r`` of each uses
    ``jr.fold_in(half, r)`` (as ``metrics.floor_stats`` does).

    Args:
        sampler: ``(key, n) -> (n, d)`` sampler of the real distribution.
        n: set size, the size of the sample sets being scored.
        key: PRNG key.
        bandwidth: RBF bandwidth of the MMD.
        repeats: number of independent pairs of real sets (>= 2).

    Returns:
        Dict with ``w2``, ``mmd`` (means), ``w2_sd``, ``mmd_sd`` (population standard
        deviations, ddof = 0, as the published results use; ``FloorStats.std`` has ddof = 1)
        and ``repeats``.
    """
    k_w2, k_mmd = jr.split(key)
    w2 = metrics.floor_stats(metrics.wasserstein, sampler, n, key=k_w2, repeats=repeats)
    mmd = metrics.floor_stats(
        metrics.mmd, sampler, n, key=k_mmd, repeats=repeats, bandwidth=bandwidth
    )
    return {
        "w2": w2.mean,
        "w2_sd": float(np.std(w2.values)),
        "mmd": mmd.mean,
        "mmd_sd": float(np.std(mmd.values)),
        "repeats": repeats,
    }


def floors_shared_keys(sampler, n, *, key, bandwidth, repeats):
    """W2 and MMD^2 floors where each repeat scores W2 and MMD on the same pair of real sets.

    Repeat ``r`` draws its pair with ``jr.split(key, repeats)[r]`` for both metrics (the scheme
    of flow_matching_2d and cat_to_dog; ``metrics.floor_stats`` folds keys in instead, so it
    would draw other sets), and ``repeats = 1`` is allowed (quick mode; its spread is then 0).

    Args:
        sampler: ``(key, n) -> (n, d)`` sampler of the real distribution.
        n: set size, the size of the sample sets being scored.
        key: PRNG key.
        bandwidth: RBF bandwidth of the MMD.
        repeats: number of independent pairs of real sets (>= 1).

    Returns:
        Dict with ``w2``, ``mmd`` (means), ``w2_std``, ``mmd_std`` (population standard
        deviations, ddof = 0) and ``reps``.
    """
    keys = jr.split(key, repeats)
    w2 = [metrics.floor(metrics.wasserstein, sampler, n, key=k) for k in keys]
    mmd = [
        float(metrics.floor(metrics.mmd, sampler, n, key=k, bandwidth=bandwidth).value)
        for k in keys
    ]
    return dict(
        w2=float(np.mean(w2)),
        w2_std=float(np.std(w2)),
        mmd=float(np.mean(mmd)),
        mmd_std=float(np.std(mmd)),
        reps=repeats,
    )


def reference(sampler, real, *, key, repeats):
    """MMD bandwidth (median heuristic on ``real``) and floors at ``len(real)``, printed.

    Floors follow :func:`floors_shared_keys` (the scheme of flow_matching_2d and cat_to_dog).

    Returns:
        ``(bandwidth, floors)``.
    """
    n = len(real)
    bandwidth = metrics.median_bandwidth(real, real)
    floors = floors_shared_keys(sampler, n, key=key, bandwidth=bandwidth, repeats=repeats)
    print(
        f"floors at n = {n}: W2 {floors['w2']:.4f}, MMD^2 {floors['mmd']:.2e} "
        f"(bandwidth {bandwidth:.3f})"
    )
    return bandwidth, floors


def scored(x, real, bandwidth, floors):
    """``dict(w2, w2_over_floor, mmd)`` of samples ``x`` (:func:`score`) beside the W2 floor."""
    w2, mmd = score(x, real, bandwidth)
    return dict(w2=w2, w2_over_floor=w2 / floors["w2"], mmd=mmd)


def nfe_to(rows, bound):
    """Smallest NFE among ``rows`` whose W2 is at most ``bound`` (None if none is)."""
    return min((r["nfe"] for r in rows if r["w2"] <= bound), default=None)


def line(label, row, floors):
    """One printed line: a row's NFE, W2 and MMD^2, each beside its floor."""
    return (
        f"{label} NFE={row['nfe']:>4} W2={row['w2']:.4f} ({row['w2'] / floors['w2']:.2f}x floor "
        f"{floors['w2']:.4f}) MMD^2={row['mmd']:.2e} (floor {floors['mmd']:.2e})"
    )


def timed(fn, *args, repeat=False, **kwargs):
    """Run ``fn(*args, **kwargs)`` to completion: ``(result, warm seconds, first-call seconds)``.

    With ``repeat`` the call runs twice (compile, then warm); otherwise once and that time is
    reported for both.
    """
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    first = time.perf_counter() - t
    if not repeat:
        return out, first, first
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - t, first


class Stages:
    """A progress bar over a study's stages that records each stage's wall time.

    ``stage(name, fn, *args)`` runs ``fn(*args)``, stores its seconds in ``timings[name]`` and
    advances the bar (labelled ``desc``, ``total`` stages); ``stage.close()`` ends the bar.
    ``timings`` is a dict the caller keeps (a new one if not given).
    """

    def __init__(self, desc, total, timings=None):
        self.bar, self.timings = tqdm(total=total, desc=desc), {} if timings is None else timings

    def __call__(self, name, fn, *args):
        self.bar.set_postfix_str(name)
        t = time.perf_counter()
        result = fn(*args)
        self.timings[name] = time.perf_counter() - t
        self.bar.update()
        return result

    def close(self):
        self.bar.close()


def known(fn, *args):
    """``fn(*args)``, or None where it raises ``ValueError``.

    For closed forms that a dataset may lack (``diffeqgen.data.log_prob``, ``data.entropy``).
    """
    try:
        return fn(*args)
    except ValueError:
        return None


def warm_runs(fn, inputs):
    """``fn(x)`` for every ``x`` in ``inputs``, after one compiling call on the first.

    Returns:
        ``(results, seconds)``: the results as NumPy arrays (in order) and the median warm
        wall time of one call.
    """
    jax.block_until_ready(fn(inputs[0]))  # compile
    results, times = [], []
    for x in inputs:
        t = time.perf_counter()
        results.append(np.asarray(fn(x)))
        times.append(time.perf_counter() - t)
    return results, float(np.median(times))


# --- reports: Markdown tables, JSON, figures -----------------------------------------------------


def opt(value, spec=".3f", none="-"):
    """``format(value, spec)``, or ``none`` for a missing (None) value, for tables and text."""
    return none if value is None else format(value, spec)


def table(header, rows, align=None):
    """Lines of a Markdown table from ``" | "``-separated strings: the header, then each row.

    ``align`` has one letter per column, ``l`` (``---``) or ``r`` (``---:``); default all ``l``.
    """
    align = align or "l" * len(header.split(" | "))
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return [f"| {header} |", rule, *(f"| {r} |" for r in rows)]


def rows(fmt, items):
    """Table rows: ``fmt.format(**item)`` for each dict in ``items`` (see :func:`table`)."""
    return [fmt.format(**item) for item in items]


def write_report(out, m, lines):
    """Write ``metrics.json`` (``m``, indented) and ``summary.md`` (``lines``) into ``out``.

    NumPy scalars in ``m`` are written as floats.
    """
    (out / "metrics.json").write_text(json.dumps(m, indent=2, default=float))
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def save(fig, file, dpi=100, **kw):
    """``tight_layout`` (keywords ``kw``), save at ``dpi`` (default 100) and close."""
    fig.tight_layout(**kw)
    fig.savefig(file, dpi=dpi)
    plt.close(fig)


def grid(lim, n):
    """An ``n x n`` grid on ``[-lim, lim]^2``: ``(gx, gy, points (n^2, 2))``, float32."""
    g = np.linspace(-lim, lim, n, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    return gx, gy, jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1))


def cells(lim, n):
    """Cell centres of an ``n x n`` grid of cells on ``[-lim, lim]^2``: ``(points, centres)``.

    ``points`` is ``(n^2, 2)`` float32, rows running over x fastest (row = y, col = x, as
    ``plotting.heatmap`` draws them); ``centres`` the ``n`` 1D centres (float64).
    """
    edges = np.linspace(-lim, lim, n + 1)
    c = 0.5 * (edges[1:] + edges[:-1])
    gx, gy = np.meshgrid(c, c)
    return np.stack([gx.ravel(), gy.ravel()], -1).astype(np.float32), c


def field_on(fn, t, points):
    """``fn(t, x, None)`` at every row of ``points``, as a NumPy array."""
    return np.asarray(jax.vmap(lambda x: fn(t, x, None))(points))


def plot_by(ax, rows, group, x, y, fmt="o-", label="{}"):
    """One line per value of ``row[group]`` (first-seen order): ``row[y]`` against ``row[x]``.

    Each line's legend label is ``label.format(value)``.
    """
    for g in dict.fromkeys(r[group] for r in rows):
        rs = [r for r in rows if r[group] == g]
        ax.plot([r[x] for r in rs], [r[y] for r in rs], fmt, label=label.format(g))


def plot_quality(curves, floors, file, *, xlabel, w2_label):
    """W2 and MMD^2 against NFE (log x), one line per curve, each panel beside its floor.

    ``curves`` is a list of ``(label, rows, fmt, style)``: rows with ``nfe``, ``w2`` and ``mmd``.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for metric, ax in zip(("w2", "mmd"), axes, strict=True):
        for label, rs, fmt, style in curves:
            ax.plot([r["nfe"] for r in rs], [r[metric] for r in rs], fmt, label=label, **style)
        ax.axhline(floors[metric], color="k", ls=":", lw=1, label="floor")
        ax.set_xscale("log")
        if metric == "w2":
            ax.set_yscale("log")
        else:  # the unbiased MMD^2 estimate can be negative
            ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel({"w2": w2_label, "mmd": "MMD^2 (fixed bandwidth)"}[metric])
        ax.legend(fontsize=7)
    save(fig, file)


def plot_losses(histories, file, ylabel, *, yscale="linear", fontsize=7, **curve_kw):
    """Training curves against the step, one ``plotting.loss_curve`` per named history.

    ``histories`` maps a label to a ``TrainResult.history``; ``curve_kw`` go to every
    ``loss_curve`` (``window``, ``val_fmt``, ...). Saved to ``file`` by :func:`save`.
    """
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, h in histories.items():
        plotting.loss_curve(ax, h, label=name, **curve_kw)
    ax.set_yscale(yscale)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=fontsize)
    save(fig, file)


def run_interruptible(main):
    """Call ``main()``; on Ctrl-C say how to resume from the checkpoints and exit with 130."""
    try:
        main()
    except KeyboardInterrupt:
        print(
            "\ninterrupted: the last checkpoint is kept (see --checkpoints); rerun with --resume "
            "to continue training from it",
            file=sys.stderr,
        )
        sys.exit(130)
