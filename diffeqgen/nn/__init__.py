"""Equinox networks: time embeddings and MLPs acting on one sample (Diffrax convention).

Time-conditioned networks are called as ``net(t, x, args=None)`` with a scalar ``t`` (t = 0
noise/source, t = 1 data) and one sample ``x``; vmap over a batch. ``args`` carries the sample's
condition (a class label or a vector, see ``MLP``). A plain Equinox network on one vector
becomes such a field with ``time_concat(net)``. ``UNet`` is the time-conditioned image network
(one image ``(c, h, w)``).
"""

from .embeddings import FourierEmbedding, SinusoidalEmbedding
from .mlp import ACTIVATIONS, EMBEDDINGS, MLP, EnergyMLP, TimeConcat, time_concat
from .unet import UNet

__all__ = [
    "ACTIVATIONS",
    "EMBEDDINGS",
    "FourierEmbedding",
    "SinusoidalEmbedding",
    "MLP",
    "EnergyMLP",
    "TimeConcat",
    "time_concat",
    "UNet",
]
