import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffeqgen import paths
from diffeqgen.paths import KINDS, DDPMSchedule, GaussianPath, convert, custom_path, get_path


class SquaredPath(GaussianPath):
    """The documented subclass recipe: alpha and sigma only, derivatives by autodiff."""

    def __init__(self, t_eps=1e-3):
        self.t_eps = t_eps

    def alpha(self, t):
        return t**2

    def sigma(self, t):
        return 1.0 - t


# Every path goes through the same property tests (defaults plus non-default parameters).
PATHS = {
    "linear": lambda: get_path("linear"),
    "cosine": lambda: get_path("cosine"),
    "polynomial2": lambda: get_path("polynomial"),
    "polynomial0.5": lambda: get_path("polynomial", p=0.5),
    "polynomial3": lambda: get_path("polynomial", p=3),
    "ve": lambda: get_path("ve"),
    "ve50": lambda: get_path("ve", sigma_min=0.02, sigma_max=50.0),
    "vp": lambda: get_path("vp"),
    "vp_custom": lambda: get_path("vp", beta_min=0.5, beta_max=5.0, t_eps=1e-4),
    "subvp": lambda: get_path("subvp"),
    "ve_t": lambda: get_path("ve_t"),
    "ve_t3": lambda: get_path("ve_t", scale=3.0),
    # User-defined paths (section 4 of issue 8): a subclass and custom_path, with an infinite
    # derivative at t = 0 (sqrt) and a constant alpha (VE-like, nothing vanishes).
    "subclass_sq": SquaredPath,
    "custom_sqrt": lambda: custom_path(jnp.sqrt, lambda t: 1.0 - t, name="sqrt"),
    "custom_ve": lambda: custom_path(lambda t: 1.0, lambda t: 0.05 * 40.0 ** (1.0 - t)),
}
INTERIOR = np.linspace(0.05, 0.95, 7)


@pytest.fixture(params=list(PATHS))
def path(request):
    return PATHS[request.param]()


def test_every_name_is_covered():
    assert set(paths.PATH_NAMES) == {"linear", "cosine", "polynomial", "ve", "vp", "subvp", "ve_t"}
    for name in paths.PATH_NAMES:
        assert isinstance(get_path(name), GaussianPath)


def test_derivatives_match_autodiff(path, x64):
    t = jnp.asarray(INTERIOR, dtype=jnp.float64)
    for f, df in ((path.alpha, path.d_alpha), (path.sigma, path.d_sigma)):
        expected = jax.vmap(jax.grad(f))(t)
        np.testing.assert_allclose(df(t), expected, rtol=1e-10, atol=1e-12)


def test_diffusion_satisfies_forward_variance_identity(path, x64):
    """g is the diffusion of the linear SDE whose conditional marginals are N(alpha x1, sigma^2).

    In classic time s = 1 - t the forward SDE dx = (d log alpha / ds) x ds + g dW has
    conditional variance with d(sigma^2)/ds = 2 (d log alpha / ds) sigma^2 + g^2, i.e. in t:
    d(sigma^2)/dt = 2 (alpha'/alpha) sigma^2 - g^2. alpha' and (sigma^2)' by autodiff of the
    path's own alpha and sigma, so no closed form is compared with itself.
    """
    t = jnp.asarray(INTERIOR, dtype=jnp.float64)
    d_alpha = jax.vmap(jax.grad(lambda s: jnp.asarray(path.alpha(s), jnp.float64)))(t)
    d_var = jax.vmap(jax.grad(lambda s: jnp.asarray(path.sigma(s), jnp.float64) ** 2))(t)
    alpha, sigma = path.alpha(t) * jnp.ones_like(t), path.sigma(t)
    g = path.diffusion(t)
    assert g.shape == t.shape and np.all(np.asarray(g) > 0)
    np.testing.assert_allclose(d_var, 2 * d_alpha / alpha * sigma**2 - g**2, rtol=1e-9, atol=1e-12)


