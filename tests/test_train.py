import os

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from helpers import assert_trees_equal

from diffeqgen import train
from diffeqgen.nn import MLP
from diffeqgen.train import (
    TrainState,
    fit,
    init_state,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
)


def regression_loss(model, key, batch):
    """Fit y = sin(x): rows of ``batch`` are (x, y)."""
    del key
    pred = jax.vmap(model)(batch[:, :1])[:, 0]
    return jnp.mean((pred - batch[:, 1]) ** 2)


def noisy_loss(model, key, batch):
    """Regression plus a key-dependent term, so the per-step key matters."""
    noise = 0.01 * jr.normal(key, (batch.shape[0],))
    pred = jax.vmap(model)(batch[:, :1])[:, 0]
    return jnp.mean((pred - batch[:, 1] + noise) ** 2)


def sin_sampler(key, n):
    x = jr.uniform(key, (n, 1), minval=-3.0, maxval=3.0)
    return jnp.concatenate([x, jnp.sin(x)], axis=1)


def small_net(key):
    return eqx.nn.MLP(1, 1, width_size=16, depth=2, activation=jnp.tanh, key=key)


@pytest.fixture(scope="module")
def sin_data():
    x = jnp.linspace(-3, 3, 200)[:, None]
    return jnp.concatenate([x, jnp.sin(x)], axis=1)


OPT = optax.adam(1e-2)  # one object, so repeated fits reuse the compiled step


def run(data, num_steps=300, **kw):
    kw.setdefault("optimizer", OPT)
    kw.setdefault("key", jr.key(1))
    kw.setdefault("batch_size", 32)
    kw.setdefault("steps_per_call", 60)
    kw.setdefault("progress", False)
    return fit(small_net(jr.key(0)), noisy_loss, data, num_steps=num_steps, **kw)


def assert_history_equal(h1, h2):
    assert set(h1) == set(h2) == {"step", "loss", "val_step", "val_loss"}
    for k in h1:
        np.testing.assert_array_equal(h1[k], h2[k])


# ---------------------------------------------------------------- learning
@pytest.mark.parametrize("source", ["array", "sampler"])
def test_loss_falls_on_regression(sin_data, source):
    data = sin_data if source == "array" else sin_sampler
    model = small_net(jr.key(0))
    before = float(regression_loss(model, None, sin_data))
    res = fit(model, regression_loss, data, optimizer=OPT, key=jr.key(1), num_steps=600,
              batch_size=32, steps_per_call=60, progress=False)  # fmt: skip
    after = float(regression_loss(res.ema_model, None, sin_data))
    assert after < 0.02 * before and after < 0.01
    h = res.history
    np.testing.assert_array_equal(h["step"], np.arange(1, 601))
    assert h["loss"].shape == (600,) and h["loss"][-50:].mean() < 0.05 * h["loss"][:50].mean()
    assert res.steps_per_second > 0 and res.compile_seconds > 0
    assert res.wall_seconds >= res.compile_seconds
    assert isinstance(res.opt_state, tuple)


def test_chunking_does_not_change_results(sin_data):
    ref = run(sin_data, num_steps=230)  # 60 per call: the last call masks 10 of 60 steps
    for spc in (7,):
        other = run(sin_data, num_steps=230, steps_per_call=spc)
        assert_trees_equal(ref.model, other.model)
        assert_trees_equal(ref.ema_model, other.ema_model)
        assert_history_equal(ref.history, other.history)


def test_validation_on_ema_model(sin_data):
    val = sin_data[::7]
    res = fit(small_net(jr.key(0)), regression_loss, sin_data, optimizer=OPT,
              key=jr.key(1), num_steps=200, batch_size=32, steps_per_call=60, val_data=val,
              val_every=50, progress=False)  # fmt: skip
    np.testing.assert_array_equal(res.history["val_step"], [50, 100, 150, 200])
    assert np.all(np.isfinite(res.history["val_loss"]))
    expected = regression_loss(res.ema_model, None, val)
    np.testing.assert_allclose(res.history["val_loss"][-1], expected, rtol=1e-5)
    assert res.history["val_loss"][-1] < res.history["val_loss"][0]
    # a sampler works as validation data too (one fixed batch, default interval steps_per_call)
    res2 = run(sin_data, num_steps=120, val_data=sin_sampler)
    np.testing.assert_array_equal(res2.history["val_step"], [60, 120])


