"""Few-step samplers (DPM-Solver++, UniPC, EDM Heun) and the one meaning of NFE."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffeqgen as dg
from diffeqgen import groundtruth, paths, solve
from diffeqgen._fewstep import get_sampler


class Counter:
    """Counts real network evaluations through a host callback (one per batched call)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def _tick(self):
        self.calls += 1

    def __call__(self, t, x, args):
        jax.debug.callback(self._tick)
        return self.fn(t, x, args)


def _rms(a, b):
    return float(jnp.sqrt(jnp.mean(jnp.sum((a - b) ** 2, axis=-1))))


SAMPLERS = [*solve.FEWSTEP_SAMPLERS, solve.DPMSolverPP(3, warmup="lower_order")]
ORDERS = {"ddim": 1, "dpm++2m": 2, "dpm++3m": 3, "dpm++2s": 2, "unipc": 3, "edm_heun": 2}


def _label(s):
    return s if isinstance(s, str) else repr(s)


# ------------------------------------------------------------------ orders on the exact field


@pytest.mark.slow
@pytest.mark.parametrize("path_name", ["linear", "vp"])
def test_observed_order_matches_declared_order(path_name, x64):
    """Fitted log-log slope of the endpoint error on the exact mixture field, within 0.3.

    On [0.2, 0.8] (lambda finite at both ends, so no endpoint step) with a uniform log-SNR
    grid; reference: float64 dopri8 at tolerance 1e-13 from the same noise.
    """
    mix = dg.data.mixture("mixture")
    path = paths.get_path(path_name)
    field = groundtruth.velocity_field(mix, path)
    x0 = jr.normal(jr.key(1), (24, 2))
    t0, t1 = 0.2, 0.8
    ref = solve.sample_ode(
        field, x0, t0=t0, t1=t1, solver="dopri8", rtol=1e-13, atol=1e-13, per_sample=True
    ).x
    steps = [16, 64]  # (a least-squares slope over 16, 32, 64 is this one: log-equispaced)
    for sampler in solve.FEWSTEP_SAMPLERS:  # (3M with warmup="lower_order": O(h^2) start error)
        obj = get_sampler(sampler)
        errors = [
            _rms(solve.sample_ode(field, x0, t0=t0, t1=t1, solver=sampler, steps=n,
                                  grid="logsnr").x, ref)
            for n in steps
        ]  # fmt: skip
        slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
        if isinstance(sampler, str):
            assert obj.order == ORDERS[sampler]
        assert abs(slope - obj.order) < 0.3, (_label(sampler), obj.order, slope, errors)


def test_3m_third_order_on_a_quadratic_in_lambda(x64):
    """3M integrates sigma_t int e^lambda D dlambda exactly when D is quadratic in lambda."""
    from scipy.integrate import quad

    from diffeqgen._fewstep import _multistep_table

    path = paths.get_path("linear")
    ts = solve.time_grid(path, "logsnr", 6, 0.2, 0.8)
    table = _multistep_table(solve.DPMSolverPP(3, lower_order_final=False), path, ts, False, False)
    a, s = np.asarray(path.alpha(ts)), np.asarray(path.sigma(ts))
    lam = np.log(a / s)
    k = 4
    for poly in (lambda u: 1.0 + 0 * u, lambda u: u, lambda u: u**2 - 0.3 * u):
        exact = s[k + 1] * quad(lambda u, p=poly: np.exp(u) * p(u), lam[k], lam[k + 1])[0]
        c = np.asarray(table["C"][k])
        approx = c[0] * poly(lam[k]) + c[1] * poly(lam[k - 1]) + c[2] * poly(lam[k - 2])
        assert approx == pytest.approx(exact, rel=1e-10, abs=1e-12)


# ------------------------------------------------------------------------ DDIM equivalence


