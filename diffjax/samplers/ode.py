"""Probability-flow ODE samplers (Song et al. 2021, eq. 13) in schedule time.

``dx/dt = f(t) x - g(t)^2 / 2 * score(x, t)`` with ``score = (alpha D(x, t) - x) / sigma^2``,
integrated from ``t_max`` down to ``t_eps`` by fixed-step Euler or Heun (explicit trapezoidal
rule) or by an adaptive diffrax Runge-Kutta solver that stays on device.
"""
from __future__ import annotations

from typing import Any, Callable

import diffrax
import jax
import jax.numpy as jnp

from diffjax.samplers import common
from diffjax.schedules import Schedule

Array = jax.Array


def pf_ode_velocity(denoise_fn: Callable, schedule: Schedule) -> Callable[[Array, Array], Array]:
    """``(x, t) -> dx/dt`` of the probability-flow ODE for a denoiser."""
    fn = common.checked(denoise_fn)

    def velocity(x, t):
        t = common.per_example(t, x)
        score = common.score_from_x0(x, fn(x, t), t, schedule)
        return schedule.reverse_drift(x, t, score, probability_flow=True)

    return velocity


def _finish(x: Array, t_end: Array, denoise_fn: Callable, denoise: bool, nfe: Any) -> tuple[Array, dict]:
    """Optionally replace the end point by its denoised value ``D(x, t_end)`` (one more NFE)."""
    if denoise:
        return common.checked(denoise_fn)(x, common.per_example(t_end, x)), {"nfe": nfe + 1}
    return x, {"nfe": nfe}


def ode_euler(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *, steps: int | None = 100,
              spacing: str = "uniform", ts: Any = None, t_end: float | None = None,
              denoise: bool = False) -> tuple[Array, dict]:
    """Euler's method on the probability-flow ODE over ``steps`` steps (first order)."""
    del key
    return _fixed_step(denoise_fn, schedule, x_T, steps, spacing, ts, t_end, denoise, heun=False)


def ode_heun(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *, steps: int | None = 50,
             spacing: str = "uniform", ts: Any = None, t_end: float | None = None,
             denoise: bool = False) -> tuple[Array, dict]:
    """Heun's method (explicit trapezoidal rule) on the probability-flow ODE (second order, 2 NFE/step)."""
    del key
    return _fixed_step(denoise_fn, schedule, x_T, steps, spacing, ts, t_end, denoise, heun=True)


def _fixed_step(denoise_fn, schedule, x_T, steps, spacing, ts, t_end, denoise, heun):
    grid = common.resolve_grid(schedule, ts, steps, spacing, t_start=schedule.t_max,
                               t_end=schedule.t_eps if t_end is None else t_end)
    velocity = pf_ode_velocity(denoise_fn, schedule)

    def step(x, inp):
        t, s, _, _ = inp
        d = velocity(x, t)
        x_next = x + (s - t) * d
        if heun:
            x_next = x + (s - t) * 0.5 * (d + velocity(x_next, s))
        return x_next

    n = grid.shape[0] - 1
    x = common.scan_steps(step, x_T, grid)
    return _finish(x, grid[-1], denoise_fn, denoise, (2 if heun else 1) * n)


_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
            "bosh3": diffrax.Bosh3, "heun": diffrax.Heun}
# Function evaluations per attempted step of each solver, which reuse the last stage (FSAL) except Heun.
_EVALS_PER_STEP = {"tsit5": 6, "dopri5": 6, "dopri8": 13, "bosh3": 3, "heun": 2}


def ode_adaptive(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *, solver: str = "tsit5",
                 rtol: float = 1e-5, atol: float = 1e-5, dt0: float | None = None, max_steps: int = 4096,
                 t_end: float | None = None, denoise: bool = False) -> tuple[Array, dict]:
    """The probability-flow ODE by an adaptive diffrax solver with a PID step-size controller.

    score_sde integrates with scipy's RK45 (rtol = atol = 1e-5) on the host; this runs the same
    Dormand-Prince family (``"dopri5"``, or ``"tsit5"``) inside one compiled ``while_loop``.
    ``info["nfe"]`` counts the solver's function evaluations from diffrax's step statistics.
    """
    del key
    if solver not in _SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; known solvers: {', '.join(sorted(_SOLVERS))}")
    t0, t1 = float(schedule.t_max), float(schedule.t_eps if t_end is None else t_end)
    velocity = pf_ode_velocity(denoise_fn, schedule)
    term = diffrax.ODETerm(lambda t, y, args: velocity(y, t))
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    sol = diffrax.diffeqsolve(term, _SOLVERS[solver](), t0=t0, t1=t1, dt0=-(t0 - t1) / 100 if dt0 is None else -abs(dt0),
                              y0=x_T, stepsize_controller=controller, max_steps=max_steps,
                              saveat=diffrax.SaveAt(t1=True))
    attempted = sol.stats["num_steps"]
    nfe = _EVALS_PER_STEP[solver] * attempted + (1 if solver != "heun" else 0)
    x, info = _finish(sol.ys[-1], jnp.asarray(t1), denoise_fn, denoise, nfe)
    info.update(steps=sol.stats["num_accepted_steps"], rejected=sol.stats["num_rejected_steps"])
    return x, info
