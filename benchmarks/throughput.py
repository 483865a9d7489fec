"""Throughput of diffeqgen's public API against plain JAX/Diffrax and the PyTorch tools, one run.

Four workloads on one network, a torchcfm-style MLP (input ``[x, t]``, 3 hidden layers of 64,
SELU), with the same weights everywhere (the JAX weights are copied into PyTorch):

a. **Flow-matching training**, batch 256, Adam 1e-3, linear path (torchcfm's
   ``ConditionalFlowMatcher(sigma=0)``): ``train.fit`` (EMA, fail-loud checks, 100 steps per
   dispatch) against a hand-fused plain-JAX loop (one ``lax.scan`` of all steps, same work
   including the EMA), a plain jitted step per Python iteration, a vectorised PyTorch loop and
   torchcfm's ``ConditionalFlowMatcher`` loop (PyTorch with 1 and with 2 threads; best taken).
   A short ``fit`` call (5 steps) is timed too: fit's per-call overhead. ``fit`` compiles its
   chunk with the XLA option it passes on CPU (``train.compiler_options``: parallel task
   assignment of loops off) and lowers it with JAX's Threefry hash unrolled
   (``train.unrolled_threefry``; both bit-identical; docs, train page), so the hand-fused loop
   is also timed compiled that way, and ``fit`` is paired with both.
b. **Sampling** 10,000 points, Euler 100 steps and dopri5 at rtol = atol = 1e-5:
   ``solve.sample_ode`` against plain Diffrax (same solver, controller and batch-as-one-state)
   and torchdiffeq ``odeint``; NFE stated for each (equal NFE is the comparison).
c. **Exact CNF log-likelihood** of 10,000 data points: ``cnf.log_prob`` with its defaults
   (Bosh3 at rtol = atol = 1e-4, batched RMS error control; chosen by measurement, issue 12),
   and at the peers' settings, dopri5 at rtol = atol = 1e-5 (batched and per-sample error
   control), against plain Diffrax (batch as one state and per-sample vmapped solves) and
   FFJORD-style torchdiffeq (exact trace by autograd) at dopri5 1e-5; each with its max error on
   the first ``N_REF`` points against a float64 dopri8 1e-10 reference
   (``cnf.reference_log_prob``) and its NFE (max and mean over samples where a solve is per
   sample). The goal compares the default with torchdiffeq: faster at no larger max error.
d. **CNF maximum-likelihood training step**, batch 512, dopri5 at rtol = atol = 1e-5:
   ``cnf.nll_loss`` through ``eqx.filter_value_and_grad`` + Optax Adam (jitted) against the
   same by hand with Diffrax and against torchdiffeq ``odeint`` + ``backward()`` + Adam; all
   three discretise-then-optimise with I-controlled steps (``nll_loss``'s adaptive steps,
   Diffrax's and torchdiffeq's default control) and the exact trace; forward NFE of each.
   The library's step is also timed jitted with the XLA option ``fit`` passes on CPU (as
   ``fit(model, cnf.nll_loss, ...)`` compiles it; a user's own jit does not get it): a separate
   row, not the default path.

Timing: every implementation is called once first (JAX compile; reported as "first call minus
the median"), then the implementations are interleaved, round-robin over ``--repeats`` with
the order rotated each round (none always follows the same one, e.g. a 2-thread PyTorch run), so
that load from other processes hits them alike; medians with min-max ranges; every JAX timer
blocks on its result. Ratios are within this one run.

The two goals that compare nearly identical compiled programs, ``fit`` against the hand-fused
loop (a) and ``sample_ode`` against plain Diffrax (b, both solvers), are also measured paired,
JAX only: right after that workload's rounds, one unrecorded pair, then ``--pairs`` short
rounds (default 21) of the two back to back in the order A,B,B,A,A,B,..., no PyTorch work in
between; the rate ratio is taken within each pair and reported as its median with the
interquartile range (``ratios.*_paired`` and ``paired`` in the JSON). Why: in the interleaved
rounds PyTorch runs between the JAX rows, and 5 rounds are few; a quiet default run gave
fit/fused 0.90 and sample_ode/Diffrax 0.92/0.91 there, where scratch runs without PyTorch gave
0.95-1.00.

Each figure is also given as a fraction of the machine's float32 matmul rate measured in the
same run (a 1024 x 1024 JAX matmul) from an estimate of its FLOPs: a forward pass of the MLP
is F = 2 * (3*64 + 64*64 + 64*64 + 64*2) FLOPs per sample; a training step 3F per sample; an
exact-trace augmented evaluation (1 + d) F (d = 2); a likelihood training step 3 (1 + d) F per
sample per forward NFE.

PyTorch parts run when ``torch``, ``torchdiffeq`` and ``torchcfm`` import (``pip install
diffeqgen[bench]``); otherwise (or with ``--no-torch``) they are skipped and the output says so.
Writes ``results/benchmarks/throughput.{json,md}`` (or into ``--out``); ``--quick`` (tiny sizes,
one repeat, 5 pairs; the test) writes ``throughput_quick.*``.
"""

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from diffeqgen import cnf, data, losses, paths, solve, train

