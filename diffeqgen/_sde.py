"""``sample_sde``: fixed-step integration of an Ito SDE for a batch of samples.

Re-exported by ``diffeqgen.solve``. The pieces:

- noise structure, read from the diffusion's output shape on one sample: scalar, diagonal
  (the sample's shape) or matrix (``(*event, m)``, driven by an m-dimensional Brownian motion);
- the Ito/Stratonovich contract: an SDE here is Ito; a Diffrax solver that converges to the
  Stratonovich solution gets the Stratonovich drift ``f - 1/2 sum_k (dG_k/dx) G_k`` (the
  Ito-Stratonovich correction, computed per sample by forward-mode autodiff of the diffusion,
  zero and skipped when the diffusion does not depend on x); solvers of unknown calculus and
  additive-noise-only solvers are refused for x-dependent noise;
- the batch is one state, or one vmapped solve per sample where the solver differentiates the
  diffusion (Milstein: Diffrax would form the Jacobian over the whole batch state);
- the default Brownian motion draws exactly what Diffrax's ``UnsafeBrownianPath`` draws but
  allows reverse-mode autodiff (``jax.grad`` through ``sample_sde``).
"""

from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from . import _random
from ._checks import check_int
from ._conditioning import Unbatched, batched, first_sample, in_axes, one_sample, pack
from ._failures import NONFINITE_EVENT
from ._memo import abstract_key, cached
from ._solve_common import (
    _Batched,
    _check_saveat,
    _core_scalar,
    _finish,
    _loop_bound,
    _saveat,
    _solver_label,
    _unpack,
)
from ._solvers import (
    Solution,
    _as_drift_diffusion,
    _check_output,
    _check_times,
    _check_x0,
    _time_arrays,
    get_solver,
)
from ._types import RealScalarLike

__all__ = ["sample_sde"]

_JACOBIAN_SOLVERS = (dfx.ItoMilstein, dfx.StratonovichMilstein)
"""Solvers that differentiate the diffusion: solved per sample (vmapped) by default."""

# ------------------------------------------------------------------------- Brownian motion


def _levy_area(solver):
    need = getattr(solver, "minimal_levy_area", dfx.BrownianIncrement)
    for cls in (dfx.BrownianIncrement, dfx.SpaceTimeLevyArea, dfx.SpaceTimeTimeLevyArea):
        if issubclass(cls, need):
            return cls
    raise ValueError(f"no Brownian motion with Levy area {need} for solver {solver}")


def _bits(t):
    """The float's bits as int32 (what ``UnsafeBrownianPath`` folds into its key)."""
    return jax.lax.bitcast_convert_type(jnp.asarray(t).astype(jnp.float32), jnp.int32)


