"""JAX-native metrics (mmd_jax, sinkhorn_divergence): equal to the NumPy/SciPy references,
jittable and differentiable with gradients matching finite differences; the Sinkhorn divergence
of identical sets is 0 and tends to the exact W2^2 (scipy assignment) as epsilon -> 0."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffeqgen import metrics


def sets(key, n=10, m=10, dtype=jnp.float64):
    k1, k2 = jr.split(key)
    return jr.normal(k1, (n, 2), dtype), 0.7 * jr.normal(k2, (m, 2), dtype) + jnp.array([1.0, 0])


def fd_grad(f, x, h=1e-6):
    f = jax.jit(f)
    g = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        e = jnp.zeros_like(x).at[idx].set(h)
        g[idx] = (float(f(x + e)) - float(f(x - e))) / (2 * h)
    return g


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("bandwidth", [0.7, [0.3, 1.0, 3.0]])
def test_mmd_jax_equals_numpy_reference(estimator, bandwidth, key, x64):
    x, y = sets(key, 12, 9)
    ref = metrics.mmd(x, y, bandwidth, estimator=estimator).value
    got = jax.jit(lambda a, b: metrics.mmd_jax(a, b, bandwidth, estimator=estimator))(x, y)
    assert float(got) == pytest.approx(ref, rel=1e-12, abs=1e-14)


def test_mmd_jax_gradient_matches_finite_differences(key, x64):
    x, y = sets(key)
    f = lambda a: metrics.mmd_jax(a, y, 0.8)  # noqa: E731
    g = np.asarray(jax.jit(jax.grad(f))(x))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, fd_grad(f, x), rtol=1e-6, atol=1e-9)
    # gradient in the bandwidth (traced inside jit) is finite too
    gh = jax.jit(jax.grad(lambda h: metrics.mmd_jax(x, y, h)))(0.8)
    assert np.isfinite(float(gh))
    # with identical sets at the same points the biased MMD is exactly 0 with zero gradient
    g0 = jax.grad(lambda a: metrics.mmd_jax(a, x, 0.8, estimator="biased"))(x)
    np.testing.assert_allclose(np.asarray(g0), 0.0, atol=1e-12)


def test_sinkhorn_divergence_identical_sets_zero(key, x64):
    x, _ = sets(key, 16)
    for eps in (1.0, 0.1, 0.01):
        # to the convergence tolerance: ~1e-5 at the default tol = 1e-4, ~0 when converged
        assert abs(float(metrics.sinkhorn_divergence(x, x, epsilon=eps))) < 1e-4
        tight = metrics.sinkhorn_divergence(x, x, epsilon=eps, tol=1e-12, max_iters=50_000)
        assert abs(float(tight)) < 1e-10


def test_sinkhorn_divergence_tends_to_exact_w2_squared(key, x64):
    x, y = sets(key, 8, 8)
    w2sq = metrics.wasserstein(x, y) ** 2  # scipy exact assignment
    vals = [float(metrics.sinkhorn_divergence(x, y, epsilon=e)) for e in (1.0, 0.1, 1e-2, 1e-3)]
    errs = [abs(v - w2sq) for v in vals]
    assert all(v >= 0 for v in vals)
    assert errs == sorted(errs, reverse=True)  # monotone approach
    assert errs[-1] < 1e-4 * w2sq
    assert errs[0] > 1e-2 * w2sq  # a large epsilon is visibly blurred (the test can fail)


def test_sinkhorn_divergence_unequal_sizes_and_float32(key):
    x, y = sets(key, 7, 11, jnp.float32)
    v = jax.jit(lambda a, b: metrics.sinkhorn_divergence(a, b, epsilon=0.1))(x, y)
    assert v.dtype == jnp.float32 and np.isfinite(float(v)) and float(v) > 0


def test_sinkhorn_divergence_gradient_matches_finite_differences(key, x64):
    x, y = sets(key, 8, 6)
    f = lambda a: metrics.sinkhorn_divergence(a, y, epsilon=0.1, tol=1e-12, max_iters=20_000)  # noqa: E731
    g = np.asarray(jax.jit(jax.grad(f))(x))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, fd_grad(f, x), rtol=1e-6, atol=1e-8)
    gy = jax.grad(lambda b: metrics.sinkhorn_divergence(x, b, epsilon=0.1))(y)
    assert np.all(np.isfinite(np.asarray(gy)))


def test_sinkhorn_divergence_in_a_loss_under_jit_and_vmap(key, x64):
    # used as a training loss: gradient descent on the points moves them onto the target set
    x, y = sets(key, 8, 8)

    @jax.jit
    def step(a, eps):
        v, g = jax.value_and_grad(lambda p: metrics.sinkhorn_divergence(p, y, epsilon=eps))(a)
        return a - 0.5 * g * a.shape[0], v

    v0 = None
    for _ in range(30):
        x, v = step(x, 0.01)
        v0 = float(v) if v0 is None else v0
    assert float(metrics.sinkhorn_divergence(x, y, epsilon=0.01)) < 0.01 * v0
    eps = jnp.array([0.5, 0.05])
    vals = jax.vmap(lambda e: metrics.sinkhorn_divergence(x, y, epsilon=e))(eps)
    assert vals.shape == (2,)


def test_validation(key):
    x, y = sets(key, 5, 5, jnp.float32)
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
        metrics.mmd_jax(x, y, 0.0)
    with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
        metrics.sinkhorn_divergence(x, y, epsilon=-1.0)
    with pytest.raises((ValueError, TypeError)):  # mismatched d (caught by the type hook too)
        metrics.sinkhorn_divergence(x, y[:, :1])
    with pytest.raises(ValueError, match="unbiased MMD needs at least 2"):
        metrics.mmd_jax(x[:1], y, 1.0)
    with pytest.raises(TypeError):  # integer points (the type hook or the check rejects them)
        metrics.mmd_jax(jnp.ones((3, 2), jnp.int32), y, 1.0)
