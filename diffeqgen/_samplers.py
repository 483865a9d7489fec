"""Discrete samplers: DDPM ancestral sampling, DDIM, unadjusted Langevin, predictor-corrector.

All loops are ``lax.scan`` inside one ``eqx.filter_jit`` per configuration, over the whole
batch at once; each returns a ``Solution`` whose ``nfe`` counts network evaluations per sample.
Time convention: t = 0 noise, t = 1 data; DDPM step k (k = T is noise) has model time
t_k = 1 - k / T.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from ._checks import check_int, check_nonnegative, check_positive, is_traced
from ._conditioning import batched as _batched
from ._conditioning import pack
from ._ddpm import DDPMSchedule
from ._failures import NONFINITE, concrete, first_bad, grid_describe, report
from ._solve_common import _core_scalar
from ._solvers import (
    Solution,
    _as_drift_diffusion,
    _check_output,
    _check_times,
    _check_x0,
    _time_arrays,
)
from ._types import RealScalarLike

__all__ = [
    "ddpm_sample",
    "ddim_sample",
    "langevin_mcmc",
    "predictor_corrector",
    "annealed_langevin",
]


def _bcast(c, x):
    """Per-sample scalars ``(n,)`` -> broadcastable against ``x`` ``(n, *event)``."""
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def _check_schedule(schedule):
    if not all(hasattr(schedule, a) for a in ("betas", "alphas", "alpha_bars", "num_steps")):
        raise TypeError(f"schedule must be a diffeqgen.paths.DDPMSchedule, got {type(schedule)}")


def _fixed(x, bad, nfe, steps, *, where, throw, total, describe, hint="", t_of=None):
    """The ``Solution`` of a scan whose carry held ``bad``, the first non-finite step (0: none).

    ``throw=True`` raises (eagerly with the step, or by ``eqx.branched_error_if`` when traced)
    if ``bad > 0``; ``throw=False`` returns ``ok``/``fail_step``/``fail_t`` for the caller
    (``fail_t = t_of(bad)`` when the steps have times, else NaN).
    """
    c_bad = concrete(bad)  # after an eager call: one transfer, the rest on the host (issue 12)
    ok = (c_bad == 0) if c_bad is not None else bad == 0
    x = report(
        x, ok=ok, step=bad if c_bad is None else c_bad, total=total, where=where,
        throw=bool(throw), describe=describe, what=NONFINITE + " in the state", hint=hint,
    )  # fmt: skip
    if c_bad is not None:
        fail_t = float("nan") if ok or t_of is None else float(t_of(bad))
        status = dict(ok=bool(ok), fail_step=int(c_bad), fail_t=fail_t)
    else:
        fail_t = jnp.asarray(jnp.nan, x.dtype) if t_of is None else t_of(bad)
        status = dict(ok=ok, fail_step=bad, fail_t=jnp.where(ok, jnp.nan, fail_t))
    return Solution(x=x, nfe=nfe, num_steps=steps, num_accepted=steps, num_rejected=0, **status)


_HINT = "Check the model for NaN/inf (its output at that step) and the schedule or step size"


# ------------------------------------------------------------------------------------ DDPM


@eqx.filter_jit
def _ddpm_core(eps_model, key, x, betas, alphas, alpha_bars, args):
    T = betas.shape[0]
    eps_b = _batched(eps_model)
    dtype = x.dtype

    def body(carry, k):
        x, bad = carry
        beta, alpha, ab = betas[k - 1], alphas[k - 1], alpha_bars[k - 1]
        t = (1.0 - k / T).astype(dtype)
        eps = eps_b(t, x, args)
        mean = (x - (beta / jnp.sqrt(1.0 - ab)) * eps) / jnp.sqrt(alpha)
        z = jr.normal(jr.fold_in(key, k), x.shape, dtype)
        x = mean + jnp.where(k > 1, jnp.sqrt(beta), 0.0) * z
        return (x, first_bad(bad, x, T - k + 1)), None

    (x, bad), _ = jax.lax.scan(body, (x, jnp.int32(0)), jnp.arange(T, 0, -1))
    return x, bad


def ddpm_sample(
    eps_model,
    key: PRNGKeyArray,
    x_T: Float[ArrayLike, " n *event"],
    schedule,
    *,
    args: Any = None,
    cond: Any = None,
    throw: bool = True,
) -> Solution:
    r"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) with sigma_k^2 = beta_k.

    For k = T, ..., 1: ``x_{k-1} = (x_k - beta_k / sqrt(1 - abar_k) eps(t_k, x_k)) / sqrt(alpha_k) +
    sqrt(beta_k) z`` with ``z ~ N(0, I)`` (no noise at k = 1) and model time t_k = 1 - k/T.

    Args:
        eps_model: noise predictor ``eps(t, x, args)`` on one sample.
        key: PRNG key for the ancestral noise.
        x_T: starting batch ``(n, *event)``, normally ``N(0, I)``.
        schedule: a ``diffeqgen.paths.DDPMSchedule``.
        args: passed to ``eps_model`` (shared by every sample).
        cond: optional per-sample condition (leading axis n), mapped with the samples.
        throw: raise ``RuntimeError`` naming the step when the state becomes non-finite (the
            default); ``False`` returns the ``Solution`` with ``ok``/``fail_step`` instead.

    Returns:
        ``Solution`` with ``x`` (approximately data, step k = 0) and ``nfe = T``.
    """
    _check_schedule(schedule)
    x = _check_x0(x_T)
    args = pack(args, cond, x.shape[0], "ddpm_sample")
    _check_output("eps_model", eps_model, 1.0, x, args)
    cast = lambda a: jnp.asarray(a, x.dtype)  # noqa: E731
    x, bad = _ddpm_core(
        eps_model, key, x, cast(schedule.betas), cast(schedule.alphas),
        cast(schedule.alpha_bars), args,
    )  # fmt: skip
    T = schedule.num_steps

    def describe(j):
        return f"update {j} of {T} (k = {T - j + 1} -> {T - j}, model time t = {(j - 1) / T:.6g})"

    return _fixed(
        x, bad, T, T, where="ddpm_sample", throw=throw, total=T, describe=describe, hint=_HINT,
        t_of=lambda j: (j - 1).astype(x.dtype) / T,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ DDIM


@eqx.filter_jit
def _ddim_core(eps_model, key, x, ks, abar_full, eta, T, args):
    eps_b = _batched(eps_model)
    dtype = x.dtype

    def body(carry, inp):
        x, bad = carry
        j, k, k_prev = inp
        ab, ab_prev = abar_full[k], abar_full[k_prev]
        eps = eps_b((1.0 - k / T).astype(dtype), x, args)
        x0 = (x - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)
        sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps
        x = jnp.sqrt(ab_prev) * x0 + direction
        if key is not None:
            x = x + sigma * jr.normal(jr.fold_in(key, k), x.shape, dtype)
        return (x, first_bad(bad, x, j)), None

    steps = jnp.arange(1, ks.shape[0], dtype=jnp.int32)
    (x, bad), _ = jax.lax.scan(body, (x, jnp.int32(0)), (steps, ks[:-1], ks[1:]))
    return x, bad


def ddim_sample(
    eps_model,
    x_T: Float[ArrayLike, " n *event"],
    schedule,
    *,
    steps: int | None = None,
    eta: RealScalarLike = 0.0,
    key: PRNGKeyArray | None = None,
    args: Any = None,
    cond: Any = None,
    throw: bool = True,
) -> Solution:
    r"""DDIM sampling (Song, Meng, Ermon 2021) on a subsequence of the DDPM steps.

    With ``x0 = (x_k - sqrt(1 - abar_k) eps) / sqrt(abar_k)`` the update to the previous kept
    step k' is ``x_{k'} = sqrt(abar_k') x0 + sqrt(1 - abar_k' - s^2) eps + s z`` with
    ``s = eta sqrt((1 - abar_k') / (1 - abar_k)) sqrt(1 - abar_k / abar_k')``; eta = 0 is the
    deterministic DDIM (a discretisation of the probability-flow ODE), eta = 1 is DDPM-like.
    Kept steps are ``round(linspace(T, 0, steps + 1))``; the last update lands on k = 0 (data,
    abar_0 = 1). Model time t_k = 1 - k/T.

    Args:
        eps_model: noise predictor ``eps(t, x, args)`` on one sample.
        x_T: starting batch ``(n, *event)``.
        schedule: a ``diffeqgen.paths.DDPMSchedule`` (T = ``schedule.num_steps``).
        steps: number of updates (network evaluations), 1..T; default T.
        eta: stochasticity, >= 0; needs ``key`` when > 0.
        key: PRNG key (only for eta > 0).
        args: passed to ``eps_model`` (shared by every sample).
        cond: optional per-sample condition (leading axis n), mapped with the samples.
        throw: raise ``RuntimeError`` naming the step when the state becomes non-finite (the
            default); ``False`` returns the ``Solution`` with ``ok``/``fail_step`` instead.

    Returns:
        ``Solution`` with ``x`` and ``nfe = steps``.
    """
    _check_schedule(schedule)
    T = schedule.num_steps
    steps = T if steps is None else check_int("steps", steps)
    if steps > T:
        raise ValueError(f"steps must be <= schedule.num_steps = {T}, got {steps}")
    eta = check_nonnegative("eta", eta, traced_ok=True)
    if is_traced(eta):  # inside the user's jit/grad: the noise is drawn whenever a key is given
        if key is None:
            eta = eqx.error_if(eta, eta > 0, "ddim_sample with eta > 0 needs key=<PRNG key>")
    elif eta > 0 and key is None:
        raise ValueError("ddim_sample with eta > 0 needs key=<PRNG key>")
    x = _check_x0(x_T)
    args = pack(args, cond, x.shape[0], "ddim_sample")
    _check_output("eps_model", eps_model, 1.0, x, args)
    ks = np.round(np.linspace(T, 0, steps + 1)).astype(np.int32)
    ab = concrete(schedule.alpha_bars) if type(schedule) is DDPMSchedule else None
    if ab is not None:  # alpha_bar(0..T) on the host: no eager XLA programs (issue 12)
        abar_full = np.concatenate([np.ones((1,), ab.dtype), ab]).astype(x.dtype)
    else:
        abar_full = jnp.asarray(schedule.alpha_bar(jnp.arange(T + 1)), x.dtype)
    noisy = is_traced(eta) or eta > 0
    x, bad = _ddim_core(eps_model, key if noisy else None, x, ks, abar_full, eta, T, args)

    def describe(j):
        k, k2 = int(ks[j - 1]), int(ks[j])
        return f"update {j} of {steps} (k = {k} -> {k2}, model time t = {1 - k / T:.6g})"

    return _fixed(
        x, bad, steps, steps, where="ddim_sample", throw=throw, total=steps, describe=describe,
        hint=_HINT, t_of=lambda j: 1 - jnp.asarray(ks, x.dtype)[j - 1] / T,
    )  # fmt: skip


# -------------------------------------------------------------------------------- Langevin


@eqx.filter_jit
def _langevin_core(score, key, x, t, step_size, num_steps, temperature, args):
    score_b = _batched(score)
    noise_scale = jnp.sqrt(2.0 * step_size * temperature)

    def body(carry, i):
        x, bad = carry
        z = jr.normal(jr.fold_in(key, i), x.shape, x.dtype)
        x = x + step_size * score_b(t, x, args) + noise_scale * z
        return (x, first_bad(bad, x, i + 1)), None

    (x, bad), _ = jax.lax.scan(body, (x, jnp.int32(0)), jnp.arange(num_steps))
    return x, bad


def langevin_mcmc(
    score,
    x0: Float[ArrayLike, " n *event"],
    *,
    key: PRNGKeyArray,
    step_size: RealScalarLike,
    num_steps: int,
    temperature: RealScalarLike = 1.0,
    t: RealScalarLike = 1.0,
    args: Any = None,
    cond: Any = None,
    throw: bool = True,
) -> Solution:
    r"""Unadjusted Langevin algorithm (no Metropolis correction), every chain in parallel.

    ``x <- x + h score(x) + sqrt(2 h temperature) z``: the Euler-Maruyama discretisation of
    ``dX = grad log p(X) dt + sqrt(2 temperature) dW``, whose stationary law is proportional
    to ``p^(1/temperature)``. The step h leaves an O(h) bias: for a Gaussian target
    N(m, s^2) each coordinate's chain is stationary at mean m and variance
    ``s^2 / (1 - h / (2 s^2))`` (temperature 1).

    Args:
        score: ``score(t, x, args) = grad_x log p(x)`` on ONE sample (vmapped), the one
            model signature of the package, evaluated at the fixed time ``t`` (a
            time-independent score ignores ``t``).
        x0: initial chains ``(n, *event)``.
        key: PRNG key.
        step_size: h > 0.
        num_steps: number of updates (= nfe).
        temperature: noise temperature, > 0 (1: the standard algorithm).
        t: the time (or noise level, for a noise-conditional score) the score is taken at.
        args: passed to ``score`` (shared by every chain).
        cond: optional per-chain condition (leading axis n), mapped with the chains.
        throw: raise ``RuntimeError`` naming the step when a chain becomes non-finite (the
            default; e.g. a step size too large for the score); ``False`` returns the
            ``Solution`` with ``ok``/``fail_step`` instead.

    Returns:
        ``Solution`` with the final states and ``nfe = num_steps``.
    """
    step_size = check_positive("step_size", step_size, traced_ok=True)
    num_steps = check_int("num_steps", num_steps)
    temperature = check_positive("temperature", temperature, traced_ok=True)
    x = _check_x0(x0)
    args = pack(args, cond, x.shape[0], "langevin_mcmc")
    _check_output("score", score, t, x, args)
    ta = _core_scalar(t, x.dtype)
    x, bad = _langevin_core(score, key, x, ta, step_size, num_steps, temperature, args)
    return _fixed(
        x, bad, num_steps, num_steps, where="langevin_mcmc", throw=throw, total=num_steps,
        describe=lambda j: f"step {j} of {num_steps}",
        hint=f"Check the score for NaN/inf; a step_size too large (now {step_size}) diverges",
    )  # fmt: skip


# ------------------------------------------------------------------- predictor-corrector


def _norms(v):
    return jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=-1))