def test_sampler_module_with_arrays(sin_data):
    class Sampler(eqx.Module):
        scale: jax.Array

        def __call__(self, key, n):
            return self.scale * sin_sampler(key, n)

    res = run(Sampler(jnp.array(1.0)), num_steps=50)
    assert res.history["loss"].shape == (50,)


def test_ema_decay_zero_tracks_model_and_frozen_fourier_frequencies():
    net = MLP(2, 1, width=8, depth=1, embedding="fourier", key=jr.key(0))

    def loss(model, key, batch):
        return jnp.mean(jax.vmap(model)(batch[:, 0], batch) ** 2)

    opt = make_optimizer(1e-2, weight_decay=0.1, grad_clip=1.0)
    res = fit(net, loss, sin_sampler, optimizer=opt, key=jr.key(1), num_steps=40,
              batch_size=8, ema_decay=0.0, steps_per_call=20, progress=False)  # fmt: skip
    freq = np.asarray(net.embed.frequencies)
    np.testing.assert_array_equal(res.model.embed.frequencies, freq)
    np.testing.assert_array_equal(res.ema_model.embed.frequencies, freq)
    for a, b in zip(
        jax.tree_util.tree_leaves(res.model), jax.tree_util.tree_leaves(res.ema_model), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_progress_bar_reports_steps_per_second(sin_data, capsys):
    run(sin_data, num_steps=120, progress=True)
    err = capsys.readouterr().err
    assert "120/120" in err and "steps/s" in err and "loss=" in err


# ---------------------------------------------------------------- checkpoints
def test_resume_reproduces_uninterrupted_run_bit_for_bit(sin_data, tmp_path):
    kw = {"val_data": sin_data[::5], "val_every": 40}
    straight = run(sin_data, 300, checkpoint=tmp_path / "a.ckpt", **kw)
    first = run(sin_data, 200, checkpoint=tmp_path / "b.ckpt", checkpoint_every=70, **kw)
    assert first.history["step"][-1] == 200
    resumed = run(sin_data, 300, checkpoint=tmp_path / "b.ckpt", resume=True, **kw)
    assert_trees_equal(straight.model, resumed.model)
    assert_trees_equal(straight.ema_model, resumed.ema_model)
    assert_trees_equal(straight.opt_state, resumed.opt_state)
    assert_history_equal(straight.history, resumed.history)
    # resuming a finished run trains nothing and returns the same state
    again = run(sin_data, 300, checkpoint=tmp_path / "b.ckpt", resume=True, **kw)
    assert_trees_equal(again.model, straight.model)
    with pytest.raises(ValueError, match="num_steps=100"):
        run(sin_data, 100, checkpoint=tmp_path / "b.ckpt", resume=True, **kw)


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = small_net(jr.key(0))
    opt = optax.adam(1e-3)
    state = init_state(model, opt, key=jr.key(3))
    state = state._replace(step=17, history={**state.history, "loss": np.arange(17.0)})
    path = tmp_path / "sub" / "state.ckpt"
    save_checkpoint(path, state)
    assert not os.path.exists(str(path) + ".tmp")
    loaded = load_checkpoint(path, init_state(model, opt, key=jr.key(0)))
    assert isinstance(loaded, TrainState) and loaded.step == 17
    assert_trees_equal(loaded.model, model)
    assert_trees_equal(loaded.opt_state, state.opt_state)
    np.testing.assert_array_equal(jr.key_data(loaded.key), jr.key_data(jr.key(3)))
    np.testing.assert_array_equal(loaded.history["loss"], np.arange(17.0))
    other = init_state(eqx.nn.MLP(1, 1, 8, 2, key=jr.key(0)), opt, key=jr.key(0))
    with pytest.raises(ValueError, match="could not be loaded"):
        load_checkpoint(path, other)
    (tmp_path / "junk").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a diffeqgen checkpoint"):
        load_checkpoint(tmp_path / "junk", state)


class Line(eqx.Module):
    w: jax.Array


def sqrt_loss(model, key, batch):
    """Loss w, NaN once w <= 0; SGD with lr 1/64 gives w = 1 - k/64 exactly after k steps."""
    del key, batch
    return jnp.where(model.w > 0, model.w, jnp.nan)


class TwoWeights(eqx.Module):
    u: jax.Array
    w: jax.Array


def kink_loss(model, key, batch):
    """Loss u + w, finite, whose w-gradient is NaN (1 + 0 * inf) where w = 1 - 10/64 exactly.

    SGD at lr 1/64 moves u and w by exactly -1/64 a step: at step 11 the loss is 2 - 20/64.
    """
    del key, batch
    return model.u + model.w + 0.0 * jnp.sqrt(jnp.maximum(model.w - (1 - 10 / 64), 0.0))


def overflow_loss(model, key, batch):
    """Finite loss and gradient (3e38 on w); an SGD step of lr 10 overflows w to -inf."""
    del key, batch
    return model.u + 3e38 * model.w


@pytest.mark.parametrize(
    "loss, step, value",
    [(kink_loss, 11, 2 - 20 / 64), (overflow_loss, 1, 1 + 3e38)],
    ids=["nan-gradient", "inf-parameter"],
)
def test_non_finite_gradient_or_parameter_with_finite_loss_names_step(loss, step, value):
    """The per-step check covers every gradient and parameter leaf, not only the loss.

    SGD at lr 1/64 moves w by exactly -1/64 a step, so the NaN gradient of ``kink_loss`` comes
    at step 11 with the loss and (the update skipped by ``optax.apply_if_finite``) the parameters
    still finite; ``overflow_loss`` overflows the second parameter at step 1 with a finite loss
    and gradient. Each case is caught by one half of the check only.
    """
    # apply_if_finite skips the NaN update: the parameters stay finite, only the gradient is not
    opt = optax.apply_if_finite(optax.sgd(1 / 64), 100) if loss is kink_loss else optax.sgd(10.0)
    model = TwoWeights(jnp.array(1.0), jnp.array(1.0))
    with pytest.raises(FloatingPointError, match=f"at step {step} .loss = ") as info:
        fit(model, loss, jnp.zeros((4, 1)), optimizer=opt, key=jr.key(0),
            num_steps=30, batch_size=2, steps_per_call=8, progress=False)  # fmt: skip
    assert np.isfinite(value) and f"loss = {np.float32(value)}" in str(info.value)


def test_pair_check_equals_separate_checks():
    """``_all_finite_pair(g, p)`` is ``_all_finite(g) & _all_finite(p)`` wherever a NaN/inf is."""
    from diffeqgen._train_step import _all_finite, _all_finite_pair

    tree = {"a": jnp.ones((3, 2)), "b": jnp.ones(4), "c": jnp.ones(())}
    cases = [(tree, tree)]
    for leaf in tree:
        for bad in (jnp.nan, jnp.inf, -jnp.inf):
            broken = {**tree, leaf: tree[leaf].at[(0,) * tree[leaf].ndim].set(bad)}
            cases += [(broken, tree), (tree, broken)]
    for g, p in cases:
        want = bool(_all_finite(g) & _all_finite(p))
        assert bool(_all_finite_pair(g, p)) == want
        assert bool(jax.jit(_all_finite_pair)(g, p)) == want
    assert not bool(_all_finite_pair(cases[1][0], {"x": jnp.ones(2)}))  # other structure


def test_non_finite_loss_names_step_and_keeps_last_checkpoint(tmp_path):
    path = tmp_path / "run.ckpt"
    model = Line(jnp.array(1.0))
    with pytest.raises(FloatingPointError, match="step 65") as info:
        fit(model, sqrt_loss, jnp.zeros((4, 1)), optimizer=optax.sgd(1 / 64), key=jr.key(0),
            num_steps=100, batch_size=2, steps_per_call=50, checkpoint=path,
            checkpoint_every=20, progress=False)  # fmt: skip
    assert str(path) in str(info.value) and "step 60" in str(info.value)
    state = load_checkpoint(path, init_state(model, optax.sgd(1 / 64), key=jr.key(0)))
    assert state.step == 60
    assert float(state.model.w) == 1 - 60 / 64
    assert np.all(np.isfinite(state.history["loss"])) and state.history["loss"].shape == (60,)
    # without a checkpoint the message says so
    with pytest.raises(FloatingPointError, match="step 65.*no checkpoint"):
        fit(model, sqrt_loss, jnp.zeros((4, 1)), optimizer=optax.sgd(1 / 64), key=jr.key(0),
            num_steps=100, batch_size=2, progress=False)  # fmt: skip


def test_interrupted_checkpoint_write_leaves_previous_intact(sin_data, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    run(sin_data, 60, checkpoint=path)
    before = path.read_bytes()

    def broken_serialise(f, tree, *args, **kwargs):
        f.write(b"\x93NUMPY partial leaf data")
        f.flush()
        raise OSError("simulated crash mid-write")

    monkeypatch.setattr(eqx, "tree_serialise_leaves", broken_serialise)
    with pytest.raises(OSError, match="simulated crash"):
        run(sin_data, 120, checkpoint=path, resume=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not os.path.exists(str(path) + ".tmp")
    like = init_state(small_net(jr.key(0)), OPT, key=jr.key(1))
    assert load_checkpoint(path, like).step == 60
    # and the run can continue from it
    assert run(sin_data, 90, checkpoint=path, resume=True).history["step"][-1] == 90


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_steps": 0}, ValueError, "num_steps"),
        ({"num_steps": -5}, ValueError, "num_steps"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"steps_per_call": 0}, ValueError, "steps_per_call"),
        ({"ema_decay": 1.0}, ValueError, "ema_decay"),
        ({"ema_decay": -0.5}, ValueError, "ema_decay"),
        ({"optimizer": "adam"}, TypeError, "optimizer"),
        ({"data": jnp.zeros((0, 2))}, ValueError, "data must have at least 1 row"),
        ({"data": jnp.ones((5, 2), jnp.int32)}, TypeError, "data must be a floating"),
        ({"data": jnp.array([[0.0, 1.0], [jnp.nan, 1.0]])}, ValueError, "data must be finite"),
        ({"data": lambda key, n: jnp.zeros((3, 2))}, ValueError, "returned"),
        ({"val_every": 10}, ValueError, "val_data"),
        ({"val_data": jnp.zeros((0, 2))}, ValueError, "val_data"),
        ({"checkpoint_every": 10}, ValueError, "checkpoint"),
        ({"resume": True}, ValueError, "checkpoint"),
        ({"loss_fn": lambda m, k, b: jnp.zeros(3)}, ValueError, "scalar"),
    ],
)
def test_fit_rejects_bad_input(sin_data, kwargs, error, match):
    config = {
        "model": small_net(jr.key(0)),
        "loss_fn": regression_loss,
        "data": sin_data,
        "optimizer": optax.adam(1e-3),
        "key": jr.key(0),
        "num_steps": 10,
        "batch_size": 4,
        "progress": False,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        fit(config.pop("model"), config.pop("loss_fn"), config.pop("data"), **config)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((-1e-3,), {}, "learning_rate must be a finite number > 0, got -0.001"),
        ((0.0,), {}, "learning_rate"),
        ((float("nan"),), {}, "learning_rate"),
        ((1e-3,), {"grad_clip": -1.0}, "grad_clip"),
        ((1e-3,), {"weight_decay": -0.1}, "weight_decay"),
        ((1e-3,), {"warmup": -1}, "warmup"),
        ((1e-3,), {"schedule": "linear"}, "schedule 'linear'; expected one of: constant, cosine"),
        ((1e-3,), {"schedule": "cosine"}, "num_steps"),
        ((1e-3,), {"schedule": "cosine", "num_steps": 10, "warmup": 10}, "num_steps"),
    ],
)
def test_make_optimizer_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(*args, **kwargs)


