"""2D toy data (samplers, exact densities, Gaussian mixtures, cat and dog shapes) and images.

Every set is reachable by name (``sample(name, key, n)``, see ``names()``) and shares one scale,
roughly within ``[-4, 4]^2``. Exact ``log_prob`` and ``entropy`` exist for ``gaussian``,
``8gaussians``, ``mixture`` (Gaussian mixtures) and ``checkerboard``, ``cat``, ``dog`` (uniform).

Images (``digits``, ``load_mnist``, ``read_idx``): the 8x8 scikit-learn digits and local MNIST
files as ``(n, 1, h, w)`` arrays in [-1, 1] with integer labels.
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
from .images import digits, load_mnist, read_idx
from .mixture import GaussianMixture

__all__ = [
    "GaussianMixture",
    "digits",
    "load_mnist",
    "read_idx",
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