def test_dpmpp_first_order_equals_ddim(x64):
    """DPM-Solver++ of order 1 on the DDPM schedule's own path is ddim_sample to round-off."""
    T, steps = 100, 10
    schedule = paths.DDPMSchedule(T, 1e-3, 0.05)
    log_ab = jnp.log(schedule.alpha_bar(jnp.arange(T + 1)))
    k_grid = jnp.arange(T + 1, dtype=log_ab.dtype)

    def la(t):
        return jnp.interp(T * (1.0 - t), k_grid, log_ab)

    path = paths.custom_path(
        lambda t: jnp.exp(0.5 * la(t)), lambda t: jnp.sqrt(-jnp.expm1(la(t))), name="ddpm"
    )

    def eps_model(t, x, args):  # ddim_sample's model time 1 - k / T is computed in float32
        return jnp.tanh(1.3 * x + jnp.round(T * t) / T) - 0.2 * x

    x_T = jr.normal(jr.key(0), (5, 3))
    want = solve.ddim_sample(eps_model, x_T, schedule, steps=steps).x
    field = paths.as_vector_field(eps_model, path, "eps")
    for name in ("ddim", solve.DPMSolverPP(1)):
        got = solve.sample_ode(field, x_T, solver=name, steps=steps, grid="uniform")
        np.testing.assert_allclose(np.asarray(got.x), np.asarray(want), rtol=1e-11, atol=1e-11)
        assert got.nfe == steps


# -------------------------------------------------- Gaussian data: closed-form flow endpoint


def _gaussian_case(path_name, dim=2):
    m = jnp.array([0.7, -1.2][:dim])
    cov = jnp.diag(jnp.array([0.3, 2.0][:dim]))
    mix = dg.data.GaussianMixture(m[None], cov[None], jnp.ones(1))
    path = paths.get_path(path_name)
    return mix, path, m, jnp.sqrt(jnp.diag(cov))


def _exact_flow(path, m, sd, x0, t0=0.0, t1=1.0):
    """Probability-flow map of N(m, diag sd^2) data: x_t = alpha m + sqrt(alpha^2 sd^2 +
    sigma^2) z, z constant along the flow."""
    a0, s0 = path.alpha(jnp.asarray(t0)), path.sigma(jnp.asarray(t0))
    a1, s1 = path.alpha(jnp.asarray(t1)), path.sigma(jnp.asarray(t1))
    z = (x0 - a0 * m) / jnp.sqrt(a0**2 * sd**2 + s0**2)
    return a1 * m + jnp.sqrt(a1**2 * sd**2 + s1**2) * z


@pytest.mark.slow
@pytest.mark.parametrize("path_name", ["linear", "vp"])
def test_every_sampler_converges_to_the_exact_endpoint_on_gaussian_data(path_name, x64):
    """Whole generation t = 0 -> 1 (endpoint steps included), every model kind."""
    mix, path, m, sd = _gaussian_case(path_name)
    x0 = jr.normal(jr.key(3), (16, 2))
    exact = _exact_flow(path, m, sd, x0)

    def model(kind):
        fn = {
            "eps": groundtruth.eps,
            "score": groundtruth.score,
            "denoiser": groundtruth.denoiser,
            "velocity": groundtruth.velocity,
        }[kind]
        return lambda t, x, args: fn(mix, path, t, x)  # fmt: skip

    for sampler in solve.FEWSTEP_SAMPLERS:
        errs = {}
        for steps in (16, 64):
            sol = solve.sample_ode(
                groundtruth.velocity_field(mix, path), x0, solver=sampler, steps=steps
            )
            errs[steps] = _rms(sol.x, exact)
            if sampler == "unipc" and steps == 16:
                ref = sol.x
        tol = 0.1 if sampler == "ddim" else 1e-2
        assert errs[64] < tol and errs[64] < errs[16] / 1.8, (_label(sampler), errs)
    # any parametrisation, via paths.as_vector_field: the same answer to round-off
    for kind in paths.KINDS:  # (against the velocity field's UniPC run at 16 steps above)
        f = paths.as_vector_field(model(kind), path, kind)
        got = solve.sample_ode(f, x0, solver="unipc", steps=16).x
        assert _rms(got, ref) < 1e-10, kind  # measured 1e-15


# -------------------------------------------------------------------------------- NFE counts


