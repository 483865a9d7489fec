"""Couplings, given pairs and reflow: exact answers where they exist (constant and affine maps,
the quarter-circle flow, the N(0, 1) -> N(m, s^2) flow map) and the OT coupling against scipy.
One round of reflow on a curved exact field straightening it (pairs, training, straightness) is
tested once, in tests/test_research_tasks.py::test_task_reflow (one training for the suite)."""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import diffeqgen as dg
from diffeqgen import couplings, losses

B = jnp.array([3.0, -1.0])


def const_field(t, x, args=None):
    return jnp.broadcast_to(B, x.shape)


def noise(key, n):
    return jr.normal(key, (n, 2))


def test_public_api():
    assert dg.couplings is couplings
    for name in couplings.__all__:
        assert hasattr(couplings, name)


def test_independent_is_a_permutation(key):
    x0 = jr.normal(key, (64, 2))
    x1 = x0 + B
    y0, y1 = couplings.independent()(jr.fold_in(key, 1), x0, x1)
    assert np.array_equal(np.asarray(y0), np.asarray(x0))
    j = np.asarray(couplings.independent().indices(jr.fold_in(key, 1), x0, x1))
    assert sorted(j.tolist()) == list(range(64))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(x1)[j])
    assert (j != np.arange(64)).mean() > 0.8  # re-paired


def test_minibatch_ot_recovers_a_shuffled_translation(key):
    # x1 is a shuffled translate of x0: the exact OT map is the translation.
    n = 128
    x0 = jr.normal(key, (n, 2))
    x1 = jr.permutation(jr.fold_in(key, 1), x0 + B)
    y0, y1 = jax.jit(couplings.minibatch_ot(epsilon=0.01, iters=50))(jr.fold_in(key, 2), x0, x1)
    cost = np.sum((np.asarray(y1) - np.asarray(y0)) ** 2, 1).mean()
    c = np.sum((np.asarray(x0)[:, None] - np.asarray(x1)[None]) ** 2, -1)
    r, k = linear_sum_assignment(c)
    optimum = c[r, k].mean()  # = |B|^2 = 10
    np.testing.assert_allclose(optimum, float(B @ B), rtol=1e-5)
    assert cost < 1.03 * optimum
    # entropic plan: not an exact permutation, but the pairs are near the translation (the
    # independent coupling would give E|y1 - y0 - B|^2 = 2 d = 4)
    assert float(np.mean(np.sum((np.asarray(y1 - y0) - np.asarray(B)) ** 2, 1))) < 0.3


def test_given_pairs_on_the_linear_path_are_exact(key):
    # straight pairs x1 = x0 + B: the constant field B is the exact velocity -> loss 0; the same
    # points re-paired independently cost E|x1' - x0 - B|^2 > 0
    x0 = jr.normal(key, (256, 2))
    batch = {"x0": x0, "x": x0 + B}
    for loss in (
        functools.partial(losses.flow_matching_loss, path="linear"),
        losses.interpolant_loss,
    ):
        assert float(loss(const_field, key, batch)) < 1e-10
        shuffled = float(loss(const_field, key, batch, coupling="independent"))
        assert 2.0 < shuffled < 6.0  # 2 E|x0' - x0|^2 / 2 = 2 d / ... around 4


def test_ot_cfm_on_a_translation(key):
    # OT-CFM: flow matching on the linear path with the OT coupling between noise and data.
    # Data = N(0, I) + B: the OT map from the noise is (nearly) the translation by B.
    x1 = B + jr.normal(jr.fold_in(key, 3), (256, 2))
    ind = losses.flow_matching_loss(const_field, key, x1, path="linear")
    ot = losses.flow_matching_loss(const_field, key, x1, path="linear", coupling="ot")
    obj = losses.flow_matching_loss(
        const_field, key, x1, path="linear", coupling=couplings.minibatch_ot(epsilon=0.01)
    )
    assert 2.5 < float(ind) < 5.5
    assert float(ot) < 0.15 * float(ind)
    assert float(obj) == pytest.approx(float(ot))


