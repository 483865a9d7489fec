"""Every script in benchmarks/ runs in its --quick mode, into a temporary directory.

Each quick run writes ``<name>_quick.*`` into ``--out`` (never over ``results/``); the tests
check the files and a few numbers that a broken benchmark would get wrong (errors against the
exact answers the benchmark measures, not timings). The quick runs call the script's ``main`` in
this process (``helpers.run_main``: no Python and JAX start-up per run, and the float64 flag is
checked to be left unchanged); scaling's workers still run in their own processes, one per
device count.
"""

import json
import math
import os
import pathlib

import pytest
from helpers import run_main

from diffeqgen.solve import FEWSTEP_SAMPLERS

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS.parent / "results" / "benchmarks"


def _run_quick(name, tmp_path, *flags):
    before = {p.name: p.stat().st_mtime_ns for p in RESULTS.glob("*")} if RESULTS.exists() else {}
    with pytest.MonkeyPatch.context() as mp:  # XLA_FLAGS as it was (solver_accuracy adds one)
        mp.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
        run_main(BENCHMARKS / f"{name}.py", "--quick", "--out", str(tmp_path), *flags)
    after = {p.name: p.stat().st_mtime_ns for p in RESULTS.glob("*")} if RESULTS.exists() else {}
    assert after == before, "a --quick run must not write into results/benchmarks"
    res = json.loads((tmp_path / f"{name}_quick.json").read_text())
    assert (tmp_path / f"{name}_quick.md").stat().st_size > 0
    return res


def test_every_benchmark_is_tested():
    assert {p.stem for p in BENCHMARKS.glob("*.py")} == {
        "ot",
        "scaling",
        "solver_accuracy",
        "throughput",
    }


@pytest.mark.slow
def test_solver_accuracy_quick(tmp_path):
    res = _run_quick("solver_accuracy", tmp_path)
    assert (tmp_path / "solver_accuracy_quick.png").stat().st_size > 0
    lik = {(r["solver"], r["mode"]): r for r in res["likelihood"]}
    # Exact field, exact log-density: tsit5 at tol 1e-3 is within 0.2 nats (measured 0.05), and
    # 4 Euler steps are far worse (measured 2.4): the error is a solver error, not noise.
    assert lik["tsit5", "adaptive"]["max_err"] < 0.2
    assert lik["euler", "fixed"]["max_err"] > 5 * lik["tsit5", "adaptive"]["max_err"]
    assert lik["euler", "fixed"]["nfe"] == 4
    # The generative SDE with exact v, s: moment error within 3x its Monte Carlo floor.
    for row in res["sde"]:
        assert 0 < row["moment_err"] < 3 * res["sde_floor"], row
    # Part 2, the few-step samplers (RMS endpoint error against the float64 dopri8 reference):
    # every sampler ran on both paths, Euler-1000's error is the headline's target, all finite.
    few = json.loads((tmp_path / "solver_accuracy_fewstep_quick.json").read_text())["fewstep"]
    assert (tmp_path / "solver_accuracy_fewstep_quick.png").stat().st_size > 0
    for path_name in ("linear", "vp"):
        res = few[path_name]
        assert res["euler1000"] > 0 and res["headline"]["euler"] == 1000
        rows = res["trajectory"]
        assert {r["solver"] for r in rows if r["kind"] == "fewstep"} == set(FEWSTEP_SAMPLERS)
        assert all(math.isfinite(r["rms_err"]) and r["nfe"] >= 1 for r in rows)
        assert all(math.isfinite(r["moment_err"]) for r in res["distribution"])
        # log p error of fixed-step cnf.log_prob against the exact log p: finite, and Euler-4
        # is well above the tolerance-1e-8 floor (the error is a solver error)
        lik = {r["solver"]: r for r in res["likelihood"]}
        assert lik["euler"]["nfe"] == 4 and lik["euler"]["max_err"] > 2 * lik["dopri5"]["max_err"]
    # one grid fitted by solve.optimize_grid (VP, UniPC at 6 NFE): sampled at 6 NFE, with the
    # fit's pilot error and cost recorded beside the held-out error
    (fitted,) = [r for r in few["vp"]["trajectory"] if r["grid"] == "fitted"]
    assert fitted["solver"] == "unipc" and fitted["nfe"] == 6 and len(fitted["ts"]) == 7
    assert math.isfinite(fitted["rms_err"]) and fitted["fit"]["pilot_error"] > 0
    assert fitted["fit"]["reference_nfe"] > 6 and fitted["fit"]["sampler_nfe"] == 6
    trained = json.loads((tmp_path / "solver_accuracy_fewstep_quick.json").read_text())["trained"]
    assert trained["euler1000"] > 0 and trained["headline"]["euler"] == 1000
    assert {r["solver"] for r in trained["trajectory"] if r["kind"] == "fewstep"} == set(
        FEWSTEP_SAMPLERS
    )
    assert all(math.isfinite(r["rms_err"]) for r in trained["trajectory"])


