"""End-to-end test of experiments/reflow_2d.py in quick mode (one dataset)."""

import json

import pytest
from helpers import EXPERIMENTS as EXP
from helpers import is_finite_number as _finite
from helpers import run_ok as _run

REFLOW = EXP / "reflow_2d.py"


@pytest.mark.slow
def test_reflow_2d_quick(tmp_path):
    out, ck = tmp_path / "out", tmp_path / "ckpt"
    _run(REFLOW, "--quick", "--datasets", "moons", "--out", str(out), "--checkpoints", str(ck))
    for f in ("metrics.json", "summary.md", "reflow.png"):
        assert (out / f).is_file(), f
    assert sorted(p.name for p in ck.iterdir()) == ["moons_student.eqx", "moons_teacher.eqx"]
    m = json.loads((out / "metrics.json").read_text())
    r = m["datasets"]["moons"]
    assert _finite(r["floors"]["w2"]) and r["floors"]["w2"] > 0
    for label in ("teacher", "reflow"):
        rows = r["rows"][label]
        assert [row["nfe"] for row in rows[:3]] == [1, 2, 4] and rows[3]["solver"] == "tsit5"
        for row in rows:
            assert _finite(row["w2"]) and row["w2"] > 0 and _finite(row["map_rms"])
        s = r["straightness"][label]
        assert s["length_ratio"] >= 1.0 - 1e-6 and s["deviation"] >= 0
    # even a tiny reflow straightens the flow (the same noise, Liu et al.'s S)
    assert r["straightness"]["reflow"]["deviation"] < r["straightness"]["teacher"]["deviation"]
    summary = (out / "summary.md").read_text()
    assert "floor" in summary and "Headline" in summary
