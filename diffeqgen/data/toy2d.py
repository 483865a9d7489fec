"""Classic 2D toy distributions as pure JAX samplers ``sample(key, n) -> (n, 2)``.

Every sampler is jittable for a static ``n`` and all sets share one scale, roughly within
``[-4, 4]^2``. The geometry follows the FFJORD toy sets (8 gaussians, pinwheel, checkerboard,
2 spirals, rings) with components drawn at random (not in fixed proportions) so that any ``n`` is
an exact i.i.d. sample. Densities known in closed form are exposed as ``GaussianMixture`` objects
(``gaussian``, ``8gaussians``, ``mixture``) or as ``checkerboard_log_prob``.
"""

import functools
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_int
from .mixture import GaussianMixture

__all__ = [
    "gaussian",
    "eight_gaussians",
    "pinwheel",
    "moons",
    "checkerboard",
    "two_spirals",
    "rings",
    "asymmetric_mixture",
    "checkerboard_log_prob",
    "CHECKERBOARD_AREA",
    "STANDARD_GAUSSIAN",
    "EIGHT_GAUSSIANS",
    "ASYMMETRIC_MIXTURE",
]

_EIGHT_RADIUS = 4.0 / math.sqrt(2.0)  # FFJORD: centres at radius 4, then everything / 1.414
_EIGHT_STD = 0.5 / math.sqrt(2.0)
_angles = np.arange(8) * np.pi / 4

# The mixtures below are built on first use (module ``__getattr__``), so that importing the
# package starts no JAX backend: multi-host runs must call ``jax.distributed.initialize`` first.
_MIXTURE_ARGS = {
    "STANDARD_GAUSSIAN": (np.zeros((1, 2)), np.eye(2)[None], np.ones(1)),
    "EIGHT_GAUSSIANS": (
        _EIGHT_RADIUS * np.stack([np.cos(_angles), np.sin(_angles)], axis=-1),
        np.broadcast_to(_EIGHT_STD**2 * np.eye(2), (8, 2, 2)),
        np.full(8, 1 / 8),
    ),
    "ASYMMETRIC_MIXTURE": (
        np.array([[-2.0, -1.5], [1.8, -1.2], [0.6, 2.0], [-1.8, 1.6]]),
        np.array(
            [
                [[0.50, 0.25], [0.25, 0.30]],
                [[0.15, 0.00], [0.00, 0.60]],
                [[0.70, -0.30], [-0.30, 0.25]],
                [[0.08, 0.00], [0.00, 0.08]],
            ]
        ),
        np.array([0.35, 0.25, 0.28, 0.12]),
    ),
}

STANDARD_GAUSSIAN: GaussianMixture
"""``N(0, I_2)`` as a one-component mixture."""

EIGHT_GAUSSIANS: GaussianMixture
"""Eight equal isotropic Gaussians (std 0.354) on a circle of radius 2.83."""

ASYMMETRIC_MIXTURE: GaussianMixture
"""The default toy target: four Gaussians with unequal weights and correlated covariances."""


@functools.cache
def _mixture(name: str) -> GaussianMixture:
    # Concrete arrays even when first used inside a trace (a sampler called under jit): the
    # cached mixture must not hold a tracer. And float32, as when these were built at import:
    # a first use under jax_enable_x64 must not leave float64 mixtures for float32 code.
    with jax.ensure_compile_time_eval():
        return GaussianMixture(*(np.asarray(a, np.float32) for a in _MIXTURE_ARGS[name]))


