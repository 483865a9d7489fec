"""Type aliases shared across diffeqgen (shapes are checked by jaxtyping in the tests)."""

from collections.abc import Callable
from typing import Any

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Scalar

__all__ = [
    "Array",
    "ArrayLike",
    "Float",
    "PRNGKeyArray",
    "Scalar",
    "RealScalarLike",
    "VectorField",
    "Sampler",
]

RealScalarLike = float | int | Float[ArrayLike, ""]
"""A Python number or a 0-d array."""

VectorField = Callable[[Any, Array, Any], Array]
"""Diffrax convention ``f(t, x, args) -> dx/dt`` acting on ONE sample ``x`` (shape ``event``).

The solve layer vmaps it over the batch. Networks in ``diffeqgen.nn`` have this signature.
"""

Sampler = Callable[[PRNGKeyArray, int], Array]
"""``sample(key, n) -> Float[Array, "n *event"]``: a pure JAX sampler, jittable for static n."""
