"""Tests of diffeqgen.cnf: exact Gaussian answers, Hutchinson, round trips, gradients, errors."""

import functools
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg
from helpers import Linear, TanhField

from diffeqgen import cnf, data, groundtruth, paths


def gaussian_log_prob(x, mean, cov):
    d = x.shape[-1]
    diff = x - mean
    sol = np.linalg.solve(cov, diff.T).T
    return (
        -0.5 * np.sum(diff * sol, -1)
        - 0.5 * d * math.log(2 * math.pi)
        - 0.5 * np.linalg.slogdet(cov)[1]
    )


def test_linear_ode_matches_exact_gaussian(x64, key):
    # dz/dt = B z maps N(0, I) at t=0 to N(0, e^B e^B^T) at t=1.
    kb, kx = jr.split(key)
    b = np.asarray(jr.normal(kb, (3, 3), jnp.float64)) * 0.5
    x = jr.normal(kx, (16, 3), jnp.float64) * 1.5
    lp, nfe = cnf.log_prob(Linear(jnp.asarray(b)), x, rtol=1e-12, atol=1e-12)
    m = scipy.linalg.expm(b)
    exact = gaussian_log_prob(np.asarray(x), np.zeros(3), m @ m.T)
    assert lp.dtype == jnp.float64 and lp.shape == (16,)
    np.testing.assert_allclose(np.asarray(lp), exact, rtol=0, atol=1e-8)
    assert nfe > 0


def test_linear_ode_with_mixture_base_and_time_window(x64, key):
    # Base N(mu, S) at t0 = 0.3, flow to t1 = 1.1: x ~ N(M mu, M S M^T), M = expm(0.8 B).
    b = np.array([[0.3, -0.7], [0.4, -0.2]])
    mu = np.array([0.5, -1.0])
    s = np.array([[1.0, 0.3], [0.3, 0.5]])
    base = data.GaussianMixture(
        jnp.asarray(mu[None]), jnp.asarray(s[None]), jnp.ones((1,), jnp.float64)
    )
    x = jr.normal(key, (8, 2), jnp.float64)
    lp, _ = cnf.log_prob(
        Linear(jnp.asarray(b)), x, t0=0.3, t1=1.1, base=base, rtol=1e-12, atol=1e-12
    )
    m = scipy.linalg.expm(0.8 * b)
    exact = gaussian_log_prob(np.asarray(x), m @ mu, m @ s @ m.T)
    np.testing.assert_allclose(np.asarray(lp), exact, rtol=0, atol=1e-8)


def test_sign_of_divergence_term(x64):
    # Expanding flow dz/dt = z: density at t=1 is N(0, e^2 I), log p(0) = -log(2 pi) - 2.
    lp, _ = cnf.log_prob(Linear(jnp.eye(2)), jnp.zeros((1, 2)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(lp[0]), -math.log(2 * math.pi) - 2.0, atol=1e-10)


def test_flow_matching_ground_truth_field_gives_mixture_density(x64, key):
    # The exact marginal velocity of a Gaussian mixture on the linear path carries N(0, I) to
    # the mixture: the CNF log-density at t_max equals the closed-form marginal log p_t.
    mix = data.mixture("mixture")
    mix = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, mix
    )
    path = paths.get_path("linear")
    field = groundtruth.velocity_field(mix, path)
    x = mix.sample(key, 8)
    t1 = path.t_max
    lp, _ = cnf.log_prob(field, x, t1=t1, rtol=1e-10, atol=1e-10)
    exact = groundtruth.log_prob(mix, path, t1, x)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(exact), rtol=0, atol=1e-6)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_mean_matches_exact_trace(probe, key):
    # z-test at level ~1e-4 (|z| < 3.9) on the mean of R independent Hutchinson estimates.
    kw, kb, kx, kp = jr.split(key, 4)
    field = TanhField(jr.normal(kw, (3, 3)), jr.normal(kb, (3,)))
    x = jr.normal(kx, (4, 3))
    exact, _ = cnf.log_prob(field, x, solver="rk4", steps=16)
    reps = 2000
    est, _ = cnf.log_prob(
        field,
        jnp.tile(x, (reps, 1)),
        solver="rk4",
        steps=16,
        trace="hutchinson",
        probe=probe,
        num_probes=2,
        key=kp,
    )
    est = np.asarray(est).reshape(reps, 4)
    mean, se = est.mean(0), est.std(0, ddof=1) / math.sqrt(reps)
    assert np.all(se > 0)
    z = (mean - np.asarray(exact)) / se
    assert np.all(np.abs(z) < 3.9), z


