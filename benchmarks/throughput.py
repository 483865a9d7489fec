"""Throughput, compile time and batch scaling, with a PyTorch baseline measured in the same run.

Three workloads, each timed as the median of several runs after a warm-up, with compile time
reported apart (JAX) and every timer blocking on the result (``jax.block_until_ready``):

1. **Training.** Conditional flow matching on the "mixture" data, MLP 3 x 64 (SiLU), batch 256,
   Adam 1e-3: ``diffeqgen.train.fit`` (100 steps fused per dispatch) against one jitted step per
   Python iteration, and against the same model and loss in PyTorch (eager, CPU).
2. **Sampling.** 100 fixed Euler steps of the trained field for batches of 10^2 .. 10^5 points:
   ``solve.sample_ode`` against torchdiffeq's ``odeint(method="euler")``.
3. **Likelihood.** Exact-trace CNF log-likelihood of 2,000 points with dopri5 at rtol = atol = 1e-5:
   ``cnf.log_prob`` (per-sample error control) and batched (``per_sample=False``) against
   torchdiffeq's dopri5 on the batched augmented state.

PyTorch parts run only if ``torch`` and ``torchdiffeq`` import (``pip install torch==2.13.0
torchdiffeq``); the rest needs only diffeqgen. Writes ``results/benchmarks/throughput.{json,md}``
(or into ``--out``); ``--quick`` (the test: one small size of each, one timed run) writes
``throughput_quick.*`` so that it never overwrites the full results.
"""

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from diffeqgen import cnf, data, losses, nn, paths, solve, train

WIDTH, DEPTH, BATCH, LR = 64, 3, 256, 1e-3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (tests)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/benchmarks"))
    return p.parse_args(argv)