class _StepBrownianPath(dfx.AbstractBrownianPath):
    """One fresh Gaussian increment per queried interval, differentiable in reverse mode.

    Draws exactly what Diffrax 0.7.2's ``UnsafeBrownianPath`` draws for the same key, shape
    and Levy area (the key is folded with the bits of both interval ends), so fixed-step
    results are unchanged; unlike it, it is not refused by ``RecursiveCheckpointAdjoint``:
    the draws are a pure function of (key, t0, t1), so the checkpointed backward pass, which
    re-runs steps from stored states, sees the same increments as the forward pass. The scale
    ``sqrt(t1 - t0)`` is differentiable (the key is not), so gradients with respect to the
    times are the reparametrisation gradients of the discretised process with fixed normals.
    Exact in law only for fixed steps where each interval is queried once (as in
    ``sample_sde``); not for adaptive steps.
    """

    shape: jax.ShapeDtypeStruct = eqx.field(static=True)
    levy_area: type = eqx.field(static=True)
    key: PRNGKeyArray

    @property
    def t0(self):
        return -jnp.inf

    @property
    def t1(self):
        return jnp.inf

    def evaluate(self, t0, t1=None, left=True, use_levy=False):  # noqa: D102
        del left
        if t1 is None:
            t0, t1 = jnp.zeros((), jnp.result_type(t0)), t0
        dtype = jnp.result_type(t0, t1)
        t0, t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
        key = jr.fold_in(self.key, _bits(jax.lax.stop_gradient(t0)))
        key = jr.split(jr.fold_in(key, _bits(jax.lax.stop_gradient(t1))), 1)[0]
        shape, sdtype = self.shape.shape, self.shape.dtype
        w_std = jnp.sqrt(t1 - t0).astype(sdtype)
        dt = (t1 - t0).astype(sdtype)
        if self.levy_area is dfx.SpaceTimeTimeLevyArea:
            kw, kh, kk = jr.split(key, 3)
            w = _random.normal(kw, shape, sdtype) * w_std
            h = _random.normal(kh, shape, sdtype) * (w_std / jnp.sqrt(12.0).astype(sdtype))
            k = _random.normal(kk, shape, sdtype) * (w_std / jnp.sqrt(720.0).astype(sdtype))
            out = dfx.SpaceTimeTimeLevyArea(dt=dt, W=w, H=h, K=k)
        elif self.levy_area is dfx.SpaceTimeLevyArea:
            kw, kh = jr.split(key, 2)
            w = _random.normal(kw, shape, sdtype) * w_std
            h = _random.normal(kh, shape, sdtype) * (w_std / jnp.sqrt(12.0).astype(sdtype))
            out = dfx.SpaceTimeLevyArea(dt=dt, W=w, H=h)
        else:
            w = _random.normal(key, shape, sdtype) * w_std
            out = dfx.BrownianIncrement(dt=dt, W=w)
        return out if use_levy else out.W


class _SampleOfPath(dfx.AbstractBrownianPath):
    """Row ``index`` of a Brownian path over the whole batch (for per-sample solves).

    Each query evaluates the batch path and keeps one row: meant for small batches (strong
    error studies that share one path across step counts), at n times the cost per sample.
    """

    path: dfx.AbstractBrownianPath
    index: Array

    @property
    def levy_area(self):
        return self.path.levy_area

    @property
    def t0(self):
        return self.path.t0

    @property
    def t1(self):
        return self.path.t1

    def evaluate(self, t0, t1=None, left=True, use_levy=False):  # noqa: D102
        out = self.path.evaluate(t0, t1, left, use_levy)
        return jax.tree_util.tree_map(lambda a: a[self.index] if jnp.ndim(a) > 0 else a, out)


# ------------------------------------------------------------------------------ noise


def _noise_structure(diffusion, t, x0, args) -> int | None:
    """``None`` for scalar/diagonal noise, ``m`` for matrix noise ``(*event, m)``."""
    event = x0.shape[1:]
    out = jax.eval_shape(
        diffusion, jax.ShapeDtypeStruct((), x0.dtype), jax.ShapeDtypeStruct(event, x0.dtype), args
    )
    shape = getattr(out, "shape", None)
    if shape is not None and not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"diffusion must return floating values, got dtype {out.dtype}")
    if shape == () or shape == event:
        return None
    if shape is not None and len(shape) == len(event) + 1 and shape[:-1] == event:
        return int(shape[-1])
    raise ValueError(
        f"diffusion(t, x, args) must return a scalar, an array of the shape of one sample "
        f"{event} (diagonal noise) or {(*event, 'm')} (matrix noise, m Brownian motions), got "
        f"{shape if shape is not None else type(out)} (x0 has shape {tuple(x0.shape)}; the "
        "diffusion acts on ONE sample, the batch is vmapped)"
    )


def _depends_on_x(fn, t, x0, args) -> bool:
    """Whether ``fn(t, x, args)`` on one sample depends on x (structurally, by its JVP).

    JAX propagates symbolic zero tangents, so the tangent input of the JVP is unused exactly
    when no operation connects x to the output. Conservative: True when unsure.
    """
    dyn, static = eqx.partition(args, eqx.is_array)
    one = jax.ShapeDtypeStruct(x0.shape[1:], x0.dtype)

    def tangent(x, v, tt, d):
        a = eqx.combine(d, static)
        return jax.jvp(lambda y: fn(tt, y, a), (x,), (v,))[1]

    dyn_struct = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), dyn)
    t_struct = jax.ShapeDtypeStruct((), x0.dtype)
    try:
        closed = jax.make_jaxpr(tangent)(one, one, t_struct, dyn_struct)
    except Exception:  # noqa: BLE001  (unknown: assume it depends on x)
        return True
    v = closed.jaxpr.invars[1]
    used = any(var is v for eqn in closed.jaxpr.eqns for var in eqn.invars)
    return used or any(var is v for var in closed.jaxpr.outvars)


