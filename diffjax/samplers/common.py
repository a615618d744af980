"""What every sampler shares: time grids, input checks and the views of a denoiser.

A sampler walks a descending grid of *schedule times* ``ts[0] > ts[1] > ... > ts[M]`` and, when the
grid says so, one last step to noise level sigma = 0. ``time_grid`` builds the grids of the papers
and of their reference code, by name (``spacing``):

* ``"uniform"``: equal steps in t (score_sde, Song et al. 2021; DPM-Solver's ``time_uniform``). On a
  ``DiscreteSchedule`` it is the DDIM code's stride ``range(0, T, T // N)`` over step indices
  (Song et al. 2021a, App. D.2).
* ``"quadratic"``: DDIM's quadratic stride ``int(linspace(0, sqrt(0.8 T), N) ** 2)`` (repeats merged) on a
  ``DiscreteSchedule`` (it stops at step 0.8 T, as in the DDIM code: for the linear betas that is
  alphabar ~ 1e-3, but not for the cosine schedule); ``t = t_end + (t_start - t_end) u^2`` on a continuous one.
* ``"leading"``, ``"trailing"``, ``"linspace"``: diffusers' integer timestep spacings (Lin et al.
  2024, Table 2), ``DiscreteSchedule`` only: ``arange(N) * (T // N)``, ``round(arange(T, 0, -T / N)) - 1``
  and ``round(linspace(0, T - 1, N))`` (DDIM's; diffusers' Euler and Heun schedulers keep the fractional
  ``linspace`` timesteps and interpolate sigma linearly between steps, which a ``DiscreteSchedule``,
  linear in log alphabar, does not reproduce).
* ``"karras"``: EDM's rho-spaced noise levels (Karras et al. 2022, eq. 5) of ``sigma~ = sigma / alpha``
  from ``sigma_max`` to ``sigma_min`` (k-diffusion ``get_sigmas_karras``, diffusers ``use_karras_sigmas``).
* ``"logsnr"``: equal steps in log-SNR (DPM-Solver's ``logSNR`` skip type, Lu et al. 2022a, Sec. 3.3).

The grid runs from ``t_max`` (or the time of noise level ``sigma_max``) to ``t_end`` (default ``t_eps``,
or the time of ``sigma_min``); noise levels are EDM's ``sigma~ = sigma / alpha``, the ``sigmas`` of
k-diffusion and diffusers. ``final`` says how it ends, for ``steps = N`` steps in all:

* ``"t_end"``: N + 1 points, the last at t_end (diffusers' ``final_sigmas_type="sigma_min"``; score_sde, DPM-Solver);
* ``"append_zero"``: N points, then a step to sigma = 0 (k-diffusion's ``append_zero``; EDM eq. 5's
  ``sigma_N = 0``; the DDIM code and diffusers' DDIM / DDPM / Euler / Heun, DPM-Solver++ ``trailing``
  and Karras grids, whose last step lands on alphabar = 1);
* ``"replace_zero"``: N + 1 points whose last is replaced by sigma = 0 (diffusers'
  ``DPMSolverMultistepScheduler`` with ``timestep_spacing="linspace"`` or ``"leading"`` and
  ``final_sigmas_type="zero"``).

The default (``final=None``) is ``"append_zero"`` for Karras grids and the integer steps of a
``DiscreteSchedule``, as their papers and codes run them, and ``"t_end"`` otherwise and for an explicit
grid ``ts``. Every solver's step to sigma = 0 is the same: x becomes the denoiser's ``x0_hat`` (DDIM
eq. 12, DPM-Solver-1 / ++ and Euler at sigma_s = 0), which is how ``finish`` takes it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import predictions
from diffjax.schedules import DiscreteSchedule, Schedule

Array = jax.Array
Denoiser = Callable[[Array, Array], Array]

SPACINGS = ("uniform", "quadratic", "leading", "trailing", "linspace", "karras", "logsnr")
FINALS = ("t_end", "append_zero", "replace_zero")
_STEP_SPACINGS = ("uniform", "quadratic", "leading", "trailing", "linspace")  # integer steps on a DiscreteSchedule
_DISCRETE_ONLY = ("leading", "trailing", "linspace")


class Grid(NamedTuple):
    """The times a sampler steps between and whether one more step goes from ``ts[-1]`` to sigma = 0."""

    ts: Array
    to_zero: bool

    @property
    def steps(self) -> int:
        return self.ts.shape[0] - 1 + int(self.to_zero)


def check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def time_dtype(x: Array) -> Any:
    """The float type of times for samples ``x``: x's own (float64 under x64), at least float32."""
    return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


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
    else:  # linspace
        seq = np.round(np.linspace(0, T - 1, steps)).astype(np.int64)
    # The quadratic stride repeats its first steps when N is large (0, 0, 1, 3, ...); a repeated
    # step is a no-op of DDIM, so it is merged (fewer NFE than ``steps``, reported as such).
    return np.unique(seq)[::-1]


