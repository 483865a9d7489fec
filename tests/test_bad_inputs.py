"""Bad inputs over the public API: each raises a clear error naming the argument or value.

One case (at least) per public function and class: the exception type is asserted, and the
message must name the argument or the value (``pytest.raises(..., match=...)``). Then the
runtime failures: a fixed-step solve of a field that turns NaN at t = 0.6 raises naming the
step and time, and with ``throw=False`` returns a flagged result (also inside ``jit``); the
same for the discrete samplers and ``cnf.log_prob``; damaged checkpoints are refused.
"""

import functools
import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np
import pytest

import diffeqgen as dg

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KEY = jr.key(0)
X = jnp.zeros((3, 2))
X_NAN = X.at[0, 1].set(jnp.nan)
X_INT = jnp.zeros((3, 2), jnp.int32)
LIN = dg.paths.get_path("linear")
SCHED = dg.paths.DDPMSchedule(10)
MIX = dg.data.mixture("8gaussians")


def field(t, x, args):
    return -x


def score(t, x, args):
    return -x


SDE = dg.sdes.ornstein_uhlenbeck(1.0, 1.0)
ENERGY = dg.ebm.energy_mlp(2, width=4, depth=1, key=KEY)
X0 = jnp.ones((3, 2))
TINY = dg.nn.MLP(2, 2, width=4, depth=1, key=KEY)
IMGS = np.zeros((2, 1, 8, 8), np.float32)  # two blank 8x8 images
OPT = dg.train.make_optimizer(1e-3)
FM = functools.partial(dg.losses.flow_matching_loss, path="linear")


def nan_after(t0):
    """A field that is finite before ``t0`` and NaN after it."""

    def f(t, x, args):
        return jnp.where(t > t0, jnp.nan, 1.0) * x

    return f


def _ax():
    return plt.subplots()[1]


def U(fn):
    """``fn`` without the test suite's jaxtyping/beartype wrapper, so that the library's own
    check (what a user without the hook sees) is what raises."""
    return inspect.unwrap(fn)


