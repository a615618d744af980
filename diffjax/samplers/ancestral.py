"""DDPM ancestral sampling and DDIM, for any schedule on any time grid.

Both are the reverse step from time t to an earlier time s built from the Gaussian posterior
``q(x_s | x_t, x_0)``, with the denoiser's ``x0_hat`` in place of ``x_0``. Writing
``a = alpha, sig = sigma`` and ``beta = sig_t^2 - (a_t / a_s)^2 sig_s^2`` for the variance of
``q(x_t | x_s)`` (DDPM's beta_t on adjacent steps, ``1 - alphabar_t / alphabar_s`` on a respaced grid):

* posterior variance ``beta_tilde = beta sig_s^2 / sig_t^2`` (Ho et al. 2020, eq. 7);
* DDIM (Song et al. 2021a, eq. 12): ``x_s = a_s x0_hat + sqrt(sig_s^2 - c^2) eps_hat + c z`` with
  ``c = eta sqrt(beta_tilde)`` (eq. 16); eta = 1 has the posterior mean and variance, i.e. DDPM;
* DDPM (Alg. 2): the posterior mean plus noise of variance beta ("fixedlarge"), beta_tilde
  ("fixedsmall") or, with learned variances, ``exp(v log beta + (1 - v) log beta_tilde)``
  (Nichol & Dhariwal 2021, eq. 15). As in Alg. 2 the last step adds no noise.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax import predictions
from diffjax.samplers import common
from diffjax.schedules import DiscreteSchedule, Schedule

Array = jax.Array
VARIANCES = ("beta", "beta_tilde", "learned")


def _default_steps(schedule: Schedule, steps: int | None, ts: Any) -> int | None:
    if steps is None and ts is None:
        return schedule.T if isinstance(schedule, DiscreteSchedule) else 1000
    return steps


def posterior_coefficients(schedule: Schedule, t: Array, s: Array) -> dict[str, Array]:
    """alpha and sigma at t and s, the forward step variance beta and the posterior variance."""
    a_t, sig_t, a_s, sig_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
    beta = jnp.maximum(sig_t ** 2 - (a_t / a_s) ** 2 * sig_s ** 2, 0.0)
    return dict(a_t=a_t, sig_t=sig_t, a_s=a_s, sig_s=sig_s, beta=beta, beta_tilde=beta * sig_s ** 2 / sig_t ** 2)


def ddim_step(x: Array, x0: Array, t: Array, s: Array, schedule: Schedule, eta: float | Array,
              noise: Array) -> Array:
    """One step of DDIM's eq. 12 from t to s; ``noise`` is the standard normal z."""
    c = posterior_coefficients(schedule, t, s)
    eps = (x - c["a_t"] * x0) / c["sig_t"]
    std = eta * jnp.sqrt(c["beta_tilde"])
    return c["a_s"] * x0 + jnp.sqrt(jnp.maximum(c["sig_s"] ** 2 - std ** 2, 0.0)) * eps + std * noise


def ddpm_step(x: Array, x0: Array, t: Array, s: Array, schedule: Schedule, variance: str,
              noise: Array, v: Array | None = None) -> Array:
    """One step of DDPM's Alg. 2 from t to s: the posterior mean plus ``sqrt(Sigma) * noise``."""
    c = posterior_coefficients(schedule, t, s)
    mean = c["a_s"] * x0 + (c["a_t"] / c["a_s"]) * c["sig_s"] ** 2 / c["sig_t"] ** 2 * (x - c["a_t"] * x0)
    if variance == "beta":
        std = jnp.sqrt(c["beta"])
    elif variance == "beta_tilde":
        std = jnp.sqrt(c["beta_tilde"])
    else:  # Nichol & Dhariwal 2021, eq. 15; beta_tilde = 0 only on a last step, which adds no noise
        tiny = jnp.finfo(c["beta"].dtype).tiny
        log_var = v * jnp.log(jnp.maximum(c["beta"], tiny)) + (1.0 - v) * jnp.log(jnp.maximum(c["beta_tilde"], tiny))
        std = jnp.exp(0.5 * log_var)
    return mean + std * noise


def _check_learned(out: Any, x: Array) -> tuple[Array, Array]:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError("with variance='learned' the model function must return a pair (x0_hat, v); "
                         "build one with samplers.learned_variance_denoiser")
    x0, v = out
    if x0.shape != x.shape or v.shape != x.shape:
        raise ValueError(f"with variance='learned' both x0_hat and v must have the input's shape {x.shape}, "
                         f"got {x0.shape} and {v.shape}")
    return x0, v


