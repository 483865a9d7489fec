import os
import shutil
import tempfile

import jax
import jax.random as jr
import pytest

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """One JAX persistent compilation cache per test session, shared by the xdist workers and
    every study subprocess (they inherit the environment): a study run several times (the resume
    test, its quick run) compiles its functions once. The cache lives in a temporary folder that
    the session removes at its end, so no run ever sees another session's compilations."""
    if os.environ.get("PYTEST_XDIST_WORKER") or _CACHE_ENV in os.environ:
        return  # a worker inherits the controller's folder; a user's own setting wins
    folder = tempfile.mkdtemp(prefix="diffeqgen-jax-cache-")
    config._diffeqgen_jax_cache = folder
    os.environ[_CACHE_ENV] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    # This process imported JAX before reading the variables (workers read them at import).
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_unconfigure(config):
    folder = getattr(config, "_diffeqgen_jax_cache", None)
    if folder is not None:
        os.environ.pop(_CACHE_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def key():
    return jr.key(0)


@pytest.fixture
def x64():
    """Enable float64 for one test only, restoring the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
