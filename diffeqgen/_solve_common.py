"""Pieces shared by the ODE and SDE samplers: saving, stats, step setup, error reporting."""

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._conditioning import batched
from ._failures import NONFINITE, all_finite, concrete, grid_describe, report, result_message
from ._solvers import Solution, evals_per_step

# --------------------------------------------------------------------------- validation helpers


def _core_scalar(value, dtype):
    """``value`` (a scalar, or an array such as a schedule's levels) as ``dtype`` for the core.

    Concrete values become NumPy arrays (the jitted call transfers them with its other
    arguments): ``jnp.asarray`` ran one small eager XLA conversion per scalar, four per
    ``sample_ode`` call, three per ``sample_sde`` call (issue 12). Traced values (inside the
    user's jit) stay traced. Same rounding either way (float32/float64/int32 only; other
    dtypes take ``jnp.asarray``).
    """
    dtype = np.dtype(dtype)
    if dtype in _HOST_DTYPES and concrete(value) is not None:
        return np.asarray(value, dtype)
    return jnp.asarray(value, dtype)


_HOST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32))


def _check_saveat(saveat, c0, c1, dtype):
    if saveat is None:
        return None
    ts = _core_scalar(saveat, dtype)  # a host array when concrete: no eager conversion
    if ts.ndim != 1 or ts.shape[0] == 0:
        raise ValueError(f"saveat must be a non-empty 1-d array of times, got shape {ts.shape}")
    cts = concrete(ts)
    if cts is not None and c0 is not None and c1 is not None:
        lo, hi = min(c0, c1), max(c0, c1)
        span = hi - lo
        if cts.min() < lo - 1e-6 * span or cts.max() > hi + 1e-6 * span:
            raise ValueError(f"saveat times must lie in [{lo}, {hi}], got {cts}")
        d = np.diff(cts) * np.sign(c1 - c0)
        if np.any(d < 0):
            raise ValueError(f"saveat times must run in the direction t0 -> t1, got {cts}")
        ts = _core_scalar(np.clip(cts, lo, hi), dtype)  # rounding only (checked above)
    return ts


def _stats(sol, solver):
    steps = sol.stats["num_steps"]
    per = evals_per_step(solver)
    nfe = None if per is None else per[0] + per[1] * steps
    return nfe, steps, sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]