def test_hutchinson_probes_are_fixed_per_solve(key):
    # For a linear field the estimate v^T B v is constant in time: the log-density shift is
    # exactly -(v^T B v - tr B) for the probe v drawn for that sample.
    field = Linear(jnp.array([[0.2, 1.0], [-0.5, 0.1]]))
    x = jr.normal(key, (64, 2))
    exact, _ = cnf.log_prob(field, x, solver="rk4", steps=4)
    est, _ = cnf.log_prob(field, x, solver="rk4", steps=4, trace="hutchinson", key=key)
    diff = np.asarray(est - exact)
    # Rademacher probe: v^T B v - tr B = (B01 + B10) v0 v1 = +-0.5 exactly.
    np.testing.assert_allclose(np.abs(diff), 0.5, atol=1e-5)


def test_sample_and_log_prob_round_trips(key):
    kw, kb, ks = jr.split(key, 3)
    field = TanhField(jr.normal(kw, (2, 2)), jr.normal(kb, (2,)))
    x, lp_fwd, nfe = cnf.sample_and_log_prob(field, ks, 64, 2, rtol=1e-6, atol=1e-6)
    lp_bwd, _ = cnf.log_prob(field, x, rtol=1e-6, atol=1e-6)
    assert x.shape == (64, 2) and lp_fwd.shape == (64,)
    np.testing.assert_allclose(np.asarray(lp_fwd), np.asarray(lp_bwd), atol=5e-5)


def test_nfe_counts_match_vector_field_calls(key):
    """Several samples whose adaptive step counts differ: ``nfe`` is the max over samples, the
    evaluations the vmapped per-sample solve makes (the one meaning of NFE, docs/index.md)."""
    calls = [0]

    def count():
        calls[0] += 1

    def field(t, z, args):
        jax.debug.callback(count)
        return jnp.tanh(3 * z) - 0.3 * z + jnp.sin(4 * t) * jnp.tanh(z) ** 2

    x = jnp.array([[0.1, -0.2], [2.5, 1.0], [-3.0, 2.0], [0.0, 0.4], [1.0, -2.0]])
    per_sample = dict(error_control="per_sample")
    every_control = [dict(rtol=1e-7, atol=1e-7, error_control=e) for e in cnf.ERROR_CONTROLS]
    fixed = dict(solver="rk4", steps=3)
    tight = dict(rtol=1e-8, atol=1e-8, **per_sample)
    nfes = []
    for kw in [per_sample, tight, fixed, *every_control]:
        calls[0] = 0
        lp, nfe = cnf.log_prob(field, x, **kw)
        jax.block_until_ready(lp)
        jax.effects_barrier()
        assert calls[0] == int(nfe), (kw, calls[0], nfe)
        nfes.append(int(nfe))
    single = [int(cnf.log_prob(field, x[i : i + 1], **tight)[1]) for i in range(5)]
    # the samples' own counts differ (so a mean over samples would not match the calls) and
    # the batch's is their max
    assert min(single) < max(single) == nfes[1]


@pytest.mark.slow
def test_nll_gradient_matches_finite_differences(x64, key):
    km, kx, kd = jr.split(key, 3)
    model = cnf.CNF(2, width=8, depth=2, key=km)
    model = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
    )
    x = jr.normal(kx, (8, 2), jnp.float64)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    direction = jax.tree_util.tree_map(lambda p: jr.normal(kd, p.shape, p.dtype), params)

    def loss_at(eps, adjoint=None, steps=6):
        p = jax.tree_util.tree_map(lambda a, d: a + eps * d, params, direction)
        return cnf.nll_loss(eqx.combine(p, static), None, x, steps=steps, adjoint=adjoint)

    grads = eqx.filter_grad(lambda p: cnf.nll_loss(eqx.combine(p, static), None, x, steps=6))(
        params
    )
    analytic = sum(
        jnp.vdot(g, d)
        for g, d in zip(
            jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction), strict=True
        )
    )
    h = 1e-5
    fd = (loss_at(h) - loss_at(-h)) / (2 * h)
    np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6)


