"""The adaptive CNF training step (issue 12): ``cnf.nll_loss`` with I-controlled steps.

``nll_loss`` solves with I-control where ``log_prob`` uses PI control (fewer evaluations per
training step, measured in ``benchmarks/throughput.py``). These tests check that the faster path
gives the same answers: its loss and gradient against the PI path (``-mean(log_prob)``) and a
tight float64 reference, and its gradient against central finite differences. Every float64
solve here has the same shapes and options, tolerances and step control being traced values, so
the module compiles one solve (and its gradient) for all of them.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffeqgen import cnf


def _to64(tree):
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree
    )


def _setup(key, n=16):
    km, kx, kd = jr.split(key, 3)
    model = _to64(cnf.CNF(2, width=16, depth=2, key=km))
    x = 1.5 * jr.normal(kx, (n, 2), jnp.float64)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    direction = jax.tree_util.tree_map(lambda p: jr.normal(kd, p.shape, p.dtype), params)
    return params, static, x, direction


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree_util.tree_leaves(tree)])


def _pi_loss(model, x, tol):
    """The PI-controlled path (``log_prob``'s step control): ``-mean(log p)``."""
    lp, _ = cnf.log_prob(model, x, solver="dopri5", rtol=tol, atol=tol)
    return -jnp.mean(lp)


def _nll(model, x, tol):
    return cnf.nll_loss(model, None, x, solver="dopri5", steps=None, rtol=tol, atol=tol)


@pytest.mark.slow
def test_adaptive_nll_loss_matches_pi_path_and_float64_reference(x64, key):
    params, static, x, _ = _setup(key)
    model = eqx.combine(params, static)
    value, grad = eqx.filter_value_and_grad(_nll)(model, x, 1e-7)
    pi_value, pi_grad = eqx.filter_value_and_grad(_pi_loss)(model, x, 1e-7)
    ref_value, ref_grad = eqx.filter_value_and_grad(_pi_loss)(model, x, 1e-11)
    g, g_pi, g_ref = _flat(grad), _flat(pi_grad), _flat(ref_grad)
    # losses within the solver error of the tight reference (nats)
    np.testing.assert_allclose(float(value), float(ref_value), atol=1e-6)
    np.testing.assert_allclose(float(pi_value), float(ref_value), atol=1e-6)
    # gradients: I-control as close to the reference as the PI path, and close to it
    scale = np.linalg.norm(g_ref)
    assert np.linalg.norm(g - g_ref) / scale < 1e-5
    assert np.linalg.norm(g - g_pi) / scale < 1e-5
    # and not trivially equal: the two controls take different steps
    assert float(value) != float(pi_value)


@pytest.mark.slow
def test_adaptive_nll_gradient_matches_finite_differences(x64, key):
    params, static, x, direction = _setup(jr.fold_in(key, 1))

    def loss_at(eps, tol):
        p = jax.tree_util.tree_map(lambda a, d: a + eps * d, params, direction)
        return _pi_loss(eqx.combine(p, static), x, tol)

    grad = eqx.filter_grad(lambda p: _nll(eqx.combine(p, static), x, 1e-9))(params)
    analytic = sum(
        float(jnp.vdot(g, d))
        for g, d in zip(
            jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction), strict=True
        )
    )
    h = 1e-4
    fd = (float(loss_at(h, 1e-12)) - float(loss_at(-h, 1e-12))) / (2 * h)
    np.testing.assert_allclose(analytic, fd, rtol=1e-5)


@pytest.mark.slow
def test_float32_adaptive_nll_gradient_close_to_float64_reference(key):
    km, kx = jr.split(jr.fold_in(key, 2))
    model = cnf.CNF(2, width=16, depth=2, key=km)
    x = 1.5 * jr.normal(kx, (16, 2))  # the shape of the float64 solves above: one compile
    value, grad = eqx.filter_value_and_grad(_nll)(model, x, 1e-5)
    assert value.dtype == jnp.float32
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        ref_value, ref_grad = eqx.filter_value_and_grad(_pi_loss)(
            _to64(model), x.astype(jnp.float64), 1e-11
        )
        g, g_ref = _flat(grad).astype(np.float64), _flat(ref_grad)
    finally:
        jax.config.update("jax_enable_x64", previous)
    np.testing.assert_allclose(float(value), float(ref_value), atol=1e-4)
    assert np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref) < 1e-3
