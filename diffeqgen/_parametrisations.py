"""Conversions between velocity, score, denoiser and eps predictions (``diffeqgen.paths``).

On a Gaussian path x_t = alpha x1 + sigma eps (t = 0 noise, t = 1 data), write
D = E[x1 | x_t] (the denoiser) and E = E[eps | x_t]. Then exactly, at every (t, x):

    x = alpha D + sigma E,   score = -E / sigma,   velocity = d_alpha D + d_sigma E.

Every conversion goes through the pair (D, E). From a velocity v, (D, E) solves the 2x2 system
[[alpha, sigma], [d_alpha, d_sigma]] (D, E) = (x, v), whose determinant
alpha d_sigma - sigma d_alpha = -alpha sigma d/dt log(alpha/sigma) is < 0 for paths whose
signal-to-noise ratio increases. t is clipped into [path.t_min, path.t_max].

Noise-conditional score networks (NCSM / DSM, ``model(sigma, x, args)`` = the score of the data
smoothed by N(0, sigma^2 I)) enter as the model kind ``"noise_conditional"``: since
p_t(x) = alpha^-d q_{sigma/alpha}(x / alpha), the path's score is
``model(sigma(t) / alpha(t), x / alpha(t), args) / alpha(t)`` (``model(sigma(t), x, args)`` on a VE
path, whose sigma(t) runs geometrically from sigma_max at t = 0 to sigma_min at t = 1).
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._checks import as_path, check_choice, check_unit_time, is_traced
from ._gaussian_paths import GaussianPath, TimeLike, _coef, _expand

__all__ = ["KINDS", "MODEL_KINDS", "convert", "as_vector_field", "as_score"]

KINDS = ("velocity", "score", "denoiser", "eps")
"""Prediction kinds: velocity field, score, denoiser E[x1 | x_t], noise E[eps | x_t]."""

MODEL_KINDS = (*KINDS, "noise_conditional")
"""Model kinds of ``as_vector_field`` / ``as_score``: ``KINDS`` (``model(t, x, args)``) and
``"noise_conditional"`` (a score network ``model(sigma, x, args)`` of the data smoothed by
N(0, sigma^2 I), as NCSM / DSM train)."""


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
            [path.t_min, path.t_max]; a concrete t outside [0, 1] raises ``ValueError``.
        path: the Gaussian path the prediction refers to.
        source: kind of ``pred``, one of ``KINDS``.
        target: kind wanted, one of ``KINDS``.

    Returns:
        The prediction of kind ``target``, same shape as ``x``.
    """
    check_choice("source", source, KINDS)
    check_choice("target", target, KINDS)
    path = as_path(path, names=False)
    if not is_traced(t):
        check_unit_time("t", t, what="0 = noise, 1 = data")
    pred, x = jnp.asarray(pred), jnp.asarray(x)
    if pred.shape != x.shape:
        raise ValueError(f"pred and x must have the same shape, got {pred.shape} and {x.shape}")
    if source == target:
        return pred
    t = path.clip(t)
    a, s = _expand(_coef(path.alpha, t), x), _expand(_coef(path.sigma, t), x)
    da, ds = _expand(_coef(path.d_alpha, t), x), _expand(_coef(path.d_sigma, t), x)
    d, e = _to_pair(pred, x, a, s, da, ds, source)
    return _from_pair(d, e, a, s, da, ds, target)


def _noise_conditional_score(model, path, t, x, args):
    """The path's score from a noise-conditional score ``model(sigma, x, args)`` (clipped t)."""
    t = path.clip(t)
    a = _coef(path.alpha, t).astype(x.dtype)
    s = _coef(path.sigma, t).astype(x.dtype)
    return model(s / a, x / a, args) / a


class _Converted(eqx.Module):
    model: Callable
    path: GaussianPath
    source: str = eqx.field(static=True)
    target: str = eqx.field(static=True)

    def __call__(self, t, x, args=None):
        if self.source == "noise_conditional":
            pred = _noise_conditional_score(self.model, self.path, t, jnp.asarray(x), args)
            return convert(pred, x, t, self.path, source="score", target=self.target)
        return convert(
            self.model(t, x, args), x, t, self.path, source=self.source, target=self.target
        )


def as_vector_field(
    model: Callable, path: GaussianPath, kind: str
) -> Callable[[Any, Array, Any], Array]:
    """Wrap a model predicting ``kind`` on ``path`` into its probability-flow velocity field.

    ``kind`` is one of ``MODEL_KINDS``: a ``model(t, x, args)`` predicting a velocity, score,
    denoiser or eps, or a noise-conditional score ``model(sigma, x, args)``
    (``"noise_conditional"``, NCSM / DSM). The result ``f(t, x, args)`` is the velocity whose
    flow carries p_0 to p_1 along the path (t = 0 noise, t = 1 data); it is an Equinox module
    holding ``model`` and ``path`` (attribute ``f.path``), so it passes through
    ``eqx.filter_jit`` and the solvers without baking the weights in as constants.

    The likelihood route for every kind is one call,
    ``diffeqgen.cnf.log_prob(as_vector_field(model, path, kind), x)``: because the field
    carries its path, the base density defaults to ``path.prior`` (e.g. N(0, sigma_max^2 I) on
    the VE path), not N(0, I).
    """
    check_choice("kind", kind, MODEL_KINDS)
    return _Converted(model, as_path(path, names=False), kind, "velocity")


def as_score(model: Callable, path: GaussianPath, kind: str) -> Callable[[Any, Array, Any], Array]:
    """Wrap a model predicting ``kind`` (one of ``MODEL_KINDS``) into a score ``s(t, x, args)``.

    The score grad_x log p_t(x) of the path's marginal, as an Equinox module with ``path``.
    """
    check_choice("kind", kind, MODEL_KINDS)
    return _Converted(model, as_path(path, names=False), kind, "score")
