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

import math
import os
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