def _ito_correction(diffusion, matrix, t, x, args):
    """``1/2 sum_k (dG_k/dx) G_k`` on one sample, G_k the k-th noise column at (t, x).

    Scalar g (G = g I): ``g grad g``; diagonal g (G = diag g): ``g_i dg_i/dx_i``; matrix
    G ``(*event, m)``: one JVP per Brownian dimension.
    """

    def g(y):
        return diffusion(t, y, args)

    g0 = g(x)
    if matrix:
        cols = jax.vmap(lambda v: jax.jvp(g, (x,), (v,))[1], in_axes=-1)(g0)  # (m, *event, m)
        return 0.5 * jnp.sum(jnp.diagonal(cols, axis1=0, axis2=-1), axis=-1)
    if g0.ndim == 0:
        return 0.5 * g0 * jax.grad(g)(x)
    d = x.size
    basis = jnp.eye(d, dtype=x.dtype).reshape(d, *x.shape)
    jac_cols = jax.vmap(lambda e: jax.jvp(g, (x,), (e,))[1])(basis).reshape(d, d)
    return 0.5 * g0 * jnp.diagonal(jac_cols).reshape(x.shape)  # row k = J e_k


class _StratonovichDrift(eqx.Module):
    """The drift of the Stratonovich SDE with the same solution as the Ito SDE (one sample)."""

    drift: Any
    diffusion: Any
    matrix: bool = eqx.field(static=True)

    def __call__(self, t, x, args):
        f = self.drift(t, x, args)
        return f - _ito_correction(self.diffusion, self.matrix, t, x, args).astype(f.dtype)


def _calculus(solver) -> str:
    """'ito', 'stratonovich' or 'unknown' (wrapped solvers are unwrapped)."""
    while isinstance(solver, dfx.AbstractWrappedSolver) and hasattr(solver, "solver"):
        solver = solver.solver
    if isinstance(solver, dfx.AbstractItoSolver):
        return "ito"
    if isinstance(solver, dfx.AbstractStratonovichSolver):
        return "stratonovich"
    return "unknown"


def _additive_only(solver) -> bool:
    tableau = getattr(solver, "tableau", None)
    return isinstance(solver, dfx.AbstractSRK) and tableau.is_additive_noise()


def _ito_drift(drift, diffusion, solver, label, multiplicative, matrix):
    """The drift to hand to ``solver`` so that it converges to the ITO solution, or raise."""
    if not multiplicative:
        return drift  # additive noise: Ito = Stratonovich, every consistent solver agrees
    if _additive_only(solver):
        raise ValueError(
            f"solver {label!r} is a stochastic Runge-Kutta method for ADDITIVE noise only, but "
            "the diffusion depends on x; use 'euler_maruyama' (Ito), 'heun', "
            "diffrax.ItoMilstein(), or a general-noise Diffrax solver such as diffrax.SPaRK() "
            "or diffrax.GeneralShARK()"
        )
    kind = _calculus(solver)
    if kind == "ito":
        return drift
    if kind == "stratonovich":
        return _StratonovichDrift(drift, diffusion, matrix)
    raise ValueError(
        f"solver {label!r} is neither a diffrax.AbstractItoSolver nor a "
        "diffrax.AbstractStratonovichSolver, so sample_sde cannot tell which solution it "
        "converges to, and the diffusion depends on x (Ito and Stratonovich differ). Use an Ito "
        "solver (diffrax.Euler, diffrax.ItoMilstein), a Stratonovich one (its drift is then "
        "converted), or pass your own diffrax terms as `sde` (used as given)"
    )


