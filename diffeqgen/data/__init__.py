"""2D toy data: samplers, exact densities where known, Gaussian mixtures, cat and dog shapes.

Every set is reachable by name (``sample(name, key, n)``, see ``names()``) and shares one scale,
roughly within ``[-4, 4]^2``. Exact ``log_prob`` and ``entropy`` exist for ``gaussian``,
``8gaussians``, ``mixture`` (Gaussian mixtures) and ``checkerboard``, ``cat``, ``dog`` (uniform).
"""

from . import shapes, toy2d
from ._polygon import Polygon
from ._registry import (
    entropy,
    log_prob,
    mixture,
    mixture_entropy,
    names,
    sample,
    sampler,
    train_test_split,
)
from .mixture import GaussianMixture

__all__ = [
    "GaussianMixture",
    "Polygon",
    "entropy",
    "log_prob",
    "mixture",
    "mixture_entropy",
    "names",
    "sample",
    "sampler",
    "shapes",
    "toy2d",
    "train_test_split",
]
