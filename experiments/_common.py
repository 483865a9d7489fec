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

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from diffeqgen import cnf, data, images, metrics, paths, plotting, solve, train  # noqa: E402

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


# --- images (image_unet): data flags, FD to the test set, sampler runs, grids, bits/dim ----------


def log_since(t_start, msg, width=5):
    """Print ``msg`` after the seconds elapsed since ``t_start`` (``time.perf_counter``)."""
    print(f"[{time.perf_counter() - t_start:{width}.0f} s] {msg}", flush=True)


def add_image_data(p):
    """Add ``--data`` (MNIST as IDX or Keras-style .npz) and ``--labels`` (IDX labels)."""
    p.add_argument(
        "--data",
        type=pathlib.Path,
        default=None,
        help="MNIST: an IDX image file (with --labels) or a Keras-style .npz; default the 8x8 "
        "scikit-learn digits",
    )
    p.add_argument("--labels", type=pathlib.Path, default=None, help="IDX label file for --data")


def check_image_data(p, args):
    """Fail in argparse (``p.error``) on ``--labels`` without ``--data`` or a missing file."""
    if args.labels is not None and args.data is None:
        p.error("--labels needs --data (the IDX image file it labels)")
    for name in ("data", "labels"):
        f = getattr(args, name)
        if f is not None and not f.is_file():
            p.error(f"--{name}: no such file {str(f)!r}")


def load_images(path=None, labels=None):
    """``(x_train, y_train, x_test, y_test, name)``: digits, or MNIST split with a fixed seed.

    ``path`` None gives ``data.digits``; otherwise MNIST through ``data.load_mnist`` (IDX
    images with the IDX ``labels`` file, or an .npz). Without a test split in the file a fixed
    random sixth of the images (seed 0) is held out as the test set.
    """
    if path is None:
        return (*data.digits("train"), *data.digits("test"), "sklearn 8x8 digits")
    if path.suffix == ".npz":
        x, y = data.load_mnist(path, split="train")
        try:
            xt, yt = data.load_mnist(path, split="test")
        except ValueError:
            xt = yt = None
    else:
        x, y = data.load_mnist(path, labels)
        xt = yt = None
    if y is None:
        raise SystemExit("error: --data needs labels (--labels for IDX, y_train in an .npz)")
    if xt is None or yt is None:  # hold out a fixed-seed random sixth as the test set
        order = np.random.default_rng(0).permutation(len(x))
        cut = len(x) // 6
        x, y, xt, yt = x[order[cut:]], y[order[cut:]], x[order[:cut]], y[order[:cut]]
    return x, y, xt, yt, f"MNIST ({path.name})"


