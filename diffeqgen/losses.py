"""Training objectives: every loss is ``loss(model, key, batch, **config) -> scalar``.

Fix the configuration with ``functools.partial`` (or :func:`get_loss`, which also validates it
eagerly) and hand the result to ``diffeqgen.train.fit``. The model is called on ONE sample,
``model(t, x)`` (Diffrax convention, ``x`` of shape ``event``), and vmapped over the batch.

Time convention: t = 0 noise/source, t = 1 data. On a Gaussian path
``x_t = alpha(t) x1 + sigma(t) eps`` with t ~ U[path.t_min, path.t_max] (the path's endpoint
epsilon keeps every target finite).

Reduction: every loss is the squared Euclidean norm over the event dimensions, averaged over the
batch (and over the noise draws where there are several), i.e. ``E ||pred - target||^2`` exactly as
the formulas in the texts; it is not divided by the dimension.

Which network each loss trains (the ``kind`` to give ``paths.as_vector_field``/``as_score``):

=====================  ==========================================  =========================
loss                   target of ``model(t, x_t)``                 kind
=====================  ==========================================  =========================
flow_matching_loss     u_t(x_t | x1) = alpha' x1 + sigma' eps      "velocity"
score_matching_loss    grad log p_t(x_t | x1) = -eps / sigma       "score"
denoiser_loss          x1 (so D = E[x1 | x_t])                     "denoiser"
eps_loss               eps                                         "eps"
ddpm_loss              eps at discrete step k, t_k = 1 - k / T     "eps" (DDPM schedule)
dsm_loss / ncsm_loss   score of the data smoothed by N(0, s^2 I)   called as model(s, x)
interpolant_loss       x1 - x0 on x_t = (1 - t) x0 + t x1          "velocity" (data to data)
=====================  ==========================================  =========================
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import couplings as _couplings
from . import paths as _paths
from ._checks import check_choice, check_int, check_positive
from ._ot import ot_pairing

__all__ = [
    "flow_matching_loss",
    "score_matching_loss",
    "denoiser_loss",
    "eps_loss",
    "dsm_loss",
    "ncsm_loss",
    "ddpm_loss",
    "interpolant_loss",
    "ot_pairing",
    "get_loss",
    "LOSSES",
    "COUPLINGS",
]

COUPLINGS = _couplings.COUPLING_NAMES
_COUPLING_SALT = 0xC0
SCORE_WEIGHTINGS = ("sigma2", "none")

Model = Callable[..., Array]
Scalar = Float[Array, ""]


def _resolve_path(path) -> _paths.GaussianPath:
    """Accept a GaussianPath or a path name (validated by ``paths.get_path``)."""
    if isinstance(path, str):
        return _paths.get_path(path)
    if not isinstance(path, _paths.GaussianPath):
        raise TypeError(
            f"path must be a GaussianPath or one of {', '.join(_paths.PATH_NAMES)}, "
            f"got {type(path).__name__}"
        )
    return path


def _sqnorm(a: Array) -> Array:
    """Squared Euclidean norm over all but the leading (batch) axis."""
    return jnp.sum(a.reshape(a.shape[0], -1) ** 2, axis=1)


def _apply(model: Model, t: Array, x: Array) -> Array:
    return jax.vmap(model)(t, x)


def _path_sample(path, key: PRNGKeyArray, x1: Array):
    """Draw t ~ U[t_min, t_max] and eps ~ N(0, I); return (t, eps, x_t)."""
    t_key, eps_key = jr.split(key)
    n = x1.shape[0]
    t = jr.uniform(t_key, (n,), x1.dtype, minval=path.t_min, maxval=path.t_max)
    eps = jr.normal(eps_key, x1.shape, x1.dtype)
    xt = jax.vmap(path.interpolate)(x1, eps, t)
    return t, eps, xt


def _vmap_scalar(fn, t: Array) -> Array:
    return jax.vmap(fn)(t)


def _bcast(s: Array, x: Array) -> Array:
    return s.reshape(s.shape + (1,) * (x.ndim - 1))


def flow_matching_loss(
    model: Model,
    key: PRNGKeyArray,
    x1: Any,
    *,
    path: Any,
    source: Any = None,
    coupling: Any = None,
) -> Scalar:
    """Conditional flow matching (text 002, Algorithm 1) on a Gaussian path.

    L = E_{t, x1, eps} || v(t, x_t) - u_t(x_t | x1) ||^2 with x_t = alpha(t) x1 + sigma(t) eps and
    the conditional velocity on the path u_t = alpha'(t) x1 + sigma'(t) eps
    (``path.cond_velocity_on_path``). Its minimiser is the marginal velocity field.

    The source points ``eps`` (``x0``) are standard normal by default, drawn independently of the
    data; ``source=`` draws them from another sampler, a paired batch ``{"x0": x0, "x": x1}``
    gives them with the data, and ``coupling=`` re-pairs them with the data before the path is
    built (``diffeqgen.couplings``). On the linear path with ``coupling="ot"``
    (``couplings.minibatch_ot()``) between noise and data this is OT-CFM; on given reflow pairs
    it is one round of rectified-flow retraining.

    Args:
        model: velocity network ``model(t, x) -> (event)``.
        key: PRNG key (t, eps and the coupling).
        x1: data batch ``(n, *event)``, or a paired batch ``{"x0": x0, "x": x1}``.
        path: a ``GaussianPath`` or a name for ``paths.get_path``.
        source: ``None`` (standard normal), a sampler ``(key, n) -> (n, *event)``, a dataset name
            or an array to draw rows from; not allowed with a paired batch.
        coupling: ``None`` (keep the pairs as drawn or given), ``"independent"``, ``"ot"``, or a
            coupling function ``(key, x0, x1) -> (x0, x1)`` (``couplings.minibatch_ot(...)``).

    Returns:
        Scalar loss.
    """
    path = _resolve_path(path)
    x0, x1, sampled = _source_batch(x1, source)
    coupling = _couplings.get_coupling(coupling)
    if x0 is None and source is None and coupling is None:
        t, eps, xt = _path_sample(path, key, x1)
    else:
        t_key, eps_key = jr.split(key)
        n = x1.shape[0]
        t = jr.uniform(t_key, (n,), x1.dtype, minval=path.t_min, maxval=path.t_max)
        if x0 is None:
            x0 = (
                jr.normal(eps_key, x1.shape, x1.dtype)
                if source is None
                else _draw_source(source, eps_key, n, x1)
            )
        eps, x1, _ = _couplings.couple(
            jr.fold_in(key, _COUPLING_SALT), x0, x1, None, coupling, sampled=sampled
        )
        xt = jax.vmap(path.interpolate)(x1, eps, t)
    target = jax.vmap(path.cond_velocity_on_path)(x1, eps, t)
    return jnp.mean(_sqnorm(_apply(model, t, xt) - target))


def score_matching_loss(
    model: Model,
    key: PRNGKeyArray,
    x1: Float[Array, " n *event"],
    *,
    path: Any,
    weighting: str = "sigma2",
) -> Scalar:
    """Conditional (denoising) score matching on a Gaussian path (text 002, Q5a).

    L = E lambda(t) || s(t, x_t) - grad log p_t(x_t | x1) ||^2 with the conditional score
    -(x_t - alpha x1) / sigma^2 = -eps / sigma. ``weighting="sigma2"`` (default) uses
    lambda(t) = sigma(t)^2, i.e. L = E || sigma s + eps ||^2: every t contributes O(1), whereas the
    unweighted loss ("none") grows like 1/sigma^2 near the data end and is dominated by the few
    draws there. The weighting does not change the minimiser (the marginal score).
    """
    check_choice("weighting", weighting, SCORE_WEIGHTINGS)
    path = _resolve_path(path)
    t, eps, xt = _path_sample(path, key, x1)
    pred = _apply(model, t, xt)
    if weighting == "sigma2":
        sig = _bcast(_vmap_scalar(path.sigma, t), x1)
        return jnp.mean(_sqnorm(sig * pred + eps))
    target = jax.vmap(path.cond_score)(xt, x1, t)
    return jnp.mean(_sqnorm(pred - target))


def denoiser_loss(
    model: Model, key: PRNGKeyArray, x1: Float[Array, " n *event"], *, path: Any
) -> Scalar:
    """Denoiser (x0-prediction) objective, text 001 eqs. (3)-(5): L = E || D(t, x_t) - x1 ||^2.

    The minimiser is the MMSE estimate D(t, x) = E[x1 | x_t = x], from which the score is
    (alpha D - x) / sigma^2 (``paths.convert`` / ``as_score(..., kind="denoiser")``).
    """
    path = _resolve_path(path)
    t, _, xt = _path_sample(path, key, x1)
    return jnp.mean(_sqnorm(_apply(model, t, xt) - x1))


def eps_loss(
    model: Model, key: PRNGKeyArray, x1: Float[Array, " n *event"], *, path: Any
) -> Scalar:
    """Continuous-time noise prediction: L = E || eps_hat(t, x_t) - eps ||^2 on a Gaussian path."""
    path = _resolve_path(path)
    t, eps, xt = _path_sample(path, key, x1)
    return jnp.mean(_sqnorm(_apply(model, t, xt) - eps))


def dsm_loss(
    model: Model,
    key: PRNGKeyArray,
    x: Float[Array, " n *event"],
    *,
    sigma: float | int = 0.1,
    k: int = 20,
) -> Scalar:
    """Single-noise-level denoising score matching with k draws per point (text 004, eq. 1).

    L = 1 / (n k sigma^4) sum_i sum_j || x~_ij + sigma^2 f(x~_ij) - x_i ||^2 with
    x~_ij = x_i + sigma w_ij, computed in the equivalent, better-conditioned form
    mean_ij || f(x~_ij) + w_ij / sigma ||^2. The minimiser is the score of the data convolved with
    N(0, sigma^2 I); the k draws only reduce the variance of the estimate.

    The score network is noise-conditional by convention: it is called as ``model(sigma, x~)``
    (``t`` carries the noise level, a constant here, so a time-conditioned MLP simply sees one
    value). Sample it with Langevin dynamics using ``lambda t, x, args: model(sigma, x)``.

    Args:
        model: score network ``model(sigma, x) -> (event)``.
        key: PRNG key.
        x: data batch ``(n, *event)``.
        sigma: noise standard deviation (> 0).
        k: noise draws per data point (>= 1).
    """
    sigma = check_positive("sigma", sigma)
    k = check_int("k", k, minimum=1)
    n = x.shape[0]
    w = jr.normal(key, (n, k, *x.shape[1:]), x.dtype)
    xt = (x[:, None] + sigma * w).reshape(n * k, *x.shape[1:])
    w = w.reshape(n * k, *x.shape[1:])
    s = jnp.full((n * k,), sigma, x.dtype)
    return jnp.mean(_sqnorm(_apply(model, s, xt) + w / sigma))


def _check_sigmas(sigmas) -> np.ndarray:
    try:
        sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    except Exception:  # noqa: BLE001  (a tracer or a non-numeric sequence)
        raise TypeError(f"sigmas must be concrete positive numbers, got {sigmas!r}") from None
    if sig.size < 1:
        raise ValueError(f"sigmas must hold at least one noise level, got {sigmas!r}")
    for s_ in sig.tolist():
        check_positive("sigmas", s_)
    return sig


def ncsm_loss(
    model: Model,
    key: PRNGKeyArray,
    x: Float[Array, " n *event"],
    *,
    sigmas: Any = (1.0, 0.5, 0.25, 0.1, 0.05),
    k: int = 1,
) -> Scalar:
    """Noise-conditional (multi-sigma) denoising score matching with lambda(sigma) = sigma^2.

    Each point draws a level sigma uniformly from ``sigmas`` and k noise draws;
    L = mean sigma^2 || s(sigma, x~) + w / sigma ||^2 = mean || sigma s(sigma, x~) + w ||^2, so each
    level contributes O(1) (Song and Ermon's weighting). The network is called as
    ``model(sigma, x~)``; anneal sigma from large to small in Langevin sampling.
    """
    sig = jnp.asarray(_check_sigmas(sigmas), dtype=x.dtype)
    k = check_int("k", k, minimum=1)
    n = x.shape[0]
    idx_key, w_key = jr.split(key)
    s = jnp.repeat(sig[jr.randint(idx_key, (n,), 0, sig.size)], k)
    w = jr.normal(w_key, (n * k, *x.shape[1:]), x.dtype)
    xt = jnp.repeat(x, k, axis=0) + _bcast(s, w) * w
    return jnp.mean(_sqnorm(_bcast(s, w) * _apply(model, s, xt) + w))


def ddpm_loss(
    model: Model, key: PRNGKeyArray, x0: Float[Array, " n *event"], *, schedule: Any
) -> Scalar:
    """DDPM epsilon prediction (text 004, Algorithm 1), discrete steps.

    k ~ U{1, ..., T}, x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps, L = E || eps_hat - eps ||^2
    (text 004 writes sqrt(alpha_t) x0, a typo for sqrt(abar_t)). The network sees our time
    convention, t_k = 1 - k / T (k = T is pure noise at t = 0): ``model(t_k, x_k)``.
    ``x0`` is the clean data (DDPM's naming; it is x1 in our time convention).

    Args:
        model: noise-prediction network ``model(t_k, x_k) -> (event)``.
        key: PRNG key (steps and noise).
        x0: clean data batch ``(n, *event)``.
        schedule: a ``paths.DDPMSchedule`` (``num_steps`` T and ``alpha_bars`` of length T,
            ``alpha_bars[k - 1]`` for step k).
    """
    T = check_int("schedule.num_steps", int(schedule.num_steps), minimum=1)
    abar = jnp.asarray(schedule.alpha_bars, x0.dtype).reshape(-1)
    if abar.shape[0] != T:
        raise ValueError(
            f"schedule.alpha_bars must have length num_steps={T}, got shape {abar.shape}"
        )
    n = x0.shape[0]
    k_key, eps_key = jr.split(key)
    k = jr.randint(k_key, (n,), 1, T + 1)
    a = _bcast(abar[k - 1], x0)
    eps = jr.normal(eps_key, x0.shape, x0.dtype)
    xk = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
    t = schedule.time(k).astype(x0.dtype)
    return jnp.mean(_sqnorm(_apply(model, t, xk) - eps))


def _draw_source(source, key: PRNGKeyArray, n: int, like: Array) -> Array:
    if isinstance(source, str):
        from . import data as _data

        return _data.sample(source, key, n).astype(like.dtype)
    if callable(source):
        return jnp.asarray(source(key, n), like.dtype)
    arr = jnp.asarray(source, like.dtype)
    if arr.shape[1:] != like.shape[1:]:
        raise ValueError(
            f"source must have event shape {like.shape[1:]} like the batch, got {arr.shape}"
        )
    return arr[jr.randint(key, (n,), 0, arr.shape[0])]


def _source_batch(batch: Any, source: Any) -> tuple[Array | None, Array, bool]:
    """(given x0 or None, target x1, whether x0 will be sampled) of a plain or paired batch."""
    x0, rest = _couplings.split_pairs(batch)
    if x0 is None:
        return None, batch, True
    if source is not None:
        raise ValueError(
            'a paired batch {"x0": x0, "x": x1} already gives the source points; pass '
            f"source=None, got source={source!r}"
        )
    return x0, rest["x"], False


def interpolant_loss(
    model: Model,
    key: PRNGKeyArray,
    batch: Any,
    *,
    source: Any = None,
    coupling: Any = None,
    ot_epsilon: float | int = 0.01,
    ot_iters: int = 50,
) -> Scalar:
    """Data-to-data velocity matching on the straight interpolant (text 001, eq. 7).

    x0 ~ source, x1 = ``batch`` (the target), x_t = (1 - t) x0 + t x1 with t ~ U[0, 1],
    L = E || v(t, x_t) - (x1 - x0) ||^2. Integrating dx/dt = v from t = 0 (source) to t = 1 carries
    the source distribution to the target.

    Pairs: x0 is drawn from ``source`` independently of the batch, or given with it in a paired
    batch ``{"x0": x0, "x": x1}`` (e.g. reflow pairs, ``diffeqgen.couplings``). Couplings:
    ``None`` keeps the pairs as drawn or given (independent for a sampled source);
    ``"independent"`` shuffles them; ``"ot"`` pairs them by minibatch optimal transport for the
    squared Euclidean cost, on device: log-domain Sinkhorn (final regulariser ``ot_epsilon`` x
    mean cost, ``ot_iters`` iterations with epsilon scaling), then each x0 draws its partner from
    its row of the plan (:func:`ot_pairing`). Why Sinkhorn and not an exact assignment:
    Hungarian/auction solvers are sequential with data-dependent control flow (slow to compile
    and run inside the fused ``lax.scan`` training step, or a host round trip through scipy),
    whereas Sinkhorn is a fixed number of dense, vectorised ``logsumexp`` sweeps. Its expected
    pairing cost is within about 1-2% of the exact optimum (tested against
    ``scipy.optimize.linear_sum_assignment``), which is all minibatch OT needs: the minibatch
    itself is a random approximation of the population OT plan. OT pairs cross less, so the
    learned paths are straighter and need far fewer solver steps. Any coupling function
    ``(key, x0, x1) -> (x0, x1)`` (``couplings.minibatch_ot(epsilon=..., iters=...)``) may be
    given instead of a name.

    Args:
        model: velocity network ``model(t, x) -> (event)``.
        key: PRNG key.
        batch: target samples ``(n, *event)``, or a paired batch ``{"x0": x0, "x": x1}``.
        source: a sampler ``(key, n) -> (n, *event)``, a dataset name for ``data.sample``, or an
            array ``(N, *event)`` drawn from uniformly with replacement; required unless the
            batch is paired (and then not allowed).
        coupling: ``None``, "independent", "ot", or a coupling function.
        ot_epsilon: Sinkhorn regulariser relative to the mean cost (> 0), for ``"ot"``.
        ot_iters: Sinkhorn iterations (>= 1), for ``"ot"``.
    """
    ot_epsilon = check_positive("ot_epsilon", ot_epsilon)
    ot_iters = check_int("ot_iters", ot_iters, minimum=1)
    coupling = _couplings.get_coupling(coupling, ot_epsilon=ot_epsilon, ot_iters=ot_iters)
    x0, x1, sampled = _source_batch(batch, source)
    if x0 is None and source is None:
        raise ValueError(
            "interpolant_loss needs source= (a sampler, dataset name or array) or a paired "
            'batch {"x0": x0, "x": x1}'
        )
    n = x1.shape[0]
    src_key, ot_key, t_key = jr.split(key, 3)
    if x0 is None:
        x0 = _draw_source(source, src_key, n, x1)
    x0, x1, _ = _couplings.couple(ot_key, x0, x1, None, coupling, sampled=sampled)
    t = jr.uniform(t_key, (n,), x1.dtype)
    tb = _bcast(t, x1)
    xt = (1.0 - tb) * x0 + tb * x1
    return jnp.mean(_sqnorm(_apply(model, t, xt) - (x1 - x0)))


LOSSES = {
    "flow_matching": flow_matching_loss,
    "score_matching": score_matching_loss,
    "denoiser": denoiser_loss,
    "eps": eps_loss,
    "dsm": dsm_loss,
    "ncsm": ncsm_loss,
    "ddpm": ddpm_loss,
    "interpolant": interpolant_loss,
}


def get_loss(name: str, **config) -> Callable[[Model, PRNGKeyArray, Array], Scalar]:
    """Return ``loss(model, key, batch)`` for a named loss with its configuration validated now.

    Validates the name, path names, coupling and weighting names, sigma > 0, k >= 1 and T >= 1
    eagerly (before any training starts), then returns ``functools.partial(loss, **config)``.
    """
    check_choice("loss", name, LOSSES)
    fn = LOSSES[name]
    if "path" in config:
        config["path"] = _resolve_path(config["path"])
    if "coupling" in config:
        _couplings.get_coupling(config["coupling"])
    if "weighting" in config:
        check_choice("weighting", config["weighting"], SCORE_WEIGHTINGS)
    if "sigma" in config:
        check_positive("sigma", config["sigma"])
    if "sigmas" in config:
        _check_sigmas(config["sigmas"])
    if "k" in config:
        check_int("k", config["k"], minimum=1)
    if "schedule" in config:
        check_int("schedule.num_steps", int(config["schedule"].num_steps), minimum=1)
    if name == "interpolant" and "source" not in config:
        raise ValueError(
            "interpolant loss needs source= (a sampler, dataset name or array); for a paired "
            'batch {"x0": x0, "x": x1} pass source=None'
        )
    return functools.partial(fn, **config)
