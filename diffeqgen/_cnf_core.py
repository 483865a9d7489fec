"""Private core of ``diffeqgen.cnf``: validation and the augmented ODE ``[z, delta]``.

``d delta/dt = -tr(df/dz)`` on one sample (or a batch), exact (forward-mode Jacobian) or by
Hutchinson's estimator with probes fixed for the whole solve.
"""

import math
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _random
from . import solve as _solve
from ._checks import check_choice, check_int, check_positive, is_traced
from ._conditioning import in_axes, merge, one_sample
from ._failures import NONFINITE, NONFINITE_EVENT, all_finite, concrete
from ._gaussian_paths import GaussianPath
from ._solve_common import _core_scalar
from ._solvers import _time_arrays, eager_fsal, evals_per_step
from ._types import Array

TRACES = ("exact", "hutchinson")
"""Divergence estimators: exact forward-mode Jacobian trace, or Hutchinson's estimator."""

PROBES = ("rademacher", "gaussian")
"""Probe distributions for Hutchinson's estimator."""

ERROR_CONTROLS = ("max", "per_sample", "rms")
"""Error control of adaptive likelihood solves: ``"max"`` one batched solve whose error norm is
the max over samples of each sample's RMS error (every sample meets the tolerance, the steps are
shared); ``"per_sample"`` one solve per sample (vmapped, own steps); ``"rms"`` one batched solve
with the RMS error of the whole batch (torchdiffeq's default; does not bound each sample)."""


PI_COEFFS = dict(pcoeff=0.3, icoeff=0.3)
"""PI step-size control of adaptive likelihood solves (Diffrax's I-control is pcoeff=0,
icoeff=1). Measured on a SELU field (divergence with jumps) at dopri5 1e-5: the batched RMS
control's max error fell from 0.0166 to 0.0114 nats for 25% more NFE, and per-sample control's
from 0.027 to 0.019 with 19% fewer NFE (docs, CNF page)."""


I_COEFFS = dict(pcoeff=0.0, icoeff=1.0)
"""I step-size control (Diffrax's and torchdiffeq's default), the default of ``cnf.nll_loss``
(training). Issue 12, measured on the benchmark's SELU field (batch 512, dopri5 at 1e-5): PI
control (``PI_COEFFS``) made 613 forward evaluations where I-control made 493 (torchdiffeq 482),
and a training step costs about 4.5 forward evaluations per forward evaluation (one
recomputation plus the reverse-mode derivative of the exact trace), so the step is ~20% cheaper;
the gradient's error against a float64 reference is about the same (tests/test_cnf_train_step.py;
docs, CNF page). Likelihood evaluation keeps ``PI_COEFFS``."""

STEP_CONTROLS = ("i", "pi")
"""Step-size control of adaptive likelihood solves (``step_control=`` of ``cnf.log_prob`` and
``cnf.nll_loss``): ``"pi"`` PI control (``PI_COEFFS``, pcoeff = icoeff = 0.3; the default of
``log_prob``), ``"i"`` I-control (``I_COEFFS``; the default of ``nll_loss``)."""

_STEP_COEFFS = {"i": I_COEFFS, "pi": PI_COEFFS}


def _max_sample_norm(error) -> Array:
    """Max over samples of each sample's RMS over its components of ``(z (n, *event), delta (n,))``.

    The norm of ``diffrax.PIDController`` for ``error_control="max"``: the step is accepted only
    when every sample's scaled error is below 1 (Diffrax stops gradients through the controller).
    """
    z, delta = error
    n = delta.shape[0]
    sq = jnp.sum(jnp.reshape(z, (n, -1)) ** 2, axis=1) + delta**2
    return jnp.sqrt(jnp.max(sq) / (z[0].size + 1))


