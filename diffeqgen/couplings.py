"""Couplings between source and target batches, reflow, and the straightness of a flow.

Time convention: t = 0 source (noise), t = 1 target (data). A *coupling* decides which source
point ``x0`` is paired with which target point ``x1`` in a training batch of the flow-matching and
interpolant losses (``diffeqgen.losses``). Every coupling is a function

    coupling(key, x0, x1) -> (x0, x1)      # the same points, re-paired

and the built-in ones are [`Coupling`][] modules that also expose ``indices(key, x0, x1)``: the
index ``j`` of each source point's partner, so the pairs are ``(x0[i], x1[j[i]])`` and anything
attached to a target (its condition) follows it.

- [`independent`][]: a uniformly random permutation of the targets (pairs independent).
- [`minibatch_ot`][]: minibatch optimal transport for the squared Euclidean cost (log-domain
  Sinkhorn on device, each source point draws its partner from its row of the plan; see
  ``diffeqgen._ot`` and ``docs/ot.md`` for why this and not ott-jax). Flow matching on the linear
  Gaussian path with this coupling between noise and data is OT-CFM (Tong et al., 2023).

Where the pairs come from, in the losses:

- a source sampler ``source=(key, n) -> (n, *event)`` (or a dataset name, or an array to draw rows
  from): x0 is drawn independently of the batch, then re-paired by ``coupling`` if one is given;
- given pairs: the batch is a dict ``{"x0": x0, "x": x1}`` (rows paired); they are used as they
  are unless a ``coupling`` is given.

Reflow (Liu et al., 2023, "rectified flow"): integrate a trained velocity model from source
samples to get deterministic pairs ``(x0, x1 = Phi(x0))`` ([`reflow_pairs`][]), then retrain on
those pairs. The pairs no longer cross, so the retrained flow is straighter and a few Euler steps
(even one) generate well. Retrain with ``diffeqgen.train.fit`` on a sampler of the pairs::

    x0, x1 = dg.couplings.reflow_pairs(model, key, 50_000, source=noise, steps=32)
    loss = functools.partial(dg.losses.flow_matching_loss, path="linear")
    res = dg.train.fit(model, loss, dg.couplings.pair_sampler(x0, x1), optimizer=opt,
                       key=key, num_steps=5000, batch_size=512)

(``pair_sampler`` draws rows of the finite set of pairs uniformly with replacement and returns the
paired batch ``{"x0": ..., "x": ...}``.) [`straightness`][] measures how straight a flow's
trajectories are (1 for straight lines).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._checks import check_array, check_choice, check_finite, check_int, check_positive
from ._ot import ot_pairing, sinkhorn_log_plan, squared_cost

__all__ = [
    "Coupling",
    "Independent",
    "MinibatchOT",
    "independent",
    "minibatch_ot",
    "COUPLING_NAMES",
    "get_coupling",
    "squared_cost",
    "sinkhorn_log_plan",
    "ot_pairing",
    "split_pairs",
    "pair_sampler",
    "reflow_pairs",
    "Straightness",
    "straightness",
]

COUPLING_NAMES = ("independent", "ot")


class Coupling(eqx.Module):
    """Base class of the built-in couplings: ``coupling(key, x0, x1) -> (x0, x1[j])``.

    Subclasses implement ``indices(key, x0, x1) -> j`` of shape ``(n,)``: source point ``i`` is
    paired with target ``j[i]``. Calling the coupling returns ``(x0, x1[j])``.
    """

    def indices(
        self, key: PRNGKeyArray, x0: Float[Array, " n *event"], x1: Float[Array, " n *event"]
    ) -> Int[Array, " n"]:
        """Index of each source point's partner among the targets."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement indices(key, x0, x1) -> (n,) int array"
        )

    def __call__(
        self, key: PRNGKeyArray, x0: Float[Array, " n *event"], x1: Float[Array, " n *event"]
    ) -> tuple[Float[Array, " n *event"], Float[Array, " n *event"]]:
        """Re-pair a batch: returns ``(x0, x1[j])`` with ``j = self.indices(key, x0, x1)``."""
        _check_batches(x0, x1)
        return x0, x1[self.indices(key, x0, x1)]


