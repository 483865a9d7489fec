"""Training objectives: exact minimisers give zero (one-point data) or the known irreducible value
(Gaussian data), perturbations cost exactly |delta|^2 more, gradients, validation, OT coupling."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from diffeqgen import losses, nn, paths
from diffeqgen.couplings import ot_pairing, sinkhorn_log_plan, squared_cost

M = np.array([1.5, -0.5])  # data mean
S = 0.7  # data standard deviation (per dimension), data N(M, S^2 I)
D = 2
PATHS = ["linear", "cosine", "vp", "ve"]


# -- exact fields for data N(m, s^2 I) on a Gaussian path (s = 0: a single point) ------------
def _coef(path, t):
    return path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t)


def exact_model(path, kind, m=M, s=S):
    """E[target | x_t] for data N(m, s^2 I): closed form (p_t = N(alpha m, v I))."""
    m = jnp.asarray(m)

    def f(t, x, args=None):
        a, sg, da, ds = _coef(path, t)
        v = a**2 * s**2 + sg**2
        r = x - a * m
        if kind == "velocity":
            return da * m + (a * da * s**2 + sg * ds) / v * r
        if kind == "score":
            return -r / v
        if kind == "denoiser":
            return m + a * s**2 / v * r
        if kind == "eps":
            return sg / v * r
        raise ValueError(kind)

    return f


def irreducible(path, kind, s=S, d=D):
    """E_t Var(target | x_t) * d with t ~ U[t_min, t_max], by the trapezoid rule."""
    t = np.linspace(path.t_min, path.t_max, 200001)
    a, sg, da, ds = (np.asarray(c, dtype=np.float64) for c in _coef(path, t))
    v = a**2 * s**2 + sg**2
    var = {
        "velocity": (da**2 * s**2 + ds**2) - (a * da * s**2 + sg * ds) ** 2 / v,
        "score": 1.0 - sg**2 / v,  # sigma^2-weighted: Var(eps | x_t)
        "denoiser": s**2 * sg**2 / v,
        "eps": a**2 * s**2 / v,
    }[kind]
    return d * np.trapezoid(var, t) / (t[-1] - t[0])


LOSS_OF_KIND = {
    "velocity": losses.flow_matching_loss,
    "score": losses.score_matching_loss,
    "denoiser": losses.denoiser_loss,
    "eps": losses.eps_loss,
}


def _mc(loss, key, n=20000, batches=20, m=M, s=S):
    """Loss on independent batches of N(m, s^2 I) (one jitted vmap): (mean, standard error)."""

    def one(k):
        dk, lk = jr.split(k)
        x = jnp.asarray(m) + s * jr.normal(dk, (n, D), jnp.float64)
        return loss(lk, x)

    vals = np.asarray(jax.jit(jax.vmap(one))(jr.split(key, batches)))
    return vals.mean(), vals.std(ddof=1) / np.sqrt(batches)


@pytest.mark.parametrize("path_name", PATHS)
@pytest.mark.parametrize("kind", list(LOSS_OF_KIND))
def test_single_point_exact_field_gives_zero(path_name, kind, key, x64):
    path = paths.get_path(path_name)
    model = exact_model(path, kind, s=0.0)
    x1 = jnp.tile(jnp.asarray(M), (512, 1))
    loss = LOSS_OF_KIND[kind](model, key, x1, path=path)
    assert float(loss) < 1e-18
    if kind == "score":  # unweighted: exact too, and the target is the conditional score
        assert (
            float(losses.score_matching_loss(model, key, x1, path=path, weighting="none")) < 1e-12
        )


@pytest.mark.slow
@pytest.mark.parametrize("path_name", ["linear", "cosine", "vp"])
@pytest.mark.parametrize("kind", list(LOSS_OF_KIND))
def test_gaussian_data_exact_field_reaches_irreducible_loss(path_name, kind, key, x64):
    # z-test, two-sided at 4 standard errors (level ~6e-5) over 20 batches of 20000 points.
    path = paths.get_path(path_name)
    model = exact_model(path, kind)
    loss = jax.jit(functools.partial(LOSS_OF_KIND[kind], model, path=path))
    mean, se = _mc(loss, key)
    expected = irreducible(path, kind)
    assert abs(mean - expected) < 4 * se + 1e-9, (mean, expected, se)


@pytest.mark.parametrize("kind", ["velocity", "denoiser", "eps"])
def test_perturbation_costs_its_square(kind, key, x64):
    # With common random numbers, loss(f + delta) - loss(f) = |delta|^2 + 2 E<delta, f - target>,
    # and the cross term has mean zero because f = E[target | x_t]; check it to 5 standard errors.
    path = paths.get_path("cosine")
    f = exact_model(path, kind)
    delta = jnp.array([0.3, -0.2])
    fn = LOSS_OF_KIND[kind]
    x = jnp.asarray(M) + S * jr.normal(jr.fold_in(key, 1), (200000, D), jnp.float64)
    base = fn(f, key, x, path=path)
    pert = fn(lambda t, y, a: f(t, y) + delta, key, x, path=path)
    assert float(pert) > float(base)
    np.testing.assert_allclose(float(pert - base), float(delta @ delta), rtol=0.1)


def test_dsm_single_point_zero_and_gaussian_irreducible(key, x64):
    sigma, k = 0.3, 20
    m = jnp.asarray(M)
    point = jnp.tile(m, (64, 1))
    exact0 = lambda s, x, a: -(x - m) / s**2  # noqa: E731  score of N(m, s^2 I)
    assert float(losses.dsm_loss(exact0, key, point, sigma=sigma, k=k)) < 1e-18
    # Gaussian data: smoothed density N(m, (S^2 + sigma^2) I); min = d S^2 / (sigma^2 (S^2+sigma^2))
    exact = lambda s, x, a=None: -(x - m) / (S**2 + s**2)  # noqa: E731
    loss = jax.jit(functools.partial(losses.dsm_loss, exact, sigma=sigma, k=k))
    mean, se = _mc(loss, key, n=2000)
    expected = D * S**2 / (sigma**2 * (S**2 + sigma**2))
    assert abs(mean - expected) < 4 * se, (mean, expected, se)  # z-test, 4 standard errors
    worse = functools.partial(losses.dsm_loss, lambda s, x, a: exact(s, x) + 0.5, sigma=sigma, k=k)
    assert _mc(jax.jit(worse), key, n=2000)[0] > mean + 0.4


def test_dsm_matches_text_004_formula(key, x64):
    # (1 / (n k sigma^4)) sum ||x~ + sigma^2 f(x~) - x||^2, written out with the same draws.
    sigma, k, n = 0.1, 5, 7
    x = jr.normal(jr.fold_in(key, 2), (n, D), jnp.float64)
    f = lambda s, y, a=None: jnp.sin(y) * 3.0 - y  # noqa: E731
    w = jr.normal(key, (n, k, D), jnp.float64)
    xt = x[:, None] + sigma * w
    direct = jnp.sum(
        (xt + sigma**2 * jax.vmap(jax.vmap(f, (None, 0)), (None, 0))(sigma, xt) - x[:, None]) ** 2
    ) / (n * k * sigma**4)
    np.testing.assert_allclose(
        float(losses.dsm_loss(f, key, x, sigma=sigma, k=k)), float(direct), rtol=1e-10
    )


def test_ncsm_gaussian_irreducible(key, x64):
    sigmas = (1.0, 0.5, 0.2)
    m = jnp.asarray(M)
    exact = lambda s, x, a: -(x - m) / (S**2 + s**2)  # noqa: E731
    loss = jax.jit(functools.partial(losses.ncsm_loss, exact, sigmas=sigmas))
    mean, se = _mc(loss, key)
    expected = np.mean([D * S**2 / (S**2 + s**2) for s in sigmas])
    assert abs(mean - expected) < 4 * se, (mean, expected, se)  # z-test, 4 standard errors


def test_ddpm_exact_eps_model(key, x64):
    sched = paths.DDPMSchedule(100)
    m = jnp.asarray(M)

    def exact(s):
        def f(t, x, args=None):
            ab = sched.alpha_bar(sched.step(t))
            return jnp.sqrt(1 - ab) / (ab * s**2 + 1 - ab) * (x - jnp.sqrt(ab) * m)

        return f

    point = jnp.tile(m, (256, 1))
    assert float(losses.ddpm_loss(exact(0.0), key, point, schedule=sched)) < 1e-18
    loss = jax.jit(functools.partial(losses.ddpm_loss, exact(S), schedule=sched))
    mean, se = _mc(loss, key)
    ab = np.asarray(sched.alpha_bars)
    expected = np.mean(D * ab * S**2 / (ab * S**2 + 1 - ab))
    assert abs(mean - expected) < 4 * se, (mean, expected, se)  # z-test, 4 standard errors


def test_interpolant_independent_gaussians(key, x64):
    # Source N(m0, s0^2 I), target N(m1, s1^2 I): E[x1 - x0 | x_t] is affine in x_t.
    m0, s0, m1, s1 = jnp.array([-2.0, 0.0]), 0.5, jnp.asarray(M), S

    def exact(t, x, args=None):
        v = (1 - t) ** 2 * s0**2 + t**2 * s1**2
        c = (t * s1**2 - (1 - t) * s0**2) / v
        return (m1 - m0) + c * (x - ((1 - t) * m0 + t * m1))

    source = lambda k, n: m0 + s0 * jr.normal(k, (n, D), jnp.float64)  # noqa: E731
    loss = jax.jit(functools.partial(losses.interpolant_loss, exact, source=source))
    mean, se = _mc(loss, key, m=m1, s=s1)
    t = np.linspace(0, 1, 200001)
    var = (s0**2 + s1**2) - (t * s1**2 - (1 - t) * s0**2) ** 2 / (
        (1 - t) ** 2 * s0**2 + t**2 * s1**2
    )
    expected = D * np.trapezoid(var, t)
    assert abs(mean - expected) < 4 * se, (mean, expected, se)  # z-test, 4 standard errors


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_interpolant_single_points_zero(coupling, key):
    x0, x1 = jnp.array([-1.0, 2.0]), jnp.array([3.0, 0.5])
    const = lambda t, x, args: x1 - x0  # noqa: E731
    loss = losses.interpolant_loss(
        const, key, jnp.tile(x1, (32, 1)), source=jnp.tile(x0, (10, 1)), coupling=coupling
    )
    assert float(loss) < 1e-10


def test_ot_coupling_straightens_a_translation(key):
    # Target = source shifted by b: the OT map is the translation, so the constant field b is
    # (nearly) exact under minibatch OT and far from it under the independent coupling
    # (whose loss is E|x1 - x0 - b|^2 = 2 d for unit Gaussians).
    b = jnp.array([4.0, 1.0])
    const = lambda t, x, args: b  # noqa: E731
    src = lambda k, n: jr.normal(k, (n, D))  # noqa: E731
    x1 = b + jr.normal(jr.fold_in(key, 3), (256, D))
    ind = losses.interpolant_loss(const, key, x1, source=src, coupling="independent")
    ot = losses.interpolant_loss(const, key, x1, source=src, coupling="ot")
    assert 2.5 < float(ind) < 5.5
    assert float(ot) < 0.15 * float(ind)


@pytest.mark.parametrize("n", [16, 128])
def test_ot_pairing_near_optimal_against_scipy(n, key):
    k0, k1, k2 = jr.split(jr.fold_in(key, n), 3)
    x0 = jr.normal(k0, (n, D))
    x1 = 0.5 * jr.normal(k1, (n, D)) + jnp.array([2.0, 0.0])
    cost = np.asarray(squared_cost(x0, x1), dtype=np.float64)
    r, c = linear_sum_assignment(cost)
    optimum, independent = cost[r, c].sum(), np.trace(cost)
    plan = np.exp(np.asarray(jax.jit(sinkhorn_log_plan)(jnp.asarray(cost, jnp.float32))))
    np.testing.assert_allclose(plan.sum(1), 1.0 / n, rtol=1e-4)  # exact row marginals
    np.testing.assert_allclose(plan.sum(0), 1.0 / n, rtol=0.15)  # columns nearly
    expected = n * np.sum(plan * cost)  # expected total cost of the drawn pairing
    assert expected < 1.02 * optimum
    idx = np.asarray(jax.jit(jax.vmap(lambda k: ot_pairing(k, x0, x1)))(jr.split(k2, 20)))
    drawn = np.mean(cost[np.arange(n)[None, :], idx].sum(axis=1))
    assert drawn < 1.03 * optimum < independent


@pytest.mark.slow
def test_gradient_shapes_and_jit(key):
    mlp = nn.MLP(2, 2, width=16, depth=2, key=key)
    x = jr.normal(key, (32, D))
    sched = paths.DDPMSchedule(50)
    configs = {
        "flow_matching": dict(path="linear"),
        "score_matching": dict(path="vp"),
        "denoiser": dict(path="ve"),
        "eps": dict(path="cosine"),
        "dsm": dict(sigma=0.1, k=3),
        "ncsm": dict(sigmas=(1.0, 0.1)),
        "ddpm": dict(schedule=sched),
        "interpolant": dict(source="gaussian", coupling="ot"),
    }
    assert set(configs) == set(losses.LOSSES)
    for name, cfg in configs.items():
        loss = losses.get_loss(name, **cfg)
        val, grads = eqx.filter_jit(eqx.filter_value_and_grad(loss))(mlp, key, x)
        assert val.shape == () and np.isfinite(float(val)), name
        for g, p in zip(
            jax.tree.leaves(grads), jax.tree.leaves(eqx.filter(mlp, eqx.is_array)), strict=True
        ):
            assert g.shape == p.shape and bool(jnp.all(jnp.isfinite(g))), name


def test_validation_errors(key):
    model = lambda t, x, args: x  # noqa: E731
    x = jnp.ones((4, D))
    with pytest.raises(ValueError, match="unknown path 'bogus'.*linear"):
        losses.flow_matching_loss(model, key, x, path="bogus")
    with pytest.raises(ValueError, match="unknown path"):
        losses.get_loss("denoiser", path="nope")
    with pytest.raises(TypeError, match="path must be a GaussianPath"):
        losses.flow_matching_loss(model, key, x, path=3)
    with pytest.raises(ValueError, match="unknown loss 'cfm'.*flow_matching"):
        losses.get_loss("cfm")
    with pytest.raises(ValueError, match="unknown coupling 'sinkhorn'.*independent, ot"):
        losses.get_loss("interpolant", source="cat", coupling="sinkhorn")
    with pytest.raises(ValueError, match="unknown coupling"):
        losses.interpolant_loss(model, key, x, source=x, coupling="exact")
    with pytest.raises(ValueError, match="needs source"):
        losses.get_loss("interpolant")
    with pytest.raises(ValueError, match="event shape"):
        losses.interpolant_loss(model, key, x, source=jnp.ones((5, 3)))
    with pytest.raises(ValueError, match="unknown weighting"):
        losses.score_matching_loss(model, key, x, path="vp", weighting="snr")
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
            losses.get_loss("dsm", sigma=bad)
        with pytest.raises(ValueError, match="sigma"):
            losses.dsm_loss(model, key, x, sigma=bad)
    with pytest.raises(ValueError, match="sigmas"):
        losses.get_loss("ncsm", sigmas=(1.0, 0.0))
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        losses.get_loss("dsm", k=0)
    with pytest.raises(TypeError):
        losses.dsm_loss(model, key, x, k=2.5)
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        losses.get_loss("ddpm", schedule=paths.DDPMSchedule(0))
    with pytest.raises(ValueError, match="ot_epsilon"):
        losses.interpolant_loss(model, key, x, source=x, coupling="ot", ot_epsilon=0)
