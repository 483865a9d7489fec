"""The compiled part of `diffeqgen.train.fit`: data checks, batch drawing, the fused scan."""

import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from ._checks import check_array, check_finite
from ._memo import abstract_key, cached
from ._xla import fit_compiler_options, unrolled_threefry
from .losses import SIGNATURE_HINT, split_batch

__all__ = [
    "check_data",
    "check_loss",
    "check_aux",
    "nan_log",
    "draw",
    "run_chunk",
    "compiled_chunk",
    "loss_failure",
    "quiet_callbacks",
    "val_loss",
    "StepConfig",
    "RESERVED",
    "abstract_key",
    "cached",
]

RESERVED = ("step", "loss")
"""History keys a loss's aux dict may not use (nor any key starting with ``val_``)."""

_ARGUMENT_ERROR = re.compile(
    r"positional argument|keyword argument|required argument|were given|was given|"
    r"takes \d+|takes from|takes no arguments|missing \d+"
)


def _numeric(dtype) -> bool:
    return any(jnp.issubdtype(dtype, k) for k in (jnp.floating, jnp.integer, jnp.bool_))


def _describe_leaves(name: str, tree) -> str:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return ", ".join(
        f"{name}{jax.tree_util.keystr(p)}: {tuple(getattr(x, 'shape', np.shape(x)))}"
        for p, x in leaves
    )


def _check_sampler(name: str, data, batch_size: int, key) -> None:
    try:
        out = eqx.filter_eval_shape(data, key, batch_size)
    except Exception as e:
        raise TypeError(
            f"{name} is callable, so it must be a sampler (key, n) -> batch; calling it as "
            f"{name}(key, {batch_size}) failed: {e}"
        ) from e
    if hasattr(out, "shape"):  # a bare array is x itself: floating point
        if len(out.shape) < 1 or out.shape[0] != batch_size:
            raise ValueError(
                f"{name}(key, n) must return an array of shape (n, *event) or a pytree of such "
                f"arrays; for n={batch_size} it returned shape {tuple(out.shape)}"
            )
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise TypeError(f"{name}(key, n) must return a floating-point array, got {out.dtype}")
        return
    leaves = jax.tree_util.tree_leaves(out)
    bad = [x for x in leaves if not hasattr(x, "shape") or not x.shape or x.shape[0] != batch_size]
    if not leaves or bad:
        raise ValueError(
            f"{name}(key, n) must return an array of shape (n, *event) or a pytree (e.g. "
            f"(x, cond) or {{'x': x, 'cond': cond}}) of arrays with leading axis n; for "
            f"n={batch_size} it returned "
            f"{_describe_leaves('batch', out) if leaves else type(out).__name__}"
        )
    for x in leaves:
        if not _numeric(x.dtype):
            raise TypeError(
                f"{name}(key, n) must return floating, integer or boolean arrays, got {x.dtype}"
            )


def _check_arrays(name: str, data):
    if hasattr(data, "shape") or isinstance(data, list):  # a bare array is x: floating point
        arr = check_array(name, data, min_ndim=1)
        if arr.shape[0] < 1:
            raise ValueError(f"{name} must have at least 1 row, got shape {tuple(arr.shape)}")
        check_finite(name, arr)
        return arr
    flat, treedef = jax.tree_util.tree_flatten_with_path(data)
    if not flat:
        raise TypeError(
            f"{name} must be a sampler, an array (N, *event) or a pytree of arrays with a "
            f"common leading axis N, got {data!r}"
        )
    leaves = []
    for path, leaf in flat:
        where = f"{name}{jax.tree_util.keystr(path)}"
        try:
            arr = leaf if hasattr(leaf, "shape") else np.asarray(leaf)
        except Exception:  # noqa: BLE001
            raise TypeError(f"{where} must be an array, got {leaf!r}") from None
        if not _numeric(arr.dtype):
            raise TypeError(
                f"{where} must be a floating, integer or boolean array, got dtype {arr.dtype}"
            )
        if arr.ndim < 1:
            raise ValueError(f"{where} must have a leading axis (one row per sample), got a scalar")
        if jnp.issubdtype(arr.dtype, jnp.floating):
            check_finite(where, arr)
        leaves.append(jnp.asarray(arr))
    rows = {x.shape[0] for x in leaves}
    if len(rows) > 1:
        raise ValueError(
            f"the arrays of {name} must share their leading axis (one row per sample), got "
            f"shapes {_describe_leaves(name, data)}"
        )
    if rows == {0}:
        raise ValueError(
            f"{name} must have at least 1 row, got shapes {_describe_leaves(name, data)}"
        )
    return jax.tree_util.tree_unflatten(treedef, leaves)


