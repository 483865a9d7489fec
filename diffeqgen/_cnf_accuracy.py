"""How accurate a CNF log-likelihood is for its cost: a solver sweep and Hutchinson's error.

Both functions are eager evaluation helpers (Python loops over settings), re-exported by
``diffeqgen.cnf``. They measure float32 [`log_prob`][diffeqgen.cnf.log_prob] against a reference
(by default [`reference_log_prob`][diffeqgen.cnf.reference_log_prob], float64 dopri8 at tolerance
1e-12) and report the cost as NFE per sample, the unit every solver of the package counts in.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._checks import check_array, check_int
from ._types import ArrayLike, Float, PRNGKeyArray


def _reason(err: Exception) -> str:
    """``"<type>: <message>"`` of a failed solve, without the traceback Equinox puts first."""
    lines = [line for line in str(err).splitlines() if line and not line[0].isspace()]
    said = [line.split("Error: ", 1)[1] for line in lines if "Error: " in line]
    return f"{type(err).__name__}: {(said or lines or [''])[0][:200]}"


def _errors(lp, reference) -> dict:
    err = np.abs(np.asarray(lp, np.float64) - reference)
    return dict(mean_abs_error=float(err.mean()), max_abs_error=float(err.max()))


def error_vs_nfe(
    vector_field: Callable,
    x: Float[ArrayLike, " n *event"],
    *,
    fixed: Sequence[str] = ("euler", "midpoint", "rk4"),
    steps: Sequence[int] = (2, 4, 8, 16, 32, 64),
    adaptive: Sequence[str] = ("tsit5", "dopri5"),
    tols: Sequence[float] = (1e-3, 1e-4, 1e-5, 1e-6),
    reference: Float[ArrayLike, "..."] | None = None,
    max_steps: int = 4096,
    **kwargs: Any,
) -> list[dict]:
    """Log-likelihood error against NFE: every fixed-step and every adaptive setting, one row each.

    Runs [`log_prob`][diffeqgen.cnf.log_prob] of ``x`` (float32, or the dtype of ``x``) for each
    solver in ``fixed`` at each number of ``steps``, then for each solver in ``adaptive`` at each
    tolerance in ``tols`` (``rtol = atol``), and compares with ``reference``. Time convention as in
    ``log_prob``: base at ``t0`` (noise), ``x`` at ``t1`` (data).

    Args:
        vector_field: ``f(t, x, args)`` on one sample.
        x: points of shape ``(n, *event)``.
        fixed: fixed-step solver names (``diffeqgen.solve.ODE_SOLVERS``).
        steps: numbers of steps for each fixed-step solver (one compile: ``max_steps`` of these
            solves is ``max(steps)``).
        adaptive: adaptive solver names.
        tols: tolerances (``rtol = atol``) for each adaptive solver.
        reference: exact or float64 log-densities of shape ``(n,)``; default
            [`reference_log_prob`][diffeqgen.cnf.reference_log_prob] of the same field and
            options.
        max_steps: step limit of the adaptive solves.
        **kwargs: every other option of ``log_prob`` (``t0``, ``t1``, ``base``, ``args``,
            ``cond``, ``trace``, ``per_sample``, ...), the same for every row and the reference.

    Returns:
        One dict per setting, in the order above: ``solver``, ``mode`` (``"steps"`` or
        ``"tol"``), ``value`` (the steps or the tolerance), ``nfe`` (mean per sample, as
        ``log_prob`` reports it), ``mean_abs_error`` and ``max_abs_error`` (nats). A setting whose
        solve fails at run time (e.g. float32 cannot meet a tolerance within ``max_steps``) keeps
        its row with ``nfe`` and both errors ``None`` and the error message under ``failed``.
    """
    from .cnf import log_prob, reference_log_prob  # the public functions this module measures

    x = check_array("x", x, min_ndim=2)
    max_steps = check_int("max_steps", max_steps)
    if reference is None:
        reference, _ = reference_log_prob(vector_field, x, **kwargs)
    reference = np.asarray(reference, np.float64)
    if reference.shape != x.shape[:1]:
        raise ValueError(
            f"reference must have shape ({x.shape[0]},), one value per row of x, "
            f"got shape {reference.shape}"
        )
    settings = [(s, "steps", n) for s in fixed for n in steps]
    settings += [(s, "tol", tol) for s in adaptive for tol in tols]
    rows = []
    for solver, mode, value in settings:
        if mode == "steps":
            opts = dict(steps=value, max_steps=max(steps))
        else:
            opts = dict(rtol=value, atol=value, max_steps=max_steps)
        row = dict(solver=solver, mode=mode, value=value)
        try:
            lp, nfe = log_prob(vector_field, x, solver=solver, **opts, **kwargs)
        except RuntimeError as err:  # a failed solve at run time, e.g. max_steps reached
            none = dict(nfe=None, mean_abs_error=None, max_abs_error=None)
            rows.append(row | none | dict(failed=_reason(err)))
            continue
        rows.append(row | dict(nfe=float(nfe)) | _errors(lp, reference))
    return rows


def hutchinson_error(
    vector_field: Callable,
    x: Float[ArrayLike, " n *event"],
    num_probes: int,
    *,
    key: PRNGKeyArray,
    repeats: int = 16,
    exact: Float[ArrayLike, " n"] | None = None,
    **kwargs: Any,
) -> dict:
    """Bias and spread of Hutchinson's log-likelihood estimate against the exact trace.

    Evaluates [`log_prob`][diffeqgen.cnf.log_prob] with ``trace="hutchinson"`` and
    ``num_probes`` probes (drawn once per solve) on ``repeats`` copies of ``x`` in one batch, so
    each point gets ``repeats`` independent estimates, and compares them with ``exact`` (default:
    ``log_prob`` with the exact trace and the same options). Time convention as in ``log_prob``.

    Args:
        vector_field: ``f(t, x, args)`` on one sample.
        x: points of shape ``(n, *event)``.
        num_probes: probes per estimate (>= 1).
        key: PRNG key of the probes.
        repeats: independent estimates per point (>= 2).
        exact: exact-trace log-densities of shape ``(n,)`` at the same solver settings.
        **kwargs: every other option of ``log_prob`` (``solver``, ``rtol``, ``atol``, ``probe``,
            ...), the same for the estimates and the default ``exact``.

    Returns:
        A dict: ``num_probes``; ``bias``, the mean of estimate - exact over every point and
        repeat; ``bias_se``, its standard error across points (``None`` for one point); ``std``,
        the root mean over points of each point's variance across repeats; ``nfe``, the NFE per
        sample of the estimating solve.
    """
    from .cnf import log_prob

    x = check_array("x", x, min_ndim=2)
    num_probes = check_int("num_probes", num_probes)
    repeats = check_int("repeats", repeats, minimum=2)
    n = x.shape[0]
    if exact is None:
        exact, _ = log_prob(vector_field, x, **kwargs)
    exact = np.asarray(exact)
    tiled = jnp.tile(x, (repeats,) + (1,) * (x.ndim - 1))
    est, nfe = log_prob(
        vector_field, tiled, trace="hutchinson", num_probes=num_probes, key=key, **kwargs
    )
    diff = (np.asarray(est) - np.tile(exact, repeats)).reshape(repeats, n)
    return dict(
        num_probes=num_probes,
        bias=float(diff.mean()),
        bias_se=float(diff.mean(0).std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        std=float(np.sqrt(np.mean(diff.var(0, ddof=1)))),
        nfe=float(nfe),
    )
