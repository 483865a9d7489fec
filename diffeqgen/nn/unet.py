"""The time-conditioned UNet: a vector field, score or denoiser on ONE image ``(c, h, w)``."""

import math
from collections.abc import Sequence

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._checks import check_int
from .._types import Array, Float, PRNGKeyArray, RealScalarLike
from .embeddings import SinusoidalEmbedding, class_label

__all__ = ["UNet"]


def _groups(channels: int, max_groups: int) -> int:
    """GroupNorm's groups: a divisor of ``channels``, at most ``max_groups``, >= 4 channels each.

    A group of one channel would subtract the per-channel embedding that the residual block adds
    just before its second norm; with several channels a group only its group mean is removed.
    """
    return math.gcd(channels, max(1, min(max_groups, channels // 4)))


class ResBlock(eqx.Module):
    """GroupNorm, SiLU, 3x3 conv, + projection of the embedding, GroupNorm, SiLU, 3x3 conv, + skip.

    The skip is a 1x1 convolution when the channels change, the identity otherwise.
    """

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    proj: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, c_in: int, c_out: int, embed_dim: int, groups: int, *, key: PRNGKeyArray):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(_groups(c_in, groups), c_in)
        self.conv1 = eqx.nn.Conv2d(c_in, c_out, 3, padding=1, key=k1)
        self.proj = eqx.nn.Linear(embed_dim, c_out, key=k2)
        self.norm2 = eqx.nn.GroupNorm(_groups(c_out, groups), c_out)
        self.conv2 = eqx.nn.Conv2d(c_out, c_out, 3, padding=1, key=k3)
        self.skip = None if c_in == c_out else eqx.nn.Conv2d(c_in, c_out, 1, key=k4)

    def __call__(self, x: Array, emb: Array) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + einops.rearrange(self.proj(jax.nn.silu(emb)), "c -> c 1 1")
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class UNet(eqx.Module):
    """Time-conditioned UNet ``f(t, x, args)`` on ONE image ``x`` of shape ``(c, h, w)``.

    The output has the input's shape (a velocity, score, denoiser or noise prediction).
    Architecture: a 3x3 input convolution to ``channels[0]``; encoder level ``i`` (width
    ``channels[i]``) is ``res_blocks`` (default two) residual blocks, its output kept as the skip
    connection, then a stride-2 3x3 convolution that halves the resolution; a bottleneck of
    ``mid_blocks`` (default three) residual blocks at ``channels[-1]``; decoder level ``i``
    (deepest first) upsamples by 2 (nearest, then a 3x3 convolution), concatenates the level's
    skip and runs ``res_blocks`` residual blocks; then GroupNorm, SiLU and a 3x3 convolution
    back to ``c`` channels. A residual block is GroupNorm, SiLU,
    3x3 conv, plus a linear projection of the embedding added to every pixel of each channel,
    GroupNorm, SiLU, 3x3 conv, with a 1x1 convolution on the skip path where the channels change.

    The embedding is a sinusoidal embedding of t (`SinusoidalEmbedding`, size ``embed_dim``)
    followed by a two-layer MLP; with ``num_classes=K`` a learned class embedding (size
    ``embed_dim``) is added to it. Time convention: t = 0 noise/source, t = 1 data.

    Sizes that do not halve: the stride-2 convolution maps a side ``n`` to ``ceil(n / 2)``
    (an odd side is zero-padded by one pixel: 28 -> 14 -> 7 -> 4), and the decoder crops each
    upsampled map to its skip's size (4 -> 8 -> 7). So any ``h, w >= 1`` works, e.g. 8x8
    digits, 16x16 and 28x28 MNIST.

    Conditioning (``args`` is the sample's condition, as the losses and samplers pass it):
    with ``num_classes=K``, ``args`` is one integer label in ``0..K``; label ``K`` is the null
    class of classifier-free guidance (``null_cond=K`` in the losses, ``solve.guided(model, w,
    K)``), exactly as ``MLP(num_classes=K)``. Without ``num_classes``, ``args`` is ignored.

    Args:
        in_channels: Channels ``c`` of the image.
        channels: Width of each encoder level (one entry per level, at least one).
        embed_dim: Size of the time (and class) embedding, even.
        res_blocks: Residual blocks per encoder and per decoder level (at least one).
        mid_blocks: Residual blocks of the bottleneck (at least one). Fewer blocks compile
            faster (each block is traced and compiled apart).
        num_classes: Number of classes K for a class-conditional network (labels 0..K, K null).
        norm_groups: GroupNorm groups at most (a divisor of the width with at least 4 channels
            a group where the width allows: the added embedding must survive the norm).
        key: PRNG key for the weights.
    """

    embed: SinusoidalEmbedding
    embed_mlp: tuple[eqx.nn.Linear, eqx.nn.Linear]
    label_embed: eqx.nn.Embedding | None
    conv_in: eqx.nn.Conv2d
    down: tuple[tuple[ResBlock, ...], ...]
    downsample: tuple[eqx.nn.Conv2d, ...]
    mid: tuple[ResBlock, ...]
    upsample: tuple[eqx.nn.Conv2d, ...]
    up: tuple[tuple[ResBlock, ...], ...]
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d
    in_channels: int = eqx.field(static=True)
    num_classes: int | None = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int = 1,
        *,
        channels: Sequence[int] = (32, 64),
        embed_dim: int = 64,
        res_blocks: int = 2,
        mid_blocks: int = 3,
        num_classes: int | None = None,
        norm_groups: int = 8,
        key: PRNGKeyArray,
    ):
        self.in_channels = check_int("in_channels", in_channels)
        if isinstance(channels, int) or not isinstance(channels, Sequence) or not channels:
            raise ValueError(
                f"channels must be a non-empty sequence of level widths, got {channels!r}"
            )
        widths = [check_int(f"channels[{i}]", c) for i, c in enumerate(channels)]
        self.embed = SinusoidalEmbedding(embed_dim)
        norm_groups = check_int("norm_groups", norm_groups)
        res_blocks = check_int("res_blocks", res_blocks)
        mid_blocks = check_int("mid_blocks", mid_blocks)
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes)
        keys = iter(jr.split(key, 5 + mid_blocks + 2 * (res_blocks + 1) * len(widths)))
        self.embed_mlp = (
            eqx.nn.Linear(embed_dim, embed_dim, key=next(keys)),
            eqx.nn.Linear(embed_dim, embed_dim, key=next(keys)),
        )
        self.label_embed = (
            None
            if self.num_classes is None
            else eqx.nn.Embedding(self.num_classes + 1, embed_dim, key=next(keys))
        )

        def block(a, b):
            return ResBlock(a, b, embed_dim, norm_groups, key=next(keys))

        self.conv_in = eqx.nn.Conv2d(self.in_channels, widths[0], 3, padding=1, key=next(keys))
        down, downsample, prev = [], [], widths[0]
        for w in widths:
            down.append(tuple(block(prev if i == 0 else w, w) for i in range(res_blocks)))
            downsample.append(eqx.nn.Conv2d(w, w, 3, stride=2, padding=1, key=next(keys)))
            prev = w
        self.down, self.downsample = tuple(down), tuple(downsample)
        self.mid = tuple(block(prev, prev) for _ in range(mid_blocks))
        up, upsample = [], []
        for w in reversed(widths):
            upsample.append(eqx.nn.Conv2d(prev, w, 3, padding=1, key=next(keys)))
            up.append(tuple(block(2 * w if i == 0 else w, w) for i in range(res_blocks)))
            prev = w
        self.up, self.upsample = tuple(up), tuple(upsample)
        self.norm_out = eqx.nn.GroupNorm(_groups(prev, norm_groups), prev)
        self.conv_out = eqx.nn.Conv2d(prev, self.in_channels, 3, padding=1, key=next(keys))

    def _embedding(self, t: Array, args, dtype) -> Array:
        emb = self.embed(t).astype(dtype)
        emb = self.embed_mlp[1](jax.nn.silu(self.embed_mlp[0](emb)))
        if self.num_classes is None:
            return emb
        label = class_label(args, self.num_classes, "UNet")
        return emb + self.label_embed(label).astype(dtype)

    def __call__(
        self, t: RealScalarLike, x: Float[Array, "c h w"], args=None
    ) -> Float[Array, "c h w"]:
        """Evaluate at scalar time ``t`` on one image ``x`` of shape ``(in_channels, h, w)``."""
        x = jnp.asarray(x)
        if x.ndim != 3 or x.shape[0] != self.in_channels:
            raise ValueError(
                f"x must be one image of shape ({self.in_channels}, h, w) (vmap over a batch), "
                f"got shape {tuple(x.shape)}"
            )
        t = jnp.asarray(t, dtype=x.dtype)
        if t.ndim != 0:
            raise ValueError(f"t must be a scalar (0-d), got an array of shape {tuple(t.shape)}")
        emb = self._embedding(t, args, x.dtype)
        h = self.conv_in(x)
        skips = []
        for blocks, down in zip(self.down, self.downsample, strict=True):
            for b in blocks:
                h = b(h, emb)
            skips.append(h)
            h = down(h)
        for b in self.mid:
            h = b(h, emb)
        for blocks, conv, skip in zip(self.up, self.upsample, reversed(skips), strict=True):
            h = einops.repeat(h, "c h w -> c (h 2) (w 2)")[:, : skip.shape[1], : skip.shape[2]]
            h = jnp.concatenate([conv(h), skip], axis=0)
            for b in blocks:
                h = b(h, emb)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))
