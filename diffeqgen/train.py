"""The one training loop: any loss, any Optax optimiser, many steps fused per dispatch.

``fit`` runs ``steps_per_call`` optimiser steps inside one compiled ``lax.scan`` (batches drawn on
device inside the scan), keeps an EMA of the parameters, evaluates a validation loss on the EMA
model, shows a progress bar, writes atomic checkpoints, resumes bit for bit, and stops with a
``FloatingPointError`` naming the step at the first non-finite loss or gradient.

For research use:

- Models follow one signature, ``model(t, x, args)`` on ONE sample (Diffrax convention; the
  loss vmaps it); ``fit`` checks it once, abstractly, before compiling. A one-input network such
  as ``eqx.nn.MLP`` is adapted with ``diffeqgen.nn.time_concat``.
- Data is a sampler ``(key, n) -> batch`` or a finite dataset (an array, or a pytree of arrays
  with a common leading axis such as ``(x, labels)``, drawn from uniformly on device). A batch
  may be a pytree, ``(x, cond)`` or ``{"x": x, "cond": cond}``; losses read it with
  ``dg.losses.split_batch``.
- A loss may return ``(loss, aux)`` with ``aux`` a dict of scalars, logged in ``history``.
- ``callback(step, state)`` runs on the host every ``callback_every`` updates.
- ``trainable`` (an ``eqx.filter`` spec) trains part of the model and freezes the rest.
- ``fit(..., init=result)`` continues an earlier result in memory (Adam moments, EMA, step
  counter and history), exactly as resuming from a checkpoint file does.

Example::

    import functools, jax.random as jr, diffeqgen as dg

    model = dg.nn.MLP(2, 2, key=jr.key(0))
    loss = functools.partial(dg.losses.flow_matching_loss, path=dg.paths.get_path("linear"))
    sampler = lambda key, n: dg.data.sample("moons", key, n)
    opt = dg.train.make_optimizer(1e-3)
    result = dg.train.fit(model, loss, sampler, optimizer=opt, key=jr.key(1), num_steps=5000,
                          batch_size=256)
    velocity = result.ema_model  # net(t, x, args) on one sample
    more = dg.train.fit(None, loss, sampler, optimizer=opt, num_steps=10000, batch_size=256,
                        init=result)  # the same as one run of 10000 steps
"""

import contextlib
import dataclasses
import functools
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

from . import _xla, sharding
from ._checkpoint import (
    TrainState,
    _empty_history,
    _typed_key,
    check_writable,
    continue_from,
    load_checkpoint,
    save_checkpoint,
    split_trainable,
)
from ._checks import as_key, check_choice, check_int, check_positive
from ._train_step import (
    RESERVED,
    StepConfig,
    abstract_key,
    cached,
    check_aux,
    check_data,
    check_loss,
    compiled_chunk,
    draw,
    loss_failure,
    nan_log,
    quiet_callbacks,
    val_loss,
)
from ._types import PRNGKeyArray