def check_solve(
    out: dict,
    tree,
    *,
    where: str,
    solver_name: str,
    max_steps: int,
    hint: str,
    throw: bool = True,
    fixed: tuple | None = None,
    probe: Callable | None = None,
    what: str = NONFINITE + " in the state",
):
    """Raise on a failed Diffrax solve (``throw``) or return its status; ``(tree, status)``.

    ``out`` holds Diffrax's ``result`` code, ``finite`` (whether the final state is finite),
    ``num_steps`` and ``t_reached`` (scalars, or one per sample for vmapped solves). Fixed-step
    solves (``fixed = (steps, t0, t1)``) stop at the first non-finite state (``NONFINITE_EVENT``),
    so ``num_steps`` is the step that produced it. Adaptive solves that reach ``max_steps`` are
    told apart from a non-finite field by ``probe(t, x_reached) -> bool`` (True: the field is
    non-finite just past the state reached), evaluated only after a failed eager call. ``hint``
    names only options the call uses. Under tracing, ``tree`` gets the runtime checks attached
    (use the returned one). ``status`` has ``ok``, ``fail_step``, ``fail_t`` (Python values
    after an eager call) and ``ok_each`` (one per sample, or a scalar).
    """
    # After an eager call the status is concrete: decide on the host in NumPy (no small XLA
    # programs compiled for each new batch shape); under tracing, the same logic in jnp.
    keys = ("result", "finite", "num_steps", "t_reached")
    host = [concrete(out[k]) for k in keys]
    xp = np if all(h is not None for h in host) else jnp
    code, finite, num_steps, t_reached = host if xp is np else (out[k] for k in keys)
    event = int(dfx.RESULTS.event_occurred._value)
    nonfinite = (code == event) | ~finite
    other = (code != int(dfx.RESULTS.successful._value)) & ~nonfinite
    ok = ~(nonfinite | other)
    per_sample = xp.ndim(ok) > 0
    steps_done = xp.asarray(num_steps, xp.int32)
    bad_step = xp.where(ok, 0, steps_done)
    if fixed is not None:
        describe = grid_describe(*fixed)
    else:

        def describe(k: int) -> str:
            return f"step {k}"

    c_ok = ok if xp is np else None
    if c_ok is not None and throw and not np.all(c_ok):
        bad = np.flatnonzero(~np.atleast_1d(c_ok))
        i = bad[0]
        pick = lambda v: np.atleast_1d(np.asarray(v))[i]  # noqa: E731
        t_reached, steps, c = float(pick(t_reached)), int(pick(steps_done)), int(pick(code))
        which = f" (sample {i}; {bad.size} of {np.size(c_ok)} failed)" if per_sample else ""
        if bool(pick(nonfinite)):
            at = describe(steps) if fixed is not None else f"t = {t_reached:.6g} (step {steps})"
            if c != event:  # no event (adaptive steps, BacksolveAdjoint): seen at the end
                at = "the end of the solve"
            raise RuntimeError(f"{where}: {what} appeared at {at}{which}. {hint}")
        if c == int(dfx.RESULTS.max_steps_reached._value):
            if probe is not None and probe(t_reached, out["x"]):
                raise RuntimeError(
                    f"{where}: the vector field returned {NONFINITE} just past t = "
                    f"{t_reached:.6g}{which}; the adaptive solver {solver_name!r} could not step "
                    f"past it and stopped after {steps} steps (max_steps={max_steps}). This is "
                    "not stiffness: check the field for a division by zero, the log or square "
                    "root of a negative number, or overflow near that time"
                )
            raise RuntimeError(
                f"{where}: solver {solver_name!r} reached max_steps={max_steps} before the "
                f"end time{which}; stopped at t={t_reached:.6g} after {steps} steps. Hint: {hint}"
            )
        raise RuntimeError(
            f"{where}: solver {solver_name!r} failed{which} at t={t_reached:.6g} after {steps} "
            f"steps; Diffrax reports: {result_message(c)}"
        )
    if c_ok is None and throw:  # inside the user's jit: runtime checks with static messages
        total = fixed[0] if fixed is not None else max_steps
        step_of = steps_done if fixed is not None else jnp.zeros_like(steps_done)
        tree = report(
            tree, ok=~nonfinite, step=step_of, total=total, where=where, throw=True,
            describe=describe, what=what, hint=hint,
        )  # fmt: skip
        msgs = [
            f"{where}: solver {solver_name!r} failed; Diffrax reports: {m}"
            for m in dfx.RESULTS._index_to_message
        ]
        msgs[int(dfx.RESULTS.max_steps_reached._value)] = (
            f"{where}: solver {solver_name!r} reached max_steps={max_steps} before the end time "
            f"(or the vector field is non-finite where the solver stalled). Hint: {hint}"
        )
        code_b = jnp.broadcast_to(jnp.asarray(code, jnp.int32), jnp.shape(other))
        tree = eqx.branched_error_if(tree, other, jnp.where(other, code_b, 0), msgs)

    t_reached = xp.atleast_1d(xp.asarray(t_reached))
    if c_ok is None:
        first = jnp.argmax(jnp.atleast_1d(~ok))
        status = dict(
            ok=jnp.all(ok),
            fail_step=jnp.atleast_1d(bad_step)[first],
            fail_t=jnp.where(jnp.all(ok), jnp.nan, t_reached[first]),
        )
    else:
        first = int(np.argmax(np.atleast_1d(~c_ok)))
        all_ok = bool(np.all(c_ok))
        status = dict(
            ok=all_ok,
            fail_step=0 if all_ok else int(np.atleast_1d(np.asarray(bad_step))[first]),
            fail_t=float("nan") if all_ok else float(t_reached[first]),
        )
    status["ok_each"] = ok
    return tree, status


_STATUS_KEYS = ("result", "finite", "num_steps", "t_reached", "nfe", "num_accepted", "num_rejected")