# expected NFE: one evaluation per step (3M: + 1 for its 2S warm-up step), two for 2S and
# Heun, but one for a step out of alpha = 0 (linear: t = 0) or into sigma = 0 (both paths: t = 1)
EXPECTED_NFE = {
    ("linear", 1): dict(ddim=1, m2=1, m3=1, s2=1, unipc=1, heun=1, churn=1, m3low=1),
    ("linear", 3): dict(ddim=3, m2=3, m3=4, s2=4, unipc=3, heun=4, churn=4, m3low=3),
    ("vp", 3): dict(ddim=3, m2=3, m3=4, s2=5, unipc=3, heun=5, churn=5, m3low=3),
}
NFE_SAMPLERS = dict(
    ddim="ddim", m2="dpm++2m", m3="dpm++3m", s2="dpm++2s", unipc="unipc", heun="edm_heun",
    churn=solve.EDMHeun(churn=10.0), m3low=solve.DPMSolverPP(3, warmup="lower_order"),
)  # fmt: skip


@pytest.mark.parametrize("case", list(EXPECTED_NFE))
def test_fewstep_nfe_equals_counted_network_calls(case):
    """Several samples; endpoint steps counted exactly; model and velocity routes."""
    path_name, steps = case
    mix, path, _, _ = _gaussian_case(path_name)
    eps_model = Counter(lambda t, x, args: groundtruth.eps(mix, path, t, x))
    field = paths.as_vector_field(eps_model, path, "eps")
    x0 = jr.normal(jr.key(0), (7, 2))
    for short, sampler in NFE_SAMPLERS.items():
        key = jr.key(1) if short == "churn" else None
        eps_model.calls = 0
        sol = solve.sample_ode(field, x0, solver=sampler, steps=steps, key=key)
        jax.block_until_ready(sol.x)
        jax.effects_barrier()
        want = EXPECTED_NFE[case][short]
        assert eps_model.calls == sol.nfe == sol.nfe_mean == want, (short, eps_model.calls, sol.nfe)
        assert sol.num_steps == steps and np.all(np.isfinite(np.asarray(sol.x)))
    velocity = Counter(lambda t, x, args: groundtruth.velocity(mix, path, t, x))
    sol = solve.sample_ode(velocity, x0, solver="dpm++3m", steps=steps, path=path)
    jax.effects_barrier()
    assert velocity.calls == sol.nfe == EXPECTED_NFE[case]["m3"]


def test_adaptive_nfe_mean_and_max_match_counted_calls(x64):
    """sample_ode(per_sample=True): nfe is the max over samples (the calls a vmapped solve
    makes), nfe_mean the mean; several samples so that the two differ."""
    field = Counter(lambda t, y, args: -5.0 * jnp.cos(10.0 * t) * y)
    x0 = jnp.array([[1e-3], [1.0], [300.0], [0.2]])
    sol = solve.sample_ode(field, x0, rtol=1e-7, atol=1e-9, per_sample=True)
    jax.block_until_ready(sol.x)
    jax.effects_barrier()
    per = np.asarray(sol.nfe_per_sample)
    assert per.min() < per.max()
    assert field.calls == sol.nfe == per.max()
    assert sol.nfe_mean == pytest.approx(per.mean()) and sol.nfe_mean < sol.nfe
    field.calls = 0
    fixed = solve.sample_ode(field, x0, solver="heun", steps=5)
    jax.effects_barrier()
    assert field.calls == fixed.nfe == fixed.nfe_mean == 10
    # (cnf.log_prob's counts, mean and max over samples: tests/test_cnf.py, the same field)


# ------------------------------------------------------------------ transformations, cond


