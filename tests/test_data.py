import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import stats

from diffeqgen import data
from diffeqgen.data import GaussianMixture, Polygon, shapes
from diffeqgen.data._polygon import signed_area, triangulate

NAMES = [
    "gaussian",
    "8gaussians",
    "pinwheel",
    "moons",
    "checkerboard",
    "2spirals",
    "rings",
    "cat",
    "dog",
    "mixture",
]
EXACT = ["gaussian", "8gaussians", "mixture", "checkerboard", "cat", "dog"]
MIXTURES = ["gaussian", "8gaussians", "mixture"]
ALPHA = 1e-3  # level of every statistical test below (fixed keys, so each test is deterministic)


def test_names():
    assert data.names() == NAMES
    # exact=True lists exactly the sets whose log_prob and entropy have a closed form
    assert data.names(exact=True) == [n for n in NAMES if n in EXACT]
    for name in NAMES:
        if name not in EXACT:
            with pytest.raises(ValueError, match="no closed-form density"):
                data.log_prob(name, jnp.zeros((1, 2)))
            with pytest.raises(ValueError, match="no known density"):
                data.entropy(name)


@pytest.mark.parametrize("name", NAMES)
def test_sample_shape_dtype_determinism_scale(name, key):
    x = data.sample(name, key, 256)
    assert x.shape == (256, 2) and x.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(x)))
    np.testing.assert_array_equal(x, data.sample(name, key, 256))
    assert not np.array_equal(x, data.sample(name, jr.key(1), 256))
    # common scale: nearly all points within [-4.5, 4.5]^2 (Gaussian tails may poke out)
    assert float(jnp.mean(jnp.all(jnp.abs(x) < 4.5, axis=1))) > 0.98
    assert float(jnp.max(jnp.abs(x))) > 1.5  # and not squeezed into a small box


@pytest.mark.parametrize("name", ["pinwheel", "cat", "mixture"])
def test_sampler_jits_with_static_n(name, key):
    f = jax.jit(data.sampler(name), static_argnums=1)
    np.testing.assert_allclose(f(key, 256), data.sample(name, key, 256), atol=1e-5)


def _np_mixture_moments(m):
    mu, cov, w = (np.asarray(a, np.float64) for a in (m.means, m.covariances, m.weights))
    mean = (w[:, None] * mu).sum(0)
    second = sum(w[k] * (cov[k] + np.outer(mu[k], mu[k])) for k in range(len(w)))
    return mean, second - np.outer(mean, mean)


@pytest.mark.parametrize("name", MIXTURES)
def test_mixture_moments_formula_and_samples(name, key):
    m = data.mixture(name)
    mean, cov = _np_mixture_moments(m)
    np.testing.assert_allclose(m.mean(), mean, atol=1e-6)
    np.testing.assert_allclose(m.covariance(), cov, atol=1e-5)
    # sample moments: each coordinate mean within 5 standard errors (n = 20000)
    n = 20000
    x = np.asarray(data.sample(name, key, n), np.float64)
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se)
    # sample covariance within 5% of the largest variance (its standard error is ~1% here)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.05 * np.max(np.diag(cov)))


def test_gaussian_mixture_general_3d(key, x64):
    k1, k2, k3 = jr.split(key, 3)
    a = jr.normal(k1, (3, 3, 3))
    m = GaussianMixture(
        jr.normal(k2, (3, 3)), a @ a.transpose(0, 2, 1) + 0.5 * jnp.eye(3), [0.2, 0.3, 0.5]
    )
    assert m.dim == 3 and m.num_components == 3
    x = jr.normal(k3, (7, 3))
    # log_prob against scipy's multivariate normal
    ref = np.log(
        sum(
            float(w) * stats.multivariate_normal(np.asarray(mu), np.asarray(c)).pdf(np.asarray(x))
            for w, mu, c in zip(m.weights, m.means, m.covariances, strict=True)
        )
    )
    np.testing.assert_allclose(m.log_prob(x), ref, rtol=1e-10)
    # closed-form score against autodiff of log_prob
    auto = jax.vmap(jax.grad(m.log_prob))(x)
    np.testing.assert_allclose(m.score(x), auto, rtol=1e-9, atol=1e-12)
    # batch shapes (..., d)
    assert m.log_prob(x.reshape(7, 1, 3)).shape == (7, 1)
    assert m.score(x[0]).shape == (3,)


