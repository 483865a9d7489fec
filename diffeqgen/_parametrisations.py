"""Conversions between velocity, score, denoiser and eps predictions (``diffeqgen.paths``).

On a Gaussian path x_t = alpha x1 + sigma eps (t = 0 noise, t = 1 data), write
D = E[x1 | x_t] (the denoiser) and E = E[eps | x_t]. Then exactly, at every (t, x):

    x = alpha D + sigma E,   score = -E / sigma,   velocity = d_alpha D + d_sigma E.

Every conversion goes through the pair (D, E). From a velocity v, (D, E) solves the 2x2 system
[[alpha, sigma], [d_alpha, d_sigma]] (D, E) = (x, v), whose determinant
alpha d_sigma - sigma d_alpha = -alpha sigma d/dt log(alpha/sigma) is < 0 for paths whose
signal-to-noise ratio increases. t is clipped into [path.t_min, path.t_max].
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._checks import check_choice
from ._gaussian_paths import GaussianPath, TimeLike, _expand

__all__ = ["KINDS", "convert", "as_vector_field", "as_score"]

KINDS = ("velocity", "score", "denoiser", "eps")
"""Prediction kinds: velocity field, score, denoiser E[x1 | x_t], noise E[eps | x_t]."""


def _to_pair(pred, x, a, s, da, ds, source):
    if source == "denoiser":
        return pred, (x - a * pred) / s
    if source == "eps":
        return (x - s * pred) / a, pred
    if source == "score":
        e = -s * pred
        return (x - s * e) / a, e
    # velocity
    det = a * ds - s * da
    return (ds * x - s * pred) / det, (a * pred - da * x) / det


def _from_pair(d, e, a, s, da, ds, target):
    if target == "denoiser":
        return d
    if target == "eps":
        return e
    if target == "score":
        return -e / s
    return da * d + ds * e


def convert(
    pred: Float[ArrayLike, "..."],
    x: Float[ArrayLike, "..."],
    t: TimeLike,
    path: GaussianPath,
    *,
    source: str,
    target: str,
) -> Float[Array, "..."]:
    """Convert a prediction at (t, x) from one parametrisation to another, exactly.

    Args:
        pred: the prediction, same shape as ``x``.
        x: the noisy point x_t, shape (..., *event).
        t: time (0 noise, 1 data): scalar, or indexing the leading axes of ``x``. Clipped into
            [path.t_min, path.t_max].
        path: the Gaussian path the prediction refers to.
        source: kind of ``pred``, one of ``KINDS``.
        target: kind wanted, one of ``KINDS``.

    Returns:
        The prediction of kind ``target``, same shape as ``x``.
    """
    check_choice("source", source, KINDS)
    check_choice("target", target, KINDS)
    pred, x = jnp.asarray(pred), jnp.asarray(x)
    if pred.shape != x.shape:
        raise ValueError(f"pred and x must have the same shape, got {pred.shape} and {x.shape}")
    if source == target:
        return pred
    t = path.clip(t)
    a, s = _expand(path.alpha(t), x), _expand(path.sigma(t), x)
    da, ds = _expand(path.d_alpha(t), x), _expand(path.d_sigma(t), x)
    d, e = _to_pair(pred, x, a, s, da, ds, source)
    return _from_pair(d, e, a, s, da, ds, target)


class _Converted(eqx.Module):
    model: Callable
    path: GaussianPath
    source: str = eqx.field(static=True)
    target: str = eqx.field(static=True)

    def __call__(self, t, x, args=None):
        return convert(
            self.model(t, x, args), x, t, self.path, source=self.source, target=self.target
        )


def as_vector_field(
    model: Callable, path: GaussianPath, kind: str
) -> Callable[[Any, Array, Any], Array]:
    """Wrap ``model(t, x, args)`` predicting ``kind`` into a velocity field ``f(t, x, args)``.

    The result is an Equinox module (a pytree holding ``model``), so it can be passed through
    ``eqx.filter_jit`` and the solvers without baking the weights in as constants.
    """
    check_choice("kind", kind, KINDS)
    return _Converted(model, path, kind, "velocity")


def as_score(model: Callable, path: GaussianPath, kind: str) -> Callable[[Any, Array, Any], Array]:
    """Wrap ``model(t, x, args)`` predicting ``kind`` into a score field ``s(t, x, args)``."""
    check_choice("kind", kind, KINDS)
    return _Converted(model, path, kind, "score")