def test_classic_diffusions(x64):
    t = jnp.asarray(INTERIOR)
    s = 1.0 - t
    vp = get_path("vp")
    np.testing.assert_allclose(vp.diffusion(t), jnp.sqrt(0.1 + 19.9 * s), rtol=1e-12)
    ve = get_path("ve", sigma_max=10.0)
    g = 0.01 * 1000.0**s * math.sqrt(2 * math.log(1000.0))
    np.testing.assert_allclose(ve.diffusion(t), g, rtol=1e-12)
    np.testing.assert_allclose(get_path("ve_t", scale=2.0).diffusion(t), 2.0 * s, rtol=1e-12)
    # ve_t: sigma(s)^2 = int_0^s u^2 du = s^3 / 3.
    np.testing.assert_allclose(get_path("ve_t").sigma(t) ** 2, s**3 / 3, rtol=1e-12)


def test_snr_increases(path):
    snr = path.snr(jnp.linspace(0.0, 1.0, 101))
    assert np.all(np.diff(np.asarray(snr)) > 0)


@pytest.mark.parametrize("name", ["linear", "cosine", "polynomial"])
def test_endpoints_interpolating_paths(name):
    p = get_path(name)
    assert float(p.alpha(0.0)) == 0.0 and float(p.sigma(0.0)) == 1.0
    assert float(p.alpha(1.0)) == 1.0 and float(p.sigma(1.0)) == 0.0
    assert p.t_min == pytest.approx(1e-3) and p.t_max == pytest.approx(1 - 1e-3)


def test_endpoints_diffusion_paths():
    for name in ("vp", "subvp"):
        p = get_path(name)
        assert float(p.alpha(1.0)) == 1.0 and float(p.sigma(1.0)) == 0.0
        assert float(p.alpha(0.0)) == pytest.approx(math.exp(-0.5 * (0.1 + 9.95)), rel=1e-5)
        assert float(p.sigma(0.0)) == pytest.approx(1.0, abs=1e-4)
        assert p.t_min == 0.0 and p.t_max == pytest.approx(1 - 1e-3)
    ve = get_path("ve", sigma_max=10.0)
    assert float(ve.sigma(0.0)) == pytest.approx(10.0, rel=1e-6)
    assert float(ve.sigma(1.0)) == pytest.approx(0.01, rel=1e-6)
    assert float(ve.alpha(0.3)) == 1.0 and (ve.t_min, ve.t_max) == (0.0, 1.0)
    vet = get_path("ve_t")
    assert float(vet.sigma(1.0)) == 0.0 and float(vet.sigma(0.0)) == pytest.approx(3**-0.5)


def test_endpoints_finite(path, key):
    x1 = jr.normal(key, (4, 3))
    x = 2.0 * x1 + 1.0
    for t in (0.0, 1.0, jnp.array([0.0, 1.0, 0.5, 1.0])):
        outs = [
            path.alpha(t),
            path.sigma(t),
            path.d_alpha(t),
            path.d_sigma(t),
            path.snr(t),
            path.diffusion(t),
            path.cond_velocity(x, x1, t),
            path.cond_velocity_on_path(x1, x, t),
            path.cond_score(x, x1, t),
        ]
        outs += [convert(x, x1, t, path, source=a, target=b) for a in KINDS for b in KINDS]
        for out in outs:
            assert np.all(np.isfinite(np.asarray(out)))


def test_cond_velocity_forms_agree_and_are_the_time_derivative(path, key, x64):
    k1, k2 = jr.split(key)
    x1, eps = jr.normal(k1, (5, 2)), jr.normal(k2, (5, 2))
    for t in INTERIOR:
        x = path.interpolate(x1, eps, t)
        general = path.cond_velocity(x, x1, t)
        simple = path.cond_velocity_on_path(x1, eps, t)
        np.testing.assert_allclose(general, simple, rtol=1e-10, atol=1e-10)
        _, dxdt = jax.jvp(lambda s: path.interpolate(x1, eps, s), (t,), (1.0,))
        np.testing.assert_allclose(simple, dxdt, rtol=1e-10, atol=1e-10)