@pytest.mark.slow
def test_ot_quick(tmp_path):
    res = _run_quick("ot", tmp_path)
    for row in res["coupling"]:
        # Expected cost of the entropic plan over the exact assignment's (measured 1.016).
        assert 0.95 < row["cost_ratio"] < 1.2, row
    values = [r["value"] for r in res["divergence"] if r["impl"].startswith("diffeqgen")]
    assert len(values) == 2 and abs(values[0] - values[1]) < 1e-3 * abs(values[1])
    for row in res["divergence"]:
        assert row["grad_err"] is None or row["grad_err"] < 0.05, row


@pytest.mark.slow
def test_throughput_quick(tmp_path):
    res = _run_quick("throughput", tmp_path, "--no-torch")
    assert res["quick"] and res["repeats"] == 1 and res["torch"] == "skipped (--no-torch)"
    assert "skipped (--no-torch)" in (tmp_path / "throughput_quick.md").read_text()
    assert all(math.isfinite(g) and g > 0 for g in res["matmul_gflops"])
    w = res["workloads"]
    tables = {
        "training": w["training"]["rows"] + w["training"]["short_calls"],
        "euler100": w["sampling"]["euler100"]["rows"],
        "dopri5": w["sampling"]["dopri5"]["rows"],
        "likelihood": w["likelihood"]["rows"],
        "cnf_training": w["cnf_training"]["rows"],
    }
    for name, rows in tables.items():
        assert len(rows) >= 2, name  # diffeqgen and plain JAX/Diffrax at least
        for r in rows:
            assert math.isfinite(r["rate"]) and r["rate"] > 0, (name, r)
            assert r["seconds_min"] <= r["seconds"] <= r["seconds_max"], (name, r)
            assert r["compile_s"] >= 0, (name, r)
    # Same field, same solver and tolerance: every implementation integrates the same ODE.
    assert {r["nfe"] for r in tables["euler100"]} == {100}
    lib, plain = tables["dopri5"][:2]
    assert 0.5 < lib["nfe"] / plain["nfe"] < 2
    # Every likelihood agrees with the float64 reference to within the tolerance's reach
    # (measured ~0.01 nats), and not trivially: a wrong sign of the trace term costs nats.
    for r in tables["likelihood"]:
        assert 0 <= r["max_err"] < 0.1, r
        assert r["nfe_max"] >= 10, r
    # The library's loss and the hand-written one are the same negative log-likelihood.
    a, a_opts, b = (r["loss"] for r in tables["cnf_training"][:3])
    assert abs(a - b) < 1e-2 * abs(b), (a, b)
    # The same step compiled with fit's CPU compiler options: bit-identical (threads only).
    assert a_opts == a, (a_opts, a)
    r = w["training"]["ratios"]
    assert r["fit_over_fused"] > 0 and math.isfinite(r["fit_call_overhead_ms"])
    # The paired JAX-only ratios: one per pair, summarised by their median and quartiles.
    pairs = {
        "fit_over_fused": w["training"]["paired"]["fit_over_fused"],
        "fit_over_fused_same_options": w["training"]["paired"]["fit_over_fused_same_options"],
        "euler100": w["sampling"]["euler100"]["paired"]["lib_over_plain"],
        "dopri5": w["sampling"]["dopri5"]["paired"]["lib_over_plain"],
    }
    assert res["pairs"] == 5
    for name, p in pairs.items():
        assert len(p["ratios"]) == p["pairs"] == 5, name
        assert all(math.isfinite(x) and x > 0 for x in p["ratios"]), name
        assert min(p["ratios"]) <= p["q25"] <= p["median"] <= p["q75"] <= max(p["ratios"]), name
    assert r["fit_over_fused_paired"] == pairs["fit_over_fused"]["median"]
    assert w["sampling"]["dopri5"]["ratios"]["lib_over_plain_paired"] == pairs["dopri5"]["median"]
    assert (
        "Paired, JAX only (5 back-to-back pairs" in (tmp_path / "throughput_quick.md").read_text()
    )


@pytest.mark.slow
def test_scaling_quick(tmp_path):
    res = _run_quick("scaling", tmp_path)
    assert res["devices"] == [1, 2]
    kinds = {(r["workload"], r["devices"]) for r in res["rows"]}
    assert kinds == {(w, d) for w in ("training", "sampling", "likelihood") for d in (1, 2)}
    for r in res["rows"]:
        assert r["per_second"] > 0 and r["seconds_min"] <= r["seconds"] <= r["seconds_max"]
    assert (tmp_path / "scaling_quick.png").stat().st_size > 0
    assert "not real speed-ups" in (tmp_path / "scaling_quick.md").read_text()
