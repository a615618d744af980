"""Reverse-SDE samplers: predictor-corrector (Song et al. 2021) and annealed Langevin (Song & Ermon 2019).

Predictors, one step from t to s = t - dt of the reverse SDE ``dx = [f x - g^2 score] dt + g dW``:
* ``euler_maruyama``: ``x <- x - (f x - g^2 score) dt + g sqrt(dt) z``;
* ``reverse_diffusion``: the reverse of the forward discretisation ``x_t = x_s + F + G z`` given by
  ``schedule.discretize`` (the DDPM step for VP, SMLD for VE): ``x <- x - F + G^2 score + G z`` (eq. 46-47).
Corrector: Langevin dynamics with the step ``2 alpha (r ||z|| / ||score||)^2`` set by a target
signal-to-noise ratio r (Alg. 4-5), alpha = 1 - beta_i for VP and 1 for VE (here ``(alpha_t/alpha_s)^2``).
PC sampling (Alg. 1-3) runs the corrector, then the predictor, at every grid time.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax.samplers import common
from diffjax.schedules import Schedule, bcast

Array = jax.Array
PREDICTORS = ("euler_maruyama", "reverse_diffusion", "none")
CORRECTORS = ("langevin", "none")


def _score_fn(denoise_fn: Callable, schedule: Schedule) -> Callable[[Array, Array], Array]:
    fn = common.checked(denoise_fn)

    def score(x, t):
        t = common.per_example(t, x)
        return common.score_from_x0(x, fn(x, t), t, schedule)

    return score


def _batch_mean_norm(v: Array) -> Array:
    return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


def langevin_corrector(score: Callable, schedule: Schedule, x: Array, t: Array, dt: Array, key: Array,
                       snr: float, n_steps: int) -> tuple[Array, Array]:
    """``n_steps`` of Langevin dynamics at time t with the target-SNR step size (Song et al. 2021, Alg. 5)."""
    alpha = (schedule.alpha(t) / schedule.alpha(t - dt)) ** 2

    def body(carry, k):
        x, _ = carry
        grad = score(x, t)
        z = jax.random.normal(k, x.shape, x.dtype)
        step = 2.0 * alpha * (snr * _batch_mean_norm(z) / _batch_mean_norm(grad)) ** 2
        x_mean = x + step * grad
        return (x_mean + jnp.sqrt(2.0 * step) * z, x_mean), None

    (x, x_mean), _ = jax.lax.scan(body, (x, x), jax.random.split(key, n_steps))
    return x, x_mean


def predictor_step(kind: str, score: Callable, schedule: Schedule, x: Array, t: Array, dt: Array,
                   key: Array) -> tuple[Array, Array]:
    """One predictor step from t to t - dt; returns ``(x, x_mean)``."""
    z = jax.random.normal(key, x.shape, x.dtype)
    if kind == "euler_maruyama":
        x_mean = x - schedule.reverse_drift(x, t, score(x, t)) * dt
        return x_mean + schedule.diffusion(t) * jnp.sqrt(dt) * z, x_mean
    F, G = schedule.discretize(x, t, dt)
    G = bcast(G, x)
    x_mean = x - F + G ** 2 * score(x, t)
    return x_mean + G * z, x_mean


def pc(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *, steps: int | None = 1000,
       predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
       n_corrector_steps: int = 1, spacing: str = "uniform", ts: Any = None, t_end: float | None = None,
       sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0, final: str | None = None,
       denoise: bool = True, constraint: common.Constraint | None = None) -> tuple[Array, dict]:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-3) from t_max to t_eps.

    ``denoise=True`` returns the last predictor's noise-free mean (score_sde's ``noise_removal``).
    ``snr``: 0.16 is score_sde's VE CIFAR-10 value (0.01 for VP with Langevin + reverse diffusion).
    The grid options are ``common.time_grid``'s (a step to sigma = 0 takes the denoiser's ``x0_hat``).
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; expected one of {PREDICTORS}")
    if corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; expected one of {CORRECTORS}")
    if corrector != "none":
        n_corrector_steps = common.check_steps(n_corrector_steps)
    grid = common.resolve_grid(schedule, x_T, ts, steps, spacing, t_end=t_end, sigma_min=sigma_min,
                               sigma_max=sigma_max, rho=rho, final=final)
    score = _score_fn(denoise_fn, schedule)

    def step(carry, inp):
        x, _ = carry
        t, s, _, k = inp
        kc, kp = jax.random.split(k)
        x_mean = x
        if corrector == "langevin":
            x, x_mean = langevin_corrector(score, schedule, x, t, t - s, kc, snr, n_corrector_steps)
        if predictor != "none":
            x, x_mean = predictor_step(predictor, score, schedule, x, t, t - s, kp)
        return x, x_mean

    x, x_mean = common.scan_steps(step, (x_T, x_T), grid.ts, key, constraint)
    n = grid.ts.shape[0] - 1
    per_step = (predictor != "none") + (n_corrector_steps if corrector != "none" else 0)
    x = common.finish(x_mean if denoise else x, grid, common.checked(denoise_fn))
    return x, {"nfe": n * per_step + int(grid.to_zero)}


def annealed_langevin(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *, steps: int = 10,
                      n_steps_each: int = 100, step_lr: float = 2e-5, ts: Any = None,
                      t_end: float | None = None, denoise: bool = False,
                      constraint: common.Constraint | None = None) -> tuple[Array, dict]:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1).

    ``steps`` noise levels ``sigma_1 > ... > sigma_L`` equally spaced in log-SNR (geometric sigmas
    for VE) from t_max to t_eps; at level i, ``n_steps_each`` steps of
    ``x <- x + alpha_i / 2 * score + sqrt(alpha_i) z`` with ``alpha_i = step_lr * sigma_i^2 / sigma_L^2``.
    ``denoise`` adds NCSNv2's final Tweedie step ``D(x, t_L)``. A ``constraint`` projects x after every
    Langevin step, at the level's time (``samplers.inpaint``); it cannot resample.
    """
    if constraint is not None and constraint.resample != 1:
        raise ValueError("annealed_langevin has no reverse steps to resample; use resample=1")
    L = common.check_steps(steps)
    n_steps_each = common.check_steps(n_steps_each)
    # L levels: the log-SNR grid of L points (that of L steps with a last step to sigma = 0, which is ``denoise``).
    grid = common.resolve_grid(schedule, x_T, ts, L, "logsnr", t_end=t_end, final="append_zero" if ts is None else None)
    levels = grid.ts
    score = _score_fn(denoise_fn, schedule)
    sigma_L = schedule.sigma(levels[-1])

    def level(x, inp):
        t, k = inp
        step = step_lr * (schedule.sigma(t) / sigma_L) ** 2

        def langevin(x, kk):
            z = jax.random.normal(kk, x.shape, x.dtype)
            x = x + 0.5 * step * score(x, t) + jnp.sqrt(step) * z
            return (x if constraint is None else constraint.project(x, t, jax.random.fold_in(kk, 1))), None

        x, _ = jax.lax.scan(langevin, x, jax.random.split(k, n_steps_each))
        return x, None

    x, _ = jax.lax.scan(level, x_T, (levels, jax.random.split(key, levels.shape[0])))
    x = common.finish(x, grid._replace(to_zero=denoise), common.checked(denoise_fn))
    return x, {"nfe": levels.shape[0] * n_steps_each + int(denoise)}