def test_cond_score_is_gradient_of_gaussian_log_density(path, key, x64):
    k1, k2 = jr.split(key)
    x1, x = jr.normal(k1, (3,)), jr.normal(k2, (3,))
    for t in INTERIOR:
        a, s = path.alpha(t), path.sigma(t)

        def logp(y, a=a, s=s):
            return jnp.sum(jax.scipy.stats.norm.logpdf(y, a * x1, s))

        np.testing.assert_allclose(path.cond_score(x, x1, t), jax.grad(logp)(x), rtol=1e-10)


@pytest.mark.parametrize("name", ["cosine", "vp", "ve"])
def test_sample_has_the_conditional_law(name, key):
    p, n = get_path(name), 20000
    x1 = jnp.array([1.0, -2.0])
    xs = np.asarray(p.sample(key, jnp.broadcast_to(x1, (n, 2)), 0.4), np.float64)
    a, s = float(p.alpha(0.4)), float(p.sigma(0.4))
    # Mean and variance of each coordinate within 4 standard errors (z-tests, two-sided level
    # ~6e-5 each; SE of a Gaussian sample variance sqrt(2 / n) s^2): a 5% wider spread is
    # z = +10 on the variance.
    z_mean = (xs.mean(0) - a * np.asarray(x1)) / (s / math.sqrt(n))
    z_var = (xs.var(0) - s**2) / (s**2 * math.sqrt(2.0 / n))
    assert np.all(np.abs(z_mean) < 4) and np.all(np.abs(z_var) < 4), (z_mean, z_var)
    # The coordinates are independent: correlation within 4 SE (1 / sqrt(n)).
    assert abs(np.corrcoef(xs.T)[0, 1]) < 4 / math.sqrt(n)


def test_batched_t_broadcasts_over_leading_axes(key):
    p = get_path("vp")
    x1, eps = jr.normal(key, (2, 4, 3))
    t = jnp.array([0.2, 0.7, 0.9, 0.5])
    x = p.interpolate(x1, eps, t)
    rows = jnp.stack([p.interpolate(x1[i], eps[i], t[i]) for i in range(4)])
    np.testing.assert_allclose(x, rows, rtol=1e-6)
    v = convert(eps, x, t, p, source="eps", target="velocity")
    np.testing.assert_allclose(v, p.cond_velocity_on_path(x1, eps, t), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="leading"):
        p.interpolate(x1[0], eps[0], jnp.ones((4, 3, 2)))


def test_parametrisation_round_trips(path, key, x64):
    k1, k2 = jr.split(key)
    x, pred = jr.normal(k1, (6, 2)), jr.normal(k2, (6, 2))
    t = jnp.asarray(np.linspace(0.1, 0.9, 6))
    for a in KINDS:
        for b in KINDS:
            there = convert(pred, x, t, path, source=a, target=b)
            back = convert(there, x, t, path, source=b, target=a)
            np.testing.assert_allclose(back, pred, rtol=1e-8, atol=1e-8)


def test_parametrisations_are_exact_on_the_path(path, key, x64):
    # With D = x1 and E = eps on x = alpha x1 + sigma eps, the conversions give the conditional
    # targets: velocity d_alpha x1 + d_sigma eps and score -eps / sigma.
    k1, k2 = jr.split(key)
    x1, eps = jr.normal(k1, (4, 2)), jr.normal(k2, (4, 2))
    for t in INTERIOR:
        x = path.interpolate(x1, eps, t)
        truth = {
            "denoiser": x1,
            "eps": eps,
            "velocity": path.cond_velocity_on_path(x1, eps, t),
            "score": path.cond_score(x, x1, t),
        }
        for a in KINDS:
            for b in KINDS:
                out = convert(truth[a], x, t, path, source=a, target=b)
                np.testing.assert_allclose(out, truth[b], rtol=1e-8, atol=1e-8)