class _DiagonalNoise(eqx.Module):
    """Diffusion on a batch -> a diagonal operator on the batch state (scalar or diagonal g)."""

    diffusion: Any

    def __call__(self, t, y, args):
        g = batched(self.diffusion)(t, y, args)
        g = g.reshape(g.shape + (1,) * (y.ndim - g.ndim))
        return lx.DiagonalLinearOperator(jnp.broadcast_to(g, y.shape).astype(y.dtype))


class _MatrixNoise(eqx.Module):
    """Matrix diffusion ``(*event, m)`` -> what multiplies ``dW`` in the ControlTerm.

    One sample: the array itself (Diffrax contracts it with ``dW`` of shape ``(m,)``; Milstein
    differentiates it). A batch (``batched``): an operator mapping ``(n, m)`` to
    ``(n, *event)`` sample by sample.
    """

    diffusion: Any
    batched: bool = eqx.field(static=True)

    def __call__(self, t, y, args):
        if not self.batched:  # one sample: Diffrax's own matrix product G dW (tensordot)
            return self.diffusion(t, y, args).astype(y.dtype)
        g = batched(self.diffusion)(t, y, args).astype(y.dtype)
        return lx.FunctionLinearOperator(
            lambda w: jnp.einsum("n...m,nm->n...", g, w),
            jax.ShapeDtypeStruct((g.shape[0], g.shape[-1]), y.dtype),
        )


class _OneDiagonalNoise(eqx.Module):
    diffusion: Any

    def __call__(self, t, y, args):
        g = self.diffusion(t, y, args)
        return lx.DiagonalLinearOperator(jnp.broadcast_to(g, y.shape).astype(y.dtype))


# ------------------------------------------------------------------------------ solving


def _event(adjoint):
    """Stop at the first non-finite state (not with ``BacksolveAdjoint``: Diffrax refuses)."""
    return None if isinstance(adjoint, dfx.BacksolveAdjoint) else NONFINITE_EVENT


@eqx.filter_jit
def _sde_core(
    drift, diffusion, x0, t0, t1, ts, args, solver, steps, limit, key, brownian, *, m,
    per_sample, virtual_tol, adjoint,
):  # fmt: skip
    """Solve; ``brownian`` is None (step path from key), "virtual" or a batch path."""
    n, event = x0.shape[0], x0.shape[1:]
    dt0 = (t1 - t0) / steps.astype(t0.dtype)
    levy = _levy_area(solver)

    def solve(terms, y0, adj, args):
        sol = dfx.diffeqsolve(
            terms, solver, t0, t1, dt0, y0, args=args, saveat=_saveat(ts),
            stepsize_controller=dfx.ConstantStepSize(), max_steps=limit, adjoint=adj,
            throw=False, event=_event(adj),
        )  # fmt: skip
        return _unpack(sol, ts, solver)

    if not per_sample:
        bshape = x0.shape if m is None else (n, m)
        if brownian is None:
            brownian = _StepBrownianPath(jax.ShapeDtypeStruct(bshape, x0.dtype), levy, key)
        noise = _DiagonalNoise(diffusion) if m is None else _MatrixNoise(diffusion, True)
        terms = dfx.MultiTerm(dfx.ODETerm(_Batched(drift)), dfx.ControlTerm(noise, brownian))
        out = solve(terms, x0, adjoint, args)
    else:
        bshape = event if m is None else (m,)
        struct = jax.ShapeDtypeStruct(bshape, x0.dtype)
        noise = _OneDiagonalNoise(diffusion) if m is None else _MatrixNoise(diffusion, False)

        def one(y0, i, k, a):
            if brownian is None:
                path = _StepBrownianPath(struct, levy, k)
            elif isinstance(brownian, str):
                path = dfx.VirtualBrownianTree(
                    t0, t1, tol=virtual_tol, shape=struct, key=k, levy_area=levy
                )
            else:
                path = _SampleOfPath(brownian, i)
            terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(noise, path))
            return solve(terms, y0, adjoint, a)

        keys = jr.split(key, n) if key is not None else jnp.zeros((n,), jnp.uint32)
        out = jax.vmap(one, in_axes=(0, 0, 0, in_axes(args)))(x0, jnp.arange(n), keys, args)
        if ts is not None:
            out["xs"] = jnp.swapaxes(out["xs"], 0, 1)
    out["ts"] = ts
    return out


