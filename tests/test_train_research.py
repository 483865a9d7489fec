"""`fit` as a research tool: model signature check, pytree batches and datasets, (loss, aux),
host callbacks, training part of a model, and continuing in memory (issue 8, sections 1, 2, 6)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from helpers import assert_trees_equal

from diffeqgen.train import TrainResult, TrainState, fit, init_state, load_checkpoint

OPT = optax.adam(3e-2)  # one object, so repeated fits reuse the compiled step


# ---------------------------------------------------------------- a conditional regression
class PerClass(eqx.Module):
    """``model(t, x, c) = w[c] x + b[c]`` on one sample; the exact fit: w = (1, -2), b = (0, 1)."""

    w: jax.Array
    b: jax.Array

    def __call__(self, t, x, args):
        return self.w[args] * x + self.b[args]


W_TRUE, B_TRUE = np.array([1.0, -2.0]), np.array([0.0, 1.0])


def per_class():
    return PerClass(jnp.zeros(2), jnp.zeros(2))


def targets(x, c):
    return jnp.asarray(W_TRUE)[c][:, None] * x + jnp.asarray(B_TRUE)[c][:, None]


def unpack(batch):
    """``(x, cond)`` of a tuple or dict batch (what ``dg.losses.split_batch`` does)."""
    return (batch["x"], batch["cond"]) if isinstance(batch, dict) else batch


def cond_loss(model, key, batch):
    """Squared error of ``model(t, x_i[:1], c_i)`` against ``x_i[1:]`` (t unused, 0)."""
    del key
    xy, c = unpack(batch)
    pred = jax.vmap(model)(jnp.zeros(xy.shape[0]), xy[:, :1], c)
    return jnp.mean((pred - xy[:, 1:]) ** 2)


def cond_loss_aux(model, key, batch):
    loss = cond_loss(model, key, batch)
    return loss, {"mse": loss, "twice": 2 * loss, "rows": unpack(batch)[1].shape[0]}


def cond_dataset(n=64):
    x = jnp.linspace(-1.0, 1.0, n)[:, None]
    c = jnp.arange(n, dtype=jnp.int32) % 2
    return jnp.concatenate([x, targets(x, c)], axis=1), c


def cond_sampler(key, n):
    kx, kc = jr.split(key)
    x = jr.uniform(kx, (n, 1), minval=-1.0, maxval=1.0)
    c = jr.randint(kc, (n,), 0, 2)
    return jnp.concatenate([x, targets(x, c)], axis=1), c


def run(num_steps=200, loss=cond_loss, data=None, model=None, **kw):
    kw.setdefault("optimizer", OPT)
    kw.setdefault("key", jr.key(1))
    kw.setdefault("batch_size", 16)
    kw.setdefault("steps_per_call", 50)
    kw.setdefault("progress", False)
    data = cond_dataset() if data is None else data
    model = per_class() if model is None and kw.get("init") is None else model
    return fit(model, loss, data, num_steps=num_steps, **kw)


def assert_results_equal(r1, r2):
    assert_trees_equal(r1.model, r2.model)
    assert_trees_equal(r1.ema_model, r2.ema_model)
    assert_trees_equal(r1.opt_state, r2.opt_state)
    assert set(r1.history) == set(r2.history)
    for k in r1.history:
        np.testing.assert_array_equal(r1.history[k], r2.history[k], err_msg=k)


# ---------------------------------------------------------------- 1. the model signature
class TwoArgs(eqx.Module):
    w: jax.Array

    def __call__(self, t, x):
        return self.w * x


@pytest.mark.parametrize("batch", ["(x, cond)", "x"])
def test_two_argument_model_gives_one_clear_signature_error(batch):
    kw = {} if batch == "(x, cond)" else {"loss": sin_loss, "data": sin_data()}
    with pytest.raises(TypeError, match=r"model\(t, x, args\) on ONE sample") as info:
        run(model=TwoArgs(jnp.ones(())), **kw)
    msg = str(info.value)
    assert "diffeqgen.nn.time_concat" in msg and "TwoArgs" in msg and "shape (2,)" in msg
    assert "takes 3 positional arguments but 4 were given" in msg  # the original cause, quoted
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one error only


def test_errors_that_are_not_signature_errors_keep_their_message():
    def helper(x):
        return x

    def loss_bad_call(model, key, batch):  # an argument error in the loss, not the model
        return cond_loss(model, key, batch) + helper(1.0, 2.0)

    with pytest.raises(TypeError) as info:
        run(loss=loss_bad_call)
    assert str(info.value.args[0]).endswith("helper() takes 1 positional argument but 2 were given")
    assert "time_concat" not in str(info.value)

    def loss_value_error(model, key, batch):
        raise ValueError("boom: my own message")

    with pytest.raises(ValueError) as info:
        run(loss=loss_value_error)
    assert info.value.args == ("boom: my own message",)


# ---------------------------------------------------------------- 2. pytree batches
@pytest.mark.parametrize("layout", ["tuple", "dict"])
@pytest.mark.parametrize("source", ["dataset", "sampler"])
def test_pytree_batches_train_a_conditional_model_to_the_exact_fit(layout, source):
    def as_layout(batch):
        return {"x": batch[0], "cond": batch[1]} if layout == "dict" else batch

    if source == "dataset":
        data = as_layout(cond_dataset())
    else:

        def data(key, n):
            return as_layout(cond_sampler(key, n))

    res = run(600, data=data)
    # rows and labels stay paired: the per-class least-squares solution is recovered
    np.testing.assert_allclose(res.model.w, W_TRUE, atol=2e-3)
    np.testing.assert_allclose(res.model.b, B_TRUE, atol=2e-3)
    assert res.history["loss"][-1] < 1e-5


def test_dataset_rows_are_drawn_uniformly_and_stay_paired():
    """Each batch's rows all come from the dataset, with their own labels, uniformly."""
    n = 8
    x = jnp.arange(n, dtype=jnp.float32)[:, None]
    labels = jnp.arange(n, dtype=jnp.int32)
    seen = []

    class Const(eqx.Module):
        w: jax.Array

        def __call__(self, t, x, args):
            return self.w * x

    def loss(model, key, batch):
        xs, c = batch
        paired = jnp.all(xs[:, 0] == c.astype(xs.dtype))
        counts = jnp.bincount(c, length=n)
        jax.debug.callback(lambda p, k: seen.append((bool(p), np.asarray(k))), paired, counts)
        return jnp.mean(jax.vmap(model)(jnp.zeros(len(c)), xs, c) ** 2)

    fit(Const(jnp.ones(())), loss, (x, labels), optimizer=OPT, key=jr.key(0), num_steps=50,
        batch_size=400, steps_per_call=50, progress=False)  # fmt: skip
    assert len(seen) == 50 and all(p for p, _ in seen)
    counts = np.sum([k for _, k in seen], axis=0)  # 20,000 draws, 2,500 expected per row
    chi2 = np.sum((counts - 2500.0) ** 2 / 2500.0)
    assert chi2 < 24.3  # chi-squared, 7 degrees of freedom, level 0.001


