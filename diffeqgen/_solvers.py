"""Solver registry, the classic RK4 tableau and the ``Solution`` record of the solve layer.

Everything here is private: ``diffeqgen.solve`` re-exports the public names.
"""

from collections.abc import Callable
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._checks import check_array, check_choice, check_finite
from ._failures import concrete

__all__ = [
    "ODE_SOLVERS",
    "SDE_SOLVERS",
    "RK4",
    "Solution",
    "get_solver",
    "evals_per_step",
    "check_order_conditions",
    "eager_fsal",
]


def check_order_conditions(tableau: dfx.ButcherTableau, order: int) -> None:
    """Assert that an explicit Butcher tableau satisfies the order conditions up to ``order``.

    Checks the rooted-tree conditions for orders 1 to 4 (``order <= 4``):
    ``sum b = 1``, ``b.c = 1/2``, ``b.c^2 = 1/3``, ``b.A c = 1/6``, ``b.c^3 = 1/4``,
    ``b.(c * A c) = 1/8``, ``b.A c^2 = 1/12``, ``b.A A c = 1/24``. ``ButcherTableau`` itself
    already asserts the row-sum (``sum_j a_ij = c_i``) consistency.
    """
    if not 1 <= order <= 4:
        raise ValueError(f"order conditions are implemented for orders 1..4, got {order}")
    s = tableau.num_stages
    a = np.zeros((s, s))
    for i, row in enumerate(tableau.a_lower):
        a[i + 1, : i + 1] = row
    b = np.asarray(tableau.b_sol, dtype=float)
    c = np.concatenate([[0.0], tableau.c])
    conditions = [(b.sum(), 1.0)]
    if order >= 2:
        conditions += [(b @ c, 1 / 2)]
    if order >= 3:
        conditions += [(b @ c**2, 1 / 3), (b @ a @ c, 1 / 6)]
    if order >= 4:
        conditions += [
            (b @ c**3, 1 / 4),
            (b @ (c * (a @ c)), 1 / 8),
            (b @ a @ c**2, 1 / 12),
            (b @ a @ a @ c, 1 / 24),
        ]
    for got, want in conditions:
        assert np.isclose(got, want, rtol=0, atol=1e-14), (got, want)


# Classic fourth-order Runge-Kutta (Kutta 1901). It has no embedded third-order method from the
# same stages (the order-3 conditions on c = (0, 1/2, 1/2, 1) force the RK4 weights), so the
# error estimate is RK4 minus the midpoint rule (stages 1-2): a second-order embedded pair whose
# local error estimate is O(h^3). RK4 is meant for fixed steps; adaptive use works but is
# controlled by that pessimistic estimate.
_rk4_tableau = dfx.ButcherTableau(
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    b_error=np.array([1 / 6, 1 / 3 - 1, 1 / 3, 1 / 6]),
    c=np.array([0.5, 0.5, 1.0]),
)
check_order_conditions(_rk4_tableau, 4)
check_order_conditions(
    dfx.ButcherTableau(
        a_lower=_rk4_tableau.a_lower,
        b_sol=_rk4_tableau.b_sol - _rk4_tableau.b_error,
        b_error=_rk4_tableau.b_error,
        c=_rk4_tableau.c,
    ),
    2,
)  # the embedded method (b_sol - b_error = midpoint) is second order