@eqx.filter_jit
def _pc_core(drift, diffusion, score, key, x, t0, t1, steps, corrector_steps, snr, args):
    drift_b, diff_b, score_b = _batched(drift), _batched(diffusion), _batched(score)
    dt = (t1 - t0) / steps

    def corrector(x, t, k):
        s = score_b(t, x, args)
        z = jr.normal(k, x.shape, x.dtype)
        # Batch means of the per-sample norms, as in Song et al.'s code: a per-sample ratio
        # explodes for samples whose score is near zero (low dimension).
        ratio = snr * jnp.mean(_norms(z)) / jnp.maximum(jnp.mean(_norms(s)), 1e-12)
        h = 2.0 * ratio**2
        return x + h * s + jnp.sqrt(2.0 * h) * z

    def body(carry, i):
        x, bad = carry
        t = t0 + i * dt
        kp, kc = jr.split(jr.fold_in(key, i))
        g = diff_b(t, x, args)
        g = _bcast(g, x) if g.ndim == 1 else g
        z = jr.normal(kp, x.shape, x.dtype)
        x = x + drift_b(t, x, args) * dt + g * jnp.sqrt(dt) * z
        t_next = t + dt
        for j in range(corrector_steps):
            x = corrector(x, t_next, jr.fold_in(kc, j))
        return (x, first_bad(bad, x, i + 1)), None

    (x, bad), _ = jax.lax.scan(body, (x, jnp.int32(0)), jnp.arange(steps))
    return x, bad