DIM, WIDTH, DATASET, LR, TOL = 2, 64, "8gaussians", 1e-3, 1e-5
N_REF = 500  # likelihood errors are measured on this many points against the float64 reference
F_FORWARD = 2 * ((DIM + 1) * WIDTH + 2 * WIDTH * WIDTH + WIDTH * DIM)  # FLOPs, one sample


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (tests)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; 3 for c)")
    p.add_argument("--pairs", type=int, default=None,
                   help="paired JAX-only rounds of fit/fused and sample_ode/Diffrax (default 21; "
                   "5 with --quick)")  # fmt: skip
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="machine state to record, e.g. 'busy'")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/benchmarks"))
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.pairs is not None and args.pairs < 1:
        p.error(f"--pairs must be >= 1, got {args.pairs}")
    return args


class SeluMLP(eqx.Module):
    """torchcfm's ``MLP(dim, w=64, time_varying=True)``: ``[x, t]`` -> 3 x 64 SELU -> dim."""

    layers: tuple

    def __init__(self, key):
        sizes = [DIM + 1, WIDTH, WIDTH, WIDTH, DIM]
        keys = jr.split(key, len(sizes) - 1)
        self.layers = tuple(
            eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )

    def __call__(self, t, x, args=None):
        """Velocity at scalar ``t`` of one sample ``x`` (shape ``(2,)``)."""
        h = jnp.concatenate([x, jnp.asarray(t, x.dtype)[None]])
        for layer in self.layers[:-1]:
            h = jax.nn.selu(layer(h))
        return self.layers[-1](h)


# ------------------------------------------------------------------------------ timing harness
def block(tree):
    return jax.block_until_ready(tree)


def interleaved(fns: dict, repeats: int) -> dict:
    """First call of each (compile), then ``repeats`` round-robin rounds; seconds per call.

    Round ``r`` starts at the ``r``-th implementation (rotated order).

    PyTorch thread settings of one implementation are named ``"impl@threads"``: a setting whose
    first call is over 2x slower than the group's fastest first call (oversubscribed threads on
    a busy machine run 10-100x slower) is dropped from the rounds; its row then holds that one
    call, flagged ``dropped``.
    """
    out = {}
    for name, fn in fns.items():
        t = time.perf_counter()
        fn()
        out[name] = {"first": time.perf_counter() - t, "times": []}
    groups: dict = {}
    for name in fns:
        if "@" in name:
            groups.setdefault(name.rsplit("@", 1)[0], []).append(name)
    dropped = set()
    for names in groups.values():
        fastest = min(out[n]["first"] for n in names)
        dropped |= {n for n in names if out[n]["first"] > 2 * fastest}
    order = list(fns)
    for r in range(repeats):
        # each round starts one implementation later, so none always runs right after the same
        # one (e.g. the lead implementation after a 2-thread PyTorch run in every round)
        for name in order[r % len(order) :] + order[: r % len(order)]:
            fn = fns[name]
            if name in dropped:
                continue
            t = time.perf_counter()
            fn()
            out[name]["times"].append(time.perf_counter() - t)
    for name in dropped:
        out[name].update(times=[out[name]["first"]], dropped=True)
    return out


def paired(a, b, pairs: int) -> dict:
    """Rate of ``a`` over rate of ``b`` (b's time / a's time) in ``pairs`` back-to-back pairs.

    For two compiled JAX calls of nearly the same work. One unrecorded pair first (after PyTorch
    work its idle threads may still spin), then pairs in the order A,B,B,A,A,B,... (neither always
    runs first); the ratio is taken within each pair, so slow changes of the machine's load
    cancel. Returns the median ratio, its quartiles and every pair's ratio.
    """
    fns = (a, b)
    for fn in fns:
        fn()
    ratios = []
    for i in range(pairs):
        t = [0.0, 0.0]
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            start = time.perf_counter()
            fns[j]()
            t[j] = time.perf_counter() - start
        ratios.append(t[1] / t[0])
    q25, med, q75 = (float(q) for q in np.percentile(ratios, [25, 50, 75]))
    return dict(median=med, q25=q25, q75=q75, pairs=pairs, ratios=ratios)


def row(label, timing, *, work=1.0, flops=None, matmul=None, **extra):
    """A result row: seconds (median, min, max), rate = work / seconds, compile, FLOP fraction."""
    ts = timing["times"]
    med = statistics.median(ts)
    r = dict(
        impl=label,
        seconds=med,
        seconds_min=min(ts),
        seconds_max=max(ts),
        rate=work / med,
        rate_min=work / max(ts),
        rate_max=work / min(ts),
        compile_s=max(timing["first"] - med, 0.0),
        **extra,
    )
    if timing.get("dropped"):
        r["dropped"] = True  # one (first) call only: much slower than the other thread setting
        r["impl"] += " [first call only; dropped]"
    if flops is not None and matmul:
        r["flops"] = flops
        r["matmul_fraction"] = flops / med / matmul
    return r


