"""Samplers: pure functions whose step loop is one ``lax.scan`` / ``lax.while_loop``.

Every sampler is ``fn(denoise_fn, schedule, x_T, key, **options) -> (x_0, info)`` over a denoiser
``denoise_fn(x, t) -> x0_hat`` of schedule time, with ``info["nfe"]`` the number of denoiser calls.
``sample(name, ...)`` selects one by name for configs and the command line; ``names()`` lists them.

| name | paper | main options |
|---|---|---|
| ``ddpm`` | Ho et al. 2020, Alg. 2; Nichol & Dhariwal 2021, eq. 15 | grid (steps default T), variance beta / beta_tilde / learned |
| ``ddim`` | Song et al. 2021a, eq. 12 | grid, eta |
| ``euler_maruyama``, ``reverse_diffusion`` | Song et al. 2021, predictors | grid, denoise |
| ``pc`` | Song et al. 2021, Alg. 2-3 | grid, predictor, corrector, snr, n_corrector_steps, denoise |
| ``annealed_langevin`` | Song & Ermon 2019, Alg. 1 | steps (levels), n_steps_each, step_lr, ts, t_end, denoise |
| ``ode_euler``, ``ode_heun`` | Song et al. 2021, eq. 13 | grid |
| ``ode_adaptive`` | eq. 13 with diffrax | solver tsit5 / dopri5 / ..., rtol, atol, max_steps, t_end, denoise |
| ``edm_heun``, ``edm_euler``, ``edm_stochastic`` | Karras et al. 2022, Alg. 1-2 | grid (karras), S_churn, S_tmin, S_tmax, S_noise |
| ``dpm_solver_1/2/3`` | Lu et al. 2022a, Alg. 1-2 | grid (logsnr) |
| ``dpm_solver_pp_2m`` | Lu et al. 2022b, Alg. 2 | grid (logsnr), lower_order_final |

"grid" is the same set of options everywhere, resolved by ``common.time_grid``: ``steps``, ``spacing``
(``uniform``, ``quadratic``, ``leading``, ``trailing``, ``linspace``, ``karras``, ``logsnr``), ``t_end``,
``sigma_min``, ``sigma_max``, ``rho``, ``final`` (``t_end``, ``append_zero``, ``replace_zero``) or an
explicit grid ``ts``. Times are in the float type of ``x_T`` (float64 under ``jax_enable_x64``).

``inpaint(name, denoise_fn, schedule, key, observed, mask, resample=1, jump=1, **options)`` and
``colorize(name, denoise_fn, schedule, key, gray, ...)`` condition any sampler with a step loop on a
known part (replacement, RePaint resampling; ``samplers.inpaint``), through its ``constraint`` option.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax

from diffjax.samplers import guidance
from diffjax.samplers.ancestral import ddim, ddim_step, ddpm, ddpm_step, learned_variance_denoiser
from diffjax.samplers.common import FINALS, SPACINGS, Constraint, Grid, time_grid
from diffjax.samplers.dpm_solver import dpm_solver_pp_2m, dpm_solver_singlestep
from diffjax.samplers.edm import edm_sampler
from diffjax.samplers.gmm import GaussianMixture, gaussian_pf_ode_map
from diffjax.samplers.inpaint import COLOR_BASIS, colorize, inpaint, replacement, to_gray
from diffjax.samplers.ode import ode_adaptive, ode_euler, ode_heun, pf_ode_velocity
from diffjax.samplers.sde import annealed_langevin, pc
from diffjax.schedules import Schedule

Array = jax.Array

_REGISTRY: dict[str, Callable[..., tuple[Array, dict]]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler_maruyama": functools.partial(pc, predictor="euler_maruyama", corrector="none"),
    "reverse_diffusion": functools.partial(pc, predictor="reverse_diffusion", corrector="none"),
    "pc": pc,
    "annealed_langevin": annealed_langevin,
    "ode_euler": ode_euler,
    "ode_heun": ode_heun,
    "ode_adaptive": ode_adaptive,
    "edm_heun": edm_sampler,
    "edm_euler": functools.partial(edm_sampler, second_order=False),
    # EDM's stochastic settings for ImageNet-64 (Table 5): S_churn 40, S_tmin 0.05, S_tmax 50, S_noise 1.003.
    "edm_stochastic": functools.partial(edm_sampler, steps=256, S_churn=40.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.003),
    "dpm_solver_1": functools.partial(dpm_solver_singlestep, order=1),
    "dpm_solver_2": functools.partial(dpm_solver_singlestep, order=2),
    "dpm_solver_3": functools.partial(dpm_solver_singlestep, order=3),
    "dpm_solver_pp_2m": dpm_solver_pp_2m,
}


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Callable[..., tuple[Array, dict]]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; known samplers: {', '.join(names())}")
    return _REGISTRY[name]


def options(name: str) -> dict[str, Any]:
    """The options a sampler accepts, with their defaults."""
    params = inspect.signature(get(name)).parameters
    return {k: p.default for k, p in params.items() if p.kind == inspect.Parameter.KEYWORD_ONLY}


def sample(name: str, denoise_fn: Callable, schedule: Schedule, key: Array, shape: tuple[int, ...] | None = None,
           x_T: Array | None = None, **opts: Any) -> tuple[Array, dict]:
    """Draw samples with the sampler ``name``; ``x_T`` defaults to ``schedule.prior_sample(shape)``.

    ``x_T`` lives at the sampler's first time (``t_max`` unless a grid says otherwise).
    """
    fn = get(name)
    unknown = sorted(set(opts) - set(options(name)))
    if unknown:
        raise ValueError(f"sampler {name!r} has no option(s) {unknown}; its options are {sorted(options(name))}")
    key_prior, key = jax.random.split(key)
    if x_T is None:
        if shape is None:
            raise ValueError("give the sample shape or an initial x_T")
        x_T = schedule.prior_sample(key_prior, tuple(shape))
    elif shape is not None and tuple(shape) != tuple(x_T.shape):
        raise ValueError(f"shape {tuple(shape)} does not match x_T of shape {x_T.shape}")
    return fn(denoise_fn, schedule, x_T, key, **opts)


__all__ = [
    "COLOR_BASIS", "Constraint", "FINALS", "GaussianMixture", "Grid", "SPACINGS", "annealed_langevin", "colorize",
    "ddim", "ddim_step", "ddpm", "ddpm_step",
    "dpm_solver_pp_2m", "dpm_solver_singlestep", "edm_sampler", "gaussian_pf_ode_map", "get", "guidance", "inpaint",
    "learned_variance_denoiser", "names", "ode_adaptive", "ode_euler", "ode_heun", "options", "pc", "pf_ode_velocity",
    "replacement", "sample", "time_grid", "to_gray",
]
