"""Per-computation XLA options the library passes when it compiles a program itself on CPU.

XLA's CPU compiler splits large elementwise loops ("loop fusions") into parallel tasks across the
intra-op thread pool (its ``cpu-parallel-task-assigner`` pass). In the library's small training
programs (an MLP of width 64 on a batch of a few hundred) the split loops are tiny, mostly the
Threefry rounds of the random draws, which JAX's CPU lowering runs as a while loop of 5
iterations: every iteration then hands work to the other thread and waits for it. Issue 12,
measured on 2 shared cores (scratch scripts, paired runs in one process, outputs bit-identical):
without that pass the flow-matching training step of ``benchmarks/throughput.py`` (batch 256)
took 1.34x less time and CPU time, and the CNF maximum-likelihood step (batch 512) 1.28x less CPU
time. Only the assignment of loops to threads changes: each element is computed by the same code,
so results are bit-identical (tests/test_xla_options.py). On large loops the split pays: the
likelihood of 10,000 points took 1.6x longer (wall) without it, and at batch 4096 the training
step was no faster (wall 0.92, IQR 0.81-1.16), so the option is passed only for batches of at
most `SMALL_BATCH_ELEMENTS` numbers. The docs' train page lists the options measured and
rejected.
"""

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

import jax

DISABLED_CPU_PASSES = ("cpu-parallel-task-assigner",)
"""XLA passes switched off in the programs the library compiles on CPU (see the module doc)."""


SMALL_BATCH_ELEMENTS = 4096
"""Largest batch (numbers in all its leaves) for which `fit` passes the options: measured gains
at 512 (batch 256 of 2D points) and 1024 (the CNF step's 512 x 2), none at 8192 (docs, train
page)."""


def _user_disabled_passes() -> list[str]:
    """Passes the user switched off with ``--xla_disable_hlo_passes`` in ``XLA_FLAGS``."""
    out: list[str] = []
    for flag in os.environ.get("XLA_FLAGS", "").split():
        name, _, value = flag.partition("=")
        if name.lstrip("-") == "xla_disable_hlo_passes" and value:
            out.extend(p for p in value.split(",") if p)
    return out


def compiler_options(platform: str | None = None) -> dict[str, str]:
    """Compiler options for a program the library compiles on ``platform`` (default backend).

    On CPU: ``xla_disable_hlo_passes`` with `DISABLED_CPU_PASSES` added to the passes the user
    already disabled through ``XLA_FLAGS`` (an option given here replaces that flag's value for
    this program, so the user's are kept). Elsewhere: no options.
    """
    platform = jax.default_backend() if platform is None else platform
    if platform != "cpu":
        return {}
    passes = _user_disabled_passes()
    passes += [p for p in DISABLED_CPU_PASSES if p not in passes]
    return {"xla_disable_hlo_passes": ",".join(passes)}


def fit_compiler_options(batch: Any, platform: str | None = None) -> dict[str, str]:
    """`compiler_options` for `fit`'s fused step on a batch (arrays or shape structs), or none.

    Only small batches (at most `SMALL_BATCH_ELEMENTS` numbers over all leaves) get them; on
    larger ones XLA's split of big loops across threads is worth its hand-offs.
    """
    size = sum(math.prod(getattr(x, "shape", ())) for x in jax.tree_util.tree_leaves(batch))
    return compiler_options(platform) if size <= SMALL_BATCH_ELEMENTS else {}


_LOWERING_LOCK = threading.Lock()


def _threefry_rules():
    """``(primitive, CPU rule table, unrolled rule)`` of JAX's Threefry hash, or None.

    JAX internals (``jax._src``): checked for what is used, so a JAX release that moves them
    only turns the unrolled lowering off (`unrolled_threefry` then changes nothing).
    """
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf
    except ImportError:
        return None
    prim = getattr(tf, "threefry2x32_p", None)
    rule = getattr(tf, "_threefry2x32_lowering_rule", None)
    table = getattr(mlir, "_platform_specific_lowerings", None)
    entry = getattr(mlir, "LoweringRuleEntry", None)
    if prim is None or rule is None or entry is None or not hasattr(table, "__getitem__"):
        return None
    return prim, table["cpu"], entry(rule, False)


@contextlib.contextmanager
def unrolled_threefry() -> Iterator[bool]:
    """While open, programs lowered for CPU compute JAX's Threefry hash unrolled (yields True).

    JAX lowers ``threefry2x32`` on CPU as a ``fori_loop`` of 5 iterations (4 rounds each); on
    other platforms, and here, as the same 20 rounds written out, one elementwise loop. The
    arithmetic is the same uint32 operations in the same order, so every random draw is
    bit-identical; only XLA's loop structure changes. `fit` lowers its chunk inside this
    context. Issue 12, measured on 2 shared cores (paired rounds, scratch scripts): the
    flow-matching step of ``benchmarks/throughput.py`` (8 Threefry calls per step: the key
    derivation, the 8gaussians sampler, the loss's t and noise) took 1.16x less wall and CPU
    time (IQR 1.08-1.17 / 1.14-1.19), at the same compile time. The rule is swapped in JAX's
    table of CPU lowerings and restored on exit, under a lock; a program another thread lowers
    meanwhile also gets the unrolled hash (same numbers). Yields False (nothing swapped) when
    the JAX internals it needs are missing.
    """
    rules = _threefry_rules()
    if rules is None:
        yield False
        return
    prim, table, unrolled = rules
    with _LOWERING_LOCK:
        missing = object()
        before = table.get(prim, missing)
        table[prim] = unrolled
        try:
            yield True
        finally:
            if before is missing:
                del table[prim]
            else:
                table[prim] = before
