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
    "as_path",
    "as_mixture",
    "as_key",
    "check_unit_time",
    "check_same_length",
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


def as_path(value, name: str = "path", *, names: bool = True):
    """A ``GaussianPath`` as is, or (``names=True``) a registered name -> ``paths.get_path``.

    Anything else raises ``TypeError`` naming the argument (not an ``AttributeError`` from deep
    inside, when a path is used); a name where only objects are taken says how to build one.
    """
    from ._gaussian_paths import PATH_NAMES, GaussianPath, get_path

    if isinstance(value, str) and names:
        return get_path(value)
    if not isinstance(value, GaussianPath):
        what = "a built-in path, custom_path(...) or a subclass"
        if names:
            raise TypeError(
                f"{name} must be a GaussianPath (diffeqgen.paths: {what}) or one of the names "
                f"{', '.join(PATH_NAMES)}, got {_describe(value)}"
            )
        hint = (
            f"; build it with diffeqgen.paths.get_path({value!r})" if isinstance(value, str) else ""
        )
        raise TypeError(
            f"{name} must be a GaussianPath (diffeqgen.paths: {what}), got {_describe(value)}{hint}"
        )
    return value


def as_mixture(value, name: str = "mixture"):
    """A ``data.GaussianMixture`` as is, or a dataset name with one -> ``data.mixture(name)``."""
    from .data import mixture as _mixture_by_name
    from .data.mixture import GaussianMixture

    if isinstance(value, str):
        return _mixture_by_name(value)
    if not isinstance(value, GaussianMixture):
        raise TypeError(
            f"{name} must be a diffeqgen.data.GaussianMixture or the name of a dataset that has "
            f"one (see diffeqgen.data.mixture), got {_describe(value)}"
        )
    return value


def as_key(value, name: str = "key"):
    """A PRNG key: typed keys and raw ``uint32[2]`` keys as is, an int seed -> ``jax.random.key``.

    Anything else raises ``TypeError`` saying a PRNG key is needed.
    """
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return jax.random.key(int(value))
    dtype = getattr(value, "dtype", None)
    if dtype is not None and (
        jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
        or (dtype == jnp.uint32 and tuple(getattr(value, "shape", ())) == (2,))
    ):
        return value
    raise TypeError(
        f"{name} must be a PRNG key (jax.random.key(seed)) or an int seed, got {_describe(value)}"
    )


def check_unit_time(name: str, t, lo: float = 0.0, hi: float = 1.0, *, what: str = ""):
    """Refuse concrete times outside ``[lo, hi]`` with a clear ``ValueError``; traced: runtime.

    Concrete values are checked eagerly; inside the user's ``jit``/``grad``/``vmap`` the check is
    an ``eqx.error_if`` on the returned array (use it). Returns ``t`` (as given when concrete).
    """
    where = f" ({what})" if what else ""
    if is_traced(t):
        ta = jnp.asarray(t)
        bad = jnp.any((ta < lo) | (ta > hi) | ~jnp.isfinite(ta))
        return eqx.error_if(ta, bad, f"{name} must lie in [{lo:g}, {hi:g}]{where}")
    try:
        arr = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number or array, got {_describe(t)}") from None
    if arr.size and not (np.all(np.isfinite(arr)) and arr.min() >= lo and arr.max() <= hi):
        bad = arr[~(np.isfinite(arr) & (arr >= lo) & (arr <= hi))].ravel()
        raise ValueError(
            f"{name} must lie in [{lo:g}, {hi:g}]{where}, got {bad[0]:g}"
            + (f" (and {bad.size - 1} more outside)" if bad.size > 1 else "")
        )
    return t


def check_same_length(name_a: str, a, name_b: str, b) -> None:
    """Raise ``ValueError`` naming both shapes when two arrays' leading axes differ."""
    sa, sb = tuple(np.shape(a)), tuple(np.shape(b))
    if not sa or not sb or sa[0] != sb[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of rows (batch size), got shapes "
            f"{sa} and {sb}"
        )
