"""Numeric options as traced values: the library inside the user's own jit / grad / vmap.

Every entry point is called once with concrete options and once inside ``jax.jit`` with the
same options as traced arguments; the answers must agree (float64 where a bitwise or 1e-12
agreement is asked). Integer counts that set shapes stay static and give a clear error.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffeqgen import cnf, paths, sdes, solve
from diffeqgen._checks import check_int


def _linear(t, x, args):
    return -0.7 * x


def test_sample_ode_traced_tolerances_times_saveat(x64):
    x0 = jnp.array([[1.0, -2.0], [0.5, 3.0]])
    ts = jnp.array([0.2, 0.9, 1.3])
    kw = dict(rtol=1e-8, atol=1e-9, t0=0.2, t1=1.3)
    ref = solve.sample_ode(_linear, x0, saveat=ts, **kw)

    @jax.jit
    def run(rtol, atol, t0, t1, ts):
        sol = solve.sample_ode(_linear, x0, rtol=rtol, atol=atol, t0=t0, t1=t1, saveat=ts)
        return sol.x, sol.xs, sol.nfe

    x, xs, nfe = run(*(jnp.asarray(kw[k]) for k in ("rtol", "atol", "t0", "t1")), ts)
    np.testing.assert_allclose(x, ref.x, rtol=1e-12, atol=0)
    np.testing.assert_allclose(xs, ref.xs, rtol=1e-12, atol=0)
    assert int(nfe) == ref.nfe
    np.testing.assert_allclose(ref.x, x0 * np.exp(-0.7 * 1.1), rtol=1e-7)
    # vmapped over the end time: one solve per t1, each the exact exp(-0.7 (t1 - t0)) x0
    t1s = jnp.array([0.5, 1.0, 2.0])
    xs_v = jax.vmap(lambda t1: solve.sample_ode(_linear, x0, t1=t1, rtol=1e-9, atol=1e-9).x)(t1s)
    want = np.exp(-0.7 * np.asarray(t1s))[:, None, None] * np.asarray(x0)
    np.testing.assert_allclose(xs_v, want, rtol=1e-7)


@pytest.mark.parametrize("steps", [None, 16])
def test_grad_of_sample_ode_wrt_t1_matches_closed_form(steps, x64):
    """x(t1) = x0 exp(a (t1 - t0)), so d/dt1 sum x(t1) = a exp(a (t1 - t0)) sum x0."""
    a, x0 = 0.8, jnp.array([[1.0, 2.0], [-0.5, 0.25]])

    def loss(t1):
        sol = solve.sample_ode(lambda t, x, args: a * x, x0, t1=t1, steps=steps,
                               solver="tsit5" if steps is None else "rk4",
                               rtol=1e-10, atol=1e-10)  # fmt: skip
        return jnp.sum(sol.x)

    g = jax.grad(loss)(jnp.asarray(1.5))
    want = a * np.exp(a * 1.5) * float(jnp.sum(x0))
    np.testing.assert_allclose(float(g), want, rtol=1e-6 if steps is None else 1e-4)


def test_traced_tolerance_checked_at_run_time_and_counts_stay_static():
    x0 = jnp.ones((2, 2))
    with pytest.raises(Exception, match="rtol must be a finite number > 0"):
        jax.block_until_ready(jax.jit(lambda r: solve.sample_ode(_linear, x0, rtol=r).x)(-1.0))
    with pytest.raises(Exception, match="t0 and t1 must be finite and distinct"):
        jax.block_until_ready(jax.jit(lambda t: solve.sample_ode(_linear, x0, t1=t).x)(0.0))
    # (under the test suite's jaxtyping hook the annotation `int` fails first, naming steps)
    with pytest.raises(TypeError, match="steps"):
        jax.jit(lambda s: solve.sample_ode(_linear, x0, steps=s).x)(4)
    with pytest.raises(TypeError, match="num_steps"):
        jax.jit(
            lambda s: (
                solve.langevin_mcmc(lambda y: -y, x0, key=jr.key(0), step_size=0.1, num_steps=s).x
            )
        )(3)
    with pytest.raises(TypeError, match="steps must be a concrete Python int >= 1 .* static"):
        jax.jit(lambda s: check_int("steps", s))(4)
    # concrete bad values still fail eagerly, naming the argument
    with pytest.raises(ValueError, match="rtol"):
        solve.sample_ode(_linear, x0, rtol=0.0)


def test_sample_sde_traced_times_and_saveat(x64):
    sde = sdes.ornstein_uhlenbeck(1.5, 0.7)
    x0 = jnp.linspace(-1.0, 1.0, 12).reshape(6, 2)
    ts = jnp.array([0.1, 0.6, 1.2])
    ref = solve.sample_sde(sde, x0, key=jr.key(3), t0=0.1, t1=1.2, steps=40, saveat=ts)
    run = jax.jit(
        lambda t0, t1, ts: (
            solve.sample_sde(sde, x0, key=jr.key(3), t0=t0, t1=t1, steps=40, saveat=ts).xs
        )
    )
    np.testing.assert_allclose(run(jnp.asarray(0.1), jnp.asarray(1.2), ts), ref.xs, rtol=1e-12)
    with pytest.raises(Exception, match="t1 > t0"):
        jax.block_until_ready(run(jnp.asarray(1.2), jnp.asarray(0.1), ts))
    # the SDE's own parameters traced (built inside the user's jit), additive-noise solver
    by_params = jax.jit(
        lambda th, sg: solve.sample_sde(
            sdes.ornstein_uhlenbeck(th, sg), x0, key=jr.key(3), t0=0.1, t1=1.2, steps=40,
            solver="sra1",
        ).x
    )  # fmt: skip
    ref = solve.sample_sde(sde, x0, key=jr.key(3), t0=0.1, t1=1.2, steps=40, solver="sra1")
    np.testing.assert_allclose(by_params(1.5, 0.7), ref.x, rtol=1e-12)
    # vmapped over keys and noise levels: each run equals its own concrete call
    keys, sigmas = jr.split(jr.key(4), 3), jnp.array([0.0, 0.5, 1.0])
    batched = jax.vmap(
        lambda k, sg: solve.sample_sde(sdes.ornstein_uhlenbeck(1.5, sg), x0, key=k, steps=10).x
    )(keys, sigmas)
    for i in range(3):
        one = solve.sample_sde(sdes.ornstein_uhlenbeck(1.5, float(sigmas[i])), x0, key=keys[i],
                               steps=10)  # fmt: skip
        np.testing.assert_allclose(batched[i], one.x, rtol=1e-12, atol=1e-15)


def test_cnf_log_prob_traced_tolerances_and_times(x64):
    """Linear field f = b x: log p_1(x) = log N(x; 0, e^{2 b (t1 - t0)} I)."""
    b = 0.3
    x = jnp.array([[0.1, -0.4], [1.2, 0.3]])

    def field(t, y, args):
        return b * y

    def exact(t0, t1):
        var = np.exp(2 * b * (t1 - t0))
        return -0.5 * np.sum(np.asarray(x) ** 2, 1) / var - np.log(2 * np.pi * var)

    kw = dict(rtol=1e-10, atol=1e-10, t0=0.1, t1=0.9)
    ref, _ = cnf.log_prob(field, x, **kw)
    got, _ = jax.jit(lambda r, a, t0, t1: cnf.log_prob(field, x, rtol=r, atol=a, t0=t0, t1=t1))(
        *(jnp.asarray(kw[k]) for k in ("rtol", "atol", "t0", "t1"))
    )
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(ref, exact(0.1, 0.9), rtol=1e-8)
    # gradient in t1 of the exact log-density through the solver
    g = jax.grad(lambda t1: cnf.log_prob(field, x, t1=t1, rtol=1e-10, atol=1e-10)[0].sum())(0.9)
    eps = 1e-5
    fd = (exact(0.0, 0.9 + eps).sum() - exact(0.0, 0.9 - eps).sum()) / (2 * eps)
    np.testing.assert_allclose(float(g), fd, rtol=1e-6)
    # sample_and_log_prob: the forward twin, same answer traced and concrete
    key = jr.key(0)
    xs_ref, lp_ref, _ = cnf.sample_and_log_prob(field, key, 4, 2, t1=0.7, rtol=1e-9, atol=1e-9)
    xs_j, lp_j, _ = jax.jit(
        lambda t1, r: cnf.sample_and_log_prob(field, key, 4, 2, t1=t1, rtol=r, atol=r)
    )(jnp.asarray(0.7), jnp.asarray(1e-9))
    np.testing.assert_allclose(xs_j, xs_ref, rtol=1e-12)
    np.testing.assert_allclose(lp_j, lp_ref, rtol=1e-12)


def test_discrete_samplers_traced_step_sizes(x64):
    key = jr.key(1)
    x0 = jnp.linspace(-2.0, 2.0, 8).reshape(4, 2)

    def score(t, y, args):
        return -y

    ref = solve.langevin_mcmc(score, x0, key=key, step_size=0.05, num_steps=7, temperature=0.5)
    got = jax.jit(
        lambda h, T: (
            solve.langevin_mcmc(score, x0, key=key, step_size=h, num_steps=7, temperature=T).x
        )  # fmt: skip
    )(jnp.asarray(0.05), jnp.asarray(0.5))
    np.testing.assert_allclose(got, ref.x, rtol=1e-12)

    sigmas = jnp.array([1.0, 0.5, 0.1])
    nc_score = lambda s, y, a: -y / (1.0 + s**2)  # noqa: E731
    ref = solve.annealed_langevin(nc_score, x0, sigmas, key=key, step_size=0.01,
                                  steps_per_level=3)  # fmt: skip
    got = jax.jit(
        lambda sig, h: (
            solve.annealed_langevin(nc_score, x0, sig, key=key, step_size=h, steps_per_level=3).x
        )  # fmt: skip
    )(sigmas, jnp.asarray(0.01))
    np.testing.assert_allclose(got, ref.x, rtol=1e-12)

    sched = paths.DDPMSchedule(num_steps=20)
    eps = lambda t, y, a: 0.3 * y  # noqa: E731
    for eta in (0.0, 0.7):
        ref = solve.ddim_sample(eps, x0, sched, steps=5, eta=eta, key=key)
        got = jax.jit(lambda e: solve.ddim_sample(eps, x0, sched, steps=5, eta=e, key=key).x)(
            jnp.asarray(eta)
        )
        np.testing.assert_allclose(got, ref.x, rtol=1e-12)
    with pytest.raises(Exception, match="eta > 0 needs key"):
        jax.block_until_ready(
            jax.jit(lambda e: solve.ddim_sample(eps, x0, sched, steps=5, eta=e).x)(0.5)
        )

    sde = sdes.ornstein_uhlenbeck(1.0, 0.5)
    kw = dict(key=key, steps=6, corrector_steps=1)
    ref = solve.predictor_corrector(sde, lambda t, y, a: -y, x0, snr=0.2, t0=0.1, t1=0.8, **kw)
    got = jax.jit(
        lambda r, t0, t1: (
            solve.predictor_corrector(sde, lambda t, y, a: -y, x0, snr=r, t0=t0, t1=t1, **kw).x
        )
    )(jnp.asarray(0.2), jnp.asarray(0.1), jnp.asarray(0.8))
    np.testing.assert_allclose(got, ref.x, rtol=1e-12)


def test_sampler_inside_user_filter_jit_with_module_parameters(x64):
    """An Equinox field with array parameters, t1 and rtol all traced by eqx.filter_jit."""

    class Field(eqx.Module):
        a: jax.Array

        def __call__(self, t, x, args):
            return self.a * x

    x0 = jnp.ones((3, 2))

    @eqx.filter_jit
    def run(field, t1, rtol):
        return solve.sample_ode(field, x0, t1=t1, rtol=rtol, atol=rtol).x

    got = run(Field(jnp.asarray(-0.4)), jnp.asarray(2.0), jnp.asarray(1e-9))
    np.testing.assert_allclose(got, np.exp(-0.8) * np.ones((3, 2)), rtol=1e-7)