@pytest.mark.parametrize(
    "data, error, match",
    [
        ((jnp.zeros((10, 2)), jnp.zeros(9, jnp.int32)), ValueError,
         r"share their leading axis.*data\[0\]: \(10, 2\), data\[1\]: \(9,\)"),
        ({"x": jnp.zeros((4, 2)), "cond": jnp.zeros((5, 3))}, ValueError,
         r"data\['cond'\]: \(5, 3\)"),
        ((jnp.array([[0.0], [jnp.nan]]), jnp.zeros(2, jnp.int32)), ValueError,
         r"data\[0\] must be finite"),
        ((jnp.zeros((4, 2)), jnp.int32(3)), ValueError, r"data\[1\] must have a leading axis"),
        ((jnp.zeros((0, 2)), jnp.zeros(0, jnp.int32)), ValueError, "at least 1 row"),
        ((jnp.zeros((4, 2)), np.array(["a"] * 4)), TypeError, r"data\[1\] must be a floating"),
        ((), TypeError, "pytree of arrays"),
        (lambda key, n: (jnp.zeros((n, 2)), jnp.zeros(n + 1)), ValueError,
         r"leading axis n; for n=16.*batch\[1\]: \(17,\)"),
    ],
)  # fmt: skip
def test_bad_pytree_data_is_rejected_with_the_shapes(data, error, match):
    with pytest.raises(error, match=match):
        run(10, data=data)


