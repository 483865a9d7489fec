"""Gaussian probability paths x_t = alpha(t) x1 + sigma(t) eps (re-exported by ``diffeqgen.paths``).

Convention: t = 0 is noise, t = 1 is data. Classic diffusion time (Song et al. 2021) is s = 1 - t.
"""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_choice, check_positive

__all__ = [
    "GaussianPath",
    "LinearPath",
    "CosinePath",
    "PolynomialPath",
    "VEPath",
    "VPPath",
    "SubVPPath",
    "VETPath",
    "PATH_NAMES",
    "get_path",
]

TimeLike = float | int | Float[ArrayLike, "..."]
"""A time: Python number, 0-d array, or an array over the leading (batch) axes of ``x``."""


def _time(t) -> Array:
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(float)
    return t


def _expand(c: Array, x: Array) -> Array:
    """Right-pad a coefficient shaped like ``t`` with unit axes so it broadcasts against ``x``.

    ``t`` indexes the leading axes of ``x``: t of shape (n,) with x of shape (n, d) gives (n, 1).
    """
    if c.ndim == 0:
        return c
    if c.ndim > x.ndim:
        raise ValueError(
            f"t has shape {tuple(c.shape)} but x has shape {tuple(x.shape)}; t must be a scalar or"
            " index the leading (batch) axes of x"
        )
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