def test_make_optimizer_schedules():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    grads = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    for kw in ({}, {"schedule": "cosine", "num_steps": 10, "warmup": 2}, {"warmup": 3}):
        opt = make_optimizer(1e-2, **kw)
        updates, _ = opt.update(grads, opt.init(params), params)
        assert all(np.all(np.isfinite(u)) for u in jax.tree_util.tree_leaves(updates))
    # warm-up starts at learning rate 0: the first update is exactly zero
    opt = make_optimizer(1e-2, warmup=3)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_array_equal(updates["w"], 0.0)
    assert "fit" in train.__all__ and "make_optimizer" in train.__all__


# ---------------------------------------------------------------- EMA, schedule, weight decay
def _slope_loss(model, key, batch):
    """Loss w: SGD with learning rate 1/64 moves w to 1 - k/64 exactly after k steps."""
    del key, batch
    return model.w


def test_ema_matches_hand_recursion():
    """EMA at decay 0.9 with the documented warm-up d_s = min(0.9, (1 + s) / (10 + s)).

    The parameter path is exact (p_k = 1 - k/64), so the EMA after 100 steps is a scalar
    recursion: e <- e + (1 - d_s) (p_{s+1} - e). Chunks of 30 steps (the last one masked)
    must not change it. The answer is far from the model (0.14 apart), from the EMA with
    decay 0.8 (0.08 apart) and from the EMA without warm-up (0.0019 apart, 450x the
    tolerance).
    """
    num_steps = 100

    def hand(decay, warmup=True):
        e = 1.0
        for s in range(num_steps):
            d = min(decay, (1 + s) / (10 + s)) if warmup else decay
            e += (1 - d) * ((1 - (s + 1) / 64) - e)
        return e

    res = fit(Line(jnp.array(1.0)), _slope_loss, jnp.zeros((4, 1)), optimizer=optax.sgd(1 / 64),
              key=jr.key(0), num_steps=num_steps, batch_size=2, ema_decay=0.9,
              steps_per_call=30, progress=False)  # fmt: skip
    assert float(res.model.w) == 1 - num_steps / 64
    expected = hand(0.9)
    np.testing.assert_allclose(float(res.ema_model.w), expected, rtol=1e-5)
    for wrong in (1 - num_steps / 64, hand(0.9, warmup=False), hand(0.8)):
        assert abs(wrong - expected) > 1e-3, wrong


