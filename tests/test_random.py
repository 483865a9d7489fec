"""diffeqgen._random: flat Gaussian and Rademacher draws equal jax.random's shaped draws exactly."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffeqgen import _random


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (4, 1, 7, 3), (2, 3, 1, 4, 5)])
def test_flat_draws_equal_shaped_draws(shape, partitionable):
    before = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", partitionable)
    try:
        key = jr.key(7)
        for dtype in (jnp.float32, jnp.bfloat16):
            a, b = _random.normal(key, shape, dtype), jr.normal(key, shape, dtype)
            assert a.shape == b.shape == shape and a.dtype == b.dtype == dtype
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
            r, s = _random.rademacher(key, shape, dtype), jr.rademacher(key, shape, dtype)
            assert r.shape == shape and r.dtype == dtype
            np.testing.assert_array_equal(np.asarray(r, np.float32), np.asarray(s, np.float32))
        if math.prod(shape) > 1:  # not a constant: the draws are random
            assert len(np.unique(np.asarray(a, np.float32))) > 1
    finally:
        jax.config.update("jax_threefry_partitionable", before)


def test_flat_draws_equal_shaped_draws_in_float64(x64):
    key = jr.key(3)
    a = _random.normal(key, (6, 2, 5), jnp.float64)
    np.testing.assert_array_equal(a, jr.normal(key, (6, 2, 5), jnp.float64))
    assert a.dtype == jnp.float64
