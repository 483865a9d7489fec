"""Energy-based models: Langevin and MALA on Gaussian energies, the EBM loss, persistent chains.

Gaussian targets make every answer closed-form. For the energy ``E(x) = (x - m)^T P (x - m) / 2``
the unadjusted Langevin step of the library, ``x <- x + h s(x) + sqrt(2 h) z`` with
``s = -P (x - m)``, is the linear recursion ``x' - m = (I - h P)(x - m) + sqrt(2 h) z``, whose
stationary law is N(m, C) with ``C = (I - hP) C (I - hP) + 2 h I``, i.e.
``C = (P - h P^2 / 2)^{-1}`` (1-D: ``s^2 / (1 - h / (2 s^2))``). MALA's stationary law is
N(m, P^{-1}) exactly. Moments are compared by z-tests at 5 standard errors (SE of a variance
``sqrt(2 / N) var``; of a covariance entry ``sqrt((C_ii C_jj + C_ij^2) / N)``).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import assert_trees_equal

import diffeqgen as dg
from diffeqgen import ebm

M = np.array([1.0, -0.5])
P = np.array([[2.0, 0.6], [0.6, 1.0]])  # precision of the Gaussian target


class Quadratic(eqx.Module):
    """E(x) = (x - mu)^T P (x - mu) / 2 with P = L L^T, L lower-triangular (trainable)."""

    mu: jax.Array
    chol: jax.Array

    def __call__(self, x):
        prec = self.chol @ self.chol.T
        d = x - self.mu
        return 0.5 * d @ prec @ d


def quadratic_model(mean=M, prec=P):
    return ebm.EnergyModel(Quadratic(jnp.asarray(mean), jnp.asarray(np.linalg.cholesky(prec))))


def _zcov(x, mean, cov, z=5.0):
    """True when the sample mean and covariance of x (N, d) are within z SE of (mean, cov)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    var = np.diag(cov)
    se_mean = np.sqrt(var / n)
    se_cov = np.sqrt((np.outer(var, var) + cov**2) / n)
    mean_ok = np.all(np.abs(x.mean(0) - mean) < z * se_mean)
    cov_ok = np.all(np.abs(np.cov(x.T, bias=True) - cov) < z * se_cov)
    return bool(mean_ok and cov_ok)


def test_energy_model_score_is_minus_grad_energy():
    model = quadratic_model()
    x = jnp.array([0.3, 0.2])
    np.testing.assert_allclose(model(1.0, x, None), -P @ (np.asarray(x) - M), rtol=1e-5)
    np.testing.assert_allclose(model.energy(1.0, x), 0.5 * (x - M) @ P @ (x - M), rtol=1e-5)
    net = ebm.energy_mlp(2, width=8, depth=2, key=jr.key(0))
    cond = ebm.energy_mlp(2, width=8, depth=2, time_conditioned=True, key=jr.key(0))
    for m in (net, cond):
        assert m(0.5, x, None).shape == (2,) and m.energy(0.5, x).shape == ()
    # the time argument reaches a conditioned energy, and is ignored by an unconditioned one
    assert not np.allclose(cond.energy(0.1, x), cond.energy(0.9, x))
    assert net.energy(0.1, x) == net.energy(0.9, x)
    # a confining base adds |x|^2 / (2 s^2) to the energy and -x / s^2 to the score
    based = ebm.EnergyModel(net.net, base_std=2.0)
    np.testing.assert_allclose(
        based.energy(1.0, x), net.energy(1.0, x) + jnp.sum(x**2) / 8, rtol=1e-6
    )
    np.testing.assert_allclose(based(1.0, x, None), net(1.0, x, None) - x / 4, rtol=1e-5)
    with pytest.raises(ValueError, match="base_std"):
        ebm.EnergyModel(net.net, base_std=-1.0)
    bad = ebm.EnergyModel(lambda x: jnp.stack([x.sum(), x.sum()]))
    with pytest.raises(ValueError, match="scalar"):
        bad.energy(1.0, x)


