"""The XLA options the library passes when it compiles on CPU (``diffeqgen._xla``).

They change how XLA assigns loops to threads, not what is computed: `fit` must give bit-identical
results with and without them. Compiled with XLA's optimisations on (the suite turns most of them
off, and the pass in question is one of those that then does not run).
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import optax
import pytest
from helpers import assert_trees_equal

import diffeqgen as dg
from diffeqgen import _memo, _train_step, _xla

_SPLIT = 'outer_dimension_partitions":["'


@pytest.fixture
def optimised():
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


def test_options_by_platform(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert _xla.compiler_options("cpu") == {"xla_disable_hlo_passes": "cpu-parallel-task-assigner"}
    assert _xla.compiler_options("gpu") == {}
    assert _xla.compiler_options("tpu") == {}


def test_fit_options_only_for_small_batches(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    small = jax.ShapeDtypeStruct((256, 2), jnp.float32)
    assert _xla.fit_compiler_options(small, "cpu") == _xla.compiler_options("cpu") != {}
    n = _xla.SMALL_BATCH_ELEMENTS
    assert _xla.fit_compiler_options((jnp.zeros((n // 4, 2)), jnp.zeros(n // 4)), "cpu") != {}
    assert _xla.fit_compiler_options(jax.ShapeDtypeStruct((n + 1,), jnp.float32), "cpu") == {}
    assert _xla.fit_compiler_options({"x": jnp.zeros((n, 2)), "cond": None}, "cpu") == {}
    assert _xla.fit_compiler_options(small, "gpu") == {}


def test_public_options_are_fits(monkeypatch):
    """`train.compiler_options` returns what `fit` passes (for a batch, with its size limit)."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    small, big = jnp.zeros((256, 2)), jax.ShapeDtypeStruct((_xla.SMALL_BATCH_ELEMENTS + 1,), "f")
    assert dg.train.compiler_options(platform="cpu") == _xla.compiler_options("cpu") != {}
    assert dg.train.compiler_options(small, platform="cpu") == _xla.compiler_options("cpu")
    assert dg.train.compiler_options(big, platform="cpu") == {}
    assert dg.train.compiler_options(small, platform="gpu") == {}
    assert dg.train.compiler_options() == _xla.compiler_options()