@pytest.mark.parametrize("name", MIXTURES)
def test_builtin_score_matches_grad(name, key):
    m = data.mixture(name)
    x = 2.0 * jr.normal(key, (64, 2))
    auto = jax.vmap(jax.grad(m.log_prob))(x)
    np.testing.assert_allclose(m.score(x), auto, rtol=1e-4, atol=1e-4)


def _grid(lim, num):
    h = 2 * lim / num
    g = -lim + h * (np.arange(num) + 0.5)  # cell midpoints
    xx, yy = np.meshgrid(g, g, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], -1).astype(np.float32), h


def _perimeter(poly):
    v = np.asarray(poly.vertices, np.float64)
    return float(np.sum(np.linalg.norm(v - np.roll(v, -1, axis=0), axis=1)))


@pytest.mark.parametrize("name", EXACT)
def test_log_prob_integrates_to_one(name):
    """Midpoint rule on a uniform grid.

    Mixtures: grid over [-9, 9]^2 with spacing 0.0225 (< sigma_min / 10); the rule is
    exponentially accurate, so the tolerance 1e-4 is float32 summation error. Checkerboard:
    cell edges align with the squares, so the rule is exact (tolerance 1e-5). Cat/dog: only grid
    cells cut by the outline err, so |error| <= 2 * perimeter * h / area; we assert that bound.
    """
    lim = 9.0 if name in MIXTURES else 4.0
    pts, h = _grid(lim, 800)
    mass = float(jnp.sum(jnp.exp(data.log_prob(name, pts)))) * h * h
    if name in MIXTURES:
        tol = 1e-4
    elif name == "checkerboard":
        tol = 1e-5
    else:
        poly = shapes.CAT if name == "cat" else shapes.DOG
        tol = 2 * _perimeter(poly) * h / poly.area
    assert abs(mass - 1.0) < tol, (mass, tol)


def _cell_probs(name, edges, sub=24):
    """Exact-density probability of each histogram cell by a sub-grid midpoint rule."""
    lo, hi = edges[0], edges[-1]
    num = (len(edges) - 1) * sub
    pts, h = _grid(0.5 * (hi - lo), num)
    dens = np.exp(np.asarray(data.log_prob(name, pts), np.float64)) * h * h
    cells = len(edges) - 1
    return dens.reshape(cells, sub, cells, sub).sum(axis=(1, 3)).ravel()


@pytest.mark.parametrize("name", EXACT)
def test_log_prob_matches_histogram_chi_square(name, key):
    """Pearson chi-square goodness of fit of 20000 samples to the exact density at level 1e-3.

    Cells: an 8 x 8 grid on [-4, 4]^2 plus one 'outside' cell; cells with expected count < 5
    are pooled into one.
    """
    n = 20000
    edges = np.linspace(-4, 4, 9)
    x = np.asarray(data.sample(name, key, n))
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
    probs = _cell_probs(name, edges)
    observed = np.append(counts.ravel(), n - counts.sum())
    expected = n * np.append(probs, max(0.0, 1.0 - probs.sum()))
    small = expected < 5
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    assert observed[~keep].sum() == 0  # no sample lands where the density is zero
    chi2 = float(np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep]))
    dof = int(keep.sum()) - 1
    p_value = stats.chi2.sf(chi2, dof)
    assert p_value > ALPHA, (chi2, dof, p_value)


@pytest.mark.parametrize("name", ["checkerboard", "cat", "dog"])
def test_uniform_sets_samples_inside_support(name, key):
    lp = data.log_prob(name, data.sample(name, key, 4096))
    assert bool(jnp.all(jnp.isfinite(lp)))
    area = {"checkerboard": 32.0, "cat": shapes.CAT.area, "dog": shapes.DOG.area}[name]
    np.testing.assert_allclose(lp, -math.log(area), rtol=1e-6)
    assert data.entropy(name) == pytest.approx(math.log(area), rel=1e-12)


def test_log_prob_outside_is_minus_inf():
    far = jnp.array([[10.0, 10.0], [-4.5, 0.0]])
    for name in ["checkerboard", "cat", "dog"]:
        assert bool(jnp.all(data.log_prob(name, far) == -jnp.inf))
    # checkerboard: (1, 1) is in square (0, 0) (even), (3, 1) in square (1, 0) (odd)
    cb = data.log_prob("checkerboard", jnp.array([[1.0, 1.0], [3.0, 1.0], [-1.0, -1.0]]))
    np.testing.assert_allclose(cb, [-math.log(32), -np.inf, -math.log(32)])


