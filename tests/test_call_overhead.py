"""Cheaper calls of fit and the samplers give the same answers as before and hide no error.

``fit`` runs full chunks without a ``lax.cond`` around each update (a masked executable only
for a shorter chunk), compiles ahead of time instead of a warm-up run, memoises its abstract
checks of the sampler and the loss, and compiles the optimiser's ``init``. The samplers memoise
their check of the vector field's output shape. None of that may change a result (bit for bit
on CPU) or hide an error.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

from diffeqgen import losses, paths, solve
from diffeqgen.train import fit, init_state

OPT = optax.adam(1e-2)
LOSS = functools.partial(losses.flow_matching_loss, path=paths.get_path("linear"))


class Field(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key, width=8):
        self.mlp = eqx.nn.MLP(3, 2, width, 2, activation=jnp.tanh, key=key)

    def __call__(self, t, x, args=None):
        return self.mlp(jnp.concatenate([x, jnp.asarray(t, x.dtype)[None]]))


def sampler(key, n):
    return jr.normal(key, (n, 2)) * jnp.array([1.0, 0.3]) + 2.0


def run(num_steps, spc, loss=LOSS, model=None, **kw):
    model = Field(jr.key(0)) if model is None else model
    return fit(model, loss, sampler, optimizer=OPT, key=jr.key(1), num_steps=num_steps,
               batch_size=16, steps_per_call=spc, progress=False, **kw)  # fmt: skip


def assert_same(a, b):
    for x, y in zip(
        jax.tree_util.tree_leaves((a.model, a.ema_model, a.opt_state)),
        jax.tree_util.tree_leaves((b.model, b.ema_model, b.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert set(a.history) == set(b.history)
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k])


def test_full_and_masked_chunks_and_single_steps_agree_bitwise():
    ref = run(24, 1)  # 24 calls of one unmasked step each
    assert ref.step == 24 and ref.history["loss"].shape == (24,)
    assert_same(ref, run(24, 8))  # 3 full chunks: no masking at all
    assert_same(ref, run(24, 10))  # 2 full chunks + 1 masked (4 of 10 active)
    # and the loss actually moved (the comparison is not between untouched models)
    assert not np.allclose(ref.history["loss"][:4], ref.history["loss"][-4:])


def test_continuing_in_short_calls_equals_one_call():
    ref = run(20, 10)
    part = run(5, 10)
    for n in (10, 15, 20):  # calls of 5 steps, each masked, each continuing the last
        part = fit(None, LOSS, sampler, optimizer=OPT, num_steps=n, batch_size=16,
                   steps_per_call=10, progress=False, init=part)  # fmt: skip
    assert_same(ref, part)


def test_repeated_call_is_identical_and_skips_compiling():
    loss = functools.partial(losses.flow_matching_loss, path=paths.get_path("linear"))
    first = run(12, 6, loss=loss)
    again = run(12, 6, loss=loss)
    assert_same(first, again)
    assert first.compile_seconds > 0 and again.compile_seconds < first.compile_seconds


def test_memoised_checks_still_see_a_different_loss_or_model():
    run(6, 6)  # caches the checks of (LOSS, Field, sampler)

    def with_aux(model, key, batch):
        value = LOSS(model, key, batch)
        return value, {"twice": 2 * value}

    res = run(6, 6, loss=with_aux)  # same model and data, another loss: aux is found
    np.testing.assert_allclose(res.history["twice"], 2 * res.history["loss"], rtol=1e-6)

    wrong = eqx.nn.MLP(2, 2, 8, 2, key=jr.key(0))  # model(x) only: the signature error
    for _ in range(2):  # raised every time (errors are never memoised)
        with pytest.raises(TypeError, match=r"model\(t, x, args\)"):
            run(6, 6, model=wrong)


def test_bad_sampler_is_reported_on_every_call():
    def bad(key, n):
        return jr.normal(key, (n + 1, 2))

    for _ in range(2):
        with pytest.raises(ValueError, match="n=16"):
            fit(Field(jr.key(0)), LOSS, bad, optimizer=OPT, key=1, num_steps=2, batch_size=16,
                progress=False)  # fmt: skip


def test_init_state_matches_eager_optimizer_init():
    model = Field(jr.key(0))
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    state = init_state(model, opt, key=0)
    eager = opt.init(eqx.filter(model, eqx.is_inexact_array))
    a, b = jax.tree_util.tree_leaves(state.opt_state), jax.tree_util.tree_leaves(eager)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert jax.tree_util.tree_structure(state.opt_state) == jax.tree_util.tree_structure(eager)


class Decay(eqx.Module):
    rate: jax.Array

    def __call__(self, t, x, args=None):
        return -self.rate * x


def test_sample_ode_memoised_check_keeps_answers_and_errors():
    x0 = jr.normal(jr.key(0), (5, 2))
    for rate in (1.0, 2.0):  # same structure, other weights: the answer follows the weights
        field = Decay(jnp.asarray(rate))
        for _ in range(2):
            x1 = solve.sample_ode(field, x0, solver="euler", steps=100).x
            # Euler on dx/dt = -r x: exactly x0 (1 - r/100)^100 (to float32 round-off)
            np.testing.assert_allclose(x1, x0 * (1 - rate / 100) ** 100, rtol=1e-5)

    def wrong(t, x, args):
        return x[:1]

    for _ in range(2):  # raised on every call, not only the first
        with pytest.raises(ValueError, match=r"vector_field\(t, x, args\) must return"):
            solve.sample_ode(wrong, x0, solver="euler", steps=4)
    # the same module on samples of another size is checked again (and fails in the field)
    solve.sample_ode(Decay(jnp.ones(2)), x0, solver="euler", steps=4)
    with pytest.raises((ValueError, TypeError)):
        solve.sample_ode(Decay(jnp.ones(2)), jnp.ones((5, 3)), solver="euler", steps=4)


class Scalar(eqx.Module):
    w: jax.Array

    def __call__(self, t, x, args=None):
        return self.w * x


def checked_loss(message):
    """Loss w with an ``eqx.error_if`` (as in cnf.log_prob) failing once w < 0.5."""

    def loss(model, key, batch):
        del key, batch
        return eqx.error_if(model.w, model.w < 0.5, message)

    return loss


@pytest.mark.parametrize(
    "message, kind",
    [("non-finite state at t=0.3", FloatingPointError), ("reached max_steps", RuntimeError)],
)
def test_check_inside_the_loss_names_its_chunk_with_chunks_dispatched_ahead(message, kind):
    # SGD 1/64 on loss w: w = 1 - k/64 after k steps, so the check fails at step 34, inside the
    # 4th chunk of 10 (chunks 1-3 are read while the next one already runs)
    with pytest.raises(kind, match=rf"during steps 31\.\.40: {message}; training stopped"):
        fit(Scalar(jnp.array(1.0)), checked_loss(message), jnp.zeros((4, 1)),
            optimizer=optax.sgd(1 / 64), key=jr.key(0), num_steps=100, batch_size=2,
            steps_per_call=10, progress=False)  # fmt: skip


def test_chunks_dispatched_ahead_stop_at_callbacks_with_the_state_of_that_step():
    seen = []

    def callback(step, state):
        seen.append((step, float(state.model.w)))
        return step == 30

    res = fit(Scalar(jnp.array(1.0)), lambda m, k, b: m.w, jnp.zeros((4, 1)),
              optimizer=optax.sgd(1 / 64), key=jr.key(0), num_steps=100, batch_size=2,
              steps_per_call=10, callback=callback, callback_every=15, progress=False)  # fmt: skip
    assert seen == [(15, 1 - 15 / 64), (30, 1 - 30 / 64)]
    assert res.step == 30 and float(res.model.w) == 1 - 30 / 64
    np.testing.assert_array_equal(res.history["step"], np.arange(1, 31))
    np.testing.assert_array_equal(res.history["loss"], 1 - np.arange(30) / 64)
