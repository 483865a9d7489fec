"""The compiled part of `diffeqgen.train.fit`: data checks, batch drawing, the fused scan."""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

from ._checks import check_array, check_finite

__all__ = ["check_data", "draw", "run_chunk", "val_loss", "StepConfig"]


def check_data(name: str, data, batch_size: int, key) -> tuple[Any, bool]:
    """Return (data, is_sampler); arrays become finite float JAX arrays with >= 1 row."""
    if callable(data) and not hasattr(data, "shape"):
        try:
            out = eqx.filter_eval_shape(data, key, batch_size)
        except Exception as e:
            raise TypeError(
                f"{name} is callable, so it must be a sampler (key, n) -> array; calling it as "
                f"{name}(key, {batch_size}) failed: {e}"
            ) from e
        leaves = jax.tree_util.tree_leaves(out)
        shapes = [getattr(leaf, "shape", None) for leaf in leaves]
        if not leaves or any(s is None or len(s) < 1 or s[0] != batch_size for s in shapes):
            shown = (
                shapes[0]
                if len(shapes) == 1
                else jax.tree_util.tree_map(
                    lambda leaf: getattr(leaf, "shape", type(leaf).__name__), out
                )
            )
            raise ValueError(
                f"{name}(key, n) must return an array of shape (n, *event) (or a pytree of them, "
                f"e.g. a paired batch {{'x0': ..., 'x': ...}}); for n={batch_size} it returned "
                f"{shown if leaves else type(out).__name__}"
            )
        if not all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in leaves):
            dtypes = ", ".join(str(leaf.dtype) for leaf in leaves)
            raise TypeError(f"{name}(key, n) must return a floating-point array, got {dtypes}")
        return data, True
    arr = check_array(name, data, min_ndim=1)
    if arr.shape[0] < 1:
        raise ValueError(f"{name} must have at least 1 row, got shape {tuple(arr.shape)}")
    check_finite(name, arr)
    return arr, False


def draw(data, is_sampler: bool, key, n: int):
    """Draw a batch of ``n`` rows: call the sampler, or index the array uniformly at random."""
    if is_sampler:
        return data(key, n)
    idx = jr.randint(key, (n,), 0, data.shape[0])
    return jnp.take(data, idx, axis=0)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class StepConfig(NamedTuple):
    """Static configuration of the fused step (hashable: part of the compilation cache key)."""

    loss_fn: Callable
    optimizer: optax.GradientTransformation
    batch_size: int
    steps_per_call: int
    ema_decay: float
    is_sampler: bool
    loss_dtype: Any


@eqx.filter_jit
def run_chunk(carry, rest, data, step0, n_active, train_key, config: StepConfig):
    """Run ``config.steps_per_call`` scanned updates; only the first ``n_active`` are applied.

    Module level, so repeated `fit` calls with the same loss function, optimiser object, model
    structure and sizes reuse one compiled executable.
    """
    loss_fn, optimizer, loss_dtype = config.loss_fn, config.optimizer, config.loss_dtype

    def do(carry, step):
        params, ema, opt_state = carry
        data_key, loss_key = jr.split(jr.fold_in(train_key, step))
        batch = draw(data, config.is_sampler, data_key, config.batch_size)

        def objective(p):
            return loss_fn(eqx.combine(p, rest), loss_key, batch)

        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        # EMA with the usual warm-up min(decay, (1+s)/(10+s)); e + (1-d)(p-e) keeps a constant
        # parameter exactly constant.
        d = jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree_util.tree_map(
            lambda e, p: e + (1 - d).astype(e.dtype) * (p - e), ema, params
        )
        ok = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(params)
        return (params, ema, opt_state), (loss.astype(loss_dtype), ok)

    def skip(carry, step):
        return carry, (jnp.zeros((), loss_dtype), jnp.array(True))

    def body(carry, i):
        return jax.lax.cond(i < n_active, do, skip, carry, step0 + i)

    steps = jnp.arange(config.steps_per_call, dtype=jnp.int32)
    return jax.lax.scan(body, carry, steps)


@eqx.filter_jit
def val_loss(ema, rest, batch, key, loss_fn):
    return loss_fn(eqx.combine(ema, rest), key, batch)