def test_entropy_exact_and_quadrature(key):
    assert data.entropy("gaussian") == pytest.approx(math.log(2 * math.pi * math.e), rel=1e-15)
    # the quadrature reproduces the exact Gaussian entropy
    quad = data.mixture_entropy(data.mixture("gaussian"))
    assert quad == pytest.approx(math.log(2 * math.pi * math.e), abs=1e-10)
    # 8 well-separated equal Gaussians: H ~ log 8 + log(2 pi e sigma^2) (overlap lowers it a bit)
    sep = math.log(8) + math.log(2 * math.pi * math.e * 0.125)
    assert sep - 0.02 < data.entropy("8gaussians") < sep


@pytest.mark.parametrize("name", ["8gaussians", "mixture"])
def test_entropy_matches_monte_carlo(name, key):
    """-mean log p over 20000 samples within 5 standard errors of the quadrature value."""
    lp = np.asarray(data.log_prob(name, data.sample(name, key, 20000)), np.float64)
    se = lp.std() / math.sqrt(len(lp))
    assert abs(-lp.mean() - data.entropy(name)) < 5 * se


# -------------------------------------------- sets without a closed-form density: moments
# Exact expectations E f(X) from each generator's definition, by tensor-product quadrature
# over its latent variables (Gauss-Hermite for Gaussian noise, Gauss-Legendre for uniforms,
# exact sums over arms / moons / signs / rings, a uniform grid for a uniform angle): each rule
# is a weighted point set (points (M, 2), weights (M,)) with sum w f(points) = E f(X) to ~1e-5.


def _gauss_rule(num):
    x, w = np.polynomial.hermite_e.hermegauss(num)
    return x, w / w.sum()


def _uniform_rule(lo, hi, num):
    x, w = np.polynomial.legendre.leggauss(num)
    return lo + (hi - lo) * (x + 1) / 2, w / 2


def _discrete_rule(values):
    values = np.asarray(values, np.float64)
    return values, np.full(len(values), 1 / len(values))


def _tensor(*rules):
    nodes = np.meshgrid(*[r[0] for r in rules], indexing="ij")
    weights = np.meshgrid(*[r[1] for r in rules], indexing="ij")
    return [a.ravel() for a in nodes], np.prod([w.ravel() for w in weights], axis=0)


def _pinwheel_rule():
    # arm uniform in 0..4; radial 1 + 0.3 a, tangential 0.1 b; angle arm 2 pi / 5 + 0.25 e^r; x2
    (arm, a, b), w = _tensor(_discrete_rule(range(5)), _gauss_rule(80), _gauss_rule(20))
    r, u = 1.0 + 0.3 * a, 0.1 * b
    angle = arm * 2 * np.pi / 5 + 0.25 * np.exp(r)
    x = r * np.cos(angle) - u * np.sin(angle)
    y = r * np.sin(angle) + u * np.cos(angle)
    return 2 * np.stack([x, y], -1), w


def _moons_rule():
    # t ~ U(0, pi); upper (cos t, sin t) or lower (1 - cos t, 0.5 - sin t); noise 0.1; centred, x2
    (t, upper, n1, n2), w = _tensor(
        _uniform_rule(0, np.pi, 64), _discrete_rule([1, 0]), _gauss_rule(6), _gauss_rule(6)
    )
    x = np.where(upper > 0, np.cos(t), 1 - np.cos(t)) + 0.1 * n1
    y = np.where(upper > 0, np.sin(t), 0.5 - np.sin(t)) + 0.1 * n2
    return 2 * (np.stack([x, y], -1) - [0.5, 0.25]), w


def _spirals_rule():
    # t = 3 pi sqrt(U): density 2 t / (3 pi)^2 on [0, 3 pi]; jitter U(0, 0.5)^2; sign; noise 0.1
    t, wt = _uniform_rule(0, 3 * np.pi, 256)
    wt = wt * 3 * np.pi * 2 * t / (3 * np.pi) ** 2
    (t, j1, j2, sign, n1, n2), w = _tensor(
        (t, wt), _uniform_rule(0, 0.5, 4), _uniform_rule(0, 0.5, 4), _discrete_rule([1, -1]),
        _gauss_rule(5), _gauss_rule(5),
    )  # fmt: skip
    x = sign * (-np.cos(t) * t + j1) / 3 + 0.1 * n1
    y = sign * (np.sin(t) * t + j2) / 3 + 0.1 * n2
    return np.stack([x, y], -1), w


