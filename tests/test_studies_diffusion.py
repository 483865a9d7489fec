"""End-to-end tests of the diffusion studies: score_sde_2d and dsm_vs_ddpm (quick mode)."""

import json

import numpy as np
import pytest
from helpers import EXPERIMENTS as EXP
from helpers import assert_bad_flags_fail, load_script, run_main, run_quick
from helpers import is_finite_number as _finite

SCORE_SDE = EXP / "score_sde_2d.py"
DSM_DDPM = EXP / "dsm_vs_ddpm.py"


@pytest.mark.slow
def test_score_sde_2d_quick(tmp_path):
    files = ("metrics.json", "summary.md", "samples.npz", "samples.png", "losses.png")
    m, out, ck = run_quick(SCORE_SDE, tmp_path, files)
    assert list(out.glob("fields_*.png"))
    assert list(ck.iterdir()), "training wrote no checkpoint"
    assert m["n"] > 0 and _finite(m["mmd_bandwidth"]) and m["mmd_bandwidth"] > 0
    assert _finite(m["floors"]["w2"]) and m["floors"]["w2"] > 0
    samplers = {r["sampler"] for r in m["rows"]}
    assert any("SDE" in s for s in samplers) and any("Euler N=" in s for s in samplers)
    assert any("PC" in s for s in samplers)
    assert {r["kind"] for r in m["rows"]} == {"eps", "velocity"}  # --quick: vp:eps + FM
    for r in m["rows"]:
        for k in ("w2", "mmd", "train_seconds", "sample_seconds", "best_val_loss"):
            assert _finite(r[k]), (r["model"], r["sampler"], k, r[k])
        assert r["w2"] > 0 and r["nfe"] >= 1
        assert r["w2_over_floor"] == pytest.approx(r["w2"] / m["floors"]["w2"])
        if "Euler N=" in r["sampler"] and "ODE" in r["sampler"]:
            assert r["nfe"] == int(r["sampler"].split("N=")[1].split()[0])
    assert m["best"]["w2"] == pytest.approx(min(r["w2"] for r in m["rows"]))
    npz = np.load(out / "samples.npz")
    assert npz["real"].shape == (m["n"], 2)
    assert len(npz["names"]) == len(m["rows"])
    assert all(np.isfinite(npz[f"s{i}"]).all() for i in range(len(m["rows"])))
    summary = (out / "summary.md").read_text()
    assert "floor" in summary and "bandwidth" in summary
    check_score_sde_quality(m)


def check_score_sde_quality(m):
    """Quality bounds of the score_sde_2d quick run (also applied to a broken run by hand).

    Calibrated on a known-good quick run (seed 0, 600 steps, n = 400, floor W2 0.286 +- 0.019):
    every sampler of both models scores W2 1.69-1.88 x floor and MMD^2 0.009-0.015. Trained 150
    steps instead of 600 (a broken run): W2 2.0-2.7 x floor, MMD^2 up to 0.042.
    """
    for r in m["rows"]:
        assert r["w2_over_floor"] < 2.1, (r["model"], r["sampler"], r["w2_over_floor"])
        assert r["mmd"] < 0.025, (r["model"], r["sampler"], r["mmd"])


@pytest.mark.slow
def test_dsm_vs_ddpm_quick(tmp_path):
    files = ("metrics.json", "summary.md", "samples.npz", "samples.png", "losses.png",
             "score_fields.png")  # fmt: skip
    m, out, ck = run_quick(DSM_DDPM, tmp_path, files)
    assert list(ck.iterdir()), "training wrote no checkpoint"
    assert {r["model"] for r in m["rows"]} == {"dsm", "ncsm", "ddpm"}
    assert {r["model"]: r["nfe"] for r in m["rows"]}["ddpm"] == m["T"] == 500
    assert {r["dataset"] for r in m["rows"]} == {"mixture"}  # --quick: one data set
    for d, f in m["floors"].items():
        for k in ("M1", "M2", "M3", "M4", "w2", "mmd", "kde_bandwidth", "mmd_bandwidth"):
            assert _finite(f[k]), (d, k)
        # M1 is the sum of the 500 per-point log-likelihoods whose mean is M2.
        assert f["M1"] == pytest.approx(500 * f["M2"], rel=1e-4)
    for r in m["rows"]:
        for k in ("M1", "M2", "M3", "M4", "w2", "mmd", "best_test_loss"):
            assert _finite(r[k]), (r["dataset"], r["model"], k)
        assert r["M1"] == pytest.approx(500 * r["M2"], rel=1e-4)
        assert r["M3"] == pytest.approx(500 * r["M4"], rel=1e-4)
        assert r["w2"] > 0
        assert 0 <= r["mode_tv"] <= 1
        assert r["w2_over_floor"] == pytest.approx(r["w2"] / m["floors"][r["dataset"]]["w2"])
    npz = np.load(out / "samples.npz")
    for r in m["rows"]:
        x = npz[f"{r['dataset']}_{r['model']}"]
        assert x.shape == (500, 2) and np.isfinite(x).all()
    check_dsm_quality(m)


