"""Few-step samplers for Gaussian paths: DPM-Solver++ (1, 2M, 3M, 2S), UniPC (bh2), EDM Heun.

Reached through ``diffeqgen.solve.sample_ode(field, x0, solver=<name or object>, steps=N,
grid=<name>)``, or ``grid=<times>`` (e.g. fitted to the field by ``optimize_grid``).
``field`` is a probability-flow velocity on a Gaussian path
x_t = alpha(t) x1 + sigma(t) eps (t = 0 noise, t = 1 data), normally
``paths.as_vector_field(model, path, kind)`` for a model of any kind, or
``groundtruth.velocity_field(mixture, path)``. These samplers integrate the same ODE as the
generic solvers but in the variables that make it semi-linear: with lambda = log(alpha / sigma)
(half the log-SNR) and the data prediction D(t, x) = E[x1 | x_t = x],

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda D dlambda

(Lu et al. 2022, DPM-Solver++), exact in the linear part; the integral is approximated by
polynomials in lambda through past values of D (multistep) or extra stages (single-step).
D is read from the model in its own parametrisation when the field is an
``as_vector_field`` / ``groundtruth`` field, otherwise from the velocity by the exact conversion
of ``paths.convert``; it is evaluated at t clipped into [path.t_min, path.t_max] like every
conversion (at alpha = 0 an eps or score prediction determines no D).

Endpoints: where alpha(t0) = 0 (pure noise, lambda = -inf) or sigma(t1) = 0 (the data,
lambda = +inf) the step touching that end is taken by the exact limit of the first-order
update (DDIM), x_t = (sigma_t / sigma_s) x_s + (alpha_t - sigma_t alpha_s / sigma_s) D_s, and
carries no history into higher-order steps. Written on our own (not Diffrax) because the
update is linear in past network outputs with grid-dependent weights, a structure Diffrax's
Runge-Kutta interface does not express; every loop is one ``lax.scan`` over the grid.
"""

import math
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from ._checks import check_choice, check_int, check_nonnegative, check_positive
from ._conditioning import batched, pack
from ._failures import all_finite, concrete, report
from ._gaussian_paths import _VANISH_RTOL, GaussianPath, _coef
from ._parametrisations import _Converted, convert
from ._solvers import Solution, _check_output, _check_x0
from .groundtruth import _Field
from .groundtruth import denoiser as _gt_denoiser

__all__ = [
    "FEWSTEP_SAMPLERS",
    "GRIDS",
    "FewStepSampler",
    "DPMSolverPP",
    "UniPC",
    "EDMHeun",
    "time_grid",
    "optimize_grid",
    "get_sampler",
    "is_fewstep",
    "sample_fewstep",
]

GRIDS: tuple[str, ...] = ("uniform", "logsnr", "karras", "quadratic")
"""Time grids of the few-step samplers (``time_grid``): uniform in t; uniform in
lambda = log(alpha / sigma) (half the log-SNR); Karras et al. (2022) rho = 7 in
rho = sigma / alpha; quadratic in t, ``t_k = t0 + (t1 - t0)(1 - (1 - k / N)^2)`` (denser
towards the data, as DDIM's quadratic schedule)."""


# ------------------------------------------------------------------------------- samplers


class FewStepSampler(eqx.Module):
    """Base class of the few-step samplers; pass an instance (or a name) as ``solver=``."""

    default_grid: ClassVar[str] = "logsnr"

    @property
    def order(self) -> int:
        """Order of convergence on smooth problems (away from a lambda = +-inf endpoint)."""
        raise NotImplementedError


class DPMSolverPP(FewStepSampler):
    """DPM-Solver++ (Lu et al. 2022), data prediction, multistep or single-step.

    ``order=1`` is DDIM (eta = 0) on any grid. Multistep ``order=2`` (2M) and ``order=3``
    (3M) reuse the last D values (one network evaluation per step): the first steps use the
    orders their history allows (warm-up), and with ``lower_order_final`` and fewer than 15
    steps the last steps drop to order ``steps - k`` (final step first order), which keeps
    very low NFE stable. Single-step ``multistep=False, order=2`` (2S) takes a midpoint in
    lambda: two evaluations per step.

    A first-order first step leaves a local error O(h^2), which caps a third-order multistep
    method at global order 2; so 3M takes its first regular step by 2S (``warmup=
    "singlestep"``, one extra evaluation: NFE = steps + 1) and is of order 3.
    ``warmup="lower_order"`` starts with a first-order step instead (NFE = steps, the
    common implementation; order 2 asymptotically).

    Attributes:
        order: 1, 2 or 3 (single-step: 1 or 2).
        multistep: reuse past evaluations (True) or take intermediate stages (False).
        lower_order_final: lower orders on the last steps when ``steps < 15``.
        warmup: ``"singlestep"`` or ``"lower_order"`` first step of 3M (ignored otherwise).
    """

    order_: int = eqx.field(static=True, default=2)
    multistep: bool = eqx.field(static=True, default=True)
    lower_order_final: bool = eqx.field(static=True, default=True)
    warmup: str = eqx.field(static=True, default="singlestep")

    def __init__(
        self,
        order: int = 2,
        *,
        multistep: bool = True,
        lower_order_final: bool = True,
        warmup: str = "singlestep",
    ):
        top = 3 if multistep else 2
        if order not in range(1, top + 1):
            raise ValueError(
                f"order must be in 1..{top} for DPMSolverPP(multistep={multistep}), got {order!r}"
            )
        self.order_ = order
        self.multistep = bool(multistep)
        self.lower_order_final = bool(lower_order_final)
        self.warmup = check_choice("warmup", warmup, ("singlestep", "lower_order"))

    @property
    def order(self) -> int:
        """Declared order of convergence (1, 2 or 3; 3M with ``warmup="lower_order"``: 2)."""
        if self.order_ == 3 and self.warmup == "lower_order":
            return 2
        return self.order_


