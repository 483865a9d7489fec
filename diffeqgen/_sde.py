"""``sample_sde``: fixed-step SDE integration of a batch with diagonal noise.

Re-exported by ``diffeqgen.solve``.
"""

from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from ._checks import check_int
from ._conditioning import pack
from ._solve_common import (
    _Batched,
    _check_saveat,
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
    get_solver,
)
from ._types import RealScalarLike

__all__ = ["sample_sde"]

# --------------------------------------------------------------------------------------- SDEs


def _levy_area(solver):
    need = getattr(solver, "minimal_levy_area", dfx.BrownianIncrement)
    for cls in (dfx.BrownianIncrement, dfx.SpaceTimeLevyArea, dfx.SpaceTimeTimeLevyArea):
        if issubclass(cls, need):
            return cls
    raise ValueError(f"no Brownian motion with Levy area {need} for solver {solver}")


@eqx.filter_jit
def _sde_core(drift, diffusion, x0, t0, t1, ts, args, solver, steps, limit, key, brownian):
    event_ndim = x0.ndim - 1
    drift_b, diff_b = _Batched(drift), _Batched(diffusion)

    def noise(t, y, a):
        g = diff_b(t, y, a)
        g = g.reshape(g.shape + (1,) * (y.ndim - g.ndim)) if g.ndim == 1 and event_ndim else g
        return lx.DiagonalLinearOperator(jnp.broadcast_to(g, y.shape).astype(y.dtype))

    adjoint = dfx.RecursiveCheckpointAdjoint()
    if brownian is None:
        shape = jax.ShapeDtypeStruct(x0.shape, x0.dtype)
        brownian = dfx.UnsafeBrownianPath(shape, key, levy_area=_levy_area(solver))
        adjoint = dfx.ForwardMode()  # Diffrax refuses reverse-mode through an unsafe path
    terms = dfx.MultiTerm(dfx.ODETerm(drift_b), dfx.ControlTerm(noise, brownian))
    sol = dfx.diffeqsolve(
        terms,
        solver,
        t0,
        t1,
        (t1 - t0) / steps.astype(t0.dtype),
        x0,
        args=args,
        saveat=_saveat(ts),
        stepsize_controller=dfx.ConstantStepSize(),
        max_steps=limit,
        adjoint=adjoint,
        throw=False,
    )
    out = _unpack(sol, ts, solver)
    out["ts"] = ts
    return out


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
) -> Solution:
    """Integrate the Ito SDE ``dX = drift(t, X) dt + diffusion(t, X) dW`` with fixed steps.

    Diagonal noise: ``diffusion(t, x, args)`` on one sample returns a scalar or an array of the
    sample's shape, multiplying each coordinate's own Brownian increment. The whole batch is
    one state driven by a Brownian motion of shape ``x0.shape`` (independent across samples).

    The default Brownian motion is Diffrax's ``UnsafeBrownianPath``: one fresh Gaussian
    increment (plus space-time Levy area for sra1/shark) per step. That is exact in law for
    fixed steps, where every solver here queries each step interval exactly once, and it costs
    one normal draw per step; a ``VirtualBrownianTree`` descends a tree of depth
    ~log2(steps) per query and is several times slower. It is not differentiable and not
    consistent across step counts; pass ``brownian="virtual"`` (a tree with tolerance
    ``|t1 - t0| / (8 steps)`` from ``key``) or your own ``diffrax.AbstractBrownianPath`` when
    runs with different step counts must share one Brownian path (strong-error studies).

    Args:
        sde: a ``diffeqgen.sdes.SDE`` (or anything with ``drift`` and ``diffusion`` methods) or
            a ``(drift, diffusion)`` pair of callables ``(t, x, args)`` on one sample.
        x0: initial batch ``(n, *event)`` at ``t0``.
        key: PRNG key for the Brownian motion (not needed when ``brownian`` is a path).
        t0: start time.
        t1: end time, ``t1 > t0`` (write reverse-time SDEs in forward time).
        solver: a name from ``SDE_SOLVERS`` or a Diffrax SDE solver. ``sra1``/``shark`` are
            valid for additive noise only (diffusion independent of x).
        steps: number of equal steps.
        saveat: optional 1-d array of increasing times in [t0, t1] to save.
        args: passed to drift and diffusion unchanged (shared by every sample).
        cond: optional per-sample condition (leading axis n), mapped with the samples:
            drift and diffusion see ``cond_i``, or ``(args, cond_i)`` when ``args`` is given.
        brownian: None (fast, default), ``"virtual"``, or a ``diffrax.AbstractBrownianPath``
            of shape ``x0.shape`` covering [t0, t1].

    Returns:
        ``Solution``; ``nfe`` counts DRIFT evaluations per sample (the network call in a
        generative SDE); the diffusion is evaluated as often or less.
    """
    drift, diffusion = _as_drift_diffusion(sde)
    solver_obj = get_solver(solver, "sde")
    x0 = _check_x0(x0)
    args = pack(args, cond, x0.shape[0], "sample_sde")
    c0, c1 = _check_times(t0, t1, forward_only=True)
    steps = check_int("steps", steps)
    ts = _check_saveat(saveat, c0, c1, x0.dtype)
    _check_output("drift", drift, t0, x0, args)
    _check_output("diffusion", diffusion, t0, x0, args, allow_scalar=True)
    if brownian is None or (isinstance(brownian, str) and brownian == "virtual"):
        if key is None:
            raise ValueError("sample_sde needs key=<PRNG key> for its Brownian motion")
    elif not isinstance(brownian, dfx.AbstractBrownianPath):
        raise ValueError(
            f"brownian must be None, 'virtual' or a diffrax.AbstractBrownianPath, got {brownian!r}"
        )
    if isinstance(brownian, str):
        if c0 is None or c1 is None:
            raise ValueError("brownian='virtual' needs concrete t0 and t1 (not traced)")
        brownian = dfx.VirtualBrownianTree(
            float(c0), float(c1), tol=float(c1 - c0) / (8 * steps), shape=x0.shape, key=key,
            levy_area=_levy_area(solver_obj),
        )  # fmt: skip
    t0a, t1a = jnp.asarray(t0, x0.dtype), jnp.asarray(t1, x0.dtype)
    out = _sde_core(
        drift, diffusion, x0, t0a, t1a, ts, args, solver_obj, jnp.asarray(steps, jnp.int32),
        _loop_bound(steps), key, brownian,
    )  # fmt: skip
    return _finish(
        out, where="sample_sde", solver_name=_solver_label(solver), max_steps=steps,
        hint="check drift/diffusion for NaN or blow-up; use more steps",
    )  # fmt: skip