def test_as_vector_field_and_as_score(key):
    p = get_path("linear")
    x1 = jnp.array([0.5, -1.0])

    def denoiser(t, x, args):  # the exact denoiser of a point mass at x1
        return x1

    f = paths.as_vector_field(denoiser, p, "denoiser")
    s = paths.as_score(denoiser, p, "denoiser")
    x, t = jnp.array([0.1, 0.2]), 0.3
    np.testing.assert_allclose(f(t, x, None), (x1 - x) / (1 - t), rtol=1e-5)
    np.testing.assert_allclose(s(t, x, None), p.cond_score(x, x1, t), rtol=1e-5)
    # A module: jit sees the model's arrays as inputs.
    assert isinstance(f, eqx.Module)
    np.testing.assert_allclose(eqx.filter_jit(f)(t, x, None), f(t, x, None), rtol=1e-6)


def test_convert_under_jit_and_vmap(key):
    p = get_path("vp")
    x = jr.normal(key, (8, 2))
    t = jnp.linspace(0.1, 0.9, 8)
    fn = jax.jit(jax.vmap(lambda e, y, s: convert(e, y, s, p, source="eps", target="score")))
    np.testing.assert_allclose(fn(x, x, t), -x / p.sigma(t)[:, None], rtol=1e-5)


def test_validation_errors():
    with pytest.raises(ValueError, match="expected one of: linear, cosine"):
        get_path("straight")
    with pytest.raises(ValueError, match="sigma_max must be > sigma_min"):
        get_path("ve", sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        get_path("ve", sigma_min=0.0)
    with pytest.raises(ValueError, match="p must be"):
        get_path("polynomial", p=-1.0)
    with pytest.raises(ValueError, match="beta_max must be >= beta_min"):
        get_path("vp", beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="t_eps"):
        get_path("linear", t_eps=0.7)
    with pytest.raises(TypeError, match="get_path\\('linear'\\)"):
        get_path("linear", p=2.0)
    x = jnp.zeros((2,))
    with pytest.raises(ValueError, match="unknown target 'x0'"):
        convert(x, x, 0.5, get_path("linear"), source="eps", target="x0")
    with pytest.raises(ValueError, match="same shape"):
        convert(jnp.zeros(3), x, 0.5, get_path("linear"), source="eps", target="score")
    with pytest.raises(ValueError, match="kind"):
        paths.as_vector_field(lambda t, x, a: x, get_path("linear"), "noise")
    with pytest.raises(TypeError, match="path"):  # ours, or the jaxtyping hook in the tests
        paths.as_vector_field(lambda t, x, a: x, "linear", "velocity")


def test_ddpm_schedule(x64):
    sched = DDPMSchedule(num_steps=100, beta_min=1e-4, beta_max=0.02)
    betas = np.linspace(1e-4, 0.02, 100)
    np.testing.assert_allclose(sched.betas, betas, rtol=1e-12)
    np.testing.assert_allclose(sched.alpha_bars, np.cumprod(1 - betas), rtol=1e-12)
    assert float(sched.time(100)) == 0.0 and float(sched.time(0)) == 1.0
    ks = jnp.arange(101)
    np.testing.assert_array_equal(sched.step(sched.time(ks)), ks)
    assert float(sched.alpha_bar(0)) == 1.0
    a, s = sched.alpha_sigma(ks)
    np.testing.assert_allclose(a**2 + s**2, 1.0, rtol=1e-12)
    # The continuous VP path with beta * T matches alpha_bar to O(beta_max).
    vp = sched.path()
    np.testing.assert_allclose(vp.alpha(sched.time(ks)), a, atol=0.02)
    default = DDPMSchedule()
    assert default.num_steps == 500 and default.betas.shape == (500,)
    with pytest.raises(ValueError, match="beta_max"):
        DDPMSchedule(beta_min=0.1, beta_max=0.01)
    with pytest.raises(ValueError, match="num_steps"):
        DDPMSchedule(num_steps=0)


# -- user-defined paths (issue 8, section 4) ------------------------------------------------


def _custom_cosine(**kw):
    # cos(pi t / 2) is 6e-17 at t = 1 in float64, not 0: the endpoint is detected as vanishing.
    return custom_path(
        lambda t: jnp.sin(0.5 * jnp.pi * t), lambda t: jnp.cos(0.5 * jnp.pi * t), **kw
    )


def test_custom_path_endpoints_and_autodiff_derivatives(x64):
    p, ref = _custom_cosine(), get_path("cosine")
    assert isinstance(p, GaussianPath) and isinstance(p, paths.CustomPath)
    assert p.alpha_vanishes_at_0 and p.sigma_vanishes_at_1
    assert (p.t_min, p.t_max) == (ref.t_min, ref.t_max)
    t = jnp.linspace(0.0, 1.0, 11)
    for name in ("alpha", "sigma", "d_alpha", "d_sigma", "snr", "diffusion"):
        np.testing.assert_allclose(
            getattr(p, name)(t), getattr(ref, name)(t), rtol=1e-12, atol=1e-12, err_msg=name
        )
    # Scalars and arrays of t of any shape; an integer t is a time too.
    assert p.d_alpha(0.5).shape == () and p.d_sigma(jnp.ones((2, 3)) / 2).shape == (2, 3)
    np.testing.assert_allclose(p.d_alpha(1), ref.d_alpha(1.0), atol=1e-12)
    # Declared derivatives are used (and checked against autodiff at construction).
    q = _custom_cosine(
        d_alpha=lambda t: 0.5 * jnp.pi * jnp.cos(0.5 * jnp.pi * t),
        d_sigma=lambda t: -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * t),
    )
    np.testing.assert_allclose(q.d_alpha(t), ref.d_alpha(t), rtol=1e-12, atol=1e-12)
    # Nothing vanishes on a VE-like schedule; a constant alpha broadcasts against t.
    ve = custom_path(lambda t: 1.0, lambda t: 0.01 * 1000.0 ** (1.0 - t))
    assert not ve.alpha_vanishes_at_0 and not ve.sigma_vanishes_at_1
    assert (ve.t_min, ve.t_max) == (0.0, 1.0)
    np.testing.assert_allclose(ve.diffusion(t), get_path("ve").diffusion(t), rtol=1e-12)