def test_source_sampler_matches_default_noise(key):
    # the default source is N(0, I) drawn with the same key: a sampler doing the same gives the
    # same loss bit for bit
    model = dg.nn.MLP(2, 2, width=8, depth=1, key=key)
    x1 = jr.normal(jr.fold_in(key, 1), (32, 2))
    a = losses.flow_matching_loss(model, key, x1, path="vp")
    b = losses.flow_matching_loss(model, key, x1, path="vp", source=noise)
    assert float(a) == float(b)


def test_custom_coupling_function(key):
    # a user coupling (key, x0, x1) -> (x0, x1) that pairs by sorting along the first axis
    def sort_pairs(key, x0, x1):
        return x0[jnp.argsort(x0[:, 0])], x1[jnp.argsort(x1[:, 0])]

    x0 = jr.normal(key, (64, 2)) * jnp.array([1.0, 0.0])
    batch = {"x0": x0, "x": jr.permutation(jr.fold_in(key, 1), x0 + B)}
    assert float(losses.interpolant_loss(const_field, key, batch, coupling=sort_pairs)) < 1e-10


def test_validation(key):
    x = jr.normal(key, (8, 2))
    with pytest.raises(ValueError, match="source=None"):
        losses.interpolant_loss(const_field, key, {"x0": x, "x": x}, source=noise)
    with pytest.raises(ValueError, match=r"batch\['x0'\]"):
        losses.flow_matching_loss(const_field, key, {"x0": x[:4], "x": x}, path="linear")
    with pytest.raises(ValueError, match="needs source="):
        losses.interpolant_loss(const_field, key, x)
    with pytest.raises(ValueError, match="unknown coupling 'exact'"):
        losses.flow_matching_loss(const_field, key, x, path="linear", coupling="exact")
    with pytest.raises(TypeError, match="coupling must be None"):
        losses.get_loss("flow_matching", path="linear", coupling=3)
    with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
        couplings.minibatch_ot(epsilon=0.0)
    with pytest.raises(TypeError, match="must return the re-paired"):
        losses.interpolant_loss(const_field, key, x, source=noise, coupling=lambda k, a, b: a)
    with pytest.raises(ValueError, match="same shape"):
        couplings.pair_sampler(x, x[:3])


def test_reflow_pairs_constant_field_exact(key):
    x0, x1 = couplings.reflow_pairs(const_field, key, 50, source=noise, solver="euler", steps=1)
    np.testing.assert_allclose(np.asarray(x1), np.asarray(x0 + B), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(x0), np.asarray(noise(key, 50)))


def gauss_field(m, s):
    """Exact marginal velocity on the linear path from N(0, 1) to N(m, s^2) (per coordinate)."""

    def f(t, x, args=None):
        v = t**2 * s**2 + (1 - t) ** 2
        return m + (x - t * m) * (t * s**2 - (1 - t)) / v

    return f


def test_reflow_pairs_gaussian_flow_map(key, x64):
    # the flow of the exact field maps x0 to m + s x0 (monotone rearrangement), so the reflow
    # pairs are exactly on that affine map
    m, s = jnp.array([1.0, -2.0]), jnp.array([0.5, 2.0])
    src = lambda k, n: jr.normal(k, (n, 2), jnp.float64)  # noqa: E731
    x0, x1 = couplings.reflow_pairs(gauss_field(m, s), key, 100, source=src, steps=64)
    np.testing.assert_allclose(np.asarray(x1), np.asarray(m + s * x0), atol=1e-7)


def test_straightness_exact_cases(key, x64):
    x0 = jr.normal(key, (16, 2), jnp.float64)
    st = couplings.straightness(const_field, x0, steps=8)
    assert float(st.length_ratio) == pytest.approx(1.0, abs=1e-12)
    assert float(st.deviation) == pytest.approx(0.0, abs=1e-20)
    # quarter turn of the unit circle in unit time: length pi/2, chord sqrt 2;
    # S = int |c - v|^2 dt = |c|^2 + |v|^2 - 2 c.(x1 - x0) = pi^2 / 4 - 2
    rot = lambda t, x, args=None: 0.5 * jnp.pi * jnp.array([-x[1], x[0]])  # noqa: E731
    circle = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    st = couplings.straightness(rot, circle, steps=200)
    assert float(st.length_ratio) == pytest.approx(np.pi / (2 * np.sqrt(2)), rel=1e-4)
    assert float(st.deviation) == pytest.approx(np.pi**2 / 4 - 2, rel=1e-4)