def ddpm(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *, steps: int | None = None,
         spacing: str = "uniform", ts: Any = None, t_end: float | None = None, sigma_min: float | None = None,
         sigma_max: float | None = None, rho: float = 7.0, final: str | None = None,
         variance: str = "beta_tilde", constraint: common.Constraint | None = None) -> tuple[Array, dict]:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2), on all T steps by default.

    ``variance``: ``"beta"`` (sigma_t^2 = beta_t), ``"beta_tilde"`` (the posterior variance) or
    ``"learned"``, where ``denoise_fn(x, t)`` returns ``(x0_hat, v)`` with ``v`` the interpolation
    weight of eq. 15 (see ``learned_variance_denoiser``). A respaced grid (``steps < T`` or ``ts``)
    uses the respaced betas ``1 - alphabar_t / alphabar_s``, as improved-diffusion does. The grid
    options are ``common.time_grid``'s. As in Alg. 2 the last step adds no noise.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; expected one of {VARIANCES}")
    grid = common.resolve_grid(schedule, x_T, ts, _default_steps(schedule, steps, ts), spacing, t_end=t_end,
                               sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, final=final)
    n = grid.ts.shape[0] - 1
    last_noisy = n - 1 if grid.to_zero else n - 2  # the index of the last step that adds noise
    fn = denoise_fn if variance == "learned" else common.checked(denoise_fn)

    def x0_and_v(x, t):
        out = fn(x, common.per_example(t, x))
        return _check_learned(out, x) if variance == "learned" else (out, None)

    def step(x, inp):
        t, s, i, k = inp
        x0, v = x0_and_v(x, t)
        noise = jnp.where(i <= last_noisy, 1.0, 0.0) * jax.random.normal(k, x.shape, x.dtype)
        return ddpm_step(x, x0, t, s, schedule, variance, noise, v)

    x = common.scan_steps(step, x_T, grid.ts, key, constraint)
    return common.finish(x, grid, lambda x, t: x0_and_v(x, t)[0]), {"nfe": grid.steps}


def ddim(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *, steps: int | None = 50,
         eta: float = 0.0, spacing: str = "uniform", ts: Any = None, t_end: float | None = None,
         sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
         final: str | None = None, constraint: common.Constraint | None = None) -> tuple[Array, dict]:
    """DDIM (Song et al. 2021a, eq. 12) with stochasticity ``eta`` on a respaced grid.

    ``spacing="uniform"`` or ``"quadratic"`` are the DDIM code's strides on a ``DiscreteSchedule``;
    eta = 0 is deterministic (a first-order solver of the probability-flow ODE), eta = 1 is DDPM
    with the posterior variance. The grid options are ``common.time_grid``'s.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    grid = common.resolve_grid(schedule, x_T, ts, steps, spacing, t_end=t_end, sigma_min=sigma_min,
                               sigma_max=sigma_max, rho=rho, final=final)
    fn = common.checked(denoise_fn)

    def step(x, inp):
        t, s, _, k = inp
        x0 = fn(x, common.per_example(t, x))
        return ddim_step(x, x0, t, s, schedule, eta, jax.random.normal(k, x.shape, x.dtype))

    x = common.scan_steps(step, x_T, grid.ts, key, constraint)
    return common.finish(x, grid, fn), {"nfe": grid.steps}


def learned_variance_denoiser(model_fn: Callable, schedule: Schedule, prediction: str = "eps") -> Callable:
    """``(x, t) -> (x0_hat, v)`` from a network that outputs twice the channels (last axis).

    The first half is a ``prediction``-kind output, the second the raw ``r`` in [-1, 1] of
    improved-diffusion, mapped to eq. 15's interpolation weight ``v = (r + 1) / 2``.
    """

    def fn(x, t):
        out = model_fn(x, t)
        if out.shape[:-1] != x.shape[:-1] or out.shape[-1] != 2 * x.shape[-1]:
            raise ValueError(f"a learned-variance model must return shape {x.shape[:-1] + (2 * x.shape[-1],)}, "
                             f"got {out.shape}")
        pred, r = jnp.split(out, 2, axis=-1)
        return predictions.convert(pred, x, t, schedule, source=prediction, target="x0"), (r + 1.0) / 2.0

    return fn