class UniPC(FewStepSampler):
    """UniPC (Zhao et al. 2023), B(h) = expm1(-h) ("bh2"), data prediction, multistep.

    Each step predicts with UniP of order ``order`` (past D values), evaluates the network
    once at the prediction and corrects with UniC, whose extra order makes the method of order
    ``order + 1`` at one evaluation per step (the final step is not corrected: that would cost
    an evaluation whose result is never used). Warm-up and ``lower_order_final`` as for
    ``DPMSolverPP``.

    Attributes:
        order: predictor order, 1 or 2 (method order 2 or 3).
        lower_order_final: lower orders on the last steps when ``steps < 15``.
    """

    order_: int = eqx.field(static=True, default=2)
    lower_order_final: bool = eqx.field(static=True, default=True)

    def __init__(self, order: int = 2, *, lower_order_final: bool = True):
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2 for UniPC, got {order!r}")
        self.order_ = order
        self.lower_order_final = bool(lower_order_final)

    @property
    def order(self) -> int:
        """Declared order of convergence: predictor order + 1."""
        return self.order_ + 1


class EDMHeun(FewStepSampler):
    """EDM's second-order Heun sampler (Karras et al. 2022, Algorithms 1 and 2).

    Heun's method for dy/drho = (y - D) / rho in y = x / alpha, rho = sigma / alpha (EDM's
    sigma), two evaluations per step; a step into sigma = 0 or out of alpha = 0 is an Euler
    step (one evaluation). With ``churn > 0`` (Algorithm 2, needs ``key=``) each step with
    ``churn_min <= rho_k <= churn_max`` first raises the noise level to
    ``rho_hat = rho_k (1 + gamma)``, gamma = min(churn / steps, sqrt(2) - 1), by adding
    fresh noise of variance ``(rho_hat^2 - rho_k^2) noise^2`` (in y), then takes the Heun
    step from rho_hat; a raise beyond the grid's first noise level is skipped.

    Attributes:
        churn: S_churn >= 0 (0: the deterministic ODE sampler).
        churn_min: S_tmin, in rho units.
        churn_max: S_tmax, in rho units.
        noise: S_noise, the scale of the added noise (EDM uses 1.003 to 1.007).
    """

    churn: float = eqx.field(static=True, default=0.0)
    churn_min: float = eqx.field(static=True, default=0.0)
    churn_max: float = eqx.field(static=True, default=math.inf)
    noise: float = eqx.field(static=True, default=1.0)

    default_grid: ClassVar[str] = "karras"

    def __init__(self, churn=0.0, *, churn_min=0.0, churn_max=math.inf, noise=1.0):
        self.churn = float(check_nonnegative("churn", churn))
        self.churn_min = float(check_nonnegative("churn_min", churn_min))
        self.churn_max = float(churn_max)
        if not self.churn_max >= self.churn_min:
            raise ValueError(
                f"churn_max must be >= churn_min = {self.churn_min}, got {churn_max!r}"
            )
        self.noise = float(check_nonnegative("noise", noise))

    @property
    def order(self) -> int:
        """Declared order of convergence (2) of the deterministic sampler."""
        return 2


_NAMED = {
    "ddim": lambda: DPMSolverPP(1),
    "dpm++2m": lambda: DPMSolverPP(2),
    "dpm++3m": lambda: DPMSolverPP(3),
    "dpm++2s": lambda: DPMSolverPP(2, multistep=False),
    "unipc": lambda: UniPC(2),
    "edm_heun": lambda: EDMHeun(),
}
FEWSTEP_SAMPLERS: tuple[str, ...] = tuple(_NAMED)
"""Names of the few-step samplers accepted by ``sample_ode(solver=...)``: ``ddim``
(DPMSolverPP(1), order 1), ``dpm++2m`` (order 2), ``dpm++3m`` (order 3), ``dpm++2s``
(single-step, order 2, two evaluations per step), ``unipc`` (UniPC bh2, predictor order 2 with
corrector: order 3), ``edm_heun`` (order 2, two evaluations per step; ``EDMHeun(churn=...)``
for the stochastic variant)."""


def is_fewstep(solver: Any) -> bool:
    """Whether ``solver`` names or is one of the few-step samplers."""
    return isinstance(solver, FewStepSampler) or (
        isinstance(solver, str) and solver in FEWSTEP_SAMPLERS
    )


def get_sampler(solver: str | FewStepSampler) -> FewStepSampler:
    """The sampler object for a name in ``FEWSTEP_SAMPLERS`` (an object passes through)."""
    if isinstance(solver, FewStepSampler):
        return solver
    check_choice("solver", solver, FEWSTEP_SAMPLERS)
    return _NAMED[solver]()


# ------------------------------------------------------------------------------ time grids


def _lam(path, t):
    """Lambda = log alpha - log sigma (may be -inf / +inf at the endpoints)."""
    return jnp.log(_coef(path.alpha, t)) - jnp.log(_coef(path.sigma, t))


def _t_of_lam(path, lam, lo, hi):
    """Invert the increasing lambda(t) on [lo, hi] by bisection (to the dtype's resolution)."""
    iters = 64 if lam.dtype == jnp.float64 else 40
    lo = jnp.full_like(lam, lo)
    hi = jnp.full_like(lam, hi)

    def body(_, bounds):
        a, b = bounds
        mid = 0.5 * (a + b)
        up = _lam(path, mid) < lam
        return jnp.where(up, mid, a), jnp.where(up, b, mid)

    a, b = jax.lax.fori_loop(0, iters, body, (lo, hi))
    t = jax.lax.stop_gradient(0.5 * (a + b))
    # implicit derivative dt/dlambda = 1 / lambda'(t) (exact at the root; bisection has none)
    _, slope = jax.jvp(lambda u: _lam(path, u), (t,), (jnp.ones_like(t),))
    slope = jax.lax.stop_gradient(slope)
    return t + (lam - jax.lax.stop_gradient(lam)) / jnp.where(slope > 0, slope, 1.0)


