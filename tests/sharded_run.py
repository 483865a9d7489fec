"""Run by tests/test_sharding.py in a subprocess with N emulated CPU devices; prints JSON.

Usage: python sharded_run.py DEVICES CHECKPOINT MODE, MODE one of
  "compare": (needs >= 2 devices) train on a mesh and on one device, sample and score sharded and
             unsharded, write a checkpoint from the sharded run at step 20 (kept as
             CHECKPOINT.step20) and continue it to step 30 on the mesh; report differences.
  "resume":  continue CHECKPOINT to step 30 on this process's devices with no mesh (the tests
             call ``resume`` in their own process instead: importing this file runs nothing).
  "host:I:P:PORT": process I of P processes (jax.distributed over localhost:PORT, CPU collectives
             by gloo), each with DEVICES devices: train 20 steps on the mesh of all P * DEVICES
             devices, checkpoint to CHECKPOINT (written by process 0).
"""

import json
import os
import sys

if __name__ == "__main__":  # imported by the tests for ``run`` (resume on one device in-process)
    devices, checkpoint, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    # appended: the test session's compile flags (tests/conftest.py) stay in force
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()

import functools  # noqa: E402
import shutil  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import diffeqgen as dg  # noqa: E402

PATH = dg.paths.get_path("linear")
LOSS = functools.partial(dg.losses.flow_matching_loss, path=PATH)
OPT = dg.train.make_optimizer(3e-3)


def sampler(key, n):
    return dg.data.sample("moons", key, n)


def run(num_steps, model=None, **kw):
    model = dg.nn.MLP(2, 2, width=16, depth=2, key=jr.key(0)) if model is None else model
    opt = dict(optimizer=OPT, key=jr.key(1), batch_size=64, steps_per_call=10, progress=False)
    return dg.train.fit(model, LOSS, sampler, num_steps=num_steps, **(opt | kw))


def resume(checkpoint):
    """Continue ``checkpoint`` to step 30 on this process's default device, with no mesh."""
    resumed = run(30, checkpoint=str(checkpoint), resume=True)
    placed = {d for a in jax.tree_util.tree_leaves(resumed.model) for d in a.sharding.device_set}
    return {
        "loss_resumed": resumed.history["loss"].tolist(),
        "step": resumed.step,
        "param_devices": len(placed),
    }


def main(devices, checkpoint, mode):
    if mode.startswith("host:"):
        process, processes, port = map(int, mode.split(":")[1:])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", num_processes=processes, process_id=process)
        assert jax.process_count() == processes and jax.local_device_count() == devices
    else:
        assert len(jax.devices()) == devices, jax.devices()
    out = {"devices": devices}
    if mode == "compare":
        mesh = Mesh(np.array(jax.devices()), ("data",))
        one = run(30)
        many = run(20, mesh=mesh, checkpoint=checkpoint)
        shutil.copy(checkpoint, checkpoint + ".step20")  # for the resume on another device count
        more = run(30, mesh=mesh, checkpoint=checkpoint, resume=True)
        out["loss_one"] = one.history["loss"].tolist()
        out["loss_mesh"] = more.history["loss"].tolist()
        out["param_sharding"] = str(jax.tree_util.tree_leaves(many.model)[0].sharding.spec)
        # The user shards the weights whose rows divide over the devices; fit keeps that placement.
        split = NamedSharding(mesh, PartitionSpec("data"))

        def place(a):
            big = eqx.is_array(a) and a.ndim == 2 and a.shape[0] % devices == 0
            return jax.device_put(a, split) if big else a

        user = run(
            30,
            model=jax.tree_util.tree_map(place, dg.nn.MLP(2, 2, width=16, depth=2, key=jr.key(0))),
            mesh=mesh,
        )
        out["loss_user_sharded"] = user.history["loss"].tolist()
        specs = [str(a.sharding.spec) for a in jax.tree_util.tree_leaves(user.model) if a.ndim == 2]
        out["user_specs"] = specs
        try:
            run(1, mesh=mesh, batch_size=66)
        except ValueError as err:
            out["divisibility_error"] = str(err)
        net = one.ema_model
        field = dg.paths.as_vector_field(net, PATH, "velocity")  # carries its path: few-step OK
        sde = dg.sdes.generative_sde(net, dg.paths.as_score(net, PATH, "velocity"), 0.5)
        x0 = jr.normal(jr.key(2), (64, 2))
        xs = dg.sharding.shard_batch(x0, mesh)
        out["x0_sharding"] = str(xs.sharding.spec)
        for name, call in {
            "sample_ode_rk4": lambda x: dg.solve.sample_ode(net, x, solver="rk4", steps=8).x,
            "sample_ode_adaptive": lambda x: dg.solve.sample_ode(net, x, per_sample=True).x,
            "sample_sde": lambda x: dg.solve.sample_sde(sde, x, key=jr.key(3), steps=16).x,
            "log_prob": lambda x: dg.cnf.log_prob(net, x, error_control="per_sample")[0],
            # the default batched control: its RMS norm over the batch sums in another order
            "log_prob_rms": lambda x: dg.cnf.log_prob(net, x)[0],
            "dpm++2m": lambda x: dg.solve.sample_ode(field, x, solver="dpm++2m", steps=6).x,
            "unipc": lambda x: dg.solve.sample_ode(field, x, solver="unipc", steps=6).x,
        }.items():
            plain, sharded = call(x0), call(xs)
            out[name] = dict(
                max_diff=float(jnp.max(jnp.abs(plain - sharded))),
                sharding=str(sharded.sharding.spec),
            )
    elif mode.startswith("host:"):
        mesh = Mesh(np.array(jax.devices()), ("data",))
        out["process"], out["global_devices"] = jax.process_index(), jax.device_count()
        out["loss"] = run(20, mesh=mesh, checkpoint=checkpoint).history["loss"].tolist()
    else:
        out.update(resume(checkpoint))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(devices, checkpoint, mode)
