"""Stochastic differential equations dX = drift(t, X) dt + diffusion(t, X) dW, forward in t.

Every SDE in diffeqgen is an ITO SDE: the stochastic integral is Ito's, whichever solver
integrates it (``diffeqgen.solve.sample_sde`` converts the drift for solvers that converge to
the Stratonovich solution, and refuses solvers of unknown calculus when the noise depends on
x). For additive noise (diffusion independent of x) Ito and Stratonovich coincide.

An ``SDE`` holds two callables in the Diffrax vector-field convention, acting on ONE sample:
``drift(t, x, args) -> (*event)`` and ``diffusion(t, x, args)`` returning a scalar or an array
of shape ``event`` (diagonal noise: each coordinate has its own Brownian motion), or an array
``(*event, m)`` (matrix noise: ``G dW`` with an m-dimensional Brownian motion). The noise is
additive when the diffusion does not depend on x, multiplicative when it does. Integrate with
``diffeqgen.solve.sample_sde``.

Generative SDEs follow the library convention t = 0 noise, t = 1 data: for a Gaussian path with
marginal velocity v and score s, every g(t) >= 0 gives an SDE with the same marginals p_t,

    dX = [v(t, X) + g(t)^2 / 2 s(t, X)] dt + g(t) dW,

g = 0 being the probability-flow ODE and g = path.diffusion the classic reverse-time SDE.
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import as_path, check_nonnegative, check_positive, is_traced
from ._gaussian_paths import GaussianPath
from ._parametrisations import convert
from ._types import RealScalarLike

__all__ = [
    "SDE",
    "brownian_motion",
    "ornstein_uhlenbeck",
    "langevin",
    "generative_sde",
    "reverse_sde",
    "brownian_marginal",
    "ou_marginal",
    "ou_stationary_variance",
]


_SQRT2 = math.sqrt(2.0)


class SDE(eqx.Module):
    """An Ito SDE dX = drift(t, X, args) dt + diffusion(t, X, args) dW.

    Attributes:
        drift: ``drift(t, x, args) -> dx/dt`` on one sample (shape of ``x``).
        diffusion: ``diffusion(t, x, args)`` -> a scalar or an array of the shape of ``x``
            (diagonal noise: the increment is ``diffusion * dW`` elementwise, ``dW`` of the
            shape of ``x``), or an array ``(*x.shape, m)`` (matrix noise: the increment is
            ``diffusion @ dW`` with ``dW`` of shape ``(m,)``).
    """

    drift: Callable
    diffusion: Callable

    def __check_init__(self):
        for name in ("drift", "diffusion"):
            if not callable(getattr(self, name)):
                raise TypeError(
                    f"{name} must be callable f(t, x, args), got {getattr(self, name)!r}"
                )


# Parameters are stored as 0-d arrays, so jitted solvers treat them as inputs: SDEs that differ
# only in their parameters share one compilation.


class _Constant(eqx.Module):
    value: Array

    def __call__(self, t, x, args=None):
        return jnp.asarray(self.value, dtype=jnp.result_type(x))


class _Zero(eqx.Module):
    def __call__(self, t, x, args=None):
        return jnp.zeros_like(x)


class _OUDrift(eqx.Module):
    theta: Array
    mean: Array

    def __call__(self, t, x, args=None):
        dt = jnp.result_type(x)
        return -self.theta.astype(dt) * (x - self.mean.astype(dt))


class _LangevinDrift(eqx.Module):
    score: Callable
    sigma: Array

    def __call__(self, t, x, args=None):
        s = self.score(t, x, args)
        return 0.5 * self.sigma.astype(jnp.result_type(s)) ** 2 * s


class _ConstG(eqx.Module):
    value: Array

    def __call__(self, t):
        return jnp.asarray(self.value)


class _CheckedG(eqx.Module):
    """g(t) >= 0 with a runtime check (``eqx.error_if``)."""

    g: Callable

    def __call__(self, t):
        g = jnp.asarray(self.g(t))
        return eqx.error_if(g, jnp.any(g < 0), "generative_sde: g(t) must be >= 0")


class _GenerativeDrift(eqx.Module):
    velocity: Callable
    score: Callable
    g: Callable

    def __call__(self, t, x, args=None):
        half_g2 = (0.5 * self.g(t) ** 2).astype(jnp.result_type(x))
        return self.velocity(t, x, args) + half_g2 * self.score(t, x, args)


class _GDiffusion(eqx.Module):
    g: Callable

    def __call__(self, t, x, args=None):
        return jnp.asarray(self.g(t), dtype=jnp.result_type(x))


class _PathVelocityFromScore(eqx.Module):
    path: GaussianPath
    score: Callable

    def __call__(self, t, x, args=None):
        s = self.score(t, x, args)
        return convert(s, x, t, self.path, source="score", target="velocity")


class _PathG(eqx.Module):
    path: GaussianPath

    def __call__(self, t):
        return self.path.diffusion(t)


def brownian_motion(sigma: RealScalarLike = 1.0) -> SDE:
    """Scaled Brownian motion dX = sigma dW (sigma >= 0); X_t - X_0 ~ N(0, sigma^2 t I)."""
    return SDE(_Zero(), _Constant(jnp.asarray(check_nonnegative("sigma", sigma, traced_ok=True))))


def ornstein_uhlenbeck(
    theta: RealScalarLike, sigma: RealScalarLike, mean: RealScalarLike = 0.0
) -> SDE:
    """Ornstein-Uhlenbeck process dX = -theta (X - mean) dt + sigma dW (theta > 0, sigma >= 0).

    Stationary law N(mean, sigma^2 / (2 theta) I); see ``ou_marginal`` for the transition.
    """
    theta = check_positive("theta", theta, traced_ok=True)
    sigma = check_nonnegative("sigma", sigma, traced_ok=True)
    mean = mean if is_traced(mean) else float(mean)
    drift = _OUDrift(jnp.asarray(theta), jnp.asarray(mean))
    return SDE(drift, _Constant(jnp.asarray(sigma)))


def langevin(score: Callable, sigma: RealScalarLike = _SQRT2) -> SDE:
    r"""Overdamped Langevin dynamics dX = (sigma^2 / 2) score(t, X, args) dt + sigma dW.

    For a time-independent score grad log p, p is a stationary law for every sigma > 0 (the
    factor is sigma^2 / 2: text 002 misprints it as 1 / (2 sigma^2)). For p = N(m, v I) this is the
    OU process with theta = sigma^2 / (2 v). ``score`` uses the field convention
    ``score(t, x, args)``; wrap a plain density score as ``lambda t, x, args: mix.score(x)``.
    """
    if not callable(score):
        raise TypeError(f"score must be callable score(t, x, args), got {score!r}")
    sigma = check_positive("sigma", sigma, traced_ok=True)
    return SDE(_LangevinDrift(score, jnp.asarray(sigma)), _Constant(jnp.asarray(sigma)))


def generative_sde(velocity: Callable, score: Callable, g: RealScalarLike | Callable = 0.0) -> SDE:
    r"""The flow-plus-score SDE dX = [v(t, X) + g(t)^2 / 2 s(t, X)] dt + g(t) dW (text 002 eq. 3).

    If ``velocity`` and ``score`` are the marginal velocity and score of a path p_t, the SDE has
    marginals p_t for every g >= 0 (t = 0 noise to t = 1 data); g = 0 is the probability-flow ODE.

    Args:
        velocity: ``v(t, x, args)`` on one sample.
        score: ``s(t, x, args)`` on one sample.
        g: a number >= 0 or a callable ``g(t)`` (checked >= 0 at run time).

    Returns:
        The ``SDE``.
    """
    for name, f in (("velocity", velocity), ("score", score)):
        if not callable(f):
            raise TypeError(f"{name} must be callable f(t, x, args), got {f!r}")
    if callable(g):
        gf = _CheckedG(g)
    else:
        gf = _ConstG(jnp.asarray(check_nonnegative("g", g, traced_ok=True)))
    return SDE(_GenerativeDrift(velocity, score, gf), _GDiffusion(gf))


def reverse_sde(path: GaussianPath, score: Callable) -> SDE:
    r"""The classic reverse-time SDE of a path's forward SDE, written forward in t.

    With classic time s = 1 - t and forward (noising) SDE dx = f(s) x ds + g(s) dW, the reverse
    dx = [f x - g^2 score] ds + g dW_bar reads, in t,
    dX = [(d_alpha / alpha) X + g(t)^2 score(t, X)] dt + g(t) dW with g = ``path.diffusion``.
    This is ``generative_sde(v, score, path.diffusion)`` with v the probability-flow velocity
    obtained from the score by ``convert``. Meant for VE, VP, sub-VP and ve_t (defined for
    every path; t is clipped into [path.t_min, path.t_max]).
    """
    path = as_path(path, names=False)
    return generative_sde(_PathVelocityFromScore(path, score), score, _PathG(path))


def _check_elapsed(t) -> None:
    """Refuse a concrete negative elapsed time (traced times are used as given)."""
    if not is_traced(t):
        arr = np.asarray(t, dtype=np.float64)
        if arr.size and not (np.all(np.isfinite(arr)) and arr.min() >= 0):
            raise ValueError(f"t must be finite and >= 0 (time since x0), got {t!r}")


def brownian_marginal(
    sigma: RealScalarLike, x0: Float[ArrayLike, "..."], t: Float[ArrayLike, "..."] | RealScalarLike
) -> tuple[Array, Array]:
    """Exact law of X_t for dX = sigma dW from x0: (mean x0, variance sigma^2 t), t >= 0."""
    _check_elapsed(t)
    x0, t = jnp.asarray(x0), jnp.asarray(t)
    return x0 + 0.0 * t, jnp.asarray(sigma) ** 2 * t + 0.0 * x0


def ou_marginal(
    theta: RealScalarLike,
    sigma: RealScalarLike,
    x0: Float[ArrayLike, "..."] | RealScalarLike,
    t: Float[ArrayLike, "..."] | RealScalarLike,
    mean: RealScalarLike = 0.0,
) -> tuple[Array, Array]:
    r"""Exact law of X_t for the OU process from X_0 = x0: (mean, variance), elementwise.

    mean_t = m + (x0 - m) e^{-theta t}, var_t = sigma^2 (1 - e^{-2 theta t}) / (2 theta), for
    theta > 0, sigma >= 0 and t >= 0.
    """
    theta = check_positive("theta", theta, traced_ok=True)
    sigma = check_nonnegative("sigma", sigma, traced_ok=True)
    _check_elapsed(t)
    x0, t = jnp.asarray(x0), jnp.asarray(t)
    m = mean + (x0 - mean) * jnp.exp(-theta * t)
    v = -(sigma**2) * jnp.expm1(-2.0 * theta * t) / (2.0 * theta)
    return m, v + 0.0 * x0


def ou_stationary_variance(theta: RealScalarLike, sigma: RealScalarLike) -> float:
    """Stationary variance sigma^2 / (2 theta) of the OU process."""
    return check_nonnegative("sigma", sigma) ** 2 / (2.0 * check_positive("theta", theta))