def test_custom_cosine_matches_builtin_everywhere(key, x64):
    from diffeqgen import groundtruth, losses, sdes, solve
    from diffeqgen.data import GaussianMixture

    p, ref = _custom_cosine(), get_path("cosine")
    k1, k2, k3 = jr.split(key, 3)
    x, pred = jr.normal(k1, (6, 2)), jr.normal(k2, (6, 2))
    t = jnp.asarray([0.0, 0.1, 0.4, 0.7, 0.999, 1.0])
    for a in KINDS:
        for b in KINDS:
            np.testing.assert_allclose(
                convert(pred, x, t, p, source=a, target=b),
                convert(pred, x, t, ref, source=a, target=b),
                rtol=1e-10,
                atol=1e-10,
            )
    mix = GaussianMixture(
        jnp.array([[1.0, 0.0], [-1.0, 0.5]]),
        jnp.array([jnp.eye(2) * 0.3, jnp.array([[0.2, 0.05], [0.05, 0.4]])]),
        jnp.array([0.3, 0.7]),
    )
    for s in (0.0, 0.3, 0.8, 1.0):
        for fn in ("log_prob", "score", "denoiser", "eps", "velocity"):
            np.testing.assert_allclose(
                getattr(groundtruth, fn)(mix, p, s, x),
                getattr(groundtruth, fn)(mix, ref, s, x),
                rtol=1e-10,
                atol=1e-10,
                err_msg=f"{fn} at t={s}",
            )
        np.testing.assert_allclose(
            groundtruth.marginal(mix, p, s).covariances,
            groundtruth.marginal(mix, ref, s).covariances,
            rtol=1e-12,
            atol=1e-12,
        )

    def model(t, y, args=None):
        return jnp.tanh(y) * (1.0 + t)

    for loss in (
        losses.flow_matching_loss,
        losses.score_matching_loss,
        losses.denoiser_loss,
        losses.eps_loss,
    ):
        np.testing.assert_allclose(loss(model, k3, x, path=p), loss(model, k3, x, path=ref))
    score = groundtruth.score_field(mix, ref)
    sde, sde_ref = sdes.reverse_sde(p, score), sdes.reverse_sde(ref, score)
    for s in (0.0, 0.5, 1.0):
        for i in range(3):
            np.testing.assert_allclose(
                sde.drift(s, x[i], None), sde_ref.drift(s, x[i], None), rtol=1e-10, atol=1e-10
            )
            np.testing.assert_allclose(
                sde.diffusion(s, x[i], None), sde_ref.diffusion(s, x[i], None), rtol=1e-12
            )
        for kind in KINDS:
            f, f_ref = (
                paths.as_vector_field(model, p, kind),
                paths.as_vector_field(model, ref, kind),
            )
            np.testing.assert_allclose(f(s, x[0], None), f_ref(s, x[0], None), rtol=1e-10)
    # Samplers: the reverse SDE from noise, same key, same numbers.
    x0 = jr.normal(k1, (5, 2))
    kw = dict(key=k2, t0=p.t_min, t1=p.t_max, steps=8)
    np.testing.assert_allclose(
        solve.sample_sde(sde, x0, **kw).x, solve.sample_sde(sde_ref, x0, **kw).x, rtol=1e-9
    )