def time_grid(
    path: GaussianPath,
    grid: str,
    steps: int,
    t0: float = 0.0,
    t1: float = 1.0,
    *,
    dtype: Any = None,
) -> jax.Array:
    """The ``steps + 1`` times ``t0 = t_0 < ... < t_N = t1`` of a few-step sampler's grid.

    ``"uniform"`` and ``"quadratic"`` are spaced in t; ``"logsnr"`` uniformly in
    lambda = log(alpha / sigma) and ``"karras"`` in rho^(1/7), rho = sigma / alpha, between the
    values at ``path.clip(t0)`` and ``path.clip(t1)`` (finite even where alpha(0) = 0 or
    sigma(1) = 0); the end points are then ``t0`` and ``t1`` exactly (the final step into
    sigma = 0 starts at the grid's second-to-last level).

    Args:
        path: the Gaussian path.
        grid: one of ``GRIDS``.
        steps: number of intervals N >= 1.
        t0: start (noise side).
        t1: end (data side), > t0.
        dtype: floating dtype of the result (default: JAX's default float).

    Returns:
        Times of shape ``(steps + 1,)``, increasing.
    """
    check_choice("grid", grid, GRIDS)
    steps = check_int("steps", steps)
    dtype = jnp.result_type(float) if dtype is None else dtype
    k = jnp.arange(steps + 1, dtype=dtype) / steps
    t0a, t1a = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    if grid == "uniform":
        ts = t0a + (t1a - t0a) * k
    elif grid == "quadratic":
        ts = t0a + (t1a - t0a) * (1.0 - (1.0 - k) ** 2)
    else:
        lo, hi = path.clip(t0a).astype(dtype), path.clip(t1a).astype(dtype)
        l_lo, l_hi = _lam(path, lo), _lam(path, hi)
        if grid == "logsnr":
            lam = l_lo + (l_hi - l_lo) * k
        else:  # karras, rho = 7
            r_max, r_min = jnp.exp(-l_lo / 7.0), jnp.exp(-l_hi / 7.0)
            lam = -7.0 * jnp.log(r_max + k * (r_min - r_max))
        ts = jax.lax.stop_gradient(_t_of_lam(path, lam, lo, hi))
    return ts.at[0].set(t0a).at[-1].set(t1a)


# ------------------------------------------------------------------------ data prediction


class _ViaVelocity(eqx.Module):
    """D(t, x) from a velocity field on ``path`` by the exact conversion."""

    field: Any
    path: GaussianPath

    def __call__(self, t, x, args):
        v = self.field(t, x, args)
        return convert(v, x, t, self.path, source="velocity", target="denoiser")


class _AtClippedTime(eqx.Module):
    """Evaluate ``den`` at t clipped into [path.t_min, path.t_max], as every conversion does.

    At alpha = 0 an eps or score model determines no data prediction (D = (x - sigma E) / 0).
    """

    den: Any
    path: GaussianPath

    def __call__(self, t, x, args):
        return self.den(self.path.clip(t).astype(jnp.result_type(t)), x, args)


def _data_prediction(field, path):
    """A one-sample ``D(t, x, args)`` for ``field``: its own parametrisation when known."""
    if isinstance(field, _Converted) and field.path is path:
        den = _Converted(field.model, path, field.source, "denoiser")
    elif isinstance(field, _Field) and field.path is path:
        den = _Field(field.mixture, path, _gt_denoiser)
    else:
        den = _ViaVelocity(field, path)
    return _AtClippedTime(den, path)


# ------------------------------------------------------------------- coefficient tables


def _safe(x, ok, fill=1.0):
    return jnp.where(ok, x, fill)


def _step_orders(order, n, first_deg, last_deg, lower_order_final):
    """Per-step order (numpy, static): warm-up, endpoint steps and lower-order final steps."""
    orders = np.empty(n, dtype=np.int32)
    for k in range(n):
        hist = k - (1 if first_deg else 0)  # past points with finite lambda
        o = min(order, 1 + max(hist, 0))
        if first_deg and k == 0:
            o = 1
        if last_deg and k == n - 1:
            o = 1
        if lower_order_final and n < 15:
            o = min(o, n - k)
        orders[k] = o
    return orders


def _grid_coefficients(path, ts, first_deg, last_deg):
    a = _coef(path.alpha, ts)
    s = _coef(path.sigma, ts)
    lam = jnp.log(a) - jnp.log(s)
    if first_deg:
        a = a.at[0].set(0.0)
        lam = lam.at[0].set(-jnp.inf)
    if last_deg:
        s = s.at[-1].set(0.0)
        lam = lam.at[-1].set(jnp.inf)
    return a, s, lam