class RK4(dfx.AbstractERK):
    """Classic fourth-order Runge-Kutta method (4 stages, not FSAL).

    Defined by its Butcher tableau like Diffrax's ``Midpoint``/``Heun``/``Ralston``; the order
    conditions up to order 4 are asserted where the tableau is defined. Uses third-order
    Hermite interpolation for dense output (``saveat``).
    """

    tableau: ClassVar[dfx.ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar[Callable[..., dfx.ThirdOrderHermitePolynomialInterpolation]] = (
        dfx.ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms):
        """Order of convergence of the method on ODEs (4)."""
        del terms
        return 4

    def error_order(self, terms):
        """Local order of the embedded error estimate (midpoint pair: 3)."""
        del terms
        return 3


_ODE = {
    "euler": dfx.Euler,
    "midpoint": dfx.Midpoint,
    "heun": dfx.Heun,
    "ralston": dfx.Ralston,
    "rk4": RK4,
    "bosh3": dfx.Bosh3,
    "tsit5": dfx.Tsit5,
    "dopri5": dfx.Dopri5,
    "dopri8": dfx.Dopri8,
}
_SDE = {
    "euler_maruyama": dfx.Euler,
    "heun": dfx.Heun,
    "sra1": dfx.SRA1,
    "shark": dfx.ShARK,
}

ODE_SOLVERS: tuple[str, ...] = tuple(_ODE)
"""Names accepted by ``sample_ode`` (orders 1, 2, 2, 2, 4, 3, 5, 5, 8)."""

SDE_SOLVERS: tuple[str, ...] = tuple(_SDE)
"""Names accepted by ``sample_sde``, whose SDEs are Ito. ``euler_maruyama`` (Ito; strong order
0.5, weak 1); ``heun`` (Diffrax's Heun, a Stratonovich method: ``sample_sde`` hands it the
Stratonovich drift of the Ito SDE, so it converges to the Ito solution; strong order 1 for
additive noise); ``sra1`` and ``shark``, Diffrax's stochastic Runge-Kutta methods for ADDITIVE
noise only (refused when the diffusion depends on x), strong order 1.5 there. Any Diffrax SDE
solver object is accepted too, e.g. ``diffrax.ItoMilstein()`` (strong order 1 for
diagonal/commutative noise; solved per sample)."""


def get_solver(name_or_solver: str | dfx.AbstractSolver, kind: str | None = None):
    """Return a Diffrax solver for a name, or pass a solver instance through.

    Args:
        name_or_solver: one of ``ODE_SOLVERS`` or ``SDE_SOLVERS`` (``"heun"`` is in both and is
            Diffrax's ``Heun``), or a ``diffrax.AbstractSolver`` instance (returned as is).
        kind: ``"ode"`` or ``"sde"`` to accept only that family's names; ``None`` accepts both.

    Returns:
        A ``diffrax.AbstractSolver``; its order is ``solver.order(terms)`` (Diffrax API).
    """
    if isinstance(name_or_solver, dfx.AbstractSolver):
        return name_or_solver
    table = {"ode": _ODE, "sde": _SDE, None: {**_ODE, **_SDE}}[kind]
    label = {"ode": "ODE solver", "sde": "SDE solver", None: "solver"}[kind]
    if not isinstance(name_or_solver, str):
        raise TypeError(
            f"solver must be a name or a diffrax.AbstractSolver, got {type(name_or_solver)}"
        )
    check_choice(label, name_or_solver, table)
    return table[name_or_solver]()


class _EagerFSAL(dfx.AbstractAdaptiveSolver, dfx.AbstractWrappedSolver):
    """Wrap an FSAL Runge-Kutta solver so that ``f(t0, x0)`` is evaluated once, in ``init``.

    Diffrax 0.7.2 evaluates an FSAL solver's first stage inside the first step and, when that
    first step is rejected, again at every retry (the solver state is rolled back). Computing
    it in ``init`` instead costs the same one evaluation, saves the retries and makes the cost
    exactly ``1 + num_steps * (stages - 1)``. Numerically identical otherwise.
    """

    solver: dfx.AbstractERK

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # noqa: D102
        return self.solver.interpolation_cls

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):  # noqa: D102
        return self.solver.order(terms)

    def strong_order(self, terms):  # noqa: D102
        return self.solver.strong_order(terms)

    def error_order(self, terms):  # noqa: D102
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):  # noqa: D102
        self.solver.init(terms, t0, t1, y0, args)  # checks only; its f0 is a placeholder
        return jnp.array(False), self.solver.func(terms, t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):  # noqa: D102
        return self.solver.step(terms, t0, t1, y0, args, solver_state, made_jump)

    def func(self, terms, t0, y0, args):  # noqa: D102
        return self.solver.func(terms, t0, y0, args)


