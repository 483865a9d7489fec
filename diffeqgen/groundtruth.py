"""Exact marginals of a Gaussian mixture carried along any Gaussian path.

If x1 ~ sum_k w_k N(mu_k, S_k) and x_t = alpha(t) x1 + sigma(t) eps (t = 0 noise, t = 1 data),
then p_t = sum_k w_k N(alpha mu_k, C_k) with C_k = alpha^2 S_k + sigma^2 I. With the
responsibilities r_k(x) = w_k N(x; alpha mu_k, C_k) / p_t(x) and P_k = C_k^{-1}:

    score     grad log p_t(x) = -sum_k r_k P_k (x - alpha mu_k)
    denoiser  E[x1 | x_t = x] = sum_k r_k (mu_k + alpha S_k P_k (x - alpha mu_k))
    eps       E[eps | x_t = x] = sigma sum_k r_k P_k (x - alpha mu_k) = -sigma score
    velocity  v_t(x) = d_alpha(t) E[x1 | x] + d_sigma(t) E[eps | x]
                     = d_alpha E[x1 | x] + sigma d_sigma sum_k r_k P_k (x - alpha mu_k)

(the last form with ``path.sigma_d_sigma``, finite where sigma = 0 even when d_sigma is not:
VP at t = 1, whose ``d_sigma`` is clipped near t = 1; the velocity is exact there).

All closed form (no autodiff, no clipping of t: the formulas are finite at t = 0 and t = 1 as
long as the covariances S_k are positive definite). ``t`` is a scalar in [0, 1] (a concrete t
outside is refused with a ``ValueError``; a traced one is checked at run time); ``x`` has shape
(..., d). ``mixture`` may be a ``data.GaussianMixture`` or a dataset name that has one
(``data.mixture(name)``), ``path`` a ``GaussianPath`` or a name for ``paths.get_path``; other
objects raise a ``TypeError`` naming the argument.
Any ``GaussianPath`` works: built-in, ``paths.custom_path(alpha, sigma)`` or a subclass (only its
``alpha``, ``sigma``, ``d_alpha`` and ``d_sigma`` are used). The fields of ``velocity_field``
and ``score_field`` carry the path (attribute ``path``), so
``cnf.log_prob(velocity_field(mix, path), x)`` starts from ``path.prior``; the exact t = 0
marginal is ``marginal(mix, path, 0.0)``.
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, ArrayLike, Float

from ._checks import as_mixture, as_path, check_unit_time
from ._gaussian_paths import GaussianPath
from ._types import RealScalarLike
from .data.mixture import GaussianMixture

__all__ = [
    "marginal",
    "log_prob",
    "score",
    "denoiser",
    "eps",
    "velocity",
    "velocity_field",
    "score_field",
]


def _coefficients(path, t):
    t = jnp.asarray(t)
    if t.ndim != 0:
        raise ValueError(f"t must be a scalar, got shape {tuple(t.shape)}")
    return jnp.asarray(path.alpha(t)), jnp.asarray(path.sigma(t))


def _check_x(mixture, x):
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != mixture.dim:
        raise ValueError(f"x must have shape (..., {mixture.dim}), got shape {tuple(x.shape)}")
    return x


def _check_args(mixture, path, t):
    """(mixture, path, t): registered names resolved, concrete t checked to lie in [0, 1]."""
    t = check_unit_time("t", t, what="0 = noise, 1 = data")
    return as_mixture(mixture), as_path(path), t


def marginal(
    mixture: GaussianMixture | str, path: GaussianPath | str, t: RealScalarLike
) -> GaussianMixture:
    """The marginal p_t: means alpha(t) mu_k, covariances alpha^2 S_k + sigma^2 I, same weights."""
    mixture, path, t = _check_args(mixture, path, t)
    a, s = _coefficients(path, t)
    eye = jnp.eye(mixture.dim, dtype=mixture.covariances.dtype)
    return GaussianMixture(
        a * mixture.means, a**2 * mixture.covariances + s**2 * eye, mixture.weights
    )


def _posterior(mixture, path, t, x):
    """Return (log-weights (..., k), P_k (x - alpha mu_k) (..., k, d), alpha, sigma)."""
    a, s = _coefficients(path, t)
    d = mixture.dim
    eye = jnp.eye(d, dtype=mixture.covariances.dtype)
    cov = a**2 * mixture.covariances + s**2 * eye
    chol = jnp.linalg.cholesky(cov)  # (k, d, d)
    diff = x[..., None, :] - a * mixture.means  # (..., k, d)
    eyes = jnp.broadcast_to(eye, cov.shape)
    chol_inv = jsl.solve_triangular(chol, eyes, lower=True)  # L_k^{-1}
    white = jnp.einsum("kij,...kj->...ki", chol_inv, diff)  # L^{-1} diff
    prec_diff = jnp.einsum("kji,...kj->...ki", chol_inv, white)  # L^{-T} L^{-1} diff
    log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    comp = (
        jnp.log(mixture.weights)
        - 0.5 * d * math.log(2 * math.pi)
        - log_det
        - 0.5 * jnp.sum(white**2, axis=-1)
    )
    return comp, prec_diff, a, s


def log_prob(
    mixture: GaussianMixture | str,
    path: GaussianPath | str,
    t: RealScalarLike,
    x: Float[ArrayLike, "*batch d"],
) -> Float[Array, "*batch"]:
    """Exact log p_t(x) of the mixture carried to time t along ``path``."""
    mixture, path, t = _check_args(mixture, path, t)
    x = _check_x(mixture, x)
    comp, _, _, _ = _posterior(mixture, path, t, x)
    return jax.nn.logsumexp(comp, axis=-1)


def score(
    mixture: GaussianMixture | str,
    path: GaussianPath | str,
    t: RealScalarLike,
    x: Float[ArrayLike, "*batch d"],
) -> Float[Array, "*batch d"]:
    """Exact marginal score grad_x log p_t(x)."""
    mixture, path, t = _check_args(mixture, path, t)
    return _score(mixture, path, t, x)


def _score(mixture, path, t, x):
    x = _check_x(mixture, x)
    comp, prec_diff, _, _ = _posterior(mixture, path, t, x)
    resp = jax.nn.softmax(comp, axis=-1)
    return -jnp.einsum("...k,...kd->...d", resp, prec_diff)


def _denoiser_prec(mixture, path, t, x):
    """(E[x1 | x], sum_k r_k P_k (x - alpha mu_k), sigma): E[eps | x] is sigma times the second."""
    comp, prec_diff, a, s = _posterior(mixture, path, t, x)
    resp = jax.nn.softmax(comp, axis=-1)
    post_means = mixture.means + a * jnp.einsum("kij,...kj->...ki", mixture.covariances, prec_diff)
    d = jnp.einsum("...k,...kd->...d", resp, post_means)
    g = jnp.einsum("...k,...kd->...d", resp, prec_diff)
    return d, g, s


def _denoiser_eps(mixture, path, t, x):
    d, g, s = _denoiser_prec(mixture, path, t, x)
    return d, s * g


def denoiser(
    mixture: GaussianMixture | str,
    path: GaussianPath | str,
    t: RealScalarLike,
    x: Float[ArrayLike, "*batch d"],
) -> Float[Array, "*batch d"]:
    """Exact denoiser E[x1 | x_t = x] (posterior mean of the data)."""
    mixture, path, t = _check_args(mixture, path, t)
    x = _check_x(mixture, x)
    return _denoiser_eps(mixture, path, t, x)[0]


def eps(
    mixture: GaussianMixture | str,
    path: GaussianPath | str,
    t: RealScalarLike,
    x: Float[ArrayLike, "*batch d"],
) -> Float[Array, "*batch d"]:
    """Exact noise prediction E[eps | x_t = x] = -sigma(t) grad log p_t(x)."""
    mixture, path, t = _check_args(mixture, path, t)
    x = _check_x(mixture, x)
    return _denoiser_eps(mixture, path, t, x)[1]


def velocity(
    mixture: GaussianMixture | str,
    path: GaussianPath | str,
    t: RealScalarLike,
    x: Float[ArrayLike, "*batch d"],
) -> Float[Array, "*batch d"]:
    """Exact marginal velocity v_t(x) = d_alpha E[x1 | x] + d_sigma E[eps | x].

    The flow of v carries p_0 to p_1 (continuity equation d p_t/dt = -div(p_t v_t)). The
    second term is computed as ``path.sigma_d_sigma(t) * E[eps | x] / sigma``, exact up to
    t = 1 also where d_sigma is infinite there (VP).
    """
    mixture, path, t = _check_args(mixture, path, t)
    return _velocity(mixture, path, t, x)


def _velocity(mixture, path, t, x):
    x = _check_x(mixture, x)
    d, g, _ = _denoiser_prec(mixture, path, t, x)
    return path.d_alpha(t) * d + path.sigma_d_sigma(t) * g


class _Field(eqx.Module):
    mixture: GaussianMixture
    path: GaussianPath
    fn: Callable = eqx.field(static=True)

    def __call__(self, t, x, args=None):
        return self.fn(self.mixture, self.path, t, jnp.asarray(x))


def velocity_field(mixture: GaussianMixture | str, path: GaussianPath | str) -> Callable:
    """The exact marginal velocity as a field ``f(t, x, args)`` on one sample (Equinox module)."""
    return _Field(as_mixture(mixture), as_path(path), _velocity)


def score_field(mixture: GaussianMixture | str, path: GaussianPath | str) -> Callable:
    """The exact marginal score as a field ``s(t, x, args)`` on one sample (Equinox module)."""
    return _Field(as_mixture(mixture), as_path(path), _score)