@pytest.mark.slow
def test_langevin_reaches_gaussian_mean_and_covariance():
    """ULA (dg.solve.langevin_mcmc) on the EnergyModel's score: N(m, (P - h P^2/2)^{-1})."""
    h, n = 0.05, 20_000
    x0 = jr.normal(jr.key(1), (n, 2)) * 2.0
    sol = dg.solve.langevin_mcmc(quadratic_model(), x0, key=jr.key(2), step_size=h, num_steps=300)
    cov = np.linalg.inv(P - h * P @ P / 2)
    assert _zcov(sol.x, M, cov)
    assert sol.nfe == 300


@pytest.mark.slow
def test_mala_exact_where_ula_is_biased():
    """1-D N(m, s^2): at h = s^2 / 2 ULA's variance is s^2 / (1 - 1/4) = 4/3 s^2; MALA's s^2."""
    m, s2, h, n, steps = 0.7, 1.0, 0.5, 20_000, 200
    model = ebm.EnergyModel(lambda x: 0.5 * jnp.sum((x - m) ** 2) / s2)
    x0 = 3.0 + 0.1 * jr.normal(jr.key(3), (n, 1))
    ula = dg.solve.langevin_mcmc(model, x0, key=jr.key(4), step_size=h, num_steps=steps).x
    sol = ebm.mala(model, x0, key=jr.key(4), step_size=h, num_steps=steps)
    mala_x = sol.x
    ula_var = s2 / (1 - h / (2 * s2))

    def var_ok(x, var):
        x = np.asarray(x, np.float64)[:, 0]
        return abs(x.var() - var) < 5 * var * np.sqrt(2 / n) and abs(x.mean() - m) < 5 * np.sqrt(
            var / n
        )

    assert var_ok(ula, ula_var) and not var_ok(ula, s2)  # the bias, in closed form
    assert var_ok(mala_x, s2) and not var_ok(mala_x, ula_var)  # MALA: exact
    rate = np.asarray(sol.num_accepted) / steps
    assert rate.shape == (n,) and np.all(rate > 0) and np.all(rate <= 1)
    assert 0.5 < rate.mean() < 1.0  # some proposals are rejected at this step size
    np.testing.assert_array_equal(np.asarray(sol.num_accepted + sol.num_rejected), steps)
    assert sol.nfe == steps + 1
    # tiny steps: almost every proposal is accepted
    small = ebm.mala(model, x0[:100], key=jr.key(5), step_size=1e-4, num_steps=20)
    assert np.mean(np.asarray(small.num_accepted)) / 20 > 0.99


@pytest.mark.slow
def test_mala_2d_covariance_jit_vmap_and_cond():
    h, n = 0.3, 10_000
    model = quadratic_model()
    x0 = jr.normal(jr.key(6), (n, 2))
    run = jax.jit(lambda x, k: ebm.mala(model, x, key=k, step_size=h, num_steps=150).x)
    assert _zcov(run(x0, jr.key(7)), M, np.linalg.inv(P))
    # vmapped over independent groups of chains, equal to one call per group
    keys = jr.split(jr.key(8), 2)
    xs = jax.vmap(run)(x0[:64].reshape(2, 32, 2), keys)
    np.testing.assert_allclose(xs[1], run(x0[32:64], keys[1]), rtol=1e-5, atol=1e-6)
    # energy given as a plain function with a per-chain condition: chain i targets N(c_i, 1)
    energy = lambda t, x, c: 0.5 * jnp.sum((x - c) ** 2)  # noqa: E731
    cond = jnp.repeat(jnp.array([[-3.0], [3.0]]), 2000, axis=0)
    out = ebm.mala(energy, jnp.zeros((4000, 1)), key=jr.key(9), step_size=0.5, num_steps=100,
                   cond=cond).x  # fmt: skip
    np.testing.assert_allclose([out[:2000].mean(), out[2000:].mean()], [-3, 3], atol=0.15)
    with pytest.raises(ValueError, match="scalar"):
        ebm.mala(lambda t, x, a: x, x0, key=jr.key(0), step_size=0.1, num_steps=2)
    with pytest.raises(ValueError, match="step_size"):
        ebm.mala(model, x0, key=jr.key(0), step_size=-0.1, num_steps=2)