def _adam_rates(opt, num_steps):
    """Learning rate at each step, read off Adam's update for a constant gradient of 1.

    With g = 1 always, Adam's bias-corrected moments are 1 and 1 (to float32 rounding,
    ~1e-5 relative), so the update is -lr_k / (1 + 1e-8): minus the scheduled rate.
    """
    params = {"w": jnp.zeros(())}
    grads = {"w": jnp.ones(())}
    state, rates = opt.init(params), []
    for _ in range(num_steps):
        updates, state = opt.update(grads, state, params)
        rates.append(-float(updates["w"]))
    return np.asarray(rates)


def test_make_optimizer_schedule_values():
    lr, n, w = 0.1, 20, 5
    k = np.arange(n + 3)  # past num_steps the cosine stays at 0
    cosine = 0.5 * lr * (1 + np.cos(np.pi * np.minimum(k, n) / n))
    got = _adam_rates(make_optimizer(lr, schedule="cosine", num_steps=n), n + 3)
    np.testing.assert_allclose(got, cosine, rtol=1e-4, atol=1e-7)
    # Linear warm-up from 0 over w steps, then the cosine from lr to 0 over the n - w others.
    after = 0.5 * lr * (1 + np.cos(np.pi * np.clip(k - w, 0, n - w) / (n - w)))
    warm_cos = np.where(k < w, lr * k / w, after)
    got = _adam_rates(make_optimizer(lr, schedule="cosine", num_steps=n, warmup=w), n + 3)
    np.testing.assert_allclose(got, warm_cos, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got[[0, w, n]], [0.0, lr, 0.0], rtol=1e-4, atol=1e-7)
    # Constant with warm-up: lr k / w, then lr.
    got = _adam_rates(make_optimizer(lr, warmup=w), n)
    np.testing.assert_allclose(got, lr * np.minimum(k[:n], w) / w, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(_adam_rates(make_optimizer(lr), 3), lr, rtol=1e-4)


def test_weight_decay_applies_to_matrices_only():
    """make_optimizer's design: decoupled decay on parameters with ndim >= 2, never on biases.

    With zero gradients Adam's step is 0, so AdamW's update is exactly -lr * wd * p on the
    matrices and 0 on vectors and scalars; through `fit`, K steps of a zero-gradient loss
    scale a Linear layer's weight by (1 - lr wd)^K and leave its bias unchanged.
    """
    lr, wd = 0.1, 0.5
    opt = make_optimizer(lr, weight_decay=wd)
    params = {"w": jnp.full((2, 3), 2.0), "b": jnp.ones(3), "s": jnp.array(1.5)}
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], -lr * wd * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], 0.0)
    np.testing.assert_array_equal(updates["s"], 0.0)

    layer = eqx.nn.Linear(3, 2, key=jr.key(0))

    def zero_grad_loss(model, key, batch):
        return 0.0 * jnp.sum(jax.vmap(model)(batch))

    res = fit(layer, zero_grad_loss, jnp.ones((8, 3)), optimizer=opt, key=jr.key(0),
              num_steps=10, batch_size=4, progress=False)  # fmt: skip
    np.testing.assert_allclose(res.model.weight, layer.weight * (1 - lr * wd) ** 10, rtol=1e-5)
    np.testing.assert_array_equal(res.model.bias, layer.bias)