def _multistep_table(sampler, path, ts, first_deg, last_deg):
    """(A, C) with x_{k+1} = A_k x_k + sum_j C_kj D_{k-j} (+ UniPC corrector rows)."""
    n = ts.shape[0] - 1
    a, s, lam = _grid_coefficients(path, ts, first_deg, last_deg)
    p = sampler.order_
    orders = jnp.asarray(_step_orders(p, n, first_deg, last_deg, sampler.lower_order_final))
    a_t, s_s, s_t = a[1:], s[:-1], s[1:]
    h = lam[1:] - lam[:-1]
    ratio = s_t / s_s  # sigma_t / sigma_s
    phi1 = jnp.expm1(-h)  # e^{-h} - 1 (-1 where h = inf)
    big_b = -a_t * phi1  # alpha_t (1 - e^{-h}): the DDIM weight of D_k
    lam_prev = jnp.concatenate([lam[:1], lam[:-2]])  # lambda_{k-1} (k = 0: unused)
    lam_prev2 = jnp.concatenate([lam[:2], lam[:-3]])[:n]
    o2, o3 = orders >= 2, orders >= 3
    hs = _safe(h, o2)
    r0 = _safe(lam[:-1] - lam_prev, o2) / hs  # (masked before dividing: finite gradients)
    r1 = _safe(lam_prev - lam_prev2, o3) / hs
    zero = jnp.zeros_like(h)
    if isinstance(sampler, DPMSolverPP):
        # order 1: DDIM; order 2 (2M): D_k + (D_k - D_{k-1}) / (2 r0)
        c0 = jnp.where(o2, big_b * (1 + 0.5 / r0), big_b)
        c1 = jnp.where(o2, -big_b * 0.5 / r0, zero)
        c2 = zero
        # order 3 (3M): D ~ D_k + u D' + u^2 D'' / 2 in u = lambda - lambda_k, integrated
        # exactly: alpha_t (-phi_1 D_k + phi_2 h D' - phi_3 h^2 D''), phi_2 = phi_1 / h + 1,
        # phi_3 = phi_2 / h - 1/2, with h D' ~ D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) and
        # h^2 D'' ~ 2 D2 = 2 (D1_0 - D1_1) / (r0 + r1) (D1_0 = (D_k - D_{k-1}) / r0,
        # D1_1 = (D_{k-1} - D_{k-2}) / r1). Note the 2: (D1_0 - D1_1) / (r0 + r1) estimates
        # h^2 D'' / 2, and without the factor the method is of order 2 only (checked in the tests).
        af1 = a_t * _safe(phi1, o3)
        af2 = a_t * (_safe(phi1, o3) / hs + 1.0)
        af3 = 2.0 * a_t * ((_safe(phi1, o3) / hs + 1.0) / hs - 0.5)
        q = r0 / (r0 + r1)
        cu = af2 * (1 + q) - af3 / (r0 + r1)  # weight of D1_0
        cw = -af2 * q + af3 / (r0 + r1)  # weight of D1_1
        c0 = jnp.where(o3, -af1 + cu / r0, c0)
        c1 = jnp.where(o3, -cu / r0 + cw / r1, c1)
        c2 = jnp.where(o3, -cw / r1, c2)
        return dict(A=ratio, C=jnp.stack([c0, c1, c2], -1), orders=orders)
    # UniPC bh2 (predict x0): B_h = expm1(-h); rk = (lambda_{k-1} - lambda_k) / h = -r0
    bh = phi1
    rk = -r0
    ab = a_t * bh
    p0 = jnp.where(o2, big_b + 0.5 * ab / rk, big_b)
    p1 = jnp.where(o2, -0.5 * ab / rk, zero)
    # corrector weights: b_i from h_phi_k recursion, rhos_c solve R rho = b
    regular = jnp.isfinite(h)
    hh = -_safe(h, regular)
    bhs = _safe(bh, regular)
    hphi1 = _safe(phi1, regular) / hh - 1.0
    b1 = hphi1 / bhs
    hphi2 = hphi1 / hh - 0.5
    b2 = hphi2 * 2.0 / bhs
    rho0 = (b1 - b2) / (1.0 - rk)
    rho1 = b1 - rho0
    # order-1 corrector: rho = 1/2 on (m_t - m_k)
    q0 = jnp.where(o2, big_b + ab * (rho0 / rk + rho1), big_b + 0.5 * ab)
    q1 = jnp.where(o2, -ab * rho0 / rk, zero)
    qt = jnp.where(o2, -ab * rho1, -0.5 * ab)
    # no corrector on a step into the data (lambda_t = +inf; never corrected: it is the last).
    # Out of pure noise (lambda_s = -inf) the order-1 corrector has the finite limit
    # x_t = (sigma_t / sigma_s) x_s + alpha_t (D_s + D_t) / 2, the trapezoidal rule in
    # u = e^lambda for d(x / sigma) / du = D: second order at no extra evaluation.
    from_noise = ~jnp.isfinite(lam[:-1]) & jnp.isfinite(lam[1:])
    q0 = jnp.where(regular, q0, jnp.where(from_noise, 0.5 * a_t, p0))
    q1 = jnp.where(regular, q1, jnp.where(from_noise, zero, p1))
    qt = jnp.where(regular, qt, jnp.where(from_noise, 0.5 * a_t, zero))
    return dict(A=ratio, C=jnp.stack([p0, p1], -1), Q=jnp.stack([q0, q1], -1), qt=qt, orders=orders)


# ---------------------------------------------------------------------------------- cores


def _bc(c, x):
    return c.astype(x.dtype)


@eqx.filter_jit
def _multistep_core(den, x, ts, table, args, warm, kw):
    """DPM-Solver++ multistep: one evaluation per step, history of the last three D.

    With ``warm`` (2S coefficients of step ``kw``), step ``kw`` is a single-step 2S step.
    """
    den_b = batched(den)
    c = table["C"]
    a = table["A"]

    def body(carry, k):
        x, d1, d2 = carry
        d0 = den_b(ts[k], x, args)
        x = _bc(a[k], x) * x + _bc(c[k, 0], x) * d0 + _bc(c[k, 1], x) * d1 + _bc(c[k, 2], x) * d2
        return (x, d0, d1), None

    z = jnp.zeros_like(x)
    n = ts.shape[0] - 1
    if warm is None:
        (x, _, _), _ = jax.lax.scan(body, (x, z, z), jnp.arange(n))
        return x
    carry = (x, z, z)
    for k in range(kw):  # at most the one endpoint step before the warm-up
        carry, _ = body(carry, k)
    x, d1, _ = carry
    d0 = den_b(ts[kw], x, args)
    u = _bc(warm["u_x"], x) * x + _bc(warm["u_d"], x) * d0
    du = den_b(warm["tmid"], u, args)
    x = _bc(warm["x"], x) * x + _bc(warm["du"], x) * du
    (x, _, _), _ = jax.lax.scan(body, (x, d0, d1), jnp.arange(kw + 1, n))
    return x