def _rings_rule():
    # radius 0.75 k (k = 1..4, equal mass), angle uniform (64-point grid, exact for these
    # trigonometric statistics), Gaussian noise 0.08
    (radius, theta, n1, n2), w = _tensor(
        _discrete_rule(0.75 * np.arange(1, 5)), _discrete_rule(2 * np.pi * np.arange(64) / 64),
        _gauss_rule(8), _gauss_rule(8),
    )  # fmt: skip
    x = radius * np.cos(theta) + 0.08 * n1
    y = radius * np.sin(theta) + 0.08 * n2
    return np.stack([x, y], -1), w


def _second_moments(p):
    x, y = p[:, 0], p[:, 1]
    return [x, y, x * x, y * y, x * y]


def _pinwheel_stats(p):
    # |x|^4 (radial spread), first and fifth angular harmonics (arms, their twist)
    phi, r2 = np.arctan2(p[:, 1], p[:, 0]), np.sum(p**2, axis=1)
    harmonics = [np.cos(phi), np.sin(phi), np.cos(5 * phi), np.sin(5 * phi)]
    return _second_moments(p) + [r2**2] + harmonics


def _moons_stats(p):
    x, y = p[:, 0], p[:, 1]
    return _second_moments(p) + [x**4, y**4, x * x * y * y]


def _spirals_stats(p):
    # the winding: on either arm the angle is about const - 3 |x|, so 2 phi + 6 |x| is nearly
    # constant (mod 2 pi); its harmonics measure the pitch and the phase of the spirals
    r = np.sqrt(np.sum(p**2, axis=1))
    phi = np.arctan2(p[:, 1], p[:, 0])
    return _second_moments(p) + [r**4, np.cos(2 * phi + 6 * r), np.sin(2 * phi + 6 * r)]


def _rings_stats(p):
    # occupancy of each ring (nearest radius; misassignment ~1e-5), E[|x|^2 on ring k] =
    # (R_k^2 + 2 * 0.08^2) / 4, the squared radial deviation from the ring (about 0.08^2: the
    # width of the rings), and angular uniformity
    r = np.sqrt(np.sum(p**2, axis=1))
    phi = np.arctan2(p[:, 1], p[:, 0])
    ring = np.clip(np.rint(r / 0.75), 1, 4)
    on = [(ring == k).astype(np.float64) for k in range(1, 5)]
    angular = [np.cos(phi), np.sin(phi), np.cos(2 * phi), np.sin(2 * phi)]
    width = [(r - 0.75 * ring) ** 2]
    return _second_moments(p) + on + [o * r * r for o in on] + width + angular


SHAPE_MOMENTS = {
    "pinwheel": (_pinwheel_rule, _pinwheel_stats),
    "moons": (_moons_rule, _moons_stats),
    "2spirals": (_spirals_rule, _spirals_stats),
    "rings": (_rings_rule, _rings_stats),
}


@functools.cache
def _exact_expectations(name):
    rule, statistics = SHAPE_MOMENTS[name]
    points, weights = rule()
    return np.array([np.sum(weights * f) for f in statistics(points)])


def _moment_z(x, name):
    """z-score of the sample mean of each statistic against its exact expectation."""
    expected = _exact_expectations(name)
    values = np.stack(SHAPE_MOMENTS[name][1](np.asarray(x, np.float64)), axis=1)
    return (values.mean(0) - expected) / (values.std(0) / math.sqrt(len(values)))