# (id, call, exception type, regex the message must match)
CASES = [
    # ------------------------------------------------------------------ dg.paths
    ("paths.get_path", lambda: dg.paths.get_path("linar"), ValueError, "path 'linar'"),
    ("paths.custom_path", lambda: dg.paths.custom_path(5, lambda t: t), TypeError, "alpha"),
    (
        "paths.convert/t",
        lambda: dg.paths.convert(X, X, 1.5, LIN, source="eps", target="score"),
        ValueError,
        r"t must lie in \[0, 1\].*1\.5",
    ),
    (
        "paths.convert/path",
        lambda: U(dg.paths.convert)(X, X, 0.5, 3, source="eps", target="score"),
        TypeError,
        "path must be a GaussianPath",
    ),
    (
        "paths.convert/shapes",
        lambda: dg.paths.convert(X, jnp.zeros((4, 2)), 0.5, LIN, source="eps", target="score"),
        ValueError,
        r"\(3, 2\) and \(4, 2\)",
    ),
    (
        "paths.as_vector_field",
        lambda: U(dg.paths.as_vector_field)(field, object(), "velocity"),
        TypeError,
        "path must be",
    ),
    (
        "paths.as_vector_field/name",
        lambda: U(dg.paths.as_vector_field)(field, "linear", "velocity"),
        TypeError,
        r"path must be a GaussianPath.*get_path\('linear'\)",
    ),
    (
        "paths.as_score",
        lambda: dg.paths.as_score(field, LIN, "velo"),
        ValueError,
        "kind 'velo'",
    ),
    (
        "paths.interpolate/shapes",
        lambda: LIN.interpolate(X, jnp.zeros((4, 2)), 0.5),
        ValueError,
        r"x1 and eps.*\(3, 2\) and \(4, 2\)",
    ),
    (
        "paths.interpolate/t-batch",
        lambda: LIN.interpolate(X, X, jnp.full((4,), 0.5)),
        ValueError,
        r"t has shape \(4,\) but x has shape \(3, 2\)",
    ),
    ("paths.sample/t", lambda: LIN.sample(KEY, X, -0.1), ValueError, r"t must lie.*-0\.1"),
    ("paths.cond_score/t", lambda: LIN.cond_score(X, X, 2.0), ValueError, "t must lie"),
    ("paths.cond_velocity/t", lambda: LIN.cond_velocity(X, X, 1.01), ValueError, "t must lie"),
    ("paths.DDPMSchedule", lambda: dg.paths.DDPMSchedule(0), ValueError, "num_steps"),
    ("paths.VEPath", lambda: dg.paths.VEPath(sigma_min=-1.0), ValueError, "sigma_min"),
    ("paths.IsotropicGaussian", lambda: dg.paths.IsotropicGaussian(-1.0, 2), ValueError, "scale"),
    # ------------------------------------------------------------------ dg.solve
    ("solve.get_solver", lambda: dg.solve.get_solver("rk5"), ValueError, "'rk5'"),
    ("solve.sample_ode/nan-x0", lambda: dg.solve.sample_ode(field, X_NAN), ValueError, "x0"),
    (
        "solve.sample_ode/cond",
        lambda: dg.solve.sample_ode(field, X, steps=2, cond=jnp.zeros((4, 1))),
        ValueError,
        r"cond.*\(4, 1\)",
    ),
    (
        "solve.sample_ode/rtol",
        lambda: dg.solve.sample_ode(field, X, rtol=-1.0),
        ValueError,
        "rtol",
    ),
    ("solve.sample_sde/key", lambda: dg.solve.sample_sde(SDE, X, steps=2), ValueError, "key"),
    (
        "solve.ddpm_sample",
        lambda: dg.solve.ddpm_sample(score, KEY, X, "linear"),
        TypeError,
        "schedule",
    ),
    (
        "solve.ddim_sample",
        lambda: dg.solve.ddim_sample(score, X, SCHED, steps=11),
        ValueError,
        "steps must be <= schedule.num_steps = 10",
    ),
    (
        "solve.langevin_mcmc",
        lambda: dg.solve.langevin_mcmc(score, X, key=KEY, step_size=-0.1, num_steps=2),
        ValueError,
        "step_size",
    ),
    (
        "solve.predictor_corrector",
        lambda: dg.solve.predictor_corrector(SDE, score, X, key=KEY, steps=2, t0=1.0, t1=0.5),
        ValueError,
        "t1 > t0",
    ),
    (
        "solve.annealed_langevin",
        lambda: dg.solve.annealed_langevin(
            score, X, jnp.array([1.0, -1.0]), key=KEY, step_size=0.1, steps_per_level=1
        ),
        ValueError,
        "sigmas",
    ),
    ("solve.guided", lambda: dg.solve.guided(field, -1.0, 0), ValueError, "weight"),
    (
        "solve.RK4",
        lambda: dg.solve.sample_ode(field, X, solver=dg.solve.RK4(), steps=0),
        ValueError,
        "steps",
    ),  # fmt: skip
    # ------------------------------------------------------------------ dg.cnf
    ("cnf.log_prob/nan-x", lambda: dg.cnf.log_prob(field, X_NAN), ValueError, "x must be finite"),
    (
        "cnf.log_prob/empty",
        lambda: dg.cnf.log_prob(field, X[:0]),
        ValueError,
        r"at least one point.*\(0, 2\)",
    ),
    (
        "cnf.log_prob/cond",
        lambda: dg.cnf.log_prob(field, X, steps=2, solver="rk4", cond=jnp.zeros((2,))),
        ValueError,
        r"cond.*\(2,\)",
    ),
    (
        "cnf.log_prob_chunked",
        lambda: dg.cnf.log_prob_chunked(field, X, chunk_size=0),
        ValueError,
        "chunk_size",
    ),
    (
        "cnf.reference_log_prob",
        lambda: dg.cnf.reference_log_prob(field, X, throw=False),
        TypeError,
        "throw",
    ),
    (
        "cnf.sample_and_log_prob",
        lambda: dg.cnf.sample_and_log_prob(field, KEY, 0, 2),
        ValueError,
        "n must be",
    ),
    ("cnf.nll_loss/int", lambda: dg.cnf.nll_loss(field, None, X_INT), TypeError, "floating"),
    (
        "cnf.log_prob/step_control",
        lambda: dg.cnf.log_prob(field, X, step_control="pid"),
        ValueError,
        r"unknown step_control 'pid'; expected one of: i, pi",
    ),
    (
        "cnf.nll_loss/step_control",
        lambda: dg.cnf.nll_loss(field, None, X, steps=None, step_control="I"),
        ValueError,
        r"unknown step_control 'I'; expected one of: i, pi",
    ),
    (
        "cnf.sample_and_log_prob/step_control",
        lambda: dg.cnf.sample_and_log_prob(field, KEY, 2, 2, step_control="PI"),
        ValueError,
        r"unknown step_control 'PI'",
    ),
    ("cnf.bits_per_dim", lambda: dg.cnf.bits_per_dim(jnp.zeros(3), 0), ValueError, "dim"),
    ("cnf.CNF", lambda: dg.cnf.CNF(0, key=KEY), ValueError, "dim"),
    (
        "cnf.error_vs_nfe",
        lambda: dg.cnf.error_vs_nfe(field, X0, steps=(0,)),
        ValueError,
        "steps must be an integer >= 1, got 0",
    ),
    (
        "cnf.hutchinson_error",
        lambda: dg.cnf.hutchinson_error(field, X0, 0, key=KEY),
        ValueError,
        "num_probes",
    ),
    # ------------------------------------------------------------------ dg.ebm
    ("ebm.energy_mlp", lambda: dg.ebm.energy_mlp(0, key=KEY), ValueError, "in_size"),
    (
        "ebm.with_buffer",
        lambda: dg.ebm.with_buffer(ENERGY, jnp.zeros((0, 2))),
        ValueError,
        r"x0 .*\(0, 2\)",
    ),
    ("ebm.with_replay", lambda: dg.ebm.with_replay(5), TypeError, "optimizer"),
    (
        "ebm.mala",
        lambda: dg.ebm.mala(ENERGY, X0, key=KEY, step_size=-1.0, num_steps=2),
        ValueError,
        "step_size",
    ),
    (
        "ebm.ebm_surrogate",
        lambda: U(dg.ebm.ebm_surrogate)(ENERGY, X0, jnp.zeros((3, 3))),
        ValueError,
        r"shape \(3,\)",
    ),
    (
        "ebm.ebm_loss",
        lambda: dg.ebm.ebm_loss(ENERGY, KEY, X0, step_size=-1.0),
        ValueError,
        "step_size",
    ),
    (
        "solve.mala",
        lambda: dg.solve.mala(ENERGY, X_NAN, key=KEY, step_size=0.1, num_steps=2),
        ValueError,
        "x0 must be finite",
    ),  # fmt: skip
    # ------------------------------------------------------------------ dg.sharding
    ("sharding.batch_axis", lambda: dg.sharding.batch_axis(5), TypeError, "mesh must be"),
    ("sharding.batch_sharding", lambda: dg.sharding.batch_sharding(5), TypeError, "mesh must be"),
    ("sharding.shard_batch", lambda: dg.sharding.shard_batch(X, 5), TypeError, "mesh must be"),
    ("sharding.replicate", lambda: dg.sharding.replicate(X, 5), TypeError, "mesh must be"),
    # ------------------------------------------------------------------ dg.losses
    (
        "losses.split_batch",
        lambda: dg.losses.split_batch((X, X, X)),
        TypeError,
        "tuple batch must be \\(x, cond\\)",
    ),
    (
        "losses.flow_matching_loss/path",
        lambda: dg.losses.flow_matching_loss(TINY, KEY, X, path=3),
        TypeError,
        "path must be",
    ),
    (
        "losses.flow_matching_loss/int",
        lambda: dg.losses.flow_matching_loss(TINY, KEY, X_INT, path="linear"),
        TypeError,
        "floating-point.*int32",
    ),
    (
        "losses.score_matching_loss",
        lambda: dg.losses.score_matching_loss(TINY, KEY, X, path="vp", weighting="bad"),
        ValueError,
        "weighting",
    ),
    (
        "losses.denoiser_loss",
        lambda: dg.losses.denoiser_loss(TINY, KEY, X, path="nope"),
        ValueError,
        "'nope'",
    ),
    (
        "losses.eps_loss/cond",
        lambda: dg.losses.eps_loss(TINY, KEY, (X, jnp.zeros((4,))), path="vp"),
        ValueError,
        r"n=3.*\(4,\)",
    ),
    ("losses.dsm_loss", lambda: dg.losses.dsm_loss(TINY, KEY, X, sigma=-1.0), ValueError, "sigma"),
    (
        "losses.ncsm_loss",
        lambda: dg.losses.ncsm_loss(TINY, KEY, X, sigmas=()),
        ValueError,
        "sigmas",
    ),
    (
        "losses.ddpm_loss",
        lambda: dg.losses.ddpm_loss(TINY, KEY, X_INT, schedule=SCHED),
        TypeError,
        "floating-point",
    ),
    (
        "losses.interpolant_loss",
        lambda: dg.losses.interpolant_loss(TINY, KEY, X, ot_epsilon=0.0),
        ValueError,
        "epsilon",
    ),
    (
        "losses.ot_pairing",
        lambda: U(dg.losses.ot_pairing)(KEY, X, jnp.zeros((4, 2))),
        ValueError,
        r"\(3, 2\).*\(4, 2\)",
    ),
    ("losses.get_loss", lambda: dg.losses.get_loss("fm"), ValueError, "'fm'"),
    # ------------------------------------------------------------------ dg.couplings
    (
        "couplings.minibatch_ot",
        lambda: dg.couplings.minibatch_ot(epsilon=0.0),
        ValueError,
        "epsilon",
    ),
    ("couplings.get_coupling", lambda: dg.couplings.get_coupling("otx"), ValueError, "'otx'"),
    (
        "couplings.squared_cost",
        lambda: U(dg.couplings.squared_cost)(X, jnp.zeros((3, 3))),
        ValueError,
        r"\(3, 2\).*\(3, 3\)",
    ),
    (
        "couplings.sinkhorn_log_plan",
        lambda: dg.couplings.sinkhorn_log_plan(jnp.zeros((3, 3)), epsilon=-1.0),
        ValueError,
        "epsilon",
    ),
    (
        "couplings.ot_pairing",
        lambda: U(dg.couplings.ot_pairing)(KEY, X, jnp.zeros((4, 2))),
        ValueError,
        r"\(3, 2\).*\(4, 2\)",
    ),
    (
        "couplings.split_pairs",
        lambda: dg.couplings.split_pairs({"x0": X}),
        ValueError,
        r"batch\['x0'\] \(3, 2\) and batch\['x'\]",
    ),
    (
        "couplings.pair_sampler",
        lambda: dg.couplings.pair_sampler(X, jnp.zeros((3, 3))),
        ValueError,
        r"\(3, 2\).*\(3, 3\)",
    ),
    (
        "couplings.reflow_pairs",
        lambda: dg.couplings.reflow_pairs(field, KEY, 0, source="gaussian"),
        ValueError,
        "n must be",
    ),
    (
        "couplings.straightness",
        lambda: dg.couplings.straightness(field, X, steps=0),
        ValueError,
        "steps",
    ),
    ("couplings.MinibatchOT", lambda: dg.couplings.MinibatchOT(iters=0), ValueError, "iters"),
    # ------------------------------------------------------------------ dg.data
    ("data.log_prob", lambda: dg.data.log_prob("moons", X), ValueError, "'moons'"),
    ("data.names", lambda: dg.data.names(exact="yes"), TypeError, "exact must be True or False"),
    ("data.mixture", lambda: dg.data.mixture("moons"), ValueError, "'moons'"),
    (
        "data.mixture_entropy",
        lambda: dg.data.mixture_entropy("8gaussians"),
        TypeError,
        "GaussianMixture",
    ),
    ("data.sample", lambda: dg.data.sample("moon", KEY, 4), ValueError, "'moon'"),
    ("data.sampler", lambda: dg.data.sampler("moon"), ValueError, "'moon'"),
    ("data.entropy", lambda: dg.data.entropy("moon"), ValueError, "'moon'"),
    (
        "data.train_test_split",
        lambda: dg.data.train_test_split("moons", n_train=0),
        ValueError,
        "n_train",
    ),
    (
        "data.GaussianMixture",
        lambda: dg.data.GaussianMixture(jnp.zeros((2, 2)), jnp.ones((3, 2, 2)), jnp.ones(2) / 2),
        ValueError,
        "covariances",
    ),
    ("data.Polygon", lambda: dg.data.Polygon([[0.0, 0.0], [1.0, 1.0]]), ValueError, "vertices"),
    ("data.digits", lambda: dg.data.digits("val"), ValueError, "'val'"),
    (
        "data.digits/fraction",
        lambda: dg.data.digits(test_fraction=1.5),
        ValueError,
        "test_fraction",
    ),
    ("data.load_mnist", lambda: dg.data.load_mnist("/nonexistent.idx"), FileNotFoundError, "path"),
    ("data.read_idx", lambda: dg.data.read_idx("/nonexistent.idx"), FileNotFoundError, "IDX"),
    # ------------------------------------------------------------------ dg.groundtruth
    (
        "groundtruth.marginal/t",
        lambda: dg.groundtruth.marginal(MIX, LIN, 1.5),
        ValueError,
        r"t must lie in \[0, 1\].*1\.5",
    ),
    (
        "groundtruth.log_prob/path",
        lambda: U(dg.groundtruth.log_prob)(MIX, 3, 0.5, X),
        TypeError,
        "path must be",
    ),
    (
        "groundtruth.score/mixture",
        lambda: U(dg.groundtruth.score)(3, LIN, 0.5, X),
        TypeError,
        "mixture must be",
    ),
    (
        "groundtruth.denoiser/name",
        lambda: dg.groundtruth.denoiser("moons", LIN, 0.5, X),
        ValueError,
        "'moons'",
    ),
    ("groundtruth.eps/t", lambda: dg.groundtruth.eps(MIX, LIN, -0.5, X), ValueError, "t must lie"),
    (
        "groundtruth.velocity/x",
        lambda: dg.groundtruth.velocity(MIX, LIN, 0.5, jnp.zeros((3, 3))),
        ValueError,
        r"x must have shape \(\.\.\., 2\)",
    ),
    (
        "groundtruth.velocity_field",
        lambda: dg.groundtruth.velocity_field(MIX, "linearr"),
        ValueError,
        "'linearr'",
    ),
    (
        "groundtruth.score_field",
        lambda: U(dg.groundtruth.score_field)(object(), LIN),
        TypeError,
        "mixture must be",
    ),
    # ------------------------------------------------------------------ dg.metrics
    ("metrics.mmd", lambda: U(dg.metrics.mmd)(X, jnp.zeros((3, 3))), ValueError, r"\(3, 3\)"),
    (
        "metrics.mmd_jax",
        lambda: dg.metrics.mmd_jax(X, X, -1.0),
        ValueError,
        "bandwidth",
    ),
    (
        "metrics.sinkhorn_divergence",
        lambda: dg.metrics.sinkhorn_divergence(X, X, epsilon=0.0),
        ValueError,
        "epsilon",
    ),
    (
        "metrics.median_bandwidth",
        lambda: dg.metrics.median_bandwidth(X_NAN, X),
        ValueError,
        "finite",
    ),
    (
        "metrics.wasserstein",
        lambda: U(dg.metrics.wasserstein)(X, jnp.zeros((4, 2))),
        ValueError,
        r"\(3, 2\) and \(4, 2\)",
    ),
    (
        "metrics.sliced_wasserstein",
        lambda: dg.metrics.sliced_wasserstein(X, X, key=KEY, num_projections=0),
        ValueError,
        "num_projections",
    ),
    (
        "metrics.energy_distance",
        lambda: dg.metrics.energy_distance(X, X, estimator="bad"),
        ValueError,
        "estimator",
    ),
    (
        "metrics.kde_log_likelihood",
        lambda: dg.metrics.kde_log_likelihood(X, X, bandwidth=-1.0),
        ValueError,
        "bandwidth",
    ),
    ("metrics.scott_bandwidth", lambda: dg.metrics.scott_bandwidth(X_NAN), ValueError, "finite"),
    (
        "metrics.floor",
        lambda: dg.metrics.floor(dg.metrics.mmd, dg.data.sampler("moons"), 0, key=KEY),
        ValueError,
        "n must be",
    ),
    (
        "metrics.floor_stats",
        lambda: dg.metrics.floor_stats(
            dg.metrics.mmd, dg.data.sampler("moons"), 8, key=KEY, repeats=1
        ),
        ValueError,
        "repeats",
    ),  # fmt: skip
    ("metrics.mode_tv", lambda: dg.metrics.mode_tv(X, 5), TypeError, "mixture must be"),
    (
        "metrics.frechet_distance",
        lambda: dg.metrics.frechet_distance(X[:1], X),
        ValueError,
        "2 rows",
    ),
    # ------------------------------------------------------------------ dg.images
    (
        "images.DigitClassifier",
        lambda: dg.images.DigitClassifier((8, 8), key=KEY),
        ValueError,
        "image_shape",
    ),
    (
        "images.train_classifier",
        lambda: dg.images.train_classifier(IMGS, -jnp.ones(2, jnp.int32), key=KEY),
        ValueError,
        "labels must be >= 0",
    ),
    ("images.features", lambda: dg.images.features("clf", IMGS), TypeError, "DigitClassifier"),
    ("images.predict", lambda: dg.images.predict("clf", IMGS), TypeError, "DigitClassifier"),
    (
        "images.accuracy",
        lambda: dg.images.accuracy("clf", IMGS, jnp.zeros(2, jnp.int32)),
        TypeError,
        "DigitClassifier",
    ),
    (
        "images.frechet_distance",
        lambda: dg.images.frechet_distance("clf", IMGS, IMGS),
        TypeError,
        "DigitClassifier",
    ),
    (
        "images.class_histogram",
        lambda: dg.images.class_histogram(np.array([0, 12]), 10),
        ValueError,
        "0..9",
    ),
    (
        "images.histogram_entropy",
        lambda: dg.images.histogram_entropy(np.array([0.5, 0.6])),
        ValueError,
        "summing to 1",
    ),
    # ------------------------------------------------------------------ dg.nn
    ("nn.MLP", lambda: dg.nn.MLP(2, 2, activation="gelu2", key=KEY), ValueError, "'gelu2'"),
    ("nn.EnergyMLP", lambda: dg.nn.EnergyMLP(0, key=KEY), ValueError, "in_size"),
    ("nn.FourierEmbedding", lambda: dg.nn.FourierEmbedding(3, key=KEY), ValueError, "dim"),
    ("nn.SinusoidalEmbedding", lambda: dg.nn.SinusoidalEmbedding(3), ValueError, "dim"),
    ("nn.time_concat", lambda: dg.nn.time_concat(5), TypeError, "net"),
    ("nn.TimeConcat", lambda: dg.nn.TimeConcat("net"), TypeError, "net"),
    ("nn.UNet", lambda: dg.nn.UNet(1, channels=(), key=KEY), ValueError, "channels"),
    # ------------------------------------------------------------------ dg.sdes
    ("sdes.brownian_motion", lambda: dg.sdes.brownian_motion(-1.0), ValueError, "sigma"),
    ("sdes.ornstein_uhlenbeck", lambda: dg.sdes.ornstein_uhlenbeck(-1.0, 1.0), ValueError, "theta"),
    ("sdes.langevin", lambda: dg.sdes.langevin(5), TypeError, "score"),
    (
        "sdes.generative_sde",
        lambda: dg.sdes.generative_sde(field, score, -1.0),
        ValueError,
        "g must be",
    ),
    ("sdes.reverse_sde", lambda: U(dg.sdes.reverse_sde)(3, score), TypeError, "path must be"),
    (
        "sdes.brownian_marginal",
        lambda: dg.sdes.brownian_marginal(1.0, X, -0.5),
        ValueError,
        "t must be finite and >= 0",
    ),
    (
        "sdes.ou_marginal",
        lambda: dg.sdes.ou_marginal(0.0, 1.0, X, 0.5),
        ValueError,
        "theta",
    ),
    (
        "sdes.ou_stationary_variance",
        lambda: dg.sdes.ou_stationary_variance(0.0, 1.0),
        ValueError,
        "theta",
    ),
    ("sdes.SDE", lambda: dg.sdes.SDE(5, score), TypeError, "drift"),
    # ------------------------------------------------------------------ dg.train
    (
        "train.fit/key",
        lambda: U(dg.train.fit)(TINY, FM, X, optimizer=OPT, key="a", num_steps=1, batch_size=2),
        TypeError,
        "key must be a PRNG key",
    ),
    (
        "train.fit/checkpoint",
        lambda: dg.train.fit(
            TINY,
            FM,
            X,
            optimizer=OPT,
            key=0,
            num_steps=1,
            batch_size=2,
            checkpoint="/proc/no-such-dir/run.ckpt",
            progress=False,
        ),
        ValueError,
        "no-such-dir/run.ckpt.*cannot be written",
    ),  # fmt: skip
    ("train.init_state", lambda: U(dg.train.init_state)(TINY, OPT, key=1.5), TypeError, "key"),
    ("train.make_optimizer", lambda: dg.train.make_optimizer(-1.0), ValueError, "learning_rate"),
    (
        "train.compiler_options",
        lambda: dg.train.compiler_options(platform="cuda:0"),
        ValueError,
        "platform 'cuda:0'",
    ),
    (
        "train.save_checkpoint",
        lambda: U(dg.train.save_checkpoint)("/tmp/unused.ckpt", {"model": TINY}),
        TypeError,
        "state must be a TrainState",
    ),
    (
        "train.load_checkpoint",
        lambda: U(dg.train.load_checkpoint)("/no/such/file.ckpt", None),
        TypeError,
        "like must be a TrainState",
    ),
    # ------------------------------------------------------------------ dg.plotting
    ("plotting.scatter", lambda: dg.plotting.scatter(_ax(), jnp.zeros(3)), ValueError, r"x"),
    ("plotting.hist2d", lambda: dg.plotting.hist2d(_ax(), X, bins=0), ValueError, "bins"),
    (
        "plotting.density_heatmap",
        lambda: dg.plotting.density_heatmap(_ax(), lambda x: x[..., 0], n_grid=1),
        ValueError,
        "n_grid",
    ),
    ("plotting.scatter_grid", lambda: dg.plotting.scatter_grid({}), ValueError, "sets"),
    ("plotting.heatmap", lambda: dg.plotting.heatmap(_ax(), jnp.zeros(3)), ValueError, "values"),
    ("plotting.trajectories", lambda: dg.plotting.trajectories(_ax(), X), ValueError, "xs"),
    ("plotting.loss_curve", lambda: dg.plotting.loss_curve(_ax(), {}), ValueError, "history"),
    (
        "plotting.running_mean",
        lambda: dg.plotting.running_mean(np.ones(5), 0),
        ValueError,
        "window",
    ),
    ("plotting.ema", lambda: dg.plotting.ema(np.ones(5), 2.0), ValueError, "alpha"),
    ("plotting.error_vs_nfe", lambda: dg.plotting.error_vs_nfe(_ax(), [{}]), ValueError, "rows"),
    ("plotting.hutchinson", lambda: dg.plotting.hutchinson(_ax(), [{"a": 1}]), ValueError, "rows"),
    ("ebm.EnergyModel", lambda: dg.ebm.EnergyModel(5), TypeError, "net must be a callable"),
    ("ebm.ReplayBuffer", lambda: dg.ebm.ReplayBuffer(jnp.zeros(3)), ValueError, "capacity"),
    (
        "sharding.check_divisible",
        lambda: dg.sharding.check_divisible("batch_size", 4, _mesh(), "model"),
        ValueError,
        "axis 'model'",
    ),
    ("solve.DPMSolverPP", lambda: dg.solve.DPMSolverPP(4), ValueError, "order must be in 1..3"),
    ("solve.UniPC", lambda: dg.solve.UniPC(3), ValueError, "order must be 1 or 2"),
    ("solve.EDMHeun", lambda: dg.solve.EDMHeun(-1.0), ValueError, "churn"),
    (
        "solve.time_grid",
        lambda: dg.solve.time_grid(dg.paths.get_path("vp"), "cosine", 4, 0.0, 1.0),
        ValueError,
        "grid",
    ),
    (
        "solve.optimize_grid",
        lambda: dg.solve.optimize_grid(
            dg.groundtruth.velocity_field("8gaussians", "vp"), X, solver="unipc", steps=4, iters=0
        ),
        ValueError,
        "iters",
    ),
    (
        "solve.sample_ode/fewstep-grid-array",
        lambda: dg.solve.sample_ode(
            dg.groundtruth.velocity_field("8gaussians", "vp"),
            X,
            solver="unipc",
            grid=jnp.array([0.0, 0.6, 0.5, 1.0]),
        ),
        ValueError,
        "strictly increasing",
    ),  # fmt: skip
    (
        "solve.sample_ode/fewstep-steps",
        lambda: dg.solve.sample_ode(
            dg.groundtruth.velocity_field("8gaussians", "vp"), X, solver="dpm++2m"
        ),
        ValueError,
        "steps=<int>",
    ),  # fmt: skip
]