def test_under_jit_vmap_grad_and_with_cond(x64):
    mix, path, m, sd = _gaussian_case("vp")

    def eps_model(t, x, args):
        scale = args
        return scale * groundtruth.eps(mix, path, t, x)

    field = paths.as_vector_field(eps_model, path, "eps")
    x0 = jr.normal(jr.key(0), (6, 2))

    @jax.jit
    def run(x0, scale):
        return solve.sample_ode(field, x0, solver="dpm++2m", steps=12, args=scale).x

    eager = solve.sample_ode(field, x0, solver="dpm++2m", steps=12, args=1.0).x
    np.testing.assert_allclose(run(x0, 1.0), eager, rtol=1e-12)
    batch = jnp.stack([x0, 2 * x0])
    vm = jax.vmap(run, in_axes=(0, None))(batch, 1.0)
    np.testing.assert_allclose(vm[1], run(2 * x0, 1.0), rtol=1e-12)
    g = jax.grad(lambda s: jnp.sum(run(x0, s)))(1.0)
    eps = 1e-6
    fd = (jnp.sum(run(x0, 1.0 + eps)) - jnp.sum(run(x0, 1.0 - eps))) / (2 * eps)
    assert np.isfinite(g) and g == pytest.approx(float(fd), rel=1e-5)
    # per-sample condition: the same as sampling each sample with its own args
    cond = jnp.linspace(0.5, 1.5, 6)
    out = solve.sample_ode(field, x0, solver="unipc", steps=9, cond=cond).x
    for i in (0, 5):
        one = solve.sample_ode(field, x0[i : i + 1], solver="unipc", steps=9, args=cond[i]).x
        np.testing.assert_allclose(out[i], one[0], rtol=1e-12)


# ------------------------------------------------------------------------------ EDM churn


def test_edm_churn_keeps_the_gaussian_law_and_needs_a_key(x64):
    mix, path, m, sd = _gaussian_case("vp", dim=2)
    field = groundtruth.velocity_field(mix, path)
    x0 = jr.normal(jr.key(5), (4000, 2)) * path.sigma(0.0)
    n = 96  # the law's discretisation error: std +8% at 24 steps, < 1% at 96
    det = solve.sample_ode(field, x0, solver="edm_heun", steps=n)
    sto = solve.sample_ode(field, x0, solver=solve.EDMHeun(churn=20.0), steps=n, key=jr.key(2))
    again = solve.sample_ode(field, x0, solver=solve.EDMHeun(churn=20.0), steps=n, key=jr.key(2))
    np.testing.assert_array_equal(np.asarray(sto.x), np.asarray(again.x))
    assert _rms(sto.x, det.x) > 0.05  # the noise changes the trajectories ...
    se = 4 * np.asarray(sd) / math.sqrt(4000)  # ... but not the law (4 standard errors)
    np.testing.assert_array_less(np.abs(np.asarray(sto.x.mean(0)) - np.asarray(m)), se)
    np.testing.assert_array_less(
        np.abs(np.asarray(sto.x.std(0)) / np.asarray(sd) - 1.0), 4 / math.sqrt(2 * 4000)
    )
    assert sto.nfe == det.nfe == 2 * n - 1
    with pytest.raises(ValueError, match="key"):
        solve.sample_ode(field, x0, solver=solve.EDMHeun(churn=1.0), steps=4)
    with pytest.raises(ValueError, match="key"):
        solve.sample_ode(field, x0, solver="dpm++2m", steps=4, key=jr.key(0))


# --------------------------------------------------------------------------- grids, errors


def test_time_grids(x64):
    path = paths.get_path("linear")
    for grid in solve.GRIDS:
        ts = np.asarray(solve.time_grid(path, grid, 10))
        assert ts.shape == (11,) and ts[0] == 0.0 and ts[-1] == 1.0
        assert np.all(np.diff(ts) > 0), grid
    lam = lambda t: np.log(t / (1 - t))  # noqa: E731
    ts = np.asarray(solve.time_grid(path, "logsnr", 8))
    np.testing.assert_allclose(np.diff(lam(ts[1:-1])), np.diff(lam(ts[1:-1]))[0], rtol=1e-10)
    assert lam(ts[1]) == pytest.approx(lam(1e-3) + (lam(1 - 1e-3) - lam(1e-3)) / 8)
    ts = np.asarray(solve.time_grid(path, "karras", 6))
    r = ((1 - ts[1:-1]) / ts[1:-1]) ** (1 / 7)
    np.testing.assert_allclose(np.diff(r), np.diff(r)[0], rtol=1e-9)
    np.testing.assert_allclose(solve.time_grid(path, "quadratic", 2), [0.0, 0.75, 1.0])


