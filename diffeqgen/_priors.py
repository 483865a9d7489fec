"""The isotropic Gaussian reference density of a path at t = 0 (``GaussianPath.prior``)."""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_int, is_traced

__all__ = ["IsotropicGaussian"]


def _event(event_shape) -> tuple[int, ...]:
    if isinstance(event_shape, int):
        event_shape = (event_shape,)
    try:
        event = tuple(check_int("event_shape", int(d)) for d in event_shape)
    except TypeError:
        raise TypeError(
            f"event_shape must be an int or a tuple of ints >= 1, got {event_shape!r}"
        ) from None
    if not event:
        raise ValueError("event_shape must have at least one axis, got ()")
    return event


class IsotropicGaussian(eqx.Module):
    """N(0, scale^2 I) on samples of shape ``event_shape``.

    The base density interface of ``diffeqgen.cnf``: ``log_prob(z)`` of shape (*batch, *event)
    gives (*batch), ``sample(key, n)`` gives (n, *event). ``scale`` may be traced.

    Attributes:
        scale: standard deviation (a 0-d array).
        event_shape: shape of one sample.
    """

    scale: Float[Array, ""]
    event_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, scale: float | Float[ArrayLike, ""], event_shape: int | tuple[int, ...]):
        self.scale = jnp.asarray(scale, jnp.result_type(float))
        if self.scale.ndim != 0:
            raise ValueError(f"scale must be a scalar, got shape {tuple(self.scale.shape)}")
        if is_traced(self.scale):
            self.scale = eqx.error_if(self.scale, ~(self.scale > 0), "scale must be finite > 0")
        elif not (np.isfinite(float(self.scale)) and float(self.scale) > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.event_shape = _event(event_shape)

    @property
    def dim(self) -> int:
        """Number of dimensions of one sample (the product of ``event_shape``)."""
        return math.prod(self.event_shape)

    def _check(self, z):
        k = len(self.event_shape)
        if z.ndim < k or tuple(z.shape[z.ndim - k :]) != self.event_shape:
            raise ValueError(
                f"z must have shape (*batch, {', '.join(map(str, self.event_shape))}) for event "
                f"shape {self.event_shape}, got shape {tuple(z.shape)}"
            )

    def log_prob(self, z: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        """Log-density log N(z; 0, scale^2 I), summed over the event axes: shape (*batch)."""
        z = jnp.asarray(z)
        self._check(z)
        axes = tuple(range(z.ndim - len(self.event_shape), z.ndim))
        scale = self.scale.astype(z.dtype)
        return (
            -0.5 * jnp.sum(z**2, axis=axes) / scale**2
            - self.dim * jnp.log(scale)
            - 0.5 * self.dim * math.log(2 * math.pi)
        )

    def sample(
        self, key: PRNGKeyArray, n: int | tuple[int, ...] = (), *, dtype=None
    ) -> Float[Array, "..."]:
        """Draw samples of shape (n, *event) (or (*n, *event) for a tuple ``n``)."""
        lead = (check_int("n", n),) if isinstance(n, int) else tuple(n)
        dtype = self.scale.dtype if dtype is None else dtype
        return self.scale.astype(dtype) * jr.normal(key, (*lead, *self.event_shape), dtype)
