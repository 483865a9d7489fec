"""A Gaussian path from two user functions alpha(t), sigma(t) (``diffeqgen.paths.custom_path``)."""

from collections.abc import Callable

import equinox as eqx
from jaxtyping import Array, Float

from ._gaussian_paths import GaussianPath, TimeLike, _check_eps, _coef, _time, _vanishes

__all__ = ["CustomPath", "custom_path"]


class CustomPath(GaussianPath):
    """A Gaussian path x_t = alpha(t) x1 + sigma(t) eps defined by user functions.

    Built by [`custom_path`][]; see there. ``alpha_fn`` etc. are fields (an Equinox module
    holding a learnable schedule keeps its arrays as leaves). The endpoint flags are static.
    """

    alpha_fn: Callable
    sigma_fn: Callable
    d_alpha_fn: Callable | None
    d_sigma_fn: Callable | None
    name: str = eqx.field(static=True)
    _alpha_zero_at_0: bool = eqx.field(static=True)
    _sigma_zero_at_1: bool = eqx.field(static=True)

    def __init__(
        self,
        alpha: Callable,
        sigma: Callable,
        *,
        d_alpha: Callable | None = None,
        d_sigma: Callable | None = None,
        t_eps: float | int = 1e-3,
        name: str = "custom",
        alpha_vanishes_at_0: bool | None = None,
        sigma_vanishes_at_1: bool | None = None,
    ):
        for arg, f in (("alpha", alpha), ("sigma", sigma)):
            if not callable(f):
                raise TypeError(f"{arg} must be a callable {arg}(t), got {f!r}")
        for arg, f in (("d_alpha", d_alpha), ("d_sigma", d_sigma)):
            if f is not None and not callable(f):
                raise TypeError(f"{arg} must be None (autodiff) or a callable {arg}(t), got {f!r}")
        for arg, v in (
            ("alpha_vanishes_at_0", alpha_vanishes_at_0),
            ("sigma_vanishes_at_1", sigma_vanishes_at_1),
        ):
            if v is not None and not isinstance(v, bool):
                raise TypeError(f"{arg} must be None (detect), True or False, got {v!r}")
        self.alpha_fn, self.sigma_fn = alpha, sigma
        self.d_alpha_fn, self.d_sigma_fn = d_alpha, d_sigma
        self.t_eps = _check_eps(t_eps)
        self.name = str(name)
        # Detect the endpoints now (checked against a declaration where one is given).
        self._alpha_zero_at_0 = True
        self._sigma_zero_at_1 = True
        for flag, declared, which, t in (
            ("_alpha_zero_at_0", alpha_vanishes_at_0, "alpha", 0.0),
            ("_sigma_zero_at_1", sigma_vanishes_at_1, "sigma", 1.0),
        ):
            try:
                found = _vanishes(self, which, t)
            except ValueError:
                if declared is None:
                    raise
                found = None
            if declared is False and found:
                raise ValueError(
                    f"custom_path {name!r}: declared {which}_vanishes_at_{int(t)}=False but "
                    f"{which}({int(t)}) = 0; leave it None to detect"
                )
            setattr(self, flag, found if declared is None else declared)

    def __check_init__(self):
        self.check()

    @property
    def alpha_vanishes_at_0(self) -> bool:
        """Whether alpha(0) = 0 (declared or detected at construction)."""
        return self._alpha_zero_at_0

    @property
    def sigma_vanishes_at_1(self) -> bool:
        """Whether sigma(1) = 0 (declared or detected at construction)."""
        return self._sigma_zero_at_1

    def alpha(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return _coef(self.alpha_fn, t)

    def sigma(self, t: TimeLike) -> Float[Array, "..."]:
        t = _time(t)
        return _coef(self.sigma_fn, t)

    def d_alpha(self, t: TimeLike) -> Float[Array, "..."]:
        if self.d_alpha_fn is None:
            return super().d_alpha(t)
        return _coef(self.d_alpha_fn, _time(t))

    def d_sigma(self, t: TimeLike) -> Float[Array, "..."]:
        if self.d_sigma_fn is None:
            return super().d_sigma(t)
        return _coef(self.d_sigma_fn, _time(t))


def custom_path(
    alpha: Callable,
    sigma: Callable,
    *,
    d_alpha: Callable | None = None,
    d_sigma: Callable | None = None,
    t_eps: float | int = 1e-3,
    name: str = "custom",
    alpha_vanishes_at_0: bool | None = None,
    sigma_vanishes_at_1: bool | None = None,
) -> CustomPath:
    r"""A Gaussian path x_t = alpha(t) x1 + sigma(t) eps from the two functions alone.

    Time convention: t = 0 noise, t = 1 data, so alpha^2 / sigma^2 must increase with t. The
    result is a ``GaussianPath`` and works in every loss (``path=``), sampler, conversion
    (``convert``, ``as_vector_field``, ``as_score``), ``sdes.reverse_sde`` and ``groundtruth``
    function, and its ``prior`` is the default base of ``cnf.log_prob``.

    Example (a schedule with alpha = sin^2(pi t / 2), sigma = 1 - t)::

        path = dg.paths.custom_path(lambda t: jnp.sin(jnp.pi * t / 2) ** 2, lambda t: 1 - t)

    Endpoints: whether alpha(0) = 0 (the t = 0 marginal is pure noise) and sigma(1) = 0 (the
    t = 1 marginal is the data) is detected by evaluating the functions (|value| <= 1e-6 times
    the larger coefficient counts as zero, so cos(pi / 2) does); then the dividing methods clip t
    into [t_eps, 1 - t_eps] at that end, which keeps every target and conversion finite. Declare
    the flags when the functions' parameters are traced (detection needs concrete values).

    The schedule is checked at construction on a grid of t (``GaussianPath.check``): finite,
    non-negative, increasing signal-to-noise ratio, and given derivatives equal to autodiff.

    Args:
        alpha: ``alpha(t)``, elementwise on a float array ``t`` (a constant is broadcast).
        sigma: ``sigma(t)``, elementwise.
        d_alpha: its time derivative; ``None`` for autodiff (``jax.jvp``), exact and elementwise.
        d_sigma: likewise for sigma.
        t_eps: endpoint epsilon in (0, 0.5).
        name: a label for messages and printing.
        alpha_vanishes_at_0: ``None`` to detect, or declare whether alpha(0) = 0.
        sigma_vanishes_at_1: ``None`` to detect, or declare whether sigma(1) = 0.

    Returns:
        The path (a [`CustomPath`][], an Equinox module).
    """
    return CustomPath(
        alpha,
        sigma,
        d_alpha=d_alpha,
        d_sigma=d_sigma,
        t_eps=t_eps,
        name=name,
        alpha_vanishes_at_0=alpha_vanishes_at_0,
        sigma_vanishes_at_1=sigma_vanishes_at_1,
    )
