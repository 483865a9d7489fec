"""Per-sample conditions for samplers and likelihoods, and classifier-free guidance.

A sampler's ``args`` is shared by every sample; its ``cond`` has leading axis n and is mapped
with the samples. Inside the solvers both travel together as one pytree, `PerSample`, which the
batching helpers vmap over (``shared`` broadcast, ``cond`` mapped); the user's field then sees
`merge` of one sample's share: ``cond_i`` alone, ``args`` alone, or ``(args, cond_i)``.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._failures import concrete
from ._types import Array, RealScalarLike

__all__ = [
    "PerSample",
    "Unbatched",
    "batched",
    "pack",
    "merge",
    "in_axes",
    "one_sample",
    "first_sample",
    "Guided",
    "guided",
]


class PerSample(eqx.Module):
    """Shared ``args`` and per-sample ``cond`` (leading axis n) travelling together."""

    shared: Any
    cond: Any


class Unbatched(eqx.Module):
    """``f(t, x, args)`` on one sample whose ``args`` may be one sample's `PerSample` share."""

    fn: Any

    def __call__(self, t, y, args):
        return self.fn(t, y, merge(args))


def batched(fn: Any) -> Any:
    """``f(t, x, args)`` on one sample -> on a batch: vmap over x (and over ``cond``)."""

    def call(t, y, args):
        return jax.vmap(Unbatched(fn), in_axes=(None, 0, in_axes(args)))(t, y, args)

    return call


def pack(args: Any, cond: Any, n: int, where: str) -> Any:
    """``args`` unchanged when ``cond`` is None, else ``PerSample(args, cond)`` (checked)."""
    if cond is None:
        return args
    leaves = jax.tree_util.tree_leaves_with_path(cond)
    if not leaves:
        raise ValueError(f"{where}: cond must hold arrays with leading axis n={n}, got {cond!r}")
    for path, leaf in leaves:
        shape = getattr(leaf, "shape", ())
        if len(shape) < 1 or shape[0] != n:
            raise ValueError(
                f"{where}: cond is per-sample, every leaf needs leading axis n={n} (the batch "
                f"size of x); cond{jax.tree_util.keystr(path)} has shape {tuple(shape)}"
            )
    cond = jax.tree_util.tree_map(jnp.asarray, cond)
    return PerSample(args, cond)


def merge(args: Any) -> Any:
    """What one sample's field receives: ``cond_i``, ``args``, or ``(args, cond_i)``."""
    if not isinstance(args, PerSample):
        return args
    return args.cond if args.shared is None else (args.shared, args.cond)


def in_axes(args: Any) -> Any:
    """Axes to vmap ``args`` over the batch: ``cond`` mapped, everything else broadcast."""
    return PerSample(None, 0) if isinstance(args, PerSample) else None


def first_sample(args: Any) -> Any:
    """What the field receives for the first sample (concrete arrays; for structural checks)."""
    if not isinstance(args, PerSample):
        return args
    return merge(PerSample(args.shared, jax.tree_util.tree_map(lambda c: c[0], args.cond)))


def one_sample(args: Any) -> Any:
    """Shape structure of one sample's ``args`` (for checking a field by ``eval_shape``)."""
    if not isinstance(args, PerSample):
        return args
    cond = jax.tree_util.tree_map(lambda c: jax.ShapeDtypeStruct(c.shape[1:], c.dtype), args.cond)
    return merge(PerSample(args.shared, cond))


class Guided(eqx.Module):
    """Classifier-free guided field ``(1 + w) f(t, x, c) - w f(t, x, null)``; see `guided`."""

    model: Any
    weight: Array
    null_cond: Any

    @property
    def path(self) -> Any:
        """The Gaussian path of the guided model, if it has one (its prior is the CNF base)."""
        return getattr(self.model, "path", None)

    def __call__(self, t: RealScalarLike, x: Array, args: Any) -> Array:
        """Guided prediction on one sample; ``args`` is the sample's condition ``c``."""
        w = self.weight.astype(x.dtype)

        def fill(z, c):
            return jnp.broadcast_to(jnp.asarray(z, jnp.asarray(c).dtype), jnp.shape(c))

        if jax.tree_util.tree_structure(self.null_cond) == jax.tree_util.tree_structure(args):
            null = jax.tree_util.tree_map(fill, self.null_cond, args)
        else:  # one null value for every leaf of the condition
            null = jax.tree_util.tree_map(lambda c: fill(self.null_cond, c), args)
        return (1 + w) * self.model(t, x, args) - w * self.model(t, x, null)


def guided(model: Any, weight: RealScalarLike, null_cond: Any) -> Guided:
    """Classifier-free guidance: ``g(t, x, c) = (1 + w) f(t, x, c) - w f(t, x, null_cond)``.

    ``f`` is a model trained with label dropout (``cond_dropout > 0, null_cond=...`` in any
    loss), so that ``f(t, x, null_cond)`` is the unconditional model. Any parametrisation works
    (velocity, score, denoiser, eps are all affine in the score at fixed ``(t, x)``), so ``g``
    goes wherever ``f`` goes: ``sample_ode(g, x0, cond=labels)``, ``sample_sde``, the discrete
    samplers, ``paths.as_vector_field`` and ``cnf.log_prob``. ``w = 0`` is ``f`` itself exactly;
    ``w > 0`` sharpens each class. ``weight`` may be traced (it is an array field), so one
    compiled sampler serves every ``w``. The condition ``c`` is the whole ``args`` the field
    receives (pass it as ``cond=``, not together with a shared ``args``).

    Args:
        model: ``f(t, x, args)`` on one sample, ``args`` the condition.
        weight: guidance weight w >= 0 (0: no guidance).
        null_cond: the "no condition" value the model was trained with (e.g. ``num_classes``
            for ``nn.MLP(num_classes=...)``), broadcast to each condition leaf's shape.

    Returns:
        The guided field, an Equinox module ``g(t, x, c)``.
    """
    if not callable(model):
        raise TypeError(f"model must be callable f(t, x, args), got {type(model).__name__}")
    if null_cond is None:
        raise ValueError("null_cond is required: the condition meaning 'no condition'")
    w = jnp.asarray(weight)
    if w.shape != ():
        raise ValueError(f"weight must be a scalar, got shape {w.shape}")
    if concrete(w) is not None and not bool(w >= 0):
        raise ValueError(f"weight must be >= 0 (0: no guidance), got {weight!r}")
    return Guided(model, w.astype(jnp.result_type(float)), null_cond)
