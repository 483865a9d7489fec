"""Multilayer perceptrons: a time-conditioned vector field and an energy network."""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._checks import check_choice, check_int
from .._types import Array, Float, PRNGKeyArray, RealScalarLike
from .embeddings import FourierEmbedding, SinusoidalEmbedding, class_label

__all__ = ["ACTIVATIONS", "EMBEDDINGS", "MLP", "EnergyMLP", "TimeConcat", "time_concat"]

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
}
"""Activation names accepted by the networks. Prefer the smooth ones (silu, tanh, softplus, gelu)
for any network whose likelihood goes through an ODE: kinks make the divergence discontinuous."""

EMBEDDINGS = ("sinusoidal", "fourier", "none")
"""Time-embedding names accepted by `MLP`."""


def _hidden_layers(sizes: list[int], key: PRNGKeyArray) -> tuple[eqx.nn.Linear, ...]:
    keys = jr.split(key, len(sizes) - 1)
    return tuple(
        eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
    )


def _check_vector(name: str, x, size: int) -> Array:
    x = jnp.asarray(x)
    if x.shape != (size,):
        raise ValueError(
            f"{name} must have shape ({size},) (one sample; vmap over a batch), "
            f"got shape {tuple(x.shape)}"
        )
    return x


class MLP(eqx.Module):
    """Time-conditioned MLP ``(t, x) -> R^out_size`` acting on ONE sample (Diffrax convention).

    The input to the first layer is ``concat(x, embed(t))``, where ``embed`` is a
    `SinusoidalEmbedding` or `FourierEmbedding` of size ``embed_dim``, or the raw scalar t
    (``embedding="none"``). Then ``depth`` hidden layers of size ``width`` with ``activation`` and
    a final linear layer to ``out_size``. Time convention: t = 0 noise/source, t = 1 data.

    Call as ``mlp(t, x, args=None)`` with scalar ``t`` and ``x`` of shape ``(in_size,)``; vmap
    over a batch (``jax.vmap(mlp, in_axes=(None, 0, None))(t, xs, None)``).

    Conditioning (``args`` is the sample's condition, as the losses and samplers pass it):
    with ``num_classes=K`` the network is class-conditional, ``args`` an integer label in
    ``0..K`` whose learned embedding (size ``embed_dim``) joins the input; label ``K`` is the
    null class of classifier-free guidance (``null_cond=K`` in the losses). With
    ``cond_size=k``, ``args`` is a vector ``(k,)`` concatenated to the input. Without either,
    ``args`` is ignored.

    Args:
        in_size: Size of ``x``.
        out_size: Size of the output (``in_size`` for a vector field).
        width: Hidden width (>= 1).
        depth: Number of hidden layers (>= 1).
        activation: One of `ACTIVATIONS` ("silu" default; smooth).
        embedding: "sinusoidal", "fourier" or "none".
        embed_dim: Size of the time embedding (even, ignored for "none") and of the class
            embedding.
        num_classes: Number of classes K for a class-conditional network (labels 0..K, K null).
        cond_size: Size of a vector condition (exclusive with ``num_classes``).
        key: PRNG key for the weights (and the Fourier frequencies).
    """

    layers: tuple[eqx.nn.Linear, ...]
    embed: SinusoidalEmbedding | FourierEmbedding | None
    label_embed: eqx.nn.Embedding | None
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    num_classes: int | None = eqx.field(static=True)
    cond_size: int | None = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        *,
        width: int = 64,
        depth: int = 4,
        activation: str = "silu",
        embedding: str = "sinusoidal",
        embed_dim: int = 32,
        num_classes: int | None = None,
        cond_size: int | None = None,
        key: PRNGKeyArray,
    ):
        self.in_size = check_int("in_size", in_size)
        self.out_size = check_int("out_size", out_size)
        width = check_int("width", width)
        depth = check_int("depth", depth)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        check_choice("embedding", embedding, EMBEDDINGS)
        emb_key, net_key = jr.split(key)
        if embedding == "none":
            self.embed = None
            embed_size = 1
        else:
            embed_dim = check_int("embed_dim", embed_dim, minimum=2)
            if embedding == "sinusoidal":
                self.embed = SinusoidalEmbedding(embed_dim)
            else:
                self.embed = FourierEmbedding(embed_dim, key=emb_key)
            embed_size = embed_dim
        if num_classes is not None and cond_size is not None:
            raise ValueError(
                f"give num_classes or cond_size, not both (got {num_classes} and {cond_size})"
            )
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes)
        self.cond_size = None if cond_size is None else check_int("cond_size", cond_size)
        cond_in = 0
        self.label_embed = None
        if self.num_classes is not None:
            dim = check_int("embed_dim", embed_dim, minimum=1)
            # fold_in keeps the other weights identical to an unconditional MLP of the same key
            self.label_embed = eqx.nn.Embedding(self.num_classes + 1, dim, key=jr.fold_in(key, 7))
            cond_in = dim
        elif self.cond_size is not None:
            cond_in = self.cond_size
        sizes = [self.in_size + embed_size + cond_in] + [width] * depth + [self.out_size]
        self.layers = _hidden_layers(sizes, net_key)

    def _condition(self, args, dtype) -> list[Array]:
        if self.num_classes is not None:
            label = class_label(args, self.num_classes, "MLP")
            return [self.label_embed(label).astype(dtype)]
        if self.cond_size is not None:
            if args is None:
                raise ValueError(
                    f"this MLP has cond_size={self.cond_size}: pass the condition vector as args"
                )
            return [_check_vector("args", args, self.cond_size).astype(dtype)]
        return []

    def __call__(self, t: RealScalarLike, x: Float[Array, " d"], args=None) -> Float[Array, " out"]:
        """Evaluate at scalar time ``t`` on one sample ``x`` of shape ``(in_size,)``."""
        x = _check_vector("x", x, self.in_size)
        t = jnp.asarray(t, dtype=x.dtype)
        if t.ndim != 0:
            raise ValueError(f"t must be a scalar (0-d), got an array of shape {tuple(t.shape)}")
        feat = t[None] if self.embed is None else self.embed(t).astype(x.dtype)
        h = jnp.concatenate([x, feat, *self._condition(args, x.dtype)])
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            h = act(layer(h))
        return self.layers[-1](h)