@eqx.filter_jit
def _unipc_core(den, x, ts, table, args):
    """UniPC: predict, evaluate at the prediction, correct; the final step is not corrected."""
    den_b = batched(den)
    a, p, q, qt = table["A"], table["C"], table["Q"], table["qt"]
    n = ts.shape[0] - 1
    m0 = den_b(ts[0], x, args)

    def body(carry, k):
        x, m_k, m_prev = carry
        x_pred = _bc(a[k], x) * x + _bc(p[k, 0], x) * m_k + _bc(p[k, 1], x) * m_prev
        m_t = den_b(ts[k + 1], x_pred, args)
        x_new = (
            _bc(a[k], x) * x
            + _bc(q[k, 0], x) * m_k
            + _bc(q[k, 1], x) * m_prev
            + _bc(qt[k], x) * m_t
        )
        return (x_new, m_t, m_k), None

    (x, m_k, m_prev), _ = jax.lax.scan(body, (x, m0, jnp.zeros_like(x)), jnp.arange(n - 1))
    k = n - 1
    return _bc(a[k], x) * x + _bc(p[k, 0], x) * m_k + _bc(p[k, 1], x) * m_prev


def _ddim_step(den_b, x, t_s, a_s, s_s, a_t, s_t, args):
    d = den_b(t_s, x, args)
    return _bc(s_t / s_s, x) * x + _bc(a_t - s_t * a_s / s_s, x) * d


@eqx.filter_jit
def _singlestep_core(den, x, ts, tmid, coef, args, key, head, tail):
    """Two-evaluation steps (DPM-Solver++ 2S, EDM Heun) over ``ts[head : n - tail]``.

    Euler (DDIM) steps at a degenerate first (``head``) or last (``tail``) step.
    """
    den_b = batched(den)
    n = ts.shape[0] - 1
    a, s = coef["a"], coef["s"]
    if head:
        x = _ddim_step(den_b, x, ts[0], a[0], s[0], a[1], s[1], args)

    def body(x, k):
        if "noise" in coef:  # EDM churn: raise the noise level first
            z = jr.normal(jr.fold_in(key, k), x.shape, x.dtype)
            x = _bc(coef["scale"][k], x) * x + _bc(coef["noise"][k], x) * z
        d0 = den_b(coef["t_s"][k], x, args)
        if "heun" in coef:
            hc = coef["heun"]
            x_e = _bc(hc["e_x"][k], x) * x + _bc(hc["e_d"][k], x) * d0
            d1 = den_b(ts[k + 1], x_e, args)
            x = (
                _bc(hc["x"][k], x) * x
                + _bc(hc["d0"][k], x) * d0
                + _bc(hc["xe"][k], x) * x_e
                + _bc(hc["d1"][k], x) * d1
            )
        else:  # DPM-Solver++(2S), r = 1/2
            sc = coef["mid"]
            u = _bc(sc["u_x"][k], x) * x + _bc(sc["u_d"][k], x) * d0
            du = den_b(tmid[k], u, args)
            x = _bc(sc["x"][k], x) * x + _bc(sc["du"][k], x) * du
        return x, None

    x, _ = jax.lax.scan(body, x, jnp.arange(head, n - tail))
    if tail:
        k = n - 1
        x = _ddim_step(den_b, x, ts[k], a[k], s[k], a[k + 1], s[k + 1], args)
    return x


# ------------------------------------------------------------------------------ entry point


def _degenerate(path, t, which):
    """Whether alpha (which='alpha') or sigma vanishes at the concrete time t."""
    with jax.ensure_compile_time_eval():
        tt = jnp.asarray(t, jnp.result_type(float))
        a = abs(float(_coef(path.alpha, tt)))
        s = abs(float(_coef(path.sigma, tt)))
    v = a if which == "alpha" else s
    return v <= _VANISH_RTOL * max(a, s)


def _concrete_time(name, t):
    c = concrete(t)
    if c is None:
        raise ValueError(
            f"few-step samplers build their time grid before tracing: {name} must be a concrete "
            f"number, got a traced value (pass {name} as a Python float, not through jit)"
        )
    if c.shape != () or not np.isfinite(c):
        raise ValueError(f"{name} must be a finite scalar, got {t!r}")
    return float(c)


def _resolve(vector_field, label, path, t0, t1):
    """The field's Gaussian path and the concrete times t0 < t1 of a few-step sampler."""
    if path is None:
        path = getattr(vector_field, "path", None)
    if not isinstance(path, GaussianPath):
        raise ValueError(
            f"solver {label!r} needs the Gaussian path of the model: pass path=<GaussianPath>, "
            "or a field that carries it (paths.as_vector_field(model, path, kind), "
            f"groundtruth.velocity_field(mixture, path)); got path={path!r}"
        )
    c0, c1 = _concrete_time("t0", t0), _concrete_time("t1", t1)
    if not c1 > c0:
        raise ValueError(
            f"few-step samplers integrate from noise to data: need t1 > t0, got t0={c0}, t1={c1}"
        )
    return path, c0, c1


def _check_grid_array(grid, c0, c1):
    """A given grid: a concrete 1-d array of times, strictly increasing from t0 to t1."""
    c = concrete(grid)
    if c is None:
        raise ValueError(
            "grid must be concrete (the sampler's orders and endpoint steps depend on it): pass "
            "a NumPy or JAX array built outside jit, got a traced value"
        )
    c = np.array(c, dtype=np.float64)  # a copy
    if c.ndim != 1 or c.shape[0] < 2 or not np.all(np.isfinite(c)):
        raise ValueError(
            f"grid must be a name in {GRIDS} or a 1-d array of at least 2 finite times, got "
            f"shape {c.shape}"
        )
    if not np.all(np.diff(c) > 0):
        raise ValueError(f"grid must be strictly increasing (noise to data), got {c.tolist()}")
    if not (np.isclose(c[0], c0, rtol=0, atol=1e-6) and np.isclose(c[-1], c1, rtol=0, atol=1e-6)):
        raise ValueError(
            f"grid must run from t0 = {c0:g} to t1 = {c1:g}, got {c[0]:g} ... {c[-1]:g}"
        )
    return c