def _finish(out: dict, **kwargs) -> Solution:
    """Turn the jitted core's output into a ``Solution``; raise on a failed solve (``throw``).

    Keyword arguments as in ``check_solve``.
    """
    per_sample = jnp.ndim(out["num_steps"]) > 0
    nfe_each = out["nfe"]
    stats = [k for k in _STATUS_KEYS if k in out]
    if not any(isinstance(out[k], jax.core.Tracer) for k in stats):
        # an eager call: the status and counts come to the host in one transfer (one each
        # cost a sync apiece, ~8 per call)
        out = {**out, **jax.device_get({k: out[k] for k in stats})}
    (x, xs), status = check_solve(out, (out["x"], out["xs"]), **kwargs)
    del status["ok_each"]
    if concrete(status["ok"]) is None:
        conv = (lambda v: v if v is None else jnp.max(v)) if per_sample else (lambda v: v)
    else:

        def conv(v):
            return None if v is None else int(np.max(np.asarray(v)))

    return Solution(
        x=x,
        ts=out["ts"],
        xs=xs,
        nfe=conv(out["nfe"]),
        num_steps=conv(out["num_steps"]),
        num_accepted=conv(out["num_accepted"]),
        num_rejected=conv(out["num_rejected"]),
        nfe_per_sample=nfe_each if per_sample else None,
        **status,
    )


@eqx.filter_jit
def _probe_core(field, t, x, args, span):
    f = _Batched(field)
    fx = f(t, x, args)
    bad = ~all_finite(fx)
    for rel in (1e-7, 1e-5, 1e-3, 1e-2):
        h = (rel * span).astype(x.dtype)
        bad = bad | ~all_finite(f(t + h, x + h * fx, args))
    return bad


def field_probe(field, args, t0, t1) -> Callable:
    """``probe(t, x) -> bool``: is ``field`` non-finite at or just past ``(t, x)`` (batched)?

    Evaluates the field at ``(t, x)`` and at Euler predictions ``(t + h, x + h f)`` for
    ``h`` from 1e-7 to 1e-2 of ``t1 - t0``: where an adaptive solver stalls on a NaN, a few
    such evaluations find it.
    """

    def probe(t, x):
        span = jnp.asarray(float(t1) - float(t0), jnp.asarray(x).dtype)
        t = jnp.asarray(t, span.dtype)
        return bool(_probe_core(field, t, x, args, span))

    return probe


def _solver_label(solver) -> str:
    return solver if isinstance(solver, str) else type(solver).__name__


def _saveat(ts):
    if ts is None:
        return dfx.SaveAt(t1=True)
    return dfx.SaveAt(subs=(dfx.SubSaveAt(t1=True), dfx.SubSaveAt(ts=ts)))


def _loop_bound(steps: int) -> int:
    """Static ``max_steps`` for a fixed-step solve: one compile serves every steps <= 4096.

    The step count itself is traced: ``ConstantStepSize`` with ``dt0 = (t1 - t0) / steps``
    takes exactly ``steps`` steps on the grid ``t0 + (t1 - t0) k / steps`` (Diffrax 0.7.2
    computes the grid by fractions; checked for steps 1..5000 in float32 and float64).
    """
    return max(4096, 1 << (steps - 1).bit_length())


def _step_setup(t0, t1, steps, rtol, atol):
    """(controller, dt0) for adaptive (``steps is None``) or fixed (traced int) steps."""
    if steps is None:
        return dfx.PIDController(rtol=rtol, atol=atol), None
    return dfx.ConstantStepSize(), (t1 - t0) / steps.astype(t0.dtype)


def _unpack(sol, ts, solver):
    """Final state, saved trajectory, stats and status of one diffeqsolve (maybe vmapped)."""
    if ts is None:
        t_end, x_end, xs = sol.ts[-1], sol.ys[-1], None
    else:
        t_end, x_end, xs = sol.ts[0][-1], sol.ys[0][-1], sol.ys[1]
    nfe, steps, acc, rej = _stats(sol, solver)
    return dict(
        x=x_end,
        xs=xs,
        t_reached=t_end,
        nfe=nfe,
        num_steps=steps,
        num_accepted=acc,
        num_rejected=rej,
        result=sol.result._value,
        finite=all_finite(x_end),
    )


class _Batched(eqx.Module):
    """``f(t, x, args)`` on one sample -> on a batch ``(n, *event)``.

    vmaps over x, and over the per-sample ``cond`` when ``args`` is a ``PerSample`` pack.
    """

    fn: Any

    def __call__(self, t, y, args):
        return batched(self.fn)(t, y, args)