class GaussianPath(eqx.Module):
    r"""A Gaussian probability path x_t = alpha(t) x1 + sigma(t) eps, eps ~ N(0, I).

    Time convention: t = 0 is (mostly) noise, t = 1 is data. A subclass defines ``_alpha``,
    ``_sigma`` and their exact time derivatives ``_d_alpha``, ``_d_sigma``.

    Endpoints: where alpha (at t = 0) or sigma (at t = 1) vanishes, the methods that divide by it
    (``cond_velocity``, ``cond_score``, ``snr``, ``diffusion``, and the parametrisation
    conversions) clip t into [t_min, t_max], with t_min = t_eps if alpha(0) = 0 else 0 and
    t_max = 1 - t_eps if sigma(1) = 0 else 1. ``alpha``, ``sigma``, ``interpolate``, ``sample``
    and ``cond_velocity_on_path`` are exact on all of [0, 1]. Derivatives that are themselves
    infinite at an endpoint (VP's d_sigma at t = 1, a polynomial with p < 1 at t = 0) are
    evaluated at the clipped time. No method returns inf or NaN at t in [0, 1].

    All coefficient methods act elementwise on ``t`` (any shape). Methods taking samples accept
    ``x`` of shape (..., *event) and ``t`` either scalar or indexing the leading axes of ``x``.
    """

    t_eps: float

    _alpha_vanishes_at_0 = False
    _sigma_vanishes_at_1 = False

    # -- to be defined by subclasses, on a float array t -----------------------------------
    def _alpha(self, t):
        raise NotImplementedError

    def _sigma(self, t):
        raise NotImplementedError

    def _d_alpha(self, t):
        raise NotImplementedError

    def _d_sigma(self, t):
        raise NotImplementedError

    # -- endpoints ------------------------------------------------------------------------
    @property
    def t_min(self) -> float:
        """Smallest t used by dividing methods: ``t_eps`` where alpha(0) = 0, else 0."""
        return self.t_eps if self._alpha_vanishes_at_0 else 0.0

    @property
    def t_max(self) -> float:
        """Largest t used by dividing methods: ``1 - t_eps`` where sigma(1) = 0, else 1."""
        return 1.0 - self.t_eps if self._sigma_vanishes_at_1 else 1.0

    def clip(self, t: TimeLike) -> Float[Array, "..."]:
        """Clip t into [t_min, t_max]."""
        return jnp.clip(_time(t), self.t_min, self.t_max)

    # -- coefficients ---------------------------------------------------------------------
    def alpha(self, t: TimeLike) -> Float[Array, "..."]:
        """Signal coefficient at time t (exact, unclipped)."""
        return self._alpha(_time(t))

    def sigma(self, t: TimeLike) -> Float[Array, "..."]:
        """Noise coefficient at time t (exact, unclipped)."""
        return self._sigma(_time(t))

    def d_alpha(self, t: TimeLike) -> Float[Array, "..."]:
        """Exact time derivative d alpha / dt (at the clipped t where it would be infinite)."""
        return self._d_alpha(_time(t))

    def d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        """Exact time derivative d sigma / dt (at the clipped t where it would be infinite)."""
        return self._d_sigma(_time(t))

    def snr(self, t: TimeLike) -> Float[Array, "..."]:
        """Signal-to-noise ratio alpha(t)^2 / sigma(t)^2, at the clipped t (increasing in t)."""
        t = self.clip(t)
        return self._alpha(t) ** 2 / self._sigma(t) ** 2

    def diffusion(self, t: TimeLike) -> Float[Array, "..."]:
        r"""Diffusion coefficient g(t) of the linear forward SDE whose marginals are this path.

        In classic time s = 1 - t the forward (noising) SDE is dx = f(s) x ds + g(s) dW with
        f = d log alpha / ds and g^2 = d sigma^2/ds - 2 f sigma^2. In our t this reads
        g(t)^2 = 2 sigma^2 (d_alpha / alpha - d_sigma / sigma) = sigma^2 d log snr / dt >= 0.
        For VE, VP, sub-VP and ve_t this is their classic g(s) at s = 1 - t (subclasses return
        the closed form). Evaluated at the clipped t.
        """
        t = self.clip(t)
        a, s = self._alpha(t), self._sigma(t)
        da, ds = self._d_alpha(t), self._d_sigma(t)
        g2 = 2.0 * (s**2 * da / a - s * ds)
        return jnp.sqrt(jnp.maximum(g2, 0.0))

    # -- samples --------------------------------------------------------------------------
    def interpolate(
        self, x1: Float[ArrayLike, "..."], eps: Float[ArrayLike, "..."], t: TimeLike
    ) -> Float[Array, "..."]:
        """Return x_t = alpha(t) x1 + sigma(t) eps (shapes (..., *event); t scalar or leading)."""
        x1, eps = jnp.asarray(x1), jnp.asarray(eps)
        t = _time(t)
        return _expand(self._alpha(t), x1) * x1 + _expand(self._sigma(t), x1) * eps

    def sample(
        self, key: PRNGKeyArray, x1: Float[ArrayLike, "..."], t: TimeLike
    ) -> Float[Array, "..."]:
        """Draw x_t ~ p_t(. | x1) = N(alpha(t) x1, sigma(t)^2 I), same shape as ``x1``."""
        x1 = jnp.asarray(x1)
        eps = jr.normal(key, x1.shape, x1.dtype)
        return self.interpolate(x1, eps, t)

    def cond_velocity(
        self, x: Float[ArrayLike, "..."], x1: Float[ArrayLike, "..."], t: TimeLike
    ) -> Float[Array, "..."]:
        r"""Conditional velocity u_t(x | x1) = d_alpha x1 + (d_sigma / sigma) (x - alpha x1).

        The velocity of the flow psi_t(x0) = alpha x1 + sigma x0 evaluated at any x (general
        form); on the path it equals ``cond_velocity_on_path``. Uses the clipped t.
        """
        x, x1 = jnp.asarray(x), jnp.asarray(x1)
        t = self.clip(t)
        a, s = _expand(self._alpha(t), x), _expand(self._sigma(t), x)
        da, ds = _expand(self._d_alpha(t), x), _expand(self._d_sigma(t), x)
        return da * x1 + ds / s * (x - a * x1)

    def cond_velocity_on_path(
        self, x1: Float[ArrayLike, "..."], eps: Float[ArrayLike, "..."], t: TimeLike
    ) -> Float[Array, "..."]:
        """Conditional velocity on the path, d_alpha(t) x1 + d_sigma(t) eps (the CFM target)."""
        x1, eps = jnp.asarray(x1), jnp.asarray(eps)
        return _expand(self.d_alpha(t), x1) * x1 + _expand(self.d_sigma(t), x1) * eps

    def cond_score(
        self, x: Float[ArrayLike, "..."], x1: Float[ArrayLike, "..."], t: TimeLike
    ) -> Float[Array, "..."]:
        """Conditional score grad_x log p_t(x | x1) = -(x - alpha x1) / sigma^2 (clipped t)."""
        x, x1 = jnp.asarray(x), jnp.asarray(x1)
        t = self.clip(t)
        a, s = _expand(self._alpha(t), x), _expand(self._sigma(t), x)
        return -(x - a * x1) / s**2


class LinearPath(GaussianPath):
    """Linear (rectified-flow / OT) path: alpha = t, sigma = 1 - t."""

    _alpha_vanishes_at_0 = True
    _sigma_vanishes_at_1 = True

    def __init__(self, *, t_eps: float | int = 1e-3):
        self.t_eps = _check_eps(t_eps)

    def _alpha(self, t):
        return t

    def _sigma(self, t):
        return 1.0 - t

    def _d_alpha(self, t):
        return jnp.ones_like(t)

    def _d_sigma(self, t):
        return -jnp.ones_like(t)