__all__ = [
    "fit",
    "TrainResult",
    "TrainState",
    "init_state",
    "make_optimizer",
    "save_checkpoint",
    "load_checkpoint",
    "compiler_options",
    "unrolled_threefry",
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
        opt_state: Final Optax state (of the trainable parameters).
        history: NumPy arrays: "step" (1-based update index), "loss" (training loss of that
            update's batch), "val_step", "val_loss" (validation loss of the EMA model after that
            many updates), and for a loss returning ``(loss, aux)`` one array per aux entry,
            "name" (per step, aligned with "step") and "val_name" (aligned with "val_step").
            Includes the steps of earlier runs when resumed or continued.
        steps_per_second: Optimiser steps per second in this call (compile excluded).
        compile_seconds: Time spent compiling the fused step (and the validation loss).
        wall_seconds: Total time of this call.
        step: Number of completed updates (equal to ``num_steps`` unless a callback stopped).
        key: The run's PRNG key.
    """

    model: Any
    ema_model: Any
    opt_state: Any
    history: dict[str, np.ndarray]
    steps_per_second: float
    compile_seconds: float
    wall_seconds: float
    step: int
    key: Any

    @property
    def state(self) -> TrainState:
        """The `TrainState` to continue from: ``fit(..., init=result)`` or ``init=result.state``."""
        return TrainState(
            self.model, self.ema_model, self.opt_state, self.step, self.key, self.history
        )


def compiler_options(batch: Any = None, *, platform: str | None = None) -> dict[str, str]:
    """XLA options `fit` passes when it compiles its fused steps; use them in your own loop.

    ``jax.jit(step, compiler_options=dg.train.compiler_options(batch))`` compiles a
    hand-written training step as `fit` compiles its own. On CPU, for a batch of at most
    4096 numbers over all its leaves (arrays or ``jax.ShapeDtypeStruct``; ``None``: any
    small batch), that is XLA's ``cpu-parallel-task-assigner`` pass switched off, keeping the
    passes disabled in ``XLA_FLAGS``: the loops of a small step are too short to be worth
    splitting across threads (flow-matching step at batch 256 1.34x faster, CNF step at batch
    512 1.28x less CPU time; docs, train page). Results are bit-identical. Elsewhere, or for a
    larger batch, ``{}``. ``platform``: ``"cpu"``, ``"gpu"``, ``"tpu"`` or None (JAX's default
    backend). The options apply to the outermost ``jit`` only (XLA compiles that program).
    """
    if platform is not None:
        platform = check_choice("platform", platform, ("cpu", "gpu", "tpu"))
    if batch is None:
        return _xla.compiler_options(platform)
    return _xla.fit_compiler_options(batch, platform)


def unrolled_threefry() -> contextlib.AbstractContextManager[bool]:
    """Context: programs lowered for CPU inside it draw JAX's random numbers without a loop.

    JAX lowers its Threefry hash (every ``jax.random`` draw and key split) on CPU as a loop
    of 5 iterations; inside this context, as the same 20 rounds written out (as on GPU), one
    elementwise loop per draw. The random numbers are bit-identical. `fit` lowers its steps
    this way, unless ``jax_disable_most_optimizations`` is set (with XLA's optimisations off
    the unrolled hash compiled ~1/3 slower). For a hand-written step, call the ``jax.jit``
    function the first time (or ``.lower(...)`` it) inside
    ``with dg.train.unrolled_threefry():``. On the flow-matching step of
    ``benchmarks/throughput.py`` (batch 256) 1.12-1.16x less CPU time, and draws of a large
    array up to 1.4x, compiling no slower with optimisations on (docs, train page). Only the
    lowering changes: a program JAX already lowered (its cache) is unchanged, and other
    platforms are unaffected. Yields whether the rule was swapped (False if this JAX release
    lacks the internals it uses; then nothing changes).
    """
    return _xla.unrolled_threefry()


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


def init_state(
    model,
    optimizer: optax.GradientTransformation,
    *,
    key: PRNGKeyArray | int,
    trainable: Any = None,
) -> TrainState:
    """Fresh `TrainState` at step 0 (EMA equal to the model); also the ``like`` for loading.

    ``trainable`` is the filter spec of `fit`: the optimiser state covers the selected arrays.
    """
    params, _ = split_trainable(model, trainable)
    key = _typed_key(as_key(key))
    return TrainState(model, model, _opt_init(optimizer, params), 0, key, _empty_history())


def _opt_init(optimizer, params):
    """``optimizer.init(params)`` compiled once per optimiser (eagerly it costs ms per call).

    A plain ``jax.jit`` (the optimiser static; an unhashable one falls back to
    ``eqx.filter_jit``): it does not wait for the result, as ``eqx.filter_jit`` does.
    """
    try:
        hash(optimizer)
    except TypeError:
        return _opt_init_filtered(optimizer, params)
    return _opt_init_jit(optimizer, params)


@functools.partial(jax.jit, static_argnums=0)
def _opt_init_jit(optimizer, params):
    return optimizer.init(params)


@eqx.filter_jit
def _opt_init_filtered(optimizer, params):
    return optimizer.init(params)


def _as_state(init) -> TrainState:
    if isinstance(init, TrainResult):
        return init.state
    if isinstance(init, TrainState):
        return init
    raise TypeError(
        f"init must be a TrainResult or TrainState returned by an earlier fit, got "
        f"{type(init).__name__}"
    )


def _placement(mesh, batch_axis, batch_size: int) -> Callable:
    """Where ``fit`` puts its arrays: unchanged without a mesh, else replicated on the mesh."""
    if mesh is None:
        if batch_axis is not None:
            raise ValueError(f"batch_axis={batch_axis!r} needs a mesh, got mesh=None")
        return lambda tree: tree
    axis = sharding.batch_axis(mesh, batch_axis)
    sharding.check_divisible("batch_size", batch_size, mesh, axis)
    return functools.partial(sharding.replicate, mesh=mesh)


def _next_stop(step: int, num_steps: int, every: list[int]) -> int:
    stop = num_steps
    for e in every:
        stop = min(stop, (step // e + 1) * e)
    return stop


def fit(
    model,
    loss_fn: Callable,
    data: Any,
    *,
    optimizer: Any,
    key: PRNGKeyArray | int | None = None,
    num_steps: int,
    batch_size: int,
    steps_per_call: int = 100,
    ema_decay: float | int = 0.999,
    val_data: Any = None,
    val_every: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
    trainable: Any = None,
    init: Any = None,
    callback: Callable | None = None,
    callback_every: int | None = None,
    mesh: Any = None,
    batch_axis: str | None = None,
) -> TrainResult:
    """Train ``model`` by minimising ``loss_fn`` with ``optimizer``.

    Each optimiser update ``s`` (0-based) uses the key ``jr.fold_in(train_key, s)`` with
    ``train_key, val_key = jr.split(key)``, so results do not depend on ``steps_per_call``,
    validation, callback or checkpoint intervals, or interruption and continuation: a run
    resumed from a checkpoint or continued with ``init=`` equals an uninterrupted one bit for
    bit on CPU. Updates run ``steps_per_call`` at a time inside one compiled ``lax.scan``
    (compiled once; a shorter final chunk masks the unused iterations). The executable is cached
    across calls keyed on the model structure, the data kind and shapes, the sizes, the
    trainable selection and the identity of ``loss_fn`` and ``optimizer``: reuse the same
    objects (not a fresh ``functools.partial``/``optax.adam(...)``) to skip recompiling.

    Before compiling, ``loss_fn`` is evaluated abstractly (``eqx.filter_eval_shape``) on one
    batch. If it fails with an argument ``TypeError`` because ``model(t, x, args)`` cannot be
    called on one sample, ``fit`` raises one ``TypeError`` naming that signature and the adapter
    ``diffeqgen.nn.time_concat``; other errors surface unchanged.

    Args:
        model: An Equinox module ``model(t, x, args)`` on one sample (Diffrax convention); its
            floating-point arrays (those selected by ``trainable``) are trained. May be None
            when ``init`` is given (otherwise it must equal init's model).
        loss_fn: ``loss_fn(model, key, batch)`` returning a scalar, or a pair ``(loss, aux)``
            with ``aux`` a dict of real scalars (detected from the abstract evaluation of the
            output: a 2-tuple whose second entry is a dict). Each aux entry is logged per step
            in ``history[name]`` (and on validation in ``history["val_" + name]``), in its own
            floating dtype (integer or boolean entries in the loss's dtype). ``batch`` is what
            ``data`` gives for ``batch_size`` samples (see ``dg.losses.split_batch``); use
            ``functools.partial`` for configuration.
        data: A sampler ``(key, n) -> batch`` called inside the compiled step, where ``batch``
            is an array ``(n, *event)`` or a pytree such as ``(x, cond)`` or
            ``{"x": x, "cond": cond}`` whose leaves all have leading axis n. Or a finite
            dataset: an array ``(N, *event)`` or a pytree of arrays sharing the leading axis N
            (e.g. ``(x, labels)`` with integer labels), from which rows are drawn uniformly with
            replacement on device (the same rows from every leaf). Floating arrays must be
            finite; a bare array must be floating.
        optimizer: An ``optax.GradientTransformation`` (see `make_optimizer`).
        key: PRNG key of the run (stored in checkpoints), or an int seed (``jax.random.key``).
            Optional with ``init`` (its key is
            used; a different key is ignored with a warning, as on resume).
        num_steps: Total number of updates, counting those already done by a resumed
            checkpoint or by ``init``.
        batch_size: Samples per update.
        steps_per_call: Updates fused per compiled dispatch.
        ema_decay: EMA decay in [0, 1); the EMA model is ``e <- e + (1-d)(p - e)`` with
            ``d = min(ema_decay, (1+s)/(10+s))``.
        val_data: Optional validation data: an array or pytree of arrays (all rows form one
            batch) or sampler (one fixed batch of ``max(batch_size, VAL_SAMPLES)`` drawn once);
            its loss is evaluated on the EMA model with a fixed key.
        val_every: Validate after every multiple of this many updates (default
            ``steps_per_call`` when ``val_data`` is given).
        checkpoint: File path; the state is saved there atomically at the end and every
            ``checkpoint_every`` updates. Checked to be writable before training starts. The
            file carries a format version, a checksum of its weights and the shapes of the
            model and optimiser state: damage or a mismatch on resume is reported, never
            loaded quietly.
        checkpoint_every: Save interval in updates (requires ``checkpoint``).
        resume: If True and ``checkpoint`` exists, continue from it (its key is used; it takes
            precedence over ``init``, which is used while the file does not exist yet).
        progress: Show a tqdm bar with step, loss and steps per second.
        trainable: Which floating-point arrays to train, as an ``eqx.filter`` spec: a pytree of
            bools with the model's structure (or a prefix of it), or a callable
            ``leaf -> bool``; e.g. ``eqx.tree_at(lambda m: m.head, jax.tree_util.tree_map(lambda
            _: False, model), replace=True)`` trains ``model.head`` only. The others are frozen:
            no gradient, no optimiser state, bit-identical after training; the EMA covers every
            floating-point array (a frozen one's EMA stays equal to it when they start equal).
            Default: all.
        init: A `TrainResult` or `TrainState` of an earlier run to continue in memory: its
            model, EMA, optimiser state (Adam moments), step counter, key and history are
            continued, so ``fit(n1)`` then ``fit(n2, init=result)`` equals ``fit(n2)``. A state
            with ``opt_state=None`` starts the optimiser afresh (e.g. after changing
            ``trainable``). History keys present on one side only are padded with NaN.
        callback: Optional host function ``callback(step, state)`` called after every multiple
            of ``callback_every`` updates, between compiled chunks (after validation and
            checkpointing of that step), with ``step`` the number of completed updates and
            ``state`` the current `TrainState` (model, EMA model, optimiser state, step, key,
            history so far). If it returns ``True``, training stops there (the checkpoint, if
            any, is written) and the result holds that state.
        callback_every: Callback interval in updates (default ``steps_per_call``).
        mesh: Optional ``jax.sharding.Mesh`` for data parallelism: each batch is split along
            ``batch_axis`` across its devices, and the model, EMA, optimiser state and a finite
            dataset are replicated (an array already placed on ``mesh`` with a
            ``NamedSharding`` keeps it); the compiler reduces the gradients. ``batch_size``
            must be a multiple of the device count along ``batch_axis``. The losses equal those
            of a one-device run up to float reduction order; checkpoints resume on any device
            count. See ``diffeqgen.sharding``.
        batch_axis: The mesh axis that splits the batch (default: the mesh's first axis).

    Returns:
        A `TrainResult` (``result.state`` is the `TrainState` to pass as ``init``).

    Raises:
        FloatingPointError: The loss, a gradient or a parameter became non-finite; names the
            first bad step and the last checkpoint, which is left untouched. A check inside
            the loss that fails (e.g. [`cnf.log_prob`][diffeqgen.cnf.log_prob] meeting a
            non-finite state) is reported with the range of steps it happened in and its own
            message (``RuntimeError`` when it is not about a non-finite value).
        ValueError, TypeError: Invalid arguments (the message names the argument), or a model
            that cannot be called as ``model(t, x, args)`` on one sample.
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
    start = None if init is None else _as_state(init)
    if start is not None:
        model = start.model if model is None else model
        key = start.key if key is None else key
    if model is None:
        raise TypeError("model is required (it may be None only when init=... is given)")
    if key is None:
        raise TypeError("key is required (it may be omitted only when init=... is given)")
    if not jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)):
        raise ValueError(f"model has no floating-point arrays to train: {type(model).__name__}")
    split_trainable(model, trainable)  # check the spec early
    key = _typed_key(as_key(key))
    train_key, val_key = jr.split(key)
    data, is_sampler = check_data("data", data, batch_size, key)
    place = _placement(mesh, batch_axis, batch_size)
    if not is_sampler:
        data = place(data)
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
    if callback_every is not None:
        callback_every = check_int("callback_every", callback_every)
        if callback is None:
            raise ValueError(f"callback_every={callback_every} needs a callback, got None")
    if callback is not None:
        if not callable(callback):
            raise TypeError(f"callback must be callable (step, state) -> None, got {callback!r}")
        callback_every = callback_every or steps_per_call
    checkpoint = None if checkpoint is None else os.fspath(checkpoint)
    if checkpoint is not None:
        check_writable(checkpoint)  # before training, not after it

    # Abstract evaluations (tracing, ~15 ms a call) depend only on the objects and shapes:
    # memoised, so that a short fit call costs little more than its compiled steps.
    batch_struct = cached(
        ("draw", data if is_sampler else None, abstract_key(data), batch_size, abstract_key(key)),
        lambda: eqx.filter_eval_shape(draw, data, is_sampler, key, batch_size),
    )
    loss_struct = cached(
        ("loss", loss_fn, abstract_key(model), abstract_key(key), abstract_key(batch_struct)),
        lambda: check_loss(loss_fn, model, key, batch_struct),
    )
    loss_struct, aux_spec = check_aux(loss_struct)

    def adopt_key(stored, source: str):
        nonlocal key, train_key, val_key
        if not np.array_equal(jr.key_data(stored), jr.key_data(key)):
            warnings.warn(
                f"key differs from the key stored in {source}; continuing with the stored "
                "key so the run stays reproducible",
                stacklevel=3,
            )
            key = _typed_key(stored)
            train_key, val_key = jr.split(key)

    resuming = resume and os.path.exists(checkpoint)
    if resuming:
        state = load_checkpoint(
            checkpoint, init_state(model, optimizer, key=key, trainable=trainable)
        )
        adopt_key(state.key, repr(checkpoint))
        where = f"the checkpoint {checkpoint!r}"
    elif start is not None:
        state = continue_from(start, model, optimizer, trainable)
        adopt_key(_typed_key(state.key), "init")
        where = "init"
    else:
        state = init_state(model, optimizer, key=key, trainable=trainable)
    if state.step > num_steps:
        raise ValueError(
            f"num_steps={num_steps} is below the step {state.step} already reached by {where}"
        )
    if val_data is not None and val_is_sampler:  # one fixed validation batch
        n_val = max(batch_size, VAL_SAMPLES)
        val_data = eqx.filter_jit(val_data)(jr.fold_in(val_key, 0), n_val)
    val_data = place(val_data)
    state = state._replace(
        model=place(state.model), ema_model=place(state.ema_model), opt_state=place(state.opt_state)
    )
    params, rest = split_trainable(state.model, trainable)
    ema = eqx.filter(state.ema_model, eqx.is_inexact_array)
    opt_state, step = state.opt_state, state.step
    last_saved = state.step if resuming else None

    # history: the earlier entries, with keys new to this run (or absent from it) NaN-padded
    aux_names = [k for k, _ in aux_spec or ()]
    new_keys = dict(aux_spec or ())
    if val_data is not None:
        new_keys.update({"val_" + k: dt for k, dt in aux_spec or ()})
    old = {k: np.asarray(v) for k, v in state.history.items()}
    for k, dt in new_keys.items():
        if k not in old:
            old[k] = nan_log(len(old["val_step" if k.startswith("val_") else "step"]), dt)
    history = {k: [v] for k, v in old.items()}
    absent_step = [k for k in old if not k.startswith("val_") and k not in (*RESERVED, *aux_names)]
    absent_val = [
        k for k in old if k.startswith("val_") and k not in ("val_step", "val_loss", *new_keys)
    ]

    config = StepConfig(
        loss_fn,
        optimizer,
        batch_size,
        steps_per_call,
        ema_decay,
        is_sampler,
        loss_struct.dtype,
        aux_spec,
        None if mesh is None else sharding.batch_sharding(mesh, batch_axis),
    )

    def chunk_args(carry, step: int, n: int):
        # a full chunk runs every iteration unconditionally; a shorter one masks the rest
        masked = n < steps_per_call
        step, n = np.asarray(step, np.int32), np.asarray(n, np.int32)
        return (carry, rest, data, step, n, train_key, config, masked)

    executables: dict[bool, Callable] = {}

    def executable(step: int, n: int) -> tuple[Callable, float]:
        """The compiled chunk (cached across calls) and the seconds spent compiling it now."""
        masked = n < steps_per_call
        if masked not in executables:  # the structure of the carry is fixed within a call
            executables[masked], seconds = compiled_chunk(
                chunk_args((params, ema, opt_state), step, n)
            )
            return executables[masked], seconds
        return executables[masked], 0.0

    every = [e for e in (val_every, checkpoint_every, callback_every) if e is not None]
    val_loss_key = None if val_data is None else jr.fold_in(val_key, 1)  # no eager op unless used
    t0 = time.perf_counter()
    if step < num_steps:  # trace + compile the first chunk's executable (no warm-up run)
        executable(step, _next_stop(step, num_steps, [steps_per_call, *every]) - step)
    if val_data is not None and step < num_steps:
        val_loss.lower(ema, rest, val_data, val_loss_key, loss_fn).compile()
    compile_seconds = time.perf_counter() - t0

    def current_state() -> TrainState:
        hist = {k: np.concatenate(v) for k, v in history.items()}
        return TrainState(
            eqx.combine(params, rest), eqx.combine(ema, rest), opt_state, step, key, hist
        )

    def save() -> None:
        state = sharding.gather(current_state()) if mesh is not None else current_state()
        if jax.process_index() == 0:  # one writer when several hosts share the run
            save_checkpoint(checkpoint, state)

    def host_event(stop: int) -> bool:
        """Whether the host acts at ``stop`` (validation, checkpoint, callback or the end)."""
        return stop == num_steps or any(stop % e == 0 for e in every)

    def where() -> str:
        return (
            f"the last good checkpoint is {checkpoint!r} (step {last_saved})"
            if last_saved is not None
            else "no checkpoint was written"
            + ("" if checkpoint else " (pass checkpoint=... to keep one)")
        )

    def failed(e: BaseException, first: int, stop: int) -> None:
        """Re-raise a failed check inside the loss (e.g. cnf.log_prob) with the step range."""
        msg = loss_failure(e)
        if msg is None:
            raise e
        kind = FloatingPointError if "non-finite" in msg else RuntimeError
        raise kind(
            f"the loss failed during steps {first + 1}..{stop}: {msg}; training stopped "
            f"and this state was not saved; {where()}"
        ) from e

    def dispatch(carry, first: int):
        """Start the chunk of updates from ``first`` (not waiting for it): (first, stop, out)."""
        nonlocal compile_seconds, t1
        stop = _next_stop(first, num_steps, [steps_per_call, *every])
        exe, seconds = executable(first, stop - first)  # 0 s unless it needs the other one
        compile_seconds += seconds
        t1 += seconds  # compiling is not training time
        try:
            return first, stop, exe(*chunk_args(carry, first, stop - first))
        except Exception as e:  # noqa: BLE001  (a check that failed synchronously)
            failed(e, first, stop)

    # Chunks are dispatched ahead: while chunk k runs, the host reads chunk k-1's losses and
    # keeps its history; the next chunk starts from chunk k's (device) outputs. Where the host
    # must act (validation, checkpoint, callback, the end) it waits for the chunk first. A
    # chunk with a bad step stops training before its outputs are adopted, so the state and
    # the last checkpoint are those before it; a chunk dispatched after it is discarded.
    start_step, train_seconds, stop_requested, t1 = step, 0.0, False, 0.0
    bar = None  # progress=False: no bar and no per-chunk formatting of its text
    if progress:
        bar = tqdm(total=num_steps, initial=step, unit="step", dynamic_ncols=True)
    try:
        with quiet_callbacks():
            t1 = time.perf_counter()
            job = dispatch((params, ema, opt_state), step) if step < num_steps else None
            while job is not None:
                first, stop, (new_carry, (losses, aux, ok)) = job
                n = stop - first
                job, pending_error = None, None
                if not host_event(stop):
                    try:
                        job = dispatch(new_carry, stop)
                    except Exception as e:  # noqa: BLE001  (reported once this chunk is read)
                        pending_error = e
                try:
                    losses, ok = np.asarray(losses)[:n], np.asarray(ok)[:n]
                    aux = None if aux is None else {k: np.asarray(v)[:n] for k, v in aux.items()}
                except Exception as e:  # noqa: BLE001
                    failed(e, first, stop)
                if not ok.all():
                    bad = int(np.argmin(ok))
                    raise FloatingPointError(
                        f"non-finite loss, gradient or parameter at step {first + bad + 1} (loss "
                        f"= {losses[bad]}); training stopped and this state was not saved; "
                        f"{where()}"
                    )
                if pending_error is not None:
                    raise pending_error
                params, ema, opt_state = new_carry
                history["step"].append(np.arange(first + 1, stop + 1, dtype=np.int64))
                history["loss"].append(losses)
                for k in aux_names:
                    history[k].append(aux[k])
                for k in absent_step:
                    history[k].append(nan_log(n, old[k].dtype))
                step = stop
                postfix = {"loss": f"{losses.mean():.4g}"} if bar is not None else {}
                if job is None:  # the host acts here: the time it takes is not training time
                    train_seconds += time.perf_counter() - t1
                if val_data is not None and step % val_every == 0:
                    out = val_loss(ema, rest, val_data, val_loss_key, loss_fn)
                    v, vaux = out if aux_spec is not None else (out, {})
                    v = np.asarray(v)
                    history["val_step"].append(np.array([step], np.int64))
                    history["val_loss"].append(v.reshape(1))
                    for k, dt in aux_spec or ():
                        history["val_" + k].append(np.asarray(vaux[k]).astype(dt).reshape(1))
                    for k in absent_val:
                        history[k].append(nan_log(1, old[k].dtype))
                    if bar is not None:
                        postfix["val"] = f"{float(v):.4g}"
                if checkpoint is not None and (
                    step == num_steps or (checkpoint_every and step % checkpoint_every == 0)
                ):
                    save()
                    last_saved = step
                if callback is not None and step % callback_every == 0:
                    stop_requested = callback(step, current_state()) is True
                    if stop_requested and checkpoint is not None and last_saved != step:
                        save()
                        last_saved = step
                if bar is not None:
                    busy = train_seconds + (time.perf_counter() - t1 if job is not None else 0.0)
                    postfix["steps/s"] = f"{(step - start_step) / max(busy, 1e-9):.0f}"
                    bar.set_postfix(postfix, refresh=False)
                    bar.update(n)
                if job is None and step < num_steps and not stop_requested:
                    t1 = time.perf_counter()
                    job = dispatch((params, ema, opt_state), step)
    finally:
        if bar is not None:
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
        step=step,
        key=key,
    )