def eager_fsal(solver):
    """``solver`` wrapped by ``_EagerFSAL`` if it is an FSAL explicit RK method, else as is."""
    if isinstance(solver, dfx.AbstractERK) and solver.tableau.fsal:
        return _EagerFSAL(solver)
    return solver


def evals_per_step(solver) -> tuple[int, int] | None:
    """Drift/vector-field evaluations of ``solver``: ``(at_init, per_step)``, or None if unknown.

    Measured against Diffrax 0.7.2 by counting calls: explicit RK methods evaluate every stage
    of every attempted step (rejected ones included); FSAL methods (bosh3, tsit5, dopri5, dopri8)
    evaluate ``f(t0, x0)`` once at the start and reuse the last stage, so they cost
    ``1 + steps * (stages - 1)`` (when wrapped by ``eager_fsal``, as ``sample_ode`` does;
    bare Diffrax re-evaluates ``f(t0, x0)`` at each retry of a rejected first step).
    Diffrax's initial step-size heuristic makes no evaluations here (it falls back to
    dt0 = 0.01 for the wrapped terms), dense output (``saveat``) none.
    Stochastic RK methods (sra1, shark) evaluate the drift once per stage.
    """
    if isinstance(solver, dfx.Euler):
        return 0, 1
    if isinstance(solver, dfx.AbstractERK):
        tab = solver.tableau
        return (1, tab.num_stages - 1) if tab.fsal else (0, tab.num_stages)
    if isinstance(solver, dfx.AbstractSRK):
        return 0, len(solver.tableau.b_sol)
    if isinstance(solver, dfx.ItoMilstein | dfx.StratonovichMilstein):
        return 0, 1
    return None


class Solution(eqx.Module):
    """What every sampler returns.

    Attributes:
        x: final state, shape ``(n, *event)``.
        ts: saved times ``(len(ts),)`` or ``None`` when no ``saveat`` was given.
        xs: saved states ``(len(ts), n, *event)`` or ``None``.
        nfe: vector-field (drift, network) evaluations actually made per sample, rejected
            adaptive steps included. Batched solves evaluate the field on the whole batch
            ``nfe`` times. With ``per_sample=True`` each sample has its own count; ``nfe`` is
            the maximum (the number of batched evaluations a vmapped solve runs, what the
            batch costs), ``nfe_mean`` the mean and ``nfe_per_sample`` holds all of them. A
            Python int after an eager call, a traced integer inside ``jit``; ``None`` for a
            user solver whose cost is unknown. The same meaning everywhere: see the docs
            section "Counting NFE".
        num_steps: attempted steps (accepted + rejected); max over samples if per-sample.
        num_accepted: accepted steps.
        num_rejected: rejected steps (0 for fixed steps).
        nfe_per_sample: per-sample counts ``(n,)`` for ``per_sample=True``, else ``None``.
        ok: True when the solve reached its end time and every value of ``x`` is finite.
            Always True when the sampler was called with ``throw=True`` (the default; a
            failure raises instead). With ``throw=False`` check it yourself.
        fail_step: 1-based index of the step that produced the first non-finite state (or
            where the solver stopped), 0 when ``ok`` or when unknown.
        fail_t: time reached at that step (where the first non-finite state appeared or the
            solver stopped), NaN when ``ok``.
    """

    x: Array
    ts: Array | None = None
    xs: Array | None = None
    nfe: int | Array | None = None
    num_steps: int | Array | None = None
    num_accepted: int | Array | None = None
    num_rejected: int | Array | None = None
    nfe_per_sample: Array | None = None
    ok: bool | Array | None = None
    fail_step: int | Array | None = None
    fail_t: float | Array | None = None

    @property
    def nfe_mean(self) -> float | int | Array | None:
        """Mean NFE per sample: ``mean(nfe_per_sample)`` for per-sample solves, else ``nfe``."""
        if self.nfe_per_sample is None:
            return self.nfe
        mean = jnp.mean(jnp.asarray(self.nfe_per_sample, jnp.float32))
        return float(mean) if concrete(mean) is not None else mean