def _mesh():
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()[:1]), ("data",))


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
    plt.close("all")


def test_every_public_function_has_a_bad_input_case():
    """Guard: a new public function or class gets a case here (functions without arguments,
    and tuples/constants, excepted)."""
    covered = {c[0].split("/")[0] for c in CASES}
    no_args = {"couplings.independent", "couplings.Independent", "couplings.Coupling",
               "metrics.MMDResult", "metrics.FloorStats", "couplings.Straightness",
               "train.TrainResult", "train.TrainState", "solve.Solution",
               "solve.FewStepSampler",  # abstract base of the few-step samplers
               "sharding.gather",  # any pytree is valid input
               "train.unrolled_threefry"}  # fmt: skip
    missing = []
    for mod_name in dg.__all__:
        mod = getattr(dg, mod_name)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not callable(obj) or f"{mod_name}.{name}" in no_args:
                continue
            if isinstance(obj, type) and issubclass(obj, dg.paths.GaussianPath):
                continue  # the path classes share GaussianPath's methods (cases above)
            if f"{mod_name}.{name}" not in covered:
                missing.append(f"{mod_name}.{name}")
    assert not missing, f"public callables without a bad-input case: {missing}"


# ---------------------------------------------------------------- runtime: non-finite values

X0 = jnp.ones((3, 2))
NAN_06 = nan_after(0.6)  # finite for t <= 0.6, NaN after: the rk4 step 0.6 -> 0.7 meets it