def predictor_corrector(
    sde,
    score,
    x0: Float[ArrayLike, " n *event"],
    *,
    key: PRNGKeyArray,
    steps: int,
    corrector_steps: int = 1,
    snr: RealScalarLike = 0.16,
    t0: RealScalarLike = 0.0,
    t1: RealScalarLike = 1.0,
    args: Any = None,
    cond: Any = None,
    throw: bool = True,
) -> Solution:
    r"""Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3) forward in t.

    Each of ``steps`` equal steps from t0 to t1 is one Euler-Maruyama step of the generative
    SDE ``dX = drift dt + diffusion dW`` (predictor) followed by ``corrector_steps`` Langevin
    steps at the new time, ``x <- x + h s + sqrt(2 h) z`` with the signal-to-noise step size
    ``h = 2 (snr ||z|| / ||s||)^2``, where ||.|| is the batch mean of the per-sample norms over
    all event dimensions (as in Song et al.'s code; a per-sample ratio explodes in low
    dimension for samples whose score is near zero).

    Args:
        sde: a ``diffeqgen.sdes.SDE`` or ``(drift, diffusion)`` pair (one-sample callables).
        score: ``score(t, x, args)`` on one sample, the score of the marginal p_t.
        x0: initial batch ``(n, *event)`` at t0 (noise).
        key: PRNG key.
        steps: predictor steps.
        corrector_steps: Langevin steps after each predictor step (>= 0).
        snr: target signal-to-noise ratio r of the corrector (> 0).
        t0: start time.
        t1: end time, > t0; stop short of a singular endpoint (e.g. ``path.t_max``).
        args: passed to drift, diffusion and score (shared by every sample).
        cond: optional per-sample condition (leading axis n), mapped with the samples.
        throw: raise ``RuntimeError`` naming the step and time when the state becomes
            non-finite (the default); ``False`` returns the ``Solution`` with
            ``ok``/``fail_step``/``fail_t`` instead.

    Returns:
        ``Solution``; ``nfe = steps * (1 + corrector_steps)`` (drift plus score evaluations).
    """
    drift, diffusion = _as_drift_diffusion(sde)
    steps = check_int("steps", steps)
    corrector_steps = check_int("corrector_steps", corrector_steps, minimum=0)
    snr = check_positive("snr", snr, traced_ok=True)
    x = _check_x0(x0)
    args = pack(args, cond, x.shape[0], "predictor_corrector")
    c0, c1 = _check_times(t0, t1, forward_only=True)
    _check_output("drift", drift, t0, x, args)
    _check_output("diffusion", diffusion, t0, x, args, allow_scalar=True)
    _check_output("score", score, t0, x, args)
    if c0 is not None and c1 is not None:  # NumPy scalars: no eager conversions (issue 12)
        t0a, t1a = _core_scalar(t0, x.dtype), _core_scalar(t1, x.dtype)
    else:
        t0a, t1a = _time_arrays(t0, t1, x.dtype, forward_only=True)
    x, bad = _pc_core(drift, diffusion, score, key, x, t0a, t1a, steps, corrector_steps, snr, args)
    nfe = steps * (1 + corrector_steps)
    return _fixed(
        x, bad, nfe, steps, where="predictor_corrector", throw=throw, total=steps,
        describe=grid_describe(steps, t0, t1),
        hint="Check drift, diffusion and score for NaN/inf near that time (a singular endpoint "
        "such as t = 1 of a VP/VE path: stop at path.t_max) or lower snr",
        t_of=lambda k: t0a + (t1a - t0a) * k.astype(t0a.dtype) / steps,
    )  # fmt: skip


