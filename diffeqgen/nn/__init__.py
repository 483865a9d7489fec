"""Equinox networks: time embeddings, MLPs."""

__all__ = []
