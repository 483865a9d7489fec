"""Time embeddings: map a scalar time t in [0, 1] to a feature vector of size ``dim``."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._checks import check_int, check_positive
from .._types import Array, Float, PRNGKeyArray, RealScalarLike

__all__ = ["SinusoidalEmbedding", "FourierEmbedding"]


def _check_even_dim(dim) -> int:
    dim = check_int("dim", dim, minimum=2)
    if dim % 2:
        raise ValueError(f"dim must be an even integer >= 2 (sin and cos halves), got {dim!r}")
    return dim


def _as_time(t) -> Array:
    t = jnp.asarray(t)
    if t.ndim != 0:
        raise ValueError(f"t must be a scalar (0-d), got an array of shape {tuple(t.shape)}")
    return t


class SinusoidalEmbedding(eqx.Module):
    r"""Fixed sinusoidal (transformer-style) embedding of a scalar time.

    With ``half = dim // 2`` and frequencies
    $\omega_k = \text{scale} \cdot \text{max\_period}^{-k / \text{half}}$ for ``k = 0..half-1``,

    $$e(t) = [\sin(\omega_0 t), \dots, \sin(\omega_{h-1} t), \cos(\omega_0 t), \dots,
    \cos(\omega_{h-1} t)].$$

    The default ``scale = 100`` spreads the frequencies from 100 down to 0.01 radians per unit of
    time, which resolves t in [0, 1] without the very fast oscillations of the DDPM convention
    (``scale = 1000``) that make probability-flow ODEs stiff in t. At t = 0 the embedding is
    ``half`` zeros followed by ``half`` ones. No parameters are trained.

    Args:
        dim: Output size, an even integer >= 2.
        max_period: Ratio between the fastest and slowest frequency (> 0).
        scale: Fastest angular frequency (> 0).
    """

    dim: int = eqx.field(static=True)
    max_period: float = eqx.field(static=True)
    scale: float = eqx.field(static=True)

    def __init__(self, dim: int, max_period: float | int = 10000.0, *, scale: float | int = 100.0):
        self.dim = _check_even_dim(dim)
        self.max_period = check_positive("max_period", max_period)
        self.scale = check_positive("scale", scale)

    def frequencies(self) -> Float[Array, " half"]:
        r"""Angular frequencies $\omega_k$, shape ``(dim // 2,)``."""
        half = self.dim // 2
        return self.scale * jnp.exp(-math.log(self.max_period) * jnp.arange(half) / half)

    def __call__(self, t: RealScalarLike) -> Float[Array, " dim"]:
        """Embed a scalar time ``t``; returns shape ``(dim,)``."""
        t = _as_time(t)
        angles = t * self.frequencies()
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])


class FourierEmbedding(eqx.Module):
    r"""Random Fourier features of a scalar time (Tancik et al. 2020; Song et al. 2021).

    $e(t) = [\sin(2\pi W t), \cos(2\pi W t)]$ with $W \sim \mathcal N(0, \text{scale}^2)$ of shape
    ``(dim // 2,)`` drawn once from ``key``. ``W`` is stored as an array but is not trained: the
    call wraps it in ``jax.lax.stop_gradient``, so its gradient is exactly zero (use weight decay
    only on matrices, as ``diffeqgen.train.make_optimizer`` does, to keep it fixed).

    Args:
        dim: Output size, an even integer >= 2.
        scale: Standard deviation of the frequencies (> 0).
        key: PRNG key for the frequencies.
    """

    frequencies: Float[Array, " half"]
    dim: int = eqx.field(static=True)

    def __init__(self, dim: int, scale: float | int = 16.0, *, key: PRNGKeyArray):
        self.dim = _check_even_dim(dim)
        scale = check_positive("scale", scale)
        self.frequencies = scale * jr.normal(key, (self.dim // 2,))

    def __call__(self, t: RealScalarLike) -> Float[Array, " dim"]:
        """Embed a scalar time ``t``; returns shape ``(dim,)``."""
        t = _as_time(t)
        angles = 2 * jnp.pi * t * jax.lax.stop_gradient(self.frequencies)
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])


def class_label(args, num_classes: int, model: str) -> Array:
    """``args`` checked as one class label of a class-conditional ``model`` (MLP or UNet).

    A 0-d integer in ``0..num_classes``, ``num_classes`` being the null class of classifier-free
    guidance; a clear error if it is None or not a 0-d integer.
    """
    if args is None:
        raise ValueError(
            f"this {model} is class-conditional (num_classes={num_classes}): pass the "
            f"integer label (0..{num_classes}, {num_classes} = null) as args"
        )
    label = jnp.asarray(args)
    if label.shape != () or not jnp.issubdtype(label.dtype, jnp.integer):
        raise ValueError(
            f"args must be one integer class label (0-d int), got shape "
            f"{tuple(label.shape)} and dtype {label.dtype}"
        )
    return label