def test_ebm_surrogate_gradient_matches_formula(x64):
    """Quadratic energy: grad = mean grad E(data) - mean grad E(model) (+ regulariser), and
    with exact model samples (N(mu, P^{-1})) it estimates the NLL gradient."""
    mu, prec = np.array([0.2, -0.1]), np.array([[1.5, 0.3], [0.3, 0.8]])
    model = quadratic_model(mu, prec)
    data = jr.multivariate_normal(jr.key(10), jnp.array([1.0, 0.5]), jnp.eye(2) * 0.5, (4000,))
    samples = jr.multivariate_normal(jr.key(11), jnp.asarray(mu), jnp.linalg.inv(prec), (200_000,))
    alpha = 0.1

    def loss(model):
        return ebm.ebm_surrogate(model, data, samples, alpha=alpha)[0]

    g = jax.grad(loss)(model).net
    # by hand: E = d^T Prec d / 2, dE/dmu = -Prec d, dE/dL = (d d^T) L (Prec = L L^T)
    ed = 0.5 * np.einsum("ni,ij,nj->n", data - mu, prec, data - mu)
    em = 0.5 * np.einsum("ni,ij,nj->n", samples - mu, prec, samples - mu)
    dmu = lambda x: -(x - mu) @ prec  # noqa: E731  (n, 2)
    want_mu = (
        dmu(data).mean(0) - dmu(samples).mean(0)
        + alpha * 2 * ((ed[:, None] * dmu(data)).mean(0) + (em[:, None] * dmu(samples)).mean(0))
    )  # fmt: skip
    np.testing.assert_allclose(g.mu, want_mu, rtol=1e-8)
    chol = np.linalg.cholesky(prec)
    dl = lambda x: np.einsum("ni,nj->nij", x - mu, x - mu) @ chol  # noqa: E731
    want_l = dl(data).mean(0) - dl(samples).mean(0)
    want_l += (
        alpha
        * 2
        * ((ed[:, None, None] * dl(data)).mean(0) + (em[:, None, None] * dl(samples)).mean(0))
    )
    np.testing.assert_allclose(np.tril(g.chol), np.tril(want_l), rtol=1e-8)
    # without the regulariser: the NLL gradient E_data[grad E] + grad log Z, in closed form
    g0 = jax.grad(lambda m: ebm.ebm_surrogate(m, data, samples)[0])(model).net
    nll_mu = -prec @ (np.asarray(data).mean(0) - mu)
    np.testing.assert_allclose(g0.mu, nll_mu, atol=0.02)
    # dNLL/dL = (S_data - Prec^{-1}) L with S_data the data's second moment about mu
    s_data = np.einsum("ni,nj->ij", data - mu, data - mu) / len(data)
    nll_l = (s_data - np.linalg.inv(prec)) @ chol
    np.testing.assert_allclose(np.tril(g0.chol), np.tril(nll_l), atol=0.03)


