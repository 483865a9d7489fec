"""diffeqgen.plotting: small Matplotlib helpers for 2D point sets, fields and training curves.

Every helper draws on an ``ax`` the caller owns (or returns a new Figure) and leaves styling of the
figure as a whole to the caller. Matplotlib is imported lazily, only by the helpers that need it.
"""

import numpy as np

__all__ = [
    "scatter",
    "hist2d",
    "density_heatmap",
    "scatter_grid",
    "heatmap",
    "trajectories",
    "loss_curve",
    "error_vs_nfe",
    "hutchinson",
    "running_mean",
    "ema",
]


# --- 2D point sets and densities (data helper) ------------------------------------------------


def _points2d(name: str, x) -> np.ndarray:
    """``x`` as a NumPy array of 2D points ``(n, 2)``, or ``ValueError`` naming its shape."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"{name} must be 2D points of shape (n, 2), got shape {x.shape}")
    return x


def _square_axes(ax, lim: float, title: str | None) -> None:
    """Equal aspect, limits ``[-lim, lim]^2``, no ticks, optional title."""
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)


def scatter(
    ax,
    x,
    *,
    lim: float = 4.0,
    s: float | int = 1.0,
    alpha: float = 0.5,
    color=None,
    title: str | None = None,
):
    """Scatter 2D points ``x (n, 2)`` on ``ax`` with equal aspect in ``[-lim, lim]^2``."""
    x = _points2d("x", x)
    ax.scatter(x[:, 0], x[:, 1], s=s, alpha=alpha, color=color, linewidths=0, rasterized=True)
    _square_axes(ax, lim, title)
    return ax


def hist2d(
    ax, x, *, lim: float = 4.0, bins: int = 100, cmap: str = "viridis", title: str | None = None
):
    """2D histogram of points ``x (n, 2)`` on ``ax`` over ``[-lim, lim]^2``."""
    x = _points2d("x", x)
    ax.hist2d(
        x[:, 0], x[:, 1], bins=bins, range=[[-lim, lim], [-lim, lim]], cmap=cmap, rasterized=True
    )
    _square_axes(ax, lim, title)
    return ax


def density_heatmap(
    ax,
    log_prob_fn,
    *,
    lim: float = 4.0,
    n_grid: int = 200,
    cmap: str = "viridis",
    title: str | None = None,
):
    """Heatmap of ``exp(log_prob_fn(points))`` on an ``n_grid^2`` grid over ``[-lim, lim]^2``."""
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 2:
        raise ValueError(f"n_grid must be an integer >= 2, got {n_grid!r}")
    g = np.linspace(-lim, lim, n_grid, dtype=np.float32)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], axis=-1)
    dens = np.exp(np.asarray(log_prob_fn(pts))).reshape(n_grid, n_grid)
    ax.imshow(
        dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap=cmap, interpolation="nearest"
    )
    _square_axes(ax, lim, title)
    return ax


def heatmap(ax, values, *, lim: float = 4.0, title: str | None = None, **imshow_kw):
    """Show ``values`` of an ``m x m`` grid on ``[-lim, lim]^2`` (row = y, as ``np.meshgrid``).

    ``values`` has shape ``(m, m)`` or ``(m * m,)`` (flattened row-major, e.g. a function of the
    grid points ``np.stack([gx.ravel(), gy.ravel()], -1)``); ``imshow_kw`` go to ``ax.imshow``
    (``cmap``, ``vmin``, ``vmax``, ...). Returns the image (for a colorbar).
    """
    values = np.asarray(values)
    m = int(round(np.sqrt(values.size)))
    if m * m != values.size:
        raise ValueError(f"values must hold a square grid, got {values.size} values")
    im = ax.imshow(values.reshape(m, m), origin="lower", extent=(-lim, lim, -lim, lim), **imshow_kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    return im


def scatter_grid(
    sets, *, ncols: int = 5, lim: float = 4.0, kind: str = "scatter", panel_size: float = 2.2, **kw
):
    """One figure with a panel per named 2D set: ``sets`` maps title -> points ``(n, 2)``.

    ``kind`` is ``"scatter"`` or ``"hist"``; extra keywords go to ``scatter``/``hist2d``.
    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if kind not in ("scatter", "hist"):
        raise ValueError(f"unknown kind {kind!r}; expected one of: scatter, hist")
    if not hasattr(sets, "items") or len(sets) == 0:
        raise ValueError(f"sets must be a non-empty dict title -> points (n, 2), got {sets!r}")
    draw = {"scatter": scatter, "hist": hist2d}[kind]
    nrows = -(-len(sets) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows), squeeze=False
    )
    for ax, (name, x) in zip(axes.ravel(), sets.items(), strict=False):
        draw(ax, x, lim=lim, title=name, **kw)
    for ax in axes.ravel()[len(sets) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


# --- trajectories and training curves -----------------------------------------------------------


def trajectories(
    ax,
    xs,
    *,
    lim: float = 4.0,
    title: str | None = None,
    start_label: str = "t = 0",
    end_label: str = "t = 1",
    lw: float = 0.5,
    alpha: float = 0.5,
    s: float | int = 4.0,
):
    """Draw 2D trajectories ``xs (T, n, 2)`` (e.g. ``Solution.xs``) as grey lines.

    The start points ``xs[0]`` are drawn in blue (C0) and the end points ``xs[-1]`` in red (C3),
    labelled ``start_label`` and ``end_label`` (legend in the lower right).
    """
    xs = np.asarray(xs)
    if xs.ndim != 3 or xs.shape[-1] != 2:
        raise ValueError(f"xs must have shape (T, n, 2), got shape {xs.shape}")
    ax.plot(xs[:, :, 0], xs[:, :, 1], lw=lw, alpha=alpha, color="0.35", rasterized=True)
    ax.scatter(xs[0, :, 0], xs[0, :, 1], s=s, color="C0", label=start_label, zorder=3)
    ax.scatter(xs[-1, :, 0], xs[-1, :, 1], s=s, color="C3", label=end_label, zorder=3)
    _square_axes(ax, lim, title)
    ax.legend(fontsize=7, loc="lower right")
    return ax


def running_mean(x, window: int) -> np.ndarray:
    """Means of ``window`` consecutive values of ``x`` (length ``len(x) - window + 1``)."""
    if not (isinstance(window, int | np.integer) and window >= 1):
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    x = np.asarray(x, np.float64)
    return np.convolve(x, np.ones(window) / window, mode="valid")


def ema(x, alpha: float) -> np.ndarray:
    """Exponential moving average ``s_k = (1 - alpha) s_{k-1} + alpha x_k`` with ``s_{-1} = x_0``.

    For smoothing per-step training losses (``alpha = 0.01`` averages over about 100 steps).
    Returns a float64 array of the same length as ``x`` (empty for an empty ``x``).
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    acc = x[0] if len(x) else 0.0
    for i, v in enumerate(x):
        acc = (1 - alpha) * acc + alpha * v
        out[i] = acc
    return out


def loss_curve(
    ax,
    history,
    *,
    label: str | None = None,
    window: int | None = None,
    val_label: str | None = None,
    val_fmt: str = "o--",
):
    """Plot a training history (``train.fit(...).history``) on ``ax``.

    The per-step train loss ``history["loss"]`` is drawn as a running mean over ``window`` steps
    (default ``max(1, len // 200)``) at ``history["step"]``, and the validation loss of the EMA
    model (``"val_step"``, ``"val_loss"``, if any) as ``val_fmt`` points in the same colour.
    Labels: ``"<label>: train (running mean w)"`` and ``val_label`` (default ``"<label>:
    validation (EMA)"``). Returns the running mean drawn, shape ``(len - window + 1,)``.
    """
    missing = [k for k in ("step", "loss") if k not in history]
    if missing:
        raise ValueError(
            f"history must have the keys 'step' and 'loss' (train.fit(...).history), missing "
            f"{missing}"
        )
    loss = np.asarray(history["loss"])
    w = max(1, len(loss) // 200) if window is None else window
    smooth = running_mean(loss, w)
    pre = "" if label is None else f"{label}: "
    (line,) = ax.plot(
        np.asarray(history["step"])[w - 1 :], smooth, lw=1, label=f"{pre}train (running mean {w})"
    )
    if len(history.get("val_step", ())):
        ax.plot(
            history["val_step"],
            history["val_loss"],
            val_fmt,
            ms=3,
            color=line.get_color(),
            label=val_label or f"{pre}validation (EMA)",
        )
    return smooth


def error_vs_nfe(ax, rows, *, metric: str = "mean_abs_error"):
    """Error against NFE on log-log axes: one colour per solver, fixed steps and tolerances apart.

    ``rows`` are dicts with ``solver``, ``mode`` (``"steps"`` or ``"tol"``), ``nfe`` and
    ``metric``, as ``diffeqgen.cnf.error_vs_nfe`` returns; rows whose ``nfe`` is ``None`` or 0
    (failed or trivial settings) are left out. Fixed steps are drawn as solid lines with circles,
    tolerance sweeps as dashed lines with squares, on a grid, with axis labels; title and legend
    are the caller's. Returns ``ax``.
    """
    need = {"solver", "mode", "nfe", metric}
    bad = [r for r in rows if not isinstance(r, dict) or not need <= set(r)]
    if bad:
        raise ValueError(
            f"rows must be dicts with keys {sorted(need)} (as cnf.error_vs_nfe returns), got "
            f"{bad[0]!r}"
        )
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    for i, solver in enumerate(solvers):
        for mode, ls, marker, what in (
            ("steps", "-", "o", "fixed steps"),
            ("tol", "--", "s", "rtol"),
        ):
            sel = [r for r in rows if r["solver"] == solver and r["mode"] == mode and r["nfe"]]
            if sel:
                ax.loglog(
                    [r["nfe"] for r in sel],
                    [r[metric] for r in sel],
                    ls,
                    color=f"C{i}",
                    marker=marker,
                    ms=3,
                    label=f"{solver} ({what})",
                )
    what = {"mean_abs_error": "mean", "max_abs_error": "max"}.get(metric, metric)
    ax.set(xlabel="NFE per sample", ylabel=f"{what} |log p - log p_ref| (nats)")
    ax.grid(True, which="both", alpha=0.3)
    return ax


def hutchinson(ax, rows):
    """Std and |bias| of Hutchinson log-likelihoods against the number of probes, log-log.

    ``rows`` are dicts with ``num_probes``, ``std``, ``bias`` and ``bias_se`` (``None`` for one
    point), one per probe count, as ``diffeqgen.cnf.hutchinson_error`` returns. Draws the std per
    point, |bias| with +- 2 standard-error bars, and a 1/sqrt(probes) line through the first
    std (the rate of an unbiased estimate). Title and legend are the caller's.
    """
    need = {"num_probes", "std", "bias", "bias_se"}
    bad = [r for r in rows if not isinstance(r, dict) or not need <= set(r)]
    if not rows or bad:
        raise ValueError(
            f"rows must be a non-empty list of dicts with keys {sorted(need)} (as "
            f"cnf.hutchinson_error returns), got {(bad or [rows])[0]!r}"
        )
    probes, stds = [r["num_probes"] for r in rows], [r["std"] for r in rows]
    ax.loglog(probes, stds, "o-", label="std of log p estimate")
    ax.errorbar(
        probes,
        [abs(r["bias"]) for r in rows],
        yerr=[2 * (r["bias_se"] or 0.0) for r in rows],
        fmt="s--",
        capsize=3,
        label="|bias| +- 2 s.e.",
    )
    ax.loglog(probes, [stds[0] / np.sqrt(k) for k in probes], "k:", label="1/sqrt(probes)")
    ax.set(xscale="log", yscale="log", xlabel="Hutchinson probes (Rademacher)")
    return ax
