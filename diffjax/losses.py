"""Training losses: ``loss(model_fn, x0, key, schedule, **options) -> (loss, terms)``.

``model_fn(x_t, t)`` returns the raw network output of kind ``prediction`` (docs/conventions.md
§4); conditioning is closed over by the caller. Every loss is the batch mean of a per-example loss
(each example has its own time and weight); ``terms`` holds the batch means of its named parts.
``loss.per_example(...)`` returns the per-example values as a dict of ``(B,)`` arrays, with the
sampled times under ``"t"``.

Every loss is a weighted squared error between the network's prediction, converted to some kind,
and the true value of that kind, at ``x_t = alpha(t) x0 + sigma(t) eps``:

| loss | times | error on | weight | reduction over dims |
|---|---|---|---|---|
| ``simple`` (Ho et al. 2020, eq. 14) | n ~ U{0..T-1} / t ~ U[t_eps, t_max] | ``target`` (= prediction) | 1 | mean |
| ``ncsn_dsm`` (Song & Ermon 2019, eq. 5-6) | L geometric sigmas of a VESDE | score | sigma^2 / 2 | sum |
| ``dsm`` (Song et al. 2021, eq. 7) | t ~ U[t_eps, t_max] (or importance-sampled) | score | sigma^2, or g^2 (likelihood weighting) | sum or mean |
| ``edm`` (Karras et al. 2022, eq. 2, Table 1) | ln sigma ~ N(P_mean, P_std^2) | D = x0 | (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 | sum |
| ``flow_matching`` (Lipman et al. 2023; Liu et al. 2023) | t ~ U[t_eps, t_max] | velocity alpha' x0 + sigma' eps | 1 | mean |
| ``hybrid`` (Nichol & Dhariwal 2021, eq. 16) | n ~ U{0..T-1} | prediction, plus lambda L_vlb | 1 | mean |

The reductions are those of each paper's code (improved-diffusion's ``mean_flat``, NCSN's and
EDM's sums, score_sde's ``reduce_mean`` switch).
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr

from diffjax import predictions
from diffjax.schedules import DiscreteSchedule, EDMSchedule, Schedule, VESDE, bcast

Array = jax.Array
Terms = dict[str, Array]
LossFn = Callable[..., tuple[Array, Terms]]


# --- shared pieces ------------------------------------------------------------------------

def _check_x0(x0: Array, loss: str) -> None:
    if x0.ndim < 2:
        raise ValueError(f"{loss}: x0 must be a batch of shape (B, ...) with at least one data axis, "
                         f"got shape {x0.shape}")


def _check_schedule(schedule: Schedule, kind: type, loss: str, why: str) -> None:
    if not isinstance(schedule, kind):
        raise ValueError(f"{loss}: needs a {kind.__name__} ({why}), got {type(schedule).__name__}")


def _call(model_fn: Callable, x_t: Array, t: Array, expected: tuple[int, ...], loss: str) -> Array:
    out = model_fn(x_t, t)
    if out.shape != expected:
        raise ValueError(f"{loss}: model_fn returned shape {out.shape}, expected {expected} "
                         f"(x_t has shape {x_t.shape})")
    return out


def _reduce(sq: Array, reduce_mean: bool) -> Array:
    """Per-example mean (or sum) of ``sq`` over all axes but the first."""
    axes = tuple(range(1, sq.ndim))
    return jnp.mean(sq, axis=axes) if reduce_mean else jnp.sum(sq, axis=axes)


def _uniform_time(key: Array, batch: int, schedule: Schedule, t_eps: float | None) -> Array:
    """Uniform integer steps for a discrete schedule, else t ~ U[t_eps, t_max]."""
    if isinstance(schedule, DiscreteSchedule):
        return schedule.step_to_t(jax.random.randint(key, (batch,), 0, schedule.T))
    lo = schedule.t_eps if t_eps is None else t_eps
    return jax.random.uniform(key, (batch,), minval=lo, maxval=schedule.t_max)


def _noised(x0: Array, key: Array, t: Array, schedule: Schedule) -> tuple[Array, Array]:
    eps = jax.random.normal(key, x0.shape, x0.dtype)
    return bcast(schedule.alpha(t), x0) * x0 + bcast(schedule.sigma(t), x0) * eps, eps


def _error(out: Array, x_t: Array, x0: Array, eps: Array, t: Array, schedule: Schedule,
           prediction: str, target: str, reduce_mean: bool) -> Array:
    """Per-example squared error of the network output, converted to ``target``, against the truth."""
    pred = predictions.convert(out, x_t, t, schedule, source=prediction, target=target)
    truth = predictions.from_x0_eps(x0, eps, t, schedule, target)
    return _reduce((pred - truth) ** 2, reduce_mean)


def _regression(model_fn, x0, key, schedule, t_key_fn, prediction, target, reduce_mean, loss):
    """Sample t (by ``t_key_fn(key, B)``) and eps, call the network, return (t, squared error)."""
    _check_x0(x0, loss)
    predictions._check_kind(prediction)
    predictions._check_kind(target)
    k_t, k_eps = jax.random.split(key)
    t = t_key_fn(k_t, x0.shape[0])
    x_t, eps = _noised(x0, k_eps, t, schedule)
    out = _call(model_fn, x_t, t, x0.shape, loss)
    return t, _error(out, x_t, x0, eps, t, schedule, prediction, target, reduce_mean)


def _batch_mean(per_example: Callable[..., Terms]) -> LossFn:
    """The public loss: batch means of the per-example terms (``t`` omitted)."""

    @functools.wraps(per_example)
    def loss(model_fn, x0, key, schedule, **options):
        terms = {k: jnp.mean(v) for k, v in per_example(model_fn, x0, key, schedule, **options).items()
                 if k != "t"}
        return terms["loss"], terms

    loss.per_example = per_example
    return loss


# --- the losses ---------------------------------------------------------------------------

@_batch_mean
def simple(model_fn, x0, key, schedule, *, prediction: str = "eps", target: str | None = None,
           t_eps: float | None = None, reduce_mean: bool = True) -> Terms:
    """L_simple (Ho et al. 2020, eq. 14): ``|| target - target_hat(x_t, t) ||^2``, unweighted.

    ``target`` defaults to the prediction kind (eps, x0 or v, Salimans & Ho 2022); a different
    one trains the same network under that kind's implied weighting. Discrete schedules draw
    integer steps uniformly, continuous ones t ~ U[t_eps, t_max] (``t_eps`` defaults to the
    schedule's).
    """
    target = prediction if target is None else target
    t, err = _regression(model_fn, x0, key, schedule,
                         lambda k, b: _uniform_time(k, b, schedule, t_eps),
                         prediction, target, reduce_mean, "simple")
    return {"loss": err, "t": t}


@_batch_mean
def flow_matching(model_fn, x0, key, schedule, *, prediction: str = "velocity",
                  t_eps: float | None = None, reduce_mean: bool = True) -> Terms:
    """Conditional flow matching: regress ``dx_t/dt = alpha'(t) x0 + sigma'(t) eps``.

    For rectified flow (alpha = 1 - t, sigma = t) the target is ``eps - x0`` (Liu et al. 2023,
    eq. 1; Lipman et al. 2023, eq. 23), with t ~ U[0, 1].
    """
    t, err = _regression(model_fn, x0, key, schedule,
                         lambda k, b: _uniform_time(k, b, schedule, t_eps),
                         prediction, "velocity", reduce_mean, "flow_matching")
    return {"loss": err, "t": t}


@_batch_mean
def ncsn_dsm(model_fn, x0, key, schedule, *, num_scales: int = 10, prediction: str = "score") -> Terms:
    """Denoising score matching over geometric noise levels (Song & Ermon 2019, eq. 5-6).

    ``l(sigma) = 1/2 E || s(x0 + sigma z, sigma) + z / sigma ||^2`` with ``lambda(sigma) = sigma^2``,
    the level drawn uniformly from ``sigma_i = sigma_max (sigma_min / sigma_max)^(i / (L-1))``, the
    VESDE's ``sigma(t)`` at ``t = 1 - i / (L-1)``. NCSN: ``VESDE(sigma_min=0.01, sigma_max=1)``,
    L = 10; NCSNv2 on CIFAR-10 (Song & Ermon 2020): ``sigma_max=50``, L = 232.
    """
    _check_schedule(schedule, VESDE, "ncsn_dsm", "its noise levels are the VESDE's geometric sigmas")
    if num_scales < 2:
        raise ValueError(f"ncsn_dsm: num_scales must be at least 2, got {num_scales}")

    def levels(k, b):
        return jax.random.randint(k, (b,), 0, num_scales).astype(jnp.float32) / (num_scales - 1)

    # sigma^2 / 2 || s + z / sigma ||^2 = 1/2 || eps_hat - z ||^2 with eps_hat = -sigma s.
    t, err = _regression(model_fn, x0, key, schedule, levels, prediction, "eps", False, "ncsn_dsm")
    return {"loss": 0.5 * err, "t": t}


@_batch_mean
def dsm(model_fn, x0, key, schedule, *, prediction: str = "score", t_eps: float | None = None,
        reduce_mean: bool = False, likelihood_weighting: bool = False,
        importance_sampling: bool = False) -> Terms:
    """Continuous-time denoising score matching (Song et al. 2021, eq. 7), as score_sde's loss.

    ``lambda(t) = sigma(t)^2`` gives ``|| sigma s + z ||^2``; ``likelihood_weighting`` uses
    ``lambda(t) = g(t)^2``, under which the loss bounds the negative log-likelihood (Song, Durkan
    et al. 2021, Thm. 1): ``g^2 || s + z / sigma ||^2``. t ~ U[t_eps, t_max].

    ``importance_sampling`` (with likelihood weighting; Song, Durkan et al. 2021, Sec. 5) draws t
    with density proportional to the weight ``g^2 / sigma^2`` of the eps-error. For any schedule
    that weight is ``-d lambda / dt`` (lambda the log-SNR), so t is the time of a log-SNR drawn
    uniformly in ``[lambda(t_max), lambda(t_eps)]``; the per-example loss
    ``Z / (t_max - t_eps) || eps_hat - z ||^2``, ``Z = lambda(t_eps) - lambda(t_max)``, has the same
    expectation as the uniformly sampled one, with less variance.
    """
    if importance_sampling and not likelihood_weighting:
        raise ValueError("dsm: importance_sampling applies only with likelihood_weighting=True")
    lo = schedule.t_eps if t_eps is None else t_eps
    if importance_sampling:
        lam_max, lam_min = schedule.log_snr(lo), schedule.log_snr(schedule.t_max)

        def times(k, b):
            lam = jax.random.uniform(k, (b,), minval=lam_min, maxval=lam_max)
            return jnp.clip(schedule.t_from_log_snr(lam), lo, schedule.t_max)
    else:
        def times(k, b):
            return _uniform_time(k, b, schedule, lo)

    t, err = _regression(model_fn, x0, key, schedule, times, prediction, "eps", reduce_mean, "dsm")
    if importance_sampling:
        err = err * (lam_max - lam_min) / (schedule.t_max - lo)
    elif likelihood_weighting:  # || s + z / sigma ||^2 = || eps_hat - z ||^2 / sigma^2
        err = err * schedule.diffusion_sq(t) / schedule.sigma(t) ** 2
    return {"loss": err, "t": t}


@_batch_mean
def edm(model_fn, x0, key, schedule, *, prediction: str = "x0", P_mean: float | None = None,
        P_std: float | None = None, sigma_data: float | None = None,
        reduce_mean: bool = False) -> Terms:
    """EDM's loss (Karras et al. 2022, eq. 2 and Table 1), the network output read as D(x; sigma).

    ``ln sigma ~ N(P_mean, P_std^2)``, ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``,
    ``lambda(sigma) || D(x0 + sigma n; sigma) - x0 ||^2`` summed over dims. The constants default to
    the schedule's (P_mean = -1.2, P_std = 1.2, sigma_data = 0.5).
    """
    _check_schedule(schedule, EDMSchedule, "edm", "time is EDM's sigma")
    P_mean = schedule.P_mean if P_mean is None else P_mean
    P_std = schedule.P_std if P_std is None else P_std
    sigma_data = schedule.sigma_data if sigma_data is None else sigma_data

    def log_normal(k, b):
        return jnp.exp(P_mean + P_std * jax.random.normal(k, (b,)))

    sigma, err = _regression(model_fn, x0, key, schedule, log_normal, prediction, "x0",
                             reduce_mean, "edm")
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    return {"loss": weight * err, "t": sigma}


# --- improved DDPM: hybrid loss with learned variances -------------------------------------

def normal_kl(mean1: Array, logvar1: Array, mean2: Array, logvar2: Array) -> Array:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 - 1.0 + jnp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Array, mean: Array, log_scale: Array,
                                        bins: int = 256) -> Array:
    """log P(x) of data in [-1, 1] quantised to ``bins`` levels under N(mean, e^(2 log_scale)).

    Ho et al. 2020, eq. 13: each level owns the interval ``x +- 1/(bins-1)``, the first and last
    extended to -inf and +inf, so the probabilities of the levels sum to 1. Elementwise.
    """
    half = 1.0 / (bins - 1)
    inv = jnp.exp(-log_scale)
    lo = inv * (x - mean - half)
    hi = inv * (x - mean + half)
    # Phi(hi) - Phi(lo), computed in whichever tail keeps it accurate.
    delta = jnp.where(lo > 0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))
    return jnp.where(x < -1.0 + half / 2, log_ndtr(hi),
                     jnp.where(x > 1.0 - half / 2, log_ndtr(-lo),
                               jnp.log(jnp.maximum(delta, 1e-12))))


@_batch_mean
def hybrid(model_fn, x0, key, schedule, *, prediction: str = "eps", vlb_weight: float = 1e-3,
           signed_variance: bool = True) -> Terms:
    """L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, eq. 16), lambda = 0.001.

    The network outputs ``2C`` channels, the prediction then ``v``; the reverse variance is
    ``exp(frac log beta_n + (1 - frac) log beta_tilde_n)`` (eq. 15, see
    ``predictions.learned_log_variance`` for ``frac``). ``L_vlb`` sees the predicted mean through a
    stop-gradient, so it trains only the variance. With n ~ U{0..T-1}, ``T L_n`` estimates
    ``L_vlb``; ``L_n`` is the KL between the true and the model posteriors for n > 0 and the
    discretised decoder NLL for n = 0 (Ho et al. 2020, eq. 5 and 13), in bits per dimension.
    Terms: ``mse`` (L_simple), ``vlb`` (the estimate of L_vlb in bits/dim) and ``loss``.
    """
    _check_schedule(schedule, DiscreteSchedule, "hybrid", "the VLB is over its T steps")
    _check_x0(x0, "hybrid")
    predictions._check_kind(prediction)
    k_t, k_eps = jax.random.split(key)
    n = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.T)
    t = schedule.step_to_t(n)
    x_t, eps = _noised(x0, k_eps, t, schedule)
    out, v = jnp.split(_call(model_fn, x_t, t, x0.shape[:-1] + (2 * x0.shape[-1],), "hybrid"), 2, axis=-1)
    mse = _error(out, x_t, x0, eps, t, schedule, prediction, prediction, True)

    x0_hat = jax.lax.stop_gradient(predictions.convert(out, x_t, t, schedule, source=prediction, target="x0"))
    c_x0, c_xt, log_var = schedule.posterior(n)
    model_mean = bcast(c_x0, x0) * x0_hat + bcast(c_xt, x0) * x_t
    model_log_var = predictions.learned_log_variance(v, t, schedule, signed=signed_variance)
    kl = normal_kl(bcast(c_x0, x0) * x0 + bcast(c_xt, x0) * x_t, bcast(log_var, x0),
                   model_mean, model_log_var)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
    L_n = _reduce(jnp.where(bcast(n, x0) == 0, nll, kl), True) / math.log(2.0)
    vlb = schedule.T * L_n
    return {"loss": mse + vlb_weight * vlb, "mse": mse, "vlb": vlb, "t": t}


# --- registry -----------------------------------------------------------------------------

_REGISTRY: dict[str, LossFn] = {
    "simple": simple,
    "hybrid": hybrid,
    "ncsn_dsm": ncsn_dsm,
    "dsm": dsm,
    "edm": edm,
    "flow_matching": flow_matching,
}


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def options(name: str) -> tuple[str, ...]:
    """The option names a loss accepts (its keyword-only parameters)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(names())}")
    params = inspect.signature(_REGISTRY[name].per_example).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def get(config: Mapping[str, Any], **overrides: Any) -> LossFn:
    """``loss(model_fn, x0, key, schedule)`` with the options of ``{"name": ..., **options}`` bound.

    ``overrides`` are merged over the config (e.g. ``prediction=config.model.prediction``).
    """
    fields = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    fields.update(overrides)
    name = fields.pop("name", None)
    known = options(name)
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"loss {name!r} has no option(s) {unknown}; its options are {list(known)}")
    fn = _REGISTRY[name]
    bound = functools.partial(fn, **fields)
    bound.per_example = functools.partial(fn.per_example, **fields)
    return bound
