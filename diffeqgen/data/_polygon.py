"""Uniform densities on simple polygons: triangulation (numpy, once) and JAX sampling/density.

A ``Polygon`` is fixed data. It is triangulated by ear clipping when it is built; sampling picks a
triangle with probability proportional to its area and then a uniform point in it (the reflected
unit square), which is an exact uniform sample of the polygon and jittable for a static ``n``.
The density is ``1 / area`` inside (point-in-polygon by ray casting) and 0 outside.
"""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_int

__all__ = ["Polygon", "signed_area", "triangulate"]


def signed_area(vertices: np.ndarray) -> float:
    """Shoelace signed area of a closed polygon (positive for counter-clockwise vertices)."""
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def _in_triangle(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> bool:
    """Closed containment test for a counter-clockwise triangle."""
    return _cross(a, b, p) >= 0 and _cross(b, c, p) >= 0 and _cross(c, a, p) >= 0


def triangulate(vertices: np.ndarray) -> np.ndarray:
    """Ear-clipping triangulation of a simple polygon.

    Args:
        vertices: ``(m, 2)`` vertices of a simple polygon (either orientation, not closed).

    Returns:
        ``(m - 2, 3)`` integer indices of counter-clockwise triangles covering the polygon.

    Raises:
        ValueError: if the polygon is degenerate or self-intersecting (no ear found).
    """
    v = np.asarray(vertices, dtype=np.float64)
    idx = list(range(len(v)))
    if signed_area(v) < 0:
        idx.reverse()
    triangles = []
    while len(idx) > 3:
        for k in range(len(idx)):
            i, j, m = idx[k - 1], idx[k], idx[(k + 1) % len(idx)]
            if _cross(v[i], v[j], v[m]) <= 0:  # reflex or collinear corner: not an ear
                continue
            others = (o for o in idx if o not in (i, j, m))
            if any(_in_triangle(v[o], v[i], v[j], v[m]) for o in others):
                continue
            triangles.append((i, j, m))
            del idx[k]
            break
        else:
            raise ValueError("polygon is not simple (no ear found); check its vertices")
    triangles.append(tuple(idx))
    return np.asarray(triangles, dtype=np.int32)


class Polygon(eqx.Module):
    """Uniform distribution on the interior of a simple polygon.

    Attributes:
        vertices: ``(m, 2)`` vertices, counter-clockwise.
        triangles: ``(m - 2, 3, 2)`` corner coordinates of the ear-clipping triangles.
        log_weights: ``(m - 2,)`` log of each triangle's share of the area.
        area: total area (a Python float).
    """

    vertices: Float[Array, "m 2"]
    triangles: Float[Array, "t 3 2"]
    log_weights: Float[Array, " t"]
    area: float = eqx.field(static=True)

    def __init__(self, vertices):
        """Build from an ``(m, 2)`` vertex list; orientation is normalised to counter-clockwise."""
        v = np.asarray(vertices, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != 2 or len(v) < 3:
            raise ValueError(f"vertices must have shape (m >= 3, 2), got {v.shape}")
        if signed_area(v) < 0:
            v = v[::-1]
        tri = v[triangulate(v)]
        tri_area = 0.5 * np.abs(
            (tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1])
            - (tri[:, 1, 1] - tri[:, 0, 1]) * (tri[:, 2, 0] - tri[:, 0, 0])
        )
        self.area = float(signed_area(v))
        if not math.isclose(tri_area.sum(), self.area, rel_tol=1e-9):
            raise ValueError(
                "polygon is not simple (self-intersecting): its triangulation does not cover it"
            )
        # NumPy, not jnp: building the module-level shapes must not start a JAX backend at
        # import (jax.distributed.initialize has to come first in multi-host runs).
        self.vertices = v.astype(np.float32)
        self.triangles = tri.astype(np.float32)
        self.log_weights = np.log(tri_area / self.area).astype(np.float32)

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
        """Exact uniform samples inside the polygon (jittable for static ``n``)."""
        return self._sample(key, check_int("n", n))

    @eqx.filter_jit
    def _sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
        tri_key, uv_key = jr.split(key)
        t = jr.categorical(tri_key, self.log_weights, shape=(n,))
        uv = jr.uniform(uv_key, (n, 2))
        flip = jnp.sum(uv, axis=-1, keepdims=True) > 1.0
        uv = jnp.where(flip, 1.0 - uv, uv)
        a, b, c = (self.triangles[t, i] for i in range(3))
        return a + uv[:, :1] * (b - a) + uv[:, 1:] * (c - a)

    def contains(self, x: Float[Array, "*batch 2"]) -> Array:
        """Even-odd ray casting: True where ``x`` lies inside the polygon, shape ``(...)``."""
        a = self.vertices
        b = jnp.roll(a, -1, axis=0)
        px, py = x[..., None, 0], x[..., None, 1]
        straddle = (a[:, 1] > py) != (b[:, 1] > py)
        dy = jnp.where(b[:, 1] == a[:, 1], 1.0, b[:, 1] - a[:, 1])
        x_cross = a[:, 0] + (py - a[:, 1]) * (b[:, 0] - a[:, 0]) / dy
        crossings = jnp.sum(straddle & (px < x_cross), axis=-1)
        return crossings % 2 == 1

    @eqx.filter_jit
    def log_prob(self, x: Float[Array, "*batch 2"]) -> Float[Array, "*batch"]:
        """``-log(area)`` inside the polygon, ``-inf`` outside, shape ``(...)``."""
        inside = self.contains(x)
        return jnp.where(inside, -math.log(self.area), -jnp.inf).astype(x.dtype)
