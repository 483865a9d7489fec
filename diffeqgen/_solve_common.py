"""Pieces shared by the ODE and SDE samplers: saving, stats, step setup, error reporting."""

from typing import Any

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._conditioning import batched
from ._solvers import Solution, _concrete, evals_per_step

# --------------------------------------------------------------------------- validation helpers


def _check_saveat(saveat, c0, c1, dtype):
    if saveat is None:
        return None
    ts = jnp.asarray(saveat, dtype=dtype)
    if ts.ndim != 1 or ts.shape[0] == 0:
        raise ValueError(f"saveat must be a non-empty 1-d array of times, got shape {ts.shape}")
    cts = _concrete(ts)
    if cts is not None and c0 is not None and c1 is not None:
        lo, hi = min(c0, c1), max(c0, c1)
        span = hi - lo
        if cts.min() < lo - 1e-6 * span or cts.max() > hi + 1e-6 * span:
            raise ValueError(f"saveat times must lie in [{lo}, {hi}], got {cts}")
        d = np.diff(cts) * np.sign(c1 - c0)
        if np.any(d < 0):
            raise ValueError(f"saveat times must run in the direction t0 -> t1, got {cts}")
        ts = jnp.clip(ts, lo, hi)
    return ts


def _stats(sol, solver):
    steps = sol.stats["num_steps"]
    per = evals_per_step(solver)
    nfe = None if per is None else per[0] + per[1] * steps
    return nfe, steps, sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]


def _finish(out: dict, *, where: str, solver_name: str, max_steps: int, hint: str) -> Solution:
    """Turn the jitted core's output into a ``Solution``; raise on a failed solve."""
    ok = _concrete(out["ok"])
    per_sample = jnp.ndim(out["num_steps"]) > 0
    x = out["x"]
    if ok is None:  # inside the user's jit: a runtime check is all we can do
        x = eqx.error_if(x, ~jnp.all(out["ok"]), f"{where}: {solver_name} solve failed ({hint})")
        red = (lambda v: v if v is None else jnp.max(v)) if per_sample else (lambda v: v)
        conv = red
    else:
        if not np.all(ok):
            bad = np.flatnonzero(~np.atleast_1d(ok))
            t_reached = np.atleast_1d(np.asarray(out["t_reached"]))[bad[0]]
            steps = np.atleast_1d(np.asarray(out["num_steps"]))[bad[0]]
            maxed = np.atleast_1d(np.asarray(out["max_steps_hit"]))[bad[0]]
            which = f" (sample {bad[0]}, {bad.size} of {np.size(ok)} failed)" if per_sample else ""
            if maxed:
                raise RuntimeError(
                    f"{where}: solver {solver_name!r} reached max_steps={max_steps} before the "
                    f"end time{which}; stopped at t={float(t_reached):.6g} after {int(steps)} "
                    f"steps. Hint: {hint}"
                )
            raise RuntimeError(
                f"{where}: solver {solver_name!r} failed{which} at t={float(t_reached):.6g} "
                f"after {int(steps)} steps (NaN/inf or a solver failure). Hint: {hint}"
            )

        def conv(v):
            return None if v is None else int(np.max(np.asarray(v)))

    return Solution(
        x=x,
        ts=out["ts"],
        xs=out["xs"],
        nfe=conv(out["nfe"]),
        num_steps=conv(out["num_steps"]),
        num_accepted=conv(out["num_accepted"]),
        num_rejected=conv(out["num_rejected"]),
        nfe_per_sample=out["nfe"] if per_sample else None,
    )


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
        ok=sol.result == dfx.RESULTS.successful,
        max_steps_hit=sol.result == dfx.RESULTS.max_steps_reached,
    )


class _Batched(eqx.Module):
    """``f(t, x, args)`` on one sample -> on a batch ``(n, *event)``.

    vmaps over x, and over the per-sample ``cond`` when ``args`` is a ``PerSample`` pack.
    """

    fn: Any

    def __call__(self, t, y, args):
        return batched(self.fn)(t, y, args)
