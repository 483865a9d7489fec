"""End-to-end test of experiments/ebm_langevin.py in quick mode."""

import numpy as np
import pytest
from helpers import EXPERIMENTS as EXP
from helpers import is_finite_number as _finite
from helpers import run_quick

SCRIPT = EXP / "ebm_langevin.py"


@pytest.mark.slow
def test_ebm_langevin_quick(tmp_path):
    files = ("metrics.json", "summary.md", "samples.npz", "ebm_samples.png",
             "mcmc_gradient.png", "self_healing.png", "losses.png")  # fmt: skip
    m, out, _ = run_quick(SCRIPT, tmp_path, files)
    assert [row["dataset"] for row in m["ebm"]] == ["8gaussians", "pinwheel"]
    for row in m["ebm"]:
        assert _finite(row["w2"]) and row["w2"] > 0 and row["floors"]["w2"] > 0
        assert 0 < row["acceptance"] <= 1 and _finite(row["test_nll"])
    # the true NLL is a lower bound (in expectation) of any model's test NLL: a sanity check
    eight = m["ebm"][0]
    assert eight["test_nll"] > eight["true_nll"] - 0.1
    grad = m["gradient"]
    assert {(g["chains"], g["steps"]) for g in grad} == {(16, 5), (64, 5), (16, 20), (64, 20)}
    for k in (5, 20):  # more chains, less variance
        v = {g["chains"]: g["grad_var"] for g in grad if g["steps"] == k}
        assert v[64] < v[16]
    heal = m["self_healing"]
    assert len(heal) == 6 and all(_finite(h["w2"]) for h in heal)
    # equal work per sampler; with a large perturbation the ODE does worse than with none
    assert len({h["nfe"] for h in heal}) == 1
    ode = {h["delta"]: h["w2"] for h in heal if h["sampler"].startswith("probability-flow")}
    assert ode[1.0] > ode[0.0]
    # ... while the stochastic samplers of the trained score model recover from it (self-healing)
    stochastic = [
        h["w2"]
        for h in heal
        if h["delta"] == 1.0 and not h["sampler"].startswith("probability-flow")
    ]
    assert len(stochastic) == 2
    assert max(stochastic) < ode[1.0], heal
    assert m["heal_model"]["kind"] == "eps" and m["heal_model"]["steps"] == 1500
    with np.load(out / "samples.npz") as z:
        assert z["8gaussians"].shape == (m["config"]["n"], 2) and np.all(np.isfinite(z["pinwheel"]))
    summary = (out / "summary.md").read_text()
    assert "floor" in summary and "Self-healing" in summary
