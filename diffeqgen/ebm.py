"""Energy-based models trained by maximum likelihood with Langevin MCMC.

An energy model defines ``p(x) ∝ exp(-E(t, x, args))``. [`EnergyModel`][] is called like every
model of the package, ``model(t, x, args)`` on ONE sample, and returns the score
``-grad_x E``, so it goes straight into ``dg.solve.langevin_mcmc`` (unadjusted Langevin),
``dg.solve.predictor_corrector`` and the other samplers; ``model.energy(t, x, args)`` is the
scalar energy. The time argument is ignored by an unconditioned energy (the default) and may
carry a noise level for a noise-conditioned one.

Training uses the one loop ``dg.train.fit`` with [`ebm_loss`][], the stop-gradient surrogate
``mean E(data) - mean E(sg(model samples))`` whose gradient is the maximum-likelihood gradient
``E_data[grad E] - E_model[grad E]`` (Hinton 2002; Du and Mordatch 2019), plus the
energy-magnitude regulariser ``alpha (mean E(data)^2 + mean E(samples)^2)``. Model samples come
from Langevin MCMC (unadjusted, or Metropolis-adjusted by [`mala`][]): short-run chains from
uniform noise, or persistent chains kept in a replay buffer.

Persistent chains and `fit`. The replay buffer is a leaf of the model ([`ReplayBuffer`][],
attached by [`with_buffer`][]), so ``fit`` saves it in every checkpoint and resumes it bit for
bit with no change to ``fit``. It is updated through the gradient: [`ebm_loss`][] adds the term
``<sg(new - old), buffer> - sg(<sg(new - old), buffer>)``, whose value is exactly 0 and whose
gradient with respect to the buffer is the change ``new - old`` of the chains' states, and the
optimiser wrapper [`with_replay`][] applies that gradient to the buffer as the update (the
wrapped optimiser sees only the energy's parameters, so Adam, clipping and weight decay never
touch the buffer). Train with ``optimizer=with_replay(opt)`` and keep the buffer trainable
(the default ``trainable=None`` of ``fit``). The EMA model of ``fit`` carries an average of
buffer states that nothing uses; sample from its energy.

Time convention of the package: t = 0 noise, t = 1 data; the energy is taken at ``t = 1`` by
default.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from . import nn
from ._checks import check_int, check_nonnegative, check_positive
from ._conditioning import batched, one_sample, pack
from ._failures import first_bad
from ._samplers import _fixed, langevin_mcmc
from ._solvers import Solution, _check_x0
from ._types import RealScalarLike
from .losses import split_batch

__all__ = [
    "EnergyModel",
    "energy_mlp",
    "ReplayBuffer",
    "with_buffer",
    "with_replay",
    "mala",
    "ebm_surrogate",
    "ebm_loss",
]


class ReplayBuffer(eqx.Module):
    """States of the persistent Langevin chains, ``x`` of shape ``(capacity, *event)``.

    A leaf of an [`EnergyModel`][] (see [`with_buffer`][]); updated by [`ebm_loss`][] through
    the optimiser wrapper [`with_replay`][].
    """

    x: Array

    def __check_init__(self):
        if jnp.ndim(self.x) < 2 or jnp.shape(self.x)[0] < 1:
            raise ValueError(
                "x must hold the chains' states, shape (capacity >= 1, *event), got shape "
                f"{tuple(jnp.shape(self.x))}"
            )


class EnergyModel(eqx.Module):
    """An energy ``E(t, x, args)`` whose call is the score ``-grad_x E`` (one sample).

    Construct as ``EnergyModel(net, time_conditioned=False, base_std=None, buffer=None)``.

    Attributes:
        net: The energy network. With ``time_conditioned=False`` it is called as ``net(x)``
            (e.g. ``dg.nn.EnergyMLP``); with ``time_conditioned=True`` as ``net(t, x, args)``
            (e.g. ``dg.nn.MLP(d, 1)``, noise- or class-conditioned). It returns a scalar or an
            array of shape ``(1,)``.
        time_conditioned: Whether ``net`` takes ``(t, x, args)``.
        base_std: If given, ``|x|^2 / (2 base_std^2)`` is added to the network's energy: the
            model is a tilt of the base N(0, base_std^2 I), so its density decays off the data
            however the network extrapolates (a network alone is often flat far from the data,
            where Langevin chains then wander off).
        buffer: Optional [`ReplayBuffer`][] of persistent chains (see [`with_buffer`][]).
    """

    net: Any
    time_conditioned: bool = eqx.field(static=True, default=False)
    base_std: float | None = eqx.field(static=True, default=None)
    buffer: ReplayBuffer | None = None

    def __check_init__(self):
        if not callable(self.net):
            raise TypeError(
                "net must be a callable energy network (net(x), or net(t, x, args) with "
                f"time_conditioned=True), got {type(self.net).__name__}"
            )
        if self.base_std is not None:
            check_positive("base_std", self.base_std)

    def energy(self, t: RealScalarLike, x: Float[Array, " *event"], args: Any = None) -> Array:
        """Energy ``E(t, x, args)`` of one sample, a scalar (the density is ``∝ exp(-E)``)."""
        out = jnp.asarray(self.net(t, x, args) if self.time_conditioned else self.net(x))
        if out.shape not in ((), (1,)):
            raise ValueError(
                f"the energy network must return a scalar or shape (1,) on one sample, got "
                f"shape {tuple(out.shape)} (x has shape {tuple(jnp.shape(x))})"
            )
        out = out.reshape(())
        if self.base_std is not None:
            out = out + 0.5 * jnp.sum(jnp.square(x)) / self.base_std**2
        return out

    def __call__(
        self, t: RealScalarLike, x: Float[Array, " *event"], args: Any = None
    ) -> Float[Array, " *event"]:
        """Score ``-grad_x E(t, x, args)`` of one sample, the shape of ``x``."""
        return -jax.grad(lambda y: self.energy(t, y, args))(x)


def energy_mlp(
    in_size: int,
    *,
    width: int = 64,
    depth: int = 3,
    activation: str = "silu",
    time_conditioned: bool = False,
    base_std: float | None = None,
    key: PRNGKeyArray,
) -> EnergyModel:
    """An [`EnergyModel`][] on ``R^in_size`` built on ``dg.nn.EnergyMLP``.

    With ``time_conditioned=True`` the network is ``dg.nn.MLP(in_size, 1)`` with a sinusoidal
    embedding of ``t`` (a noise-conditioned energy). ``base_std`` adds the confining
    ``|x|^2 / (2 base_std^2)`` (see [`EnergyModel`][]).
    """
    if time_conditioned:
        net = nn.MLP(in_size, 1, width=width, depth=depth, activation=activation, key=key)
    else:
        net = nn.EnergyMLP(in_size, width=width, depth=depth, activation=activation, key=key)
    return EnergyModel(net, time_conditioned=time_conditioned, base_std=base_std)


def with_buffer(model: EnergyModel, x0: Float[ArrayLike, " capacity *event"]) -> EnergyModel:
    """``model`` with a [`ReplayBuffer`][] of persistent chains started at ``x0``.

    Args:
        model: An [`EnergyModel`][].
        x0: Initial chain states ``(capacity, *event)``, e.g. uniform noise over the data's box.

    Returns:
        A copy of ``model`` whose ``buffer`` holds ``x0``; train it with [`ebm_loss`][] and
        ``optimizer=with_replay(opt)``.
    """
    if not isinstance(model, EnergyModel):
        raise TypeError(f"model must be an EnergyModel, got {type(model).__name__}")
    x0 = _check_x0(x0)
    return EnergyModel(
        model.net, model.time_conditioned, base_std=model.base_std, buffer=ReplayBuffer(x0)
    )


def _apply_delta() -> optax.GradientTransformation:
    """The update of a buffer leaf is its gradient (the chains' change, see the module doc)."""
    return optax.GradientTransformation(lambda p: optax.EmptyState(), lambda g, s, p=None: (g, s))


def _labels(params):
    def label(node):
        if isinstance(node, ReplayBuffer):
            return jax.tree_util.tree_map(lambda _: "buffer", node)
        return "params"

    return jax.tree_util.tree_map(label, params, is_leaf=lambda n: isinstance(n, ReplayBuffer))


def with_replay(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """Optimiser for a model with a replay buffer: ``optimizer`` plus the buffer's update.

    ``optimizer`` updates the energy's parameters; the buffer is replaced by the chains' new
    states: its gradient from [`ebm_loss`][] is the change of the chains' states, applied as
    the update (so ``buffer + update`` is the new state, to rounding). A model
    without a buffer trains exactly as with ``optimizer``.

    Args:
        optimizer: Any ``optax.GradientTransformation`` (e.g. ``dg.train.make_optimizer``).

    Returns:
        An ``optax.GradientTransformation`` to pass to ``dg.train.fit``.
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    return optax.multi_transform({"params": optimizer, "buffer": _apply_delta()}, _labels)


# ----------------------------------------------------------------------------------- MALA


def _energy_fn(energy):
    if isinstance(energy, EnergyModel):
        return energy.energy
    if not callable(energy):
        raise TypeError(f"energy must be callable energy(t, x, args), got {type(energy).__name__}")
    return energy


@eqx.filter_jit
def _mala_core(energy, key, x, t, h, num_steps, temperature, args):
    def eg(t, y, a):
        e, g = jax.value_and_grad(lambda z: jnp.asarray(energy(t, z, a)).reshape(()))(y)
        return e, g

    eg_b = batched(eg)
    flat = lambda v: v.reshape(v.shape[0], -1)  # noqa: E731
    noise = jnp.sqrt(2.0 * h * temperature)

    def body(carry, i):
        x, e, g, acc, bad = carry
        kz, ku = jr.split(jr.fold_in(key, i))
        z = jr.normal(kz, x.shape, x.dtype)
        y = x - h * g + noise * z
        ey, gy = eg_b(t, y, args)
        # log q(x | y) - log q(y | x) for q(y | x) = N(x - h grad E(x), 2 h T I)
        back = jnp.sum(flat(x - y + h * gy) ** 2, axis=-1) / (4.0 * h * temperature)
        log_ratio = -(ey - e) / temperature - back + 0.5 * jnp.sum(flat(z) ** 2, axis=-1)
        u = jr.uniform(ku, e.shape, x.dtype)
        ok = jnp.log(u) < log_ratio  # NaN (a non-finite proposal) is rejected
        sel = lambda a, b: jnp.where(ok.reshape(ok.shape + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
        x, e, g = sel(y, x), jnp.where(ok, ey, e), sel(gy, g)
        # a chain whose state, energy or gradient is non-finite is stuck (NaN proposals are
        # rejected forever): that is the failure reported, at its first step
        return (x, e, g, acc + ok, first_bad(bad, (x, e, g), i + 1)), None

    e, g = eg_b(t, x, args)
    acc = jnp.zeros(x.shape[0], jnp.int32)
    bad = jnp.zeros((), jnp.int32)
    (x, _, _, acc, bad), _ = jax.lax.scan(body, (x, e, g, acc, bad), jnp.arange(num_steps))
    return x, acc, bad


def mala(
    energy,
    x0: Float[ArrayLike, " n *event"],
    *,
    key: PRNGKeyArray,
    step_size: RealScalarLike,
    num_steps: int,
    temperature: RealScalarLike = 1.0,
    t: RealScalarLike = 1.0,
    args: Any = None,
    cond: Any = None,
    throw: bool = True,
) -> Solution:
    r"""Metropolis-adjusted Langevin (MALA), every chain in parallel (one compiled scan).

    Proposal ``y = x - h grad E(x) + sqrt(2 h temperature) z`` (the step of
    ``dg.solve.langevin_mcmc`` with score ``-grad E``), accepted with probability
    ``min(1, exp(-(E(y) - E(x)) / temperature) q(x | y) / q(y | x))``, so the chains leave
    ``p ∝ exp(-E / temperature)`` exactly invariant at any step size (the unadjusted chain is
    biased by O(h)). The acceptance test needs the energy itself, not only the score.

    Args:
        energy: An [`EnergyModel`][diffeqgen.ebm.EnergyModel] (its ``energy`` is used) or a callable
            ``energy(t, x, args) -> scalar`` on ONE sample.
        x0: Initial chains ``(n, *event)``.
        key: PRNG key.
        step_size: h > 0.
        num_steps: Number of proposals per chain.
        temperature: > 0 (1: sample ``exp(-E)``).
        t: Time (or noise level) at which the energy is taken.
        args: Passed to ``energy`` (shared by every chain).
        cond: Optional per-chain condition (leading axis n), mapped with the chains.
        throw: raise ``RuntimeError`` naming the step when a chain's state, energy or gradient
            becomes non-finite (a stuck chain: its NaN proposals are all rejected); ``False``
            returns the ``Solution`` with ``ok``, ``fail_step``, ``fail_t`` (NaN) instead.

    Returns:
        ``Solution`` with the final states ``x``, ``nfe = num_steps + 1`` (energy-and-gradient
        evaluations per chain), ``num_steps``, and per chain (arrays ``(n,)``) the accepted
        and rejected proposals ``num_accepted``, ``num_rejected``; the acceptance rate of each
        chain is ``num_accepted / num_steps``.
    """
    fn = _energy_fn(energy)
    step_size = check_positive("step_size", step_size, traced_ok=True)
    num_steps = check_int("num_steps", num_steps)
    temperature = check_positive("temperature", temperature, traced_ok=True)
    x = _check_x0(x0)
    args = pack(args, cond, x.shape[0], "mala")
    one = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct((), x.dtype), one, one_sample(args))
    if getattr(out, "shape", None) not in ((), (1,)):
        raise ValueError(
            f"energy(t, x, args) must return a scalar on one sample (x of shape "
            f"{tuple(x.shape[1:])}), got {getattr(out, 'shape', type(out))}"
        )
    ta = jnp.asarray(t, x.dtype)
    h = jnp.asarray(step_size, x.dtype)
    temp = jnp.asarray(temperature, x.dtype)
    x, acc, bad = _mala_core(fn, key, x, ta, h, num_steps, temp, args)
    sol = _fixed(
        x, bad, num_steps + 1, num_steps, where="mala", throw=throw, total=num_steps,
        describe=lambda k: f"step {k} of {num_steps}",
        hint="Check the energy and its gradient for NaN/inf at the chains' states",
    )  # fmt: skip
    return Solution(
        x=sol.x, nfe=sol.nfe, num_steps=num_steps, num_accepted=acc,
        num_rejected=num_steps - acc, ok=sol.ok, fail_step=sol.fail_step, fail_t=sol.fail_t,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ loss


def ebm_surrogate(
    model: EnergyModel,
    x_data: Float[Array, " n *event"],
    x_model: Float[Array, " m *event"],
    *,
    alpha: RealScalarLike = 0.0,
    t: RealScalarLike = 1.0,
    cond_data: Any = None,
    cond_model: Any = None,
) -> tuple[Array, dict]:
    r"""The EBM maximum-likelihood surrogate on given data and model samples.

    ``L = mean E(x_data) - mean E(sg(x_model)) + alpha (mean E(x_data)^2 + mean E(x_model)^2)``
    with ``sg`` the stop-gradient. For samples ``x_model ~ p_theta ∝ exp(-E_theta)`` its
    gradient in theta is ``E_data[grad E] - E_model[grad E]``, the gradient of the negative
    log-likelihood ``E_data[E] + log Z`` (plus the regulariser's); its value is not the
    likelihood.

    Args:
        model: An [`EnergyModel`][].
        x_data: Data ``(n, *event)``.
        x_model: Model samples ``(m, *event)`` (no gradient flows into them).
        alpha: Weight of the energy-magnitude regulariser, >= 0.
        t: Time at which the energy is taken.
        cond_data: Optional per-sample condition of the data (the energy's ``args``).
        cond_model: Optional per-sample condition of the model samples.

    Returns:
        ``(loss, aux)`` with ``aux`` = {"energy_data": mean E(x_data), "energy_model":
        mean E(x_model)}.
    """
    alpha = check_nonnegative("alpha", alpha, traced_ok=True)
    x_model = jax.lax.stop_gradient(x_model)

    def energies(x, cond):
        axes = None if cond is None else 0
        return jax.vmap(lambda xi, ci: model.energy(t, xi, ci), in_axes=(0, axes))(x, cond)

    e_d, e_m = energies(x_data, cond_data), energies(x_model, cond_model)
    mean_d, mean_m = jnp.mean(e_d), jnp.mean(e_m)
    loss = mean_d - mean_m + alpha * (jnp.mean(e_d**2) + jnp.mean(e_m**2))
    return loss, {"energy_data": mean_d, "energy_model": mean_m}


def _chains(model, key, x0, sampler, step_size, num_steps, t, cond):
    frozen = jax.tree_util.tree_map(
        lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a, model
    )
    if sampler == "ula":
        sol = langevin_mcmc(
            frozen, x0, key=key, step_size=step_size, num_steps=num_steps, t=t, cond=cond
        )
        return sol.x, None
    sol = mala(frozen, x0, key=key, step_size=step_size, num_steps=num_steps, t=t, cond=cond)
    return sol.x, jnp.mean(sol.num_accepted) / num_steps


def ebm_loss(
    model: EnergyModel,
    key: PRNGKeyArray,
    batch: Any,
    *,
    step_size: RealScalarLike = 0.01,
    num_steps: int = 20,
    num_chains: int | None = None,
    sampler: str = "ula",
    alpha: RealScalarLike = 0.0,
    init_scale: RealScalarLike = 4.0,
    reinit: RealScalarLike = 0.05,
    t: RealScalarLike = 1.0,
) -> tuple[Array, dict]:
    r"""EBM maximum-likelihood loss with Langevin model samples, for ``dg.train.fit``.

    Draws ``num_chains`` model samples by ``num_steps`` Langevin steps (``sampler="ula"``:
    ``dg.solve.langevin_mcmc``; ``"mala"``: [`mala`][]) on the current energy (no gradient
    through the chains) and returns [`ebm_surrogate`][]. Chains start from uniform noise on
    ``[-init_scale, init_scale]^event`` (short-run), or, when the model has a buffer
    (see [`with_buffer`][]), from random distinct rows of the buffer, each replaced by fresh
    noise with probability ``reinit``; the chains' final states are written back into those
    rows through the gradient (train with ``optimizer=with_replay(opt)``).

    Args:
        model: An [`EnergyModel`][], with or without buffer.
        key: PRNG key of this step.
        batch: Data ``(n, *event)``, or ``(x, cond)`` / ``{"x": x, "cond": cond}`` (conditions
            only with short-run chains: chain ``i`` gets the condition of row ``i``, so then
            ``num_chains <= n``).
        step_size: Langevin step h > 0.
        num_steps: Langevin steps per update.
        num_chains: Number of chains (model samples); default the batch size. With a buffer,
            at most its capacity.
        sampler: "ula" or "mala".
        alpha: Energy-magnitude regulariser weight, >= 0 (0: none). It also pulls the energy of
            far-out model samples towards 0, which can dig spurious wells beyond the data
            (results/ebm_langevin); a confining ``base_std`` (see [`EnergyModel`][]) bounds the
            energy without it.
        init_scale: Half-width of the uniform noise the chains start from, > 0.
        reinit: Probability in [0, 1] that a persistent chain restarts from noise.
        t: Time at which the energy is taken.

    Returns:
        ``(loss, aux)``; aux holds the mean energies of data and model samples, and for
        ``"mala"`` the acceptance rate.
    """
    if not isinstance(model, EnergyModel):
        raise TypeError(f"model must be an EnergyModel, got {type(model).__name__}")
    if sampler not in ("ula", "mala"):
        raise ValueError(f"unknown sampler {sampler!r}; expected one of: ula, mala")
    num_steps = check_int("num_steps", num_steps)
    init_scale = check_positive("init_scale", init_scale, traced_ok=True)
    reinit = check_nonnegative("reinit", reinit, traced_ok=True)
    if not isinstance(reinit, jax.Array) and reinit > 1:
        raise ValueError(f"reinit must be a probability in [0, 1], got {reinit!r}")
    x, cond = split_batch(batch)
    m = x.shape[0] if num_chains is None else check_int("num_chains", num_chains)
    k_init, k_chain, k_pick, k_re = jr.split(key, 4)
    shape = (m,) + x.shape[1:]
    noise = jr.uniform(k_init, shape, x.dtype, -init_scale, init_scale)
    buf = model.buffer
    if buf is None:
        if cond is not None and m > x.shape[0]:
            raise ValueError(
                f"num_chains={m} exceeds the batch size {x.shape[0]}: with a condition each "
                "chain takes the condition of one data row"
            )
        cond_m = None if cond is None else jax.tree_util.tree_map(lambda c: c[:m], cond)
        x_m, acc = _chains(model, k_chain, noise, sampler, step_size, num_steps, t, cond_m)
        channel = 0.0
    else:
        if cond is not None:
            raise ValueError("persistent chains (a model with a buffer) take no condition")
        states = buf.x
        if states.shape[1:] != x.shape[1:] or m > states.shape[0]:
            raise ValueError(
                f"the buffer has shape {tuple(states.shape)}; it needs the data's event shape "
                f"{tuple(x.shape[1:])} and at least num_chains={m} rows"
            )
        idx = jr.choice(k_pick, states.shape[0], (m,), replace=False)
        fresh = jr.bernoulli(k_re, reinit, (m,)).reshape((m,) + (1,) * (x.ndim - 1))
        start = jnp.where(fresh, noise, jax.lax.stop_gradient(states)[idx])
        x_m, acc = _chains(model, k_chain, start, sampler, step_size, num_steps, t, None)
        new = jax.lax.stop_gradient(states).at[idx].set(x_m)
        delta = jax.lax.stop_gradient(new - states)
        dot = jnp.vdot(delta, states)
        channel = dot - jax.lax.stop_gradient(dot)  # value 0, gradient delta (see module doc)
    loss, aux = ebm_surrogate(
        model, x, x_m, alpha=alpha, t=t, cond_data=cond,
        cond_model=None if cond is None or buf is not None else cond_m,
    )  # fmt: skip
    if acc is not None:
        aux["acceptance"] = acc
    return loss + channel, aux