class Independent(Coupling):
    """Independent coupling: the targets are shuffled by a uniformly random permutation.

    Makes the pairs independent even when the batch came paired. The losses skip the shuffle when
    ``x0`` is drawn from a source sampler, as those pairs are already independent.
    """

    def indices(
        self, key: PRNGKeyArray, x0: Float[Array, " n *event"], x1: Float[Array, " n *event"]
    ) -> Int[Array, " n"]:
        """A uniformly random permutation of ``range(n)``."""
        return jr.permutation(key, x1.shape[0])


class MinibatchOT(Coupling):
    """Minibatch optimal-transport coupling for the squared Euclidean cost (entropic, Sinkhorn).

    Solves the entropic OT problem between the batch's empirical measures with log-domain
    Sinkhorn (final regulariser ``epsilon`` x mean cost, ``iters`` iterations with epsilon
    scaling), then each source point draws its partner from its row of the plan: nearly a
    permutation for small ``epsilon``, with an expected pairing cost within about 1-2% of the
    exact assignment (see ``diffeqgen._ot``). The cost matrix is ``(n, n)``: O(n^2) memory and
    work per batch.

    Attributes:
        epsilon: final entropic regulariser relative to the mean cost (> 0).
        iters: Sinkhorn iterations (>= 1).
    """

    epsilon: float = eqx.field(static=True, default=0.01)
    iters: int = eqx.field(static=True, default=50)

    def __check_init__(self):
        check_positive("epsilon", self.epsilon)
        check_int("iters", self.iters, minimum=1)

    def indices(
        self, key: PRNGKeyArray, x0: Float[Array, " n *event"], x1: Float[Array, " n *event"]
    ) -> Int[Array, " n"]:
        """Partner of each source point drawn from its row of the Sinkhorn plan."""
        return ot_pairing(key, x0, x1, epsilon=self.epsilon, num_iters=self.iters)


def independent() -> Independent:
    """The independent coupling (a random permutation of the targets); see [`Independent`][]."""
    return Independent()


def minibatch_ot(*, epsilon: float | int = 0.01, iters: int = 50) -> MinibatchOT:
    """The minibatch OT coupling (squared Euclidean cost); see [`MinibatchOT`][].

    Args:
        epsilon: final entropic regulariser relative to the mean cost (> 0); smaller is closer to
            the exact assignment.
        iters: Sinkhorn iterations (>= 1).
    """
    return MinibatchOT(epsilon=check_positive("epsilon", epsilon), iters=check_int("iters", iters))


def get_coupling(coupling: Any, *, ot_epsilon: float | int = 0.01, ot_iters: int = 50) -> Any:
    """Resolve the ``coupling=`` argument of a loss: ``None``, a name, or a coupling function.

    ``None`` stays ``None`` (keep the pairs as drawn or given); ``"independent"`` and ``"ot"``
    give [`independent`][] and ``minibatch_ot(epsilon=ot_epsilon, iters=ot_iters)``; a
    [`Coupling`][] or any callable ``(key, x0, x1) -> (x0, x1)`` is returned unchanged.

    Raises:
        ValueError: an unknown name.
        TypeError: neither a name nor a callable.
    """
    if coupling is None or isinstance(coupling, Coupling):
        return coupling
    if isinstance(coupling, str):
        check_choice("coupling", coupling, COUPLING_NAMES)
        if coupling == "independent":
            return Independent()
        return minibatch_ot(epsilon=ot_epsilon, iters=ot_iters)
    if callable(coupling):
        return coupling
    raise TypeError(
        f"coupling must be None, one of {', '.join(COUPLING_NAMES)}, or a function "
        f"(key, x0, x1) -> (x0, x1) such as diffeqgen.couplings.minibatch_ot(); "
        f"got {type(coupling).__name__}"
    )


def _check_batches(x0: Any, x1: Any) -> None:
    if getattr(x0, "shape", None) != getattr(x1, "shape", None):
        raise ValueError(
            f"a coupling needs x0 and x1 of the same shape (n, *event), got "
            f"{getattr(x0, 'shape', type(x0).__name__)} and "
            f"{getattr(x1, 'shape', type(x1).__name__)}"
        )


