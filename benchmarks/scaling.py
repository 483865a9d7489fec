"""Scaling across devices: training, sampling and likelihood throughput against devices and batch.

Every device count N runs in its own process (the count is fixed when JAX starts:
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) with a ``Mesh`` over its N devices:

1. **Training.** ``train.fit(..., mesh=mesh)``: conditional flow matching, MLP 3 x 64 (SiLU), Adam,
   100 steps fused per dispatch, for several batch sizes (split over the devices).
2. **Sampling.** ``solve.sample_ode`` (RK4, 32 steps) of a batch put on the mesh with
   ``sharding.shard_batch``.
3. **Likelihood.** ``cnf.log_prob`` (exact trace, RK4, 16 steps) of a sharded batch.

Each figure is the median of ``--repeats`` timed runs after a first (compiling) call, whose time is
reported apart. **What emulation shows:** on a CPU the N emulated devices share the same cores, so
this measures the correctness and the overhead of the partitioned programs (collectives, per-device
dispatch), not the speed-up real devices give; a ratio near 1 means the partitioning costs little.
Writes ``results/benchmarks/scaling.{json,md,png}`` (``scaling_quick.*`` with ``--quick``).
"""

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 and 2 devices, small sizes (tests)")
    p.add_argument("--devices", default=None, help="comma-separated device counts (default 1,2,4)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 5)")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/benchmarks"))
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def sizes(quick):
    if quick:
        return dict(train=(64,), sample=(256,), likelihood=(256,), steps=20)
    return dict(train=(256, 1024, 4096), sample=(4096, 65536), likelihood=(4096,), steps=300)


def timed(fn, repeats):
    """(first-call seconds, median and range of ``repeats`` later calls) of a blocking ``fn``."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return first, statistics.median(runs), min(runs), max(runs)


def worker(devices, quick, repeats):
    """Measure every workload on this process's ``devices`` emulated devices; print JSON."""
    import jax
    import jax.random as jr
    import numpy as np
    import optax
    from jax.sharding import Mesh

    from diffeqgen import cnf, data, losses, nn, paths, sharding, solve, train

    assert len(jax.devices()) == devices, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    cfg = sizes(quick)
    model = nn.MLP(2, 2, width=64, depth=3, activation="silu", key=jr.key(0))
    loss = functools.partial(losses.flow_matching_loss, path=paths.get_path("linear"))
    sampler, opt = data.sampler("mixture"), optax.adam(1e-3)
    rows = []

    def record(workload, batch, unit, count, fn):
        first, med, lo, hi = timed(fn, repeats)
        rows.append(
            dict(
                workload=workload,
                devices=devices,
                batch=batch,
                unit=unit,
                first_seconds=first,
                seconds=med,
                seconds_min=lo,
                seconds_max=hi,
                per_second=count / med,
            )
        )

    for batch in cfg["train"]:
        if batch % devices:
            continue
        steps = cfg["steps"]
        kw = dict(optimizer=opt, key=jr.key(1), num_steps=steps, batch_size=batch, progress=False)
        fit = functools.partial(
            train.fit, model, loss, sampler, steps_per_call=100, mesh=mesh, **kw
        )
        record("training", batch, "steps/s", steps, lambda fit=fit: fit().model)
    for n in cfg["sample"]:
        x0 = sharding.shard_batch(jr.normal(jr.key(2), (n, 2)), mesh)
        record(
            "sampling",
            n,
            "samples/s",
            n,
            lambda x0=x0: solve.sample_ode(model, x0, solver="rk4", steps=32).x,
        )
    for n in cfg["likelihood"]:
        x = sharding.shard_batch(jr.normal(jr.key(3), (n, 2)), mesh)
        record(
            "likelihood",
            n,
            "points/s",
            n,
            lambda x=x: cnf.log_prob(model, x, solver="rk4", steps=16)[0],
        )
    print("RESULT " + json.dumps(rows))


def run_worker(devices, quick, repeats):
    # the device count is appended to the caller's XLA_FLAGS (e.g. the test session's compile
    # flags), which the worker keeps
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    cmd = [sys.executable, __file__, "--worker", str(devices), "--repeats", str(repeats)]
    proc = subprocess.run(cmd + ["--quick"] * quick, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker with {devices} devices failed:\n{proc.stderr[-3000:]}")
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :])


def render(r):
    lines = [
        "# Scaling across devices (`benchmarks/scaling.py`)",
        "",
        f"Machine: {r['machine']}. Devices are emulated CPU devices sharing the same cores: the",
        "table shows the cost of the partitioned programs, not real speed-ups. Medians of",
        f"{r['repeats']} runs after a compiling first call (its time apart); ratio = throughput",
        "over the same workload on one device.",
        "",
        "| workload | batch | devices | throughput | range (s) | first call (s) | vs 1 device |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['workload']} | {row['batch']} | {row['devices']} | "
            f"{row['per_second']:.4g} {row['unit']} | {row['seconds_min']:.3g}-"
            f"{row['seconds_max']:.3g} | {row['first_seconds']:.2f} | {row['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def figure(r, file):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(row["workload"] for row in r["rows"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rows = [row for row in r["rows"] if row["workload"] == kind]
        for batch in dict.fromkeys(row["batch"] for row in rows):
            sel = [row for row in rows if row["batch"] == batch]
            ax.plot(
                [s["devices"] for s in sel],
                [s["per_second"] for s in sel],
                "o-",
                label=f"batch {batch}",
            )
        ax.set(xlabel="emulated CPU devices", ylabel=rows[0]["unit"], title=kind)
        ax.set_xticks(r["devices"])
        ax.legend(fontsize=7)
    fig.suptitle(
        "Throughput against devices (emulated on shared cores: overhead, not speed-up)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    if args.worker is not None:
        return worker(args.worker, args.quick, repeats)
    devices = [int(d) for d in (args.devices or ("1,2" if args.quick else "1,2,4")).split(",")]
    rows = [row for n in devices for row in run_worker(n, args.quick, repeats)]
    one = {(r["workload"], r["batch"]): r["per_second"] for r in rows if r["devices"] == 1}
    for r in rows:
        r["ratio"] = r["per_second"] / one[r["workload"], r["batch"]] if one else float("nan")
    import jax

    result = dict(
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, JAX {jax.__version__}",
        quick=args.quick,
        repeats=repeats,
        devices=devices,
        rows=rows,
    )
    name = "scaling_quick" if args.quick else "scaling"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"{name}.md").write_text(render(result))
    figure(result, args.out / f"{name}.png")
    print(render(result))


if __name__ == "__main__":
    main()
