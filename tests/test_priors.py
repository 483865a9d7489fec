"""Priors by default (issue 8, section 5) and a user-defined path end to end (section 4).

Each path knows its reference at t = 0, ``path.prior(event_shape)`` = N(0, sigma(0)^2 I), and
``cnf.log_prob`` of a field that carries a path starts from it. Exact answers: Gaussian-mixture
log-densities, through the exact (ground-truth) fields of ``diffeqgen.groundtruth``.
"""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats

from diffeqgen import cnf, groundtruth, paths, solve
from diffeqgen.data import GaussianMixture
from diffeqgen.paths import IsotropicGaussian, custom_path, get_path

TIGHT = dict(rtol=1e-10, atol=1e-10)


def _mixture():
    return GaussianMixture(
        jnp.array([[1.0, 0.5], [-1.0, -0.5]]),
        jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.25, 0.0], [0.0, 0.4]]]),
        jnp.array([0.5, 0.5]),
    )


def _smoothed_score(mix):
    """The exact noise-conditional score model(sigma, x, args) of mix * N(0, sigma^2 I)."""

    def model(sigma, x, args=None):
        cov = mix.covariances + sigma**2 * jnp.eye(mix.dim)
        return GaussianMixture(mix.means, cov, mix.weights).score(x)

    return model


@pytest.mark.parametrize(
    "path",
    [
        get_path("linear"),
        get_path("cosine"),
        get_path("ve", sigma_max=30.0),
        get_path("vp"),
        get_path("subvp"),
        get_path("ve_t", scale=2.0),
        custom_path(lambda t: t, lambda t: 3.0 * (1.0 - t)),
    ],
    ids=lambda p: type(p).__name__,
)
def test_prior_is_isotropic_normal_with_scale_sigma0(path, key, x64):
    prior = path.prior(3)
    assert isinstance(prior, IsotropicGaussian) and prior.event_shape == (3,) and prior.dim == 3
    np.testing.assert_allclose(prior.scale, path.sigma(0.0), rtol=1e-12)
    z = jr.normal(key, (5, 3)) * 2.0
    expected = scipy.stats.norm.logpdf(np.asarray(z), scale=float(path.sigma(0.0))).sum(-1)
    np.testing.assert_allclose(prior.log_prob(z), expected, rtol=1e-12)
    # Image-like events: sums over every event axis.
    img = path.prior((2, 3))
    assert img.dim == 6 and img.log_prob(jnp.zeros((4, 2, 3))).shape == (4,)
    draws = img.sample(key, 20000)
    assert draws.shape == (20000, 2, 3) and draws.dtype == jnp.float64
    # Variance within 6 standard errors (relative SE sqrt(2 / N) of the pooled variance).
    var = float(jnp.mean(draws**2))
    assert abs(var / float(path.sigma(0.0)) ** 2 - 1.0) < 6 * math.sqrt(2 / draws.size)
    assert img.sample(key, (2, 5)).shape == (2, 5, 2, 3)


def test_prior_values_and_errors():
    assert float(get_path("ve", sigma_max=50.0).prior(2).scale) == pytest.approx(50.0)
    assert float(get_path("linear").prior(2).scale) == 1.0  # exact: alpha(0) = 0
    # At another time, N(0, sigma(t)^2 I) (the base of a likelihood solve from t0 = t).
    assert float(get_path("linear").prior(2, t=0.25).scale) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no noise"):
        get_path("linear").prior(2, t=1.0)
    with pytest.raises(ValueError, match="z must have shape"):
        get_path("linear").prior(2).log_prob(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="event_shape"):
        get_path("linear").prior(())


def test_ve_exact_score_likelihood_uses_the_prior_by_default(key, x64):
    # The test: on the VE path the exact mixture score, turned into its probability-flow
    # field, gives log p through cnf.log_prob with the DEFAULT base within 1e-3 nats of the
    # mixture's exact log-density. The prior N(0, sigma_max^2 I) drops the data term of
    # p_0 = mix * N(0, sigma_max^2 I), an error of order E|x1|^2 / (2 sigma_max^2) = 1e-4 nats at
    # sigma_max = 100; sigma_min = 1e-3 keeps p_1 within 1e-5 nats of the mixture.
    mix = _mixture()
    path = paths.VEPath(sigma_min=1e-3, sigma_max=100.0)
    field = paths.as_vector_field(groundtruth.score_field(mix, path), path, "score")
    x = mix.sample(key, 4)
    exact = mix.log_prob(x)
    lp, _ = cnf.log_prob(field, x, **TIGHT)
    np.testing.assert_allclose(lp, exact, rtol=0, atol=1e-3)
    # The old default N(0, I) is off by hundreds of nats or more here.
    lp_std, _ = cnf.log_prob(field, x, base=IsotropicGaussian(1.0, 2), **TIGHT)
    assert np.all(np.abs(np.asarray(lp_std - exact)) > 100.0)