@pytest.mark.parametrize("name", list(SHAPE_MOMENTS))
def test_shape_sets_match_exact_moments(name, key):
    """z-tests (|z| < 4.5 each) of 8-18 statistics of 20000 samples against exact expectations.

    Measured max |z| <= 2.4 over three seeds. Each set's mean is 0 by symmetry; a shift by
    0.15 along either axis gives |z| >= 13, a 5% wider spread |z| >= 11 (checked below).
    Some exact values, by hand from the definitions: pinwheel E x^2 = E y^2 = 2 (1 + 0.3^2 +
    0.1^2) = 2.2; moons Var x = 4 (0.75 + 0.01) = 3.04, Var y = 4 (5/8 - 1/pi - 1/16 + 0.01),
    Cov = 4 (1/4 - 1/pi - 1/8); rings E |x|^2 = mean R_k^2 + 2 * 0.08^2.
    """
    points, weights = SHAPE_MOMENTS[name][0]()
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    expected = dict(zip("xyXYC", _exact_expectations(name)[:5], strict=True))
    hand = {
        "pinwheel": (2.2, 2.2, 0.0),
        "moons": (3.04, 4 * (5 / 8 - 1 / np.pi - 1 / 16 + 0.01), 4 * (1 / 4 - 1 / np.pi - 1 / 8)),
        "rings": (*[0.5 * np.mean((0.75 * np.arange(1, 5)) ** 2) + 0.08**2] * 2, 0.0),
    }
    if name in hand:
        got = (expected["X"], expected["Y"], expected["C"])
        np.testing.assert_allclose(got, hand[name], atol=1e-9)
    np.testing.assert_allclose([expected["x"], expected["y"]], 0.0, atol=1e-9)
    x = np.asarray(data.sample(name, key, 20000), np.float64)
    z = _moment_z(x, name)
    assert np.all(np.abs(z) < 4.5), z
    for wrong in (x + [0.15, 0.0], x + [0.0, 0.15], 1.05 * x):
        assert np.max(np.abs(_moment_z(wrong, name))) > 8


def test_train_test_split():
    train, test = data.train_test_split("moons")
    assert train.shape == (2000, 2) and test.shape == (500, 2)
    train2, test2 = data.train_test_split("moons", seed=0)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(test, test2)
    other, _ = data.train_test_split("moons", 2000, 500, seed=1)
    assert not np.array_equal(train, other)
    assert not np.array_equal(train[:500], test)


def test_polygon_triangulation():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    assert len(triangulate(square)) == 2
    ell = np.array([[0, 0], [2, 0], [2, 1], [1, 1], [1, 2], [0, 2]], float)  # area 3, non-convex
    poly = Polygon(ell[::-1])  # clockwise input is reoriented
    assert poly.area == pytest.approx(3.0)
    assert signed_area(np.asarray(poly.vertices)) > 0
    inside = poly.contains(jnp.array([[0.5, 0.5], [1.5, 1.5], [1.5, 0.5], [0.5, 1.9]]))
    np.testing.assert_array_equal(inside, [True, False, True, True])
    for p in (shapes.CAT, shapes.DOG):
        assert p.area == pytest.approx(abs(signed_area(np.asarray(p.vertices, np.float64))))
    with pytest.raises(ValueError, match="simple"):
        Polygon([[0, 0], [1, 1], [1, 0], [0, 1]])  # bow tie
    with pytest.raises(ValueError, match="vertices"):
        Polygon([[0, 0], [1, 1]])


# ---------------------------------------------------------------- bad input


def test_unknown_name_lists_known(key):
    for call in (
        lambda: data.sample("kitten", key, 10),
        lambda: data.log_prob("kitten", jnp.zeros((3, 2))),
        lambda: data.entropy("kitten"),
        lambda: data.sampler("kitten"),
        lambda: data.train_test_split("kitten"),
    ):
        with pytest.raises(ValueError, match="'kitten'.*gaussian, 8gaussians, pinwheel"):
            call()
    with pytest.raises(ValueError, match="expected one of: gaussian, 8gaussians, mixture"):
        data.mixture("cat")


@pytest.mark.parametrize("n", [0, -3])
def test_nonpositive_n(n, key):
    with pytest.raises(ValueError, match=f"n must be an integer >= 1, got {n}"):
        data.sample("moons", key, n)
    with pytest.raises(ValueError, match="n_train"):
        data.train_test_split("moons", n_train=n)
    with pytest.raises(ValueError, match="n must be"):
        data.mixture("mixture").sample(key, n)
    with pytest.raises(ValueError, match="n must be"):
        shapes.CAT.sample(key, n)


