"""JAX-native sample metrics of ``diffeqgen.metrics``: jittable, differentiable, vmappable.

Re-exported by ``diffeqgen.metrics`` (see its module docstring); kept apart from the float64
NumPy references there.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp as _jlogsumexp
from jaxtyping import Array, ArrayLike, Float

from ._checks import check_array, check_choice, check_int, check_positive, is_traced
from ._ot import squared_cost

__all__ = ["mmd_jax", "sinkhorn_divergence"]


def _is_list(bandwidth: Any) -> bool:
    return isinstance(bandwidth, Sequence | np.ndarray) and not isinstance(bandwidth, str)


def _jax_pair(x: Any, y: Any) -> tuple[Array, Array]:
    a = check_array("x", x, ndim=2)
    b = check_array("y", y, ndim=2)
    if a.shape[1] != b.shape[1] or a.shape[0] < 1 or b.shape[0] < 1:
        raise ValueError(
            f"x and y must have shapes (n, d) and (m, d) with n, m >= 1, got {a.shape}, {b.shape}"
        )
    dtype = jnp.result_type(a.dtype, b.dtype)
    return a.astype(dtype), b.astype(dtype)


def _positive_or_traced(name: str, value: Any) -> Any:
    """Check a concrete value is > 0; a traced value (inside the user's jit/grad) passes as is."""
    if is_traced(value):
        return value
    if _is_list(value):
        values = [check_positive(name, v) for v in np.ravel(np.asarray(value))]
        if not values:
            raise ValueError(f"{name} list must not be empty")
        return values
    return check_positive(name, value)


def mmd_jax(
    x: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, "m d"],
    bandwidth: Any,
    *,
    estimator: str = "unbiased",
) -> Float[Array, ""]:
    """Squared MMD with an RBF kernel, in JAX: jittable and differentiable (usable in a loss).

    ``k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2))`` over the given bandwidths ``h``; the same
    estimators and values as [`mmd`][diffeqgen.metrics.mmd] (which is the float64 NumPy
    reference). The bandwidth is required (a fixed, stated kernel); it may be a traced scalar.

    Args:
        x: ``(n, d)`` samples.
        y: ``(m, d)`` samples.
        bandwidth: ``h`` > 0, or a list of them (kernels summed).
        estimator: ``"unbiased"`` (U-statistic, needs n, m >= 2; can be slightly negative) or
            ``"biased"`` (V-statistic, >= 0).

    Returns:
        Scalar array, the squared MMD.
    """
    estimator = check_choice("estimator", estimator, ("unbiased", "biased"))
    a, b = _jax_pair(x, y)
    hs = _positive_or_traced("bandwidth", bandwidth)
    hs = jnp.atleast_1d(jnp.asarray(hs, a.dtype))
    n, m = a.shape[0], b.shape[0]
    if estimator == "unbiased" and min(n, m) < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 points per set, got n={n}, m={m}")
    scales = -0.5 / hs**2

    def ksum(d2: Array) -> Array:
        return jnp.sum(jnp.exp(d2[..., None] * scales))

    def within(p: Array) -> Array:  # zero self-distances exactly (rounding of |a|^2 + |a|^2 - 2a.a)
        return jnp.where(jnp.eye(p.shape[0], dtype=bool), 0.0, squared_cost(p, p))

    kxx, kyy, kxy = ksum(within(a)), ksum(within(b)), ksum(squared_cost(a, b))
    if estimator == "unbiased":
        kxx, kyy = (kxx - n * hs.size) / (n * (n - 1)), (kyy - m * hs.size) / (m * (m - 1))
    else:
        kxx, kyy = kxx / n**2, kyy / m**2
    return kxx + kyy - 2.0 * kxy / (n * m)


def _softmin(eps: Array, cost: Array, h: Array, log_w: Array) -> Array:
    """``-eps log sum_j w_j exp((h_j - C_ij) / eps)`` over the last axis of ``cost``."""
    return -eps * _jlogsumexp(log_w + (h[None, :] - cost) / eps, axis=1)


_EPS_DECAY = 0.9  # epsilon scaling factor per iteration (0.5 stalls the averaged updates)