def _t_of_sigma(schedule: Schedule, sigma: Any) -> Array:
    """The time whose noise level ``sigma~ = sigma / alpha = exp(-lambda / 2)`` is ``sigma``."""
    return schedule.t_from_log_snr(-2.0 * jnp.log(sigma))


def _end(schedule: Schedule, t: float | None, sigma: float | None, default: float, name: str, dtype) -> Array:
    if t is not None and sigma is not None:
        raise ValueError(f"give t_{name} or sigma_{'max' if name == 'start' else 'min'}, not both")
    if sigma is not None:
        if not sigma > 0:
            raise ValueError(f"sigma_{'max' if name == 'start' else 'min'} must be > 0, got {sigma}")
        return _t_of_sigma(schedule, jnp.asarray(sigma, dtype))
    return jnp.asarray(default if t is None else t, dtype)


def time_grid(schedule: Schedule, steps: int, spacing: str = "uniform", *, t_start: float | None = None,
              t_end: float | None = None, sigma_max: float | None = None, sigma_min: float | None = None,
              rho: float = 7.0, final: str | None = None, dtype: Any = None) -> Grid:
    """The grid of ``steps`` steps named by ``spacing`` and ``final`` (see the module docstring).

    ``dtype``: of the times (default: JAX's default float, float64 under x64).
    """
    steps = check_steps(steps)
    with jax.ensure_compile_time_eval():  # concrete under jit too: the grid depends on static options only
        return _time_grid(schedule, steps, spacing, t_start, t_end, sigma_max, sigma_min, rho, final, dtype)


