"""Discrete samplers with exact Gaussian fields: DDPM, DDIM, Langevin MCMC, predictor-corrector.

Data N(m, s^2 I): every marginal of every Gaussian path is Gaussian, so the exact noise
predictor and score are closed-form, and for DDPM/DDIM the law of the sampler's output is
itself Gaussian with mean and variance given by a scalar linear recursion. The tests compare
Monte Carlo moments with those exact numbers by z-tests at 4 standard errors (two-sided level
~6e-5; SE of a variance from the normal approximation sqrt(2 / N) var), and the exact output
law with the data law within the sampler's stated bias.
"""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffeqgen import paths, sdes, solve

M = np.array([1.0, -2.0])
S2 = 0.25  # data variance s^2
N = 20_000


def _z_ok(x, mean, var):
    """Per-coordinate mean and variance of x (N, d) within 4 SE of (mean, var)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    mean_ok = np.abs(x.mean(0) - mean) < 4 * np.sqrt(var / n)
    var_ok = np.abs(x.var(0) - var) < 4 * var * np.sqrt(2.0 / n)
    return bool(np.all(mean_ok) and np.all(var_ok)), x.mean(0), x.var(0)


def exact_eps(schedule):
    """eps*(t, x) = E[eps | x_k] for data N(M, S2 I), step k = round((1 - t) T)."""

    def eps(t, x, args):
        ab = schedule.alpha_bar(schedule.step(t))
        m = jnp.asarray(M, x.dtype)
        return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * m) / (ab * S2 + 1 - ab)

    return eps


def _ab(schedule):
    return np.concatenate([[1.0], np.asarray(schedule.alpha_bars, np.float64)])


def ddpm_exact_law(schedule):
    """Mean (d,) and variance of the DDPM output from x_T ~ N(0, I) with the exact eps."""
    ab = _ab(schedule)
    betas = np.asarray(schedule.betas, np.float64)
    mean, var = np.zeros(2), 1.0
    for k in range(schedule.num_steps, 0, -1):
        beta, a = betas[k - 1], ab[k]
        e = np.sqrt(1 - a) / (a * S2 + 1 - a)
        c = (1 - beta / np.sqrt(1 - a) * e) / np.sqrt(1 - beta)
        d = beta / np.sqrt(1 - a) * e * np.sqrt(a) * M / np.sqrt(1 - beta)
        mean, var = c * mean + d, c**2 * var + (beta if k > 1 else 0.0)
    return mean, var


def ddim_exact_law(schedule, steps, eta=0.0):
    ab = _ab(schedule)
    T = schedule.num_steps
    ks = np.round(np.linspace(T, 0, steps + 1)).astype(int)
    mean, var = np.zeros(2), 1.0
    for k, kp in zip(ks[:-1], ks[1:], strict=True):
        a, ap = ab[k], ab[kp]
        e = np.sqrt(1 - a) / (a * S2 + 1 - a)  # eps = e (x - sqrt(a) M)
        sig2 = eta**2 * (1 - ap) / (1 - a) * (1 - a / ap)
        dirn = np.sqrt(max(1 - ap - sig2, 0.0))
        # x0 = (x - sqrt(1-a) eps) / sqrt(a); x' = sqrt(ap) x0 + dirn eps + sig z
        slope = np.sqrt(ap) * (1 - np.sqrt(1 - a) * e) / np.sqrt(a) + dirn * e
        shift = (np.sqrt(ap) * np.sqrt(1 - a) / np.sqrt(a) - dirn) * e * np.sqrt(a) * M
        mean, var = slope * mean + shift, slope**2 * var + sig2
    return mean, var


def test_ddpm_ancestral_sampling_recovers_gaussian_data(key):
    schedule = paths.DDPMSchedule(num_steps=1000)
    x_T = jr.normal(jr.fold_in(key, 1), (N, 2))
    sol = solve.ddpm_sample(exact_eps(schedule), jr.fold_in(key, 2), x_T, schedule)
    assert sol.nfe == 1000 and sol.num_steps == 1000 and sol.x.shape == (N, 2)
    mean, var = ddpm_exact_law(schedule)
    ok, got_mean, got_var = _z_ok(sol.x, mean, var)
    assert ok, (got_mean, got_var, mean, var)
    # The sampler's exact output law is within 1% of the data law (sigma_k^2 = beta_k bias).
    np.testing.assert_allclose(mean, M, atol=0.01)
    assert abs(var / S2 - 1) < 0.01, var


def test_ddim_deterministic_recovers_gaussian_data(key):
    """DDIM (eta = 0) with the exact eps: output law matches the exact linear recursion.

    Its variance error is first order in 1/steps (-11% at 50 steps, -5.7% at 100, -0.6% at
    1000, measured by the recursion), so the exact law is checked for that convergence.
    """
    schedule = paths.DDPMSchedule(num_steps=1000)
    steps = 50
    x_T = jr.normal(key, (N, 2))
    sol = solve.ddim_sample(exact_eps(schedule), x_T, schedule, steps=steps)
    assert sol.nfe == steps
    mean, var = ddim_exact_law(schedule, steps)
    ok, got_mean, got_var = _z_ok(sol.x, mean, var)
    assert ok, (got_mean, got_var, mean, var)
    np.testing.assert_allclose(mean, M, atol=0.01)
    errors = [abs(ddim_exact_law(schedule, k)[1] / S2 - 1) for k in (50, 100, 1000)]
    assert 1.7 < errors[0] / errors[1] < 2.3 and errors[2] < 0.01, errors
    # eta = 1 adds the skip-posterior noise; its law is again given by the recursion (at 50
    # steps it under-disperses by 21%: E[x0 | x_k] replaces x0 without its variance).
    noisy = solve.ddim_sample(exact_eps(schedule), x_T, schedule, steps=steps, eta=1.0, key=key)
    mean, var = ddim_exact_law(schedule, steps, eta=1.0)
    ok, got_mean, got_var = _z_ok(noisy.x, mean, var)
    assert ok, (got_mean, got_var, mean, var)


def test_langevin_mcmc_gaussian_target(key):
    """ULA on N(M, S2): stationary variance S2 / (1 - h / (2 S2)) exactly (O(h) bias)."""
    h = 0.02
    score = lambda t, x, args: -(x - jnp.asarray(M)) / S2  # noqa: E731
    x0 = 3.0 * jr.normal(jr.fold_in(key, 1), (N, 2))
    sol = solve.langevin_mcmc(score, x0, key=jr.fold_in(key, 2), step_size=h, num_steps=500)
    assert sol.nfe == 500
    stationary_var = S2 / (1 - h / (2 * S2))  # 0.2604 against S2 = 0.25
    ok, got_mean, got_var = _z_ok(sol.x, M, stationary_var)
    assert ok, (got_mean, got_var, stationary_var)


def _linear_path_fields():
    """Exact velocity and score of the linear path (alpha = t, sigma = 1 - t) to N(M, S2 I)."""
    m = jnp.asarray(M)

    def var_t(t):
        return t**2 * S2 + (1 - t) ** 2

    def score(t, x, args):
        return -(x - t * m) / var_t(t)

    def velocity(t, x, args):
        r = x - t * m
        return m + t * S2 / var_t(t) * r - (1 - t) / var_t(t) * r

    return velocity, score


def test_predictor_corrector_generative_sde(key):
    """Linear path (alpha = t, sigma = 1 - t) with exact velocity and score, g = 0.5.

    The generative SDE has marginals p_t; PC with 200 steps must land on N(M, S2): z-test at
    4 SE plus a discretisation budget of 0.02 on the mean and 5% on the variance (the
    Langevin corrector's own O(h) bias inflates the variance by ~snr^2 = 2.6%).
    """
    velocity, score = _linear_path_fields()
    sde = sdes.generative_sde(velocity, score, 0.5)
    x0 = jr.normal(jr.fold_in(key, 1), (N, 2))
    sol = solve.predictor_corrector(sde, score, x0, key=jr.fold_in(key, 2), steps=200)
    assert sol.nfe == 400 and sol.num_steps == 200
    x = np.asarray(sol.x, np.float64)
    assert np.all(np.abs(x.mean(0) - M) < 4 * np.sqrt(S2 / N) + 0.02), x.mean(0)
    assert np.all(np.abs(x.var(0) / S2 - 1) < 4 * np.sqrt(2 / N) + 0.05), x.var(0)


def test_corrector_alone_reaches_the_target(key):
    """Zero drift and diffusion: only the Langevin corrector moves the samples.

    With the score of N(M, S2 I) and x0 ~ N(0, I), the corrector is ULA with the batch step
    h = 2 (snr E||z|| / E||s||)^2. At stationarity x - M is isotropic N(0, v' I), so
    E||s|| = E||z|| sqrt(v') / S2 and h = 2 snr^2 S2^2 / v'; ULA's stationary variance
    S2 / (1 - h / (2 S2)) = v' then gives v' = S2 (1 + snr^2) exactly (16% above S2 at
    snr = 0.4, large enough that half the step size, v' = S2 (1 + snr^2 / 2), fails at
    |z| > 5). z-tests at 4.5 SE on each coordinate's mean and variance; with
    corrector_steps = 0 the samples stay at N(0, I) (|z| in the hundreds).
    """
    snr = 0.4
    zero_drift = lambda t, x, args: jnp.zeros_like(x)  # noqa: E731
    zero_diffusion = lambda t, x, args: jnp.zeros(())  # noqa: E731
    score = lambda t, x, args: -(x - jnp.asarray(M, x.dtype)) / S2  # noqa: E731
    x0 = jr.normal(jr.fold_in(key, 1), (N, 2))
    sol = solve.predictor_corrector(
        (zero_drift, zero_diffusion), score, x0, key=jr.fold_in(key, 2), steps=100,
        corrector_steps=3, snr=snr,
    )  # fmt: skip
    assert sol.nfe == 400
    x = np.asarray(sol.x, np.float64)
    var = S2 * (1 + snr**2)
    z_mean = (x.mean(0) - M) / np.sqrt(var / N)
    z_var = (x.var(0) - var) / (var * np.sqrt(2.0 / N))
    assert np.all(np.abs(z_mean) < 4.5) and np.all(np.abs(z_var) < 4.5), (z_mean, z_var)


def test_corrector_improves_a_coarse_predictor(key):
    """Where the predictor alone is visibly biased, PC is closer to the target law.

    The generative SDE of ``test_predictor_corrector_generative_sde`` with only 20
    Euler-Maruyama steps under-disperses by ~8% (0.7% SE at N = 20000); two corrector steps
    after each predictor step pull each marginal back towards p_t (error ~1.5%).
    """
    velocity, score = _linear_path_fields()
    sde = sdes.generative_sde(velocity, score, 0.5)
    x0 = jr.normal(jr.fold_in(key, 1), (N, 2))

    def var_error(corrector_steps):
        sol = solve.predictor_corrector(
            sde, score, x0, key=jr.fold_in(key, 2), steps=20, corrector_steps=corrector_steps
        )
        x = np.asarray(sol.x, np.float64)
        assert np.all(np.abs(x.mean(0) - M) < 4 * np.sqrt(S2 / N) + 0.01), x.mean(0)
        return abs(x.var(0).mean() / S2 - 1)

    predictor_only, pc = var_error(0), var_error(2)
    assert predictor_only > 0.05, predictor_only  # the predictor alone is visibly biased
    assert pc < 0.03 and pc < predictor_only / 3, (pc, predictor_only)


def test_sampler_validation(key):
    schedule = paths.DDPMSchedule(num_steps=10)
    x = jnp.zeros((4, 2))
    eps = exact_eps(schedule)
    with pytest.raises(ValueError, match="key"):
        solve.ddim_sample(eps, x, schedule, eta=0.5)
    with pytest.raises(ValueError, match="steps"):
        solve.ddim_sample(eps, x, schedule, steps=11)
    with pytest.raises(ValueError, match=r"eps_model.*\(2,\)"):
        solve.ddpm_sample(lambda t, x, a: jnp.zeros(3), key, x, schedule)
    with pytest.raises(TypeError, match="DDPMSchedule"):
        solve.ddpm_sample(eps, key, x, object())
    with pytest.raises(ValueError, match="step_size"):
        solve.langevin_mcmc(lambda t, y, a: -y, x, key=key, step_size=0.0, num_steps=3)
    with pytest.raises(ValueError, match="score"):
        solve.langevin_mcmc(lambda t, y, a: y.sum(), x, key=key, step_size=0.1, num_steps=3)
    with pytest.raises(ValueError, match="snr"):
        solve.predictor_corrector(
            sdes.brownian_motion(1.0), lambda t, y, a: -y, x, key=key, steps=3, snr=0.0
        )
