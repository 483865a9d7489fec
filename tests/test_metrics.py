import itertools
import math

import jax.random as jr
import numpy as np
import pytest
from scipy import stats
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from diffeqgen import data, metrics
from diffeqgen.metrics import MMDResult


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _mmd_loop(x, y, hs, unbiased):
    """Direct double-loop squared MMD (independent reference)."""

    def k(a, b):
        return sum(math.exp(-float(np.sum((a - b) ** 2)) / (2 * h * h)) for h in hs)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if not unbiased or i != j)
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if not unbiased or i != j)
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    nx, ny = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    return kxx / nx + kyy / ny - 2 * kxy / (n * m)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("bandwidth", [0.7, [0.3, 1.0, 2.5]])
def test_mmd_matches_double_loop(rng, estimator, bandwidth):
    x, y = rng.normal(size=(20, 3)), rng.normal(0.5, 1.2, size=(15, 3))
    res = metrics.mmd(x, y, bandwidth, estimator=estimator)
    hs = bandwidth if isinstance(bandwidth, list) else [bandwidth]
    ref = _mmd_loop(x, y, hs, estimator == "unbiased")
    assert isinstance(res, MMDResult)
    assert res.value == pytest.approx(ref, rel=1e-10, abs=1e-12)
    assert res.bandwidth == (tuple(bandwidth) if isinstance(bandwidth, list) else bandwidth)


