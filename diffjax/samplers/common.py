"""What every sampler shares: time grids, input checks and the views of a denoiser.

A sampler walks a descending grid of *schedule times* ``ts[0] > ts[1] > ... > ts[N]`` (N steps).
``time_grid`` builds the grids the papers use:

* ``"uniform"``: equal steps in t (score_sde, Song et al. 2021). On a ``DiscreteSchedule`` it is
  the DDIM code's stride ``range(0, T, T // N)`` over step indices (Song et al. 2021a, App. D.2).
* ``"quadratic"``: DDIM's quadratic stride ``int(linspace(0, sqrt(0.8 T), N) ** 2)`` (repeats merged) on a
  ``DiscreteSchedule`` (it stops at step 0.8 T, as in the DDIM code: for the linear betas that is
  alphabar ~ 1e-3, but not for the cosine schedule); ``t = t_end + (t_start - t_end) u^2`` on a continuous one.
* ``"leading"``, ``"trailing"``, ``"linspace"``: diffusers' integer timestep spacings (Lin et al.
  2024, Table 2), ``DiscreteSchedule`` only.
* ``"karras"``: EDM's rho discretisation of sigma/alpha (Karras et al. 2022, eq. 5).
* ``"logsnr"``: equal steps in log-SNR (DPM-Solver's ``logSNR`` skip type, Lu et al. 2022a, Sec. 3.3).

On a ``DiscreteSchedule`` step ``n`` is time ``(n + 1) / T`` and a grid of N chosen steps ends with
``t = 0`` (the data), where DDPM and DDIM put their last step.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import predictions
from diffjax.schedules import DiscreteSchedule, Schedule

Array = jax.Array
Denoiser = Callable[[Array, Array], Array]

SPACINGS = ("uniform", "quadratic", "leading", "trailing", "linspace", "karras", "logsnr")
_DISCRETE_ONLY = ("leading", "trailing", "linspace")


def check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def discrete_steps(T: int, steps: int, spacing: str) -> np.ndarray:
    """Descending step indices in ``0..T-1`` chosen by a respacing rule (DDIM code / diffusers)."""
    if steps > T:
        raise ValueError(f"cannot take {steps} steps on a schedule of T={T} steps")
    if spacing in ("uniform", "leading"):
        seq = np.arange(0, steps) * (T // steps)
    elif spacing == "quadratic":
        seq = (np.linspace(0, math.sqrt(T * 0.8), steps) ** 2).astype(np.int64)
    elif spacing == "trailing":
        seq = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        seq = np.round(np.linspace(0, T - 1, steps)).astype(np.int64)
    else:
        raise ValueError(f"spacing {spacing!r} does not apply to a DiscreteSchedule")
    # The quadratic stride repeats its first steps when N is large (0, 0, 1, 3, ...); a repeated
    # step is a no-op of DDIM, so it is merged (fewer NFE than ``steps``, reported as such).
    return np.unique(seq)[::-1]


def time_grid(schedule: Schedule, steps: int, spacing: str = "uniform", *, t_start: float | None = None,
              t_end: float | None = None, rho: float = 7.0) -> Array:
    """``steps + 1`` descending schedule times from ``t_start`` (default ``t_max``) to ``t_end``.

    ``t_end`` defaults to ``schedule.t_eps``; on a ``DiscreteSchedule`` with a step spacing the grid
    is the chosen steps followed by ``t = 0``.
    """
    steps = check_steps(steps)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; known spacings: {', '.join(SPACINGS)}")
    step_grid = (isinstance(schedule, DiscreteSchedule) and spacing in ("uniform", "quadratic") + _DISCRETE_ONLY
                 and t_start is None and t_end is None)
    if spacing in _DISCRETE_ONLY and not step_grid:
        raise ValueError(f"spacing {spacing!r} picks steps of a DiscreteSchedule (with the default "
                         f"t_start and t_end), got {type(schedule).__name__}")
    if step_grid:
        n = discrete_steps(schedule.T, steps, spacing)
        return jnp.asarray(np.append((n + 1.0) / schedule.T, 0.0), jnp.float32)
    t0 = float(schedule.t_max if t_start is None else t_start)
    t1 = float(schedule.t_eps if t_end is None else t_end)
    if not t0 > t1:
        raise ValueError(f"the grid must run from a later to an earlier time, got t_start={t0}, t_end={t1}")
    u = jnp.linspace(0.0, 1.0, steps + 1)
    if spacing == "uniform":
        return t0 + (t1 - t0) * u
    if spacing == "quadratic":
        return t1 + (t0 - t1) * (1.0 - u) ** 2
    lam0, lam1 = schedule.log_snr(t0), schedule.log_snr(t1)
    if spacing == "logsnr":
        lam = lam0 + (lam1 - lam0) * u
    else:  # karras: rho-spaced sigma = exp(-lambda / 2) (EDM eq. 5)
        s0, s1 = jnp.exp(-0.5 * lam0), jnp.exp(-0.5 * lam1)
        sig = (s0 ** (1 / rho) + u * (s1 ** (1 / rho) - s0 ** (1 / rho))) ** rho
        lam = -2.0 * jnp.log(sig)
    ts = schedule.t_from_log_snr(lam)
    return ts.at[0].set(t0).at[-1].set(t1)  # the ends exactly, free of inversion round-off


def resolve_grid(schedule: Schedule, ts: Any, steps: int | None, spacing: str, **grid_options) -> Array:
    """An explicit grid ``ts`` (checked) or one built by ``time_grid``."""
    if ts is None:
        if steps is None:
            raise ValueError("give either steps (an integer >= 1) or an explicit time grid ts")
        return time_grid(schedule, steps, spacing, **grid_options)
    ts_np = np.asarray(ts, dtype=np.float64)
    if ts_np.ndim != 1 or ts_np.size < 2 or np.any(np.diff(ts_np) >= 0):
        raise ValueError(f"ts must be a 1-D strictly decreasing grid of at least 2 times, got {ts_np}")
    schedule.check_time(ts_np)
    return jnp.asarray(ts_np, jnp.float32)


def checked(denoise_fn: Denoiser) -> Denoiser:
    """The denoiser, with a clear error when its output does not have the shape of ``x``."""

    def fn(x, t):
        out = denoise_fn(x, t)
        if not hasattr(out, "shape") or out.shape != x.shape:
            raise ValueError(f"the denoiser must return an array of the input's shape {x.shape}, "
                             f"got {getattr(out, 'shape', type(out).__name__)}")
        return out

    return fn


def per_example(t: Array, x: Array) -> Array:
    """A scalar time as a ``(B,)`` vector, the form networks receive."""
    return jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))


def eps_from_x0(x: Array, x0: Array, t: Array, schedule: Schedule) -> Array:
    return predictions.convert(x0, x, t, schedule, source="x0", target="eps")


def score_from_x0(x: Array, x0: Array, t: Array, schedule: Schedule) -> Array:
    return predictions.convert(x0, x, t, schedule, source="x0", target="score")


def scan_steps(step: Callable, carry: Any, ts: Array, key: Array | None = None):
    """Run ``step(carry, (t, s, i, key_i)) -> carry`` over consecutive pairs of ``ts`` in one scan."""
    n = ts.shape[0] - 1
    keys = jax.random.split(key, n) if key is not None else jnp.zeros((n, 2), jnp.uint32)
    xs = (ts[:-1], ts[1:], jnp.arange(n), keys)
    carry, _ = jax.lax.scan(lambda c, inp: (step(c, inp), None), carry, xs)
    return carry