def test_alpha_vanishing_at_0_never_gives_nan(key):
    # alpha = t^2: alpha(0) = 0 and d_alpha / alpha = 2 / t is infinite at t = 0. Detected, so
    # every dividing method clips t and stays finite at t = 0 (scalar and batched).
    from diffeqgen import groundtruth, sdes
    from diffeqgen.data import GaussianMixture

    mix = GaussianMixture(jnp.zeros((1, 2)), jnp.eye(2)[None] * 0.5, jnp.ones(1))
    x1, x = jr.normal(key, (2, 4, 2))
    for p in (SquaredPath(), custom_path(lambda t: t**2, lambda t: 1.0 - t)):
        assert p.alpha_vanishes_at_0 and p.t_min == pytest.approx(1e-3)
        # Without the clipping the generic diffusion would divide 0 by 0:
        assert np.isnan(float(2.0 * p.sigma(0.0) ** 2 * p.d_alpha(0.0) / p.alpha(0.0)))
        score = groundtruth.score_field(mix, p)
        sde = sdes.reverse_sde(p, score)
        for t in (0.0, jnp.zeros(4), jnp.array([0.0, 1.0, 0.5, 0.0])):
            outs = [p.diffusion(t), p.snr(t), p.cond_velocity(x, x1, t), p.cond_score(x, x1, t)]
            outs += [convert(x, x1, t, p, source=a, target=b) for a in KINDS for b in KINDS]
            outs += [p.cond_velocity_on_path(x1, x, t), p.d_alpha(t), p.d_sigma(t)]
            for out in outs:
                assert np.all(np.isfinite(np.asarray(out)))
        for kind in paths.MODEL_KINDS:
            f = paths.as_vector_field(lambda t, y, args: y, p, kind)
            assert np.all(np.isfinite(np.asarray(f(0.0, x[0], None))))
        for out in (
            sde.drift(0.0, x[0], None),
            sde.diffusion(0.0, x[0], None),
            groundtruth.velocity(mix, p, 0.0, x),
            groundtruth.score(mix, p, 0.0, x),
        ):
            assert np.all(np.isfinite(np.asarray(out)))
    # An infinite derivative at an endpoint is taken inside [t_eps, 1 - t_eps], not returned.
    root = custom_path(jnp.sqrt, lambda t: 1.0 - t)
    np.testing.assert_allclose(root.d_alpha(0.0), 0.5 / math.sqrt(1e-3), rtol=1e-5)
    g = jax.grad(lambda s: root.d_alpha(s))(0.0)
    assert np.isfinite(float(g))


def test_incomplete_subclass_names_the_missing_method():
    class OnlyAlpha(GaussianPath):
        def __init__(self):
            self.t_eps = 1e-3

        def alpha(self, t):
            return t

    class Nothing(GaussianPath):
        def __init__(self):
            self.t_eps = 1e-3

    with pytest.raises(TypeError, match=r"OnlyAlpha must define sigma\(self, t\)"):
        OnlyAlpha()
    with pytest.raises(TypeError, match=r"alpha\(self, t\) and sigma\(self, t\)"):
        Nothing()