@jax.jit  # one program per shape when called eagerly (not one per elementwise op)
def _standard_normal_log_prob(z: Array) -> Array:
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * jnp.sum(flat**2, axis=1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


def _base_log_prob(base: Any, z: Array) -> Array:
    return _standard_normal_log_prob(z) if base is None else base.log_prob(z)


UNROLL_TRACE = 16
"""Up to this many dimensions the exact trace sums ``d`` Jacobian-vector products written out one
by one (``(J e_i)_i``); above it, one ``vmap`` over the basis. Measured on the benchmark's
MLP (d = 2, 10,000 points, CPU): the augmented evaluation of a batch costs 2.1x a forward pass
written out at the batch level, against 3.3x for the ``vmap`` over the basis of each sample's
linearisation (which is what made ``log_prob`` slower per evaluation than torchdiffeq)."""


def _basis(d: int, i: int, shape, dtype) -> Array:
    """The i-th standard basis vector of R^d in every row of a batch of shape ``(n, *event)``."""
    return jnp.zeros((shape[0], d), dtype).at[:, i].set(1).reshape(shape)


class _Augmented(eqx.Module):
    """Augmented dynamics ``(z, delta) -> (f(t, z), -tr(df/dz))`` on one sample (or a batch)."""

    vector_field: Callable
    trace: str = eqx.field(static=True)
    batched: bool = eqx.field(static=True)

    def _one(self, t, z, user_args, probes):
        fz, jvp = jax.linearize(lambda y: self.vector_field(t, y, merge(user_args)), z)
        if self.trace == "exact":
            # one sample (per-sample error control): a vmap over the basis. Written-out
            # products here were 1.25x cheaper but not bit-identical between a sharded and an
            # unsharded batch (matrix products of other shapes), which per-sample work must be.
            d = z.size
            basis = jnp.eye(d, dtype=z.dtype).reshape(d, *z.shape)
            columns = jax.vmap(jvp)(basis).reshape(d, d)  # row i = J e_i
            div = jnp.trace(columns)
        else:
            jv = jax.vmap(jvp)(probes)  # (num_probes, *event)
            div = jnp.mean(jnp.sum((probes * jv).reshape(probes.shape[0], -1), axis=1))
        return fz, -div.astype(z.dtype)

    def _batch_exact(self, t, z, user_args):
        """Exact trace of a batch: the field vmapped over samples, linearised at the batch level.

        Its Jacobian is block diagonal (samples do not interact), so the product with the
        basis vector e_i in every row gives each sample's column i; the trace sums the
        diagonal entries of the ``d`` products. Same values as `_one` (to rounding).
        """
        axes = (0, in_axes(user_args))
        field = jax.vmap(lambda y, a: self.vector_field(t, y, merge(a)), in_axes=axes)
        fz, jvp = jax.linearize(lambda y: field(y, user_args), z)
        n, d = z.shape[0], z[0].size
        div = sum(jvp(_basis(d, i, z.shape, z.dtype)).reshape(n, d)[:, i] for i in range(d))
        return fz, -div.astype(z.dtype)

    def __call__(self, t, state, args):
        z, _ = state
        user_args, probes = args
        if self.batched:
            if self.trace == "exact" and z[0].size <= UNROLL_TRACE:
                return self._batch_exact(t, z, user_args)
            axes = (None, 0, in_axes(user_args), 0)
            return jax.vmap(self._one, in_axes=axes)(t, z, user_args, probes)
        return self._one(t, z, user_args, probes)


@eqx.filter_jit
def _integrate(
    vector_field,
    z,
    delta,
    user_args,
    probes,
    t_start,
    t_end,
    dt0,
    *,
    solver,
    controller,
    adjoint,
    max_steps,
    trace,
    per_sample,
):
    """Solve the augmented ODE from t_start to t_end; return (z, delta, status).

    ``status``: Diffrax's result code, steps taken and the time reached (per sample, or of the
    batched solve). Fixed steps stop at the first non-finite state (``NONFINITE_EVENT``;
    not with ``BacksolveAdjoint``, which Diffrax refuses with events).
    """
    fixed = isinstance(controller, diffrax.ConstantStepSize)
    event = None if not fixed or isinstance(adjoint, diffrax.BacksolveAdjoint) else NONFINITE_EVENT

    def run(z, delta, probes, user_args, batched):
        term = diffrax.ODETerm(_Augmented(vector_field, trace, batched))
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t_start,
            t_end,
            dt0,
            (z, delta),
            args=(user_args, probes),
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=max_steps,
            throw=False,
            event=event,
        )
        status = dict(
            result=sol.result._value, num_steps=sol.stats["num_steps"], t_reached=sol.ts[-1]
        )
        return sol.ys[0][0], sol.ys[1][0], status

    if per_sample:
        axes = (0, 0, 0, in_axes(user_args))
        return jax.vmap(lambda z_, d_, p_, a_: run(z_, d_, p_, a_, False), in_axes=axes)(
            z, delta, probes, user_args
        )
    return run(z, delta, probes, user_args, True)


