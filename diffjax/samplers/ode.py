"""Probability-flow ODE samplers (Song et al. 2021, eq. 13) in schedule time.

``dx/dt = f(t) x - g(t)^2 / 2 * score(x, t)`` with ``score = (alpha D(x, t) - x) / sigma^2``,
integrated from ``t_max`` down to ``t_eps`` by fixed-step Euler or Heun (explicit trapezoidal
rule) on any grid of ``common.time_grid``, or by an adaptive diffrax Runge-Kutta solver that
stays on device.
"""
from __future__ import annotations

from typing import Any, Callable

import diffrax
import jax

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


def ode_euler(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *, steps: int | None = 100,
              spacing: str = "uniform", ts: Any = None, t_end: float | None = None, sigma_min: float | None = None,
              sigma_max: float | None = None, rho: float = 7.0, final: str | None = None,
              constraint: common.Constraint | None = None) -> tuple[Array, dict]:
    """Euler's method on the probability-flow ODE over ``steps`` steps (first order).

    The grid options are ``common.time_grid``'s; ``final="append_zero"`` ends with the denoiser's
    ``x0_hat`` at the last grid time (k-diffusion's last step to sigma = 0).
    """
    del key
    grid = common.resolve_grid(schedule, x_T, ts, steps, spacing, t_end=t_end, sigma_min=sigma_min,
                               sigma_max=sigma_max, rho=rho, final=final)
    return _fixed_step(denoise_fn, schedule, x_T, grid, heun=False, constraint=constraint)


def ode_heun(denoise_fn: Callable, schedule: Schedule, x_T: Array, key: Array, *, steps: int | None = 50,
             spacing: str = "uniform", ts: Any = None, t_end: float | None = None, sigma_min: float | None = None,
             sigma_max: float | None = None, rho: float = 7.0, final: str | None = None,
             constraint: common.Constraint | None = None) -> tuple[Array, dict]:
    """Heun's method (explicit trapezoidal rule) on the probability-flow ODE (second order, 2 NFE/step).

    Grid options as ``ode_euler``.
    """
    del key
    grid = common.resolve_grid(schedule, x_T, ts, steps, spacing, t_end=t_end, sigma_min=sigma_min,
                               sigma_max=sigma_max, rho=rho, final=final)
    return _fixed_step(denoise_fn, schedule, x_T, grid, heun=True, constraint=constraint)


def _fixed_step(denoise_fn, schedule, x_T, grid, heun, constraint=None):
    velocity = pf_ode_velocity(denoise_fn, schedule)

    def step(x, inp):
        t, s, _, _ = inp
        d = velocity(x, t)
        x_next = x + (s - t) * d
        if heun:
            x_next = x + (s - t) * 0.5 * (d + velocity(x_next, s))
        return x_next

    n = grid.ts.shape[0] - 1
    x = common.finish(common.scan_steps(step, x_T, grid.ts, constraint=constraint), grid, common.checked(denoise_fn))
    return x, {"nfe": (2 if heun else 1) * n + int(grid.to_zero)}


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
    x = common.checked(denoise_fn)(sol.ys[-1], common.per_example(t1, x_T)) if denoise else sol.ys[-1]
    return x, {"nfe": nfe + int(denoise), "steps": sol.stats["num_accepted_steps"],
               "rejected": sol.stats["num_rejected_steps"]}
