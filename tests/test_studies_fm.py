"""End-to-end tests of the flow-matching studies: flow_matching_2d and cat_to_dog (quick mode)."""

import json

import numpy as np
import pytest
from helpers import EXPERIMENTS as EXP
from helpers import is_finite_number as _finite
from helpers import run_ok as _run
from helpers import run_script

FM2D = EXP / "flow_matching_2d.py"
CAT_DOG = EXP / "cat_to_dog.py"


def _check_common(out, m):
    assert _finite(m["mmd_bandwidth"]) and m["mmd_bandwidth"] > 0
    assert _finite(m["floors"]["w2"]) and m["floors"]["w2"] > 0 and _finite(m["floors"]["mmd"])
    for r in m["rows"]:
        assert _finite(r["w2"]) and r["w2"] > 0 and _finite(r["mmd"]) and r["nfe"] >= 1
        assert r["w2_over_floor"] == pytest.approx(r["w2"] / m["floors"]["w2"])
    net = [r for r in m["rows"] if r.get("field", "network") == "network"]
    assert m["best"]["w2"] == pytest.approx(min(r["w2"] for r in net))
    summary = (out / "summary.md").read_text()
    assert "floor" in summary and "bandwidth" in summary


@pytest.mark.slow
def test_flow_matching_2d_quick(tmp_path):
    out, ck = tmp_path / "out", tmp_path / "ckpt"
    _run(FM2D, "--quick", "--out", str(out), "--checkpoints", str(ck))
    for f in (
        "metrics.json",
        "summary.md",
        "samples.npz",
        "loss.png",
        "conditional_paths.png",
        "trajectories.png",
        "quality_vs_nt.png",
        "samples_vs_nt.png",
    ):
        assert (out / f).is_file(), f
    assert sorted(p.name for p in ck.iterdir()) == ["mixture_cosine.eqx", "mixture_linear.eqx"]
    m = json.loads((out / "metrics.json").read_text())
    _check_common(out, m)
    assert {r["path"] for r in m["rows"]} == {"linear", "cosine"}
    assert {r["solver"] for r in m["rows"]} == {"euler", "midpoint", "tsit5"}
    assert {r["field"] for r in m["rows"]} == {"network", "exact"}  # the mixture has exact v
    for name, t in m["training"].items():  # same draws: the exact field has the lower CFM loss
        assert 0 < t["irreducible_loss"] < t["network_loss_50k"], name
    for r in m["rows"]:  # NFE = steps x stages for the fixed-step solvers
        if r["solver"] != "tsit5":
            assert r["nfe"] == r["n_t"] * {"euler": 1, "midpoint": 2}[r["solver"]]
    npz = np.load(out / "samples.npz")
    assert npz["best"].shape == (m["n"], 2) and np.isfinite(npz["best"]).all()


@pytest.mark.slow
def test_cat_to_dog_quick(tmp_path):
    out, ck = tmp_path / "out", tmp_path / "ckpt"
    _run(CAT_DOG, "--quick", "--out", str(out), "--checkpoints", str(ck))
    for f in (
        "metrics.json",
        "summary.md",
        "samples.npz",
        "samples.png",
        "trajectories.png",
        "velocity_field.png",
        "quality_vs_nfe.png",
        "loss.png",
    ):
        assert (out / f).is_file(), f
    assert sorted(p.name for p in ck.iterdir()) == ["independent.eqx", "ot.eqx"]
    m = json.loads((out / "metrics.json").read_text())
    _check_common(out, m)
    per = m["per_coupling"]
    assert set(per) == {"independent", "ot"}
    # Even after a few hundred steps the OT pairs are shorter and the learned paths straighter.
    assert per["ot"]["pair_cost"] < 0.5 * per["independent"]["pair_cost"]
    assert per["ot"]["kinetic_excess"] < per["independent"]["kinetic_excess"]
    assert 1.0 <= per["ot"]["length_over_chord"] < per["independent"]["length_over_chord"]
    assert per["ot"]["nfe_to_converged"] <= per["independent"]["nfe_to_converged"]
    npz = np.load(out / "samples.npz")
    assert npz["best"].shape == (m["n"], 2) and np.isfinite(npz["best"]).all()


@pytest.mark.parametrize("script", [FM2D, CAT_DOG])
def test_help(script):
    r = run_script(script, "--help", timeout=120)
    assert r.returncode == 0
    for flag in ("--quick", "--seed", "--out", "--resume", "--checkpoints"):
        assert flag in r.stdout


@pytest.mark.parametrize(
    ("script", "args", "needle"),
    [
        (FM2D, ["--schedules", "nonsense"], "nonsense"),
        (FM2D, ["--solver", "rk99"], "rk99"),
        (FM2D, ["--dataset", "unicorns"], "unicorns"),
        (FM2D, ["--steps", "0"], "steps"),
        (CAT_DOG, ["--couplings", "sinkhorn"], "sinkhorn"),
        (CAT_DOG, ["--ot-epsilon", "0"], "ot_epsilon"),
        (CAT_DOG, ["--ot-iters", "0"], "ot_iters"),
        (CAT_DOG, ["--batch", "1"], "batch"),
    ],
)
def test_bad_flags_fail_before_training(tmp_path, script, args, needle):
    r = run_script(
        script,
        *args,
        "--quick",
        "--out",
        str(tmp_path / "o"),
        "--checkpoints",
        str(tmp_path / "c"),
        timeout=120,
    )
    assert r.returncode != 0
    assert needle in r.stderr and "error" in r.stderr.lower()
    assert not (tmp_path / "c").exists()
