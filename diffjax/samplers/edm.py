"""EDM's samplers (Karras et al. 2022, Alg. 1 and 2) for any schedule.

EDM works with ``x~ = x / alpha`` at noise level ``sigma~ = sigma / alpha = exp(-lambda / 2)``
(its eq. 4 with s(t) = alpha), where the probability-flow ODE is ``dx~/dsigma~ = (x~ - D~) / sigma~``
and ``D~(x~; sigma~) = D(alpha x~, t(sigma~))``. Steps follow the rho discretisation of eq. 5 with
``sigma~_N = 0`` (``common.time_grid``'s ``"karras"`` grid, or any other); Alg. 2 adds churn
``gamma_i = min(S_churn / N, sqrt(2) - 1)`` for ``sigma~_i`` in ``[S_tmin, S_tmax]``. S_churn = 0 is
Alg. 1 (deterministic Heun, 2N - 1 NFE).
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


def edm_sampler(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *, steps: int | None = 18,
                spacing: str = "karras", ts: Any = None, t_end: float | None = None, sigma_min: float | None = None,
                sigma_max: float | None = None, rho: float = 7.0, final: str | None = None,
                S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0,
                second_order: bool = True) -> tuple[Array, dict]:
    """EDM Alg. 2 (Alg. 1 when ``S_churn = 0``); ``x_T`` is in the schedule's scale at the first time.

    The grid options are ``common.time_grid``'s: by default eq. 5's ``steps`` rho-spaced levels
    from ``sigma_max`` to ``sigma_min`` (the schedule's ``t_max`` and ``t_eps`` unless given), then
    ``sigma~_N = 0``; an explicit ``ts`` (e.g. diffusers' timesteps) has the levels ``sigma(t)/alpha(t)``
    and the result is returned at ``ts[-1]``. A step landing on ``sigma~ = 0`` is an Euler step.
    """
    grid = common.resolve_grid(schedule, x_T, ts, steps, spacing, t_end=t_end, sigma_min=sigma_min,
                               sigma_max=sigma_max, rho=rho, final=final)
    times, sigmas = grid.ts, predictions.edm_sigma(schedule, grid.ts)
    if grid.to_zero:  # the zero level's time is never evaluated: the step that lands there is Euler's
        times, sigmas = jnp.append(times, times[-1]), jnp.append(sigmas, jnp.zeros((), sigmas.dtype))
    n = grid.steps
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
    x = x_T / schedule.alpha(times[0])
    xs = (times[:-2], times[1:-1], sigmas[:-2], sigmas[1:-1], keys[:-1])
    x, _ = jax.lax.scan(step, x, xs)
    # The last step (Alg. 1, line 7): no second-order correction when it lands on sigma~ = 0.
    x_hat, sig_hat, d, x_next = first_stage(x, (times[-2], sigmas[-2], sigmas[-1], keys[-1]))
    nfe = n
    if second_order:
        x_next = jax.lax.cond(sigmas[-1] > 0,
                              lambda: heun_stage(x_hat, sig_hat, d, x_next, sigmas[-1], times[-1]),
                              lambda: x_next)
        nfe = 2 * n - 1 + (sigmas[-1] > 0).astype(jnp.int32)
    alpha_end = 1.0 if grid.to_zero else schedule.alpha(times[-1])
    return alpha_end * x_next, {"nfe": nfe}