def test_non_integer_n_and_seed(key):
    with pytest.raises(TypeError):
        data.sample("moons", key, 2.0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        data.train_test_split("moons", seed=-1)


def test_log_prob_bad_input():
    with pytest.raises(ValueError, match="'moons' has no closed-form density.*checkerboard"):
        data.log_prob("moons", jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="no known density"):
        data.entropy("rings")
    with pytest.raises((ValueError, TypeError), match="x"):
        data.log_prob("cat", jnp.zeros((3, 3)))
    with pytest.raises((ValueError, TypeError)):
        data.log_prob("cat", jnp.zeros((3, 2), dtype=jnp.int32))
    with pytest.raises(ValueError, match="x must be finite, got 1 non-finite"):
        data.log_prob("gaussian", jnp.array([[0.0, jnp.nan]]))
    with pytest.raises((ValueError, TypeError)):
        data.mixture("mixture").log_prob(jnp.zeros((4, 3)))


def test_gaussian_mixture_validation():
    mu, cov, w = np.zeros((2, 2)), np.stack([np.eye(2)] * 2), np.array([0.5, 0.5])
    GaussianMixture(mu, cov, w)  # valid
    with pytest.raises(ValueError, match=r"means must have shape \(k, d\)"):
        GaussianMixture(np.zeros(2), cov, w)
    with pytest.raises(ValueError, match="covariances must have shape"):
        GaussianMixture(mu, np.stack([np.eye(3)] * 2), w)
    with pytest.raises(ValueError, match="weights must have shape"):
        GaussianMixture(mu, cov, np.ones(3) / 3)
    with pytest.raises(ValueError, match="weights must be positive and sum to 1"):
        GaussianMixture(mu, cov, np.array([0.7, 0.7]))
    with pytest.raises(ValueError, match="weights must be positive"):
        GaussianMixture(mu, cov, np.array([1.5, -0.5]))
    with pytest.raises(ValueError, match=r"positive definite; components \[1\]"):
        GaussianMixture(mu, np.stack([np.eye(2), np.diag([1.0, -1.0])]), w)
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture(mu, np.stack([np.eye(2), np.array([[1.0, 0.5], [0.0, 1.0]])]), w)
    with pytest.raises(ValueError, match="means must be finite"):
        GaussianMixture(np.array([[0.0, np.inf], [0.0, 0.0]]), cov, w)


def test_gaussian_mixture_under_jit_and_vmap(key):
    """Construction with traced arrays skips the value checks and still works."""

    @jax.jit
    def shifted_log_prob(shift, x):
        m = data.mixture("mixture")
        return GaussianMixture(m.means + shift, m.covariances, m.weights).log_prob(x)

    x = jr.normal(key, (5, 2))
    ref = data.mixture("mixture").log_prob(x - 1.0)
    np.testing.assert_allclose(shifted_log_prob(1.0, x), ref, rtol=1e-5)


@pytest.mark.slow
def test_datasets_experiment_quick(tmp_path):
    from helpers import run_main

    script = Path(__file__).resolve().parents[1] / "experiments" / "datasets.py"
    run_main(script, "--quick", "--out", tmp_path)  # in-process: no JAX start-up
    for f in ("datasets.png", "datasets.json", "datasets.md"):
        assert (tmp_path / f).stat().st_size > 0


def test_plotting_helpers(tmp_path, key):
    import functools

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffeqgen import plotting

    sets = {name: data.sample(name, key, 256) for name in ["cat", "dog", "moons"]}
    fig = plotting.scatter_grid(sets, ncols=2, kind="hist", bins=20)
    assert len(fig.axes) == 4
    fig.savefig(tmp_path / "grid.png", dpi=30)
    fig2, ax = plt.subplots()
    plotting.density_heatmap(ax, functools.partial(data.log_prob, "cat"), n_grid=32, title="cat")
    plotting.scatter(ax, sets["cat"], s=0.5)
    fig2.savefig(tmp_path / "heat.png", dpi=30)
    plt.close("all")


def test_a_mixture_first_used_inside_jit_holds_no_tracer():
    """The module-level mixtures are built on first use (importing starts no JAX backend); a
    first use inside a trace must still cache concrete arrays (fresh process: empty cache)."""
    import subprocess
    import sys

    code = (
        "import jax, jax.random as jr, diffeqgen as dg\n"
        "jax.eval_shape(lambda k: dg.data.sample('8gaussians', k, 8), jr.key(0))\n"
        "jax.jit(lambda k: dg.data.sample('mixture', k, 4))(jr.key(0))\n"
        "print(dg.data.sample('8gaussians', jr.key(1), 3).shape, dg.data.mixture('mixture').dim)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["(3,", "2)", "2"]