@eqx.filter_jit
def _terms_core(terms, x0, t0, t1, ts, args, solver, steps, limit, adjoint):
    sol = dfx.diffeqsolve(
        terms, solver, t0, t1, (t1 - t0) / steps.astype(t0.dtype), x0, args=args,
        saveat=_saveat(ts), stepsize_controller=dfx.ConstantStepSize(), max_steps=limit,
        adjoint=adjoint, throw=False, event=_event(adjoint),
    )  # fmt: skip
    out = _unpack(sol, ts, solver)
    out["ts"] = ts
    return out


def _brownian_shape(path):
    shape = getattr(path, "shape", None)
    return getattr(shape, "shape", shape if isinstance(shape, tuple) else None)


def sample_sde(
    sde,
    x0: Float[ArrayLike, " n *event"],
    *,
    key: PRNGKeyArray | None = None,
    t0: RealScalarLike = 0.0,
    t1: RealScalarLike = 1.0,
    solver: str | dfx.AbstractSolver = "euler_maruyama",
    steps: int = 1000,
    saveat: Float[ArrayLike, " m"] | None = None,
    args: Any = None,
    cond: Any = None,
    brownian: str | dfx.AbstractBrownianPath | None = None,
    per_sample: bool | None = None,
    adjoint: dfx.AbstractAdjoint | None = None,
    throw: bool = True,
) -> Solution:
    """Integrate the ITO SDE ``dX = drift(t, X) dt + diffusion(t, X) dW`` with fixed steps.

    **Ito contract.** The SDE is read as Ito, whatever the solver: a Diffrax solver that
    converges to the Stratonovich solution (``heun``, ``diffrax.Midpoint``, ``SPaRK``,
    ``GeneralShARK``, ``StratonovichMilstein``, ... every ``diffrax.AbstractStratonovichSolver``)
    is given the Stratonovich drift ``drift - 1/2 sum_k (dG_k/dx) G_k`` (G_k the k-th noise
    column; for diagonal noise ``drift - 1/2 g dg/dx``), computed per sample by forward-mode
    autodiff of the diffusion, so it converges to the Ito solution too. The correction is zero,
    and skipped, when the diffusion does not depend on x (additive noise: Ito = Stratonovich).
    For x-dependent noise, additive-noise-only methods (``sra1``, ``shark``, ``diffrax.SEA``)
    and solvers that are neither Ito nor Stratonovich subclasses are refused with an error.

    **Noise**, from the diffusion's output on one sample: a scalar or an array of the
    sample's shape (diagonal noise: each coordinate has its own Brownian motion), or an array
    ``(*event, m)`` (matrix noise: ``dX = G dW`` with an m-dimensional Brownian motion per
    sample). The batch is one state, driven by a Brownian motion of shape ``x0.shape`` (or
    ``(n, m)``), except for solvers that differentiate the diffusion
    (``diffrax.ItoMilstein``, ``diffrax.StratonovichMilstein``: Diffrax would form the Jacobian
    over the whole batch state), which are solved per sample (vmapped) with per-sample
    Brownian motions from ``jr.split(key, n)``; ``per_sample`` overrides the choice.

    **Brownian motion.** The default draws one fresh Gaussian increment (plus space-time Levy
    area for sra1/shark) per step: exactly the draws of Diffrax's ``UnsafeBrownianPath``,
    exact in law for fixed steps and one normal draw per step, but differentiable: ``jax.grad``
    through ``sample_sde`` works (the reparametrisation gradient with the normals fixed). A
    ``VirtualBrownianTree`` is several times slower; pass ``brownian="virtual"`` (tolerance
    ``|t1 - t0| / (8 steps)`` from ``key``) or your own ``diffrax.AbstractBrownianPath`` of
    shape ``x0.shape`` (``(n, m)`` for matrix noise) when runs with different step counts must
    share one path (strong-error studies).

    **Diffrax terms.** ``sde`` may also be a ``diffrax.AbstractTerm`` (e.g.
    ``MultiTerm(ODETerm(f), ControlTerm(g, path))``) acting on the WHOLE batch state
    ``x0``: it is solved as given (its own Brownian path; ``key`` and ``brownian`` unused), by
    ``solver`` whose calculus is then the user's choice.

    Times, ``saveat`` and the SDE's parameters may be traced (inside the user's ``jit``,
    ``grad``, ``vmap``); ``steps`` sets the loop length and must be a Python int.

    Args:
        sde: a ``diffeqgen.sdes.SDE`` (or anything with ``drift`` and ``diffusion`` methods),
            a ``(drift, diffusion)`` pair of callables ``(t, x, args)`` on one sample, or
            Diffrax terms on the batch.
        x0: initial batch ``(n, *event)`` at ``t0``.
        key: PRNG key for the Brownian motion (not needed when ``brownian`` is a path).
        t0: start time.
        t1: end time, ``t1 > t0`` (write reverse-time SDEs in forward time).
        solver: a name from ``SDE_SOLVERS`` or a Diffrax SDE solver.
        steps: number of equal steps.
        saveat: optional 1-d array of increasing times in [t0, t1] to save.
        args: passed to drift and diffusion unchanged (shared by every sample).
        cond: optional per-sample condition (leading axis n), mapped with the samples:
            drift and diffusion see ``cond_i``, or ``(args, cond_i)`` when ``args`` is given.
        brownian: None (fast, default), ``"virtual"``, or a ``diffrax.AbstractBrownianPath``
            over the batch covering [t0, t1] (per-sample solves read their row of it, which
            evaluates the whole batch path per query: meant for small batches).
        per_sample: vmap the solve over samples (default: only for Milstein solvers).
        adjoint: Diffrax adjoint; default ``RecursiveCheckpointAdjoint()`` (reverse mode,
            ``jax.grad``); pass ``diffrax.ForwardMode()`` for ``jax.jvp``/``jax.jacfwd``.
        throw: raise when a non-finite value (NaN or inf) appears in the state (the
            default; the message names the step and time, the solve stops there). ``False``
            returns the ``Solution`` with ``ok=False`` and ``fail_step``/``fail_t`` instead.

    Returns:
        ``Solution``; ``nfe`` counts DRIFT evaluations per sample (the network call in a
        generative SDE); the diffusion is evaluated as often or less, more with the
        Stratonovich correction (one JVP per noise column).

    Raises:
        RuntimeError: (``throw=True``) a non-finite state, naming its step and time (an
            ``EquinoxRuntimeError`` inside the user's ``jit``), or a solver failure with
            Diffrax's own reason.
    """
    x0 = _check_x0(x0)
    args = pack(args, cond, x0.shape[0], "sample_sde")
    c0, c1 = _check_times(t0, t1, forward_only=True)
    steps = check_int("steps", steps)
    ts = _check_saveat(saveat, c0, c1, x0.dtype)
    solver_obj = get_solver(solver, "sde")
    label = _solver_label(solver)
    if c0 is not None and c1 is not None:  # NumPy scalars: no eager conversions (issue 12)
        t0a, t1a = _core_scalar(t0, x0.dtype), _core_scalar(t1, x0.dtype)
    else:
        t0a, t1a = _time_arrays(t0, t1, x0.dtype, forward_only=True)
    steps_a = _core_scalar(steps, jnp.int32)
    if adjoint is not None and not isinstance(adjoint, dfx.AbstractAdjoint):
        raise TypeError(f"adjoint must be a diffrax.AbstractAdjoint, got {adjoint!r}")
    hint = (
        f"Check drift and diffusion for NaN or blow-up near that time; a solution that blows "
        f"up may need more steps (now {steps})"
    )
    fin = dict(throw=bool(throw), fixed=(steps, t0, t1))
    if isinstance(sde, dfx.AbstractTerm):
        if cond is not None:
            raise ValueError(
                "cond is not supported with diffrax terms as `sde` (they act on the whole "
                "batch): pass the per-sample condition inside args and index it in your terms"
            )
        if brownian is not None or per_sample:
            raise ValueError(
                "with diffrax terms as `sde` the Brownian path is the terms' own and the batch "
                "is one state: brownian and per_sample must be None"
            )
        if adjoint is None:
            unsafe = any(
                isinstance(leaf, dfx.UnsafeBrownianPath)
                for leaf in jax.tree_util.tree_leaves(
                    sde, is_leaf=lambda a: isinstance(a, dfx.AbstractBrownianPath)
                )
            )
            adjoint = dfx.ForwardMode() if unsafe else dfx.RecursiveCheckpointAdjoint()
        out = _terms_core(
            sde, x0, t0a, t1a, ts, args, solver_obj, steps_a, _loop_bound(steps), adjoint,
        )  # fmt: skip
        return _finish(
            out, where="sample_sde", solver_name=label, max_steps=steps, hint=hint, **fin
        )

    drift, diffusion = _as_drift_diffusion(sde)
    _check_output("drift", drift, t0, x0, args)
    # Unbatched: one sample's share of a per-sample cond reaches drift and diffusion as merged
    drift, diffusion = Unbatched(drift), Unbatched(diffusion)
    # Memoised as _check_output's trace is: tracing the diffusion twice took ms per call
    one = jax.ShapeDtypeStruct(x0.shape[1:], x0.dtype)
    m, multiplicative = cached(
        ("sde_noise", abstract_key(diffusion), abstract_key((one, one_sample(args)))),
        lambda: (
            _noise_structure(diffusion, t0, x0, first_sample(args)),
            _depends_on_x(diffusion, t0, x0, first_sample(args)),
        ),
    )
    drift = _ito_drift(drift, diffusion, solver_obj, label, multiplicative, m is not None)
    if per_sample is None:
        per_sample = isinstance(solver_obj, _JACOBIAN_SOLVERS)
    per_sample = bool(per_sample)

    virtual_tol = None
    if brownian is None or (isinstance(brownian, str) and brownian == "virtual"):
        if key is None:
            raise ValueError("sample_sde needs key=<PRNG key> for its Brownian motion")
    elif not isinstance(brownian, dfx.AbstractBrownianPath):
        raise ValueError(
            f"brownian must be None, 'virtual' or a diffrax.AbstractBrownianPath, got {brownian!r}"
        )
    else:
        want = x0.shape if m is None else (x0.shape[0], m)
        got = _brownian_shape(brownian)
        if got is not None and tuple(got) != tuple(want):
            raise ValueError(
                f"brownian must have shape {want} (one Brownian motion per "
                f"{'coordinate of each sample' if m is None else 'noise column of each sample'}"
                f"), got {tuple(got)}"
            )
    if isinstance(brownian, str):
        if c0 is None or c1 is None:
            raise ValueError(
                "brownian='virtual' needs concrete t0 and t1 (not traced); use the default "
                "path or pass your own diffrax.VirtualBrownianTree"
            )
        virtual_tol = float(c1 - c0) / (8 * steps)
        if not per_sample:
            bshape = x0.shape if m is None else (x0.shape[0], m)
            brownian = dfx.VirtualBrownianTree(
                float(c0), float(c1), tol=virtual_tol, shape=bshape, key=key,
                levy_area=_levy_area(solver_obj),
            )  # fmt: skip
    if adjoint is None:
        adjoint = dfx.RecursiveCheckpointAdjoint()
    out = _sde_core(
        drift, diffusion, x0, t0a, t1a, ts, args, solver_obj, steps_a, _loop_bound(steps), key,
        brownian, m=m, per_sample=per_sample, virtual_tol=virtual_tol, adjoint=adjoint,
    )  # fmt: skip
    return _finish(out, where="sample_sde", solver_name=label, max_steps=steps, hint=hint, **fin)
