"""Sampling by integrating ODEs and SDEs: a thin layer over Diffrax that counts its work.

Time convention: t = 0 noise/source, t = 1 data; generation integrates forward in t (ODEs may
also run backward, t1 < t0, e.g. data -> noise for likelihoods). Vector fields follow Diffrax,
``f(t, x, args)`` on ONE sample ``x`` of shape ``event``; this layer vmaps over the batch.

- ``sample_ode``: fixed steps (``steps=int``) integrate the whole batch as one state; adaptive
  steps (``steps=None``) use a PID controller with an RMS error norm over the whole batch, or
  per-sample error control with ``per_sample=True`` (vmapped solves; see DESIGN: a batch-RMS
  tolerance does not bound each sample's error).
- ``sample_sde``: Ito SDEs with fixed steps; scalar, diagonal or matrix noise; the batch as
  one state (per-sample vmapped solves for Milstein); Stratonovich solvers get the
  Stratonovich drift of the Ito SDE; differentiable (``jax.grad``) with the default
  Brownian path; Diffrax terms accepted as they are.
- Discrete samplers (DDPM, DDIM, Langevin MCMC, predictor-corrector) live in ``_samplers``.

Every call returns a ``Solution`` with ``nfe``, the vector-field evaluations actually made.
"""

from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from ._checks import check_int, check_positive
from ._conditioning import Unbatched, guided, in_axes, pack
from ._failures import NONFINITE_EVENT
from ._fewstep import (
    FEWSTEP_SAMPLERS,
    GRIDS,
    DPMSolverPP,
    EDMHeun,
    FewStepSampler,
    UniPC,
    is_fewstep,
    optimize_grid,
    sample_fewstep,
    time_grid,
)
from ._samplers import (
    annealed_langevin,
    ddim_sample,
    ddpm_sample,
    langevin_mcmc,
    predictor_corrector,
)
from ._sde import sample_sde
from ._solve_common import (
    _Batched,
    _check_saveat,
    _core_scalar,
    _finish,
    _loop_bound,
    _saveat,
    _solver_label,
    _step_setup,
    _unpack,
    field_probe,
)
from ._solvers import (
    ODE_SOLVERS,
    RK4,
    SDE_SOLVERS,
    Solution,
    _check_output,
    _check_times,
    _check_x0,
    _time_arrays,
    eager_fsal,
    get_solver,
)
from ._types import RealScalarLike, VectorField
from .ebm import mala

__all__ = [
    "ODE_SOLVERS",
    "SDE_SOLVERS",
    "RK4",
    "Solution",
    "get_solver",
    "sample_ode",
    "sample_sde",
    "ddpm_sample",
    "ddim_sample",
    "langevin_mcmc",
    "mala",
    "predictor_corrector",
    "annealed_langevin",
    "guided",
    "FEWSTEP_SAMPLERS",
    "GRIDS",
    "FewStepSampler",
    "DPMSolverPP",
    "UniPC",
    "EDMHeun",
    "time_grid",
    "optimize_grid",
]


# --------------------------------------------------------------------------------------- ODEs


@eqx.filter_jit
def _ode_core(vector_field, x0, t0, t1, ts, args, solver, steps, rtol, atol, per_sample, limit):
    controller, dt0 = _step_setup(t0, t1, steps, rtol, atol)
    event = None if steps is None else NONFINITE_EVENT  # fixed steps: stop at the first NaN

    def solve(field, y0, args):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(field),
            eager_fsal(solver),
            t0,
            t1,
            dt0,
            y0,
            args=args,
            saveat=_saveat(ts),
            stepsize_controller=controller,
            max_steps=limit,
            throw=False,
            event=event,
        )
        return _unpack(sol, ts, solver)

    if per_sample:
        field = Unbatched(vector_field)
        out = jax.vmap(lambda y, a: solve(field, y, a), in_axes=(0, in_axes(args)))(x0, args)
        if ts is not None:
            out["xs"] = jnp.swapaxes(out["xs"], 0, 1)
    else:
        out = solve(_Batched(vector_field), x0, args)
    out["ts"] = ts
    return out