def _grid_and_steps(sampler, label, grid, steps, c0, c1):
    """(grid name or None, given times or None, number of steps) from ``grid`` and ``steps``."""
    if grid is not None and not isinstance(grid, str):
        c = _check_grid_array(grid, c0, c1)
        n = c.shape[0] - 1
        if steps is not None and check_int("steps", steps) != n:
            raise ValueError(
                f"steps={steps} does not match the given grid of {c.shape[0]} times ({n} steps);"
                " pass steps=None or the grid's number of intervals"
            )
        c[0], c[-1] = c0, c1
        return None, jnp.asarray(c, dtype=jnp.result_type(float)), n
    if steps is None:
        raise ValueError(
            f"solver {label!r} is a few-step sampler on a fixed grid: pass steps=<int> (the "
            "number of grid intervals) or a grid of times (grid=<1-d array>)"
        )
    steps = check_int("steps", steps)
    grid = sampler.default_grid if grid is None else check_choice("grid", grid, GRIDS)
    return grid, None, steps


def sample_fewstep(
    vector_field,
    x0,
    *,
    solver,
    t0,
    t1,
    steps,
    grid,
    path,
    key,
    saveat,
    args,
    cond,
    throw=True,
) -> Solution:
    """The few-step branch of ``solve.sample_ode`` (validated arguments; see its docstring).

    Non-finite results fail loudly like every sampler (``throw``): one finiteness check of the
    final state, reported by ``_failures.report`` (the step is not tracked: ``fail_step`` 0).
    """
    sampler = get_sampler(solver)
    label = solver if isinstance(solver, str) else type(solver).__name__
    if saveat is not None:
        raise ValueError(f"saveat is not supported by the few-step sampler {label!r}")
    path, c0, c1 = _resolve(vector_field, label, path, t0, t1)
    grid, ts_given, steps = _grid_and_steps(sampler, label, grid, steps, c0, c1)
    churn = isinstance(sampler, EDMHeun) and sampler.churn > 0
    if churn and key is None:
        raise ValueError("EDMHeun with churn > 0 needs key=<PRNG key> for the added noise")
    if not churn and key is not None:
        raise ValueError(
            f"key is only used by a stochastic sampler (EDMHeun(churn > 0)), not by {label!r}"
        )
    x = _check_x0(x0)
    args = pack(args, cond, x.shape[0], "sample_ode")
    _check_output("vector_field", vector_field, c0, x, args)
    den = _data_prediction(vector_field, path)
    first_deg = _degenerate(path, c0, "alpha")
    last_deg = _degenerate(path, c1, "sigma")
    x, nfe = _run(sampler, den, path, x, args, key if churn else None, c0, c1, steps, grid,
                  first_deg, last_deg, ts_given)  # fmt: skip
    ok = all_finite(x)
    where = "a given" if grid is None else f"the {grid!r}"
    hint = (
        f"The few-step sampler {label!r} ran {steps} steps on {where} grid from t = {c0:g} "
        f"to {c1:g}; check the model for NaN/inf near the ends of the path"
    )
    x = report(
        x, ok=ok, step=jnp.zeros((), jnp.int32), total=steps, where="sample_ode", throw=throw,
        describe=lambda k: f"step {k} of {steps}", hint=hint,
    )  # fmt: skip
    c_ok = concrete(ok)
    status = (
        dict(ok=ok, fail_step=jnp.zeros((), jnp.int32), fail_t=jnp.where(ok, jnp.nan, jnp.nan))
        if c_ok is None
        else dict(ok=bool(c_ok), fail_step=0, fail_t=float("nan"))
    )
    return Solution(x=x, nfe=nfe, num_steps=steps, num_accepted=steps, num_rejected=0, **status)


def _is_multistep(sampler):
    if isinstance(sampler, UniPC):
        return True
    return isinstance(sampler, DPMSolverPP) and (sampler.multistep or sampler.order_ == 1)


def _uses_warmup(sampler, steps, first_deg, last_deg):
    return (
        isinstance(sampler, DPMSolverPP)
        and sampler.multistep
        and sampler.order_ == 3
        and sampler.warmup == "singlestep"
        and int(first_deg) < steps - int(last_deg)
    )


def _nfe(sampler, steps, first_deg, last_deg):
    """Network evaluations per sample (static): endpoint steps cost one evaluation."""
    if _is_multistep(sampler):
        return steps + int(_uses_warmup(sampler, steps, first_deg, last_deg))
    head = int(first_deg)
    tail = int(last_deg and steps - head >= 1)
    return head + tail + 2 * (steps - head - tail)


@eqx.filter_jit
def _run(sampler, den, path, x, args, key, c0, c1, steps, grid, first_deg, last_deg, ts=None):
    """Grid, coefficients and the sampler's scan, compiled together (static configuration).

    ``ts``: a given grid (an array, traced: one compilation for every grid of that length),
    else the named ``grid``.
    """
    if ts is None:
        ts = time_grid(path, grid, steps, c0, c1, dtype=x.dtype)
    else:
        ts = ts.astype(x.dtype)
    nfe = _nfe(sampler, steps, first_deg, last_deg)
    if _is_multistep(sampler):
        table = _multistep_table(sampler, path, ts, first_deg, last_deg)
        if isinstance(sampler, UniPC):
            return _unipc_core(den, x, ts, table, args), nfe
        kw = int(first_deg)
        warm = None
        if _uses_warmup(sampler, steps, first_deg, last_deg):
            mid = _single_coefficients(
                DPMSolverPP(2, multistep=False), path, ts, first_deg, last_deg, steps
            )
            warm = {name: v[kw] for name, v in mid["mid"].items()}
            warm["tmid"] = mid["tmid"][kw]
        return _multistep_core(den, x, ts, table, args, warm, kw), nfe
    head = int(first_deg)
    tail = int(last_deg and steps - head >= 1)
    coef = _single_coefficients(sampler, path, ts, first_deg, last_deg, steps)
    tmid = coef.pop("tmid", None)
    return _singlestep_core(den, x, ts, tmid, coef, args, key, head, tail), nfe


