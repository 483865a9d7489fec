import jax
import jax.random as jr
import pytest


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
