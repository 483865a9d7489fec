"""The main study runs end to end in --quick mode and rejects bad input before any work."""

import importlib.util
import json
from pathlib import Path

import pytest
from helpers import run_script

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "cnf_likelihood.py"
FILES = (
    "linear_map.png",
    "tanh_flow.png",
    "tanh_hist_t05.png",
    "ml_cnf.png",
    "solver_study.png",
    "fm_vs_cnf.png",
    "metrics.json",
    "summary.md",
)


def load_study():
    spec = importlib.util.spec_from_file_location("cnf_likelihood", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_study_writes_its_files(tmp_path):
    out = tmp_path / "cnf"
    ck = tmp_path / "checkpoints"
    proc = run_script(SCRIPT, "--quick", "--out", str(out), "--checkpoints", str(ck))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in FILES:
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    # The linear map is exact up to float32 solver error even in quick mode.
    assert m["linear_map"]["max_abs_error"] < 1e-4
    for row in m["tanh_flow"]["times"]:
        assert row["max_abs_log_error"] < 1e-3
    assert set(m["datasets"]) == {"8gaussians"}
    assert "ML CNF" in (out / "summary.md").read_text()
    assert sorted(p.name for p in ck.iterdir()) == ["fm_8gaussians.eqx", "ml_8gaussians.eqx"]


@pytest.mark.parametrize(
    "args, match",
    [
        (["--datasets", "8gaussians,nope"], "unknown dataset"),
        (["--solver", "nope"], "--solver"),
        (["--solver", "euler"], "non-adaptive"),
        (["--rtol", "0"], "--rtol"),
        (["--atol", "-1"], "--atol"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_bad_input_fails_fast(args, match, tmp_path, capsys):
    study = load_study()
    with pytest.raises(SystemExit) as info:
        study.main(["--quick", "--out", str(tmp_path / "x"), *args])
    assert info.value.code != 0
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        load_study().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--datasets",
        "--steps",
        "--solver",
        "--rtol",
        "--atol",
        "--seed",
        "--out",
        "--quick",
        "--checkpoints",
        "--resume",
    ):
        assert flag in out