def split_pairs(batch: Any) -> tuple[Array | None, Any]:
    """Take the given source points out of a paired batch.

    A paired batch is a dict ``{"x0": x0, "x": x1}`` (optionally with ``"cond"``) whose rows are
    pairs. Returns ``(x0, rest)`` with ``rest`` the batch without ``"x0"``; for any other batch,
    ``(None, batch)``.

    Raises:
        ValueError: ``x0`` and ``x`` have different shapes.
    """
    if not (isinstance(batch, dict) and "x0" in batch):
        return None, batch
    rest = {k: v for k, v in batch.items() if k != "x0"}
    x0 = batch["x0"]
    x1 = rest.get("x")
    if getattr(x0, "shape", None) != getattr(x1, "shape", None):
        raise ValueError(
            f'a paired batch {{"x0": x0, "x": x1}} needs x0 and x1 of the same shape (n, *event), '
            f"got batch['x0'] {getattr(x0, 'shape', type(x0).__name__)} and batch['x'] "
            f"{getattr(x1, 'shape', type(x1).__name__)}"
        )
    return x0, rest


def _take(tree: Any, idx: Array) -> Any:
    """Rows ``idx`` of every leaf of ``tree`` (re-pairs a per-sample condition with its target)."""
    return jax.tree_util.tree_map(lambda c: c[idx], tree)


def couple(
    key: PRNGKeyArray,
    x0: Array,
    x1: Array,
    cond: Any,
    coupling: Any,
    *,
    sampled: bool,
) -> tuple[Array, Array, Any]:
    """Apply a resolved coupling to a batch (used by the losses).

    ``cond`` (a per-target pytree or ``None``) follows its target. ``sampled``: x0 was drawn
    independently of x1, so the independent coupling is a no-op and is skipped.
    """
    if coupling is None or (sampled and isinstance(coupling, Independent)):
        return x0, x1, cond
    if isinstance(coupling, Coupling):
        _check_batches(x0, x1)
        j = coupling.indices(key, x0, x1)
        return x0, x1[j], None if cond is None else _take(cond, j)
    if cond is not None:
        raise TypeError(
            "with a conditioned batch the coupling must be a diffeqgen.couplings.Coupling (which "
            "returns the partner indices, so each condition follows its target); got "
            f"{coupling!r}"
        )
    out = coupling(key, x0, x1)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"coupling(key, x0, x1) must return the re-paired (x0, x1), got {type(out).__name__}"
        )
    y0, y1 = out
    if getattr(y0, "shape", None) != x0.shape or getattr(y1, "shape", None) != x1.shape:
        raise ValueError(
            f"coupling(key, x0, x1) must return arrays of shapes {x0.shape} and {x1.shape}, got "
            f"{getattr(y0, 'shape', None)} and {getattr(y1, 'shape', None)}"
        )
    return y0, y1, cond


def pair_sampler(
    x0: Float[ArrayLike, " N0 *event0"], x1: Float[ArrayLike, " N1 *event1"]
) -> Callable[[PRNGKeyArray, int], dict[str, Array]]:
    """A sampler ``(key, n) -> {"x0": x0[idx], "x": x1[idx]}`` over a finite set of pairs.

    Rows are drawn uniformly with replacement (the same rows of both arrays, so pairs stay
    together). Hand it to ``diffeqgen.train.fit`` as ``data`` to train a flow-matching or
    interpolant loss on given pairs (e.g. from [`reflow_pairs`][]).

    Raises:
        ValueError: different shapes, no rows, or non-finite values.
    """
    a = check_finite("x0", check_array("x0", x0, min_ndim=1))
    b = check_finite("x1", check_array("x1", x1, min_ndim=1))
    if a.shape != b.shape or a.shape[0] < 1:
        raise ValueError(
            f"x0 and x1 must have the same shape (N >= 1, *event), got {a.shape} and {b.shape}"
        )

    def sample(key: PRNGKeyArray, n: int) -> dict[str, Array]:
        idx = jr.randint(key, (n,), 0, a.shape[0])
        return {"x0": a[idx], "x": b[idx]}

    return sample


def _draw(source: Any, key: PRNGKeyArray, n: int) -> Array:
    if isinstance(source, str):
        from . import data as _data

        return _data.sample(source, key, n)
    if callable(source):
        return jnp.asarray(source(key, n))
    raise TypeError(
        f"source must be a sampler (key, n) -> (n, *event) or a dataset name, got "
        f"{type(source).__name__}"
    )