def test_pytree_validation_data():
    xy, c = cond_dataset(32)
    res = run(100, data=cond_dataset(), val_data=(xy, c), val_every=50)
    np.testing.assert_array_equal(res.history["val_step"], [50, 100])
    np.testing.assert_allclose(
        res.history["val_loss"][-1], cond_loss(res.ema_model, None, (xy, c)), rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"val_data\[1\]: \(31,\)"):
        run(10, val_data=(xy, c[:31]))


# ---------------------------------------------------------------- 6a. (loss, aux)
def test_aux_is_logged_per_step_and_on_validation():
    xy, c = cond_dataset(32)
    res = run(120, loss=cond_loss_aux, val_data=(xy, c), val_every=60)
    h = res.history
    aux_keys = {"mse", "twice", "rows"}
    assert set(h) == {"step", "loss", "val_step", "val_loss"} | aux_keys | {
        "val_" + k for k in aux_keys
    }
    np.testing.assert_array_equal(h["mse"], h["loss"])  # the same number, logged twice
    np.testing.assert_array_equal(h["twice"], 2 * h["loss"])
    np.testing.assert_array_equal(h["rows"], np.full(120, 16.0))  # integer aux, loss dtype
    assert h["rows"].dtype == h["loss"].dtype
    np.testing.assert_array_equal(h["val_mse"], h["val_loss"])
    np.testing.assert_array_equal(h["val_rows"], [32.0, 32.0])
    # the aux does not change training: same parameters as the scalar loss
    assert_trees_equal(res.model, run(120, val_data=(xy, c), val_every=60).model)


def test_resume_and_continue_with_aux_are_bit_exact(tmp_path):
    kw = {"loss": cond_loss_aux, "val_data": cond_dataset(32), "val_every": 40}
    straight = run(200, **kw)
    first = run(120, checkpoint=tmp_path / "a.ckpt", checkpoint_every=50, **kw)
    resumed = run(200, checkpoint=tmp_path / "a.ckpt", resume=True, **kw)
    assert_results_equal(straight, resumed)
    continued = run(200, init=first, **kw)
    assert_results_equal(straight, continued)


def test_aux_keys_appearing_later_are_nan_padded():
    first = run(100)
    second = run(150, loss=cond_loss_aux, init=first)
    assert np.all(np.isnan(second.history["mse"][:100]))
    np.testing.assert_array_equal(second.history["mse"][100:], second.history["loss"][100:])
    assert_trees_equal(second.model, run(150).model)  # the same updates either way
    third = run(200, init=second)  # and back to a scalar loss
    assert np.all(np.isnan(third.history["twice"][150:]))
    assert third.history["twice"].shape == (200,)


@pytest.mark.parametrize(
    "aux, error, match",
    [
        ({"loss": 1.0}, ValueError, "aux key 'loss' is not allowed"),
        ({"val_x": 1.0}, ValueError, "aux key 'val_x'"),
        ({"v": jnp.zeros(3)}, ValueError, r"aux\['v'\] must be a real scalar"),
        ([1.0], TypeError, "aux must be a dict"),
    ],
)
def test_bad_aux_is_rejected(aux, error, match):
    def loss(model, key, batch):
        return cond_loss(model, key, batch), aux

    with pytest.raises(error, match=match):
        run(10, loss=loss)


