"""End-to-end test of experiments/reflow_2d.py in quick mode (one dataset)."""

import pytest
from helpers import EXPERIMENTS as EXP
from helpers import is_finite_number as _finite
from helpers import run_quick

REFLOW = EXP / "reflow_2d.py"


@pytest.mark.slow
def test_reflow_2d_quick(tmp_path):
    files = ("metrics.json", "summary.md", "reflow.png")
    m, out, ck = run_quick(REFLOW, tmp_path, files, "--datasets", "moons")
    assert sorted(p.name for p in ck.iterdir()) == ["moons_student.eqx", "moons_teacher.eqx"]
    r = m["datasets"]["moons"]
    assert _finite(r["floors"]["w2"]) and r["floors"]["w2"] > 0
    for label in ("teacher", "reflow"):
        rows = r["rows"][label]
        assert [row["nfe"] for row in rows[:3]] == [1, 2, 4] and rows[3]["solver"] == "tsit5"
        for row in rows:
            assert _finite(row["w2"]) and row["w2"] > 0 and _finite(row["map_rms"])
        s = r["straightness"][label]
        assert s["length_ratio"] >= 1.0 - 1e-6 and s["deviation"] >= 0
    check_quality(r)
    summary = (out / "summary.md").read_text()
    assert "floor" in summary and "Headline" in summary


def check_quality(r):
    """Quality bounds of the quick run on moons (also applied by hand to a deliberately broken run).

    Calibrated on a known-good quick run (seed 0; floor W2 0.447 +- 0.141 at n = 300): teacher
    (tsit5) W2 1.71 x floor, its 1-step Euler map 1.04 RMS from its own endpoint; the reflowed
    student's 1-step W2 1.49 x floor, map RMS 0.243, path deviation 0.011 against the teacher's
    0.562. With the student trained 210 steps instead of 300 (a broken run): map RMS 0.459, path
    deviation 0.044; with the teacher trained 210 steps, its tsit5 W2 is 1.91 x floor.
    """
    floor = r["floors"]["w2"]
    teacher, student = ({x["nfe"]: x for x in r["rows"][k]} for k in ("teacher", "reflow"))
    adaptive = r["rows"]["teacher"][3]
    assert adaptive["w2"] < 1.85 * floor, adaptive  # the teacher learned the data
    assert student[1]["w2"] < 1.8 * floor, student[1]  # one Euler step after one reflow
    # The student's one step lands near the teacher's own endpoint (same noise), far nearer than
    # the teacher's one step, and its paths are nearly straight (Liu et al.'s S).
    assert student[1]["map_rms"] < 0.35 * teacher[1]["map_rms"], (student[1], teacher[1])
    s = r["straightness"]
    assert s["reflow"]["deviation"] < 0.05 * s["teacher"]["deviation"], s