def reflow_pairs(
    model: Any,
    key: PRNGKeyArray,
    n: int,
    *,
    source: Any,
    solver: Any = "rk4",
    steps: int | None = 32,
    args: Any = None,
    **sample_kw: Any,
) -> tuple[Float[Array, " n *event"], Float[Array, " n *event"]]:
    """Pairs ``(x0, x1)`` for reflow: x0 from the source, x1 = the flow of ``model`` from x0.

    Draws ``x0 = source(key, n)`` and integrates ``dx/dt = model(t, x, args)`` from t = 0 to
    t = 1 with ``diffeqgen.solve.sample_ode`` (so ``x1`` is the model's sample for that ``x0``).
    Retraining a velocity model on these pairs (the flow-matching loss on the linear path, or the
    interpolant loss, with the batch ``{"x0": x0, "x": x1}``, e.g. via [`pair_sampler`][]) is one
    round of reflow: the new flow transports the same distributions along straighter paths.

    Args:
        model: velocity field ``model(t, x, args) -> (event)`` on one sample.
        key: PRNG key for the source draw.
        n: number of pairs (>= 1).
        source: a sampler ``(key, n) -> (n, *event)`` (e.g. standard normal noise) or a dataset
            name for ``diffeqgen.data.sample``.
        solver: a solver name or Diffrax solver for ``sample_ode``.
        steps: fixed steps, or ``None`` for adaptive steps (then pass ``rtol``/``atol``).
        args: passed to ``model`` unchanged.
        **sample_kw: other keywords of ``sample_ode`` (``rtol``, ``atol``, ``max_steps``, ...).

    Returns:
        ``(x0, x1)``, each ``(n, *event)``.
    """
    from . import solve as _solve

    n = check_int("n", n)
    x0 = _draw(source, key, n)
    if getattr(x0, "shape", (None,))[0] != n:
        raise ValueError(f"source(key, {n}) must return (n, *event), got shape {x0.shape}")
    sol = _solve.sample_ode(model, x0, solver=solver, steps=steps, args=args, **sample_kw)
    return x0, sol.x


class Straightness(NamedTuple):
    """How straight the trajectories of a flow are (both are for a batch of starting points).

    Attributes:
        length_ratio: mean over samples of (path length) / (chord length |x1 - x0|); 1 for
            straight paths traversed without backtracking.
        deviation: Liu et al.'s S = int_0^1 E ||(x1 - x0) - v(t, x_t)||^2 dt; 0 exactly when
            every path is a straight line traversed at constant speed.
    """

    length_ratio: Array
    deviation: Array


def straightness(
    model: Any,
    x0: Float[ArrayLike, " n *event"],
    *,
    steps: int = 64,
    solver: Any = "rk4",
    args: Any = None,
) -> Straightness:
    """Straightness of the flow ``dx/dt = model(t, x, args)`` from ``x0`` at t = 0 to t = 1.

    Integrates with ``steps`` fixed steps of ``solver``, saving the state at the ``steps + 1``
    grid times; the path length is the polyline length through the saved states and the
    deviation is the trapezoid rule over the grid of the mean squared difference between the
    chord ``x1 - x0`` and the velocity. Both are discretisation estimates (exact for straight
    paths; the length is a lower bound on a curved path's length, converging as O(1/steps^2)).

    Args:
        model: velocity field on one sample.
        x0: starting points ``(n, *event)`` at t = 0.
        steps: number of solver steps and grid intervals (>= 1).
        solver: a fixed-step solver for ``sample_ode``.
        args: passed to ``model`` unchanged.

    Returns:
        [`Straightness`][] of scalars.
    """
    from . import solve as _solve

    steps = check_int("steps", steps)
    x0 = check_array("x0", x0, min_ndim=2)
    ts = jnp.linspace(0.0, 1.0, steps + 1, dtype=x0.dtype)
    sol = _solve.sample_ode(model, x0, solver=solver, steps=steps, saveat=ts, args=args)
    xs = sol.xs.reshape(steps + 1, x0.shape[0], -1)  # (T, n, d)
    seg = jnp.linalg.norm(jnp.diff(xs, axis=0), axis=-1).sum(0)
    chord = xs[-1] - xs[0]
    tiny = jnp.finfo(x0.dtype).tiny
    ratio = jnp.mean(seg / jnp.maximum(jnp.linalg.norm(chord, axis=-1), tiny))
    flat = sol.xs.reshape(steps + 1, *x0.shape)
    v = jax.vmap(lambda t, x: jax.vmap(lambda xi: model(t, xi, args))(x))(ts, flat)
    dev = jnp.sum((chord[None] - v.reshape(xs.shape)) ** 2, axis=-1).mean(-1)  # (T,)
    deviation = jnp.sum(0.5 * (dev[1:] + dev[:-1])) / steps
    return Straightness(ratio, deviation)