def _single_coefficients(sampler, path, ts, first_deg, last_deg, steps):
    a, s, lam = _grid_coefficients(path, ts, first_deg, last_deg)
    coef = dict(a=a, s=s, t_s=ts[:-1])
    a_s, s_s, a_t, s_t = a[:-1], s[:-1], a[1:], s[1:]
    lo, hi = path.clip(ts[0]).astype(ts.dtype), path.clip(ts[-1]).astype(ts.dtype)
    ok = jnp.isfinite(lam[:-1]) & jnp.isfinite(lam[1:])  # regular (non-endpoint) steps
    if isinstance(sampler, DPMSolverPP):  # 2S with r = 1/2
        h = _safe(lam[1:] - lam[:-1], ok)
        lam_mid = _safe(lam[:-1], ok, 0.0) + 0.5 * h
        tmid = _t_of_lam(path, lam_mid, lo, hi)
        a_m, s_m = _coef(path.alpha, tmid), _coef(path.sigma, tmid)
        coef["tmid"] = tmid
        coef["mid"] = dict(
            u_x=s_m / s_s,
            u_d=-a_m * jnp.expm1(-0.5 * h),
            x=s_t / s_s,
            du=-a_t * jnp.expm1(-h),
        )
        return coef
    # EDM Heun, possibly with churn: the step starts at t_hat >= t_k (rho_hat >= rho_k)
    rho = jnp.exp(-lam)
    if sampler.churn > 0:
        gamma = min(sampler.churn / steps, math.sqrt(2.0) - 1.0)
        in_window = (rho[:-1] >= sampler.churn_min) & (rho[:-1] <= sampler.churn_max)
        rho_hat = rho[:-1] * (1.0 + gamma)
        lam_hat = -jnp.log(_safe(rho_hat, ok))
        use = ok & in_window & (lam_hat >= _lam(path, lo))
        t_hat = _t_of_lam(path, _safe(lam_hat, use, 0.0), lo, hi)
        t_hat = jnp.where(use, t_hat, ts[:-1])
        a_h, s_h = _coef(path.alpha, t_hat), _coef(path.sigma, t_hat)
        rho_h = s_h / _safe(a_h, use)
        coef["scale"] = jnp.where(use, a_h / _safe(a_s, use), 1.0)
        var = jnp.maximum(rho_h**2 - _safe(rho[:-1], use, 0.0) ** 2, 0.0)
        coef["noise"] = jnp.where(use, a_h * jnp.sqrt(var) * sampler.noise, 0.0)
        coef["t_s"] = t_hat
        a_s, s_s = jnp.where(use, a_h, a_s), jnp.where(use, s_h, s_s)
    a_ss, s_ts = _safe(a_s, ok), _safe(s_t, ok)
    rho_ratio = (s_s * a_t) / (a_ss * s_ts)  # rho_s / rho_t
    big_b = a_t - s_t * a_s / s_s
    coef["heun"] = dict(
        e_x=s_t / s_s,
        e_d=big_b,
        x=0.5 * (a_t / a_ss + s_t / s_s),
        d0=0.5 * big_b,
        xe=0.5 * (1.0 - rho_ratio),
        d1=-0.5 * a_t * (1.0 - rho_ratio),
    )
    return coef


# --------------------------------------------------------------------- optimised time grid