@pytest.mark.parametrize("solver,step", [("rk4", 7), ("euler", 8)])  # euler: f at the step start
def test_fixed_step_ode_nan_at_06_raises_naming_step_and_time(solver, step):
    want = rf"sample_ode: a non-finite value .* step {step} of 10 \(t = 0\.{step}\)"
    with pytest.raises(RuntimeError, match=want):
        dg.solve.sample_ode(NAN_06, X0, solver=solver, steps=10)


def test_fixed_step_hint_never_mentions_tolerances():
    with pytest.raises(RuntimeError) as err:
        dg.solve.sample_ode(NAN_06, X0, solver="rk4", steps=10)
    assert "rtol" not in str(err.value) and "atol" not in str(err.value)


def test_fixed_step_ode_opt_out_returns_flagged_result():
    sol = dg.solve.sample_ode(NAN_06, X0, solver="rk4", steps=10, throw=False)
    assert sol.ok is False and sol.fail_step == 7 and sol.fail_t == pytest.approx(0.7)
    ok = dg.solve.sample_ode(field, X0, solver="rk4", steps=10, throw=False)
    assert ok.ok is True and ok.fail_step == 0 and np.isnan(ok.fail_t)
    np.testing.assert_allclose(ok.x, np.exp(-1.0) * np.ones((3, 2)), rtol=1e-5)


