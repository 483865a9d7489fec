"""The one training loop: any loss, any Optax optimiser, many steps fused per dispatch.

``fit`` runs ``steps_per_call`` optimiser steps inside one compiled ``lax.scan`` (batches drawn on
device inside the scan), keeps an EMA of the parameters, evaluates a validation loss on the EMA
model, shows a progress bar, writes atomic checkpoints, resumes bit for bit, and stops with a
``FloatingPointError`` naming the step at the first non-finite loss or gradient.

Example::

    import functools, jax.random as jr, diffeqgen as dg

    model = dg.nn.MLP(2, 2, key=jr.key(0))
    loss = functools.partial(dg.losses.flow_matching_loss, path=dg.paths.get_path("linear"))
    sampler = lambda key, n: dg.data.sample("moons", key, n)
    result = dg.train.fit(model, loss, sampler, optimizer=dg.train.make_optimizer(1e-3),
                          key=jr.key(1), num_steps=5000, batch_size=256)
    velocity = result.ema_model  # net(t, x, args) on one sample
"""

import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from tqdm import tqdm

from ._checkpoint import (
    HISTORY_KEYS,
    TrainState,
    _empty_history,
    _typed_key,
    load_checkpoint,
    save_checkpoint,
)
from ._checks import check_choice, check_int, check_positive
from ._train_step import StepConfig, check_data, draw, run_chunk, val_loss
from ._types import ArrayLike, PRNGKeyArray

__all__ = [
    "fit",
    "TrainResult",
    "TrainState",
    "init_state",
    "make_optimizer",
    "save_checkpoint",
    "load_checkpoint",
]

VAL_SAMPLES = 2048
"""Size of the fixed validation batch drawn once when ``val_data`` is a sampler (at least
``batch_size``)."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `fit` returns.

    Attributes:
        model: The trained model (last iterate).
        ema_model: The EMA of the parameters (usually the one to sample from).
        opt_state: Final Optax state (pass to a new run through a checkpoint).
        history: NumPy arrays: "step" (1-based update index), "loss" (training loss of that
            update's batch), "val_step", "val_loss" (validation loss of the EMA model after that
            many updates). Includes the steps of earlier runs when resumed.
        steps_per_second: Optimiser steps per second in this call (compile excluded).
        compile_seconds: Time spent compiling the fused step (and the validation loss).
        wall_seconds: Total time of this call.
    """

    model: Any
    ema_model: Any
    opt_state: Any
    history: dict[str, np.ndarray]
    steps_per_second: float
    compile_seconds: float
    wall_seconds: float


def make_optimizer(
    learning_rate: float | int,
    *,
    grad_clip: float | int | None = None,
    weight_decay: float | int = 0.0,
    warmup: int = 0,
    schedule: str = "constant",
    num_steps: int | None = None,
) -> optax.GradientTransformation:
    """Adam (AdamW when ``weight_decay > 0``) with optional clipping, warm-up and cosine decay.

    Weight decay applies to matrices only (parameters with ndim >= 2), never to biases or to
    fixed 1-D arrays such as Fourier-embedding frequencies.

    Args:
        learning_rate: Peak learning rate (> 0).
        grad_clip: Clip the global gradient norm to this value (> 0), or None.
        weight_decay: Decoupled weight decay (>= 0).
        warmup: Linear warm-up steps from 0 to ``learning_rate`` (>= 0).
        schedule: "constant" or "cosine" (cosine decay to 0 at ``num_steps``).
        num_steps: Total steps; required for "cosine", must exceed ``warmup``.

    Returns:
        An ``optax.GradientTransformation``.
    """
    lr = check_positive("learning_rate", learning_rate)
    wd = check_positive("weight_decay", weight_decay, allow_zero=True)
    warmup = check_int("warmup", warmup, minimum=0)
    check_choice("schedule", schedule, ("constant", "cosine"))
    if schedule == "cosine":
        if num_steps is None:
            raise ValueError("num_steps is required for schedule='cosine', got None")
        num_steps = check_int("num_steps", num_steps)
        if num_steps <= warmup:
            raise ValueError(f"num_steps must exceed warmup={warmup}, got {num_steps}")
        if warmup > 0:
            rate = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, num_steps, 0.0)
        else:
            rate = optax.cosine_decay_schedule(lr, num_steps)
    elif warmup > 0:
        rate = optax.linear_schedule(0.0, lr, warmup)
    else:
        rate = lr
    parts = []
    if grad_clip is not None:
        parts.append(optax.clip_by_global_norm(check_positive("grad_clip", grad_clip)))
    if wd > 0:
        mask = lambda p: jax.tree_util.tree_map(lambda x: jnp.ndim(x) >= 2, p)  # noqa: E731
        parts.append(optax.adamw(rate, weight_decay=wd, mask=mask))
    else:
        parts.append(optax.adam(rate))
    return optax.chain(*parts)