def _validate(
    vector_field,
    x_event_shape,
    dtype,
    t0,
    t1,
    base,
    solver,
    steps,
    rtol,
    atol,
    trace,
    num_probes,
    probe,
    key,
    args,
    max_steps,
):
    """Check every option before any solving; return (solver, t0, t1, steps, max_steps)."""
    if is_traced(t0) or is_traced(t1):  # inside the user's jit/grad/vmap: check at run time
        t0, t1 = _time_arrays(t0, t1, dtype, forward_only=True)
    else:
        t0 = float(t0)
        t1 = float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
            raise ValueError(f"need finite t0 < t1 (t0 = base, t1 = data), got t0={t0}, t1={t1}")
    solver_obj = _solve.get_solver(solver, "ode")
    if steps is None:
        for name, tol in (("rtol", rtol), ("atol", atol)):
            if not is_traced(tol):  # a traced tolerance is used as given (PIDController)
                check_positive(name, tol)
        if not isinstance(solver_obj, diffrax.AbstractAdaptiveSolver):
            raise ValueError(
                f"solver {solver!r} has no error estimate for adaptive steps; pass steps=<int> "
                "or choose an adaptive solver such as 'dopri5'"
            )
    else:
        steps = check_int("steps", steps)
    max_steps = (steps if steps is not None else 4096) if max_steps is None else max_steps
    max_steps = check_int("max_steps", max_steps)
    if steps is not None and steps > max_steps:
        raise ValueError(f"steps={steps} exceeds max_steps={max_steps}")
    check_choice("trace", trace, TRACES)
    check_choice("probe", probe, PROBES)
    check_int("num_probes", num_probes)
    if trace == "hutchinson" and key is None:
        raise ValueError("trace='hutchinson' needs a PRNG key (key=...) to draw its probes")
    if base is not None and not hasattr(base, "log_prob"):
        raise ValueError(f"base must be None (standard normal) or have .log_prob, got {base!r}")
    base_dim = getattr(base, "dim", None)
    if base_dim is not None and len(x_event_shape) == 1 and x_event_shape[0] != base_dim:
        raise ValueError(
            f"x must have trailing dimension {base_dim} (the base's dim), got event shape "
            f"{tuple(x_event_shape)}"
        )
    model_dim = getattr(vector_field, "dim", None)
    if isinstance(model_dim, int) and len(x_event_shape) == 1 and x_event_shape[0] != model_dim:
        raise ValueError(
            f"x must have trailing dimension {model_dim} (the model's dim), got event shape "
            f"{tuple(x_event_shape)}"
        )
    probe_x = jax.ShapeDtypeStruct(tuple(x_event_shape), dtype)
    try:
        out = jax.eval_shape(
            lambda y, a: vector_field(jnp.asarray(t1, dtype), y, a), probe_x, one_sample(args)
        )
    except Exception as err:  # noqa: BLE001  (re-raised with the shapes the user needs)
        raise ValueError(
            f"vector_field(t, x, args) failed on one sample of shape {tuple(x_event_shape)}: "
            f"{type(err).__name__}: {err}"
        ) from err
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(x_event_shape):
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"vector_field must return dx/dt with the shape of one sample {tuple(x_event_shape)}, "
            f"got {got}"
        )
    return solver_obj, t0, t1, steps, max_steps


def _solve_augmented(
    vector_field,
    z,
    t_start,
    t_end,
    *,
    solver,
    steps,
    rtol,
    atol,
    trace,
    num_probes,
    probe,
    key,
    args,
    error_control,
    adjoint,
    max_steps,
    step_control="pi",
):
    n, event, dtype = z.shape[0], z.shape[1:], z.dtype
    pid = _STEP_COEFFS[step_control]
    per_sample = error_control == "per_sample"
    if trace == "hutchinson":
        shape = (n, num_probes, *event)
        if probe == "rademacher":
            probes = _random.rademacher(key, shape, dtype)
        else:
            probes = _random.normal(key, shape, dtype)
    else:
        probes = None
    if steps is None:
        norm = dict(norm=_max_sample_norm) if error_control == "max" else {}
        # Tolerances and coefficients as arrays: one compiled solve serves every tolerance and
        # both step controls (log_prob's PI and nll_loss's I-control on the same settings).
        pid = {k: _core_scalar(v, dtype) for k, v in pid.items()}
        controller = diffrax.PIDController(
            rtol=_core_scalar(rtol, dtype), atol=_core_scalar(atol, dtype), **pid, **norm
        )
        dt0 = None
    else:
        controller = diffrax.ConstantStepSize()
        dt0 = _core_scalar((t_end - t_start) / steps, dtype)
        per_sample = False  # identical answers; one batched state is faster
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    z_end, delta, status = _integrate(
        vector_field,
        z,
        jnp.zeros((n,), dtype),
        args,
        probes,
        _core_scalar(t_start, dtype),
        _core_scalar(t_end, dtype),
        dt0,
        solver=eager_fsal(solver),
        controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
        trace=trace,
        per_sample=per_sample,
    )
    num_steps = jnp.broadcast_to(status["num_steps"], (n,))
    return z_end, delta, _nfe(solver, num_steps), status