def timed(fn, repeats):
    """(first-call seconds, median of ``repeats`` later calls) for a blocking ``fn``."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return first, statistics.median(runs)


# ----------------------------------------------------------------------------------------- JAX
def jax_training(key, steps, repeats):
    model = nn.MLP(2, 2, width=WIDTH, depth=DEPTH, activation="silu", key=key)
    loss = functools.partial(losses.flow_matching_loss, path=paths.get_path("linear"))
    sampler = data.sampler("mixture")
    opt = optax.adam(LR)

    def fused():
        return train.fit(
            model,
            loss,
            sampler,
            optimizer=opt,
            key=key,
            num_steps=steps,
            batch_size=BATCH,
            steps_per_call=100,
            progress=False,
        )

    result = fused()  # compile
    fused_runs = [fused() for _ in range(repeats)]
    fused_sps = statistics.median(r.steps_per_second for r in fused_runs)

    @eqx.filter_jit
    def one_step(model, opt_state, k):
        k_data, k_loss = jr.split(k)
        batch = sampler(k_data, BATCH)
        value, grads = eqx.filter_value_and_grad(loss)(model, k_loss, batch)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    def per_step():
        m, s = model, opt.init(eqx.filter(model, eqx.is_array))
        for i in range(steps):
            m, s, value = one_step(m, s, jr.fold_in(key, i))
        jax.block_until_ready(value)

    first, median = timed(per_step, repeats)
    return result.ema_model, dict(
        fused_steps_per_s=fused_sps,
        fused_compile_s=result.compile_seconds,
        per_step_steps_per_s=steps / median,
        per_step_first_call_s=first,
    )


def jax_sampling(field, sizes, repeats, key):
    rows = []
    for n in sizes:
        x0 = jr.normal(key, (n, 2))
        first, median = timed(
            lambda x0=x0: jax.block_until_ready(
                solve.sample_ode(field, x0, solver="euler", steps=100).x
            ),
            repeats,
        )
        rows.append(dict(n=n, first_call_s=first, median_s=median, points_per_s=n / median))
    return rows


def jax_likelihood(field, x, repeats):
    out = {}
    for label, per_sample in (("per_sample", True), ("batched", False)):
        holder = {}

        def run(per_sample=per_sample, holder=holder):
            lp, nfe = cnf.log_prob(
                field, x, solver="dopri5", rtol=1e-5, atol=1e-5, per_sample=per_sample
            )
            holder["nfe"] = int(jax.block_until_ready(nfe))
            holder["lp"] = np.asarray(lp)

        first, median = timed(run, repeats)
        out[label] = dict(first_call_s=first, median_s=median, nfe=holder["nfe"])
        out[label + "_logp"] = holder["lp"]
    return out


# ------------------------------------------------------------------------------------- PyTorch
def torch_parts(jax_model, sizes, x_lik, steps, repeats, seed, threads):
    import torch
    import torchdiffeq

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    half = 16  # same sinusoidal embedding size as the JAX MLP (embed_dim 32)

    class TorchMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layers, d = [], 2 + 2 * half
            for _ in range(DEPTH):
                layers += [torch.nn.Linear(d, WIDTH), torch.nn.SiLU()]
                d = WIDTH
            self.net = torch.nn.Sequential(*layers, torch.nn.Linear(d, 2))
            self.register_buffer("freqs", torch.exp(-np.log(1e4) * torch.arange(half) / half))

        def forward(self, t, x):
            t = t.expand(x.shape[0]) if t.dim() == 0 else t
            ang = 100.0 * t[:, None] * self.freqs[None]
            return self.net(torch.cat([x, torch.sin(ang), torch.cos(ang)], dim=-1))

    model = TorchMLP()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    mixture = data.mixture("mixture")
    batches = torch.from_numpy(np.array(mixture.sample(jr.key(seed), steps * BATCH))).float()

    def train_loop():
        for i in range(steps):
            x1 = batches[i * BATCH : (i + 1) * BATCH]
            t = torch.rand(BATCH)
            eps = torch.randn_like(x1)
            xt = t[:, None] * x1 + (1 - t[:, None]) * eps
            loss = ((model(t, xt) - (x1 - eps)) ** 2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    _, median = timed(train_loop, repeats)
    out = dict(threads=threads, train_steps_per_s=steps / median, sampling=[])
    grid = torch.linspace(0, 1, 101)
    with torch.no_grad():
        for n in sizes:
            x0 = torch.randn(n, 2)
            _, med = timed(
                lambda x0=x0: torchdiffeq.odeint(model, x0, grid, method="euler"), repeats
            )
            out["sampling"].append(dict(n=n, median_s=med, points_per_s=n / med))

    def aug(t, state):
        x = state[:, :2].detach().requires_grad_(True)
        with torch.enable_grad():
            f = model(t, x)
            div = sum(
                torch.autograd.grad(f[:, i].sum(), x, create_graph=False, retain_graph=True)[0][
                    :, i
                ]
                for i in range(2)
            )
        return torch.cat([f.detach(), -div.detach()[:, None]], dim=1)

    x = torch.from_numpy(np.array(x_lik)).float()
    counter = {"nfe": 0}

    def counted(t, s):
        counter["nfe"] += 1
        return aug(t, s)

    def lik():
        counter["nfe"] = 0
        state = torch.cat([x, torch.zeros(len(x), 1)], dim=1)
        end = torchdiffeq.odeint(
            counted, state, torch.tensor([1.0, 0.0]), method="dopri5", rtol=1e-5, atol=1e-5
        )[-1]
        z, delta = end[:, :2], end[:, 2]
        return (-0.5 * (z**2).sum(-1) - np.log(2 * np.pi) - delta).numpy()

    _, med = timed(lik, repeats)
    out["likelihood"] = dict(median_s=med, nfe=counter["nfe"], logp=lik())
    return out, model


def to_jax_weights(torch_model, like):
    """Copy the torch MLP's weights into the JAX MLP so both integrate the same field."""
    linears = [m for m in torch_model.net if isinstance(m, type(torch_model.net[0]))]
    weights = [jnp.asarray(lin.weight.detach().numpy()) for lin in linears]
    biases = [jnp.asarray(lin.bias.detach().numpy()) for lin in linears]
    return eqx.tree_at(
        lambda m: [lay.weight for lay in m.layers] + [lay.bias for lay in m.layers],
        like,
        weights + biases,
    )


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    repeats = args.repeats or (1 if args.quick else 5)
    steps = 100 if args.quick else 2000
    sizes = [100] if args.quick else [100, 1_000, 10_000, 100_000]
    n_lik = 50 if args.quick else 2000
    key = jr.key(args.seed)
    k_model, k_sample, k_lik = jr.split(key, 3)

    model, training = jax_training(k_model, steps, repeats)
    sampling = jax_sampling(model, sizes, repeats, k_sample)
    x_lik = data.sample("mixture", k_lik, n_lik)
    likelihood = jax_likelihood(model, x_lik, repeats)
    report = dict(
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, JAX {jax.__version__} on "
        f"{jax.devices()[0].platform}",
        repeats=repeats,
        training_steps=steps,
        training=training,
        sampling=sampling,
        likelihood={k: v for k, v in likelihood.items() if not k.endswith("_logp")},
    )
    torch_ok = not args.no_torch
    if torch_ok:
        try:
            import torch  # noqa: F401
            import torchdiffeq  # noqa: F401
        except ImportError:
            torch_ok = False
            report["torch"] = "not installed: pip install torch==2.13.0 torchdiffeq"
    if torch_ok:
        import torch

        # PyTorch with 1 thread and with every core; the faster setting is reported (with 2
        # busy cores, intra-op threading can slow PyTorch by an order of magnitude).
        runs = [
            torch_parts(model, sizes, x_lik, steps, repeats, args.seed, threads)
            for threads in sorted({1, os.cpu_count() or 1})
        ]
        tres, tmodel = max(runs, key=lambda r: r[0]["train_steps_per_s"])
        report["torch_all_thread_settings"] = [
            {k: v for k, v in r[0].items() if k not in ("likelihood", "sampling")} for r in runs
        ]
        # Likelihood on one field for both: load the torch weights into the JAX MLP.
        shared = to_jax_weights(tmodel, model)
        lik_shared = jax_likelihood(shared, x_lik, repeats)
        tres["likelihood"]["max_abs_diff_vs_jax_per_sample"] = float(
            np.max(np.abs(tres["likelihood"]["logp"] - lik_shared["per_sample_logp"]))
        )
        report["likelihood_same_field"] = {
            k: v for k, v in lik_shared.items() if not k.endswith("_logp")
        }
        for r, _ in runs:
            r["likelihood"].pop("logp")
        tres["version"] = torch.__version__
        report["torch"] = tres
    name = "throughput_quick" if args.quick else "throughput"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{name}.md").write_text(render(report))
    print(render(report))


