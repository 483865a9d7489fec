"""Conditioning through the one model signature f(t, x, args): batches, losses, networks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffeqgen as dg
from diffeqgen import losses

MEANS = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # unit norm: one per class
NULL = 3


def point_masses(n, key):
    """Class c puts all its mass on MEANS[c]: returns (x (n, 2), labels (n,))."""
    labels = jr.randint(key, (n,), 0, 3)
    return MEANS[labels], labels


def oracle(t, x, c):
    """Exact conditional denoiser of `point_masses`; 0 for the null label."""
    return jnp.where(c == NULL, 0.0, 1.0) * MEANS[jnp.minimum(c, 2)]


@pytest.mark.parametrize("form", ["tuple", "dict", "list"])
def test_split_batch_forms(form, key):
    x, c = point_masses(5, key)
    batch = {"tuple": (x, c), "dict": {"x": x, "cond": c}, "list": [x, c]}[form]
    x2, c2 = losses.split_batch(batch)
    assert x2 is x and c2 is c
    assert losses.split_batch(x) == (x, None)
    assert losses.split_batch({"x": x})[1] is None


def test_split_batch_errors(key):
    x, c = point_masses(5, key)
    with pytest.raises(ValueError, match=r"leading axis n=5.*\(4,\)"):
        losses.split_batch((x, c[:4]))
    with pytest.raises(ValueError, match=r"cond\['a'\] has shape \(\)"):
        losses.split_batch((x, {"a": jnp.array(1)}))
    with pytest.raises(TypeError, match="must be \\(x, cond\\)"):
        losses.split_batch((x, c, c))
    with pytest.raises(TypeError, match='key "x"'):
        losses.split_batch({"data": x})


def test_condition_reaches_the_model_exactly(key):
    # The oracle is exact given the right label: the denoiser loss is exactly 0, and positive
    # with the labels shuffled (so the loss really uses the condition it was given).
    x, c = point_masses(512, key)
    assert float(losses.denoiser_loss(oracle, key, (x, c), path="linear")) == 0.0
    wrong = jnp.roll(c, 1)
    assert float(losses.denoiser_loss(oracle, key, (x, wrong), path="linear")) > 0.5


LIN, VP, COS = (dg.paths.get_path(n) for n in ("linear", "vp", "cosine"))
SCHED = dg.paths.DDPMSchedule(20)


def _eps(path, t, xt, x1):
    return (xt - path.alpha(t) * x1) / path.sigma(t)


# For each loss, the model that is exact when told its sample's clean point x1 as the condition:
# the loss is then 0 if and only if every sample sees its own condition (through the k-fold
# noise repeats of DSM/NCSM and the OT re-pairing of the interpolant too).
ORACLES = {
    "flow_matching": (
        dict(path=LIN),
        lambda t, xt, c: LIN.d_alpha(t) * c + LIN.d_sigma(t) * _eps(LIN, t, xt, c),
    ),
    "score_matching": (dict(path=VP), lambda t, xt, c: -_eps(VP, t, xt, c) / VP.sigma(t)),
    "eps": (dict(path=COS), lambda t, xt, c: _eps(COS, t, xt, c)),
    "dsm": (dict(sigma=0.2, k=3), lambda s, xt, c: -(xt - c) / s**2),
    "ncsm": (dict(sigmas=(1.0, 0.1), k=2), lambda s, xt, c: -(xt - c) / s**2),
    "ddpm": (
        dict(schedule=SCHED),
        lambda t, xt, c: (lambda ab: (xt - jnp.sqrt(ab) * c) / jnp.sqrt(1 - ab))(
            SCHED.alpha_bar(SCHED.step(t))
        ),
    ),
    "interpolant": (
        dict(source="gaussian", coupling="ot"),
        lambda t, xt, c: (c - xt) / (1 - t),
    ),
}


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_every_loss_passes_each_samples_condition(name, key, x64):
    config, model = ORACLES[name]
    x = jr.normal(key, (64, 2), jnp.float64)
    loss = losses.get_loss(name, **config)
    assert float(loss(model, key, (x, x))) < 1e-12
    assert float(loss(model, key, {"x": x, "cond": jnp.roll(x, 1, axis=0)})) > 0.1


def test_cond_dropout_rate_and_null(key):
    # Oracle denoiser on point masses of unit norm: loss = fraction of dropped labels exactly.
    n, p = 20000, 0.3
    x, c = point_masses(n, key)
    loss = losses.get_loss("denoiser", path="linear", cond_dropout=p, null_cond=NULL)
    frac = float(loss(oracle, key, (x, c)))
    se = np.sqrt(p * (1 - p) / n)
    assert abs(frac - p) < 4 * se, (frac, p, se)  # binomial z-test at 4 sd
    # p = 0 changes nothing: identical to the plain loss, bit for bit
    plain = losses.flow_matching_loss(oracle, key, (x, c), path="linear")
    zero = losses.flow_matching_loss(oracle, key, (x, c), path="linear", cond_dropout=0.0)
    assert float(plain) == float(zero)


def test_cond_dropout_errors(key):
    x, c = point_masses(8, key)
    with pytest.raises(ValueError, match="needs null_cond"):
        losses.get_loss("denoiser", path="linear", cond_dropout=0.1)
    with pytest.raises(ValueError, match=r"cond_dropout must be in \[0, 1\)"):
        losses.denoiser_loss(oracle, key, (x, c), path="linear", cond_dropout=1.0, null_cond=3)
    with pytest.raises(ValueError, match="needs a conditioned batch"):
        losses.denoiser_loss(oracle, key, x, path="linear", cond_dropout=0.5, null_cond=3)


def test_two_argument_model_gets_the_signature_error(key):
    x = jr.normal(key, (8, 2))
    with pytest.raises(TypeError, match=r"model\(t, x, args\).*time_concat"):
        losses.flow_matching_loss(lambda t, x: x, key, x, path="linear")


def test_mlp_class_conditioning(key):
    mlp = dg.nn.MLP(2, 2, width=16, depth=2, num_classes=3, key=key)
    x = jnp.ones(2)
    outs = [mlp(0.5, x, jnp.array(k)) for k in range(4)]  # 3 classes and the null label
    for i in range(4):
        for j in range(i):
            assert not np.allclose(outs[i], outs[j])
    # the other weights equal those of an unconditional MLP of the same key
    plain = dg.nn.MLP(2, 2, width=16, depth=2, key=key)
    np.testing.assert_array_equal(mlp.layers[-1].weight, plain.layers[-1].weight)
    with pytest.raises(ValueError, match="class-conditional.*pass the integer label"):
        mlp(0.5, x, None)
    with pytest.raises(ValueError, match="one integer class label"):
        mlp(0.5, x, jnp.array(1.0))
    vec = dg.nn.MLP(2, 2, width=8, depth=1, cond_size=4, key=key)
    assert vec(0.1, x, jnp.ones(4)).shape == (2,)
    with pytest.raises(ValueError, match=r"args must have shape \(4,\)"):
        vec(0.1, x, jnp.ones(3))
    with pytest.raises(ValueError, match="not both"):
        dg.nn.MLP(2, 2, num_classes=3, cond_size=2, key=key)


def test_time_concat_adapter_trains_and_samples(key):
    # A plain eqx.nn.MLP through the documented one-line adapter: trains with fit, samples with
    # sample_ode and gives a likelihood through cnf.log_prob, like any model of the package.
    net = eqx.nn.MLP(3, 2, width_size=32, depth=2, activation=jax.nn.silu, key=key)
    field = dg.nn.time_concat(net)
    np.testing.assert_allclose(
        field(0.25, jnp.array([1.0, 2.0]), None), net(jnp.array([1.0, 2.0, 0.25]))
    )
    shift = jnp.array([2.0, -1.0])
    target = lambda k, n: shift + 0.5 * jr.normal(k, (n, 2))  # noqa: E731
    result = dg.train.fit(
        field,
        losses.get_loss("flow_matching", path="linear"),
        target,
        optimizer=dg.train.make_optimizer(3e-3),
        key=key,
        num_steps=600,
        batch_size=256,
        progress=False,
    )
    sol = dg.solve.sample_ode(result.ema_model, jr.normal(key, (2000, 2)), solver="rk4", steps=10)
    np.testing.assert_allclose(np.asarray(sol.x.mean(0)), shift, atol=0.15)
    log_p, _ = dg.cnf.log_prob(result.ema_model, target(key, 200))
    assert bool(jnp.all(jnp.isfinite(log_p)))


# ------------------------------------------------------------------ samplers and likelihoods

S = 0.5  # class c is N(MEANS[c], S^2 I)


def gaussian_class_velocity(t, x, c):
    """Exact linear-path velocity from N(0, I) to N(MEANS[c], S^2 I): x_t = t m + (1-t+tS) z."""
    m = MEANS[c]
    a = 1.0 - t + t * S
    return m + (S - 1.0) * (x - t * m) / a


def test_sample_ode_maps_each_condition(key, x64):
    labels = jnp.arange(30) % 3
    z = jr.normal(key, (30, 2), jnp.float64)
    exact = MEANS[labels] + S * z
    for per_sample, steps in ((False, 64), (True, None)):
        sol = dg.solve.sample_ode(
            gaussian_class_velocity,
            z,
            cond=labels,
            solver="rk4" if steps else "dopri5",
            steps=steps,
            rtol=1e-10,
            atol=1e-10,
            per_sample=per_sample,
        )
        np.testing.assert_allclose(sol.x, exact, atol=1e-7)
    # shared args and per-sample cond together: the field sees (args, cond_i)
    for scale, want in ((1.0, exact), (0.0, z)):
        scaled = dg.solve.sample_ode(
            lambda t, x, a: a[0] * gaussian_class_velocity(t, x, a[1]),
            z,
            args=jnp.asarray(scale),
            cond=labels,
            solver="rk4",
            steps=64,
        )
        np.testing.assert_allclose(scaled.x, want, atol=1e-7)
    with pytest.raises(ValueError, match=r"sample_ode: cond is per-sample.*n=30.*\(29,\)"):
        dg.solve.sample_ode(gaussian_class_velocity, z, cond=labels[:29], steps=4, solver="rk4")


def test_cnf_log_prob_is_the_exact_conditional_density(key, x64):
    labels = jnp.arange(12) % 3
    x = MEANS[labels] + S * jr.normal(key, (12, 2), jnp.float64)
    exact = jnp.sum(jax.scipy.stats.norm.logpdf(x, MEANS[labels], S), axis=1)
    log_p, _ = dg.cnf.log_prob(gaussian_class_velocity, x, cond=labels, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(log_p, exact, atol=1e-6)
    batched, _ = dg.cnf.log_prob(
        gaussian_class_velocity, x, cond=labels, per_sample=False, rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(batched, exact, atol=1e-6)
    # conditional CNF training loss on a (x, cond) batch: mean NLL under the right labels
    nll = dg.cnf.nll_loss(gaussian_class_velocity, None, (x, labels), solver="rk4", steps=64)
    np.testing.assert_allclose(float(nll), -float(exact.mean()), atol=1e-6)


def test_sde_and_discrete_samplers_map_each_condition(key, x64):
    labels = jnp.arange(24) % 3
    x0 = jr.normal(key, (24, 2), jnp.float64)
    drift = lambda t, x, c: MEANS[c]  # noqa: E731
    zero = lambda t, x, c: jnp.zeros_like(x)  # noqa: E731
    sol = dg.solve.sample_sde((drift, zero), x0, key=key, cond=labels, steps=10)
    np.testing.assert_allclose(sol.x, x0 + MEANS[labels], atol=1e-12)
    pc = dg.solve.predictor_corrector(
        (drift, zero), zero, x0, key=key, steps=10, corrector_steps=0, cond=labels
    )
    np.testing.assert_allclose(pc.x, x0 + MEANS[labels], atol=1e-12)
    # DDIM (eta = 0) with the exact eps of point masses at MEANS[c] lands on MEANS[c]
    sched = dg.paths.DDPMSchedule(50)

    def eps(t, x, c):
        ab = sched.alpha_bar(sched.step(t))
        return (x - jnp.sqrt(ab) * MEANS[c]) / jnp.sqrt(1 - ab)

    ddim = dg.solve.ddim_sample(eps, x0, sched, steps=10, cond=labels)
    np.testing.assert_allclose(ddim.x, MEANS[labels], atol=1e-10)
    ddpm = dg.solve.ddpm_sample(eps, key, x0, sched, cond=labels)
    np.testing.assert_allclose(ddpm.x, MEANS[labels], atol=1e-6)
    # Langevin at (almost) zero temperature descends to each class's mode
    score = lambda t, x, c: -(x - MEANS[c]) / S**2  # noqa: E731
    lang = dg.solve.langevin_mcmc(
        score, x0, key=key, step_size=0.05, num_steps=300, temperature=1e-16, cond=labels
    )
    np.testing.assert_allclose(lang.x, MEANS[labels], atol=1e-6)
    ann = dg.solve.annealed_langevin(
        lambda s, x, c: score(s, x, c),
        x0,
        jnp.array([1.0, 0.5]),
        key=key,
        step_size=0.05,
        steps_per_level=300,
        temperature=1e-16,
        cond=labels,
    )
    np.testing.assert_allclose(ann.x, MEANS[labels], atol=1e-6)


def test_guided_field(key, x64):
    labels = jnp.arange(30) % 3
    z = jr.normal(key, (30, 2), jnp.float64)

    def field(t, x, c):  # class velocity; the null label 3 flows to the origin
        return jnp.where(c == NULL, -x, gaussian_class_velocity(t, x, jnp.minimum(c, 2)))

    plain = dg.solve.sample_ode(field, z, cond=labels, solver="rk4", steps=16)
    g0 = dg.solve.guided(field, 0.0, NULL)
    same = dg.solve.sample_ode(g0, z, cond=labels, solver="rk4", steps=16)
    np.testing.assert_array_equal(same.x, plain.x)  # w = 0 is the unguided field, bit for bit
    g = dg.solve.guided(field, 2.0, NULL)
    x, t = z[0], 0.3
    np.testing.assert_allclose(
        g(t, x, labels[0]), 3.0 * field(t, x, labels[0]) - 2.0 * field(t, x, NULL), rtol=1e-12
    )
    # the weight may be traced: one compiled sampler for every w, same answers
    run = jax.jit(
        lambda w: (
            dg.solve.sample_ode(
                dg.solve.guided(field, w, NULL), z, cond=labels, solver="rk4", steps=16
            ).x
        )
    )
    concrete = dg.solve.sample_ode(g, z, cond=labels, solver="rk4", steps=16).x
    np.testing.assert_allclose(run(2.0), concrete, rtol=1e-12)
    np.testing.assert_array_equal(run(0.0), plain.x)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        dg.solve.guided(field, -1.0, NULL)
    with pytest.raises(ValueError, match="null_cond is required"):
        dg.solve.guided(field, 1.0, None)


def test_guided_field_keeps_the_prior_of_its_path(x64, key):
    # A guided probability-flow field still carries its path, so cnf.log_prob's default base is
    # the path's prior (N(0, sigma_max^2 I) on VE), not N(0, I).
    ve = dg.paths.get_path("ve")
    score = lambda t, x, c: -x / (1.0 + ve.sigma(t) ** 2)  # noqa: E731  data N(0, I), any label
    field = dg.solve.guided(dg.paths.as_vector_field(score, ve, "score"), 1.5, NULL)
    assert field.path is ve
    x = jr.normal(key, (4, 2), jnp.float64)
    log_p, _ = dg.cnf.log_prob(field, x, cond=jnp.zeros(4, int), rtol=1e-9, atol=1e-9)
    exact = jnp.sum(jax.scipy.stats.norm.logpdf(x), axis=1)  # every class is N(0, I) here
    np.testing.assert_allclose(log_p, exact, atol=0.05)  # the prior's own 1/sigma_max^2 error


@pytest.mark.parametrize("solver", ["heun", "milstein"])
def test_sample_sde_cond_through_ito_conversion_and_per_sample_solves(solver, key):
    # Geometric Brownian motion with a per-class drift mu_c: the Ito mean of X_1 is e^{mu_c}.
    # Heun is a Stratonovich solver (its drift gets the Ito correction, built per sample with the
    # sample's condition); Milstein is solved per sample (vmapped over the condition too).
    import diffrax

    mus, s, n = jnp.array([0.2, -0.3]), 0.5, 8000
    labels = jnp.arange(n) % 2
    sde = (lambda t, x, c: mus[c] * x, lambda t, x, c: s * x)
    solver = "heun" if solver == "heun" else diffrax.ItoMilstein()
    sol = dg.solve.sample_sde(sde, jnp.ones((n, 1)), key=key, cond=labels, solver=solver, steps=50)
    for c in range(2):
        x = np.asarray(sol.x[labels == c, 0])
        se = x.std() / np.sqrt(x.size)
        assert abs(x.mean() - np.exp(float(mus[c]))) < 4 * se + 0.01, (c, x.mean(), se)


def test_guided_with_a_pytree_condition():
    # A dict condition with one null value for every leaf, or a null of the same structure.
    def field(t, x, c):
        return x * c["a"] + c["b"]

    cond = {"a": jnp.array(2.0), "b": jnp.array(1.0)}
    x = jnp.ones(2)
    for null in (0.0, {"a": 0.0, "b": 0.0}):
        g = dg.solve.guided(field, 1.0, null)
        np.testing.assert_allclose(g(0.0, x, cond), 2 * field(0.0, x, cond) - 0.0)