def matmul_rate(n=1024, reps=7) -> float:
    """float32 FLOP/s of a jitted n x n JAX matmul (median of ``reps``)."""
    a = jr.normal(jr.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    block(f(a))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        block(f(a))
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(ts)


def torch_available(no_torch: bool) -> str | None:
    """None if the PyTorch peers can run, else why not."""
    if no_torch:
        return "skipped (--no-torch)"
    try:
        import torch  # noqa: F401
        import torchcfm  # noqa: F401
        import torchdiffeq  # noqa: F401
    except ImportError as e:
        return f"skipped: {e} (pip install 'diffeqgen[bench]' for torch, torchdiffeq, torchcfm)"
    return None


def torch_mlp(jax_model):
    """The torchcfm MLP with the weights of ``jax_model`` (a ``SeluMLP``)."""
    import torch
    from torchcfm.models import MLP

    net = MLP(DIM, w=WIDTH, time_varying=True)
    linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin, lay in zip(linears, jax_model.layers, strict=True):
            lin.weight.copy_(torch.from_numpy(np.array(lay.weight)))
            lin.bias.copy_(torch.from_numpy(np.array(lay.bias)))
    return net


def torch_threads(fn, threads):
    import torch

    def run():
        torch.set_num_threads(threads)
        return fn()

    return run


def best_of_threads(rows, label):
    """The faster of the 1- and 2-thread rows of ``label`` (by median)."""
    mine = [r for r in rows if r["impl"].startswith(label + " (")]
    return min(mine, key=lambda r: r["seconds"]) if mine else None


# --------------------------------------------------------------------------- (a) FM training
def fm_training(init_model, sampler, steps, repeats, matmul, torch_why, seed, pairs):
    batch = 256
    opt = optax.adam(LR)
    loss = functools.partial(losses.flow_matching_loss, path=paths.get_path("linear"))
    key = jr.key(seed + 1)

    def run_fit(n=steps):
        r = train.fit(init_model, loss, sampler, optimizer=opt, key=key, num_steps=n,
                      batch_size=batch, steps_per_call=100, progress=False)  # fmt: skip
        return block(r.model)

    params, static = eqx.partition(init_model, eqx.is_inexact_array)

    def fm_loss(p, k, x1):
        kt, k0 = jr.split(k)
        t = jr.uniform(kt, (batch,))
        x0 = jr.normal(k0, x1.shape)
        xt = t[:, None] * x1 + (1 - t[:, None]) * x0
        v = jax.vmap(eqx.combine(p, static), in_axes=(0, 0, None))(t, xt, None)
        return jnp.mean(jnp.sum((v - (x1 - x0)) ** 2, axis=-1))

    def one(carry, s, train_key):
        p, e, o = carry
        kd, kl = jr.split(jr.fold_in(train_key, s))
        value, g = jax.value_and_grad(fm_loss)(p, kl, sampler(kd, batch))
        u, o = opt.update(g, o, p)
        p = optax.apply_updates(p, u)
        d = jnp.minimum(0.999, (1.0 + s) / (10.0 + s))
        e = jax.tree_util.tree_map(lambda e, p: e + (1 - d) * (p - e), e, p)
        return (p, e, o), value

    def scan(carry, train_key, n):
        return jax.lax.scan(lambda c, s: one(c, s, train_key), carry, jnp.arange(n))

    fused = jax.jit(scan, static_argnums=2)
    # the same program compiled as fit compiles its steps on CPU: with the XLA options it passes
    # (train.compiler_options: the parallel task assignment of loops off) and lowered with the
    # Threefry hash unrolled (train.unrolled_threefry); bit-identical results
    # (a function of its own: JAX would otherwise reuse `fused`'s lowering, cached by function)
    fused_opts = jax.jit(lambda c, k, n: scan(c, k, n), static_argnums=2,
                         compiler_options=train.compiler_options())  # fmt: skip
    step_jit = jax.jit(one)
    carry0 = (params, params, opt.init(params))

    def run_fused(n=steps):
        return block(fused(carry0, key, n))

    def run_fused_opts(n=steps):
        with train.unrolled_threefry():  # used when the first call lowers (then JAX's cache)
            return block(fused_opts(carry0, key, n))

    def run_per_step(n=steps):
        c = carry0
        for s in range(n):
            c, value = step_jit(c, jnp.int32(s), key)
        return block(value)

    fns = {"fit": run_fit, "fused": run_fused, "fused_opts": run_fused_opts,
           "per_step": run_per_step,
           "fit_5": functools.partial(run_fit, 5), "fused_5": functools.partial(run_fused, 5),
           "per_step_5": functools.partial(run_per_step, 5)}  # fmt: skip
    if torch_why is None:
        fns.update(torch_fm(init_model, sampler, steps, batch, seed))
    t = interleaved(fns, repeats)
    pair = paired(run_fit, run_fused, pairs)  # JAX only, right after the rounds
    pair_opts = paired(run_fit, run_fused_opts, pairs)  # fit against the same compiled program
    fl = 3 * F_FORWARD * batch * steps
    rows = [
        row("diffeqgen fit (100 steps per dispatch)", t["fit"], work=steps, flops=fl,
            matmul=matmul),
        row("plain JAX, hand-fused lax.scan", t["fused"], work=steps, flops=fl, matmul=matmul),
        row("plain JAX, hand-fused lax.scan, compiled as fit (CPU options, Threefry unrolled)",
            t["fused_opts"],
            work=steps, flops=fl, matmul=matmul),
        row("plain JAX, jitted step per Python iteration", t["per_step"], work=steps, flops=fl,
            matmul=matmul),
    ]  # fmt: skip
    for name in fns:
        if name.startswith("torch:"):
            label, threads = name[len("torch:") :].rsplit("@", 1)
            rows.append(row(f"{label} ({threads} thread{'s' * (threads != '1')})", t[name],
                            work=steps, flops=fl, matmul=matmul))  # fmt: skip
    short = [
        row(f"{lab}, a call of 5 steps", t[k], work=5)
        for k, lab in (("fit_5", "diffeqgen fit"), ("fused_5", "plain JAX fused"),
                       ("per_step_5", "plain JAX per step"))
    ]  # fmt: skip
    by = {r["impl"]: r for r in rows}
    fit_r = by["diffeqgen fit (100 steps per dispatch)"]
    ratios = {
        "fit_over_fused": fit_r["rate"] / by["plain JAX, hand-fused lax.scan"]["rate"],
        "fit_over_fused_paired": pair["median"],
        "fit_over_fused_same_options_paired": pair_opts["median"],
        "fit_over_per_step": fit_r["rate"]
        / by["plain JAX, jitted step per Python iteration"]["rate"],
        "fit_call_overhead_ms": 1e3 * (short[0]["seconds"] - short[1]["seconds"]),
    }
    for label in ("PyTorch vectorised loop", "torchcfm ConditionalFlowMatcher loop"):
        best = best_of_threads(rows, label)
        if best:
            ratios[f"fit_over_{'torchcfm' if 'torchcfm' in label else 'torch'}"] = (
                fit_r["rate"] / best["rate"]
            )
    return dict(steps=steps, batch=batch, unit="steps/s", rows=rows, short_calls=short,
                ratios=ratios, paired={"fit_over_fused": pair,
                                       "fit_over_fused_same_options": pair_opts})  # fmt: skip


def torch_fm(init_model, sampler, steps, batch, seed):
    import torch
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    torch.manual_seed(seed)
    x1_all = torch.from_numpy(np.array(sampler(jr.key(seed + 7), steps * batch)))
    fm = ConditionalFlowMatcher(sigma=0.0)

    def loop(use_cfm):
        net = torch_mlp(init_model)
        opt = torch.optim.Adam(net.parameters(), lr=LR)

        def run():
            for i in range(steps):
                x1 = x1_all[i * batch : (i + 1) * batch]
                x0 = torch.randn_like(x1)
                if use_cfm:
                    t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
                else:
                    t = torch.rand(batch)
                    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
                    ut = x1 - x0
                vt = net(torch.cat([xt, t[:, None]], dim=-1))
                loss = torch.mean(torch.sum((vt - ut) ** 2, dim=-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
            return float(loss.detach())

        return run

    fns = {}
    for threads in (1, 2):
        fns[f"torch:PyTorch vectorised loop@{threads}"] = torch_threads(loop(False), threads)
        fns[f"torch:torchcfm ConditionalFlowMatcher loop@{threads}"] = torch_threads(
            loop(True), threads
        )
    return fns


# ------------------------------------------------------------------------------ (b) sampling
def batched_field(model):
    return lambda t, y, args: jax.vmap(model, in_axes=(None, 0, None))(t, y, None)


def _nonfinite(t, y, args, **kwargs):
    return ~jnp.all(jnp.isfinite(y))


@eqx.filter_jit
def diffrax_sample(model, x0, solver, steps, rtol, atol, event=False):
    """A batch solve in plain Diffrax; final state and step count.

    ``event=True`` adds a stop-at-the-first-non-finite-state ``dfx.Event`` (what ``sample_ode``
    does on fixed steps to fail loudly), to measure what that check costs.
    """
    fixed = steps is not None
    sol = dfx.diffeqsolve(
        dfx.ODETerm(batched_field(model)), solver, 0.0, 1.0, 1.0 / steps if fixed else None, x0,
        stepsize_controller=dfx.ConstantStepSize() if fixed else dfx.PIDController(rtol, atol),
        max_steps=steps if fixed else 4096, event=dfx.Event(_nonfinite) if event else None,
    )  # fmt: skip
    return sol.ys[-1], sol.stats["num_steps"]


def sampling(model, n, repeats, matmul, torch_why, seed, pairs):
    x0 = jr.normal(jr.key(seed + 2), (n, DIM))
    out = {}
    for kind, solver, steps in (("euler100", "euler", 100), ("dopri5", "dopri5", None)):
        holder = {}
        solver_obj = dfx.Euler() if solver == "euler" else dfx.Dopri5()

        def lib(solver=solver, steps=steps, holder=holder):
            sol = solve.sample_ode(model, x0, solver=solver, steps=steps, rtol=TOL, atol=TOL)
            holder["lib"] = int(block(sol.nfe))

        def plain(solver_obj=solver_obj, steps=steps, holder=holder):
            _, num = block(diffrax_sample(model, x0, solver_obj, steps, TOL, TOL))
            holder["plain"] = int(num) if steps else 1 + 6 * int(num)

        fns = {"lib": lib, "plain": plain}
        if steps:

            def plain_event(solver_obj=solver_obj, steps=steps, holder=holder):
                _, num = block(diffrax_sample(model, x0, solver_obj, steps, TOL, TOL, True))
                holder["plain_event"] = int(num)

            fns["plain_event"] = plain_event
        if torch_why is None:
            for threads in (1, 2):
                fns[f"torchdiffeq@{threads}"] = torch_threads(
                    torch_sample(model, x0, solver, steps, holder), threads
                )
        t = interleaved(fns, repeats)
        pair = paired(lib, plain, pairs)  # JAX only, right after the rounds
        rows = []
        for name, label in (
            ("lib", "diffeqgen solve.sample_ode"),
            ("plain", "plain Diffrax"),
            ("plain_event", "plain Diffrax + non-finite Event (sample_ode's check)"),
        ):
            if name not in fns:
                continue
            nfe = holder[name]
            rows.append(row(label, t[name], work=n, flops=F_FORWARD * n * nfe, matmul=matmul,
                            nfe=nfe))  # fmt: skip
        for threads in (1, 2) if torch_why is None else ():
            nfe = holder["torch"]
            rows.append(row(f"torchdiffeq odeint ({threads} thread{'s' * (threads > 1)})",
                            t[f"torchdiffeq@{threads}"], work=n, flops=F_FORWARD * n * nfe,
                            matmul=matmul, nfe=nfe))  # fmt: skip
        ratios = {"lib_over_plain": rows[0]["rate"] / rows[1]["rate"],
                  "lib_over_plain_paired": pair["median"]}  # fmt: skip
        if steps:
            ratios["plain_event_over_plain"] = rows[2]["rate"] / rows[1]["rate"]
        best = best_of_threads(rows, "torchdiffeq odeint")
        if best:
            ratios["lib_over_torch"] = rows[0]["rate"] / best["rate"]
            ratios["lib_over_torch_per_nfe"] = (
                rows[0]["rate"] * rows[0]["nfe"] / (best["rate"] * best["nfe"])
            )
        out[kind] = dict(n=n, unit="points/s", rows=rows, ratios=ratios,
                         paired={"lib_over_plain": pair})  # fmt: skip
    return out


class _Counted:
    def __init__(self, fn):
        self.fn, self.nfe = fn, 0

    def __call__(self, t, y):
        self.nfe += 1
        return self.fn(t, y)


def torch_sample(model, x0, solver, steps, holder):
    import torch
    import torchdiffeq

    net = torch_mlp(model)
    x = torch.from_numpy(np.array(x0))

    def field(t, y):
        return net(torch.cat([y, t.expand(y.shape[0], 1)], dim=-1))

    def run():
        f = _Counted(field)
        with torch.no_grad():
            if steps:
                grid = torch.linspace(0, 1, steps + 1)
                y = torchdiffeq.odeint(f, x, grid, method="euler")[-1]
            else:
                y = torchdiffeq.odeint(f, x, torch.tensor([0.0, 1.0]), method="dopri5",
                                       rtol=TOL, atol=TOL)[-1]  # fmt: skip
        holder["torch"] = f.nfe
        return y

    return run


# ---------------------------------------------------------------------------- (c) likelihood
def augmented(model):
    """Batched ``[z, delta]`` dynamics with the exact trace (forward-mode Jacobian)."""

    def one(t, x):
        f, jac = model(t, x), jax.jacfwd(lambda x: model(t, x))(x)
        return f, -jnp.trace(jac)

    def field(t, y, args):
        f, dl = jax.vmap(one, in_axes=(None, 0))(t, y[0])
        return f, dl

    return field


def _std_normal_logp(z):
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * jnp.log(2 * jnp.pi)


def _aug_solve(model, x, adjoint=None):
    y0 = (x, jnp.zeros(x.shape[0], x.dtype))
    sol = dfx.diffeqsolve(
        dfx.ODETerm(augmented(model)), dfx.Dopri5(), 1.0, 0.0, None, y0,
        stepsize_controller=dfx.PIDController(rtol=TOL, atol=TOL), max_steps=4096,
        adjoint=adjoint or dfx.RecursiveCheckpointAdjoint(),
    )  # fmt: skip
    z, delta = sol.ys[0][-1], sol.ys[1][-1]
    return _std_normal_logp(z) - delta, sol.stats["num_steps"]


@eqx.filter_jit
def diffrax_logp_batched(model, x):
    return _aug_solve(model, x)


@eqx.filter_jit
def diffrax_logp_per_sample(model, x):
    lp, steps = jax.vmap(lambda xi: _aug_solve(model, xi[None]))(x)
    return lp[:, 0], steps


def likelihood(model, x, repeats, matmul, torch_why, quick=False):
    n = x.shape[0]
    holder = {}

    def lib(name, **kw):
        def run():
            lp, nfe = cnf.log_prob(model, x, **kw)
            holder[name] = (np.asarray(block(lp)), int(nfe), None)

        return run

    def plain(fn, name):
        def run():
            lp, steps = block(fn(model, x))
            nfe = 1 + 6 * np.asarray(steps)
            holder[name] = (np.asarray(lp), int(nfe.max()), float(nfe.mean()))

        return run

    at_tol = dict(solver="dopri5", rtol=TOL, atol=TOL)
    fns = {
        "default": lib("default"),
        "dopri5": lib("dopri5", **at_tol),
        "per_sample": lib("per_sample", error_control="per_sample", **at_tol),
        "plain_batched": plain(diffrax_logp_batched, "plain_batched"),
    }
    if not quick:  # one more compile (~10 s); the quick run keeps to the batched solve
        fns["plain_per_sample"] = plain(diffrax_logp_per_sample, "plain_per_sample")
    if torch_why is None:
        for threads in (1, 2):
            fns[f"torch@{threads}"] = torch_threads(torch_logp(model, x, holder), threads)
    t = interleaved(fns, repeats)
    # float64 reference; the quick run uses dopri5 at 1e-9 (one compile less costly than dopri8)
    # on the first N_REF points (a float64 solve of this kinked SELU field at 1e-12 costs ~1e5
    # evaluations per point); every implementation's max error is taken on the same points
    ref_kw = dict(solver="dopri5", rtol=1e-9, atol=1e-9) if quick else dict(rtol=1e-10, atol=1e-10)
    n_ref = min(n, N_REF)
    ref, ref_nfe = cnf.reference_log_prob(model, x[:n_ref], **ref_kw)
    labels = {
        "default": f"diffeqgen cnf.log_prob, defaults ({cnf.DEFAULT_SOLVER}, rtol = atol = "
        f"{cnf.DEFAULT_TOL:g}, error_control='{cnf.DEFAULT_ERROR_CONTROL}')",
        "dopri5": "diffeqgen cnf.log_prob(solver='dopri5', rtol = atol = 1e-5)",
        "per_sample": "diffeqgen cnf.log_prob(dopri5 1e-5, error_control='per_sample')",
        "plain_batched": "plain Diffrax, batch as one state",
        "plain_per_sample": "plain Diffrax, per-sample (vmapped) solves",
    }
    rows = []
    for name, timing in t.items():
        key = "torch" if name.startswith("torch") else name
        lp, nfe_max, nfe_mean = holder[key]
        label = labels.get(name) or (
            f"FFJORD-style torchdiffeq ({name[-1]} thread{'s' * (name[-1] != '1')})"
        )
        rows.append(row(label, timing, work=n, flops=(1 + DIM) * F_FORWARD * n * nfe_max,
                        matmul=matmul, nfe_max=nfe_max, nfe_mean=nfe_mean,
                        max_err=float(np.max(np.abs(lp[:n_ref] - ref)))))  # fmt: skip
    by = {r["impl"]: r for r in rows}
    ratios = {
        "default_over_plain_batched": by[labels["default"]]["rate"]
        / by[labels["plain_batched"]]["rate"],
        "dopri5_over_plain_batched": by[labels["dopri5"]]["rate"]
        / by[labels["plain_batched"]]["rate"],
    }
    best = best_of_threads(rows, "FFJORD-style torchdiffeq")
    if best:
        ratios["default_over_torch"] = by[labels["default"]]["rate"] / best["rate"]
        ratios["default_max_err_over_torch"] = by[labels["default"]]["max_err"] / best["max_err"]
        ratios["dopri5_over_torch"] = by[labels["dopri5"]]["rate"] / best["rate"]
        ratios["per_sample_over_torch"] = by[labels["per_sample"]]["rate"] / best["rate"]
    return dict(n=n, unit="points/s", rows=rows, ratios=ratios,
                reference=f"float64 on the first {n_ref} points, per sample, "
                + ("dopri5 rtol = atol = 1e-9" if quick else "dopri8 rtol = atol = 1e-10"),
                reference_nfe=ref_nfe)  # fmt: skip


def torch_aug(net, create_graph):
    import torch

    def field(t, state):
        with torch.enable_grad():
            x = state[:, :DIM]
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            f = net(torch.cat([x, t.expand(x.shape[0], 1)], dim=-1))
            rows = [
                torch.autograd.grad(f[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
                for i in range(DIM)
            ]
            div = sum(g[0][:, i] for i, g in enumerate(rows))
        if not create_graph:
            f, div = f.detach(), div.detach()
        return torch.cat([f, -div[:, None]], dim=1)

    return field


def torch_logp_of(net, x, create_graph):
    import torch
    import torchdiffeq

    f = _Counted(torch_aug(net, create_graph))
    state = torch.cat([x, torch.zeros(x.shape[0], 1)], dim=1)
    end = torchdiffeq.odeint(
        f, state, torch.tensor([1.0, 0.0]), method="dopri5", rtol=TOL, atol=TOL
    )[-1]
    z, delta = end[:, :DIM], end[:, DIM]
    return -0.5 * (z**2).sum(-1) - 0.5 * DIM * np.log(2 * np.pi) - delta, f.nfe


def torch_logp(model, x, holder):
    import torch

    net = torch_mlp(model)
    xt = torch.from_numpy(np.array(x))

    def run():
        lp, nfe = torch_logp_of(net, xt, create_graph=False)
        holder["torch"] = (lp.detach().numpy().astype(np.float64), nfe, float(nfe))

    return run


# ----------------------------------------------------------------------- (d) CNF ML training
def cnf_training(model, x, repeats, matmul, torch_why):
    opt = optax.adam(LR)
    nll = functools.partial(cnf.nll_loss, solver="dopri5", steps=None, rtol=TOL, atol=TOL)
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    def lib_step_fn(model, opt_state, x):
        value, g = eqx.filter_value_and_grad(nll)(model, None, x)
        u, opt_state = opt.update(g, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, u), opt_state, value

    lib_step = eqx.filter_jit(lib_step_fn)
    # not the default path (the user's jit): the step compiled with the XLA options that fit
    # passes on CPU (train.compiler_options), as fit(model, cnf.nll_loss, ...) compiles it
    lib_step_opts = eqx.filter_jit(lib_step_fn, compiler_options=train.compiler_options())

    @eqx.filter_jit
    def plain_step(model, opt_state, x):
        value, g = eqx.filter_value_and_grad(lambda m: -jnp.mean(_aug_solve(m, x)[0]))(model)
        u, opt_state = opt.update(g, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, u), opt_state, value

    values = {}

    def run(step, name):
        def go():
            values[name] = float(block(step(model, opt_state, x))[2])

        return go

    fns = {"lib": run(lib_step, "lib"), "lib_opts": run(lib_step_opts, "lib_opts"),
           "plain": run(plain_step, "plain")}  # fmt: skip
    if torch_why is None:
        for threads in (1, 2):
            fns[f"torch@{threads}"] = torch_threads(torch_cnf_step(model, x, values), threads)
    t = interleaved(fns, repeats)
    # forward NFE: what nll_loss's solve makes (its default I-controlled steps, where log_prob
    # defaults to PI control), plain Diffrax's
    _, nfe_lib = cnf.log_prob(model, x, solver="dopri5", rtol=TOL, atol=TOL, step_control="i")
    nfe_plain = 1 + 6 * int(diffrax_logp_batched(model, x)[1])
    n = x.shape[0]
    rows = []
    for name, label, nfe in (
        ("lib", "diffeqgen cnf.nll_loss + value_and_grad + Adam", int(nfe_lib)),
        ("lib_opts", "the same step jitted with fit's CPU compiler options", int(nfe_lib)),
        ("plain", "plain Diffrax (batch as one state) + value_and_grad + Adam", nfe_plain),
    ):
        rows.append(row(label, t[name], flops=3 * (1 + DIM) * F_FORWARD * n * nfe,
                        matmul=matmul, nfe_forward=nfe, loss=values[name]))  # fmt: skip
    for threads in (1, 2) if torch_why is None else ():
        nfe = values["torch_nfe"]
        rows.append(row(f"torchdiffeq odeint + backward + Adam ({threads} thread"
                        f"{'s' * (threads > 1)})", t[f"torch@{threads}"],
                        flops=3 * (1 + DIM) * F_FORWARD * n * nfe, matmul=matmul,
                        nfe_forward=nfe, loss=values["torch"]))  # fmt: skip
    ratios = {"lib_over_plain": rows[0]["rate"] / rows[2]["rate"],
              "lib_opts_over_lib": rows[1]["rate"] / rows[0]["rate"]}  # fmt: skip
    best = best_of_threads(rows, "torchdiffeq odeint + backward + Adam")
    if best:
        ratios["lib_over_torch"] = rows[0]["rate"] / best["rate"]
        ratios["lib_opts_over_torch"] = rows[1]["rate"] / best["rate"]
    return dict(batch=n, unit="steps/s", rows=rows, ratios=ratios)


def torch_cnf_step(model, x, values):
    import torch

    net = torch_mlp(model)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    xt = torch.from_numpy(np.array(x))

    def run():
        net.load_state_dict(start)  # every timed step starts from the same weights
        lp, nfe = torch_logp_of(net, xt.clone().requires_grad_(True), create_graph=True)
        loss = -lp.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        values["torch"], values["torch_nfe"] = float(loss), nfe

    return run


# ------------------------------------------------------------------------------------- main
def log(msg, t0=[]):  # noqa: B006  (progress on stderr with elapsed seconds)
    t0 = t0 or t0.append(time.perf_counter()) or t0
    print(f"[{time.perf_counter() - t0[0]:7.1f} s] {msg}", file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    repeats = args.repeats or (1 if quick else 5)
    pairs = args.pairs or (5 if quick else 21)
    torch_why = torch_available(args.no_torch)
    # --quick is compile-bound: its training calls have the short calls' 5 steps and its
    # likelihood batch is the CNF step's batch, so that each of those compiles once, not twice
    sizes = dict(
        train_steps=5 if quick else 500,
        field_steps=100 if quick else 3000,
        n_sample=200 if quick else 10_000,
        n_lik=32 if quick else 10_000,
        cnf_batch=32 if quick else 512,
    )
    key = jr.key(args.seed)
    k_model, k_field, k_lik, k_cnf = jr.split(key, 4)
    sampler = data.sampler(DATASET)
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    rates = [matmul_rate()]

    log("a. flow-matching training")
    init_model = SeluMLP(k_model)
    training = fm_training(init_model, sampler, sizes["train_steps"], repeats, rates[0],
                           torch_why, args.seed, pairs)  # fmt: skip
    log("field for b-d")
    # The field of (b)-(d): the same network trained by fit (flow matching, linear path).
    fm = functools.partial(losses.flow_matching_loss, path=paths.get_path("linear"))
    field = train.fit(init_model, fm, sampler, optimizer=optax.adam(LR), key=k_field,
                      num_steps=sizes["field_steps"], batch_size=256,
                      progress=False).ema_model  # fmt: skip
    rates.append(matmul_rate())
    log("b. sampling")
    samp = sampling(field, sizes["n_sample"], repeats, rates[-1], torch_why, args.seed, pairs)
    log("c. likelihood")
    rates.append(matmul_rate())
    lik = likelihood(field, sampler(k_lik, sizes["n_lik"]), 1 if quick else args.repeats or 3,
                     rates[-1], torch_why, quick)  # fmt: skip
    rates.append(matmul_rate())
    log("d. CNF training step")
    cnf_step = cnf_training(field, sampler(k_cnf, sizes["cnf_batch"]), repeats, rates[-1],
                            torch_why)  # fmt: skip
    log("done")
    versions = dict(jax=jax.__version__, diffrax=dfx.__version__ if hasattr(dfx, "__version__")
                    else "?", equinox=eqx.__version__)  # fmt: skip
    if torch_why is None:
        import torch
        import torchcfm
        import torchdiffeq

        versions.update(torch=torch.__version__, torchdiffeq=torchdiffeq.__version__,
                        torchcfm=getattr(torchcfm, "__version__", "?"))  # fmt: skip
    # Fractions of the machine's matmul rate: against the fastest of the measurements in this run
    # (on a busy machine a single measurement can be depressed by other processes).
    peak = max(rates)
    for rows in _all_rows(training, samp, lik, cnf_step):
        for r in rows:
            if "flops" in r:
                r["matmul_fraction"] = r["flops"] / r["seconds"] / peak
    report = dict(
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, JAX on "
        f"{jax.devices()[0].platform}",
        note=args.note,
        load_average_start=load0,
        load_average_end=os.getloadavg(),
        wall_seconds=time.perf_counter() - t_start,
        versions=versions,
        quick=quick,
        repeats=repeats,
        pairs=pairs,
        sizes=sizes,
        torch=torch_why or "measured",
        matmul_gflops=[r / 1e9 for r in rates],
        workloads=dict(training=training, sampling=samp, likelihood=lik, cnf_training=cnf_step),
    )
    name = "throughput_quick" if quick else "throughput"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{name}.md").write_text(render(report))
    print(render(report))


def _all_rows(training, samp, lik, cnf_step):
    yield training["rows"]
    yield from (v["rows"] for v in samp.values())
    yield lik["rows"]
    yield cnf_step["rows"]


def _table(rows, unit, extra=()):
    head = f"| implementation | {unit} (median, min-max) | s per call | compile s | of matmul |"
    head += "".join(f" {e} |" for e in extra)
    lines = [head, "|" + "---|" * (5 + len(extra))]
    for r in rows:
        frac = f"{100 * r['matmul_fraction']:.1f}%" if "matmul_fraction" in r else "-"
        cells = [
            r["impl"],
            f"{r['rate']:.4g} ({r['rate_min']:.4g}-{r['rate_max']:.4g})",
            f"{r['seconds']:.3g}",
            f"{r['compile_s']:.2f}",
            frac,
        ]
        for e in extra:
            v = r.get(e)
            cells.append("-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ratios(d):
    return "Ratios (this run): " + ", ".join(f"{k} {v:.3g}" for k, v in d.items()) + "."


def _paired(d):
    parts = [
        f"{k} median {p['median']:.3g} (interquartile range {p['q25']:.3g}-{p['q75']:.3g})"
        for k, p in d.items()
    ]
    n = next(iter(d.values()))["pairs"]
    return (
        f"Paired, JAX only ({n} back-to-back pairs in the order A,B,B,A,..., right after the "
        f"rounds above, no PyTorch in between; goal >= 0.95): {', '.join(parts)}."
    )


def render(r):
    w = r["workloads"]
    mm = ", ".join(f"{g:.1f}" for g in r["matmul_gflops"])
    lines = [
        f"# Throughput ({'quick, ' if r['quick'] else ''}medians of {r['repeats']} interleaved "
        "rounds; compile apart)",
        "",
        f"Machine: {r['machine']}; {r['note'] or 'state not recorded'}; load average "
        f"{r['load_average_start'][0]:.1f} at start, {r['load_average_end'][0]:.1f} at end. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}. "
        f"PyTorch peers: {r['torch']}. Float32 matmul rate (1024^2, JAX): {mm} GFLOP/s; "
        "'of matmul' = estimated FLOPs / time / the fastest of these. Total wall "
        f"{r['wall_seconds']:.0f} s.",
        "",
        f"## a. Flow-matching training, batch {w['training']['batch']}, "
        f"{w['training']['steps']} steps per call, MLP 3 x 64 SELU",
        "",
        *_table(w["training"]["rows"], "steps/s"),
        "",
        "Short calls (5 steps; per-call overhead):",
        "",
        *_table(w["training"]["short_calls"], "steps/s"),
        "",
        _ratios(w["training"]["ratios"]),
        "",
        _paired(w["training"]["paired"]),
    ]
    for kind, title in (("euler100", "Euler, 100 steps"), ("dopri5", "dopri5, rtol = atol = 1e-5")):
        s = w["sampling"][kind]
        lines += ["", f"## b. Sampling {s['n']} points, {title}", ""]
        lines += _table(s["rows"], "points/s", ("nfe",)) + ["", _ratios(s["ratios"])]
        lines += ["", _paired(s["paired"])]
    lk = w["likelihood"]
    lines += [
        "",
        f"## c. Exact CNF log-likelihood of {lk['n']} points (peers: dopri5, rtol = atol = "
        "1e-5; diffeqgen: its defaults, and at the peers' settings)",
        "",
        *_table(lk["rows"], "points/s", ("nfe_max", "nfe_mean", "max_err")),
        "",
        f"max_err: max |log p - reference| (nats), reference {lk['reference']}.",
        "",
        _ratios(lk["ratios"]),
    ]
    c = w["cnf_training"]
    lines += [
        "",
        f"## d. CNF maximum-likelihood training step, batch {c['batch']}, dopri5, rtol = atol = "
        "1e-5",
        "",
        *_table(c["rows"], "steps/s", ("nfe_forward", "loss")),
        "",
        _ratios(c["ratios"]),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