def test_custom_path_validation():
    with pytest.raises(ValueError, match="s = 1 - t"):  # classic time: t = 0 is data
        custom_path(lambda t: jnp.cos(0.5 * jnp.pi * t), lambda t: jnp.sin(0.5 * jnp.pi * t))
    with pytest.raises(ValueError, match="must increase with t"):
        custom_path(lambda t: 1.0 + 0.0 * t, lambda t: 1.0 + t)
    with pytest.raises(ValueError, match="d_alpha.*autodiff"):
        custom_path(lambda t: t, lambda t: 1.0 - t, d_alpha=lambda t: 2.0 * t)
    with pytest.raises(ValueError, match="finite"):
        custom_path(lambda t: jnp.log(t), lambda t: 1.0 - t)
    with pytest.raises(TypeError, match="sigma"):  # ours, or the jaxtyping hook in the tests
        custom_path(lambda t: t, 0.5)
    with pytest.raises(ValueError, match="t_eps"):
        custom_path(lambda t: t, lambda t: 1.0 - t, t_eps=0.0)
    with pytest.raises(ValueError, match="alpha_vanishes_at_0=False but alpha"):
        custom_path(lambda t: t, lambda t: 1.0 - t, alpha_vanishes_at_0=False)
    # Declaring a vanishing end that does not vanish only clips more; it is allowed.
    assert custom_path(lambda t: 1.0 + t, lambda t: 2.0 - t, alpha_vanishes_at_0=True).t_min > 0
    for name in paths.PATH_NAMES:
        assert get_path(name).check() is not None


def test_custom_path_with_traced_parameters(key, x64):
    # Inside jit the schedule's parameter is traced: endpoints cannot be detected and must be
    # declared; with them declared, the traced path gives the concrete path's numbers.
    x1, eps = jr.normal(key, (2, 3, 2))

    def make(c, **kw):
        return custom_path(lambda t: t**c, lambda t: 1.0 - t, **kw)

    def target(c, **kw):
        p = make(c, **kw)
        return p.cond_velocity(p.interpolate(x1, eps, 0.3), x1, 0.3)

    with pytest.raises(ValueError, match="declare it"):
        jax.jit(target)(1.5)
    flags = dict(alpha_vanishes_at_0=True, sigma_vanishes_at_1=True)
    traced = jax.jit(lambda c: target(c, **flags))(1.5)
    np.testing.assert_allclose(traced, target(1.5), rtol=1e-12)
    # A subclass declares its endpoints as class attributes and then also works traced.

    class Power(GaussianPath):
        c: jax.Array
        alpha_vanishes_at_0 = True
        sigma_vanishes_at_1 = True

        def __init__(self, c):
            self.c, self.t_eps = c, 1e-3

        def alpha(self, t):
            return t**self.c

        def sigma(self, t):
            return 1.0 - t

    def sub_target(c):
        p = Power(c)
        return p.cond_velocity(p.interpolate(x1, eps, 0.3), x1, 0.3), p.diffusion(0.0)

    sub, g0 = jax.jit(sub_target)(1.5)
    np.testing.assert_allclose(sub, target(1.5), rtol=1e-12)
    assert np.isfinite(float(g0))
    # A learnable schedule (an Equinox module as alpha) differentiates through its parameter:
    # d/dc of x_t = t^c x1 + (1 - t) eps is t^c log(t) x1.

    class PowerFn(eqx.Module):
        c: jax.Array

        def __call__(self, t):
            return t**self.c

    p = custom_path(PowerFn(jnp.asarray(1.5)), lambda t: 1.0 - t)
    grads = eqx.filter_grad(lambda q: jnp.sum(q.interpolate(x1, eps, 0.3)))(p)
    expected = 0.3**1.5 * math.log(0.3) * jnp.sum(x1)
    np.testing.assert_allclose(grads.alpha_fn.c, expected, rtol=1e-12)