class CosinePath(GaussianPath):
    """Cosine path: alpha = sin(pi t / 2), sigma = cos(pi t / 2) (variance preserving)."""

    _alpha_vanishes_at_0 = True
    _sigma_vanishes_at_1 = True

    def __init__(self, *, t_eps: float | int = 1e-3):
        self.t_eps = _check_eps(t_eps)

    def _alpha(self, t):
        return jnp.sin(0.5 * jnp.pi * t)

    def _sigma(self, t):
        return jnp.sin(0.5 * jnp.pi * (1.0 - t))  # exactly 0 at t = 1

    def _d_alpha(self, t):
        return 0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * (1.0 - t))

    def _d_sigma(self, t):
        return -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * t)


class PolynomialPath(GaussianPath):
    """Polynomial path of power p > 0: alpha = t^p, sigma = 1 - t^p (p = 1 is linear).

    For p < 1 the derivatives are infinite at t = 0 and are evaluated at t_min.
    """

    p: float

    _alpha_vanishes_at_0 = True
    _sigma_vanishes_at_1 = True

    def __init__(self, p: float | int = 2.0, *, t_eps: float | int = 1e-3):
        self.p = check_positive("p", p)
        self.t_eps = _check_eps(t_eps)

    def _alpha(self, t):
        return t**self.p

    def _sigma(self, t):
        return 1.0 - t**self.p

    def _d_alpha(self, t):
        if self.p < 1.0:
            t = self.clip(t)
        return self.p * t ** (self.p - 1.0)

    def _d_sigma(self, t):
        return -self._d_alpha(t)


class VEPath(GaussianPath):
    """Variance-exploding path (Song et al. 2021): alpha = 1, sigma = s_min (s_max/s_min)^(1-t).

    Classic time s = 1 - t: sigma(s) = sigma_min (sigma_max/sigma_min)^s, forward SDE
    dx = g(s) dW with g(s) = sigma(s) sqrt(2 log(sigma_max/sigma_min)). Nothing vanishes: at
    t = 1 the path is the data blurred by N(0, sigma_min^2); at t = 0 the reference is
    approximately N(0, sigma_max^2 I) (sigma_max should exceed the data scale).
    """

    sigma_min: float
    sigma_max: float

    def __init__(
        self,
        sigma_min: float | int = 0.01,
        sigma_max: float | int = 10.0,
        *,
        t_eps: float | int = 1e-3,
    ):
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if not self.sigma_max > self.sigma_min:
            raise ValueError(
                f"sigma_max must be > sigma_min, got sigma_max={sigma_max!r}, "
                f"sigma_min={sigma_min!r}"
            )
        self.t_eps = _check_eps(t_eps)

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def _alpha(self, t):
        return jnp.ones_like(t)

    def _sigma(self, t):
        return self.sigma_min * jnp.exp((1.0 - t) * self._log_ratio)

    def _d_alpha(self, t):
        return jnp.zeros_like(t)

    def _d_sigma(self, t):
        return -self._log_ratio * self._sigma(t)

    def diffusion(self, t: TimeLike) -> Float[Array, "..."]:
        """Classic VE g(s) = sigma(s) sqrt(2 log(sigma_max / sigma_min)) at s = 1 - t."""
        return self._sigma(self.clip(t)) * math.sqrt(2.0 * self._log_ratio)


class _VPBase(GaussianPath):
    beta_min: float
    beta_max: float

    _sigma_vanishes_at_1 = True

    def __init__(
        self,
        beta_min: float | int = 0.1,
        beta_max: float | int = 20.0,
        *,
        t_eps: float | int = 1e-3,
    ):
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if not self.beta_max >= self.beta_min:
            raise ValueError(
                f"beta_max must be >= beta_min, got beta_max={beta_max!r}, beta_min={beta_min!r}"
            )
        self.t_eps = _check_eps(t_eps)

    def beta(self, t: TimeLike) -> Float[Array, "..."]:
        """Noise rate at classic time s = 1 - t: beta_min + s (beta_max - beta_min)."""
        return self.beta_min + (1.0 - _time(t)) * (self.beta_max - self.beta_min)

    def _int_beta(self, t):
        s = 1.0 - t
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2

    def _alpha(self, t):
        return jnp.exp(-0.5 * self._int_beta(t))

    def _d_alpha(self, t):
        return 0.5 * self.beta(t) * self._alpha(t)


