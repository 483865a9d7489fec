"""diffeqgen.sharding: data parallelism across devices with JAX's own SPMD partitioning.

The package builds on ``jax.sharding`` (a ``Mesh`` of devices, ``NamedSharding`` specs and the
compiler's GSPMD partitioning), not on a scheme of its own. Two rules cover everything:

- **Computation follows data.** Every sampler and likelihood (``solve.sample_ode``,
  ``solve.sample_sde``, the few-step and discrete samplers, ``cnf.log_prob``) is one jitted
  program mapped over the samples; give it a batch split across devices
  ([`shard_batch`][]) and the compiler runs each device's share where it lives, with the result
  split the same way. Per-sample work gives the same numbers on any number of devices (random
  draws included: JAX's partitionable Threefry makes ``jr.normal(key, (n, d))`` independent of
  the sharding).
- **Training takes a mesh.** ``train.fit(..., mesh=mesh)`` splits each batch along the mesh's
  batch axis (constraint inside the fused step), keeps parameters, EMA and optimiser state
  replicated (or as the user placed them: an array already put on the mesh with a
  ``NamedSharding`` keeps it), and lets the compiler reduce the gradients. With ``mesh=None``
  the same code runs on one device unchanged. Checkpoints hold host arrays, so a run written on
  four devices resumes on one (or eight).

Several hosts (``jax.distributed.initialize()`` on each process before any JAX computation;
importing diffeqgen starts no backend, so it may come after the import; then a ``Mesh`` over
``jax.devices()``, which lists every host's devices): samplers and ``fit`` are the same SPMD
programs (tested with two processes of two CPU devices each, CPU collectives by gloo:
``jax.config.update("jax_cpu_collectives_implementation", "gloo")``). A sampler passed to
``fit`` runs inside the compiled step from the shared key, so every host draws the same global
batch and keeps its own shard; a finite dataset must be present on every host. Checkpoints are
gathered to every process and written by process 0 only.
On one machine, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` emulates N CPU devices
(set before JAX starts): that checks correctness and shows overheads, not speed-ups, since the
emulated devices share the same cores.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["batch_axis", "batch_sharding", "check_divisible", "shard_batch", "replicate", "gather"]


def _check_mesh(mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            "mesh must be a jax.sharding.Mesh, e.g. Mesh(np.array(jax.devices()), ('data',)), "
            f"got {type(mesh).__name__}"
        )
    return mesh


def batch_axis(mesh: Any, axis: str | None = None) -> str:
    """The mesh axis that splits the batch: ``axis`` if given (checked), else the first one."""
    mesh = _check_mesh(mesh)
    if axis is None:
        return mesh.axis_names[0]
    if axis not in mesh.axis_names:
        raise ValueError(
            f"axis {axis!r} is not an axis of the mesh; its axes are {mesh.axis_names}"
        )
    return axis


def batch_sharding(mesh: Any, axis: str | None = None) -> NamedSharding:
    """``NamedSharding`` that splits the leading (batch) axis over ``axis`` of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec(batch_axis(mesh, axis)))


def check_divisible(name: str, n: int, mesh: Any, axis: str) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``n`` divides over the devices of ``axis``."""
    devices = mesh.shape[batch_axis(mesh, axis)]
    if n % devices:
        raise ValueError(
            f"{name}={n} does not divide evenly over the {devices} devices of mesh axis "
            f"{axis!r}; use a multiple of {devices} (e.g. {devices * max(1, n // devices)})"
        )


def shard_batch(tree: Any, mesh: Any, axis: str | None = None) -> Any:
    """Split every array of ``tree`` along its leading (batch) axis over ``axis`` of ``mesh``.

    ``tree`` is a batch ``(n, *event)`` or any pytree of arrays with a common leading axis
    ``n`` (samples and their conditions, ``(x, labels)``, ...); ``n`` must be a multiple of the
    number of devices along ``axis``. Pass the result to any sampler or likelihood: the
    computation then runs where the data lives.

    Raises:
        ValueError: arrays without a leading axis, leading axes that differ, or ``n`` not a
            multiple of the device count.
    """
    axis = batch_axis(mesh, axis)
    leaves = jax.tree_util.tree_leaves(tree)
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
    if None in sizes or len(sizes) > 1:
        shapes = [tuple(np.shape(a)) for a in leaves]
        raise ValueError(f"every array of the batch needs the same leading axis, got {shapes}")
    for n in sizes:
        check_divisible("batch size", n, mesh, axis)
    return jax.device_put(tree, batch_sharding(mesh, axis))


def replicate(tree: Any, mesh: Any) -> Any:
    """Put a full copy of every array of ``tree`` on every device of ``mesh``.

    Arrays already placed on ``mesh`` with a ``NamedSharding`` (e.g. a parameter the user
    sharded on purpose) keep their sharding; non-array leaves pass through.
    """
    mesh = _check_mesh(mesh)
    full = NamedSharding(mesh, PartitionSpec())

    def put(a):
        if not isinstance(a, jax.Array | np.ndarray):
            return a
        s = getattr(a, "sharding", None)
        if isinstance(s, NamedSharding) and s.mesh == mesh:
            return a
        return jax.device_put(a, full)

    return jax.tree_util.tree_map(put, tree)


def gather(tree: Any) -> Any:
    """``tree`` with every array that spans several hosts gathered into a NumPy array here.

    Arrays this process holds entirely (every array on one host) pass through unchanged.
    """

    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return a

    return jax.tree_util.tree_map(get, tree)