@pytest.mark.slow
def test_backsolve_adjoint_gradient_close_to_checkpointed(x64, key):
    km, kx = jr.split(key)
    model = cnf.CNF(2, width=8, depth=2, key=km)
    model = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
    )
    x = jr.normal(kx, (4, 2), jnp.float64)
    loss = functools.partial(
        cnf.nll_loss, key=None, batch=x, solver="dopri5", steps=None, rtol=1e-10, atol=1e-10
    )
    g1 = eqx.filter_grad(lambda m: loss(m))(model)
    g2 = eqx.filter_grad(lambda m: loss(m, adjoint=diffrax.BacksolveAdjoint()))(model)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bits_per_dim():
    # Uniform density on [0, 1]^d (log p = 0) of 8-bit data is exactly 8 bits per dimension.
    np.testing.assert_allclose(np.asarray(cnf.bits_per_dim(jnp.zeros(3), 64)), 8.0, rtol=1e-6)
    # Data in [-1, 1]: scale 2 halves the density, one bit less offset per dimension.
    bpd = cnf.bits_per_dim(jnp.array([-64 * math.log(2.0)]), 64, scale=2.0)
    np.testing.assert_allclose(np.asarray(bpd), 8.0, rtol=1e-6)


def test_cnf_model_shapes_and_dim_check(key):
    model = cnf.CNF(2, key=key)
    assert model(0.5, jnp.ones(2)).shape == (2,)
    with pytest.raises(ValueError, match="trailing dimension 2"):
        cnf.log_prob(model, jnp.ones((4, 3)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rtol=0.0), "rtol"),
        (dict(atol=-1e-3), "atol"),
        (dict(solver="nope"), "solver .nope."),
        (dict(solver="euler"), "no error estimate"),
        (dict(trace="nope"), "unknown trace"),
        (dict(probe="nope"), "unknown probe"),
        (dict(trace="hutchinson"), "needs a PRNG key"),
        (dict(t0=1.0, t1=0.5), "t0 < t1"),
        (dict(steps=0), "steps"),
        (dict(num_probes=0), "num_probes"),
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cnf.log_prob(Linear(jnp.eye(2)), jnp.ones((3, 2)), **kwargs)


def test_wrong_shapes_raise_before_solving():
    with pytest.raises(ValueError, match="shape of one sample"):
        cnf.log_prob(lambda t, z, a: jnp.concatenate([z, z]), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="failed on one sample"):
        cnf.log_prob(Linear(jnp.eye(2)), jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="trailing dimension 2"):
        cnf.log_prob(Linear(jnp.eye(3)), jnp.ones((3, 3)), base=data.mixture("8gaussians"))
    with pytest.raises(ValueError, match="dimensions"):
        cnf.log_prob(Linear(jnp.eye(2)), jnp.ones(2))


def test_log_prob_chunked_equals_log_prob_of_each_chunk(key):
    # 10 points in chunks of 4: rows 0-3, 4-7, then 8, 9 padded cyclically with rows 0, 1.
    field = TanhField(jr.normal(key, (2, 2)), jnp.array([0.3, -0.2]))
    x = jr.normal(jr.fold_in(key, 1), (10, 2))
    lp, nfe = cnf.log_prob_chunked(field, x, chunk_size=4)
    assert lp.shape == (10,) and isinstance(nfe, float)
    chunks = [x[0:4], x[4:8], jnp.concatenate([x[8:10], x[0:2]])]
    parts = [cnf.log_prob(field, c) for c in chunks]
    np.testing.assert_array_equal(
        np.asarray(lp), np.concatenate([np.asarray(p[0]) for p in parts])[:10]
    )
    assert nfe == float(np.mean([float(p[1]) for p in parts]))
    # ... and agrees with one solve of the whole batch to solver tolerance (default 1e-4).
    whole, _ = cnf.log_prob(field, x)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(whole), rtol=0, atol=1e-3)


def test_log_prob_chunked_passes_options_and_chunks_cond(key):
    # A conditional linear field dz/dt = c * z: log p_1(x) = log N(x; 0, e^{2c} I) exactly.
    def field(t, z, c):
        return c * z

    x = jr.normal(key, (5, 2))
    c = jnp.array([0.1, -0.3, 0.5, 0.0, 0.2])
    lp, _ = cnf.log_prob_chunked(field, x, chunk_size=2, cond=c, t0=0.0, t1=1.0, rtol=1e-7)
    exact = np.array(
        [
            gaussian_log_prob(np.asarray(x)[i : i + 1], np.zeros(2), np.exp(2 * ci) * np.eye(2))[0]
            for i, ci in enumerate(np.asarray(c))
        ]
    )
    np.testing.assert_allclose(np.asarray(lp), exact, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="chunk_size"):
        cnf.log_prob_chunked(field, x, chunk_size=0, cond=c)