def test_bad_arguments_are_named():
    mix = dg.data.mixture("mixture")
    path = paths.get_path("linear")
    field = groundtruth.velocity_field(mix, path)
    x0 = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match="path"):
        solve.sample_ode(lambda t, x, a: -x, x0, solver="dpm++2m", steps=4)
    with pytest.raises(ValueError, match="steps"):
        solve.sample_ode(field, x0, solver="unipc")
    with pytest.raises(ValueError, match="grid"):
        solve.sample_ode(field, x0, solver="unipc", steps=4, grid="cosine")
    with pytest.raises(ValueError, match="grid"):
        solve.sample_ode(field, x0, solver="euler", steps=4, grid="karras")
    with pytest.raises(ValueError, match="saveat"):
        solve.sample_ode(field, x0, solver="unipc", steps=4, saveat=jnp.array([0.5]))
    with pytest.raises(ValueError, match="t1 > t0"):
        solve.sample_ode(field, x0, solver="unipc", steps=4, t0=1.0, t1=0.0)
    with pytest.raises(ValueError, match="order"):
        solve.DPMSolverPP(4)
    with pytest.raises(ValueError, match="order"):
        solve.UniPC(3)


# ------------------------------------------------------------------ given and fitted grids


def test_a_given_grid_equals_the_named_grid_and_is_checked(x64):
    mix = dg.data.mixture("mixture")
    path = paths.get_path("vp")
    field = groundtruth.velocity_field(mix, path)
    x0 = jr.normal(jr.key(2), (16, 2))
    for sampler in ("unipc", "dpm++3m", "dpm++2s"):
        ts = solve.time_grid(path, "quadratic", 7)
        named = solve.sample_ode(field, x0, solver=sampler, steps=7, grid="quadratic")
        given = solve.sample_ode(field, x0, solver=sampler, grid=np.asarray(ts))
        np.testing.assert_allclose(given.x, named.x, rtol=0, atol=1e-13)
        assert given.nfe == named.nfe
    with pytest.raises(ValueError, match="does not match the given grid"):
        solve.sample_ode(field, x0, solver="unipc", steps=5, grid=ts)
    with pytest.raises(ValueError, match="from t0 = 0 to t1 = 1"):
        solve.sample_ode(field, x0, solver="unipc", grid=jnp.array([0.0, 0.5, 0.9]))
    with pytest.raises(ValueError, match="1-d array"):
        solve.sample_ode(field, x0, solver="unipc", grid=jnp.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda g: solve.sample_ode(field, x0, solver="unipc", grid=g).x)(ts)


def test_grid_gradient_matches_finite_differences(x64):
    """d(endpoint)/d(grid) through the samplers (the fit's gradient), endpoint steps included.

    Linear path (alpha(0) = 0 and sigma(1) = 0: the endpoint steps whose infinite lambda once
    made NaN gradients); 3M's warm-up differentiates the midpoint time t(lambda).
    """
    from diffeqgen._fewstep import _data_prediction, _degenerate, _run

    mix = dg.data.mixture("mixture")
    x0 = jr.normal(jr.key(3), (8, 2))
    for path_name in ("linear",):
        path = paths.get_path(path_name)
        field = groundtruth.velocity_field(mix, path)
        den = _data_prediction(field, path)
        ends = _degenerate(path, 0.0, "alpha"), _degenerate(path, 1.0, "sigma")
        ts0 = solve.time_grid(path, "uniform", 6)
        for sampler in (solve.UniPC(2), solve.DPMSolverPP(3)):

            def f(inner, sampler=sampler, den=den, path=path, ends=ends, ts0=ts0):
                ts = ts0.at[1:-1].set(inner)
                x, _ = _run(sampler, den, path, x0, None, None, 0.0, 1.0, 6, None, *ends, ts)
                return jnp.sum(x**2)

            inner = np.asarray(ts0[1:-1])
            g = jax.jit(jax.grad(f))(inner)
            eps = 1e-6  # central differences, all 2 x 5 evaluations in one compiled program
            shifts = eps * np.eye(inner.shape[0])
            values = np.asarray(
                jax.jit(jax.vmap(f))(np.concatenate([inner + shifts, inner - shifts]))
            )
            fd = (values[: inner.shape[0]] - values[inner.shape[0] :]) / (2 * eps)
            np.testing.assert_allclose(
                g, fd, rtol=1e-4, atol=1e-6, err_msg=f"{path_name} {sampler}"
            )