# ---------------------------------------------------------------- 6b. callback
def test_callback_sees_the_state_and_does_not_change_training():
    calls = []

    def callback(step, state):
        assert isinstance(state, TrainState)
        calls.append((step, state.step, len(state.history["loss"]), state.model))

    res = run(200, callback=callback, callback_every=70)
    assert [c[:3] for c in calls] == [(70, 70, 70), (140, 140, 140)]
    reference = run(70)
    assert_trees_equal(calls[0][3], reference.model)
    assert_results_equal(res, run(200))  # chunking at 70 changes nothing
    calls.clear()
    run(100, callback=callback)  # default interval: steps_per_call = 50
    assert [c[0] for c in calls] == [50, 100]


def test_callback_returning_true_stops_and_the_run_can_continue(tmp_path):
    def stop_at_100(step, state):
        return step == 100

    path = tmp_path / "run.ckpt"
    stopped = run(300, callback=stop_at_100, callback_every=25, checkpoint=path)
    assert stopped.step == 100 and stopped.history["step"][-1] == 100
    like = init_state(per_class(), OPT, key=jr.key(1))
    assert load_checkpoint(path, like).step == 100  # the stop is checkpointed
    assert_results_equal(run(300, init=stopped), run(300))


def test_callback_arguments_are_checked():
    with pytest.raises(ValueError, match="callback_every=10 needs a callback"):
        run(10, callback_every=10)
    with pytest.raises(TypeError, match="callback"):  # (beartype's check under the test hook)
        run(10, callback=3)


# ---------------------------------------------------------------- 6c. trainable
class Net(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, x, args):
        return self.mlp(x)


def mlp_model():
    return Net(eqx.nn.MLP(1, 1, width_size=8, depth=2, activation=jnp.tanh, key=jr.key(0)))


def sin_loss(model, key, batch):
    x = batch[:, :1]
    pred = jax.vmap(model)(jnp.zeros(len(x)), x, None)
    return jnp.mean((pred - batch[:, 1:]) ** 2)


def sin_data():
    x = jnp.linspace(-2, 2, 64)[:, None]
    return jnp.concatenate([x, jnp.sin(x)], axis=1)


def last_layer_only(model):
    spec = jax.tree_util.tree_map(lambda _: False, model)
    return eqx.tree_at(lambda m: m.mlp.layers[-1], spec, replace=True)


@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_frozen_arrays_stay_bit_identical_and_the_rest_trains_exactly(opt):
    model = mlp_model()
    optimizer = optax.adam(1e-2) if opt == "adam" else optax.adamw(1e-2, weight_decay=0.5)
    spec = last_layer_only(model)
    res = fit(model, sin_loss, sin_data(), optimizer=optimizer, key=jr.key(1), num_steps=100,
              batch_size=16, steps_per_call=50, trainable=spec, progress=False)  # fmt: skip
    for i in (0, 1):  # frozen: bit-identical in the model and in its EMA
        assert_trees_equal(res.model.mlp.layers[i], model.mlp.layers[i])
        assert_trees_equal(res.ema_model.mlp.layers[i], model.mlp.layers[i])
    last = res.model.mlp.layers[-1]
    assert not np.array_equal(last.weight, model.mlp.layers[-1].weight)
    assert res.history["loss"][-10:].mean() < res.history["loss"][:10].mean()
    # the optimiser holds state for the trainable arrays only (2 arrays: weight and bias)
    assert len(jax.tree_util.tree_leaves(res.opt_state[0].mu)) == 2
    if opt == "adam":  # the same as training everything with the frozen part stop-gradiented

        def stopped(m, key, batch):
            frozen = eqx.tree_at(
                lambda n: n.mlp.layers[:2], m,
                jax.tree_util.tree_map(jax.lax.stop_gradient, m.mlp.layers[:2]),
            )  # fmt: skip
            return sin_loss(frozen, key, batch)

        ref = fit(model, stopped, sin_data(), optimizer=optimizer, key=jr.key(1), num_steps=100,
                  batch_size=16, steps_per_call=50, progress=False)  # fmt: skip
        np.testing.assert_allclose(last.weight, ref.model.mlp.layers[-1].weight, rtol=1e-6)
        np.testing.assert_allclose(res.history["loss"], ref.history["loss"], rtol=1e-6)