class EnergyMLP(eqx.Module):
    """Energy network ``E(x) -> scalar`` with score ``s(x) = -grad E(x)`` (for EBMs).

    The density it defines is ``p(x) ∝ exp(-E(x))``. Acts on ONE sample ``x`` of shape
    ``(in_size,)``; vmap over a batch. Default activation is smooth so the score is continuous.

    Args:
        in_size: Size of ``x``.
        width: Hidden width (>= 1).
        depth: Number of hidden layers (>= 1).
        activation: One of `ACTIVATIONS` (default "silu").
        key: PRNG key for the weights.
    """

    layers: tuple[eqx.nn.Linear, ...]
    in_size: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    kind: ClassVar[str] = "energy"

    def __init__(
        self,
        in_size: int,
        *,
        width: int = 64,
        depth: int = 3,
        activation: str = "silu",
        key: PRNGKeyArray,
    ):
        self.in_size = check_int("in_size", in_size)
        width = check_int("width", width)
        depth = check_int("depth", depth)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.layers = _hidden_layers([self.in_size] + [width] * depth + [1], key)

    def energy(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        """Energy ``E(x)`` of one sample, a scalar."""
        h = _check_vector("x", x, self.in_size)
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            h = act(layer(h))
        return self.layers[-1](h)[0]

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        """Same as `energy`."""
        return self.energy(x)

    def score(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """Score ``-grad_x E(x)`` of one sample, shape ``(in_size,)``."""
        return -jax.grad(self.energy)(x)


class TimeConcat(eqx.Module):
    """Adapter: a network on one input vector becomes a field ``f(t, x, args)``.

    ``TimeConcat(net)(t, x, args) = net(concat([x, [t]]))`` (``args`` ignored), so a plain
    ``eqx.nn.MLP(d + 1, d, width, depth, key=key)`` trains, samples and gives likelihoods like
    any model of the package. Build it with [`time_concat`][].
    """

    net: Callable

    def __call__(self, t: RealScalarLike, x: Float[Array, " d"], args=None) -> Array:
        """``net(concat([x, [t]]))`` on one sample ``x``."""
        del args
        x = jnp.asarray(x)
        return self.net(jnp.concatenate([x.reshape(-1), jnp.asarray(t, x.dtype).reshape(1)]))


def time_concat(net: Callable) -> TimeConcat:
    """Wrap a network on one input vector as a field ``f(t, x, args)`` (see `TimeConcat`).

    Example::

        net = eqx.nn.MLP(in_size=3, out_size=2, width_size=64, depth=3, key=key)
        field = dg.nn.time_concat(net)  # field(t, x, args) with x of shape (2,)
    """
    if not callable(net):
        raise TypeError(f"net must be callable on one input vector, got {type(net).__name__}")
    return TimeConcat(net)
