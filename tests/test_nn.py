import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffeqgen.nn import ACTIVATIONS, MLP, EnergyMLP, FourierEmbedding, SinusoidalEmbedding


def test_sinusoidal_at_zero_is_exact():
    emb = SinusoidalEmbedding(8)
    np.testing.assert_array_equal(np.asarray(emb(0.0)), [0, 0, 0, 0, 1, 1, 1, 1])


def test_sinusoidal_values_match_formula():
    dim, max_period, scale, t = 6, 50.0, 3.0, 0.37
    emb = SinusoidalEmbedding(dim, max_period, scale=scale)
    k = np.arange(dim // 2)
    omega = scale * max_period ** (-k / (dim // 2))
    expected = np.concatenate([np.sin(omega * t), np.cos(omega * t)])
    np.testing.assert_allclose(np.asarray(emb(jnp.asarray(t))), expected, rtol=1e-5, atol=1e-6)
    assert float(emb.frequencies()[0]) == scale


def test_fourier_values_and_frozen_frequencies(key):
    emb = FourierEmbedding(10, scale=2.0, key=key)
    assert emb.frequencies.shape == (5,)
    np.testing.assert_array_equal(np.asarray(emb(0)), [0] * 5 + [1] * 5)
    w = np.asarray(emb.frequencies, np.float64)
    t = 0.25
    expected = np.concatenate([np.sin(2 * np.pi * w * t), np.cos(2 * np.pi * w * t)])
    np.testing.assert_allclose(np.asarray(emb(t)), expected, rtol=1e-5, atol=1e-5)
    # the frequencies receive exactly zero gradient
    grads = eqx.filter_grad(lambda e: jnp.sum(e(0.3) ** 2))(emb)
    np.testing.assert_array_equal(np.asarray(grads.frequencies), 0.0)
    # same key, same frequencies; the standard deviation scales with `scale`
    np.testing.assert_array_equal(
        np.asarray(FourierEmbedding(10, scale=2.0, key=key).frequencies), w.astype(np.float32)
    )


@pytest.mark.parametrize(
    "embedding, activation",
    [("sinusoidal", a) for a in sorted(ACTIVATIONS)] + [("fourier", "tanh"), ("none", "silu")],
)
def test_mlp_shapes(key, embedding, activation):
    net = MLP(3, 5, width=8, depth=2, activation=activation, embedding=embedding, key=key)
    assert net(0.5, jnp.ones(3)).shape == (5,)
    assert len(net.layers) == 3  # depth hidden layers + output layer
    assert net.layers[0].in_features == 3 + (1 if embedding == "none" else 32)


def test_mlp_jit_vmap_grad(key):
    net = MLP(2, 2, width=16, depth=2, key=key)
    xs = jr.normal(jr.key(1), (7, 2))
    ts = jnp.linspace(0, 1, 7)
    out = jax.vmap(net)(ts, xs)
    assert out.shape == (7, 2)
    out_jit = eqx.filter_jit(lambda m, t, x: jax.vmap(m, in_axes=(None, 0))(t, x))(net, 0.5, xs)
    np.testing.assert_allclose(out_jit, jax.vmap(net, in_axes=(None, 0))(0.5, xs), rtol=1e-6)
    # Diffrax convention: args accepted and ignored
    np.testing.assert_array_equal(net(0.5, xs[0], {"a": 1}), net(0.5, xs[0]))
    jac = jax.jacfwd(net, argnums=1)(0.3, xs[0])
    assert jac.shape == (2, 2) and np.all(np.isfinite(jac))
    grads = eqx.filter_grad(lambda m: jnp.sum(jax.vmap(m)(ts, xs) ** 2))(net)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads.layers[0].weight).sum()) > 0
    # output depends on t
    assert not np.allclose(net(0.0, xs[0]), net(1.0, xs[0]))


def test_mlp_same_key_same_weights(key):
    a, b = MLP(2, 2, key=key), MLP(2, 2, key=key)
    x = jnp.array([0.3, -1.0])
    np.testing.assert_array_equal(a(0.2, x), b(0.2, x))


def test_mlp_call_shape_errors(key):
    net = MLP(2, 2, width=8, depth=1, key=key)
    # ValueError from the network's own check; TypeError when the jaxtyping hook is active
    with pytest.raises((ValueError, TypeError), match="x"):
        net(0.5, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"x must have shape \(2,\)"):
        net(0.5, jnp.ones(3))
    with pytest.raises((ValueError, TypeError), match="t"):
        net(jnp.ones(2), jnp.ones(2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_size": 0}, "in_size"),
        ({"out_size": -2}, "out_size"),
        ({"width": -64}, "width"),
        ({"depth": 0}, "depth"),
        ({"embed_dim": 7}, "dim"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"activation": "swish"}, "activation 'swish'; expected one of: silu"),
        ({"embedding": "learned"}, "embedding 'learned'; expected one of: sinusoidal"),
    ],
)
def test_mlp_bad_config(key, kwargs, match):
    config = {"in_size": 2, "out_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        MLP(config.pop("in_size"), config.pop("out_size"), key=key, **config)


def test_mlp_non_integer_width_is_type_error(key):
    with pytest.raises(TypeError, match="width"):
        MLP(2, 2, width=2.5, key=key)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda k: SinusoidalEmbedding(5), "even"),
        (lambda k: SinusoidalEmbedding(0), "dim"),
        (lambda k: SinusoidalEmbedding(8, -1.0), "max_period"),
        (lambda k: FourierEmbedding(8, scale=0.0, key=k), "scale"),
        (lambda k: FourierEmbedding(3, key=k), "even"),
        (lambda k: EnergyMLP(0, key=k), "in_size"),
        (lambda k: EnergyMLP(2, activation="sigmoid", key=k), "activation"),
    ],
)
def test_embedding_and_energy_bad_config(key, make, match):
    with pytest.raises(ValueError, match=match):
        make(key)


def test_energy_mlp_score_is_minus_gradient(key, x64):
    net = EnergyMLP(3, width=16, depth=2, key=key)
    x = jnp.array([0.3, -0.2, 1.1])
    assert net.energy(x).shape == () and net(x) == net.energy(x)
    score = net.score(x)
    assert score.shape == (3,)
    h = 1e-6
    fd = [-(net.energy(x + h * e) - net.energy(x - h * e)) / (2 * h) for e in jnp.eye(3)]
    np.testing.assert_allclose(score, np.array(fd), rtol=1e-6, atol=1e-9)
    batch = jax.vmap(net.score)(jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(batch[0], score, rtol=1e-12)
