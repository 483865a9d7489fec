"""Pieces shared by the experiment scripts: common flags, floors, scoring, Ctrl-C handling.

Scripts import this module as ``_common`` (``python experiments/x.py`` puts ``experiments/`` on
``sys.path``). Only code whose logic is the same in several scripts lives here; every function
reproduces the numbers the scripts produced before it was shared.
"""

import argparse
import pathlib
import sys

import jax.random as jr
import numpy as np

from diffeqgen import metrics, train

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
