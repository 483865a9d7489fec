"""Equinox networks: time embeddings and MLPs acting on one sample (Diffrax convention).

Time-conditioned networks are called as ``net(t, x, args=None)`` with a scalar ``t`` (t = 0
noise/source, t = 1 data) and one sample ``x``; vmap over a batch.
"""

from .embeddings import FourierEmbedding, SinusoidalEmbedding
from .mlp import ACTIVATIONS, EMBEDDINGS, MLP, EnergyMLP

__all__ = [
    "ACTIVATIONS",
    "EMBEDDINGS",
    "FourierEmbedding",
    "SinusoidalEmbedding",
    "MLP",
    "EnergyMLP",
]