def test_callable_trainable_and_resume_with_a_frozen_part(tmp_path):
    model = mlp_model()
    kw = {"trainable": lambda a: a.ndim == 1, "steps_per_call": 30}  # biases only
    res = run(90, loss=sin_loss, data=sin_data(), model=model, **kw)
    for before, after in zip(model.mlp.layers, res.model.mlp.layers, strict=True):
        np.testing.assert_array_equal(after.weight, before.weight)
        assert not np.array_equal(after.bias, before.bias)
    first = run(60, loss=sin_loss, data=sin_data(), model=model,
                checkpoint=tmp_path / "a.ckpt", **kw)  # fmt: skip
    resumed = run(90, loss=sin_loss, data=sin_data(), model=model,
                  checkpoint=tmp_path / "a.ckpt", resume=True, **kw)  # fmt: skip
    assert_results_equal(res, resumed)
    assert_results_equal(res, run(90, loss=sin_loss, data=sin_data(), init=first, **kw))


def test_bad_trainable_is_rejected():
    with pytest.raises(ValueError, match="selects none of the floating-point arrays"):
        run(10, trainable=lambda a: False)
    with pytest.raises(ValueError, match="trainable must be an eqx.filter spec"):
        run(10, trainable={"w": True})


# ---------------------------------------------------------------- 6d. continuing in memory
def test_continuing_in_memory_equals_one_run_bit_for_bit():
    kw = {"val_data": cond_dataset(32), "val_every": 40, "data": cond_sampler}
    straight = run(400, **kw)
    first = run(200, **kw)
    assert isinstance(first, TrainResult) and first.step == 200
    assert isinstance(first.state, TrainState) and first.state.step == 200
    continued = run(400, init=first, **kw)  # model omitted, key taken from init
    assert_results_equal(straight, continued)
    assert continued.step == 400
    again = run(400, init=first.state, model=first.model, key=jr.key(1), **kw)
    assert_results_equal(straight, again)
    done = run(400, init=continued, **kw)  # nothing left to do
    assert_results_equal(done, continued)


def test_continuation_reuses_the_compiled_chunk():
    traces = []

    def counting_loss(model, key, batch):
        traces.append(1)
        return cond_loss(model, key, batch)

    first = run(100, loss=counting_loss)
    n = len(traces)
    run(200, loss=counting_loss, init=first)
    # neither the chunk nor fit's abstract check of the loss (memoised per loss and shapes) is
    # traced again
    assert len(traces) == n


def test_bad_init_is_rejected():
    first = run(100)
    with pytest.raises(TypeError, match="init must be a TrainResult or TrainState"):
        run(200, init={"model": first.model})
    with pytest.raises(ValueError, match="num_steps=50 is below the step 100 already reached"):
        run(50, init=first)
    with pytest.raises(ValueError, match="model differs from the model of init"):
        run(200, init=first, model=per_class())
    with pytest.raises(ValueError, match="init.opt_state does not match"):
        run(200, init=first, optimizer=optax.sgd(1e-2))
    with pytest.warns(UserWarning, match="key differs from the key stored in init"):
        other_key = run(200, init=first, key=jr.key(7))
    assert_results_equal(other_key, run(200))
    # a fresh optimiser state on request: step and history continue, Adam restarts
    fresh = run(200, init=first.state._replace(opt_state=None), optimizer=optax.sgd(1e-2))
    assert fresh.step == 200 and fresh.history["step"].shape == (200,)
    assert fresh.history["loss"][-1] < fresh.history["loss"][0]
    with pytest.raises(TypeError, match="key is required"):
        fit(per_class(), cond_loss, cond_dataset(), optimizer=OPT, num_steps=10, batch_size=4)
