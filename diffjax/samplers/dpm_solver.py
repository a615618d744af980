"""DPM-Solver (Lu et al. 2022a) and DPM-Solver++(2M) (Lu et al. 2022b).

Both integrate the probability-flow ODE exactly in its linear part, in the half log-SNR
``lambda = log(alpha / sigma)`` (``schedule.log_snr / 2``), stepping from t to s with
``h = lambda_s - lambda_t > 0``:

* DPM-Solver-1: ``x_s = (alpha_s / alpha_t) x - sigma_s (e^h - 1) eps(x, t)`` (eq. 3.7, = DDIM);
* DPM-Solver-2 / -3: Alg. 1 (r1 = 1/2) and Alg. 2 (r1 = 1/3, r2 = 2/3), singlestep, with the
  intermediate times ``t_lambda(lambda_t + r h)`` from ``schedule.t_from_log_snr``;
* DPM-Solver++(2M): the multistep data-prediction solver of Alg. 2 (2022b),
  ``x_s = (sigma_s / sigma_t) x - alpha_s (e^{-h} - 1) D``, ``D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev``,
  ``r = h_prev / h``, first order on the first step and (``lower_order_final``) the last one.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax.samplers import common
from diffjax.schedules import Schedule

Array = jax.Array


def _half_lambda(schedule: Schedule, t: Array) -> Array:
    return 0.5 * schedule.log_snr(t)


def _t_of(schedule: Schedule, lam: Array) -> Array:
    return schedule.t_from_log_snr(2.0 * lam)


def dpm_solver_singlestep(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *,
                          steps: int | None = 20, order: int = 3, spacing: str = "logsnr", ts: Any = None,
                          t_end: float | None = None, sigma_min: float | None = None, sigma_max: float | None = None,
                          rho: float = 7.0, final: str | None = None,
                          constraint: common.Constraint | None = None) -> tuple[Array, dict]:
    """Singlestep DPM-Solver-``order`` (1, 2 or 3) with ``steps`` steps, ``order * steps`` NFE.

    The grid options are ``common.time_grid``'s; a last step to sigma = 0 is first order (1 NFE).
    """
    del key
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order!r}")
    grid = common.resolve_grid(schedule, x_T, ts, steps, spacing, t_end=t_end, sigma_min=sigma_min,
                               sigma_max=sigma_max, rho=rho, final=final)
    fn = common.checked(denoise_fn)

    def eps(x, t):
        t_b = common.per_example(t, x)
        return common.eps_from_x0(x, fn(x, t_b), t_b, schedule)

    def first_order_to(x, e, t, u, r_h):
        """``x_u`` from x_t by DPM-Solver-1 with ``e = eps(x_t, t)`` and ``r_h = lambda_u - lambda_t``."""
        return (schedule.alpha(u) / schedule.alpha(t)) * x - schedule.sigma(u) * jnp.expm1(r_h) * e

    def step(x, inp):
        t, s, _, _ = inp
        lam_t, lam_s = _half_lambda(schedule, t), _half_lambda(schedule, s)
        h = lam_s - lam_t
        e_t = eps(x, t)
        x_s = first_order_to(x, e_t, t, s, h)
        sig_s = schedule.sigma(s)
        if order == 2:  # Alg. 1 with r1 = 1/2
            r1 = 0.5
            s1 = _t_of(schedule, lam_t + r1 * h)
            u1 = first_order_to(x, e_t, t, s1, r1 * h)
            x_s = x_s - sig_s / (2.0 * r1) * jnp.expm1(h) * (eps(u1, s1) - e_t)
        elif order == 3:  # Alg. 2 with r1 = 1/3, r2 = 2/3
            r1, r2 = 1.0 / 3.0, 2.0 / 3.0
            s1, s2 = _t_of(schedule, lam_t + r1 * h), _t_of(schedule, lam_t + r2 * h)
            u1 = first_order_to(x, e_t, t, s1, r1 * h)
            D1 = eps(u1, s1) - e_t
            u2 = (first_order_to(x, e_t, t, s2, r2 * h)
                  - schedule.sigma(s2) * (r2 / r1) * (jnp.expm1(r2 * h) / (r2 * h) - 1.0) * D1)
            D2 = eps(u2, s2) - e_t
            x_s = x_s - sig_s / r2 * (jnp.expm1(h) / h - 1.0) * D2
        return x_s

    n = grid.ts.shape[0] - 1
    return common.finish(common.scan_steps(step, x_T, grid.ts, constraint=constraint), grid, fn), {"nfe": order * n + int(grid.to_zero)}


def dpm_solver_pp_2m(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *,
                     steps: int | None = 20, spacing: str = "logsnr", ts: Any = None, t_end: float | None = None,
                     sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
                     final: str | None = None, lower_order_final: bool = True,
                     constraint: common.Constraint | None = None) -> tuple[Array, dict]:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), ``steps`` NFE.

    The grid options are ``common.time_grid``'s. k-diffusion's ``sample_dpmpp_2m`` on its Karras
    sigmas is ``spacing="karras"`` (``final="append_zero"``, its default); diffusers'
    ``DPMSolverMultistepScheduler`` is ``spacing="linspace"`` / ``"leading"`` with
    ``final="replace_zero"``, or ``"trailing"`` / ``"karras"``. A step to sigma = 0 is first order
    (there ``x_s = alpha_s D``), and ``lower_order_final`` makes the last step first order when it
    lands elsewhere.
    """
    del key
    grid = common.resolve_grid(schedule, x_T, ts, steps, spacing, t_end=t_end, sigma_min=sigma_min,
                               sigma_max=sigma_max, rho=rho, final=final)
    n = grid.ts.shape[0] - 1
    fn = common.checked(denoise_fn)
    first_order_last = lower_order_final and not grid.to_zero

    def step(carry, inp):
        x, x0_prev, h_prev = carry
        t, s, i, _ = inp
        x0 = fn(x, common.per_example(t, x))
        h = _half_lambda(schedule, s) - _half_lambda(schedule, t)
        r = h_prev / h
        second = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        first_order = (i == 0) | (first_order_last & (i == n - 1))
        D = jnp.where(first_order, x0, second)
        # Finite where sigma_s = 0 (h = inf): then x_s = alpha_s D.
        x_s = (schedule.sigma(s) / schedule.sigma(t)) * x + schedule.alpha(s) * -jnp.expm1(-h) * D
        return x_s, x0, h

    x, _, _ = common.scan_steps(step, (x_T, jnp.zeros_like(x_T), jnp.ones((), grid.ts.dtype)), grid.ts,
                                constraint=constraint)
    return common.finish(x, grid, fn), {"nfe": grid.steps}
