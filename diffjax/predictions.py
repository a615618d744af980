"""What a network predicts, and the conversions among eps, x0, v, score and flow velocity.

With ``x = alpha x0 + sigma eps`` every prediction is a linear function of the pair (x0, eps):
  eps, x0;  v = alpha eps - sigma x0 (Salimans & Ho 2022, generalised to any alpha, sigma);
  score = -eps / sigma;  velocity = dx_t/dt = alpha' x0 + sigma' eps (flow matching).
So one pair of functions, to (x0, eps) and back, converts any kind into any other.

EDM preconditioning (Karras et al. 2022, Table 1) is given as coefficient functions; the modules
that wrap a backbone with them live in ``diffjax.models.precond``.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax.schedules import Schedule, bcast

Array = jax.Array
KINDS = ("eps", "x0", "v", "score", "velocity")
ModelFn = Callable[[Array, Array], Array]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown prediction kind {kind!r}; expected one of {KINDS}")


def _check_shapes(output: Array, x: Array) -> None:
    if output.shape != x.shape:
        raise ValueError(f"model output has shape {output.shape} but x_t has shape {x.shape}; they must match")


def to_x0_eps(output: Array, x: Array, t: Any, schedule: Schedule, kind: str) -> tuple[Array, Array]:
    """The (x0, eps) pair implied by a prediction ``output`` of the given kind at ``(x, t)``."""
    _check_kind(kind)
    _check_shapes(output, x)
    a, s = bcast(schedule.alpha(t), x), bcast(schedule.sigma(t), x)
    if kind == "eps":
        return (x - s * output) / a, output
    if kind == "x0":
        return output, (x - a * output) / s
    if kind == "score":
        eps = -s * output
        return (x - s * eps) / a, eps
    if kind == "v":
        norm = a ** 2 + s ** 2
        return (a * x - s * output) / norm, (s * x + a * output) / norm
    da, ds = bcast(schedule.d_alpha(t), x), bcast(schedule.d_sigma(t), x)
    det = a * ds - s * da
    return (ds * x - s * output) / det, (a * output - da * x) / det


def from_x0_eps(x0: Array, eps: Array, t: Any, schedule: Schedule, kind: str) -> Array:
    """The prediction of the given kind that corresponds to the pair (x0, eps) at time ``t``."""
    _check_kind(kind)
    a, s = bcast(schedule.alpha(t), x0), bcast(schedule.sigma(t), x0)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "score":
        return -eps / s
    if kind == "v":
        return a * eps - s * x0
    return bcast(schedule.d_alpha(t), x0) * x0 + bcast(schedule.d_sigma(t), x0) * eps


def convert(output: Array, x: Array, t: Any, schedule: Schedule, *, source: str, target: str) -> Array:
    """Convert a ``source``-kind prediction at ``(x, t)`` into a ``target``-kind one."""
    _check_kind(target)
    if source == target:
        _check_kind(source)
        _check_shapes(output, x)
        return output
    x0, eps = to_x0_eps(output, x, t, schedule, source)
    return from_x0_eps(x0, eps, t, schedule, target)


def _per_example_t(t: Any, x: Array) -> Array:
    t = jnp.asarray(t, jnp.float32)
    return jnp.broadcast_to(t, (x.shape[0],)) if t.ndim == 0 else t


def model_fn(apply_fn: Callable[[Array, Array], Array], schedule: Schedule) -> ModelFn:
    """Turn a network ``apply_fn(x, noise_labels)`` into a model function of schedule time."""

    def fn(x: Array, t: Any) -> Array:
        return apply_fn(x, schedule.c_noise(_per_example_t(t, x)))

    return fn


def as_view(fn: ModelFn, schedule: Schedule, prediction: str, target: str) -> ModelFn:
    """A model function that returns ``target`` predictions from one that returns ``prediction``."""
    _check_kind(prediction)
    _check_kind(target)

    def view(x: Array, t: Any) -> Array:
        return convert(fn(x, t), x, t, schedule, source=prediction, target=target)

    return view


def as_denoiser(fn: ModelFn, schedule: Schedule, prediction: str) -> ModelFn:
    """The denoiser ``D(x, t) = E[x0 | x_t = x]`` view that samplers consume."""
    return as_view(fn, schedule, prediction, "x0")


def learned_log_variance(v: Array, t: Any, schedule: Any, signed: bool = True) -> Array:
    """Log-variance of the learned reverse step ``p(x_{n-1} | x_n)`` of a discrete schedule.

    Nichol & Dhariwal 2021, eq. 15: ``log Sigma = frac log beta_n + (1 - frac) log beta_tilde_n``.
    The paper writes ``frac = v`` (``signed=False``); their released code and the ADM checkpoints
    use ``frac = (v + 1) / 2`` (``signed=True``, the default), so a zero output is the geometric
    mean of the two bounds. ``v`` is the second half of the network's channels, shape of ``x``.
    """
    n = schedule.t_to_step(t)
    _, _, log_beta_tilde = schedule.posterior(n)
    frac = (v + 1.0) / 2.0 if signed else v
    return (frac * bcast(jnp.log(schedule.betas[n]), v)
            + (1.0 - frac) * bcast(log_beta_tilde, v))


# --- EDM preconditioning (Karras et al. 2022, Table 1) ------------------------------------
# Each returns (c_skip, c_out, c_in, c_noise) for D(x; sigma) = c_skip x + c_out F(c_in x, c_noise),
# where sigma is the noise level of x / alpha (EDM's scaled-out formulation).

def edm_preconditioning(sigma: Array, sigma_data: float = 0.5) -> tuple[Array, Array, Array, Array]:
    sigma = jnp.asarray(sigma, jnp.float32)
    norm = jnp.sqrt(sigma ** 2 + sigma_data ** 2)
    return sigma_data ** 2 / norm ** 2, sigma * sigma_data / norm, 1.0 / norm, jnp.log(sigma) / 4.0


def vp_preconditioning(sigma: Array, beta_d: float = 19.9, beta_min: float = 0.1,
                       M: int = 1000) -> tuple[Array, Array, Array, Array]:
    sigma = jnp.asarray(sigma, jnp.float32)
    t = (jnp.sqrt(beta_min ** 2 + 2.0 * beta_d * jnp.log1p(sigma ** 2)) - beta_min) / beta_d
    return jnp.ones_like(sigma), -sigma, 1.0 / jnp.sqrt(sigma ** 2 + 1.0), (M - 1) * t


def ve_preconditioning(sigma: Array) -> tuple[Array, Array, Array, Array]:
    sigma = jnp.asarray(sigma, jnp.float32)
    return jnp.ones_like(sigma), sigma, jnp.ones_like(sigma), jnp.log(0.5 * sigma)


def edm_sigma(schedule: Schedule, t: Any) -> Array:
    """EDM's noise level of ``x_t / alpha(t)``: ``sigma(t) / alpha(t) = exp(-lambda(t) / 2)``."""
    return jnp.exp(-0.5 * schedule.log_snr(t))

