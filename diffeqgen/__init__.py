"""diffeqgen: generative models built on differential equations, in JAX.

Time convention everywhere: t = 0 is the noise/source distribution, t = 1 is the data, and
generation runs forward in t. Gaussian paths are ``x_t = alpha(t) * x_data + sigma(t) * eps``.

Import the package and reach the submodules by name::

    import diffeqgen as dg
    x = dg.data.sample("moons", key, 1000)
"""

from . import (
    cnf,
    couplings,
    data,
    ebm,
    groundtruth,
    images,
    losses,
    metrics,
    nn,
    paths,
    plotting,
    sdes,
    sharding,
    solve,
    train,
)

__version__ = "0.1.0"

__all__ = [
    "cnf",
    "couplings",
    "data",
    "ebm",
    "groundtruth",
    "images",
    "losses",
    "metrics",
    "nn",
    "paths",
    "plotting",
    "sdes",
    "sharding",
    "solve",
    "train",
]