def test_noise_conditional_model_route_to_its_likelihood(key, x64):
    # An NCSM / DSM network model(sigma, x, args): its noise levels are a VE path (sigma(t)
    # geometric from sigma_max at t = 0 to sigma_min at t = 1), and one call gives log p.
    mix = _mixture()
    model = _smoothed_score(mix)
    path = paths.VEPath(sigma_min=1e-3, sigma_max=100.0)
    x = mix.sample(jr.fold_in(key, 1), 3)
    lp, _ = cnf.log_prob(paths.as_vector_field(model, path, "noise_conditional"), x, **TIGHT)
    np.testing.assert_allclose(lp, mix.log_prob(x), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", ["ve", "vp", "cosine"])
def test_every_model_kind_gives_the_exact_field(name, key, x64):
    # Exact models of every kind (velocity, score, denoiser, eps, and a noise-conditional score
    # of the data smoothed by N(0, s^2 I), rescaled by alpha on non-VE paths) map to the exact
    # marginal velocity and score of the path.
    mix = _mixture()
    path = get_path(name)

    def exact(fn):
        return lambda t, x, args=None: getattr(groundtruth, fn)(mix, path, t, x)

    models = {kind: exact(kind) for kind in ("velocity", "score", "denoiser", "eps")}
    models["noise_conditional"] = _smoothed_score(mix)
    assert set(models) == set(paths.MODEL_KINDS)
    x = 2.0 * jr.normal(key, (2,))
    for t in (0.1, 0.5, 0.9):
        for kind, model in models.items():
            v = paths.as_vector_field(model, path, kind)
            s = paths.as_score(model, path, kind)
            assert v.path is path
            np.testing.assert_allclose(
                v(t, x, None), groundtruth.velocity(mix, path, t, x), rtol=1e-8, err_msg=kind
            )
            np.testing.assert_allclose(
                s(t, x, None), groundtruth.score(mix, path, t, x), rtol=1e-8, err_msg=kind
            )


def test_default_base_follows_the_field(key):
    # Fixed-step solves: default and explicit bases give the same numbers exactly.
    x = jr.normal(key, (3, 2))
    ve = get_path("ve")
    opts = dict(solver="rk4", steps=4)
    carried = paths.as_vector_field(lambda t, y, args: -0.1 * y, ve, "velocity")
    lp, _ = cnf.log_prob(carried, x, **opts)
    np.testing.assert_allclose(lp, cnf.log_prob(carried, x, base=ve.prior(2), **opts)[0])
    # From t0 = 0.5 the default base is the prior at t0.
    lp_half, _ = cnf.log_prob(carried, x, t0=0.5, **opts)
    np.testing.assert_allclose(
        lp_half, cnf.log_prob(carried, x, t0=0.5, base=ve.prior(2, t=0.5), **opts)[0]
    )

    def plain(t, y, args):  # no path: a standard normal, as before
        return -0.1 * y

    lp_plain, _ = cnf.log_prob(plain, x, **opts)
    np.testing.assert_allclose(
        lp_plain, cnf.log_prob(plain, x, base=IsotropicGaussian(1.0, 2), **opts)[0], rtol=1e-6
    )
    assert np.max(np.abs(np.asarray(lp - lp_plain))) > 0.1


def test_new_schedule_end_to_end(key, x64):
    # A genuinely new schedule from alpha and sigma alone: alpha = sin^2(pi t / 2),
    # sigma = 2 (1 - t). p_0 = N(0, 4 I) exactly (alpha(0) = 0), p_1 = the mixture (sigma(1) = 0).
    mix = _mixture()
    path = custom_path(
        lambda t: jnp.sin(0.5 * jnp.pi * t) ** 2, lambda t: 2.0 * (1.0 - t), name="sin2"
    )
    assert path.alpha_vanishes_at_0 and path.sigma_vanishes_at_1
    field = groundtruth.velocity_field(mix, path)  # carries the path
    k_prior, k_sample = jr.split(key)
    z = path.prior(2).sample(k_prior, 2000)
    x = solve.sample_ode(field, z, rtol=1e-8, atol=1e-8).x
    # Noise is carried to the mixture: mean within 4.5 standard errors, covariance within 10%.
    mean, cov = np.asarray(mix.mean()), np.asarray(mix.covariance())
    se = np.sqrt(np.diag(cov) / x.shape[0])
    assert np.all(np.abs(np.mean(np.asarray(x), 0) - mean) < 4.5 * se)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), cov, rtol=0.1, atol=0.05)
    # Exact log p at the generated points, with the default base N(0, 4 I).
    pts = x[:4]
    lp, _ = cnf.log_prob(field, pts, **TIGHT)
    np.testing.assert_allclose(lp, mix.log_prob(pts), rtol=0, atol=1e-3)
    lp_std, _ = cnf.log_prob(field, pts, base=IsotropicGaussian(1.0, 2), **TIGHT)
    assert np.max(np.abs(np.asarray(lp_std - mix.log_prob(pts)))) > 0.1
    # The forward twin draws its base samples from the prior too.
    xs, lps, _ = cnf.sample_and_log_prob(field, k_sample, 4, 2, **TIGHT)
    np.testing.assert_allclose(lps, mix.log_prob(xs), rtol=0, atol=1e-3)


def test_prior_default_under_jit(key, x64):
    # cnf.log_prob inside the user's jit: the prior's scale is an array, traced or not.
    path = get_path("ve", sigma_min=0.01, sigma_max=20.0)
    field = paths.as_vector_field(lambda t, y, args: jnp.zeros_like(y), path, "velocity")
    x = jr.normal(key, (3, 2))
    lp = jax.jit(lambda y: cnf.log_prob(field, y, solver="euler", steps=2)[0])(x)
    np.testing.assert_allclose(lp, path.prior(2).log_prob(x), rtol=1e-12)
