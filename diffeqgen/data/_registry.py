"""Name-based access to the 2D sets: samplers, exact log-densities, entropies, splits."""

import functools
import math
from typing import Any

import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_array, check_choice, check_finite, check_int
from .._types import Sampler
from . import shapes, toy2d
from .mixture import GaussianMixture

__all__ = ["names", "sampler", "sample", "log_prob", "entropy", "mixture", "train_test_split"]

_SAMPLERS: dict[str, Sampler] = {
    "gaussian": toy2d.gaussian,
    "8gaussians": toy2d.eight_gaussians,
    "pinwheel": toy2d.pinwheel,
    "moons": toy2d.moons,
    "checkerboard": toy2d.checkerboard,
    "2spirals": toy2d.two_spirals,
    "rings": toy2d.rings,
    "cat": shapes.cat,
    "dog": shapes.dog,
    "mixture": toy2d.asymmetric_mixture,
}

_MIXTURE_NAMES = {
    "gaussian": "STANDARD_GAUSSIAN",
    "8gaussians": "EIGHT_GAUSSIANS",
    "mixture": "ASYMMETRIC_MIXTURE",
}
_LOG_PROBS = {
    **{name: lambda x, m=m: getattr(toy2d, m).log_prob(x) for name, m in _MIXTURE_NAMES.items()},
    "checkerboard": toy2d.checkerboard_log_prob,
    "cat": shapes.cat_log_prob,
    "dog": shapes.dog_log_prob,
}

_UNIFORM_AREAS = {
    "checkerboard": toy2d.CHECKERBOARD_AREA,
    "cat": shapes.CAT.area,
    "dog": shapes.DOG.area,
}


def names(*, exact: Any = False) -> list[str]:
    """Names of the 2D datasets, in display order.

    With ``exact=True``, only those with a closed-form density: the ones ``log_prob`` and
    ``entropy`` accept, on which a model's likelihood can be checked exactly.
    """
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be True or False, got {exact!r}")
    return [name for name in _SAMPLERS if not exact or name in _LOG_PROBS]


def _known(name: str) -> str:
    return check_choice("dataset name", name, _SAMPLERS)


def sampler(name: str) -> Sampler:
    """The pure JAX sampler ``(key, n) -> (n, 2)`` of a dataset (for ``train.fit`` or ``floor``)."""
    return _SAMPLERS[_known(name)]


