"""End-to-end tests of the flow-matching studies: flow_matching_2d and cat_to_dog (quick mode)."""

import numpy as np
import pytest
from helpers import EXPERIMENTS as EXP
from helpers import assert_bad_flags_fail, load_script, run_quick
from helpers import is_finite_number as _finite

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
    files = ("metrics.json", "summary.md", "samples.npz", "loss.png", "conditional_paths.png",
             "trajectories.png", "quality_vs_nt.png", "samples_vs_nt.png")  # fmt: skip
    m, out, ck = run_quick(FM2D, tmp_path, files)
    assert sorted(p.name for p in ck.iterdir()) == ["mixture_cosine.eqx", "mixture_linear.eqx"]
    _check_common(out, m)
    assert {r["path"] for r in m["rows"]} == {"linear", "cosine"}
    assert {r["solver"] for r in m["rows"]} == {"euler", "midpoint", "tsit5"}
    assert {r["field"] for r in m["rows"]} == {"network", "exact"}  # the mixture has exact v
    for name, t in m["training"].items():  # same draws: the exact field has the lower CFM loss
        assert 0 < t["irreducible_loss"] < t["network_loss_50k"], name
    for r in m["rows"]:  # NFE = steps x stages for the fixed-step solvers
        if r["solver"] != "tsit5":
            assert r["nfe"] == r["n_t"] * {"euler": 1, "midpoint": 2}[r["solver"]]
    check_fm2d_quality(m)
    npz = np.load(out / "samples.npz")
    assert npz["best"].shape == (m["n"], 2) and np.isfinite(npz["best"]).all()


def check_fm2d_quality(m):
    """Quality bounds of the flow_matching_2d quick run (also applied to a broken run by hand).

    Calibrated on a known-good quick run (seed 0, 400 steps, n = 300, floor W2 0.574 from one
    pair): with tsit5 the networks score W2 0.85 (linear) and 0.72 (cosine) x floor, where the
    exact marginal field from the same noise scores 0.52; their CFM loss on 50k draws is 0.30 and
    0.28 above the exact field's (the irreducible loss). Trained 250 steps instead of 400 (a broken
    run): W2 1.41 x floor (linear), 2.7 x the exact field's, loss excess 0.67.
    """
    tsit5 = {(r["path"], r["field"]): r for r in m["rows"] if r["solver"] == "tsit5"}
    for path in ("linear", "cosine"):
        net, exact = tsit5[(path, "network")], tsit5[(path, "exact")]
        assert exact["w2_over_floor"] < 0.8, exact  # the exact field: the floor's own noise
        assert net["w2_over_floor"] < 1.1, net
        assert net["w2"] < 1.9 * exact["w2"], (net, exact)
        t = m["training"][path]
        assert t["network_loss_50k"] - t["irreducible_loss"] < 0.4, (path, t)


@pytest.mark.slow
def test_cat_to_dog_quick(tmp_path):
    files = ("metrics.json", "summary.md", "samples.npz", "samples.png", "trajectories.png",
             "velocity_field.png", "quality_vs_nfe.png", "loss.png")  # fmt: skip
    m, out, ck = run_quick(CAT_DOG, tmp_path, files)
    assert sorted(p.name for p in ck.iterdir()) == ["independent.eqx", "ot.eqx"]
    _check_common(out, m)
    per = m["per_coupling"]
    assert set(per) == {"independent", "ot"}
    # Even after a few hundred steps the OT pairs are shorter and the learned paths straighter.
    assert per["ot"]["pair_cost"] < 0.5 * per["independent"]["pair_cost"]
    assert per["ot"]["kinetic_excess"] < per["independent"]["kinetic_excess"]
    assert 1.0 <= per["ot"]["length_over_chord"] < per["independent"]["length_over_chord"]
    assert per["ot"]["nfe_to_converged"] <= per["independent"]["nfe_to_converged"]
    check_cat_to_dog_quality(m)
    npz = np.load(out / "samples.npz")
    assert npz["best"].shape == (m["n"], 2) and np.isfinite(npz["best"]).all()


def check_cat_to_dog_quality(m):
    """Quality bounds of the cat_to_dog quick run (also applied to a broken run by hand).

    Calibrated on a known-good quick run (seed 0, 300 steps, n = 300, floor W2 0.388 from one
    pair): tsit5 W2 1.70 (independent) and 1.67 (OT) x floor; OT's single Euler step 1.58 x;
    OT kinetic excess 0.009 against the independent coupling's 1.40. With the OT pairing skipped
    (a broken run) OT's single Euler step scores 3.9 x floor and its kinetic excess is 1.38;
    trained at a fifth of the learning rate, the independent coupling's tsit5 W2 is 1.94 x floor.
    """
    rows = {(r["coupling"], r["solver"], r["nfe"] if r["solver"] == "euler" else 0): r
            for r in m["rows"]}  # fmt: skip
    for c in ("independent", "ot"):
        assert rows[(c, "tsit5", 0)]["w2_over_floor"] < 1.85, rows[(c, "tsit5", 0)]
    assert rows[("ot", "euler", 1)]["w2_over_floor"] < 1.9, rows[("ot", "euler", 1)]
    assert m["per_coupling"]["ot"]["kinetic_excess"] < 0.05, m["per_coupling"]["ot"]


@pytest.mark.parametrize("script", [FM2D, CAT_DOG])
def test_help(script, capsys):
    with pytest.raises(SystemExit) as e:
        load_script(script).parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--seed", "--out", "--resume", "--checkpoints"):
        assert flag in out


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
def test_bad_flags_fail_before_training(tmp_path, capsys, script, args, needle):
    # In-process (each subprocess would pay a JAX start-up); the scripts' own entry point runs
    # as a subprocess in tests/test_study_entry_points.py.
    assert_bad_flags_fail(script, args, needle, tmp_path, capsys)
