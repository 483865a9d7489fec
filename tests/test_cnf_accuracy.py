"""cnf.error_vs_nfe and cnf.hutchinson_error against exact answers on linear flows.

For dz/dt = M z from N(0, I) the density at t = 1 is N(0, E E^T) with E = expm(M), and the
exact trace is the constant tr(M); a Rademacher probe v gives v^T M v = tr(M) + v1 v2 (m12 + m21)
in 2D, so Hutchinson's error per estimate is exactly -(m12 + m21) v1 v2 = +-(m12 + m21).
"""

import math

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg

from diffeqgen import cnf, plotting

M = np.array([[-0.25, 0.5], [0.125, 0.25]])  # exact in float32


def linear(t, z, m):
    return m @ z


def exact_log_prob(x, m=M):
    e = scipy.linalg.expm(m)
    cov = e @ e.T
    x = np.asarray(x, np.float64)
    quad = np.einsum("ni,ij,nj->n", x, np.linalg.inv(cov), x)
    return -0.5 * quad - math.log(2 * math.pi) - 0.5 * math.log(np.linalg.det(cov))


@pytest.fixture(scope="module")
def points():
    return np.asarray(jr.normal(jr.key(0), (16, 2)), np.float32)


@pytest.fixture(scope="module")
def rows(points):
    return cnf.error_vs_nfe(
        linear,
        points,
        fixed=("euler", "rk4"),
        steps=(4, 8, 16),
        adaptive=("dopri5",),
        tols=(1e-3, 1e-5),
        reference=exact_log_prob(points),
        args=jnp.asarray(M, jnp.float32),
    )


def test_rows_cover_every_setting_in_order(rows):
    assert [(r["solver"], r["mode"], r["value"]) for r in rows] == [
        ("euler", "steps", 4),
        ("euler", "steps", 8),
        ("euler", "steps", 16),
        ("rk4", "steps", 4),
        ("rk4", "steps", 8),
        ("rk4", "steps", 16),
        ("dopri5", "tol", 1e-3),
        ("dopri5", "tol", 1e-5),
    ]
    assert all("failed" not in r for r in rows)


def test_fixed_step_errors_fall_at_the_solver_order(x64, points):
    x = points.astype(np.float64)
    rows64 = cnf.error_vs_nfe(
        linear,
        x,
        fixed=("euler", "rk4"),
        steps=(4, 8, 16),
        adaptive=("dopri5",),
        tols=(1e-2, 1e-8),
        reference=exact_log_prob(x),
        args=jnp.asarray(M),
    )
    by = {(r["solver"], r["value"]): r for r in rows64}
    loose, tight = by["dopri5", 1e-2], by["dopri5", 1e-8]
    assert tight["nfe"] > loose["nfe"]
    assert tight["max_abs_error"] < loose["max_abs_error"] / 10
    for solver, order, nfe_per_step in (("euler", 1, 1), ("rk4", 4, 4)):
        for n in (4, 8, 16):
            assert by[solver, n]["nfe"] == nfe_per_step * n
        for n in (4, 8):
            ratio = by[solver, n]["max_abs_error"] / by[solver, 2 * n]["max_abs_error"]
            assert 2**order / 1.3 < ratio < 2**order * 1.3, (solver, n, ratio)


def test_errors_are_positive_means_below_maxima(rows):
    for r in rows:
        assert 0 < r["mean_abs_error"] <= r["max_abs_error"]


def test_default_reference_is_the_float64_solve(points):
    (row,) = cnf.error_vs_nfe(
        linear, points, fixed=("rk4",), steps=(8,), adaptive=(), args=jnp.asarray(M, jnp.float32)
    )
    (given,) = cnf.error_vs_nfe(
        linear,
        points,
        fixed=("rk4",),
        steps=(8,),
        adaptive=(),
        reference=exact_log_prob(points),
        args=jnp.asarray(M, jnp.float32),
    )
    # The float64 dopri8 reference agrees with the closed form far below the rk4-8 error.
    assert row["max_abs_error"] == pytest.approx(given["max_abs_error"], rel=1e-6, abs=1e-10)


def test_a_failed_setting_keeps_its_row_with_the_reason(points):
    (row,) = cnf.error_vs_nfe(
        linear,
        points,
        fixed=(),
        adaptive=("dopri5",),
        tols=(1e-9,),
        max_steps=2,
        reference=exact_log_prob(points),
        args=jnp.asarray(M, jnp.float32),
    )
    assert row["nfe"] is None and row["mean_abs_error"] is None and row["max_abs_error"] is None
    assert row["failed"].startswith(
        "RuntimeError: cnf.log_prob: solver 'Dopri5' reached max_steps=2 before the end time"
    )


def test_reference_shape_is_checked(points):
    with pytest.raises(ValueError, match="reference must have shape"):
        cnf.error_vs_nfe(linear, points, reference=np.zeros(3), args=jnp.asarray(M))


def test_hutchinson_is_exact_for_a_diagonal_field(points):
    m = jnp.asarray(np.diag([-0.3, 0.2]), jnp.float32)
    h = cnf.hutchinson_error(
        linear, points, 1, key=jr.key(1), repeats=4, steps=8, solver="rk4", args=m
    )
    assert abs(h["bias"]) < 1e-5 and h["std"] < 1e-5
    assert h["nfe"] == 32 and h["num_probes"] == 1


def test_hutchinson_error_is_the_off_diagonal_term_and_falls_as_one_over_sqrt_probes(points):
    m = jnp.asarray(M, jnp.float32)
    c = abs(M[0, 1] + M[1, 0])
    opts = dict(key=jr.key(2), repeats=64, steps=8, solver="rk4", args=m)
    one = cnf.hutchinson_error(linear, points, 1, **opts)
    many = cnf.hutchinson_error(linear, points, 16, **opts)
    # One probe: every estimate is off by exactly +-c, so the spread is c (ddof=1 inflates it
    # by sqrt(64/63) at most) and the bias is a mean of +-c signs.
    assert c * 0.9 < one["std"] <= c * math.sqrt(64 / 63) + 1e-5
    assert abs(one["bias"]) < 4 * c / math.sqrt(64 * len(points))
    assert abs(one["bias"]) < 4 * one["bias_se"] + 1e-6
    # Sixteen probes average sixteen signs: the spread falls by sqrt(16) = 4.
    assert 4 / 1.25 < one["std"] / many["std"] < 4 * 1.25


def test_error_vs_nfe_rows_plot(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    plotting.error_vs_nfe(ax, rows)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["euler (fixed steps)", "rk4 (fixed steps)", "dopri5 (rtol)"]
    euler = ax.get_lines()[0]
    assert list(euler.get_xdata()) == [4.0, 8.0, 16.0]
    assert ax.get_xlabel() == "NFE per sample"
    assert ax.get_ylabel() == "mean |log p - log p_ref| (nats)"
    fig2, ax2 = plt.subplots()
    assert plotting.error_vs_nfe(ax2, rows, metric="max_abs_error") is ax2
    assert ax2.get_ylabel().startswith("max ")
    assert list(ax2.get_lines()[0].get_ydata()) == [r["max_abs_error"] for r in rows[:3]]
    plt.close(fig)
    plt.close(fig2)
