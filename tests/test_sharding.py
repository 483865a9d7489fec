"""Data parallelism on emulated CPU devices: the same answers as one device, split the same way.

Each multi-device check runs ``tests/sharded_run.py`` in a fresh process, since the number of
emulated devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``) is fixed when JAX
starts; the resumes on one device run in this process (no JAX start-up).
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import run_script
from jax.sharding import Mesh
from sharded_run import resume

import diffeqgen as dg

SCRIPT = Path(__file__).resolve().parent / "sharded_run.py"


def result(*args):
    proc = run_script(SCRIPT, *map(str, args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("sharded") / "run.eqx"
    return result(4, checkpoint, "compare"), checkpoint


def test_training_on_four_devices_follows_the_one_device_run(four):
    out, _ = four
    assert out["devices"] == 4
    # Same keys, same batches: only the order of the float reductions differs.
    np.testing.assert_allclose(out["loss_mesh"], out["loss_one"], rtol=1e-5)
    assert out["param_sharding"] == "P()"  # replicated parameters


def test_parameters_the_user_sharded_stay_sharded(four):
    out, _ = four
    # MLP 2 -> 16 -> 16 -> 2: the two weights with 16 rows were split over the 4 devices.
    assert out["user_specs"].count("P('data',)") == 2, out["user_specs"]
    np.testing.assert_allclose(out["loss_user_sharded"], out["loss_one"], rtol=1e-5)


def test_samplers_and_likelihoods_keep_the_batch_split_and_the_numbers(four):
    out, _ = four
    assert out["x0_sharding"] == "P('data',)"
    names = ("sample_ode_rk4", "sample_ode_adaptive", "sample_sde", "log_prob", "dpm++2m", "unipc")
    for name in names:
        assert out[name]["sharding"] == "P('data',)", name
        assert out[name]["max_diff"] == 0.0, name  # per-sample work: bit-identical
    # one batched solve: the error norm sums over the devices' rows in another order
    assert out["log_prob_rms"]["sharding"] == "P('data',)"
    assert out["log_prob_rms"]["max_diff"] < 1e-5


def test_a_batch_that_does_not_divide_the_devices_is_refused(four):
    out, _ = four
    assert out["divisibility_error"].startswith("batch_size=66 does not divide evenly over the 4")


def test_a_four_device_checkpoint_resumes_on_one_device(four):
    out, checkpoint = four
    resumed = resume(str(checkpoint) + ".step20")  # in this process: one device, no mesh
    assert resumed["param_devices"] == 1 and resumed["step"] == 30
    loss = np.asarray(resumed["loss_resumed"])
    assert np.array_equal(loss[:20], np.asarray(out["loss_mesh"][:20], np.float32))
    np.testing.assert_allclose(loss[20:], out["loss_mesh"][20:], rtol=1e-5)


def test_two_processes_train_as_one_program(four, tmp_path):
    """Multi-host on one machine: 2 processes x 2 devices under jax.distributed (gloo)."""
    out, _ = four
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    checkpoint = tmp_path / "hosts.eqx"
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "2", str(checkpoint), f"host:{i}:2:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        assert proc.returncode == 0, stderr[-3000:]
        (line,) = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
        results.append(json.loads(line[len("RESULT ") :]))
    assert sorted(r["process"] for r in results) == [0, 1]
    for r in results:
        assert r["global_devices"] == 4
        np.testing.assert_allclose(r["loss"], out["loss_one"][:20], rtol=1e-5)
    # Written once (by process 0), and it resumes in a single process on one device.
    resumed = resume(checkpoint)  # in this process: one device, no mesh
    assert resumed["param_devices"] == 1 and resumed["step"] == 30
    assert np.array_equal(resumed["loss_resumed"][:20], np.float32(results[0]["loss"]))


def test_shard_batch_checks_its_input():
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(ValueError, match="same leading axis"):
        dg.sharding.shard_batch((np.zeros((4, 2)), np.zeros(3)), mesh)
    with pytest.raises(ValueError, match="axis 'model' is not an axis of the mesh"):
        dg.sharding.batch_sharding(mesh, "model")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        dg.sharding.replicate(np.zeros(2), "cpu")
    x = dg.sharding.shard_batch(np.zeros((4, 2)), mesh)
    assert x.sharding.spec == jax.sharding.PartitionSpec("data")


def test_fit_refuses_a_batch_axis_without_a_mesh():
    with pytest.raises(ValueError, match="batch_axis='data' needs a mesh"):
        dg.train.fit(
            dg.nn.MLP(2, 2, width=4, depth=1, key=jax.random.key(0)),
            lambda model, key, batch: 0.0,
            np.zeros((8, 2), np.float32),
            optimizer=dg.train.make_optimizer(1e-3),
            key=jax.random.key(1),
            num_steps=1,
            batch_size=4,
            batch_axis="data",
            progress=False,
        )