def check_dsm_quality(m):
    """Quality bounds of the dsm_vs_ddpm quick run (also applied to a broken run by hand).

    Calibrated on a known-good quick run (seed 0; mixture, floor W2 0.446 +- 0.110, KDE mean
    test log-likelihood M2 -3.171, mode TV 0.024): W2 1.65 / 2.63 / 2.16 x floor, M2 -3.37 /
    -3.97 / -3.89 and mode TV 0.06 / 0.04 / 0.06 for DSM / NCSM / DDPM (400 / 400 / 600 steps).
    Trained 100 / 100 / 150 steps (a broken run): DSM M2 -3.76, NCSM W2 5.7 x floor, DDPM mode TV
    0.13.
    """
    floor = m["floors"]["mixture"]
    bounds = {"dsm": (2.0, -3.6), "ncsm": (3.1, -4.3), "ddpm": (2.6, -4.2)}
    for r in m["rows"]:
        w2_bound, m2_bound = bounds[r["model"]]
        assert r["w2_over_floor"] < w2_bound, r
        assert r["M2"] > m2_bound and r["M2"] < floor["M2"] + 0.05, (r, floor["M2"])
        assert r["mode_tv"] < 0.1, r


@pytest.mark.parametrize("script", [SCORE_SDE, DSM_DDPM])
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
        (SCORE_SDE, ["--paths", "nonsense"], "nonsense"),
        (SCORE_SDE, ["--paths", "vp:velocityy"], "velocityy"),
        (SCORE_SDE, ["--adaptive", "rk99"], "rk99"),
        (SCORE_SDE, ["--snr", "0"], "snr"),
        (SCORE_SDE, ["--ve-scale", "-1"], "ve_scale"),
        (DSM_DDPM, ["--sigma", "0"], "sigma"),
        (DSM_DDPM, ["--sigma", "-0.1"], "sigma"),
        (DSM_DDPM, ["--k", "0"], "k"),
        (DSM_DDPM, ["--T", "0"], "T"),
        (DSM_DDPM, ["--datasets", "unicorns"], "unicorns"),
        (DSM_DDPM, ["--models", "gan"], "gan"),
    ],
)
def test_bad_flags_fail_before_training(tmp_path, capsys, script, args, needle):
    assert_bad_flags_fail(script, args, needle, tmp_path, capsys)


def test_annealed_langevin_gaussian(key):
    """Annealed Langevin on the exact noise-conditional score of N(0, I) data.

    For data N(0, I) the score at noise level s is -x / (1 + s^2). After the last level
    (s = 0.5, h = 0.01, 500 steps: Langevin time 5, well mixed) the chains are stationary at
    variance v = (1 + s^2) / (1 - h / (2 (1 + s^2))) per coordinate (the ULA bias). z-tests on
    the mean and the variance of 4000 x 2 draws at |z| < 5.
    """
    import jax.numpy as jnp
    import jax.random as jr

    from diffeqgen import solve

    sigmas = jnp.array([1.0, 0.5])
    x0 = jr.normal(jr.fold_in(key, 1), (4000, 2)) * 3.0
    sol = solve.annealed_langevin(
        lambda s, x, a: -x / (1.0 + s**2), x0, sigmas, key=key, step_size=0.01, steps_per_level=500
    )
    assert sol.nfe == 1000
    x = np.asarray(sol.x).ravel()
    v = 1.25 / (1 - 0.01 / 2.5)
    assert abs(x.mean()) / np.sqrt(v / x.size) < 5
    assert abs(x.var() - v) / (v * np.sqrt(2 / x.size)) < 5


def test_annealed_langevin_rejects_bad_sigmas(key):
    import jax.numpy as jnp

    from diffeqgen import solve

    with pytest.raises(ValueError, match="sigmas"):
        solve.annealed_langevin(
            lambda s, x, a: -x, jnp.zeros((3, 2)), jnp.array([1.0, 0.0]), key=key,
            step_size=0.1, steps_per_level=2,
        )  # fmt: skip
    with pytest.raises(ValueError, match="step_size"):
        solve.annealed_langevin(
            lambda s, x, a: -x, jnp.zeros((3, 2)), jnp.array([1.0]), key=key, step_size=0.0,
            steps_per_level=2,
        )  # fmt: skip


@pytest.mark.slow
def test_dsm_vs_ddpm_resume_matches_uninterrupted(tmp_path):
    """A run stopped at 200 steps and resumed to 300 equals an uninterrupted 300-step run."""
    common = ["--quick", "--models", "ddpm", "--seed", "3"]
    run_main(DSM_DDPM, *common, "--ddpm-steps", "300", "--out", str(tmp_path / "a"),
             "--checkpoints", str(tmp_path / "ca"))  # fmt: skip
    run_main(DSM_DDPM, *common, "--ddpm-steps", "200", "--out", str(tmp_path / "b"),
             "--checkpoints", str(tmp_path / "cb"))  # fmt: skip
    run_main(DSM_DDPM, *common, "--ddpm-steps", "300", "--resume", "--out", str(tmp_path / "b"),
             "--checkpoints", str(tmp_path / "cb"))  # fmt: skip
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["rows"][0]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["rows"][0]
    for k in ("w2", "mmd", "M1", "M3", "best_test_loss"):
        assert a[k] == b[k], (k, a[k], b[k])