def optimize_grid(
    vector_field: Any,
    x0: Any,
    *,
    solver: Any = "unipc",
    steps: Any = None,
    init: Any = None,
    iters: int = 300,
    learning_rate: float = 0.05,
    t0: float = 0.0,
    t1: float = 1.0,
    path: Any = None,
    args: Any = None,
    cond: Any = None,
    tol: float | None = None,
) -> tuple[jax.Array, dict]:
    """A time grid fitted to a field: the steps that minimise a pilot batch's endpoint error.

    Learned time steps as in LD3 (Tong et al. 2025, "Learning to Discretize Denoising Diffusion
    ODEs"), with its plain loss: the pilot noise ``x0`` is carried to t1 by a float64-grade
    reference (``sample_ode(solver="dopri8", per_sample=True)`` at tolerance ``tol``) and by the
    few-step ``solver`` on a grid of ``steps`` intervals, and the grid is optimised by Adam
    on log(mean squared endpoint distance), differentiating through the sampler. The grid is
    parametrised by its interval lengths (a softmax, each at least ``1e-3 / steps`` of
    t1 - t0); the best grid met is returned. Use it as ``sample_ode(..., solver=solver,
    grid=ts)`` (same t0, t1) on fresh noise: the pilot should be several hundred samples
    (the endpoint errors are heavy-tailed near the boundaries between modes, and a small
    pilot fits its own few worst trajectories).

    Cost, all before sampling: the reference solve and ``iters`` runs of the sampler on the
    pilot batch, each with its vector-Jacobian product (reported in ``info``). The NFE of the
    sampling itself is that of ``solver`` on any grid of ``steps`` intervals.

    Args:
        vector_field: as for ``sample_ode`` with a few-step sampler (a field on a Gaussian
            path, ``f(t, x, args)`` on one sample).
        x0: pilot noise ``(n, *event)`` at t0, drawn like the noise to be sampled from.
        solver: a name in ``FEWSTEP_SAMPLERS`` or a deterministic ``FewStepSampler``.
        steps: number of grid intervals (taken from ``init`` when that is an array).
        init: starting grid, a name in ``GRIDS`` or an array of times; default the named
            grid with the smallest pilot error (each tried once on the pilot batch).
        iters: Adam iterations.
        learning_rate: Adam step size on the log interval lengths.
        t0: start (noise side).
        t1: end (data side), > t0.
        path: the field's ``GaussianPath`` (default ``vector_field.path``).
        args: shared field arguments, as for ``sample_ode``.
        cond: per-sample condition (leading axis n), as for ``sample_ode``.
        tol: rtol = atol of the reference (default 1e-10 in float64, 1e-6 in float32).

    Returns:
        ``(ts, info)``: the times ``(steps + 1,)`` from t0 to t1, and a dict with
        ``pilot_error`` and ``initial_error`` (RMS endpoint distance to the reference on the
        pilot batch with the fitted and the starting grid), ``start`` (the starting grid's
        name, or ``"given"``), ``n_pilot``, ``reference_nfe``
        (per pilot sample, max over samples), ``iters`` and ``sampler_nfe`` (per sample per
        iteration; the pilot cost per pilot sample is
        ``reference_nfe + iters * sampler_nfe`` evaluations and as many vector-Jacobian
        products) and ``nonfinite_iters`` (iterations whose loss or gradient had a non-finite
        entry; those gradient entries were zeroed, and the best grid met is returned).

    Raises:
        ValueError: bad names, sizes, times, a stochastic sampler, or a pilot whose error is
            not finite.
    """
    from .solve import sample_ode  # (solve imports this module)

    sampler = get_sampler(solver)
    label = solver if isinstance(solver, str) else type(solver).__name__
    if isinstance(sampler, EDMHeun) and sampler.churn > 0:
        raise ValueError(
            f"solver {label!r} is stochastic (churn > 0): its endpoints have no grid to fit"
        )
    iters = check_int("iters", iters)
    learning_rate = float(check_positive("learning_rate", learning_rate))
    path, c0, c1 = _resolve(vector_field, label, path, t0, t1)
    grid, ts, steps = _grid_and_steps(sampler, label, init, steps, c0, c1)
    x = _check_x0(x0)
    packed = pack(args, cond, x.shape[0], "optimize_grid")
    _check_output("vector_field", vector_field, c0, x, packed)
    if tol is None:
        tol = 1e-10 if x.dtype == jnp.float64 else 1e-6
    tol = float(check_positive("tol", tol))
    ref = sample_ode(vector_field, x, t0=c0, t1=c1, solver="dopri8", rtol=tol, atol=tol,
                     args=args, cond=cond, per_sample=True)  # fmt: skip
    den = _data_prediction(vector_field, path)
    first_deg = _degenerate(path, c0, "alpha")
    last_deg = _degenerate(path, c1, "sigma")
    start = "given" if ts is not None else grid
    if init is None:  # start from the named grid that does best on the pilot
        named = {g: time_grid(path, g, steps, c0, c1, dtype=x.dtype) for g in GRIDS}
        rms = {}
        for g, times in named.items():  # a traced grid: one compilation serves all of them
            out, _ = _run(sampler, den, path, x, packed, None, c0, c1, steps, None, first_deg,
                          last_deg, times)  # fmt: skip
            err = float(jnp.sqrt(jnp.mean(jnp.sum((out - ref.x).reshape(x.shape[0], -1) ** 2, -1))))
            rms[g] = err if np.isfinite(err) else np.inf
        start = min(rms, key=rms.get)
        ts = named[start]
    elif ts is None:
        ts = time_grid(path, grid, steps, c0, c1, dtype=x.dtype)
    ts = ts.astype(x.dtype)
    theta, loss, nonfinite, nfe = _fit_grid(
        sampler, den, path, x, ref.x, packed, ts, c0, c1, steps, first_deg, last_deg,
        iters, jnp.asarray(learning_rate, x.dtype),
    )  # fmt: skip
    losses = np.asarray(loss)
    if not np.isfinite(losses[0]):
        raise ValueError(
            f"the pilot's endpoint error with solver {label!r} on the starting grid is not "
            "finite: check the field for NaN/inf or start from another grid (init=...)"
        )
    info = dict(
        pilot_error=float(np.exp(0.5 * np.nanmin(losses))),
        initial_error=float(np.exp(0.5 * losses[0])),
        start=start,
        n_pilot=int(x.shape[0]),
        reference_nfe=int(ref.nfe),
        iters=iters,
        sampler_nfe=int(nfe),
        nonfinite_iters=int(nonfinite),
    )
    return _grid_from(theta, c0, c1, steps), info


def _grid_from(theta, c0, c1, steps):
    floor = 1e-3 / steps
    w = floor + (1.0 - steps * floor) * jax.nn.softmax(theta)
    ts = c0 + (c1 - c0) * jnp.concatenate([jnp.zeros(1, w.dtype), jnp.cumsum(w)])
    return jnp.clip(ts, c0, c1).at[0].set(c0).at[-1].set(c1)


@eqx.filter_jit
def _fit_grid(sampler, den, path, x, ref, args, ts, c0, c1, steps, first_deg, last_deg, iters,
              learning_rate):  # fmt: skip
    """Adam on the log interval lengths: best theta met, losses, non-finite count, NFE.

    The count is of iterations with a non-finite loss or gradient (those gradient entries are
    zeroed, so Adam skips them).

    (The loss of the last update's result is not evaluated: one forward pass less to compile.)
    """
    optimizer = optax.adam(learning_rate)
    floor = 1e-3 / steps
    frac = jnp.maximum((jnp.diff(ts) / (c1 - c0) - floor) / (1.0 - steps * floor), 1e-12)
    theta0 = jnp.log(frac)

    def loss_fn(theta):
        grid = _grid_from(theta, c0, c1, steps)
        out, _ = _run(sampler, den, path, x, args, None, c0, c1, steps, None, first_deg,
                      last_deg, grid)  # fmt: skip
        return jnp.log(jnp.mean(jnp.sum((out - ref).reshape(out.shape[0], -1) ** 2, -1)))

    def body(carry, _):
        theta, state, best, best_loss = carry
        loss, g = jax.value_and_grad(loss_fn)(theta)
        better = jnp.isfinite(loss) & (loss < best_loss)
        best = jnp.where(better, theta, best)
        best_loss = jnp.where(better, loss, best_loss)
        finite = jnp.isfinite(g)
        g = jnp.where(finite, g, 0.0)  # counted and reported (info["nonfinite_iters"])
        updates, state = optimizer.update(g, state)
        bad = ~(jnp.isfinite(loss) & jnp.all(finite))
        return (optax.apply_updates(theta, updates), state, best, best_loss), (loss, bad)

    inf = jnp.asarray(jnp.inf, theta0.dtype)
    (_, _, best, _), (losses, bad) = jax.lax.scan(
        body, (theta0, optimizer.init(theta0), theta0, inf), None, length=iters
    )
    return best, losses, jnp.sum(bad), _nfe(sampler, steps, first_deg, last_deg)
