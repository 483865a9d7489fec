"""Cat and dog: uniform densities on recognisable polygon silhouettes.

The outlines are drawn below as vertex lists in design units (y up), then centred on their
bounding box and scaled so the larger half-extent is 3.5, the common scale of the 2D sets. Each is
triangulated once at import (ear clipping, numpy) and sampled exactly on device; ``log_prob`` is
``-log(area)`` inside (ray casting) and ``-inf`` outside, so the entropy is ``log(area)``.
"""

import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._polygon import Polygon

__all__ = ["CAT", "DOG", "cat", "dog", "cat_log_prob", "dog_log_prob"]

# A cat sitting, seen from the front: two pointed ears, round head, pear-shaped body, and a tail
# curling up on the right. Traced counter-clockwise from the bottom left.
_CAT_DESIGN = [
    (-1.50, 0.00), (0.60, 0.00), (1.60, 0.00), (2.40, 0.05), (3.00, 0.35), (3.35, 0.90),
    (3.40, 1.60), (3.20, 2.20), (2.95, 2.50), (2.75, 2.55), (2.75, 2.20), (2.95, 1.90),
    (3.05, 1.40), (2.95, 0.85), (2.55, 0.50), (2.00, 0.38), (1.70, 0.50), (1.90, 1.00),
    (1.85, 1.60), (1.50, 2.25), (0.85, 2.95), (0.88, 3.09), (1.06, 3.27), (1.18, 3.47),
    (1.24, 3.70), (1.24, 3.92), (1.17, 4.14), (1.20, 5.45), (0.53, 4.71), (0.32, 4.77),
    (0.11, 4.80), (-0.11, 4.80), (-0.32, 4.77), (-0.53, 4.71), (-1.20, 5.45), (-1.17, 4.14),
    (-1.24, 3.92), (-1.24, 3.70), (-1.18, 3.47), (-1.06, 3.27), (-0.88, 3.09), (-0.85, 2.95),
    (-1.50, 2.25), (-1.85, 1.60), (-1.90, 1.00), (-1.75, 0.40),
]  # fmt: skip

# A dog standing, side view facing left: four legs, tail up, a long snout and a floppy ear hanging
# behind the head (the slot under it separates it from the back). Counter-clockwise from the
# front paw.
_DOG_DESIGN = [
    (-2.30, 0.00), (-1.65, 0.00), (-1.60, 1.30), (-1.30, 1.30), (-1.30, 0.25), (-1.45, 0.25),
    (-1.45, 0.00), (-0.85, 0.00), (-0.85, 1.25), (0.00, 1.20), (0.90, 1.25), (0.90, 0.00),
    (1.45, 0.00), (1.40, 0.95), (1.55, 1.05), (1.75, 0.30), (1.60, 0.30), (1.60, 0.00),
    (2.25, 0.00), (2.20, 1.20), (2.35, 1.80), (2.40, 2.25), (2.70, 2.70), (3.10, 3.25),
    (3.35, 3.55), (3.25, 3.65), (2.85, 3.30), (2.35, 2.75), (1.00, 2.70), (0.00, 2.72),
    (-0.90, 2.75), (-1.30, 2.85), (-1.50, 3.35), (-1.30, 3.15), (-1.00, 3.05), (-0.65, 3.15),
    (-0.50, 3.50), (-0.60, 3.95), (-0.95, 4.35), (-1.50, 4.55), (-2.10, 4.50), (-2.50, 4.25),
    (-2.75, 3.95), (-3.60, 3.85), (-3.90, 3.65), (-3.85, 3.40), (-3.30, 3.25), (-2.80, 3.15),
    (-2.50, 2.95), (-2.45, 2.40), (-2.30, 1.70), (-2.05, 1.40), (-2.10, 0.30), (-2.30, 0.30),
]  # fmt: skip


def _normalise(design: list[tuple[float, float]], half_extent: float = 3.5) -> np.ndarray:
    """Centre vertices on their bounding box; scale the larger half-extent to ``half_extent``."""
    v = np.asarray(design, dtype=np.float64)
    v = v - 0.5 * (v.max(axis=0) + v.min(axis=0))
    return v * (half_extent / np.abs(v).max())


CAT = Polygon(_normalise(_CAT_DESIGN))
"""The cat silhouette as a ``Polygon`` (uniform density, exact sampling)."""

DOG = Polygon(_normalise(_DOG_DESIGN))
"""The dog silhouette as a ``Polygon`` (uniform density, exact sampling)."""


def cat(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Uniform samples inside the cat silhouette."""
    return CAT.sample(key, n)


def dog(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Uniform samples inside the dog silhouette."""
    return DOG.sample(key, n)


def cat_log_prob(x: Float[Array, "*batch 2"]) -> Float[Array, "*batch"]:
    """Exact log-density of ``cat``: ``-log(area)`` inside, ``-inf`` outside."""
    return CAT.log_prob(x)


def dog_log_prob(x: Float[Array, "*batch 2"]) -> Float[Array, "*batch"]:
    """Exact log-density of ``dog``: ``-log(area)`` inside, ``-inf`` outside."""
    return DOG.log_prob(x)