class VPPath(_VPBase):
    r"""Variance-preserving path (DDPM limit): alpha = exp(-B/2), sigma = sqrt(1 - exp(-B)).

    B(s) = int_0^s beta = beta_min s + (beta_max - beta_min) s^2 / 2 with classic time s = 1 - t;
    forward SDE dx = -beta(s)/2 x ds + sqrt(beta(s)) dW. sigma(1) = 0, and d_sigma is infinite
    there, so d_sigma is evaluated at the clipped t.
    """

    def _sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-self._int_beta(t)))

    def _d_sigma(self, t):
        t = self.clip(t)
        b = self._int_beta(t)
        return -0.5 * self.beta(t) * jnp.exp(-b) / jnp.sqrt(-jnp.expm1(-b))

    def diffusion(self, t: TimeLike) -> Float[Array, "..."]:
        """Classic VP g(s) = sqrt(beta(s)) at s = 1 - t."""
        return jnp.sqrt(self.beta(self.clip(t)))


class SubVPPath(_VPBase):
    r"""Sub-VP path (Song et al. 2021): alpha = exp(-B/2), sigma = 1 - exp(-B).

    Forward SDE dx = -beta(s)/2 x ds + sqrt(beta(s) (1 - exp(-2 B(s)))) dW, s = 1 - t.
    """

    def _sigma(self, t):
        return -jnp.expm1(-self._int_beta(t))

    def _d_sigma(self, t):
        return -self.beta(t) * jnp.exp(-self._int_beta(t))

    def diffusion(self, t: TimeLike) -> Float[Array, "..."]:
        """Classic sub-VP g(s) = sqrt(beta(s) (1 - exp(-2 B(s)))) at s = 1 - t."""
        t = self.clip(t)
        return jnp.sqrt(-self.beta(t) * jnp.expm1(-2.0 * self._int_beta(t)))


class VETPath(GaussianPath):
    r"""The VE variant of text 001: zero drift and g(s) = scale * s in classic time s = 1 - t.

    Forward SDE dx = scale * s dW from the data at s = 0, so the added variance is
    sigma(s)^2 = int_0^s scale^2 u^2 du = scale^2 s^3 / 3. Hence alpha = 1 and
    sigma(t) = scale (1 - t)^(3/2) / sqrt(3), and ``diffusion(t) = scale (1 - t)``.
    Note: at t = 0, sigma = scale / sqrt(3) (0.577 for scale = 1), so p_0 is the data blurred by
    N(0, scale^2 / 3 I), not pure noise; use a larger ``scale`` for a noise-like p_0.
    """

    scale: float

    _sigma_vanishes_at_1 = True

    def __init__(self, scale: float | int = 1.0, *, t_eps: float | int = 1e-3):
        self.scale = check_positive("scale", scale)
        self.t_eps = _check_eps(t_eps)

    def _alpha(self, t):
        return jnp.ones_like(t)

    def _sigma(self, t):
        return self.scale * (1.0 - t) ** 1.5 / math.sqrt(3.0)

    def _d_alpha(self, t):
        return jnp.zeros_like(t)

    def _d_sigma(self, t):
        return -0.5 * math.sqrt(3.0) * self.scale * jnp.sqrt(1.0 - t)

    def diffusion(self, t: TimeLike) -> Float[Array, "..."]:
        """g(s) = scale * s at s = 1 - t."""
        return self.scale * (1.0 - self.clip(t))


def _check_eps(t_eps) -> float:
    v = check_positive("t_eps", t_eps)
    if not v < 0.5:
        raise ValueError(f"t_eps must be in (0, 0.5), got {t_eps!r}")
    return v


_PATHS = {
    "linear": LinearPath,
    "cosine": CosinePath,
    "polynomial": PolynomialPath,
    "ve": VEPath,
    "vp": VPPath,
    "subvp": SubVPPath,
    "ve_t": VETPath,
}
PATH_NAMES = tuple(_PATHS)


def get_path(name: str, **kwargs) -> GaussianPath:
    """Build a path by name: one of ``PATH_NAMES``; ``kwargs`` go to its constructor.

    Parameters: polynomial ``p``; ve ``sigma_min``, ``sigma_max``; vp/subvp ``beta_min``,
    ``beta_max``; ve_t ``scale``; all ``t_eps`` (keyword).
    """
    cls = _PATHS[check_choice("path", name, PATH_NAMES)]
    try:
        return cls(**kwargs)
    except TypeError as e:
        if "argument" in str(e):
            raise TypeError(f"get_path({name!r}): {e}") from None
        raise
