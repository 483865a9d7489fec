"""Gaussian mixtures with exact sampling, log-density, score and moments.

A mixture ``p(x) = sum_k w_k N(x; mu_k, Sigma_k)`` is the ground truth of the library: every
Gaussian probability path maps it to another mixture in closed form (``diffeqgen.groundtruth``).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_int
from .._failures import concrete

__all__ = ["GaussianMixture"]


def _as_float_array(x) -> Array:
    """Convert to a floating JAX array (integers are promoted to the default float dtype)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


class GaussianMixture(eqx.Module):
    """Mixture of ``k`` full-covariance Gaussians in ``d`` dimensions.

    ``p(x) = sum_k w_k N(x; mu_k, Sigma_k)``. All methods are exact and jittable: sampling picks a
    component by its weight and maps a standard normal through the Cholesky factor; ``log_prob``
    is a logsumexp over Cholesky-based component log-densities; ``score`` is the closed form
    ``grad log p(x) = -sum_k r_k(x) Sigma_k^{-1} (x - mu_k)`` with responsibilities
    ``r_k(x) = w_k N(x; mu_k, Sigma_k) / p(x)`` (no autodiff).

    Shapes, finiteness, symmetry, positive definiteness and the weights (positive, summing to 1 to
    within 1e-5) are validated when the arrays are concrete; under a JAX transformation (traced
    arrays) only the shapes are checked.

    Attributes:
        means: ``(k, d)`` component means.
        covariances: ``(k, d, d)`` symmetric positive-definite covariances.
        weights: ``(k,)`` positive mixing weights summing to 1.
    """

    means: Float[Array, "k d"] = eqx.field(converter=_as_float_array)
    covariances: Float[Array, "k d d"] = eqx.field(converter=_as_float_array)
    weights: Float[Array, " k"] = eqx.field(converter=_as_float_array)

    def __check_init__(self):
        mu, cov, w = self.means, self.covariances, self.weights
        if mu.ndim != 2:
            raise ValueError(f"means must have shape (k, d), got shape {tuple(mu.shape)}")
        k, d = mu.shape
        if k < 1 or d < 1:
            raise ValueError(f"means must have k >= 1 and d >= 1, got shape {tuple(mu.shape)}")
        if cov.shape != (k, d, d):
            raise ValueError(
                f"covariances must have shape (k, d, d) = {(k, d, d)} to match means, "
                f"got shape {tuple(cov.shape)}"
            )
        if w.shape != (k,):
            raise ValueError(f"weights must have shape (k,) = {(k,)}, got shape {tuple(w.shape)}")
        self._check_values()

    def _check_values(self) -> None:
        mu, cov, w = (concrete(a) for a in (self.means, self.covariances, self.weights))
        if mu is None or cov is None or w is None:
            return
        for name, a in (("means", mu), ("covariances", cov), ("weights", w)):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} must be finite, got {a.tolist()}")
        if np.any(w <= 0) or abs(float(w.sum()) - 1.0) > 1e-5:
            raise ValueError(f"weights must be positive and sum to 1, got {w.tolist()}")
        c64 = cov.astype(np.float64)
        if not np.allclose(c64, np.swapaxes(c64, -1, -2), rtol=1e-5, atol=1e-6):
            raise ValueError("covariances must be symmetric matrices")
        eig = np.linalg.eigvalsh(c64)
        if np.any(eig <= 0):
            bad = np.nonzero(np.any(eig <= 0, axis=-1))[0].tolist()
            raise ValueError(
                f"covariances must be positive definite; components {bad} have eigenvalues "
                f"{eig[bad].tolist()}"
            )

    @property
    def dim(self) -> int:
        """Event dimension ``d``."""
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        """Number of components ``k``."""
        return self.means.shape[0]

    def _cholesky(self) -> Float[Array, "k d d"]:
        return jnp.linalg.cholesky(self.covariances)

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """Draw ``n`` exact samples (jittable for static ``n``).

        Args:
            key: PRNG key.
            n: number of samples, an integer >= 1.

        Returns:
            ``(n, d)`` samples.
        """
        return self._sample(key, check_int("n", n))

    @eqx.filter_jit
    def _sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        comp_key, noise_key = jr.split(key)
        idx = jr.categorical(comp_key, jnp.log(self.weights), shape=(n,))
        z = jr.normal(noise_key, (n, self.dim), dtype=self.means.dtype)
        chol = self._cholesky()[idx]
        return self.means[idx] + jnp.einsum("nij,nj->ni", chol, z)

    def _component_log_probs(self, x: Array) -> tuple[Array, Array]:
        """Return ``log w_k + log N(x; mu_k, Sigma_k)`` (..., k) and ``x - mu_k`` (..., k, d)."""
        chol = self._cholesky()
        eye = jnp.broadcast_to(jnp.eye(self.dim, dtype=chol.dtype), chol.shape)
        chol_inv = jsl.solve_triangular(chol, eye, lower=True)  # L_k^{-1}, (k, d, d)
        diff = x[..., None, :] - self.means  # (..., k, d)
        white = jnp.einsum("kij,...kj->...ki", chol_inv, diff)
        log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        log_norm = -0.5 * self.dim * math.log(2 * math.pi) - log_det
        return jnp.log(self.weights) + log_norm - 0.5 * jnp.sum(white**2, axis=-1), diff

    def _validated(self, x) -> Array:
        x = _as_float_array(x)
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., {self.dim}), got shape {tuple(x.shape)}")
        return x

    @eqx.filter_jit
    def log_prob(self, x: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch"]:
        """Exact log-density ``log p(x)``.

        Args:
            x: ``(..., d)`` points.

        Returns:
            ``(...)`` log-densities.
        """
        x = self._validated(x)
        comp, _ = self._component_log_probs(x)
        return jax.nn.logsumexp(comp, axis=-1)

    @eqx.filter_jit
    def score(self, x: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch d"]:
        """Closed-form score ``grad_x log p(x) = -sum_k r_k(x) Sigma_k^{-1} (x - mu_k)``.

        Args:
            x: ``(..., d)`` points.

        Returns:
            ``(..., d)`` scores.
        """
        x = self._validated(x)
        comp, diff = self._component_log_probs(x)
        resp = jax.nn.softmax(comp, axis=-1)  # (..., k)
        chol = self._cholesky()
        eye = jnp.broadcast_to(jnp.eye(self.dim, dtype=chol.dtype), chol.shape)
        precision = jax.vmap(lambda c, i: jsl.cho_solve((c, True), i))(chol, eye)  # (k, d, d)
        return -jnp.einsum("...k,kij,...kj->...i", resp, precision, diff)

    def mean(self) -> Float[Array, " d"]:
        """Mixture mean ``sum_k w_k mu_k``."""
        return self.weights @ self.means

    def covariance(self) -> Float[Array, "d d"]:
        """Mixture covariance ``sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T``."""
        m = self.mean()
        second = jnp.einsum("k,kij->ij", self.weights, self.covariances)
        second = second + jnp.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        return second - jnp.outer(m, m)