@pytest.mark.parametrize("path_name", ["linear", "vp"])
def test_optimize_grid_lowers_the_error_on_fresh_noise(path_name, x64):
    """The fitted grid beats its starting grid against the dopri8 reference on new noise.

    Both fits (init=None and init="uniform") run the same number of iterations, so they share
    one compiled fit; every grid is passed as an array, so one compiled sampler serves all of
    them on a batch of a given size.
    """
    mix = dg.data.mixture("mixture")
    path = paths.get_path(path_name)
    field = groundtruth.velocity_field(mix, path)
    pilot = jr.normal(jr.key(4), (128, 2))
    fresh = jr.normal(jr.key(5), (256, 2))
    iters = 30  # pilot error / initial error after 30 iterations: 0.23 to 0.38 (both starts)
    # init=None starts from the named grid with the smallest pilot error
    ts, info = solve.optimize_grid(field, pilot, solver="unipc", steps=8, iters=iters)
    pilot_ref = solve.sample_ode(
        field, pilot, solver="dopri8", rtol=1e-10, atol=1e-10, per_sample=True
    ).x
    named = {
        g: _rms(solve.sample_ode(field, pilot, solver="unipc", grid=_grid(path, g, 8)).x, pilot_ref)
        for g in solve.GRIDS
    }
    assert info["start"] == min(named, key=named.get)
    assert info["initial_error"] == pytest.approx(min(named.values()), rel=1e-6)
    _, uni = solve.optimize_grid(field, pilot, solver="unipc", steps=8, init="uniform", iters=iters)
    assert uni["start"] == "uniform"
    assert uni["initial_error"] == pytest.approx(named["uniform"], rel=1e-6)
    assert uni["pilot_error"] < 0.5 * uni["initial_error"]
    assert ts.shape == (9,) and ts[0] == 0.0 and ts[-1] == 1.0 and np.all(np.diff(ts) > 0)
    assert info["pilot_error"] < 0.5 * info["initial_error"]
    assert info["n_pilot"] == 128 and info["iters"] == iters and info["sampler_nfe"] == 8
    assert info["reference_nfe"] > 100  # the dopri8 reference at tolerance 1e-10
    assert info["nonfinite_iters"] == uni["nonfinite_iters"] == 0
    ref = solve.sample_ode(field, fresh, solver="dopri8", rtol=1e-12, atol=1e-12, per_sample=True).x
    fitted = solve.sample_ode(field, fresh, solver="unipc", grid=ts)
    start = solve.sample_ode(field, fresh, solver="unipc", grid=_grid(path, info["start"], 8))
    assert fitted.nfe == start.nfe == 8
    assert _rms(fitted.x, ref) < 0.8 * _rms(start.x, ref)  # measured 0.52 (linear), 0.45 (vp)
    with pytest.raises(ValueError, match="stochastic"):
        solve.optimize_grid(field, pilot, solver=solve.EDMHeun(churn=1.0), steps=4)
    with pytest.raises(ValueError, match="steps"):
        solve.optimize_grid(field, pilot, solver="unipc")


def test_optimize_grid_counts_nonfinite_gradients():
    """A field whose output is finite but whose time-derivative is NaN (a masked ``sqrt`` of a
    negative number, the classic ``jnp.where`` gradient): every iteration's gradient is NaN,
    Adam never moves, the starting grid comes back, and ``info`` says so."""
    path = paths.get_path("linear")
    exact = groundtruth.velocity_field(dg.data.mixture("mixture"), path)

    def field(t, x, args):
        return exact(t, x, args) + jnp.where(t > 5.0, jnp.sqrt(-t), 0.0)

    pilot = jr.normal(jr.key(4), (16, 2))
    ts, info = solve.optimize_grid(
        field, pilot, solver="unipc", steps=4, init="uniform", iters=3, path=path
    )
    assert info["nonfinite_iters"] == 3, info
    assert info["pilot_error"] == info["initial_error"]
    np.testing.assert_allclose(ts, _grid(path, "uniform", 4), rtol=1e-6, atol=1e-6)


def _grid(path, name, steps):
    """A named grid as an array: the sampler then compiles once for every grid of that length
    (the named and the given grid agree: test_a_given_grid_equals_the_named_grid_...)."""
    return np.asarray(solve.time_grid(path, name, steps))