def test_reference_log_prob_is_float64_and_exact_on_a_linear_flow(key):
    # Float32 field and points in, float64 answer out: N(0, e^B e^B^T) to 1e-10; x64 restored.
    b = np.array([[0.2, -0.5], [0.4, -0.1]], np.float32)
    field = Linear(jnp.asarray(b))
    x = np.asarray(jr.normal(key, (6, 2)))
    previous = jax.config.jax_enable_x64
    ref, nfe = cnf.reference_log_prob(field, x)
    assert jax.config.jax_enable_x64 == previous
    assert isinstance(ref, np.ndarray) and ref.dtype == np.float64 and ref.shape == (6,)
    assert nfe > 0
    m = scipy.linalg.expm(b.astype(np.float64))
    exact = gaussian_log_prob(x.astype(np.float64), np.zeros(2), m @ m.T)
    np.testing.assert_allclose(ref, exact, rtol=0, atol=1e-10)
    lp32, _ = cnf.log_prob(field, jnp.asarray(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(lp32, np.float64), ref, rtol=0, atol=1e-4)


class _ImageField(eqx.Module):
    """A field on events of shape (2, 2) with a per-sample condition scaling its output."""

    w: jax.Array

    def __call__(self, t, z, c):
        return jnp.tanh(self.w @ z.reshape(-1) + t).reshape(z.shape) * c


@pytest.mark.parametrize("dim", [3, 20])  # written-out products (<= UNROLL_TRACE) / vmapped
def test_exact_trace_paths_equal_the_jacobian_trace_in_value_and_gradient(key, dim):
    from diffeqgen._cnf_core import UNROLL_TRACE, _Augmented

    assert (dim <= UNROLL_TRACE) == (dim == 3)
    kw, kb, kz = jr.split(key, 3)
    field = TanhField(jr.normal(kw, (dim, dim)) / math.sqrt(dim), jr.normal(kb, (dim,)))
    z = jr.normal(kz, (5, dim))
    t = jnp.float32(0.4)

    def reference(f):  # the trace of each sample's full forward-mode Jacobian
        jac = jax.vmap(lambda zi: jax.jacfwd(lambda y: f(t, y, None))(zi))(z)
        return -jnp.trace(jac, axis1=1, axis2=2)

    def batched(f):
        return _Augmented(f, "exact", True)(t, (z, jnp.zeros(5)), (None, None))

    def one_by_one(f):
        aug = _Augmented(f, "exact", False)
        return jax.vmap(lambda zi: aug(t, (zi, jnp.zeros(())), (None, None)))(z)

    for path in (batched, one_by_one):
        fz, div = path(field)
        np.testing.assert_allclose(np.asarray(fz), np.asarray(jax.vmap(field, (None, 0))(t, z)),
                                   rtol=1e-6, atol=1e-6)  # fmt: skip
        np.testing.assert_allclose(np.asarray(div), np.asarray(reference(field)), rtol=1e-5,
                                   atol=1e-5)  # fmt: skip
        g = eqx.filter_grad(lambda f, p=path: jnp.sum(jnp.sin(p(f)[1])))(field)
        g_ref = eqx.filter_grad(lambda f: jnp.sum(jnp.sin(reference(f))))(field)
        for a, b in zip(
            jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_batched_exact_trace_maps_events_and_conditions(key):
    # event shape (2, 2) and a per-sample condition c_i: div = c_i * tr(diag(1 - tanh^2) W)
    w = jr.normal(key, (4, 4))
    x = jr.normal(jr.fold_in(key, 1), (6, 2, 2))
    c = jnp.linspace(0.5, 1.5, 6)
    lp, _ = cnf.log_prob(_ImageField(w), x, cond=c, solver="rk4", steps=8)
    lp_each = [cnf.log_prob(_ImageField(w), x[i : i + 1], args=c[i], solver="rk4", steps=8)[0]
               for i in range(6)]  # fmt: skip
    np.testing.assert_allclose(np.asarray(lp), np.concatenate(lp_each), rtol=1e-5, atol=1e-5)
