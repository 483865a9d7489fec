"""Error controls of adaptive CNF likelihoods: each gives the reference answer; switches.

Each control's NFE against a call counter is in
tests/test_cnf.py::test_nfe_counts_match_vector_field_calls.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg
from helpers import Linear, TanhField

from diffeqgen import cnf
from diffeqgen._cnf_core import _max_sample_norm


@pytest.mark.parametrize("error_control", cnf.ERROR_CONTROLS)
def test_every_error_control_matches_the_closed_form_gaussian(x64, key, error_control):
    # dz/dt = B z maps N(0, I) at t=0 to N(0, M M^T), M = expm(B), at t=1.
    kb, kx = jr.split(key)
    b = np.asarray(jr.normal(kb, (2, 2), jnp.float64)) * 0.5
    x = jr.normal(kx, (12, 2), jnp.float64) * 1.5
    lp, _ = cnf.log_prob(
        Linear(jnp.asarray(b)), x, rtol=1e-11, atol=1e-11, error_control=error_control
    )
    m = scipy.linalg.expm(b)
    cov = m @ m.T
    diff = np.asarray(x)
    exact = (
        -0.5 * np.sum(diff * np.linalg.solve(cov, diff.T).T, -1)
        - math.log(2 * math.pi)
        - 0.5 * np.linalg.slogdet(cov)[1]
    )
    np.testing.assert_allclose(np.asarray(lp), exact, rtol=0, atol=1e-8)


@pytest.mark.parametrize("error_control", cnf.ERROR_CONTROLS)
def test_every_error_control_is_within_tolerance_of_the_float64_solve(key, error_control):
    # float32 at rtol = atol = 1e-5 on a smooth nonlinear field, several samples: within 1e-3
    # nats of the float64 dopri8 1e-12 reference.
    field = TanhField(jr.normal(key, (2, 2)), jnp.array([0.3, -0.2]))
    x = jr.normal(jr.fold_in(key, 1), (16, 2)) * 1.5
    ref, _ = cnf.reference_log_prob(field, x)
    lp, _ = cnf.log_prob(field, x, rtol=1e-5, atol=1e-5, error_control=error_control)
    assert lp.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(lp, np.float64), ref, rtol=0, atol=1e-3)


def test_per_sample_switch_is_an_error_control(key):
    field = TanhField(jr.normal(key, (2, 2)), jnp.array([0.3, -0.2]))
    x = jr.normal(jr.fold_in(key, 1), (6, 2))
    for per_sample, control in ((True, "per_sample"), (False, "rms")):
        a, na = cnf.log_prob(field, x, per_sample=per_sample)
        b, nb = cnf.log_prob(field, x, error_control=control)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert float(na) == float(nb)
    default, _ = cnf.log_prob(field, x)
    rms, _ = cnf.log_prob(field, x, error_control="rms")
    np.testing.assert_array_equal(np.asarray(default), np.asarray(rms))
    with pytest.raises(ValueError, match="contradicts"):
        cnf.log_prob(field, x, per_sample=True, error_control="max")
    with pytest.raises(ValueError, match="error_control"):
        cnf.log_prob(field, x, error_control="nope")


def test_max_norm_is_the_max_over_samples_of_each_rms():
    z = jnp.array([[3.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    delta = jnp.array([0.0, 1.0, 6.0])
    per_sample = np.sqrt(np.array([9.0, 3.0, 36.0]) / 3)
    np.testing.assert_allclose(float(_max_sample_norm((z, delta))), per_sample.max(), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("error_control", ["rms", "max"])
def test_adaptive_nll_gradient_matches_finite_differences(x64, key, error_control):
    # The batched adaptive solve differentiated by recursive checkpointing: at a tight tolerance
    # the (step-size-frozen) gradient equals the derivative of the loss.
    km, kx, kd = jr.split(key, 3)
    model = cnf.CNF(2, width=8, depth=2, key=km)
    model = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
    )
    x = jr.normal(kx, (6, 2), jnp.float64)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    direction = jax.tree_util.tree_map(lambda p: jr.normal(kd, p.shape, p.dtype), params)
    opts = dict(solver="dopri5", steps=None, rtol=1e-10, atol=1e-10, error_control=error_control)

    def loss(p):
        return cnf.nll_loss(eqx.combine(p, static), None, x, **opts)

    grads = eqx.filter_grad(loss)(params)
    leaves = zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction), strict=True
    )
    analytic = sum(jnp.vdot(g, d) for g, d in leaves)
    h = 1e-5
    shift = lambda e: jax.tree_util.tree_map(lambda a, d: a + e * d, params, direction)  # noqa: E731
    fd = (loss(shift(h)) - loss(shift(-h))) / (2 * h)
    np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-5)


def test_default_solver_is_bosh3_at_loose_and_dopri5_at_tight_tolerances(key):
    field = TanhField(jr.normal(key, (2, 2)), jnp.array([0.3, -0.2]))
    x = jr.normal(jr.fold_in(key, 1), (6, 2))
    for tol, named in ((None, "bosh3"), (5e-5, "bosh3"), (1e-5, "dopri5"), (1e-7, "dopri5")):
        kw = {} if tol is None else dict(rtol=tol, atol=tol)
        a, na = cnf.log_prob(field, x, **kw)
        b, nb = cnf.log_prob(field, x, solver=named, **kw)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert float(na) == float(nb)
    # one tight tolerance is enough for dopri5; fixed steps keep dopri5 as before
    a, _ = cnf.log_prob(field, x, rtol=1e-4, atol=1e-6)
    b, _ = cnf.log_prob(field, x, solver="dopri5", rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    a, na = cnf.log_prob(field, x, steps=4)
    b, nb = cnf.log_prob(field, x, solver="dopri5", steps=4)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(na) == float(nb) == 1 + 4 * 6  # FSAL dopri5: 6 new evaluations per step