def sample(name: str, key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Draw ``n`` i.i.d. points of the named dataset (jittable for static ``name`` and ``n``).

    Args:
        name: one of ``names()``.
        key: PRNG key.
        n: number of points, an integer >= 1.

    Returns:
        ``(n, 2)`` samples, all sets within roughly ``[-4, 4]^2``.
    """
    return sampler(name)(key, check_int("n", n))


def log_prob(name: str, x: Float[ArrayLike, "*batch 2"]) -> Float[Array, "*batch"]:
    """Exact log-density of a dataset with a closed form.

    Available for the Gaussian mixtures (``gaussian``, ``8gaussians``, ``mixture``) and the
    uniform sets (``checkerboard``, ``cat``, ``dog``: ``-log(area)`` inside, ``-inf`` outside).

    Args:
        name: dataset name.
        x: ``(..., 2)`` points (finite).

    Returns:
        ``(...)`` log-densities.

    Raises:
        ValueError: for an unknown name, a set without closed-form density, or bad ``x``.
    """
    if _known(name) not in _LOG_PROBS:
        raise ValueError(
            f"dataset {name!r} has no closed-form density; log_prob is available for: "
            f"{', '.join(_LOG_PROBS)}"
        )
    x = check_array("x", x, min_ndim=1, last_dim=2)
    return _LOG_PROBS[name](check_finite("x", x))


def mixture(name: str) -> GaussianMixture:
    """The ``GaussianMixture`` behind ``gaussian``, ``8gaussians`` or ``mixture``."""
    return getattr(toy2d, _MIXTURE_NAMES[check_choice("mixture name", name, _MIXTURE_NAMES)])


def _mixture_log_pdf_np(m: GaussianMixture, x: np.ndarray) -> np.ndarray:
    """Float64 numpy log-density of a mixture at ``x`` of shape (N, d)."""
    mu = np.asarray(m.means, np.float64)
    chol = np.linalg.cholesky(np.asarray(m.covariances, np.float64))
    w = np.asarray(m.weights, np.float64)
    w = w / w.sum()
    d = mu.shape[1]
    comps = []
    for k in range(len(w)):
        z = np.linalg.solve(chol[k], (x - mu[k]).T)
        log_det = np.sum(np.log(np.diag(chol[k])))
        comps.append(np.log(w[k]) - 0.5 * d * np.log(2 * np.pi) - log_det - 0.5 * (z**2).sum(0))
    comps = np.stack(comps)
    top = comps.max(0)
    return top + np.log(np.exp(comps - top).sum(0))


def mixture_entropy(m: GaussianMixture, *, spacing_factor: float = 10.0) -> float:
    """Differential entropy ``-int p log p`` of a 2D mixture by float64 quadrature.

    Midpoint rule on a uniform grid of spacing ``sigma_min / spacing_factor`` over the box of the
    means +- 10 ``sigma_max`` (``sigma`` the component standard deviations along their principal
    axes). For these smooth, Gaussian-tailed integrands the rule converges exponentially in
    ``sigma / spacing``: halving the spacing changes the value of every built-in mixture by less
    than 1e-10, and the mass lost outside the box is below 1e-20.
    """
    if m.dim != 2:
        raise ValueError(f"mixture_entropy needs a 2D mixture, got dim {m.dim}")
    cov = np.asarray(m.covariances, np.float64)
    eig = np.linalg.eigvalsh(cov)
    s_min, s_max = float(np.sqrt(eig.min())), float(np.sqrt(eig.max()))
    mu = np.asarray(m.means, np.float64)
    lo, hi = mu.min(0) - 10 * s_max, mu.max(0) + 10 * s_max
    h = s_min / spacing_factor
    gx, gy = (np.arange(lo[i] + h / 2, hi[i], h) for i in range(2))
    total = 0.0
    for row in np.array_split(gx, max(1, len(gx) // 200)):
        pts = np.stack(np.meshgrid(row, gy, indexing="ij"), -1).reshape(-1, 2)
        lp = _mixture_log_pdf_np(m, pts)
        total -= float(np.sum(np.exp(lp) * lp))
    return total * h * h


@functools.cache
def entropy(name: str) -> float:
    """Differential entropy ``H = -E[log p(x)]`` (nats) of a dataset with a known density.

    Exact for ``gaussian`` (``log(2 pi e)``) and the uniform sets (``log(area)``: checkerboard,
    cat, dog). For ``8gaussians`` and ``mixture`` a float64 quadrature accurate to about 1e-10
    (see ``mixture_entropy``).

    Raises:
        ValueError: for an unknown name or a set without a known density.
    """
    if _known(name) == "gaussian":
        return math.log(2 * math.pi * math.e)
    if name in _UNIFORM_AREAS:
        return math.log(_UNIFORM_AREAS[name])
    if name in _MIXTURE_NAMES:
        return mixture_entropy(mixture(name))
    raise ValueError(
        f"dataset {name!r} has no known density, so no entropy; available for: "
        f"{', '.join(_LOG_PROBS)}"
    )


def train_test_split(
    name: str, n_train: int = 2000, n_test: int = 500, *, seed: int = 0
) -> tuple[Float[Array, "n_train 2"], Float[Array, "n_test 2"]]:
    """Fixed-seed independent train and test sets (004 uses 2000 / 500).

    Args:
        name: dataset name.
        n_train: training points (>= 1).
        n_test: test points (>= 1).
        seed: integer seed (>= 0); the same seed always gives the same split.

    Returns:
        ``(train, test)`` of shapes ``(n_train, 2)`` and ``(n_test, 2)``.
    """
    seed = check_int("seed", seed, minimum=0)
    train_key, test_key = jr.split(jr.key(seed))
    return (
        sample(name, train_key, check_int("n_train", n_train)),
        sample(name, test_key, check_int("n_test", n_test)),
    )
