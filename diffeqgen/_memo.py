"""Memoised abstract evaluations: checks that trace a user function once per signature.

The library's up-front checks (a loss, sampler or vector field evaluated with
``jax.eval_shape``) depend only on the objects involved and their shapes, yet tracing them costs
milliseconds on every call, which dominates short calls (a few training steps, a small batch).
They are memoised here under a key of those objects and shapes, the same notion of "unchanged"
as ``jax.jit``'s cache (functions compare by identity).
"""

from collections.abc import Callable

import jax
import numpy as np

_ABSTRACT_CACHE: dict = {}
_CACHE_SIZE = 64


def abstract_key(tree) -> tuple | None:
    """A hashable key of what an abstract evaluation of ``tree`` depends on, or None.

    The tree structure, each array leaf's shape and dtype, and every other leaf itself (static
    under ``eqx.filter_eval_shape``; functions compare by identity). None when such a leaf is
    unhashable (then nothing is cached).
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    parts = []
    for x in leaves:
        if isinstance(x, jax.Array | np.ndarray | jax.ShapeDtypeStruct):
            parts.append(("array", tuple(x.shape), str(x.dtype), getattr(x, "weak_type", False)))
        else:
            try:
                hash(x)
            except TypeError:
                return None
            parts.append(x)
    return treedef, tuple(parts)


def cached(key, compute: Callable):
    """``compute()``, memoised under ``key`` (a few dozen entries; errors are never cached).

    Used by `fit` for its abstract checks (``eqx.filter_eval_shape`` of the sampler and the
    loss), which cost ~15 ms of tracing per call and depend only on the objects and shapes in
    ``key``. A key that is None or unhashable is not cached.
    """
    if key is None or any(k is None for k in key):
        return compute()
    try:
        return _ABSTRACT_CACHE[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable part (e.g. a sampler module holding arrays)
        return compute()
    value = compute()
    if len(_ABSTRACT_CACHE) >= _CACHE_SIZE:
        _ABSTRACT_CACHE.pop(next(iter(_ABSTRACT_CACHE)))
    _ABSTRACT_CACHE[key] = value
    return value