# ---------------------------------------------------------------- annealed Langevin (NCSM)


@eqx.filter_jit
def _annealed_core(score, key, x, sigmas, step_sizes, steps_per_level, temperature, args):
    score_b = _batched(score)

    def level(carry, inp):
        i, sigma, h = inp
        noise_scale = jnp.sqrt(2.0 * h * temperature)

        def body(carry, j):
            x, bad = carry
            z = jr.normal(jr.fold_in(jr.fold_in(key, i), j), x.shape, x.dtype)
            x = x + h * score_b(sigma, x, args) + noise_scale * z
            return (x, first_bad(bad, x, i * steps_per_level + j + 1)), None

        carry, _ = jax.lax.scan(body, carry, jnp.arange(steps_per_level))
        return carry, None

    levels = (jnp.arange(sigmas.shape[0]), sigmas, step_sizes)
    (x, bad), _ = jax.lax.scan(level, (x, jnp.int32(0)), levels)
    return x, bad


def annealed_langevin(
    score,
    x0: Float[ArrayLike, " n *event"],
    sigmas: Float[ArrayLike, " L"],
    *,
    key: PRNGKeyArray,
    step_size: RealScalarLike,
    steps_per_level: int,
    temperature: RealScalarLike = 1.0,
    args: Any = None,
    cond: Any = None,
    throw: bool = True,
) -> Solution:
    r"""Annealed Langevin dynamics (Song and Ermon 2019, Algorithm 1), every chain in parallel.

    For a noise-conditional score ``score(sigma, x, args)`` (the convention of
    ``losses.dsm_loss`` and ``losses.ncsm_loss``), run ``steps_per_level`` unadjusted Langevin
    updates at each level sigma_i of ``sigmas`` in the order given (largest first):
    ``x <- x + h_i score(sigma_i, x, args) + sqrt(2 h_i temperature) z`` with
    ``h_i = step_size * (sigma_i / sigma_L)^2`` and sigma_L = ``sigmas[-1]`` (Song and Ermon's
    alpha_i is 2 h_i). One compiled scan over the levels.

    Args:
        score: noise-conditional score ``score(sigma, x, args)`` on ONE sample.
        x0: initial chains ``(n, *event)``, e.g. N(0, sigma_1^2 I).
        sigmas: noise levels ``(L,)``, all > 0, normally decreasing.
        key: PRNG key.
        step_size: h at the last (smallest) level, > 0.
        steps_per_level: Langevin updates per level (>= 1).
        temperature: noise temperature, > 0 (1: the standard algorithm).
        args: passed to ``score`` (shared by every chain).
        cond: optional per-chain condition (leading axis n), mapped with the chains.
        throw: raise ``RuntimeError`` naming the level and step when a chain becomes
            non-finite (the default); ``False`` returns the ``Solution`` with
            ``ok``/``fail_step`` (counted over all levels) instead.

    Returns:
        ``Solution`` with the final states and ``nfe = L * steps_per_level``.
    """
    step_size = check_positive("step_size", step_size, traced_ok=True)
    steps_per_level = check_int("steps_per_level", steps_per_level)
    temperature = check_positive("temperature", temperature, traced_ok=True)
    x = _check_x0(x0)
    if is_traced(sigmas):  # inside the user's jit/grad: the same check at run time
        sig = jnp.asarray(sigmas, x.dtype).reshape(-1)
        if sig.size < 1:
            raise ValueError(f"sigmas must be a non-empty array, got shape {sig.shape}")
        bad = ~jnp.all(jnp.isfinite(sig) & (sig > 0))
        sig = eqx.error_if(sig, bad, "sigmas must be finite values > 0")
    else:
        sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        if sig.size < 1 or not np.all(np.isfinite(sig)) or not np.all(sig > 0):
            raise ValueError(
                f"sigmas must be a non-empty array of finite values > 0, got {sigmas!r}"
            )
    args = pack(args, cond, x.shape[0], "annealed_langevin")
    _check_output("score", score, sig[0], x, args)
    hs = step_size * (sig / sig[-1]) ** 2
    sig_a, hs_a = _core_scalar(sig, x.dtype), _core_scalar(hs, x.dtype)  # host-cast if concrete
    x, bad = _annealed_core(score, key, x, sig_a, hs_a, steps_per_level, temperature, args)
    levels = int(sig.size)
    nfe = levels * steps_per_level

    def describe(g):
        i, j = divmod(g - 1, steps_per_level)
        return f"step {j + 1} of {steps_per_level} at noise level {i + 1} of {levels}"

    return _fixed(
        x, bad, nfe, nfe, where="annealed_langevin", throw=throw, total=nfe, describe=describe,
        hint="Check the score for NaN/inf at that noise level; a step_size too large (now "
        f"{step_size}) diverges",
    )  # fmt: skip
