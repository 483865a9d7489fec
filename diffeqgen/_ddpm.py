"""The discrete DDPM schedule (Ho et al. 2020), re-exported by ``diffeqgen.paths``."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from ._checks import check_int, check_positive
from ._gaussian_paths import VPPath

__all__ = ["DDPMSchedule"]


class DDPMSchedule(eqx.Module):
    r"""Linear-beta DDPM schedule with T = ``num_steps`` discrete steps.

    betas[k-1] = beta_k, linearly spaced from ``beta_min`` to ``beta_max`` for k = 1..T;
    alphas = 1 - betas; alpha_bars[k-1] = prod_{j<=k} alpha_j. Step k noises the data as
    x_k = sqrt(alpha_bar_k) x_0 + sqrt(1 - alpha_bar_k) eps; k = 0 is the data (alpha_bar_0 = 1)
    and k = T is (almost) pure noise.

    Time convention: the model time of step k is t_k = 1 - k / T (so k = T is t = 0, noise, and
    k = 0 is t = 1, data), matching the continuous paths. ``path()`` is the VP path with
    beta_min * T, beta_max * T, whose alpha(t_k)^2 approximates alpha_bar_k (to O(beta)).
    """

    num_steps: int = eqx.field(static=True)
    beta_min: float = eqx.field(static=True)
    beta_max: float = eqx.field(static=True)
    betas: Float[Array, " T"]
    alphas: Float[Array, " T"]
    alpha_bars: Float[Array, " T"]

    def __init__(
        self,
        num_steps: int = 500,
        beta_min: float | int = 1e-4,
        beta_max: float | int = 0.02,
    ):
        self.num_steps = check_int("num_steps", num_steps, minimum=1)
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if not self.beta_min <= self.beta_max < 1.0:
            raise ValueError(
                "need 0 < beta_min <= beta_max < 1, got "
                f"beta_min={beta_min!r}, beta_max={beta_max!r}"
            )
        self.betas = jnp.linspace(self.beta_min, self.beta_max, self.num_steps)
        self.alphas = 1.0 - self.betas
        self.alpha_bars = jnp.cumprod(self.alphas)

    def time(self, k: int | Int[ArrayLike, "..."]) -> Float[Array, "..."]:
        """Model time t_k = 1 - k / T of step k (k = 0..T; k = T is noise, t = 0)."""
        return 1.0 - jnp.asarray(k) / self.num_steps

    def step(self, t: float | int | Float[ArrayLike, "..."]) -> Int[Array, "..."]:
        """Nearest step k = round((1 - t) T) for a model time t, clipped to 0..T."""
        k = jnp.round((1.0 - jnp.asarray(t)) * self.num_steps).astype(jnp.int32)
        return jnp.clip(k, 0, self.num_steps)

    def alpha_bar(self, k: int | Int[ArrayLike, "..."]) -> Float[Array, "..."]:
        """alpha_bar_k for k = 0..T, with alpha_bar_0 = 1 (the data)."""
        full = jnp.concatenate([jnp.ones((1,), self.alpha_bars.dtype), self.alpha_bars])
        return full[jnp.asarray(k)]

    def alpha_sigma(self, k: int | Int[ArrayLike, "..."]) -> tuple[Array, Array]:
        """(sqrt(alpha_bar_k), sqrt(1 - alpha_bar_k)): the Gaussian-path coefficients at step k."""
        ab = self.alpha_bar(k)
        return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)

    def path(self) -> VPPath:
        """The continuous VP path approximating this schedule (beta scaled by T)."""
        return VPPath(self.beta_min * self.num_steps, self.beta_max * self.num_steps)