def test_user_disabled_passes_are_kept(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false --xla_disable_hlo_passes=a,b")
    assert _xla.compiler_options("cpu") == {
        "xla_disable_hlo_passes": "a,b,cpu-parallel-task-assigner"
    }
    monkeypatch.setenv("XLA_FLAGS", "--xla_disable_hlo_passes=cpu-parallel-task-assigner")
    assert _xla.compiler_options("cpu") == {"xla_disable_hlo_passes": "cpu-parallel-task-assigner"}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_option_removes_the_thread_split(optimised, monkeypatch):
    """A large elementwise loop is split across threads by default, not with the options."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    x = jnp.linspace(0.0, 1.0, 1 << 16)
    lowered = jax.jit(lambda x: jnp.sin(x) * jnp.exp(x)).lower(x)
    default = lowered.compile()
    ours = lowered.compile(compiler_options=_xla.compiler_options())
    if _SPLIT not in default.as_text():
        pytest.skip("XLA did not split this loop across threads here (one intra-op thread?)")
    assert _SPLIT not in ours.as_text()
    assert_trees_equal(default(x), ours(x))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_fit_bit_identical_without_the_options(optimised, monkeypatch):
    """`fit` (random batches drawn inside the compiled scan) is unchanged to the bit."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    loss = functools.partial(dg.losses.flow_matching_loss, path=dg.paths.get_path("linear"))
    model = dg.nn.MLP(2, 2, width=16, depth=2, key=jr.key(0))

    def run():
        _memo._ABSTRACT_CACHE.clear()  # compile afresh (the executable is memoised)
        return dg.train.fit(model, loss, dg.data.sampler("8gaussians"), key=jr.key(1),
                            optimizer=optax.adam(1e-3), num_steps=20, batch_size=256,
                            steps_per_call=10, progress=False)  # fmt: skip

    passed = []

    def spy(batch):
        passed.append(_xla.fit_compiler_options(batch))
        return passed[-1]

    monkeypatch.setattr(_train_step, "fit_compiler_options", spy)
    ours = run()
    assert passed and all(p == _xla.compiler_options() != {} for p in passed)
    monkeypatch.setattr(_train_step, "fit_compiler_options", lambda batch: {})
    plain = run()
    assert_trees_equal(ours.model, plain.model)
    assert_trees_equal(ours.ema_model, plain.ema_model)
    assert_trees_equal(ours.history, plain.history)


def _threefry_loops(fn, *args) -> int:
    """Number of ``while`` loops in the StableHLO of ``jax.jit(fn)`` (a fresh lowering)."""
    return jax.jit(fn).lower(*args).as_text().count("stablehlo.while")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU lowering of Threefry")
def test_unrolled_threefry_lowers_without_loops_and_restores():
    """Inside the context a draw lowers to no loop (JAX's CPU rule: a 5-iteration loop)."""
    key = jr.key(0)
    draw = lambda k: jr.normal(k, (64,)) + jr.uniform(jr.fold_in(k, 1), (64,))  # noqa: E731
    rolled = _threefry_loops(lambda k: draw(k), key)
    if rolled == 0:
        pytest.skip("this JAX lowers Threefry on CPU without a loop already")
    with dg.train.unrolled_threefry() as active:  # the public name of _xla.unrolled_threefry
        inside = _threefry_loops(lambda k: draw(k), key)
    assert active and inside == 0
    assert _threefry_loops(lambda k: draw(k), key) == rolled  # the rule is restored on exit


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU lowering of Threefry")
def test_unrolled_threefry_draws_the_same_numbers():
    """The unrolled hash gives the same bits: uniform, normal, integer and key splits."""
    key = jr.key(3)

    def draws(k):
        k1, k2, k3 = jr.split(jr.fold_in(k, 7), 3)
        return jr.uniform(k1, (257,)), jr.normal(k2, (3, 5)), jr.randint(k3, (33,), 0, 9), k1

    plain = jax.jit(draws)(key)
    with _xla.unrolled_threefry():
        unrolled = jax.jit(lambda k: draws(k)).lower(key).compile()(key)
    assert_trees_equal(jax.tree_util.tree_map(jr.key_data, plain[3]), jr.key_data(unrolled[3]))
    assert_trees_equal(plain[:3], unrolled[:3])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU lowering of Threefry")
def test_fit_bit_identical_with_rolled_threefry(optimised, monkeypatch):
    """`fit` lowers its chunk with the unrolled Threefry hash: the same weights, EMA and losses."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    loss = functools.partial(dg.losses.flow_matching_loss, path=dg.paths.get_path("linear"))
    model = dg.nn.MLP(2, 2, width=16, depth=2, key=jr.key(0))
    used = []

    def spy():
        used.append(True)
        return _xla.unrolled_threefry()

    def run():
        _memo._ABSTRACT_CACHE.clear()  # compile afresh (the executable is memoised, and
        jax.clear_caches()  # JAX keeps the lowering of the chunk)
        return dg.train.fit(model, loss, dg.data.sampler("8gaussians"), key=jr.key(1),
                            optimizer=optax.adam(1e-3), num_steps=23, batch_size=64,
                            steps_per_call=10, progress=False)  # fmt: skip

    monkeypatch.setattr(_train_step, "unrolled_threefry", spy)
    ours = run()
    assert used
    monkeypatch.setattr(_train_step, "unrolled_threefry", contextlib.nullcontext)
    plain = run()
    assert_trees_equal(ours.model, plain.model)
    assert_trees_equal(ours.ema_model, plain.ema_model)
    assert_trees_equal(ours.history, plain.history)


def test_fit_keeps_jax_lowering_when_compiles_must_be_fast(monkeypatch):
    """With ``jax_disable_most_optimizations`` (as in this suite) fit lowers as JAX does."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    used = []
    monkeypatch.setattr(_train_step, "unrolled_threefry", lambda: used.append(1))
    try:
        _memo._ABSTRACT_CACHE.clear()
        loss = functools.partial(dg.losses.flow_matching_loss, path=dg.paths.get_path("linear"))
        model = dg.nn.MLP(2, 2, width=8, depth=1, key=jr.key(0))
        dg.train.fit(model, loss, dg.data.sampler("8gaussians"), key=jr.key(1),
                     optimizer=optax.adam(1e-3), num_steps=2, batch_size=16,
                     progress=False)  # fmt: skip
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
        _memo._ABSTRACT_CACHE.clear()
    assert not used