def init_state(model, optimizer: optax.GradientTransformation, *, key: PRNGKeyArray) -> TrainState:
    """Fresh `TrainState` at step 0 (EMA equal to the model); also the ``like`` for loading."""
    params = eqx.filter(model, eqx.is_inexact_array)
    return TrainState(model, model, optimizer.init(params), 0, _typed_key(key), _empty_history())


def _next_stop(step: int, num_steps: int, every: list[int]) -> int:
    stop = num_steps
    for e in every:
        stop = min(stop, (step // e + 1) * e)
    return stop


def fit(
    model,
    loss_fn: Callable,
    data: Callable | ArrayLike,
    *,
    optimizer: Any,
    key: PRNGKeyArray,
    num_steps: int,
    batch_size: int,
    steps_per_call: int = 100,
    ema_decay: float | int = 0.999,
    val_data: Callable | ArrayLike | None = None,
    val_every: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` by minimising ``loss_fn`` with ``optimizer``.

    Each optimiser update ``s`` (0-based) uses the key ``jr.fold_in(train_key, s)`` with
    ``train_key, val_key = jr.split(key)``, so results do not depend on ``steps_per_call``,
    validation or checkpoint intervals, or interruption and resumption: a resumed run equals an
    uninterrupted one bit for bit on CPU. Updates run ``steps_per_call`` at a time inside one
    compiled ``lax.scan`` (compiled once; a shorter final chunk masks the unused iterations).
    The executable is cached across calls keyed on the model structure, the data kind and
    shape, the sizes, and the identity of ``loss_fn`` and ``optimizer``: reuse the same
    objects (not a fresh ``functools.partial``/``optax.adam(...)``) to skip recompiling.

    Args:
        model: An Equinox module; its floating-point arrays are trained.
        loss_fn: ``loss_fn(model, key, batch) -> scalar`` with ``batch`` of shape
            ``(batch_size, *event)``; use ``functools.partial`` for configuration.
        data: A sampler ``(key, n) -> (n, *event)`` called inside the compiled step, or an
            array ``(N, *event)`` from which rows are drawn uniformly with replacement on device.
        optimizer: An ``optax.GradientTransformation`` (see `make_optimizer`).
        key: PRNG key of the run (stored in checkpoints).
        num_steps: Total number of updates (including those of a resumed checkpoint).
        batch_size: Samples per update.
        steps_per_call: Updates fused per compiled dispatch.
        ema_decay: EMA decay in [0, 1); the EMA model is ``e <- e + (1-d)(p - e)`` with
            ``d = min(ema_decay, (1+s)/(10+s))``.
        val_data: Optional validation array (all rows form one batch) or sampler (one fixed
            batch of ``max(batch_size, VAL_SAMPLES)`` drawn once); its loss is evaluated on the
            EMA model with a fixed key.
        val_every: Validate after every multiple of this many updates (default
            ``steps_per_call`` when ``val_data`` is given).
        checkpoint: File path; the state is saved there atomically at the end and every
            ``checkpoint_every`` updates.
        checkpoint_every: Save interval in updates (requires ``checkpoint``).
        resume: If True and ``checkpoint`` exists, continue from it (its key is used).
        progress: Show a tqdm bar with step, loss and steps per second.

    Returns:
        A `TrainResult`.

    Raises:
        FloatingPointError: The loss, a gradient or a parameter became non-finite; names the
            first bad step and the last checkpoint, which is left untouched.
        ValueError, TypeError: Invalid arguments (the message names the argument).
    """
    t_start = time.perf_counter()
    num_steps = check_int("num_steps", num_steps)
    batch_size = check_int("batch_size", batch_size)
    steps_per_call = check_int("steps_per_call", steps_per_call)
    ema_decay = check_positive("ema_decay", ema_decay, allow_zero=True)
    if ema_decay >= 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation (e.g. make_optimizer(1e-3)), "
            f"got {type(optimizer).__name__}"
        )
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (model, key, batch) -> scalar, got {loss_fn!r}")
    if not jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)):
        raise ValueError(f"model has no floating-point arrays to train: {type(model).__name__}")
    key = _typed_key(key)
    train_key, val_key = jr.split(key)
    data, is_sampler = check_data("data", data, batch_size, key)
    if val_every is not None:
        val_every = check_int("val_every", val_every)
        if val_data is None:
            raise ValueError(f"val_every={val_every} needs val_data, got val_data=None")
    if val_data is not None:
        val_data, val_is_sampler = check_data("val_data", val_data, batch_size, key)
        val_every = val_every or steps_per_call
    if checkpoint_every is not None:
        checkpoint_every = check_int("checkpoint_every", checkpoint_every)
        if checkpoint is None:
            raise ValueError(f"checkpoint_every={checkpoint_every} needs a checkpoint path")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path, got checkpoint=None")
    checkpoint = None if checkpoint is None else os.fspath(checkpoint)

    batch_struct = eqx.filter_eval_shape(draw, data, is_sampler, key, batch_size)
    loss_struct = eqx.filter_eval_shape(loss_fn, model, key, batch_struct)
    if getattr(loss_struct, "shape", None) != ():
        raise ValueError(
            f"loss_fn(model, key, batch) must return a scalar, got "
            f"{getattr(loss_struct, 'shape', type(loss_struct).__name__)}"
        )

    state = init_state(model, optimizer, key=key)
    if resume and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, state)
        if not np.array_equal(jr.key_data(state.key), jr.key_data(key)):
            warnings.warn(
                f"key differs from the key stored in {checkpoint!r}; continuing with the stored "
                "key so the run stays reproducible",
                stacklevel=2,
            )
            key = state.key
            train_key, val_key = jr.split(key)
        if state.step > num_steps:
            raise ValueError(
                f"num_steps={num_steps} is below the step {state.step} already reached by the "
                f"checkpoint {checkpoint!r}"
            )
    if val_data is not None and val_is_sampler:  # one fixed validation batch
        n_val = max(batch_size, VAL_SAMPLES)
        val_data = eqx.filter_jit(val_data)(jr.fold_in(val_key, 0), n_val)
    params, rest = eqx.partition(state.model, eqx.is_inexact_array)
    ema = eqx.filter(state.ema_model, eqx.is_inexact_array)
    opt_state, step = state.opt_state, state.step
    history = {k: [np.asarray(state.history[k])] for k in HISTORY_KEYS}
    last_saved = state.step if (resume and checkpoint and os.path.exists(checkpoint)) else None

    config = StepConfig(
        loss_fn, optimizer, batch_size, steps_per_call, ema_decay, is_sampler, loss_struct.dtype
    )

    def advance(step: int, n: int):
        step, n = jnp.asarray(step, jnp.int32), jnp.asarray(n, jnp.int32)
        return run_chunk((params, ema, opt_state), rest, data, step, n, train_key, config)

    val_loss_key = jr.fold_in(val_key, 1)
    t0 = time.perf_counter()
    if step < num_steps:  # warm-up with no active step: trace + compile (cached across calls)
        jax.block_until_ready(advance(0, 0))
    if val_data is not None and step < num_steps:
        jax.block_until_ready(val_loss(ema, rest, val_data, val_loss_key, loss_fn))
    compile_seconds = time.perf_counter() - t0

    def current_state() -> TrainState:
        hist = {k: np.concatenate(v) for k, v in history.items()}
        return TrainState(
            eqx.combine(params, rest), eqx.combine(ema, rest), opt_state, step, key, hist
        )

    every = [e for e in (val_every, checkpoint_every) if e is not None]
    start_step, train_seconds = step, 0.0
    bar = tqdm(total=num_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    try:
        while step < num_steps:
            stop = _next_stop(step, num_steps, [steps_per_call, *every])
            n = stop - step
            t1 = time.perf_counter()
            new_carry, (losses, ok) = advance(step, n)
            losses, ok = np.asarray(losses)[:n], np.asarray(ok)[:n]
            train_seconds += time.perf_counter() - t1
            if not ok.all():
                bad = int(np.argmin(ok))
                where = (
                    f"the last good checkpoint is {checkpoint!r} (step {last_saved})"
                    if last_saved is not None
                    else "no checkpoint was written"
                    + ("" if checkpoint else " (pass checkpoint=... to keep one)")
                )
                raise FloatingPointError(
                    f"non-finite loss, gradient or parameter at step {step + bad + 1} (loss = "
                    f"{losses[bad]}); training stopped and this state was not saved; {where}"
                )
            params, ema, opt_state = new_carry
            history["step"].append(np.arange(step + 1, stop + 1, dtype=np.int64))
            history["loss"].append(losses)
            step = stop
            postfix = {"loss": f"{losses.mean():.4g}"}
            if val_data is not None and step % val_every == 0:
                v = np.asarray(val_loss(ema, rest, val_data, val_loss_key, loss_fn))
                history["val_step"].append(np.array([step], np.int64))
                history["val_loss"].append(v.reshape(1))
                postfix["val"] = f"{float(v):.4g}"
            if checkpoint is not None and (
                step == num_steps or (checkpoint_every and step % checkpoint_every == 0)
            ):
                save_checkpoint(checkpoint, current_state())
                last_saved = step
            postfix["steps/s"] = f"{(step - start_step) / max(train_seconds, 1e-9):.0f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(n)
    finally:
        bar.close()
    final = current_state()
    trained = step - start_step
    return TrainResult(
        model=final.model,
        ema_model=final.ema_model,
        opt_state=opt_state,
        history=final.history,
        steps_per_second=trained / train_seconds if trained else 0.0,
        compile_seconds=compile_seconds,
        wall_seconds=time.perf_counter() - t_start,
    )
