"""Loud failures: one mechanism for non-finite results and failed solves.

Every sampler and likelihood of the package computes, inside its compiled core, whether its
result is finite (one ``jnp.isfinite(...).all()`` on the state) and, where a failure happened,
which step produced the first non-finite state:

- fixed-step Diffrax solves stop at the first non-finite state by a Diffrax ``Event``
  ([`NONFINITE_EVENT`]: one reduction per step on the device, no host callback), so the time
  reached and the step count say where it happened;
- the package's own ``lax.scan`` loops (DDPM, DDIM, Langevin, predictor-corrector) carry the
  index of the first step whose state is non-finite ([`first_bad`]).

[`report`] then either raises (``throw=True``, the default of every public function) or hands
back the status for the caller to return (``throw=False``, Diffrax's ``throw=False``). After an
eager call the check happens on the host with the exact step and time in the message; inside
the user's ``jit``/``grad``/``vmap`` it is an ``eqx.branched_error_if`` whose message names the
step (messages are per step, or per group of steps for long loops).
"""

import math
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

NONFINITE = "a non-finite value (NaN or inf)"
_MAX_MESSAGES = 512  # traced messages per call: one per step, or per group of steps


def all_finite(tree) -> jax.Array:
    """One boolean: every floating-point leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree) if _inexact(a)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _inexact(a) -> bool:
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.inexact)


def _nonfinite_cond(t, y, args, **kwargs):
    del t, args, kwargs
    return ~all_finite(y)


NONFINITE_EVENT = dfx.Event(_nonfinite_cond)
"""Stops a fixed-step Diffrax solve at the end of the first step whose state is non-finite."""


def first_bad(bad_step, x, step):
    """Scan carry update: ``step`` (1-based) if ``x`` is the first non-finite state, else as is.

    ``bad_step`` is 0 while every state so far is finite.
    """
    return jnp.where((bad_step == 0) & ~all_finite(x), step, bad_step).astype(jnp.int32)


def concrete(x):
    """``np.asarray(x)`` or None when ``x`` is traced (inside the user's jit/grad/vmap)."""
    try:
        return np.asarray(x)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def result_message(code: int) -> str:
    """Diffrax's own text for a result code."""
    return dfx.RESULTS._index_to_message[int(code)]


def _step_messages(where, total, describe, what, hint):
    """Messages for ``eqx.branched_error_if``: index 0 = step unknown, else one per group.

    Index ``G - g`` is group ``g`` of steps (0-based), so the largest index (what
    ``branched_error_if`` reports under ``vmap``) is the earliest failure.
    """
    size = max(1, math.ceil(total / _MAX_MESSAGES))
    groups = math.ceil(total / size)
    tail = f". {hint}" if hint else ""
    msgs = [f"{where}: {what} appeared{tail}"]
    for g in reversed(range(groups)):
        a, b = g * size + 1, min((g + 1) * size, total)
        at = describe(a) if a == b else f"between {describe(a)} and {describe(b)}"
        msgs.append(f"{where}: {what} appeared at {at}{tail}")
    return msgs, size, groups


def report(
    out,
    *,
    ok,
    step,
    total: int,
    where: str,
    throw: bool,
    describe: Callable[[int], str],
    what: str = NONFINITE,
    hint: str = "",
):
    """Raise (``throw``) or pass on the status of a computation that may have gone non-finite.

    Args:
        out: the result pytree (returned, with a runtime check attached under tracing).
        ok: boolean array (scalar or one per sample): True where the result is fine.
        step: int array like ``ok``: 1-based index of the first bad step, 0 if unknown.
        total: number of steps (for the message).
        where: name of the public function (starts the message).
        throw: raise on failure (True) or only return the status (False).
        describe: ``step -> text`` naming the step and its time, e.g. ``"step 6 of 10 (t = 0.6)"``.
        what: what went wrong.
        hint: what the user may try (only options the call actually uses).

    Returns:
        ``out`` (with an ``eqx.branched_error_if`` attached when traced and ``throw``).
    """
    if not throw:
        return out
    c_ok, c_step = concrete(ok), concrete(step)
    if c_ok is not None and c_step is not None:
        if not np.all(c_ok):
            bad = np.flatnonzero(~np.atleast_1d(c_ok))
            steps = np.atleast_1d(np.broadcast_to(c_step, np.shape(c_ok)))[bad]
            known = steps[steps > 0]
            at = f" at {describe(int(known.min()))}" if known.size else ""
            which = ""
            if np.ndim(c_ok) > 0:
                which = f" (in {bad.size} of {np.size(c_ok)} samples; first: sample {bad[0]})"
            tail = f". {hint}" if hint else ""
            raise RuntimeError(f"{where}: {what} appeared{at}{which}{tail}")
        return out
    msgs, size, groups = _step_messages(where, total, describe, what, hint)
    step = jnp.asarray(step, jnp.int32)
    index = jnp.where(step > 0, groups - (step - 1) // size, 0)
    index = jnp.where(ok, 0, index)
    return eqx.branched_error_if(out, ~jnp.asarray(ok), index, msgs)


def grid_describe(total: int, t0, t1) -> Callable[[int], str]:
    """``step k of total (t = ...)`` for ``total`` equal steps from ``t0`` to ``t1``."""
    c0, c1 = concrete(t0), concrete(t1)

    def describe(k: int) -> str:
        if c0 is None or c1 is None:
            return f"step {k} of {total}"
        t = float(c0) + (float(c1) - float(c0)) * k / total
        return f"step {k} of {total} (t = {t:.6g})"

    return describe