class FDScorer:
    """FD to a reference half of the test set, beside the floor, over random halvings.

    Repeat r splits the test images into disjoint halves A_r, B_r of size m (at most
    ``max_ref``); the floor is FD(A_r, B_r) and a generated set's score FD(G_r, B_r) with G_r m
    of its images (a random subset), averaged over the repeats. Features are the classifier's
    (``images.features``); FD is ``metrics.frechet_distance``.
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


class LinearScale(eqx.Module):
    """sigma_t = a (1 - t): vanishes at the data end, where the score grows like 1 / sigma(t)."""

    a: jax.Array

    def __call__(self, t):
        """sigma_t at scalar t."""
        return self.a * (1.0 - t)


def class_histogram(classifier, x, num_classes):
    """Class histogram of images under the classifier: fractions, entropy, smallest share."""
    h = images.class_histogram(images.predict(classifier, np.asarray(x)), num_classes)
    return dict(
        fractions=[float(v) for v in h],
        entropy=images.histogram_entropy(h),
        min_share=float(h.min() * num_classes),
    )


def training_row(res):
    """Seconds, compile seconds, steps/s and the mean loss of the last 100 steps of a fit."""
    return dict(
        seconds=res.wall_seconds,
        compile_seconds=res.compile_seconds,
        steps_per_second=res.steps_per_second,
        final_loss=float(np.mean(res.history["loss"][-100:])),
    )


def run_samplers(samplers, x0, key, score, t_start, label=""):
    """Run each sampler ``(x0, key) -> Solution``: rows ``(solver, nfe, fd)`` and the samples.

    ``score`` maps samples to their FD (an :class:`FDScorer`); each row is logged.
    """
    rows, samples = [], {}
    for name, fn in samplers.items():
        sol = fn(x0, key)
        samples[name] = np.asarray(sol.x)
        rows.append(dict(solver=name, nfe=int(sol.nfe), fd=score(sol.x)))
        log_since(t_start, f"{label} {name}: NFE {rows[-1]['nfe']}, FD {rows[-1]['fd']:.2f}")
    return rows, samples


def flat_draw(draw, key, shape):
    """``draw(key, shape)`` (``jr.normal``, ``jr.uniform``) drawn flat and reshaped.

    The same numbers (JAX's Threefry bits depend only on the row-major index), but XLA compiles
    a flat draw about three times faster than a 4-d one on CPU (0.2 s against 0.65 s).
    """
    return draw(key, (math.prod(shape),)).reshape(shape)


def sample_in_chunks(sampler, n, shape, key, offset=100):
    """``n`` samples of ``sampler(x0, key)`` in chunks of ``shape`` noise (no new compilation).

    Chunk ``i`` uses the key ``jr.fold_in(key, offset + i)`` for its noise and the sampler.
    """
    chunks = []
    for i in range(-(-n // shape[0])):
        k_i = jr.fold_in(key, offset + i)
        chunks.append(np.asarray(sampler(flat_draw(jr.normal, k_i, shape), k_i).x))
    return np.concatenate(chunks)[:n]


MNIST_LEVELS = 256
"""MNIST pixels 0..255 become ``v / 127.5 - 1`` in ``data.load_mnist``: 256 levels in [-1, 1]."""


def image_levels(path=None):
    """Grey levels of the images ``load_images(path)`` gives, equally spaced over [-1, 1].

    17 for the 8x8 digits (``v / 8 - 1``, ``data.images.DIGIT_LEVELS``), 256 for MNIST
    (``v / 127.5 - 1``, any uint8 image file ``data.load_mnist`` reads).
    """
    return data.images.DIGIT_LEVELS if path is None else MNIST_LEVELS


def dequantisation(num_levels):
    """``(bin width, scale)`` of ``num_levels`` equally spaced levels from -1 to 1.

    The levels are ``-1 + k w`` with ``w = 2 / (num_levels - 1)``; uniform dequantisation
    within each level's bin ``[-1 + (k - 1/2) w, -1 + (k + 1/2) w)`` fills an interval of
    width ``scale = num_levels * w``, the ``scale`` of ``cnf.bits_per_dim``.
    """
    w = 2.0 / (num_levels - 1)
    return w, num_levels * w


def image_bits_per_dim(field, x_test, n, n_exact, key, num_levels, steps=None):
    """Bits/dim of dequantised test images: Hutchinson on ``n``, exact trace on ``n_exact``.

    The images take ``num_levels`` equally spaced levels from -1 to 1 (17 for the digits, 256
    for MNIST: ``image_levels``); each is dequantised uniformly within its bin of width
    ``2 / (num_levels - 1)`` and scored by ``cnf.log_prob`` of the flow ``field`` (adaptive
    dopri5, rtol = atol = 1e-4; with ``steps``, that many Euler steps, which compile faster:
    one stage, no step-size control), then ``cnf.bits_per_dim`` with ``num_levels`` levels over
    the dequantised interval (``dequantisation``). Raises ValueError if the images are not on
    those levels.
    """
    w, scale = dequantisation(num_levels)
    k_u, k_h, _ = jr.split(key, 3)
    n = min(n, len(x_test))
    x = np.asarray(x_test[:n], np.float64)
    k = (x + 1.0) / w
    on_grid = np.all(np.abs(k - np.round(k)) < 1e-3)
    if not (on_grid and k.min() > -0.5 and k.max() < num_levels - 0.5):
        raise ValueError(
            f"x_test: expected images on the {num_levels} levels -1 + k * {w:.6g} (k = 0.."
            f"{num_levels - 1}), got values off that grid in [{x.min():.4g}, {x.max():.4g}]"
        )
    x = jnp.asarray(x_test[:n])
    x = x + (flat_draw(jr.uniform, k_u, x.shape) - 0.5) * w
    dim = int(np.prod(x.shape[1:]))

    def bpd(lp):
        return np.asarray(cnf.bits_per_dim(lp, dim, num_levels=num_levels, scale=scale))

    adaptive = dict(solver="dopri5", rtol=1e-4, atol=1e-4)  # as before log_prob took bosh3
    kw = adaptive if steps is None else dict(solver="euler", steps=steps)
    lp_h, nfe_h = cnf.log_prob(field, x, trace="hutchinson", key=k_h, **kw)
    lp_e, nfe_e = cnf.log_prob(field, x[:n_exact], trace="exact", **kw)
    b_h, b_e = bpd(lp_h), bpd(lp_e)
    return dict(
        n=n,
        num_levels=num_levels,
        bin_width=w,
        hutchinson=float(b_h.mean()),
        hutchinson_se=float(b_h.std() / np.sqrt(n)),
        hutchinson_nfe=float(nfe_h),
        n_exact=n_exact,
        exact_few=[float(v) for v in b_e],
        hutchinson_few=[float(v) for v in b_h[:n_exact]],
        exact_nfe=float(nfe_e),
    )


def corruption_figure(x, key, out, path_names=("linear", "cosine"), ts=(0.0, 0.25, 0.5, 0.75, 1.0)):
    """The same images ``x`` (n, 1, h, w) on each path (rows) at the times ``ts`` (columns)."""
    eps = np.asarray(flat_draw(jr.normal, key, x.shape))
    fig, axes = plt.subplots(
        len(path_names) * len(x), len(ts), figsize=(1.3 * len(ts), 1.3 * len(path_names) * len(x))
    )
    for p, name in enumerate(path_names):
        path = paths.get_path(name)
        for i in range(len(x)):
            for j, t in enumerate(ts):
                a, s = float(path.alpha(t)), float(path.sigma(t))
                ax = axes[p * len(x) + i, j]
                ax.imshow((a * x[i] + s * eps[i])[0], cmap="gray_r", vmin=-1.5, vmax=1.5)
                ax.set(xticks=[], yticks=[])
                if i == 0:
                    ax.set_title(f"{name}, t = {t:g}", fontsize=7)
    save(fig, out, dpi=90)


def tile(x, rows, cols):
    """Images (n, 1, h, w) -> one (rows * h, cols * w) mosaic with 1-pixel gaps (NaN)."""
    x = np.asarray(x)[: rows * cols, 0]
    h, w = x.shape[1:]
    canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for k, img in enumerate(x):
        r, c = divmod(k, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    return canvas


def grids_figure(sets, out, rows=8, cols=8):
    """One panel per ``title -> images`` of ``sets``: a ``rows x cols`` mosaic in [-1, 1]."""
    fig, axes = plt.subplots(1, len(sets), figsize=(2.4 * len(sets), 2.7), squeeze=False)
    cmap = plt.get_cmap("gray_r").with_extremes(bad="white")
    for ax, (title, x) in zip(axes[0], sets.items(), strict=True):
        ax.imshow(tile(x, rows, cols), cmap=cmap, vmin=-1, vmax=1)
        ax.set(xticks=[], yticks=[])
        ax.set_title(title, fontsize=7)
    save(fig, out, dpi=110)


def flow_ode_samplers(field, euler_steps, prefix=""):
    """Flow-ODE samplers ``(x0, key) -> Solution``: Euler with each step count, adaptive Tsit5.

    Keys ``prefix + "euler <n>"`` and ``prefix + "tsit5 (rtol = atol = 1e-3)"``; ``key`` is
    unused (ODEs).
    """
    out = {
        f"{prefix}euler {n}": lambda x0, key, n=n: solve.sample_ode(
            field, x0, solver="euler", steps=n
        )
        for n in euler_steps
    }
    out[f"{prefix}tsit5 (rtol = atol = 1e-3)"] = lambda x0, key: solve.sample_ode(
        field, x0, rtol=1e-3, atol=1e-3
    )
    return out


def image_curves_figure(m, out):
    """FD against the SDE scale a, FD against NFE per path, accuracy and FD against w.

    ``m`` is the image study's metrics dict (``fd_floor``, ``sde``, ``schedules``,
    ``conditional.guidance``).
    """
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
    save(fig, out, dpi=110)
