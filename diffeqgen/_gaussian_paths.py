"""Gaussian probability paths x_t = alpha(t) x1 + sigma(t) eps (re-exported by ``diffeqgen.paths``).

Convention: t = 0 is noise, t = 1 is data. Classic diffusion time (Song et al. 2021) is s = 1 - t.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_choice, check_positive, check_unit_time, is_traced
from ._priors import IsotropicGaussian
from ._types import RealScalarLike

__all__ = [
    "GaussianPath",
    "IsotropicGaussian",
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


def _check_t(t):
    """Refuse a concrete time outside [0, 1] (traced times are used as given: hot path)."""
    if not is_traced(t):
        check_unit_time("t", t, what="0 = noise, 1 = data")
    return t


def _same_shape(name_a, a, name_b, b):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )


def _expand(c: Array, x: Array) -> Array:
    """Right-pad a coefficient shaped like ``t`` with unit axes so it broadcasts against ``x``.

    ``t`` indexes the leading axes of ``x``: t of shape (n,) with x of shape (n, d) gives (n, 1).
    """
    if c.ndim == 0:
        return c
    if c.ndim > x.ndim or tuple(c.shape) != tuple(x.shape[: c.ndim]):
        raise ValueError(
            f"t has shape {tuple(c.shape)} but x has shape {tuple(x.shape)}; t must be a scalar or"
            " index the leading (batch) axes of x"
        )
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def _coef(fn, t: Array) -> Array:
    """``fn(t)`` as an array of the shape of ``t`` (a schedule may return a constant)."""
    out = jnp.asarray(fn(t))
    if out.shape != t.shape:
        out = jnp.broadcast_to(out, t.shape)
    return out


def _elementwise_derivative(f, t: Array) -> Array:
    """The derivative of an elementwise function f at every entry of ``t`` (forward mode)."""
    return jax.jvp(f, (t,), (jnp.ones_like(t),))[1]


_TRACED = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError)


def _concrete_float(x) -> float | None:
    """``float(x)``, or None when ``x`` is a tracer."""
    try:
        return float(x)
    except _TRACED:
        return None


def _vanishes(path: "GaussianPath", which: str, t: float) -> bool:
    """Whether ``which`` (alpha or sigma) is zero at t, relative to max(|alpha|, |sigma|) there."""
    flag = f"{which}_vanishes_at_{int(t)}"
    with jax.ensure_compile_time_eval():
        tt = jnp.asarray(t, jnp.result_type(float))
        v = _concrete_float(jnp.abs(_coef(getattr(path, which), tt)))
        a = _concrete_float(jnp.abs(_coef(path.alpha, tt)))
        s = _concrete_float(jnp.abs(_coef(path.sigma, tt)))
    if v is None or a is None or s is None:
        raise ValueError(
            f"{type(path).__name__}: cannot tell whether {which}({int(t)}) = 0 because the "
            f"schedule's parameters are traced; declare it: a class attribute {flag} = True/False "
            f"on a subclass, or custom_path(..., {flag}=...)"
        )
    return v <= _VANISH_RTOL * max(a, s)


_VANISH_RTOL = 1e-6


def _check_schedule(path: "GaussianPath") -> None:
    name = type(path).__name__
    if isinstance(getattr(path, "name", None), str):
        name = f"{name} {path.name!r}"
    hint = (
        "; time runs from t = 0 (noise) to t = 1 (data): a schedule written in classic diffusion"
        " time s (s = 0 data) is one in t by s = 1 - t"
    )
    with jax.ensure_compile_time_eval():
        dtype = jnp.result_type(float)
        try:
            t = jnp.linspace(0.0, 1.0, 33, dtype=dtype)
            a, s = np.asarray(_coef(path.alpha, t)), np.asarray(_coef(path.sigma, t))
            lo, hi = path.t_min, path.t_max
            ti = jnp.linspace(lo, hi, 33, dtype=dtype)
            ai, si = np.asarray(_coef(path.alpha, ti)), np.asarray(_coef(path.sigma, ti))
            dai, dsi = np.asarray(_coef(path.d_alpha, ti)), np.asarray(_coef(path.d_sigma, ti))
            tm = jnp.linspace(0.05, 0.95, 10, dtype=dtype)
            derivs = [
                (
                    which,
                    np.asarray(_coef(getattr(path, "d_" + which), tm)),
                    np.asarray(GaussianPath._autodiff(path, getattr(path, which), tm)),
                )
                for which in ("alpha", "sigma")
            ]
        except _TRACED:
            return
    t, ti, tm = np.asarray(t), np.asarray(ti), np.asarray(tm)
    tol = _VANISH_RTOL * np.maximum(np.abs(a), np.abs(s))  # cos(pi / 2) < 0 in float32
    for which, v in (("alpha", a), ("sigma", s)):
        bad = ~np.isfinite(v) | (v < -tol)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{name}: {which}(t) must be finite and >= 0 on [0, 1], got {which}({t[i]:.4g}) ="
                f" {float(v[i])!r}"
            )
    for which, v in (("alpha", ai), ("sigma", si)):
        if not (v > 0).all():
            i = int(np.argmax(~(v > 0)))
            raise ValueError(
                f"{name}: {which}(t) must be > 0 on [t_min, t_max] = [{lo:.4g}, {hi:.4g}], got "
                f"{which}({ti[i]:.4g}) = {float(v[i])!r} (only alpha(0) and sigma(1) may vanish)"
                + hint
            )
    for which, v in (("d_alpha", dai), ("d_sigma", dsi)):
        if not np.isfinite(v).all():
            i = int(np.argmax(~np.isfinite(v)))
            raise ValueError(f"{name}: {which}({ti[i]:.4g}) = {float(v[i])!r} is not finite")
    det = ai * dsi - si * dai
    if not (det < 0).all():
        i = int(np.argmax(~(det < 0)))
        raise ValueError(
            f"{name}: the signal-to-noise ratio alpha^2 / sigma^2 must increase with t, but "
            f"alpha d_sigma - sigma d_alpha = {float(det[i])!r} >= 0 at t = {ti[i]:.4g}" + hint
        )
    for which, given, auto in derivs:
        scale = max(1.0, float(np.max(np.abs(auto))))
        if not np.allclose(given, auto, rtol=1e-3, atol=1e-5 * scale):
            i = int(np.argmax(np.abs(given - auto)))
            raise ValueError(
                f"{name}: d_{which}({tm[i]:.4g}) = {float(given[i])!r} but autodiff of {which} "
                f"gives {float(auto[i])!r}; d_{which} must be the time derivative of {which}"
            )


class GaussianPath(eqx.Module):
    r"""A Gaussian probability path x_t = alpha(t) x1 + sigma(t) eps, eps ~ N(0, I).

    Time convention: t = 0 is (mostly) noise, t = 1 is data; the signal-to-noise ratio
    alpha^2 / sigma^2 increases with t.

    Defining a path: subclass and override the public methods ``alpha(t)`` and ``sigma(t)``
    (elementwise on a float array ``t`` of any shape), and set ``t_eps`` in ``__init__``;
    ``d_alpha`` and ``d_sigma`` default to exact derivatives by autodiff (``jax.jvp``) and may be
    overridden with closed forms. Or build one from two functions with
    [`diffeqgen.paths.custom_path`][]. Every loss, sampler, conversion and ground-truth function
    then works with the path::

        class SquaredPath(dg.paths.GaussianPath):
            def __init__(self, t_eps=1e-3):
                self.t_eps = t_eps

            def alpha(self, t):
                return t**2

            def sigma(self, t):
                return 1.0 - t

    A subclass that does not define ``alpha`` or ``sigma`` fails at construction with an error
    naming the missing method.

    Endpoints: where alpha vanishes at t = 0 (the t = 0 marginal is pure noise) or sigma at t = 1
    (the t = 1 marginal is the data), the methods that divide by it (``cond_velocity``,
    ``cond_score``, ``snr``, ``diffusion``, and the parametrisation conversions) clip t into
    [t_min, t_max], with t_min = t_eps if alpha(0) = 0 else 0 and t_max = 1 - t_eps if
    sigma(1) = 0 else 1. Whether alpha(0) or sigma(1) vanishes is declared by the properties
    ``alpha_vanishes_at_0`` and ``sigma_vanishes_at_1``: the built-in paths set them, and for other
    paths they are detected by evaluating alpha(0) and sigma(1) (a subclass may declare them as
    class attributes instead, which it must when its parameters are traced). ``alpha``,
    ``sigma``, ``interpolate``, ``sample`` and ``cond_velocity_on_path`` are exact on all of
    [0, 1]. Derivatives that are themselves infinite at an endpoint (VP's d_sigma at t = 1, a
    polynomial with p < 1 at t = 0) are evaluated at the nearest time in [t_eps, 1 - t_eps]. No
    method returns inf or NaN at t in [0, 1].

    Methods taking samples accept ``x`` of shape (..., *event) and ``t`` either scalar or
    indexing the leading axes of ``x``.
    """

    t_eps: float

    def __check_init__(self):
        missing = [
            m for m in ("alpha", "sigma") if getattr(type(self), m) is getattr(GaussianPath, m)
        ]
        if missing:
            needed = " and ".join(f"{m}(self, t)" for m in missing)
            raise TypeError(
                f"{type(self).__name__} must define {needed}: a GaussianPath subclass overrides "
                "alpha(t) and sigma(t), elementwise on a float array t (d_alpha and d_sigma "
                "default to autodiff); or build the path with "
                "diffeqgen.paths.custom_path(alpha, sigma)"
            )

    # -- the schedule: override alpha and sigma (d_alpha, d_sigma optionally) ----------------
    def alpha(self, t: TimeLike) -> Float[Array, "..."]:
        """Signal coefficient at time t, elementwise on ``t`` (exact, unclipped)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define alpha(self, t) (see diffeqgen.paths.GaussianPath)"
        )

    def sigma(self, t: TimeLike) -> Float[Array, "..."]:
        """Noise coefficient at time t, elementwise on ``t`` (exact, unclipped)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define sigma(self, t) (see diffeqgen.paths.GaussianPath)"
        )

    def d_alpha(self, t: TimeLike) -> Float[Array, "..."]:
        """Exact time derivative d alpha / dt (autodiff unless overridden).

        Where it is infinite (an endpoint), it is taken at the nearest time in [t_eps, 1 - t_eps].
        """
        return self._autodiff(self.alpha, t)

    def d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        """Exact time derivative d sigma / dt (autodiff unless overridden).

        Where it is infinite (an endpoint), it is taken at the nearest time in [t_eps, 1 - t_eps].
        """
        return self._autodiff(self.sigma, t)

    def sigma_d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        """The product sigma(t) d_sigma(t) = (d/dt) sigma(t)^2 / 2, elementwise on ``t``.

        Finite where sigma vanishes even when d_sigma is not (VP at t = 1, where
        ``d_sigma`` itself is evaluated at the clipped t): the marginal velocity of the ground
        truth multiplies d_sigma by a factor sigma, and uses this product. Default: the product
        ``sigma(t) * d_sigma(t)`` (exact wherever ``d_sigma`` is); ``VPPath`` has the closed form.
        """
        t = _time(t)
        return _coef(self.sigma, t) * _coef(self.d_sigma, t)

    def _autodiff(self, fn, t):
        t = _time(t)

        def f(s):
            return _coef(fn, s)

        finite = jnp.isfinite(_elementwise_derivative(f, t))
        # An infinite derivative at an endpoint (alpha = sqrt(t) at 0) is taken at the nearest
        # time in [t_eps, 1 - t_eps]; one evaluation at the chosen time keeps gradients finite.
        t_safe = jnp.where(finite, t, jnp.clip(t, self.t_eps, 1.0 - self.t_eps))
        return _elementwise_derivative(f, t_safe)

    # -- endpoints ------------------------------------------------------------------------
    @property
    def alpha_vanishes_at_0(self) -> bool:
        """Whether alpha(0) = 0 (the t = 0 marginal is pure noise N(0, sigma(0)^2 I)).

        Declared by the built-in paths and ``custom_path``; otherwise detected from alpha(0)
        (zero when |alpha(0)| <= 1e-6 max(|alpha(0)|, |sigma(0)|), so cos(pi / 2) counts).
        """
        return _vanishes(self, "alpha", 0.0)

    @property
    def sigma_vanishes_at_1(self) -> bool:
        """Whether sigma(1) = 0 (the t = 1 marginal is the data itself).

        Declared by the built-in paths and ``custom_path``; otherwise detected from sigma(1).
        """
        return _vanishes(self, "sigma", 1.0)

    @property
    def t_min(self) -> float:
        """Smallest t used by dividing methods: ``t_eps`` where alpha(0) = 0, else 0."""
        return self.t_eps if self.alpha_vanishes_at_0 else 0.0

    @property
    def t_max(self) -> float:
        """Largest t used by dividing methods: ``1 - t_eps`` where sigma(1) = 0, else 1."""
        return 1.0 - self.t_eps if self.sigma_vanishes_at_1 else 1.0

    def clip(self, t: TimeLike) -> Float[Array, "..."]:
        """Clip t into [t_min, t_max]."""
        return jnp.clip(_time(t), self.t_min, self.t_max)

    # -- derived coefficients ---------------------------------------------------------------
    def snr(self, t: TimeLike) -> Float[Array, "..."]:
        """Signal-to-noise ratio alpha(t)^2 / sigma(t)^2, at the clipped t (increasing in t)."""
        t = self.clip(t)
        return _coef(self.alpha, t) ** 2 / _coef(self.sigma, t) ** 2

    def diffusion(self, t: TimeLike) -> Float[Array, "..."]:
        r"""Diffusion coefficient g(t) of the linear forward SDE whose marginals are this path.

        In classic time s = 1 - t the forward (noising) SDE is dx = f(s) x ds + g(s) dW with
        f = d log alpha / ds and g^2 = d sigma^2/ds - 2 f sigma^2. In our t this reads
        g(t)^2 = 2 sigma^2 (d_alpha / alpha - d_sigma / sigma) = sigma^2 d log snr / dt >= 0.
        For VE, VP, sub-VP and ve_t this is their classic g(s) at s = 1 - t (subclasses return
        the closed form). Evaluated at the clipped t (finite where alpha(0) = 0).
        """
        t = self.clip(t)
        a, s = _coef(self.alpha, t), _coef(self.sigma, t)
        da, ds = _coef(self.d_alpha, t), _coef(self.d_sigma, t)
        g2 = 2.0 * (s**2 * da / a - s * ds)
        return jnp.sqrt(jnp.maximum(g2, 0.0))

    def prior(
        self, event_shape: int | tuple[int, ...], *, t: RealScalarLike = 0.0
    ) -> "IsotropicGaussian":
        r"""The path's data-independent reference distribution at time t (default t = 0, noise).

        Returns N(0, sigma(t)^2 I) on ``event_shape``: the law of x_t = alpha(t) x1 + sigma(t) eps
        with the data term alpha(t) x1 dropped. Exact where alpha(0) = 0 (linear, cosine,
        polynomial: N(0, I)); an approximation otherwise, accurate when alpha(t) x1 is small
        beside sigma(t) (VE: N(0, sigma_max^2 I), whose log-density error at z is about
        ``z . E[x1] / sigma_max^2`` = O(|E x1| / sigma_max), and O(E|x1|^2 / sigma_max^2) for
        centred data: centre the data, or take sigma_max well above the data scale;
        VP / sub-VP: N(0, (1 - exp(-B(1)))^k I), within about 1e-4 of the classic N(0, I)). It is
        the default ``base`` of ``diffeqgen.cnf.log_prob`` for fields that carry the path. The exact
        t = 0 marginal of a Gaussian mixture is ``diffeqgen.groundtruth.marginal(mix, path, 0.0)``.

        Args:
            event_shape: shape of one sample (an int ``d`` for vectors).
            t: time of the reference (the ``t0`` of a likelihood solve).

        Returns:
            An [`IsotropicGaussian`][] with ``log_prob`` and ``sample``.
        """
        scale = _coef(self.sigma, _time(t))
        if scale.ndim != 0:
            raise ValueError(f"t must be a scalar, got shape {tuple(scale.shape)}")
        concrete = _concrete_float(scale)
        if concrete is not None and not (math.isfinite(concrete) and concrete > 0):
            raise ValueError(
                f"{type(self).__name__} has sigma(t) = {concrete} at t = {t!r}: no noise there, so"
                " no data-independent prior; use a t with sigma(t) > 0"
            )
        return IsotropicGaussian(scale, event_shape)

    def check(self) -> "GaussianPath":
        """Check the schedule numerically on a grid of t; return the path (raise if wrong).

        Checks that alpha and sigma are finite and >= 0 on [0, 1], that alpha and sigma are > 0
        on [t_min, t_max] except sigma(1), that the signal-to-noise ratio increases (the time
        convention t = 0 noise, t = 1 data: ``alpha d_sigma - sigma d_alpha < 0``, which the
        velocity conversions divide by), and that ``d_alpha`` and ``d_sigma`` match autodiff of
        ``alpha`` and ``sigma`` in the interior. ``custom_path`` calls it; nothing is checked
        when the schedule's parameters are traced.
        """
        _check_schedule(self)
        return self

    # -- samples --------------------------------------------------------------------------
    def interpolate(
        self, x1: Float[ArrayLike, "..."], eps: Float[ArrayLike, "..."], t: TimeLike
    ) -> Float[Array, "..."]:
        """Return x_t = alpha(t) x1 + sigma(t) eps (shapes (..., *event); t scalar or leading)."""
        x1, eps = jnp.asarray(x1), jnp.asarray(eps)
        _same_shape("x1", x1, "eps", eps)
        t = _time(_check_t(t))
        return _expand(_coef(self.alpha, t), x1) * x1 + _expand(_coef(self.sigma, t), x1) * eps

    def sample(
        self, key: PRNGKeyArray, x1: Float[ArrayLike, "..."], t: TimeLike
    ) -> Float[Array, "..."]:
        """Draw x_t ~ p_t(. | x1) = N(alpha(t) x1, sigma(t)^2 I), same shape as ``x1``."""
        x1 = jnp.asarray(x1)
        _check_t(t)
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
        _same_shape("x", x, "x1", x1)
        t = self.clip(_check_t(t))
        a, s = _expand(_coef(self.alpha, t), x), _expand(_coef(self.sigma, t), x)
        da, ds = _expand(_coef(self.d_alpha, t), x), _expand(_coef(self.d_sigma, t), x)
        return da * x1 + ds / s * (x - a * x1)

    def cond_velocity_on_path(
        self, x1: Float[ArrayLike, "..."], eps: Float[ArrayLike, "..."], t: TimeLike
    ) -> Float[Array, "..."]:
        """Conditional velocity on the path, d_alpha(t) x1 + d_sigma(t) eps (the CFM target)."""
        x1, eps = jnp.asarray(x1), jnp.asarray(eps)
        _same_shape("x1", x1, "eps", eps)
        t = _time(_check_t(t))
        da, ds = _coef(self.d_alpha, t), _coef(self.d_sigma, t)
        return _expand(da, x1) * x1 + _expand(ds, x1) * eps

    def cond_score(
        self, x: Float[ArrayLike, "..."], x1: Float[ArrayLike, "..."], t: TimeLike
    ) -> Float[Array, "..."]:
        """Conditional score grad_x log p_t(x | x1) = -(x - alpha x1) / sigma^2 (clipped t)."""
        x, x1 = jnp.asarray(x), jnp.asarray(x1)
        _same_shape("x", x, "x1", x1)
        t = self.clip(_check_t(t))
        a, s = _expand(_coef(self.alpha, t), x), _expand(_coef(self.sigma, t), x)
        return -(x - a * x1) / s**2


class LinearPath(GaussianPath):
    """Linear (rectified-flow / OT) path: alpha = t, sigma = 1 - t."""

    alpha_vanishes_at_0 = True
    sigma_vanishes_at_1 = True

    def __init__(self, *, t_eps: float | int = 1e-3):
        self.t_eps = _check_eps(t_eps)

    def alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return t

    def sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return 1.0 - t

    def d_alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return jnp.ones_like(t)

    def d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return -jnp.ones_like(t)


class CosinePath(GaussianPath):
    """Cosine path: alpha = sin(pi t / 2), sigma = cos(pi t / 2) (variance preserving)."""

    alpha_vanishes_at_0 = True
    sigma_vanishes_at_1 = True

    def __init__(self, *, t_eps: float | int = 1e-3):
        self.t_eps = _check_eps(t_eps)

    def alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return jnp.sin(0.5 * jnp.pi * t)

    def sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return jnp.sin(0.5 * jnp.pi * (1.0 - t))  # exactly 0 at t = 1

    def d_alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return 0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * (1.0 - t))

    def d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * t)


class PolynomialPath(GaussianPath):
    """Polynomial path of power p > 0: alpha = t^p, sigma = 1 - t^p (p = 1 is linear).

    For p < 1 the derivatives are infinite at t = 0 and are evaluated at t_min.
    """

    p: float

    alpha_vanishes_at_0 = True
    sigma_vanishes_at_1 = True

    def __init__(self, p: float | int = 2.0, *, t_eps: float | int = 1e-3):
        self.p = check_positive("p", p)
        self.t_eps = _check_eps(t_eps)

    def alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return t**self.p

    def sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return 1.0 - t**self.p

    def d_alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        if self.p < 1.0:
            t = self.clip(t)
        return self.p * t ** (self.p - 1.0)

    def d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return -self.d_alpha(t)


class VEPath(GaussianPath):
    """Variance-exploding path (Song et al. 2021): alpha = 1, sigma = s_min (s_max/s_min)^(1-t).

    Classic time s = 1 - t: sigma(s) = sigma_min (sigma_max/sigma_min)^s, forward SDE
    dx = g(s) dW with g(s) = sigma(s) sqrt(2 log(sigma_max/sigma_min)). Nothing vanishes: at
    t = 1 the path is the data blurred by N(0, sigma_min^2); at t = 0 the reference (``prior``) is
    N(0, sigma_max^2 I), a good approximation of p_0 when sigma_max exceeds the data scale.
    """

    sigma_min: float
    sigma_max: float

    alpha_vanishes_at_0 = False
    sigma_vanishes_at_1 = False

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

    def alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return jnp.ones_like(t)

    def sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return self.sigma_min * jnp.exp((1.0 - t) * self._log_ratio)

    def d_alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return jnp.zeros_like(t)

    def d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return -self._log_ratio * self.sigma(t)

    def diffusion(self, t: TimeLike) -> Float[Array, "..."]:
        """Classic VE g(s) = sigma(s) sqrt(2 log(sigma_max / sigma_min)) at s = 1 - t."""
        return self.sigma(self.clip(t)) * math.sqrt(2.0 * self._log_ratio)


class _VPBase(GaussianPath):
    beta_min: float
    beta_max: float

    alpha_vanishes_at_0 = False
    sigma_vanishes_at_1 = True

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

    def alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return jnp.exp(-0.5 * self._int_beta(t))

    def d_alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return 0.5 * self.beta(t) * self.alpha(t)


class VPPath(_VPBase):
    r"""Variance-preserving path (DDPM limit): alpha = exp(-B/2), sigma = sqrt(1 - exp(-B)).

    B(s) = int_0^s beta = beta_min s + (beta_max - beta_min) s^2 / 2 with classic time s = 1 - t;
    forward SDE dx = -beta(s)/2 x ds + sqrt(beta(s)) dW. sigma(1) = 0, and d_sigma is infinite
    there, so d_sigma is evaluated at the clipped t.
    """

    def sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return jnp.sqrt(-jnp.expm1(-self._int_beta(t)))

    def d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        t = self.clip(t)
        b = self._int_beta(t)
        return -0.5 * self.beta(t) * jnp.exp(-b) / jnp.sqrt(-jnp.expm1(-b))

    def sigma_d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        """The product sigma d_sigma = -beta(s) exp(-B(s)) / 2 (closed form, exact on [0, 1])."""
        t = _time(t)
        return -0.5 * self.beta(t) * jnp.exp(-self._int_beta(t))

    def diffusion(self, t: TimeLike) -> Float[Array, "..."]:
        """Classic VP g(s) = sqrt(beta(s)) at s = 1 - t."""
        return jnp.sqrt(self.beta(self.clip(t)))


class SubVPPath(_VPBase):
    r"""Sub-VP path (Song et al. 2021): alpha = exp(-B/2), sigma = 1 - exp(-B).

    Forward SDE dx = -beta(s)/2 x ds + sqrt(beta(s) (1 - exp(-2 B(s)))) dW, s = 1 - t.
    """

    def sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return -jnp.expm1(-self._int_beta(t))

    def d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
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

    alpha_vanishes_at_0 = False
    sigma_vanishes_at_1 = True

    def __init__(self, scale: float | int = 1.0, *, t_eps: float | int = 1e-3):
        self.scale = check_positive("scale", scale)
        self.t_eps = _check_eps(t_eps)

    def alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return jnp.ones_like(t)

    def sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return self.scale * (1.0 - t) ** 1.5 / math.sqrt(3.0)

    def d_alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return jnp.zeros_like(t)

    def d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
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