@pytest.mark.slow
def test_ebm_loss_langevin_gradient_near_nll_gradient():
    """ebm_loss with long ULA chains (small h) on a quadratic energy: the NLL gradient."""
    model = quadratic_model()
    data = jr.normal(jr.key(12), (20_000, 2)) + jnp.array([2.0, 0.0])
    loss = functools.partial(ebm.ebm_loss, step_size=0.02, num_steps=300, alpha=0.0)
    (val, aux), g = jax.value_and_grad(loss, has_aux=True)(model, jr.key(13), data)
    nll_mu = -P @ (np.asarray(data).mean(0) - M)
    np.testing.assert_allclose(g.net.mu, nll_mu, atol=0.1)
    assert set(aux) == {"energy_data", "energy_model"}
    np.testing.assert_allclose(val, aux["energy_data"] - aux["energy_model"], rtol=1e-6)
    _, aux = ebm.ebm_loss(model, jr.key(0), data[:64], sampler="mala", num_steps=5)
    assert 0 < aux["acceptance"] <= 1
    with pytest.raises(ValueError, match="sampler"):
        ebm.ebm_loss(model, jr.key(0), data[:8], sampler="hmc")
    with pytest.raises(TypeError, match="EnergyModel"):
        ebm.ebm_loss(Quadratic(jnp.zeros(2), jnp.eye(2)), jr.key(0), data[:8])


def _persistent_run(num_steps, ckpt=None, resume=False, init=None, model=None):
    loss = _PERSISTENT_LOSS
    return dg.train.fit(
        model, loss, dg.data.sampler("8gaussians"), optimizer=_PERSISTENT_OPT, key=jr.key(20),
        num_steps=num_steps, batch_size=32, steps_per_call=2, progress=False,
        checkpoint=ckpt, checkpoint_every=None if ckpt is None else 2, resume=resume, init=init,
    )  # fmt: skip


_PERSISTENT_LOSS = functools.partial(ebm.ebm_loss, step_size=0.05, num_steps=5, num_chains=16)
_PERSISTENT_OPT = ebm.with_replay(dg.train.make_optimizer(1e-3, grad_clip=1.0))


@pytest.mark.slow
def test_persistent_chains_update_buffer_and_resume_bit_exactly(tmp_path):
    net = ebm.energy_mlp(2, width=16, depth=2, key=jr.key(21))
    x0 = jr.uniform(jr.key(22), (64, 2), minval=-4, maxval=4)
    model = ebm.with_buffer(net, x0)
    one = _persistent_run(1, model=model)
    changed = np.any(np.asarray(one.model.buffer.x) != np.asarray(x0), axis=1)
    assert changed.sum() == 16  # exactly the 16 chains of the step were written back
    full = _persistent_run(6, model=model)
    path = tmp_path / "ebm.ckpt"
    part = _persistent_run(3, ckpt=path, model=model)
    assert part.step == 3
    resumed = _persistent_run(6, ckpt=path, resume=True, model=model)
    assert_trees_equal(resumed.model, full.model)  # energy AND buffer, bit for bit
    assert_trees_equal(resumed.ema_model, full.ema_model)
    assert_trees_equal(resumed.opt_state, full.opt_state)
    cont = _persistent_run(6, init=_persistent_run(4, model=model))
    assert_trees_equal(cont.model, full.model)
    # the energy parameters trained; the buffer moved away from its start
    assert not np.allclose(np.asarray(full.model.net.layers[0].weight), net.net.layers[0].weight)
    assert np.mean(np.any(np.asarray(full.model.buffer.x) != np.asarray(x0), axis=1)) > 0.5


def test_with_replay_without_buffer_is_the_plain_optimizer():
    """Short-run chains (no buffer): with_replay(opt) trains exactly as opt."""
    net = ebm.energy_mlp(2, width=8, depth=2, key=jr.key(30))
    loss = functools.partial(ebm.ebm_loss, step_size=0.05, num_steps=3)
    opt = dg.train.make_optimizer(1e-3)
    kw = dict(key=jr.key(31), num_steps=2, batch_size=16, steps_per_call=2, progress=False)
    data = dg.data.sampler("8gaussians")
    a = dg.train.fit(net, loss, data, optimizer=opt, **kw)
    b = dg.train.fit(net, loss, data, optimizer=ebm.with_replay(opt), **kw)
    assert_trees_equal(a.model, b.model)
    with pytest.raises(TypeError, match="optimizer"):
        ebm.with_replay("adam")
    with pytest.raises(TypeError, match="EnergyModel"):
        ebm.with_buffer(net.net, jnp.zeros((4, 2)))