def render(r):
    t = r["training"]
    torch_r = r["torch"] if isinstance(r.get("torch"), dict) else None
    lines = [
        f"# Throughput (medians of {r['repeats']} runs; compile time apart)",
        "",
        f"Machine: {r['machine']}.",
        "",
        "## Training: CFM, MLP 3 x 64, batch 256, Adam",
        "",
        "| implementation | steps/s | compile / first call (s) |",
        "|---|---|---|",
        f"| diffeqgen `fit` (100 steps fused) | {t['fused_steps_per_s']:.0f} | "
        f"{t['fused_compile_s']:.2f} |",
        f"| JAX, one jitted step per Python iteration | {t['per_step_steps_per_s']:.0f} | "
        f"{t['per_step_first_call_s']:.2f} |",
    ]
    if torch_r:
        lines.append(
            f"| PyTorch {torch_r['version']} eager, {torch_r['threads']} thread(s) | "
            f"{torch_r['train_steps_per_s']:.0f} | - |"
        )
    lines += [
        "",
        "## Sampling: 100 Euler steps (points/s)",
        "",
        "| n | diffeqgen | compile + first (s) | torchdiffeq | ratio |",
        "|---|---|---|---|---|",
    ]
    for i, s in enumerate(r["sampling"]):
        tp = torch_r["sampling"][i]["points_per_s"] if torch_r else float("nan")
        lines.append(
            f"| {s['n']} | {s['points_per_s']:.3g} | {s['first_call_s']:.2f} | "
            f"{tp:.3g} | {s['points_per_s'] / tp:.2f} |"
        )
    lik = r.get("likelihood_same_field", r["likelihood"])
    lines += [
        "",
        "## Exact-trace CNF log-likelihood, dopri5, rtol = atol = 1e-5",
        "",
        "| implementation | seconds | NFE |",
        "|---|---|---|",
        f"| diffeqgen, per-sample error control | {lik['per_sample']['median_s']:.3f} | "
        f"{lik['per_sample']['nfe']} |",
        f"| diffeqgen, batched | {lik['batched']['median_s']:.3f} | {lik['batched']['nfe']} |",
    ]
    if torch_r:
        tl = torch_r["likelihood"]
        lines.append(f"| torchdiffeq, batched | {tl['median_s']:.3f} | {tl['nfe']} |")
        if "max_abs_diff_vs_jax_per_sample" in tl:
            lines += [
                "",
                "Same weights in both; max |log p difference| torchdiffeq vs diffeqgen "
                f"per-sample: {tl['max_abs_diff_vs_jax_per_sample']:.2e} nats.",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