def _time_grid(schedule, steps, spacing, t_start, t_end, sigma_max, sigma_min, rho, final, dtype) -> Grid:
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; known spacings: {', '.join(SPACINGS)}")
    step_grid = isinstance(schedule, DiscreteSchedule) and spacing in _STEP_SPACINGS
    if final is None:
        final = "append_zero" if step_grid or spacing == "karras" else "t_end"
    if final not in FINALS:
        raise ValueError(f"unknown final {final!r}; known: {', '.join(FINALS)}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    dtype = jnp.result_type(float) if dtype is None else dtype
    points = steps if final == "append_zero" else steps + 1
    if spacing in _DISCRETE_ONLY and not step_grid:
        raise ValueError(f"spacing {spacing!r} picks integer steps of a DiscreteSchedule, got "
                         f"{type(schedule).__name__}; for a continuous schedule use one of 'uniform', 'quadratic', "
                         f"'karras', 'logsnr'")
    if step_grid:
        given = [k for k, v in dict(t_start=t_start, t_end=t_end, sigma_max=sigma_max, sigma_min=sigma_min).items()
                 if v is not None]
        if given:
            raise ValueError(f"spacing {spacing!r} picks integer steps of the whole DiscreteSchedule; "
                             f"{', '.join(given)} do not apply (use 'karras', 'logsnr' or an explicit ts)")
        ts = jnp.asarray((discrete_steps(schedule.T, points, spacing) + 1.0) / schedule.T, dtype)
    else:
        t0 = _end(schedule, t_start, sigma_max, schedule.t_max, "start", dtype)
        t1 = _end(schedule, t_end, sigma_min, schedule.t_eps, "end", dtype)
        ts = _continuous_grid(schedule, points, spacing, t0, t1, rho, dtype)
    if final == "replace_zero":
        ts = ts[:-1]
    return Grid(ts, final != "t_end")


def _continuous_grid(schedule, points, spacing, t0, t1, rho, dtype) -> Array:
    if _is_concrete(t0) and _is_concrete(t1) and not float(t0) > float(t1):
        raise ValueError(f"the grid must run from a later to an earlier time, got t_start={float(t0)}, "
                         f"t_end={float(t1)}")
    u = jnp.linspace(0.0, 1.0, points, dtype=dtype)
    if spacing == "uniform":
        return t0 + (t1 - t0) * u
    if spacing == "quadratic":
        return t1 + (t0 - t1) * (1.0 - u) ** 2
    lam0, lam1 = schedule.log_snr(t0), schedule.log_snr(t1)
    if spacing == "logsnr":
        lam = lam0 + (lam1 - lam0) * u
    else:  # karras: rho-spaced sigma~ = exp(-lambda / 2) (EDM eq. 5)
        s0, s1 = jnp.exp(-0.5 * lam0), jnp.exp(-0.5 * lam1)
        sig = (s0 ** (1 / rho) + u * (s1 ** (1 / rho) - s0 ** (1 / rho))) ** rho
        lam = -2.0 * jnp.log(sig)
    ts = schedule.t_from_log_snr(lam)
    return ts.at[0].set(t0).at[-1].set(t1) if points > 1 else ts.at[0].set(t0)  # the ends exactly


def _is_concrete(v: Any) -> bool:
    return not isinstance(v, jax.core.Tracer)


def resolve_grid(schedule: Schedule, x: Array, ts: Any = None, steps: int | None = None, spacing: str = "uniform",
                 *, t_end: float | None = None, sigma_max: float | None = None, sigma_min: float | None = None,
                 rho: float = 7.0, final: str | None = None) -> Grid:
    """An explicit grid ``ts`` (checked) or one built by ``time_grid``, in the float type of ``x``."""
    dtype = time_dtype(x)
    if ts is None:
        if steps is None:
            raise ValueError("give either steps (an integer >= 1) or an explicit time grid ts")
        return time_grid(schedule, steps, spacing, t_end=t_end, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho,
                         final=final, dtype=dtype)
    final = "t_end" if final is None else final
    if final not in FINALS:
        raise ValueError(f"unknown final {final!r}; known: {', '.join(FINALS)}")
    ts_np = np.asarray(ts, dtype=np.float64)
    if ts_np.ndim != 1 or ts_np.size < 2 or np.any(np.diff(ts_np) >= 0):
        raise ValueError(f"ts must be a 1-D strictly decreasing grid of at least 2 times, got {ts_np}")
    schedule.check_time(ts_np)
    ts_np = ts_np[:-1] if final == "replace_zero" else ts_np
    return Grid(jnp.asarray(ts_np, dtype), final != "t_end")


def checked(denoise_fn: Denoiser) -> Denoiser:
    """The denoiser, with a clear error when its output does not have the shape of ``x``."""

    def fn(x, t):
        out = denoise_fn(x, t)
        if not hasattr(out, "shape") or out.shape != x.shape:
            raise ValueError(f"the denoiser must return an array of the input's shape {x.shape}, "
                             f"got {getattr(out, 'shape', type(out).__name__)}")
        return out

    return fn


def finish(x: Array, grid: Grid, denoise_fn: Denoiser) -> Array:
    """The step from ``grid.ts[-1]`` to sigma = 0 when the grid has one: ``x0_hat = D(x, t)``."""
    return denoise_fn(x, per_example(grid.ts[-1], x)) if grid.to_zero else x


def per_example(t: Array, x: Array) -> Array:
    """A scalar time as a ``(B,)`` vector, the form networks receive, in the time type of ``x``."""
    return jnp.broadcast_to(jnp.asarray(t, time_dtype(x)), (x.shape[0],))


def eps_from_x0(x: Array, x0: Array, t: Array, schedule: Schedule) -> Array:
    return predictions.convert(x0, x, t, schedule, source="x0", target="eps")


def score_from_x0(x: Array, x0: Array, t: Array, schedule: Schedule) -> Array:
    return predictions.convert(x0, x, t, schedule, source="x0", target="score")


class Constraint(NamedTuple):
    """A known part of the sample that the step loop keeps consistent (inpainting, colourisation).

    ``project(x, t, key)`` returns x with its known part replaced by the observation diffused to time
    t (``samplers.inpaint.replacement`` builds one); ``scan_steps`` applies it after every step, at the
    time the step lands on. ``resample`` > 1 is RePaint's resampling (Lugmayr et al. 2022, Alg. 1 and
    Sec. 4.2): every block of ``jump`` steps is run ``resample`` times, x being re-noised by the forward
    process ``q(x_t | x_s)`` from the block's end back to its start between runs. ``key`` draws the
    noise of the projections and re-noisings.
    """

    project: Callable[[Array, Array, Array], Array]
    schedule: Schedule
    key: Array
    resample: int = 1
    jump: int = 1


def renoise(schedule: Schedule, x: Array, s: Array, t: Array, key: Array) -> Array:
    """A draw of ``q(x_t | x_s)``, s < t: ``r x_s + sqrt(sigma_t^2 - r^2 sigma_s^2) z`` with ``r = alpha_t / alpha_s``."""
    ratio = schedule.alpha(t) / schedule.alpha(s)
    var = jnp.maximum(schedule.sigma(t) ** 2 - ratio ** 2 * schedule.sigma(s) ** 2, 0.0)
    return ratio * x + jnp.sqrt(var) * jax.random.normal(key, x.shape, x.dtype)


def repaint_actions(n: int, resample: int, jump: int) -> np.ndarray:
    """RePaint's walk over n steps as rows ``(is_jump, i, end, block_start)``.

    A step row runs step i (``ts[i] -> ts[i + 1]``); a jump row re-noises from ``ts[end]`` back to
    ``ts[i]``. Each block of ``jump`` steps (the last one may be shorter) runs ``resample`` times.
    """
    rows = []
    for b in range(0, n, jump):
        e = min(b + jump, n)
        for u in range(resample):
            if u:
                rows.append((1, b, e, 0))
            rows.extend((0, i, i + 1, int(i == b)) for i in range(b, e))
    return np.asarray(rows, np.int32)


def _x_of(carry: Any) -> Array:  # a step's carry is x or a tuple whose first item is x
    return carry[0] if isinstance(carry, tuple) else carry


def _with_x(carry: Any, x: Array) -> Any:
    return (x,) + tuple(carry[1:]) if isinstance(carry, tuple) else x


def _constrained_scan(step: Callable, carry: Any, ts: Array, key: Array | None, constraint: Constraint):
    actions = repaint_actions(ts.shape[0] - 1, constraint.resample, constraint.jump)

    def body(state, act):
        carry, saved = state
        is_jump, i, end, block_start, a = act
        k_proj = jax.random.fold_in(constraint.key, a)

        def run_step(_):
            saved_now = jax.tree_util.tree_map(lambda c, v: jnp.where(block_start == 1, c, v), carry, saved)
            k = jax.random.fold_in(key, a) if key is not None else jnp.zeros((2,), jnp.uint32)
            new = step(carry, (ts[i], ts[i + 1], i, k))
            return _with_x(new, constraint.project(_x_of(new), ts[i + 1], k_proj)), saved_now

        def jump_back(_):  # the state at the block's start, with x re-noised from ts[end] to ts[i]
            x = renoise(constraint.schedule, _x_of(carry), ts[end], ts[i], k_proj)
            return _with_x(saved, x), saved

        if constraint.resample == 1:
            return run_step(None), None
        return jax.lax.cond(is_jump == 1, jump_back, run_step, None), None

    xs = tuple(jnp.asarray(actions[:, c]) for c in range(4)) + (jnp.arange(actions.shape[0]),)
    (carry, _), _ = jax.lax.scan(body, (carry, carry), xs)
    return carry


def scan_steps(step: Callable, carry: Any, ts: Array, key: Array | None = None, constraint: Constraint | None = None):
    """Run ``step(carry, (t, s, i, key_i)) -> carry`` over consecutive pairs of ``ts`` in one scan.

    With a ``constraint`` the carry's x (the carry itself, or its first item) is projected after each
    step and RePaint's resampling walk is followed (see ``Constraint``).
    """
    if constraint is not None:
        return _constrained_scan(step, carry, ts, key, constraint)
    n = ts.shape[0] - 1
    keys = jax.random.split(key, n) if key is not None else jnp.zeros((n, 2), jnp.uint32)
    xs = (ts[:-1], ts[1:], jnp.arange(n), keys)
    carry, _ = jax.lax.scan(lambda c, inp: (step(c, inp), None), carry, xs)
    return carry
