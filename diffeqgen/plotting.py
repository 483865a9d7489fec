"""diffeqgen.plotting (under construction)."""

import numpy as np

__all__ = ["scatter", "hist2d", "density_heatmap", "scatter_grid"]


# --- 2D point sets and densities (data helper) ------------------------------------------------


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
    s: float = 1.0,
    alpha: float = 0.5,
    color=None,
    title: str | None = None,
):
    """Scatter 2D points ``x (n, 2)`` on ``ax`` with equal aspect in ``[-lim, lim]^2``."""
    x = np.asarray(x)
    ax.scatter(x[:, 0], x[:, 1], s=s, alpha=alpha, color=color, linewidths=0, rasterized=True)
    _square_axes(ax, lim, title)
    return ax


def hist2d(
    ax, x, *, lim: float = 4.0, bins: int = 100, cmap: str = "viridis", title: str | None = None
):
    """2D histogram of points ``x (n, 2)`` on ``ax`` over ``[-lim, lim]^2``."""
    x = np.asarray(x)
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
    g = np.linspace(-lim, lim, n_grid, dtype=np.float32)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], axis=-1)
    dens = np.exp(np.asarray(log_prob_fn(pts))).reshape(n_grid, n_grid)
    ax.imshow(
        dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap=cmap, interpolation="nearest"
    )
    _square_axes(ax, lim, title)
    return ax


def scatter_grid(
    sets, *, ncols: int = 5, lim: float = 4.0, kind: str = "scatter", panel_size: float = 2.2, **kw
):
    """One figure with a panel per named 2D set: ``sets`` maps title -> points ``(n, 2)``.

    ``kind`` is ``"scatter"`` or ``"hist"``; extra keywords go to ``scatter``/``hist2d``.
    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

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