def check_data(name: str, data, batch_size: int, key) -> tuple[Any, bool]:
    """Return (data, is_sampler).

    A sampler ``(key, n) -> batch`` is checked by its output shapes (an array or a pytree of
    arrays, every leaf with leading axis n). A finite dataset is an array ``(N, *event)``
    (floating) or a pytree of arrays sharing the leading axis N (floating leaves, checked finite,
    beside integer or boolean ones such as labels); its leaves become JAX arrays.
    """
    if callable(data) and not hasattr(data, "shape"):
        check = lambda: _check_sampler(name, data, batch_size, key)  # noqa: E731
        cached(("sampler", name, data, batch_size, abstract_key(key)), check)
        return data, True
    return _check_arrays(name, data), False


def draw(data, is_sampler: bool, key, n: int):
    """Draw a batch of ``n`` rows: call the sampler, or index the arrays uniformly at random.

    A finite dataset is sampled with replacement; every leaf of a pytree is indexed by the same
    rows, so ``(x, labels)`` stay paired.
    """
    if is_sampler:
        return data(key, n)
    rows = jax.tree_util.tree_leaves(data)[0].shape[0]
    idx = jr.randint(key, (n,), 0, rows)
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), data)


def _first_sample(batch):
    """``(x_i, cond_i)`` shapes of one sample of a batch, or None if the layout is unknown.

    The batch convention is that of ``diffeqgen.losses.split_batch``.
    """
    try:
        x, cond = split_batch(batch)
    except (TypeError, ValueError):
        return None
    one = lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype)  # noqa: E731
    return one(x), jax.tree_util.tree_map(one, cond)


def _model_signature_error(model, batch) -> str | None:
    """The argument error of ``model(t, x_i, cond_i)`` on one sample, if there is one."""
    sample = _first_sample(batch)
    if sample is None:
        return None
    x, cond = sample
    t = jax.ShapeDtypeStruct((), x.dtype)
    try:
        eqx.filter_eval_shape(lambda m, t, x, c: m(t, x, c), model, t, x, cond)
    except TypeError as e:
        if _ARGUMENT_ERROR.search(str(e)):
            return f"{type(e).__name__}: {e}"
    except Exception:  # noqa: BLE001  (not a signature problem: the loss's own error stands)
        return None
    return None


def check_loss(loss_fn, model, key, batch):
    """``eqx.filter_eval_shape`` of ``loss_fn(model, key, batch)``, checking the model's signature.

    If the loss fails with an argument ``TypeError`` and ``model(t, x_i, cond_i)`` on one sample
    fails with one too, raise a single ``TypeError`` naming the expected signature and the
    adapter for one-input networks. Any other error propagates with its own message (with a note
    saying where it was raised).
    """
    try:
        return eqx.filter_eval_shape(loss_fn, model, key, batch)
    except TypeError as e:
        problem = _model_signature_error(model, batch) if _ARGUMENT_ERROR.search(str(e)) else None
        if problem is None:
            e.add_note("(raised by fit's check call loss_fn(model, key, batch) on one batch)")
            raise
        x, _ = _first_sample(batch)
        raise TypeError(
            f"model must be callable as model(t, x, args) on ONE sample (the Diffrax "
            f"convention used by every loss, sampler and likelihood in diffeqgen: t a scalar "
            f"time, x of shape {tuple(x.shape)}, args the sample's condition or None), but "
            f"calling {type(model).__name__}(t, x, args) raised {problem}. A network that takes "
            f"a single input (such as eqx.nn.MLP) becomes such a model with the adapter "
            f"diffeqgen.nn.time_concat."
            + ("" if SIGNATURE_HINT in str(e) else f" (loss_fn(model, key, batch) raised: {e})")
        ) from None
    except Exception as e:
        e.add_note("(raised by fit's check call loss_fn(model, key, batch) on one batch)")
        raise


def check_aux(loss_struct) -> tuple[Any, tuple | None]:
    """Split the eval_shape of the loss output into (loss, aux spec) and check both."""
    aux_spec = None
    if isinstance(loss_struct, tuple) and len(loss_struct) == 2:
        loss_struct, aux = loss_struct
        if not isinstance(aux, dict):
            raise TypeError(
                f"loss_fn returned a pair (loss, aux); aux must be a dict of scalars, got "
                f"{type(aux).__name__}"
            )
        spec = []
        for k, v in aux.items():
            if not isinstance(k, str) or k in RESERVED or k.startswith("val_"):
                raise ValueError(
                    f"loss_fn's aux key {k!r} is not allowed: keys must be strings other than "
                    f"{RESERVED} and not start with 'val_' (validation entries are logged as "
                    "'val_<key>')"
                )
            shape = v.shape if hasattr(v, "shape") else np.shape(v)
            dtype = v.dtype if hasattr(v, "dtype") else jnp.result_type(v)
            if shape != () or not any(
                jnp.issubdtype(dtype, t) for t in (jnp.floating, jnp.integer, jnp.bool_)
            ):
                raise ValueError(
                    f"loss_fn's aux[{k!r}] must be a real scalar, got shape {shape} and dtype "
                    f"{dtype}"
                )
            spec.append((k, dtype))
        aux_spec = tuple(spec)
    if getattr(loss_struct, "shape", None) != ():
        raise ValueError(
            f"loss_fn(model, key, batch) must return a scalar or a pair (scalar, dict of "
            f"scalars), got {getattr(loss_struct, 'shape', type(loss_struct).__name__)}"
        )
    if aux_spec is not None:  # integer/boolean aux entries are logged in the loss's dtype
        aux_spec = tuple(
            (k, dt if jnp.issubdtype(dt, jnp.floating) else loss_struct.dtype) for k, dt in aux_spec
        )
    return loss_struct, aux_spec