def test_mmd_median_heuristic_and_float32(rng):
    x, y = rng.normal(size=(30, 2)), rng.normal(1.0, 1.0, size=(25, 2))
    z = np.concatenate([x, y])
    d = [np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
    res = metrics.mmd(x, y)
    assert res.bandwidth == pytest.approx(float(np.median(d)), rel=1e-12)
    assert res.value == pytest.approx(_mmd_loop(x, y, [res.bandwidth], True), rel=1e-10)
    # float32 JAX inputs are accepted and computed in float64
    res32 = metrics.mmd(np.float32(x), np.float32(y), res.bandwidth)
    assert res32.value == pytest.approx(res.value, rel=1e-4)
    # the biased estimator of a set against itself is exactly zero
    assert metrics.mmd(x, x, 1.0, estimator="biased").value == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("p", [1, 2])
def test_wasserstein_of_shift_is_shift_length(rng, p):
    x = rng.normal(size=(200, 2))
    shift = np.array([0.3, -0.4])  # length 0.5; the identity coupling is optimal for a translation
    assert metrics.wasserstein(x, x + shift, p=p) == pytest.approx(0.5, rel=1e-9)


def test_wasserstein_against_scipy_assignment_and_brute_force(rng):
    x, y = rng.normal(size=(60, 3)), rng.uniform(-1, 2, size=(60, 3))
    cost = cdist(x, y, "sqeuclidean")
    r, c = linear_sum_assignment(cost)
    assert metrics.wasserstein(x, y) == pytest.approx(math.sqrt(cost[r, c].mean()), rel=1e-10)
    # brute force over all 720 couplings of 6 points, p = 1 and p = 3
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    dist = cdist(a, b)
    for p in (1, 3):
        best = min(
            np.mean(dist[np.arange(6), list(s)] ** p) for s in itertools.permutations(range(6))
        )
        assert metrics.wasserstein(a, b, p=p) == pytest.approx(best ** (1 / p), rel=1e-10)


def test_wasserstein_1d_against_scipy(rng):
    u, v = rng.normal(size=(100, 1)), rng.exponential(size=(100, 1))
    ref = stats.wasserstein_distance(u[:, 0], v[:, 0])
    assert metrics.wasserstein(u, v, p=1) == pytest.approx(ref, rel=1e-10)


def test_sliced_wasserstein_exact_in_1d(rng, key):
    """In 1D every projection is +-1, so SW_p is the exact 1D W_p (unequal sizes too)."""
    u, v = rng.normal(size=(50, 1)), rng.normal(0.5, 2.0, size=(70, 1))
    ref = stats.wasserstein_distance(u[:, 0], v[:, 0])
    sw = metrics.sliced_wasserstein(u, v, key=key, num_projections=8, p=1)
    assert sw == pytest.approx(ref, rel=1e-10)
    w = rng.normal(size=(50, 1))
    sw2 = metrics.sliced_wasserstein(u, w, key=key, num_projections=4, p=2)
    assert sw2 == pytest.approx(metrics.wasserstein(u, w, p=2), rel=1e-10)


def test_sliced_wasserstein_shift_and_key(rng, key):
    """Shift s in 2D: SW_2^2 = E[(theta . s)^2] = |s|^2 / 2; 4096 directions, 5 std errors."""
    x = rng.normal(size=(100, 2))
    s = np.array([1.0, 0.0])
    sw = metrics.sliced_wasserstein(x, x + s, key=key, num_projections=4096)
    # Var(cos^2 theta) = 1/8 for theta uniform, so the standard error of the mean is 0.0055
    assert abs(sw**2 - 0.5) < 5 * math.sqrt(1 / 8 / 4096)
    y = rng.normal(size=(80, 2))
    assert metrics.sliced_wasserstein(x, y, key=key) == metrics.sliced_wasserstein(x, y, key=key)
    assert metrics.sliced_wasserstein(x, y, key=key) != metrics.sliced_wasserstein(
        x, y, key=jr.key(7)
    )


def test_energy_distance(rng):
    u, v = rng.normal(size=(40, 1)), rng.normal(0.3, 1.5, size=(55, 1))
    ref = stats.energy_distance(u[:, 0], v[:, 0]) ** 2
    assert metrics.energy_distance(u, v, estimator="biased") == pytest.approx(ref, rel=1e-9)
    x, y = rng.normal(size=(12, 2)), rng.normal(size=(9, 2))
    dxy = cdist(x, y).mean()
    dxx = cdist(x, x).sum() / (12 * 11)
    dyy = cdist(y, y).sum() / (9 * 8)
    assert metrics.energy_distance(x, y) == pytest.approx(2 * dxy - dxx - dyy, rel=1e-10)


def test_kde_log_likelihood_against_direct_formula(rng):
    real, gen = rng.normal(size=(30, 2)), rng.normal(0.2, 1.1, size=(25, 2))
    out = metrics.kde_log_likelihood(real, gen)
    h = math.sqrt(np.mean(np.var(real, axis=0, ddof=1))) * 30 ** (-1 / 6)  # Scott's rule
    assert out["bandwidth"] == pytest.approx(h, rel=1e-12)

    def kde_ll(points, centres):
        cov = h * h * np.eye(2)
        return np.array(
            [
                math.log(np.mean([stats.multivariate_normal(c, cov).pdf(p) for c in centres]))
                for p in points
            ]
        )

    m1, m3 = kde_ll(real, gen), kde_ll(gen, real)
    assert out["M1"] == pytest.approx(m1.sum(), rel=1e-10)
    assert out["M2"] == pytest.approx(m1.mean(), rel=1e-10)
    assert out["M3"] == pytest.approx(m3.sum(), rel=1e-10)
    assert out["M4"] == pytest.approx(m3.mean(), rel=1e-10)
    assert metrics.kde_log_likelihood(real, gen, bandwidth=0.5)["bandwidth"] == 0.5


def test_floor(key):
    sampler = data.sampler("moons")
    value = metrics.floor(metrics.mmd, sampler, 64, key=key, bandwidth=0.5)
    ka, kb, _ = jr.split(key, 3)
    ref = metrics.mmd(sampler(ka, 64), sampler(kb, 64), 0.5)
    assert value == ref
    sw = metrics.floor(metrics.sliced_wasserstein, sampler, 64, key=key, num_projections=16)
    assert 0 < sw < 1  # the key for the projections is supplied by floor
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        metrics.floor(metrics.mmd, sampler, 0, key=key)


# ---------------------------------------------------------------- bad input


def test_point_set_validation_messages(rng):
    good = rng.normal(size=(5, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\).*\(5,\)"):
        metrics._as_points("x", np.zeros(5))
    with pytest.raises(ValueError, match=r"y must have shape \(n, d\)"):
        metrics._as_points("y", np.zeros((0, 2)))
    with pytest.raises(TypeError, match="floating-point.*int64"):
        metrics._as_points("x", np.zeros((5, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="array of shape"):
        metrics._as_points("x", [[0.0, 1.0]])
    with pytest.raises(ValueError, match="y must be finite, got 1 non-finite"):
        metrics._as_pair(good, np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="same dimension d"):
        metrics._as_pair(good, rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="same number of points, got 5 and 4"):
        metrics._as_pair(good, good[:4], same_size=True)


def test_metric_argument_validation(rng, key):
    x, y = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    bad_inputs = [np.zeros(5), np.zeros((5, 3)), np.zeros((5, 2), dtype=np.int32)]
    fns = [
        metrics.mmd,
        metrics.wasserstein,
        metrics.energy_distance,
        metrics.kde_log_likelihood,
        lambda a, b: metrics.sliced_wasserstein(a, b, key=key),
    ]
    for fn in fns:
        for bad in bad_inputs:
            with pytest.raises((ValueError, TypeError)):
                fn(x, bad)
        with pytest.raises(ValueError, match="finite"):
            fn(x, np.full((5, 2), np.inf))
    with pytest.raises((ValueError, TypeError)):
        metrics.wasserstein(x, y[:4])
    with pytest.raises(ValueError, match="p must be >= 1"):
        metrics.wasserstein(x, y, p=0.5)
    with pytest.raises(ValueError, match="p must be a finite number > 0, got -1"):
        metrics.sliced_wasserstein(x, y, key=key, p=-1)
    with pytest.raises(ValueError, match="num_projections must be an integer >= 1, got 0"):
        metrics.sliced_wasserstein(x, y, key=key, num_projections=0)
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0, got -0.5"):
        metrics.mmd(x, y, -0.5)
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
        metrics.mmd(x, y, [1.0, 0.0])
    with pytest.raises(ValueError, match="bandwidth list must not be empty"):
        metrics.mmd(x, y, [])
    with pytest.raises(ValueError, match="unknown estimator 'exact'; expected one of: unbiased"):
        metrics.mmd(x, y, estimator="exact")
    with pytest.raises(ValueError, match="at least 2 points per set"):
        metrics.mmd(x[:1], y)
    with pytest.raises(ValueError, match="pass a bandwidth"):
        metrics.mmd(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
        metrics.kde_log_likelihood(x, y, bandwidth=0.0)


def test_floor_stats_matches_individual_floors(key):
    sampler = data.sampler("gaussian")
    stats = metrics.floor_stats(metrics.mmd, sampler, 64, key=key, repeats=3, bandwidth=0.5)
    singles = [
        metrics.floor(metrics.mmd, sampler, 64, key=jr.fold_in(key, r), bandwidth=0.5).value
        for r in range(3)
    ]
    np.testing.assert_allclose(stats.values, singles)
    assert stats.mean == pytest.approx(np.mean(singles))
    assert stats.std == pytest.approx(np.std(singles, ddof=1))
    with pytest.raises(ValueError, match="repeats"):
        metrics.floor_stats(metrics.mmd, sampler, 64, key=key, repeats=1)


def test_mode_tv_exact():
    """Points at the means: occupancy = the counts; TV = 0.5 sum |share - weight| exactly."""
    from types import SimpleNamespace

    mix = SimpleNamespace(
        means=np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]]),
        covariances=np.tile(np.eye(2) * 0.1, (3, 1, 1)),
        weights=np.array([0.5, 0.25, 0.25]),
    )
    balanced = np.repeat(mix.means, [2, 1, 1], axis=0)
    assert metrics.mode_tv(balanced, mix) == 0.0
    one_mode = np.repeat(mix.means[1:2], 10, axis=0)
    assert metrics.mode_tv(one_mode, mix) == pytest.approx(0.75)
    # On the true 8gaussians mixture a large sample fills its modes in proportion.
    gm = data.mixture("8gaussians")
    x = gm.sample(jr.key(0), 8000)
    assert metrics.mode_tv(x, gm) < 0.03
    with pytest.raises(ValueError, match="columns"):
        metrics.mode_tv(np.zeros((4, 3)), mix)