# ------------------------------------------------------------- validation shared by samplers


def _check_x0(x0) -> Array:
    x0 = check_array("x0", x0, min_ndim=1)
    if x0.shape[0] == 0:
        raise ValueError(f"x0 must hold at least one sample, got shape {tuple(x0.shape)}")
    return check_finite("x0", x0)


def _check_output(name: str, fn, t, x0, args, *, allow_scalar: bool = False):
    """Trace ``fn(t, x, args)`` on one sample (``jax.eval_shape``) and check its shape."""
    event = x0.shape[1:]
    one = jax.ShapeDtypeStruct(event, x0.dtype)
    t_struct = jax.ShapeDtypeStruct((), x0.dtype)
    from ._conditioning import one_sample
    from ._memo import abstract_key, cached

    args_one = one_sample(args)
    # Memoised (tracing costs ms per call) and traced through a lambda: jax.eval_shape of an
    # Equinox module itself formats the module's repr, weights included (~30 ms).
    out = cached(
        ("output", abstract_key(fn), abstract_key((t_struct, one, args_one))),
        lambda: jax.eval_shape(lambda t, x, a: fn(t, x, a), t_struct, one, args_one),
    )
    shape = getattr(out, "shape", None)
    ok = shape == event or (allow_scalar and shape is not None and shape == ())
    if not ok:
        want = f"{event}" + (" or ()" if allow_scalar else "")
        raise ValueError(
            f"{name}(t, x, args) must return an array of the shape of one sample {want}, "
            f"got {shape if shape is not None else type(out)} (x0 has shape {tuple(x0.shape)}; "
            f"the vector field acts on ONE sample, the batch is vmapped)"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"{name} must return floating values, got dtype {out.dtype}")


def _check_times(t0, t1, *, forward_only: bool = False):
    c0, c1 = concrete(t0), concrete(t1)
    if c0 is not None and c1 is not None:
        if c0.shape != () or c1.shape != ():
            raise ValueError(f"t0 and t1 must be scalars, got shapes {c0.shape} and {c1.shape}")
        if not (np.isfinite(c0) and np.isfinite(c1)):
            raise ValueError(f"t0 and t1 must be finite, got t0={t0!r}, t1={t1!r}")
        if c0 == c1:
            raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {float(c0)}")
        if forward_only and c1 < c0:
            raise ValueError(
                f"sample_sde integrates forward in time: need t1 > t0, got t0={float(c0)}, "
                f"t1={float(c1)}; write a reverse-time SDE in forward time (diffeqgen.sdes)"
            )
    return c0, c1


def _time_arrays(t0, t1, dtype, *, forward_only: bool = False):
    """``t0``, ``t1`` as arrays of ``dtype``; traced times get runtime ``eqx.error_if`` checks.

    Concrete times are checked eagerly by ``_check_times``; inside the user's ``jit``/``grad``/
    ``vmap`` the same conditions (finite, distinct, ``t1 > t0`` for forward-only solvers) are
    checked when the computation runs.
    """
    t0a, t1a = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    if concrete(t0) is None or concrete(t1) is None:
        bad = ~(jnp.isfinite(t0a) & jnp.isfinite(t1a)) | (t0a == t1a)
        if forward_only:
            bad = bad | (t1a < t0a)
        want = "finite with t1 > t0" if forward_only else "finite and distinct"
        t1a = eqx.error_if(t1a, bad, f"t0 and t1 must be {want}")
    return t0a, t1a


def _as_drift_diffusion(sde):
    if isinstance(sde, tuple | list):
        if len(sde) != 2 or not all(callable(f) for f in sde):
            raise TypeError("sde must be an SDE module or a (drift, diffusion) pair of callables")
        return sde[0], sde[1]
    if hasattr(sde, "drift") and hasattr(sde, "diffusion"):
        return sde.drift, sde.diffusion
    raise TypeError(f"sde must have drift and diffusion methods or be a pair, got {type(sde)}")