def test_opt_out_stays_inside_jit_and_default_raises_inside_jit():
    sol = jax.jit(lambda x: dg.solve.sample_ode(NAN_06, x, solver="rk4", steps=10, throw=False))(X0)
    assert not bool(sol.ok) and int(sol.fail_step) == 7
    assert float(sol.fail_t) == pytest.approx(0.7)
    with pytest.raises(Exception, match=r"step 7 of 10 \(t = 0\.7\)"):
        jax.jit(lambda x: dg.solve.sample_ode(NAN_06, x, solver="rk4", steps=10).x)(X0)


def test_check_keeps_grad_and_vmap():
    def final(a):
        return dg.solve.sample_ode(lambda t, x, s: -s * x, X0, solver="rk4", steps=8, args=a).x

    g = jax.grad(lambda a: final(a).sum())(1.0)
    np.testing.assert_allclose(g, -6.0 * np.exp(-1.0), rtol=1e-4)  # d/da sum(e^-a) = -6 e^-a
    out = jax.vmap(final)(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(out[:, 0, 0], np.exp([-1.0, -2.0]), rtol=1e-4)


def test_adaptive_nan_field_is_reported_as_a_non_finite_field_not_stiffness():
    with pytest.raises(RuntimeError, match="vector field returned a non-finite value") as err:
        dg.solve.sample_ode(NAN_06, X0, max_steps=64)
    assert "not stiffness" in str(err.value) and "t = 0.6" in str(err.value)
    sol = dg.solve.sample_ode(NAN_06, X0, max_steps=64, throw=False)
    assert sol.ok is False and sol.fail_t == pytest.approx(0.6, abs=1e-3)


def test_failed_implicit_solve_reports_diffrax_reason():
    import diffrax as dfx

    solver = dfx.Kvaerno3(root_finder=dfx.VeryChord(rtol=1e-6, atol=1e-6))
    with pytest.raises(RuntimeError, match="Diffrax reports: Nonlinear solve diverged"):
        dg.solve.sample_ode(lambda t, x, a: -1e6 * x**3, 10 * X0, solver=solver, steps=2)


def test_sample_sde_nan_raises_and_opt_out():
    sde = (NAN_06, lambda t, x, a: 0.1)
    with pytest.raises(RuntimeError, match=r"sample_sde: .* step 8 of 10 \(t = 0\.8\)"):
        dg.solve.sample_sde(sde, X0, key=KEY, steps=10)
    sol = dg.solve.sample_sde(sde, X0, key=KEY, steps=10, throw=False)
    assert sol.ok is False and sol.fail_step == 8


EPS_NAN = nan_after(0.55)  # DDPM model time t_k = 1 - k/T: k = 4 is t = 0.6
SAMPLERS = [
    ("ddpm_sample", lambda **k: dg.solve.ddpm_sample(EPS_NAN, KEY, X0, SCHED, **k),
     r"update 7 of 10 \(k = 4 -> 3, model time t = 0\.6\)", 7),
    ("ddim_sample", lambda **k: dg.solve.ddim_sample(EPS_NAN, X0, SCHED, steps=5, **k),
     r"update 4 of 5 \(k = 4 -> 2, model time t = 0\.6\)", 4),
    ("langevin_mcmc",
     lambda **k: dg.solve.langevin_mcmc(lambda t, x, a: 10 * x, X0, key=KEY, step_size=1.0,
                                        num_steps=60, **k),
     r"step \d+ of 60", None),
    ("predictor_corrector",
     lambda **k: dg.solve.predictor_corrector((NAN_06, lambda t, x, a: 0.1), score, X0, key=KEY,
                                              steps=10, **k),
     r"step 8 of 10 \(t = 0\.8\)", 8),
    ("annealed_langevin",
     lambda **k: dg.solve.annealed_langevin(lambda s, x, a: 10 * x / s, X0, jnp.array([1.0, 0.5]),
                                            key=KEY, step_size=0.5, steps_per_level=20, **k),
     r"step \d+ of 20 at noise level \d of 2", None),
]  # fmt: skip


@pytest.mark.parametrize("call,match,step", [s[1:] for s in SAMPLERS], ids=[s[0] for s in SAMPLERS])
def test_discrete_samplers_raise_on_non_finite_state(call, match, step):
    with pytest.raises(RuntimeError, match="non-finite value .*" + match):
        call()
    sol = call(throw=False)
    assert sol.ok is False and sol.fail_step > 0
    if step is not None:
        assert sol.fail_step == step


def test_sample_sde_memoised_noise_check_sees_each_diffusion_and_args():
    """sample_sde memoises its structural checks of the diffusion (issue 12): another diffusion,
    or the same one on args of another shape, is checked anew, on every call."""
    from diffeqgen import _memo

    def drift(t, x, a):
        return -x

    def additive(t, x, a):
        return jnp.ones_like(x)

    def multiplicative(t, x, a):
        return x

    for _ in range(2):
        sol = dg.solve.sample_sde((drift, additive), X0, key=KEY, steps=4, solver="sra1")
        assert sol.ok and np.all(np.isfinite(np.asarray(sol.x)))
        with pytest.raises(ValueError, match="ADDITIVE noise only"):
            dg.solve.sample_sde((drift, multiplicative), X0, key=KEY, steps=4, solver="sra1")

    def noise_from_args(t, x, a):  # scalar noise for a 0-d a, matrix noise (2, m) for a (2, m)
        return a

    def run(a):
        return np.asarray(dg.solve.sample_sde((drift, noise_from_args), X0, key=KEY, steps=4,
                                              args=a).x)  # fmt: skip

    scalar, matrix = jnp.asarray(0.5), jnp.full((2, 3), 0.5)
    got = [run(scalar), run(matrix), run(scalar)]
    _memo._ABSTRACT_CACHE.clear()
    fresh = [run(scalar)]
    _memo._ABSTRACT_CACHE.clear()
    fresh.append(run(matrix))
    np.testing.assert_array_equal(got[0], fresh[0])
    np.testing.assert_array_equal(got[2], fresh[0])
    np.testing.assert_array_equal(got[1], fresh[1])
    assert not np.array_equal(fresh[0], fresh[1])  # the two noise structures differ


def nan_below(t0):
    """A field that is finite after ``t0`` and NaN before it (met by backward solves)."""

    def f(t, x, args):
        return jnp.where(t < t0, jnp.nan, 1.0) * x

    return f


def test_cnf_log_prob_fixed_steps_nan_raises_and_opt_out_flags():
    f = nan_below(0.35)  # integrated backward from t1 = 1: the rk4 step 0.4 -> 0.3 meets it
    with pytest.raises(RuntimeError, match=r"cnf.log_prob: .* step 7 of 10 \(t = 0\.3\)"):
        dg.cnf.log_prob(f, X0, solver="rk4", steps=10)
    log_p, nfe, ok = dg.cnf.log_prob(f, X0, solver="rk4", steps=10, throw=False)
    assert not np.any(np.asarray(ok)) and np.all(np.isnan(np.asarray(log_p)))
    with pytest.raises(RuntimeError, match=r"cnf.log_prob: .*step 6 of 8 \(t = 0\.25\)"):
        dg.cnf.nll_loss(f, None, X0)  # nll_loss's defaults: rk4, 8 fixed steps
    assert np.isnan(float(dg.cnf.nll_loss(f, None, X0, throw=False)))


def test_cnf_log_prob_adaptive_nan_field_not_reported_as_max_steps():
    with pytest.raises(RuntimeError, match="vector field returned a non-finite value"):
        dg.cnf.log_prob(nan_below(0.4), X0, max_steps=64)


def test_cnf_log_prob_checks_x_up_front_and_works_under_jit():
    with pytest.raises(ValueError, match="x must be finite, got 1 non-finite"):
        dg.cnf.log_prob(field, X_NAN)
    lp, _ = jax.jit(lambda x: dg.cnf.log_prob(field, x, steps=4, solver="rk4"))(X0)
    # f = -x: z(0) = e^{1} x, log p = log N(e x) + d (div f = -d, integrated over [0, 1])
    want = -0.5 * np.e**2 * 2 - np.log(2 * np.pi) + 2.0
    np.testing.assert_allclose(lp, want, rtol=1e-3)


# ---------------------------------------------------------------- training: seeds, guards


def test_fit_accepts_an_int_seed_like_the_key_it_names():
    kw = dict(optimizer=OPT, num_steps=2, batch_size=2, progress=False)
    a = dg.train.fit(TINY, FM, X0, key=3, **kw)
    b = dg.train.fit(TINY, FM, X0, key=jr.key(3), **kw)
    leaves = zip(
        jax.tree_util.tree_leaves(a.model), jax.tree_util.tree_leaves(b.model), strict=True
    )
    for u, v in leaves:
        assert np.array_equal(np.asarray(u), np.asarray(v))


def test_fit_reports_a_failing_check_inside_the_loss_with_the_steps(tmp_path):
    class Field(eqx.Module):  # a field that is NaN for t < 0.35
        w: jax.Array

        def __call__(self, t, x, args):
            return jnp.where(t < 0.35, jnp.nan, 1.0) * self.w * x

    with pytest.raises(FloatingPointError, match=r"steps 1\.\.2: cnf\.log_prob: .*step 6 of 8"):
        dg.train.fit(Field(jnp.ones(2)), dg.cnf.nll_loss, X0, optimizer=OPT, key=0, num_steps=2,
                     batch_size=2, progress=False)  # fmt: skip


def test_few_step_sampler_nan_raises_and_opt_out_flags():
    path = dg.paths.get_path("linear")
    with pytest.raises(RuntimeError, match=r"sample_ode: a non-finite value .*'dpm\+\+2m'"):
        dg.solve.sample_ode(NAN_06, X0, solver="dpm++2m", steps=5, path=path)
    sol = dg.solve.sample_ode(NAN_06, X0, solver="dpm++2m", steps=5, path=path, throw=False)
    assert sol.ok is False and not np.all(np.isfinite(np.asarray(sol.x)))
    jitted = jax.jit(
        lambda x: dg.solve.sample_ode(NAN_06, x, solver="unipc", steps=5, path=path, throw=False)
    )(X0)
    assert not bool(jitted.ok)
    fine = dg.solve.sample_ode(nan_after(2.0), X0, solver="dpm++2m", steps=5, path=path)
    assert fine.ok is True and np.all(np.isfinite(np.asarray(fine.x)))


def test_mala_stuck_chain_raises_and_opt_out_flags():
    def energy(t, x, args):  # NaN where x[0] > 3: a chain started there is stuck
        return 0.5 * jnp.sum(x**2) + jnp.where(x[0] > 3.0, jnp.nan, 0.0)

    x0 = jnp.array([[0.0, 0.0], [5.0, 0.0]])
    kw = dict(key=jr.key(0), step_size=0.1, num_steps=10)
    with pytest.raises(RuntimeError, match=r"mala: a non-finite value .* at step 1 of 10"):
        dg.ebm.mala(energy, x0, **kw)
    sol = dg.ebm.mala(energy, x0, **kw, throw=False)
    assert sol.ok is False and sol.fail_step == 1
    fine = dg.ebm.mala(energy, x0[:1], **kw)
    assert fine.ok is True and fine.num_accepted.shape == (1,)