def nan_log(n: int, dtype) -> np.ndarray:
    dtype = dtype if np.issubdtype(dtype, np.floating) else np.float64
    return np.full(n, np.nan, dtype)


class StepConfig(NamedTuple):
    """Static configuration of the fused step (hashable: part of the compilation cache key).

    ``aux`` is None for a loss returning a scalar, else a tuple of ``(name, dtype)`` for the
    entries of the aux dict of a loss returning ``(loss, aux)`` (logged with those dtypes).
    """

    loss_fn: Callable
    optimizer: optax.GradientTransformation
    batch_size: int
    steps_per_call: int
    ema_decay: float
    is_sampler: bool
    loss_dtype: Any
    aux: tuple[tuple[str, Any], ...] | None = None
    batch_sharding: Any = None  # a NamedSharding splitting each batch over devices, or None


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _all_finite_pair(grads, params) -> jax.Array:
    """``_all_finite(grads) & _all_finite(params)`` with one reduction per parameter array.

    Each gradient leaf is checked together with its parameter leaf (same shape): one fused
    ``all(isfinite(g) & isfinite(p))`` per leaf. Checking the two trees apart cost a fit step
    of a 4-layer MLP ~20 us on CPU (~6% at batch 256, issue 12), this ~4 us.
    """
    gs, ps = jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(params)
    if len(gs) != len(ps) or any(jnp.shape(g) != jnp.shape(p) for g, p in zip(gs, ps, strict=True)):
        return _all_finite(grads) & _all_finite(params)
    flags = [jnp.all(jnp.isfinite(g) & jnp.isfinite(p)) for g, p in zip(gs, ps, strict=True)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def cast_aux(aux: dict, spec) -> dict:
    """The aux dict of a loss as 0-d arrays with the logged dtypes of ``spec``."""
    return {k: jnp.asarray(aux[k]).astype(dtype) for k, dtype in spec}


@eqx.filter_jit
def run_chunk(carry, rest, data, step0, n_active, train_key, config: StepConfig, masked=True):
    """Run ``config.steps_per_call`` scanned updates; only the first ``n_active`` are applied.

    ``masked=False`` (a static choice, compiled apart) is the executable for full chunks: a
    ``lax.scan`` in which every iteration is an update (``n_active`` is then ignored). A shorter
    chunk (``masked=True``) runs a loop of exactly ``n_active`` updates (not the full length
    with the rest skipped, which cost a 5-step call ~1 ms), its logs padded to
    ``steps_per_call`` entries (loss 0, ok True). Both compute the same updates.

    ``carry`` is ``(params, ema, opt_state)``: ``params`` the trainable floating-point arrays,
    ``ema`` the EMA of ALL floating-point arrays (frozen ones included: the EMA of a constant
    is that constant), ``rest`` everything else (frozen arrays and non-array leaves). Module
    level, so repeated `fit` calls with the same loss function, optimiser object, model
    structure and sizes reuse one compiled executable.
    """
    loss_fn, optimizer, loss_dtype = config.loss_fn, config.optimizer, config.loss_dtype
    frozen = eqx.filter(rest, eqx.is_inexact_array)

    def do(carry, step):
        params, ema, opt_state = carry
        data_key, loss_key = jr.split(jr.fold_in(train_key, step))
        batch = draw(data, config.is_sampler, data_key, config.batch_size)
        if config.batch_sharding is not None:  # data parallel: each device takes its rows
            batch = jax.lax.with_sharding_constraint(batch, config.batch_sharding)

        def objective(p):
            return loss_fn(eqx.combine(p, rest), loss_key, batch)

        if config.aux is None:
            loss, grads = jax.value_and_grad(objective)(params)
            aux = None
        else:
            (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
            aux = cast_aux(aux, config.aux)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        # EMA with the usual warm-up min(decay, (1+s)/(10+s)); e + (1-d)(p-e) keeps a constant
        # parameter (e.g. a frozen one) exactly constant.
        d = jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree_util.tree_map(
            lambda e, p: e + (1 - d).astype(e.dtype) * (p - e), ema, eqx.combine(params, frozen)
        )
        ok = jnp.isfinite(loss) & _all_finite_pair(grads, params)
        return (params, ema, opt_state), (loss.astype(loss_dtype), aux, ok)

    if masked:  # a loop of exactly n_active updates; the outputs padded to steps_per_call
        m = config.steps_per_call
        aux = None if config.aux is None else {k: jnp.zeros((m,), dt) for k, dt in config.aux}
        logs = (jnp.zeros((m,), loss_dtype), aux, jnp.ones((m,), bool))

        def update(i, state):
            carry, logs = state
            carry, out = do(carry, step0 + i)
            logs = jax.tree_util.tree_map(lambda log, v: log.at[i].set(v), logs, out)
            return carry, logs

        return jax.lax.fori_loop(0, n_active, update, (carry, logs))

    steps = jnp.arange(config.steps_per_call, dtype=jnp.int32)
    return jax.lax.scan(lambda carry, i: do(carry, step0 + i), carry, steps)


def compiled_chunk(args: tuple) -> tuple[Callable, float]:
    """``(executable, compile seconds)`` of `run_chunk` for these arguments, compiled once.

    The executable is memoised (``_memo.cached``) under the abstract key of the arguments (tree
    structure, array shapes and dtypes, every non-array leaf including the static
    `StepConfig`), so a later `fit` call with the same objects and shapes neither traces nor
    lowers again (that cost ~3 ms per call). Calling it does not block (unlike
    ``eqx.filter_jit``, which waits for the result): `fit` dispatches the next chunk before
    reading this one's losses. Arguments whose abstract key cannot be formed (an unhashable
    leaf) are compiled on every call, as before. With several devices (a mesh, or arrays
    placed on another device) an executable compiled ahead of time rejects arguments placed
    differently, so there `run_chunk` itself is returned (compiled here, dispatched by
    ``eqx.filter_jit``, which waits for each chunk). On CPU a small batch's chunk is compiled
    with ``_xla.fit_compiler_options`` (XLA's parallel task assignment off; bit-identical),
    and lowered with the Threefry hash unrolled (``_xla.unrolled_threefry``; the same random
    numbers) unless ``jax_disable_most_optimizations`` is set.
    """
    seconds = 0.0

    def compile_now():
        nonlocal seconds
        t = time.perf_counter()
        _, _, data, _, _, train_key, config, _ = args
        batch = eqx.filter_eval_shape(draw, data, config.is_sampler, train_key, config.batch_size)
        # The same random numbers, one loop instead of five per draw (_xla); a runtime gain, so
        # not when the user asked JAX for fast compiles (it lengthened them there by ~1/3).
        fast_compile = jax.config.read("jax_disable_most_optimizations")
        with contextlib.nullcontext() if fast_compile else unrolled_threefry():
            lowered = run_chunk.lower(*args)
        exe = lowered.compile(compiler_options=fit_compiler_options(batch))
        seconds = time.perf_counter() - t
        return exe

    if jax.device_count() > 1:  # placement matters: jit's own dispatch moves what it must
        compile_now()
        return run_chunk, seconds
    exe = cached(("run_chunk", abstract_key(args)), compile_now)
    return exe, seconds


_EQX_ERROR = "EquinoxRuntimeError: "


def loss_failure(e: BaseException) -> str | None:
    """The message of a check inside the loss (``eqx.error_if``) that failed, else None.

    Such a check raises ``EquinoxRuntimeError`` through ``eqx.filter_jit``, or a
    ``JaxRuntimeError`` carrying it when the compiled chunk is called directly (as `fit` does);
    the message is the text after ``EquinoxRuntimeError: `` up to the first blank line.
    """
    msg = str(e)
    if not isinstance(e, eqx.EquinoxRuntimeError | jax.errors.JaxRuntimeError):
        return None
    if _EQX_ERROR not in msg:
        return None if not isinstance(e, eqx.EquinoxRuntimeError) else msg
    return msg.split(_EQX_ERROR, 1)[1].split("\n\n")[0].strip()


class _NoCallbackLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "jax._src.callback" and record.getMessage() == "jax.pure_callback failed"
        )


@contextlib.contextmanager
def quiet_callbacks():
    """Silence JAX's log of a failing host callback (an ``eqx.error_if``), reported by `fit`."""
    log, f = logging.getLogger("jax._src.callback"), _NoCallbackLog()
    log.addFilter(f)
    try:
        yield
    finally:
        log.removeFilter(f)


@eqx.filter_jit
def val_loss(ema, rest, batch, key, loss_fn):
    return loss_fn(eqx.combine(ema, rest), key, batch)
