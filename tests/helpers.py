import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def tree_allclose(a, b, *, rtol=1e-5, atol=1e-8) -> bool:
    """True when two pytrees have the same structure and all leaves are close."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    return all(
        np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
        for x, y in zip(la, lb, strict=True)
    )


def load_script(path):
    """Import an experiments/ script as a module (in-process: no new JAX start-up)."""
    import importlib.util

    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"_study_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_main(script, *args):
    """Run a study's ``main`` in this process (``--quick`` runs in the tests).

    Saves the JAX start-up and backend set-up of a subprocess, and the worker's compilation
    cache is shared with the other tests. The studies in experiments/ (not the main study) and
    the benchmarks leave no global JAX state behind: the float64 flag is checked to be
    unchanged. Return whatever ``main`` returns.
    """
    import jax

    x64 = jax.config.jax_enable_x64
    out = load_script(script).main([str(a) for a in args])
    assert jax.config.jax_enable_x64 == x64, f"{pathlib.Path(script).name} changed jax_enable_x64"
    return out


def run_quick(script, tmp_path, files, *flags):
    """A study's ``--quick`` in this process (``run_main``) into ``tmp_path/out`` with its
    checkpoints in ``tmp_path/ckpt``; asserts every name in ``files`` was written there.

    Returns ``(metrics, out, ckpt)``: the run's ``metrics.json`` and the two folders.
    """
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    run_main(script, "--quick", *flags, "--out", str(out), "--checkpoints", str(ckpt))
    for f in files:
        assert (out / f).is_file(), f
    return json.loads((out / "metrics.json").read_text()), out, ckpt


def assert_bad_flags_fail(script, args, needle, tmp_path, capsys):
    """``script``'s ``main`` exits with an argparse error naming ``needle`` before any work: no
    output folder and no checkpoint folder is created."""
    import pytest

    ckpt = tmp_path / "c"
    with pytest.raises(SystemExit) as e:
        load_script(script).main(
            [*args, "--quick", "--out", str(tmp_path / "o"), "--checkpoints", str(ckpt)]
        )
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert needle in err and "error" in err.lower()
    assert not ckpt.exists() and not (tmp_path / "o").exists()


def run_script(path, *args, timeout=None):
    """Run an experiments/ or benchmarks/ script in a subprocess; return CompletedProcess.

    No wall-clock limit by default: a slow machine must not fail a test. A hung run is stopped by
    the suite's global per-test limit (pytest-timeout, ``timeout`` in pyproject.toml).
    """
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_trees_equal(a, b):
    """Assert two Equinox modules / pytrees have the same structure and bit-identical arrays."""
    import equinox as eqx

    la, ta = jax.tree_util.tree_flatten(eqx.filter(a, eqx.is_array))
    lb, tb = jax.tree_util.tree_flatten(eqx.filter(b, eqx.is_array))
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


__all__ = [
    "tree_allclose",
    "run_script",
    "assert_trees_equal",
    "load_script",
    "run_main",
    "assert_bad_flags_fail",
    "jnp",
]


EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def run_ok(script, *args, timeout=None):
    """Run a script like ``run_script`` and assert it succeeded, showing its output if not."""
    r = run_script(script, *args, timeout=timeout)
    assert r.returncode == 0, f"{script.name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def is_finite_number(x) -> bool:
    """True for a Python int or float that is finite (what a metrics.json value should be)."""
    import math

    return isinstance(x, int | float) and math.isfinite(x)


# ----------------------------------------------- small vector fields with closed-form flows


class Linear(eqx.Module):
    """dz/dt = B z: maps N(0, I) at t = 0 to N(0, M M^T), M = expm(B), at t = 1."""

    b: jax.Array

    def __call__(self, t, z, args=None):
        return self.b @ z


class TanhField(eqx.Module):
    """A smooth nonlinear time-dependent field f(t, z) = tanh(W z + b t)."""

    w: jax.Array
    b: jax.Array

    def __call__(self, t, z, args=None):
        return jnp.tanh(self.w @ z + self.b * t)
