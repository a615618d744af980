"""EDM's samplers (Karras et al. 2022, Alg. 1 and 2) for any schedule.

EDM works with ``x~ = x / alpha`` at noise level ``sigma~ = sigma / alpha = exp(-lambda / 2)``
(its eq. 4 with s(t) = alpha), where the probability-flow ODE is ``dx~/dsigma~ = (x~ - D~) / sigma~``
and ``D~(x~; sigma~) = D(alpha x~, t(sigma~))``. Steps follow the rho discretisation of eq. 5 with
``sigma~_N = 0``; Alg. 2 adds churn ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` for
``sigma~_i`` in ``[S_tmin, S_tmax]``. S_churn = 0 is Alg. 1 (deterministic Heun, 2N - 1 NFE).
With ``second_order=False`` it is the Euler sampler (diffusers' EulerDiscreteScheduler).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax import predictions
from diffjax.samplers import common
from diffjax.schedules import Schedule

Array = jax.Array


def edm_grid(schedule: Schedule, steps: int, sigma_min: float | None = None, sigma_max: float | None = None,
             rho: float = 7.0) -> tuple[Array, Array]:
    """EDM eq. 5: ``steps`` rho-spaced noise levels from sigma_max to sigma_min, then sigma = 0.

    Returns ``(ts, sigmas)`` of length ``steps + 1``; the defaults span the schedule's
    ``[t_eps, t_max]``. The last time is 0 (where sigma~ = 0; only its sigma is used).
    """
    steps = common.check_steps(steps)
    s_max = predictions.edm_sigma(schedule, schedule.t_max) if sigma_max is None else jnp.float32(sigma_max)
    s_min = predictions.edm_sigma(schedule, schedule.t_eps) if sigma_min is None else jnp.float32(sigma_min)
    i = jnp.arange(steps) / max(steps - 1, 1)
    sig = (s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    ts = schedule.t_from_log_snr(-2.0 * jnp.log(sig))
    if sigma_max is None:
        ts = ts.at[0].set(schedule.t_max)
    return jnp.append(ts, 0.0), jnp.append(sig, 0.0)


def edm(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *, steps: int | None = 18,
        sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
        S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0,
        second_order: bool = True, ts: Any = None) -> tuple[Array, dict]:
    """EDM Alg. 2 (Alg. 1 when ``S_churn = 0``); ``x_T`` is in the schedule's scale at the first time.

    ``ts``: an explicit descending grid of schedule times instead of eq. 5 (e.g. diffusers'
    timesteps); its noise levels are ``sigma(t)/alpha(t)`` and the result is returned at ``ts[-1]``.
    """
    if ts is None:
        grid, sigmas = edm_grid(schedule, steps, sigma_min, sigma_max, rho)
        alpha_end = jnp.float32(1.0)
    else:
        grid = common.resolve_grid(schedule, ts, None, "uniform")
        sigmas = predictions.edm_sigma(schedule, grid)
        alpha_end = schedule.alpha(grid[-1])
    n = grid.shape[0] - 1
    fn = common.checked(denoise_fn)
    gamma_max = min(S_churn / n, math.sqrt(2.0) - 1.0)

    def D(x, t):  # EDM's D~(x~; sigma~(t)) from the schedule-scale denoiser
        return fn(schedule.alpha(t) * x, common.per_example(t, x))

    def first_stage(x, inp):
        t, sig, sig_next, k = inp
        gamma = jnp.where((sig >= S_tmin) & (sig <= S_tmax), gamma_max, 0.0)
        sig_hat = sig * (1.0 + gamma)
        t_hat = jnp.where(gamma > 0, schedule.t_from_log_snr(-2.0 * jnp.log(sig_hat)), t)
        # sqrt(sig_hat^2 - sig^2), written so that gamma = 0 gives exactly 0 after any fusion.
        x_hat = x + sig * jnp.sqrt(gamma * (2.0 + gamma)) * S_noise * jax.random.normal(k, x.shape, x.dtype)
        d = (x_hat - D(x_hat, t_hat)) / sig_hat
        return x_hat, sig_hat, d, x_hat + (sig_next - sig_hat) * d

    def heun_stage(x_hat, sig_hat, d, x_next, sig_next, t_next):
        d_next = (x_next - D(x_next, t_next)) / sig_next
        return x_hat + (sig_next - sig_hat) * 0.5 * (d + d_next)

    def step(x, inp):
        t, t_next, sig, sig_next, k = inp
        x_hat, sig_hat, d, x_next = first_stage(x, (t, sig, sig_next, k))
        if not second_order:
            return x_next, None
        return heun_stage(x_hat, sig_hat, d, x_next, sig_next, t_next), None

    keys = jax.random.split(key, n) if S_churn > 0 else jnp.zeros((n, 2), jnp.uint32)
    x = x_T / schedule.alpha(grid[0])
    xs = (grid[:-2], grid[1:-1], sigmas[:-2], sigmas[1:-1], keys[:-1])
    x, _ = jax.lax.scan(step, x, xs)
    # The last step (Alg. 1, line 7): no second-order correction when it lands on sigma~ = 0.
    x_hat, sig_hat, d, x_next = first_stage(x, (grid[-2], sigmas[-2], sigmas[-1], keys[-1]))
    nfe = n if not second_order else 2 * n - 1
    if second_order:
        x_next = jax.lax.cond(sigmas[-1] > 0,
                              lambda: heun_stage(x_hat, sig_hat, d, x_next, sigmas[-1], grid[-1]),
                              lambda: x_next)
        nfe = nfe + (sigmas[-1] > 0).astype(jnp.int32) if ts is not None else nfe
    return alpha_end * x_next, {"nfe": nfe}