def __getattr__(name: str):
    if name in _MIXTURE_ARGS:
        return _mixture(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CHECKERBOARD_AREA = 32.0
"""Area of the checkerboard support: 8 of the 16 squares of side 2 tiling ``[-4, 4]^2``."""


def _jit_sampler(fn):
    """Validate ``n`` eagerly, then run ``fn(key, n)`` under ``jax.jit`` with ``n`` static.

    One compilation per ``n`` is much cheaper than JAX's op-by-op eager dispatch, and the result
    still composes with an outer ``jit``/``vmap``.
    """
    jitted = jax.jit(fn, static_argnums=1)

    @functools.wraps(fn)
    def sample(key, n):
        return jitted(key, check_int("n", n))

    return sample


@_jit_sampler
def gaussian(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Standard normal ``N(0, I_2)``."""
    return jr.normal(key, (n, 2))


def eight_gaussians(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Eight Gaussians on a circle (exact sample of ``EIGHT_GAUSSIANS``)."""
    return _mixture("EIGHT_GAUSSIANS").sample(key, n)


def asymmetric_mixture(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """The default asymmetric four-component mixture (exact sample of ``ASYMMETRIC_MIXTURE``)."""
    return _mixture("ASYMMETRIC_MIXTURE").sample(key, n)


@_jit_sampler
def pinwheel(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Five curved arms: radial N(1, 0.3^2), tangential N(0, 0.1^2), twisted by 0.25 exp(r), x2."""
    arm_key, noise_key = jr.split(key)
    arm = jr.randint(arm_key, (n,), 0, 5)
    feat = jr.normal(noise_key, (n, 2)) * jnp.array([0.3, 0.1]) + jnp.array([1.0, 0.0])
    angle = arm * (2 * jnp.pi / 5) + 0.25 * jnp.exp(feat[:, 0])
    c, s = jnp.cos(angle), jnp.sin(angle)
    x = feat[:, 0] * c - feat[:, 1] * s
    y = feat[:, 0] * s + feat[:, 1] * c
    return 2.0 * jnp.stack([x, y], axis=-1)


@_jit_sampler
def moons(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Two interleaving half circles (sklearn's ``make_moons``), noise 0.1, centred, scaled x2."""
    moon_key, t_key, noise_key = jr.split(key, 3)
    upper = jr.bernoulli(moon_key, 0.5, (n,))
    t = jr.uniform(t_key, (n,), maxval=jnp.pi)
    x = jnp.where(upper, jnp.cos(t), 1.0 - jnp.cos(t))
    y = jnp.where(upper, jnp.sin(t), 0.5 - jnp.sin(t))
    pts = jnp.stack([x, y], axis=-1) + 0.1 * jr.normal(noise_key, (n, 2))
    return 2.0 * (pts - jnp.array([0.5, 0.25]))


@_jit_sampler
def checkerboard(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Uniform on the 8 squares of side 2 in ``[-4, 4]^2`` with ``floor(x/2) + floor(y/2)`` even."""
    x_key, y_key, row_key = jr.split(key, 3)
    x = jr.uniform(x_key, (n,), minval=-2.0, maxval=2.0)
    col = jnp.floor(x)
    # pick one of the two rows of matching parity: rows {-2, 0} for even columns, {-1, 1} for odd
    row = 2.0 * jr.randint(row_key, (n,), -1, 1) + jnp.mod(col, 2.0)
    y = row + jr.uniform(y_key, (n,))
    return 2.0 * jnp.stack([x, y], axis=-1)


@jax.jit
def checkerboard_log_prob(x: Float[Array, "*batch 2"]) -> Float[Array, "*batch"]:
    """Exact log-density of ``checkerboard``: ``-log 32`` on the support, ``-inf`` elsewhere."""
    cell = jnp.floor(x / 2.0)
    inside = jnp.all(jnp.abs(x) < 4.0, axis=-1) & (jnp.mod(cell[..., 0] + cell[..., 1], 2) == 0)
    return jnp.where(inside, -math.log(CHECKERBOARD_AREA), -jnp.inf)


@_jit_sampler
def two_spirals(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Two interleaved Archimedean spirals (1.5 turns), jittered, within about ``[-4, 4]^2``."""
    t_key, jitter_key, sign_key, noise_key = jr.split(key, 4)
    t = jnp.sqrt(jr.uniform(t_key, (n,))) * 3 * jnp.pi
    jitter = jr.uniform(jitter_key, (n, 2), maxval=0.5)
    pts = jnp.stack([-jnp.cos(t) * t, jnp.sin(t) * t], axis=-1) + jitter
    sign = jnp.where(jr.bernoulli(sign_key, 0.5, (n, 1)), 1.0, -1.0)
    return sign * pts / 3.0 + 0.1 * jr.normal(noise_key, (n, 2))


@_jit_sampler
def rings(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Four concentric circles of radii 0.75, 1.5, 2.25, 3 (equal mass), Gaussian noise 0.08."""
    ring_key, angle_key, noise_key = jr.split(key, 3)
    radius = 0.75 * (1.0 + jr.randint(ring_key, (n,), 0, 4))
    theta = jr.uniform(angle_key, (n,), maxval=2 * jnp.pi)
    pts = radius[:, None] * jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    return pts + 0.08 * jr.normal(noise_key, (n, 2))