def sample_ode(
    vector_field: VectorField,
    x0: Float[ArrayLike, " n *event"],
    *,
    t0: RealScalarLike = 0.0,
    t1: RealScalarLike = 1.0,
    solver: str | dfx.AbstractSolver | FewStepSampler = "tsit5",
    steps: int | None = None,
    rtol: RealScalarLike = 1e-5,
    atol: RealScalarLike = 1e-5,
    saveat: Float[ArrayLike, " m"] | None = None,
    args: Any = None,
    cond: Any = None,
    per_sample: bool = False,
    max_steps: int = 4096,
    grid: Any = None,
    path: Any = None,
    key: PRNGKeyArray | None = None,
    throw: bool = True,
) -> Solution:
    """Integrate ``dx/dt = vector_field(t, x, args)`` for a batch of samples from t0 to t1.

    Args:
        vector_field: ``f(t, x, args) -> dx/dt`` on ONE sample (shape ``event``); vmapped here.
            Pass the same function object (or an Equinox module) across calls to reuse the
            compiled solve: each new closure compiles anew.
        x0: initial batch ``(n, *event)`` at time ``t0`` (noise at t0 = 0 for generation).
        t0: start time.
        t1: end time; ``t1 < t0`` integrates backward (data -> noise).
        solver: a name from ``ODE_SOLVERS`` or a ``diffrax.AbstractSolver``; or a few-step
            sampler for Gaussian paths, a name from ``FEWSTEP_SAMPLERS`` or a
            ``FewStepSampler`` (``DPMSolverPP``, ``UniPC``, ``EDMHeun``), which needs
            ``steps`` and the field's path and runs on the time grid ``grid``.
        steps: a fixed number of equal steps, or ``None`` for adaptive steps (PID controller);
            with a few-step sampler the number of grid intervals (``None`` with a grid array).
        rtol: relative tolerance of the adaptive controller (ignored with ``steps``).
        atol: absolute tolerance of the adaptive controller (ignored with ``steps``).
        saveat: optional 1-d array of times in [t0, t1] (ordered from t0 to t1) to save.
        args: passed to ``vector_field`` unchanged (shared by every sample, not vmapped).
        cond: optional per-sample condition, a pytree with leading axis n mapped with the
            samples; the field is called as ``f(t, x_i, cond_i)``, or ``f(t, x_i, (args,
            cond_i))`` when ``args`` is given too.
        per_sample: adaptive only in effect: vmap the solve over samples so that each sample
            has its own step sizes and error control (the default measures the error as an
            RMS over the whole batch, which does not bound each sample).
        max_steps: step budget of an adaptive solve; reaching it raises ``RuntimeError``.
        grid: few-step samplers only: a name from ``GRIDS`` (``time_grid``), default the
            sampler's own (``"logsnr"``; ``"karras"`` for ``EDMHeun``); or the grid's times,
            a concrete increasing 1-d array from t0 to t1 (e.g. from ``optimize_grid``).
        path: few-step samplers only: the ``GaussianPath`` of the field; default
            ``vector_field.path`` (fields from ``paths.as_vector_field`` and
            ``groundtruth.velocity_field`` carry it).
        key: few-step samplers only: PRNG key of a stochastic sampler (``EDMHeun(churn>0)``).
        throw: raise on a failed solve (the default). ``False`` returns the ``Solution``
            anyway with ``ok=False`` and ``fail_step``/``fail_t`` saying where it failed, for
            use inside ``jit`` without a runtime error (as Diffrax's ``throw=False``).

    Returns:
        ``Solution`` with ``x`` ``(n, *event)`` at t1, ``ts``/``xs`` ``(len(ts), n, *event)``
        when ``saveat`` is given, ``nfe`` and step counts (see ``Solution``). A fixed-step
        solve stops at the first non-finite state (``x`` is then that state, later ``xs``
        are inf, as Diffrax fills them).

    Raises:
        ValueError: bad names, sizes, tolerances, times, NaN in ``x0``, or a field whose output
            shape differs from one sample's shape.
        RuntimeError: (``throw=True``) a non-finite value (NaN or inf) appeared in the state,
            named with its step and time; a field that is non-finite where an adaptive solve
            stalls; an adaptive solve that reached ``max_steps``; or another solver failure
            with Diffrax's own reason. Inside the user's ``jit`` the same checks run as
            ``equinox.error_if`` (an ``EquinoxRuntimeError`` naming the step).
    """
    if is_fewstep(solver):
        return sample_fewstep(
            vector_field, x0, solver=solver, t0=t0, t1=t1, steps=steps, grid=grid, path=path,
            key=key, saveat=saveat, args=args, cond=cond, throw=throw,
        )  # fmt: skip
    for name, value in (("grid", grid), ("path", path), ("key", key)):
        if value is not None:
            raise ValueError(
                f"{name}= is used by the few-step samplers ({', '.join(FEWSTEP_SAMPLERS)}) only, "
                f"not by solver {_solver_label(solver)!r}"
            )
    solver_obj = get_solver(solver, "ode")
    x0 = _check_x0(x0)
    args = pack(args, cond, x0.shape[0], "sample_ode")
    c0, c1 = _check_times(t0, t1)
    if steps is not None:
        steps = check_int("steps", steps)
    else:
        rtol = check_positive("rtol", rtol, traced_ok=True)
        atol = check_positive("atol", atol, traced_ok=True)
        if not isinstance(solver_obj, dfx.AbstractAdaptiveSolver):
            raise ValueError(
                f"solver {_solver_label(solver)!r} has no error estimate for adaptive steps; "
                "pass steps=<int> for fixed steps or choose an adaptive solver such as 'tsit5'"
            )
    max_steps = check_int("max_steps", max_steps)
    if not callable(vector_field):
        raise TypeError(f"vector_field must be callable f(t, x, args), got {type(vector_field)}")
    ts = _check_saveat(saveat, c0, c1, x0.dtype)
    _check_output("vector_field", vector_field, t0, x0, args)
    if c0 is not None and c1 is not None:
        t0a, t1a = _core_scalar(t0, x0.dtype), _core_scalar(t1, x0.dtype)
    else:
        t0a, t1a = _time_arrays(t0, t1, x0.dtype)
    out = _ode_core(
        vector_field,
        x0,
        t0a,
        t1a,
        ts,
        args,
        solver_obj,
        None if steps is None else _core_scalar(steps, jnp.int32),
        _core_scalar(rtol, x0.dtype) if steps is None else None,
        _core_scalar(atol, x0.dtype) if steps is None else None,
        bool(per_sample),
        max_steps if steps is None else _loop_bound(steps),
    )
    if steps is None:
        hint = (
            f"increase max_steps (now {max_steps}), loosen rtol/atol (now {rtol}/{atol}), or use "
            "fixed steps (steps=<int>); a stiff or non-smooth field (ReLU/SELU kinks) needs many "
            "steps"
        )
    else:
        hint = (
            f"Check the vector field for NaN/inf near that time (division by zero, log or sqrt "
            f"of a negative number, overflow); a field that blows up may need more steps (now "
            f"{steps}) or an adaptive solve (steps=None)"
        )
    return _finish(
        out,
        where="sample_ode",
        solver_name=_solver_label(solver),
        max_steps=max_steps,
        hint=hint,
        throw=bool(throw),
        fixed=None if steps is None else (steps, t0, t1),
        probe=field_probe(vector_field, args, t0, t1) if steps is None else None,
    )