def _nfe(solver, num_steps: Array) -> Array:
    """Augmented-field evaluations per sample: the max over samples of a per-sample solve.

    The one meaning of NFE of the solve layer (``Solution.nfe``): a vmapped per-sample solve
    runs until its slowest sample finishes, so it makes the max over samples of the per-sample
    counts in batched evaluations. Uses ``evals_per_step``; FSAL solvers run wrapped by
    ``eager_fsal`` so that the count is exact (checked against a call counter in the tests).
    """
    counts = evals_per_step(solver)
    if counts is None:
        return jnp.asarray(jnp.nan)
    at_init, per_step = counts
    nfe = at_init + per_step * num_steps
    return jnp.max(nfe.astype(jnp.float32))


def _default_base(vector_field: Callable, base: Any, event_shape, t0) -> Any:
    """The base density: ``base`` if given; else the prior of the path the field carries.

    A field carries a path when its attribute ``path`` is a ``GaussianPath`` (the fields of
    ``paths.as_vector_field`` and ``groundtruth.velocity_field`` do); its base is then
    ``path.prior(event_shape, t=t0)`` = N(0, sigma(t0)^2 I). Otherwise ``None`` (N(0, I)).
    """
    if base is not None:
        return base
    path = getattr(vector_field, "path", None)
    if isinstance(path, GaussianPath):
        return path.prior(tuple(event_shape), t=t0)
    return None


def _check_likelihood(
    where, vector_field, log_p, z_end, status, *, t_start, t_end, steps, solver, max_steps,
    rtol, atol, args, throw,
):  # fmt: skip
    """Raise (``throw``) on a failed or non-finite likelihood solve; return ``(log_p, ok)``.

    ``ok`` has one entry per sample: the solve succeeded and ``log_p`` and the state are
    finite; with ``throw=False`` the other entries of ``log_p`` are set to NaN. A fixed-step
    solve of the batch stops for every sample at the first non-finite state, so all samples
    are flagged then.
    """
    from ._solve_common import _solver_label, check_solve, field_probe

    lp_host, z_host = concrete(log_p), concrete(z_end)
    if lp_host is None or z_host is None:  # traced: flags in jnp
        finite = jnp.isfinite(log_p) & jax.vmap(all_finite)(z_end)
    else:  # eager: on the host (no small XLA programs compiled per batch shape)
        z_rows = z_host.reshape(z_host.shape[0], -1)
        finite = np.isfinite(lp_host) & np.all(np.isfinite(z_rows), axis=1)
    out = dict(status, finite=finite, x=z_end)
    if steps is None:
        hint = (
            f"increase max_steps (now {max_steps}) or loosen rtol/atol (now {rtol}/{atol}); a "
            "stiff or non-smooth field (ReLU/SELU kinks) needs many steps"
        )
        fixed, probe = None, field_probe(vector_field, args, t_start, t_end)
    else:
        hint = (
            "Check the vector field (and its Jacobian trace) for NaN/inf near that time; a "
            f"field that blows up may need more steps (now {steps}) or steps=None (adaptive)"
        )
        fixed, probe = (steps, t_start, t_end), None
    log_p, st = check_solve(
        out, log_p, where=where, solver_name=_solver_label(solver), max_steps=max_steps,
        hint=hint, throw=throw, fixed=fixed, probe=probe,
        what=NONFINITE + " in the state [z, log-density]",
    )  # fmt: skip
    if isinstance(st["ok_each"], np.ndarray | np.bool_ | bool):  # decided on the host
        ok = np.broadcast_to(st["ok_each"], log_p.shape)
        if not throw and not ok.all():  # a value that is not trustworthy is NaN
            log_p = jnp.asarray(np.where(ok, lp_host, np.nan))
        return log_p, jnp.asarray(ok)
    ok = jnp.broadcast_to(st["ok_each"], log_p.shape)
    if not throw:  # a value that is not trustworthy is NaN, never a plausible number
        log_p = jnp.where(ok, log_p, jnp.nan)
    return log_p, ok