def _ot_eps(a: Array, b: Array, eps: Array, tol: float, max_iters: int, symmetric: bool) -> Array:
    """Entropic OT_eps between uniform measures on ``a`` and ``b`` (squared Euclidean cost).

    OT_eps = min_P <P, C> + eps KL(P | mu x nu). The potentials come from log-domain Sinkhorn
    (averaged, symmetric updates) with epsilon scaling (eps_k = max(eps, C_max 0.9^k)), run in a
    ``while_loop`` without gradients until eps_k = eps and the L1 error of the plan's marginals
    is below ``tol`` (or ``max_iters``). The value is then the semi-dual at the fixed potentials
    with one differentiable soft-min, whose gradient is the envelope-theorem gradient
    ``sum_ij P_ij dC_ij`` (exact at convergence; no backpropagation through the iterations).
    """
    cost = squared_cost(a, b)
    c_fixed = jax.lax.stop_gradient(cost)
    eps_fixed = jax.lax.stop_gradient(eps)
    n, m = cost.shape
    log_a = jnp.full((n,), -jnp.log(n), cost.dtype)
    log_b = jnp.full((m,), -jnp.log(m), cost.dtype)
    scale = jnp.maximum(jnp.max(c_fixed), eps_fixed)

    def eps_at(k):
        return jnp.maximum(eps_fixed, scale * _EPS_DECAY ** k.astype(cost.dtype))

    def cond(state):  # go on until the last iteration (k - 1) ran at eps and converged
        k, _, _, err = state
        return (k < max_iters) & ((eps_at(k - 1) > eps_fixed) | (err > tol))

    def marginal_err(h, t, e, log_w):  # L1 error of the marginal on h's side
        return jnp.sum(jnp.exp(log_w) * jnp.abs(jnp.expm1((h - t) / e)))

    def body(state):
        k, f, g, _ = state
        e = eps_at(k)
        if symmetric:
            t = _softmin(e, c_fixed, f, log_a)
            return k + 1, 0.5 * (f + t), g, marginal_err(f, t, e, log_a)
        # averaged parallel updates (as in geomloss): far faster than alternating ones when
        # the two sets are close (on identical sets alternating updates converge sublinearly)
        tf = _softmin(e, c_fixed, g, log_b)
        tg = _softmin(e, c_fixed.T, f, log_a)
        err = marginal_err(f, tf, e, log_a) + marginal_err(g, tg, e, log_b)
        return k + 1, 0.5 * (f + tf), 0.5 * (g + tg), err

    init = (
        jnp.asarray(0, jnp.int32),
        jnp.zeros((n,), cost.dtype),
        jnp.zeros((m,), cost.dtype),
        jnp.asarray(jnp.inf, cost.dtype),
    )
    _, f, g, _ = jax.lax.while_loop(cond, body, init)
    f, g = jax.lax.stop_gradient(f), jax.lax.stop_gradient(g)
    if symmetric:
        return jnp.mean(_softmin(eps, cost, f, log_a)) + jnp.mean(f)
    from_g = jnp.mean(_softmin(eps, cost, g, log_b)) + jnp.mean(g)
    from_f = jnp.mean(f) + jnp.mean(_softmin(eps, cost.T, f, log_a))
    return 0.5 * (from_g + from_f)


def sinkhorn_divergence(
    x: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, "m d"],
    *,
    epsilon: Any = 0.01,
    tol: float | int = 1e-4,
    max_iters: int = 2000,
) -> Float[Array, ""]:
    """Debiased Sinkhorn divergence for the squared Euclidean cost, in JAX (usable in a loss).

    ``S_eps = OT_eps(x, y) - (OT_eps(x, x) + OT_eps(y, y)) / 2`` with
    ``OT_eps(x, y) = min_P sum_ij P_ij |x_i - y_j|^2 + eps KL(P | mu x nu)`` between the uniform
    empirical measures ``mu`` on x and ``nu`` on y. 0 for identical sets (up to the convergence
    tolerance), >= 0, and ``S_eps -> W2^2`` as ``eps -> 0`` (``metrics.wasserstein(x, y) ** 2``
    for equal sizes); the blur scale is ``sqrt(eps)`` in the units of the data.

    Each OT_eps runs log-domain Sinkhorn with epsilon scaling (by 0.9 per iteration from the
    largest cost down to ``eps``), then iterates at ``eps`` until the L1 error of the plan's
    marginals is below ``tol`` (at most ``max_iters`` iterations in all). The gradient is the
    envelope-theorem gradient at the final potentials (no backpropagation through the
    iterations, so memory stays O(n m)); its relative error is of the order of ``tol``. Works
    under ``jit``, ``grad`` and ``vmap``.

    Args:
        x: ``(n, d)`` samples.
        y: ``(m, d)`` samples.
        epsilon: entropic regulariser in squared data units (> 0; may be traced).
        tol: stopping tolerance on the marginal error (> 0).
        max_iters: iteration cap per OT problem (>= 1).

    Returns:
        Scalar array.
    """
    tol = check_positive("tol", tol)
    max_iters = check_int("max_iters", max_iters)
    a, b = _jax_pair(x, y)
    eps = jnp.asarray(_positive_or_traced("epsilon", epsilon), a.dtype)
    if eps.ndim != 0:
        raise ValueError(f"epsilon must be a scalar, got shape {eps.shape}")
    oxy = _ot_eps(a, b, eps, tol, max_iters, symmetric=False)
    oxx = _ot_eps(a, a, eps, tol, max_iters, symmetric=True)
    oyy = _ot_eps(b, b, eps, tol, max_iters, symmetric=True)
    return oxy - 0.5 * (oxx + oyy)
