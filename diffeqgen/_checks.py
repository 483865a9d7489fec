"""Validation at the boundary: every user-facing check raises one kind of clear message.

Structural problems (shape, dtype, names, non-positive sizes) raise ``ValueError``/``TypeError`` at
trace time, naming the argument, the value received and what was expected. Value checks on traced
arrays go through ``finite_or_raise`` (``eqx.error_if``) and must use the returned array.
"""

import math
from collections.abc import Iterable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_positive",
    "check_nonnegative",
    "check_int",
    "check_choice",
    "check_array",
    "check_finite",
    "finite_or_raise",
    "is_traced",
]


def is_traced(value) -> bool:
    """True when ``value`` is (or holds) a JAX tracer (inside the user's jit/grad/vmap)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value))


def _describe(value) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"array of shape {tuple(value.shape)} and dtype {value.dtype}"
    return repr(value)


def check_positive(name: str, value, *, allow_zero: bool = False, traced_ok: bool = False):
    """Return ``float(value)`` or raise ``ValueError`` unless it is a finite number > 0 (>= 0).

    With ``traced_ok=True`` a traced scalar (the caller runs inside the user's ``jit``, ``grad``
    or ``vmap``) is accepted: it is returned as an array carrying a runtime ``eqx.error_if``
    check of the same condition (use the returned value). Its shape must still be ``()``.
    """
    if traced_ok and is_traced(value):
        value = jnp.asarray(value)
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.number):
            raise TypeError(f"{name} must be a real number, got {_describe(value)}")
        bound = ">= 0" if allow_zero else "> 0"
        bad = ~jnp.isfinite(value) | ((value < 0) if allow_zero else (value <= 0))
        return eqx.error_if(value, bad, f"{name} must be a finite number {bound}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}") from None
    ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def check_nonnegative(name: str, value, *, traced_ok: bool = False):
    """Return ``float(value)`` or raise unless it is a finite number >= 0 (see check_positive)."""
    return check_positive(name, value, allow_zero=True, traced_ok=traced_ok)


def check_int(name: str, value, *, minimum: int = 1) -> int:
    """Return ``int(value)`` or raise unless it is an integer >= ``minimum`` (bools rejected).

    Counts set array shapes and loop lengths, so they must be concrete Python integers: a
    traced value (inside the user's ``jit``/``vmap``) raises a ``TypeError`` saying so.
    """
    if is_traced(value):
        raise TypeError(
            f"{name} must be a concrete Python int >= {minimum} (it sets array shapes or loop "
            f"lengths), got a traced value {_describe(value)}; pass it as a static argument "
            "(e.g. jax.jit(..., static_argnames=...)) or close over a Python int"
        )
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {_describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """Return ``value`` or raise ``ValueError`` listing the known choices."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(
            f"unknown {name} {value!r}; expected one of: {', '.join(map(str, choices))}"
        )
    return value


def check_array(
    name: str,
    x,
    *,
    ndim: int | None = None,
    last_dim: int | None = None,
    min_ndim: int | None = None,
):
    """Convert ``x`` to a floating JAX array and check its rank and trailing dimension.

    Integer and boolean inputs are rejected rather than silently cast. Returns the array.
    """
    if not hasattr(x, "shape"):
        try:
            x = np.asarray(x)
        except Exception:  # noqa: BLE001
            raise TypeError(f"{name} must be an array, got {_describe(x)}") from None
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got {_describe(x)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {_describe(x)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got {_describe(x)}")
    if last_dim is not None and (x.ndim == 0 or x.shape[-1] != last_dim):
        raise ValueError(f"{name} must have trailing dimension {last_dim}, got {_describe(x)}")
    return jnp.asarray(x)


def check_finite(name: str, x):
    """Raise ``ValueError`` eagerly if a concrete array holds NaN or inf (no-op under tracing)."""
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001  (a tracer: defer to finite_or_raise)
        return finite_or_raise(name, x)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} must be finite, got {bad} non-finite value(s) in {_describe(x)}")
    return x


def finite_or_raise(name: str, x):
    """Inside jit: return ``x`` with a runtime check that it is finite (use the result!)."""
    return eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), f"{name} contains NaN or inf")
