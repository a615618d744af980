"""Samplers against closed forms: Gaussian data with its exact denoiser, the exact PF-ODE map,
and orders of convergence. Mode coverage, guidance and bad inputs are in test_samplers_more.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import samplers
from diffjax.schedules import DiscreteSchedule, EDMSchedule, VESDE, VPSDE

M = np.array([0.5, -1.0])
S = np.array([0.3, 1.5])
GAUSS = samplers.GaussianMixture.gaussian(M, S)
N_SAMPLES = 8000
# Sampling noise alone gives ~0.02-0.03 (2 sigma of mean/std estimates from 8000 samples).
MOMENT_TOL = 0.06


def moment_error(x) -> float:
    """max over dims of |mean - m| / s + |std / s - 1|."""
    x = np.asarray(x, np.float64)
    return float(np.max(np.abs(x.mean(0) - M) / S + np.abs(x.std(0) / S - 1.0)))


def run(name, schedule, n=N_SAMPLES, key=3, x_T=None, **opts):
    fn = jax.jit(lambda k, x: samplers.sample(name, GAUSS.denoiser(schedule), schedule, k, x_T=x, **opts))
    if x_T is None:
        x_T = schedule.prior_sample(jax.random.PRNGKey(100 + key), (n, 2))
    x, info = fn(jax.random.PRNGKey(key), x_T)
    return np.asarray(x), info


VP = VPSDE()
VE_SMALL = VESDE(sigma_min=0.01, sigma_max=5.0)
# name, schedule, options at a coarse and at a reasonable step count
MOMENT_CASES = [
    ("ddpm", VP, dict(steps=10), dict(steps=200)),
    ("ddpm", DiscreteSchedule.linear(1000), dict(steps=10), dict(steps=1000, variance="beta")),
    ("ddim", VP, dict(steps=5), dict(steps=100)),
    ("ddim", DiscreteSchedule.linear(1000), dict(steps=5, spacing="quadratic"), dict(steps=100, spacing="quadratic")),
    ("euler_maruyama", VP, dict(steps=20), dict(steps=200)),
    ("reverse_diffusion", VP, dict(steps=20), dict(steps=200)),
    ("pc", VP, dict(steps=20, snr=0.1), dict(steps=200, snr=0.1)),
    ("pc", VE_SMALL, dict(steps=20, snr=0.16), dict(steps=200, snr=0.16)),
    ("annealed_langevin", VE_SMALL, dict(steps=10, n_steps_each=5, step_lr=1e-4),
     dict(steps=10, n_steps_each=100, step_lr=1e-4)),
    ("ode_euler", VP, dict(steps=5), dict(steps=50)),
    ("ode_heun", VP, dict(steps=3), dict(steps=25)),
    ("ode_adaptive", VP, dict(rtol=0.3, atol=0.3), dict(rtol=1e-4, atol=1e-4)),
    ("edm_heun", EDMSchedule(), dict(steps=3), dict(steps=32)),
    ("edm_heun", VP, dict(steps=3), dict(steps=32)),
    ("edm_euler", VP, dict(steps=5), dict(steps=100)),
    ("edm_stochastic", EDMSchedule(), dict(steps=8), dict(steps=64)),
    ("dpm_solver_1", VP, dict(steps=5), dict(steps=50)),
    ("dpm_solver_2", VP, dict(steps=3), dict(steps=25)),
    ("dpm_solver_3", VP, dict(steps=2), dict(steps=10)),
    ("dpm_solver_pp_2m", VP, dict(steps=4), dict(steps=20)),
]


@pytest.mark.parametrize("name,schedule,coarse,fine", MOMENT_CASES,
                         ids=[f"{c[0]}-{type(c[1]).__name__}" for c in MOMENT_CASES])
def test_sampler_matches_gaussian_moments_and_improves_with_steps(name, schedule, coarse, fine):
    x_fine, info = run(name, schedule, **fine)
    x_coarse, info_coarse = run(name, schedule, **coarse)
    err_fine, err_coarse = moment_error(x_fine), moment_error(x_coarse)
    assert err_fine < MOMENT_TOL, (err_fine, err_coarse)
    assert err_fine < err_coarse and int(info["nfe"]) > int(info_coarse["nfe"])


def _pf_ode_error(name, schedule, steps, t_end, x_T, **opts):
    x, _ = jax.jit(lambda x: samplers.get(name)(GAUSS.denoiser(schedule), schedule, x, jax.random.PRNGKey(0),
                                                 steps=steps, **opts))(x_T)
    exact = samplers.gaussian_pf_ode_map(x_T, schedule.t_max, t_end, M, S, schedule)
    return float(jnp.sqrt(jnp.mean((x - exact) ** 2)))


# name, the time its grid ends at (EDM's lands on sigma = 0, i.e. t = 0), expected order
ORDER_CASES = [("ode_euler", "t_eps", 1), ("ode_heun", "t_eps", 2), ("ddim", "t_eps", 1), ("edm_euler", 0.0, 1),
               ("edm_heun", 0.0, 2), ("dpm_solver_1", "t_eps", 1), ("dpm_solver_2", "t_eps", 2),
               ("dpm_solver_3", "t_eps", 3), ("dpm_solver_pp_2m", "t_eps", 2)]


@pytest.mark.parametrize("name,end,order", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_convergence_order_against_the_exact_pf_ode_map(name, end, order):
    """log2(err(N) / err(2N)) at N = 32 -> 64 against the closed-form PF-ODE map of Gaussian data."""
    schedule = VP
    t_end = schedule.t_eps if end == "t_eps" else end
    x_T = schedule.prior_sample(jax.random.PRNGKey(0), (256, 2))
    steps = (16, 32) if order == 3 else (32, 64)  # keep DPM-Solver-3 above float32 round-off
    e1, e2 = (_pf_ode_error(name, schedule, n, t_end, x_T) for n in steps)
    measured = np.log2(e1 / e2)
    assert abs(measured - order) < 0.3, (measured, e1, e2)


def test_ddim_eta0_converges_to_the_probability_flow_ode_map():
    x_T = VP.prior_sample(jax.random.PRNGKey(1), (512, 2))
    errors = [_pf_ode_error("ddim", VP, n, VP.t_eps, x_T) for n in (25, 100, 400)]  # its grid ends at t_eps
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 5e-3  # the exact map's outputs have size ~1


def test_ddim_eta1_is_ddpm_with_the_posterior_variance():
    """Same grid and keys: the two are the same update, so the paths agree, not only in distribution."""
    schedule = DiscreteSchedule.linear(1000)
    x_T = schedule.prior_sample(jax.random.PRNGKey(2), (N_SAMPLES, 2))
    x_ddim, _ = run("ddim", schedule, x_T=x_T, steps=250, eta=1.0)
    x_ddpm, _ = run("ddpm", schedule, x_T=x_T, steps=250, variance="beta_tilde")
    assert np.max(np.abs(x_ddim - x_ddpm)) < 1e-4
    assert moment_error(x_ddim) < MOMENT_TOL


def test_learned_variance_interpolates_between_beta_tilde_and_beta():
    """v = 0 gives the posterior variance, v = 1 gives beta (Nichol & Dhariwal 2021, eq. 15)."""
    schedule = DiscreteSchedule.cosine(1000)
    x_T = schedule.prior_sample(jax.random.PRNGKey(4), (64, 2))
    den = GAUSS.denoiser(schedule)
    for v, variance in ((0.0, "beta_tilde"), (1.0, "beta")):
        learned = lambda x, t, v=v: (den(x, t), jnp.full_like(x, v))
        a, _ = samplers.ddpm(learned, schedule, x_T, jax.random.PRNGKey(5), steps=50, variance="learned")
        b, _ = samplers.ddpm(den, schedule, x_T, jax.random.PRNGKey(5), steps=50, variance=variance)
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_adaptive_ode_reports_its_function_evaluations_and_tightens_with_rtol():
    count = []
    den = GAUSS.denoiser(VP)

    def counted(x, t):
        jax.debug.callback(lambda: count.append(1))
        return den(x, t)

    x_T = VP.prior_sample(jax.random.PRNGKey(6), (256, 2))
    exact = samplers.gaussian_pf_ode_map(x_T, VP.t_max, VP.t_eps, M, S, VP)
    errors = []
    for rtol in (1e-3, 1e-6):
        count.clear()
        x, info = jax.jit(lambda x: samplers.ode_adaptive(counted, VP, x, None, rtol=rtol, atol=rtol))(x_T)
        jax.block_until_ready(x)
        assert int(info["nfe"]) == len(count)
        errors.append(float(jnp.max(jnp.abs(x - exact))))
    assert errors[1] < errors[0] / 10 and errors[1] < 1e-4


def test_karras_grid_is_eq5_and_steps_on_to_sigma_zero():
    grid = samplers.time_grid(EDMSchedule(), 18, "karras")
    i = np.arange(18)
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(np.asarray(grid.ts), expected, rtol=1e-5)  # EDM: t = sigma
    assert grid.to_zero and grid.steps == 18


def test_time_grids_follow_their_definitions():
    lin = DiscreteSchedule.linear(1000)
    quad = samplers.time_grid(lin, 10, "quadratic")
    steps = (np.linspace(0, np.sqrt(800), 10) ** 2).astype(int)[::-1]
    np.testing.assert_allclose(np.asarray(quad.ts), (steps + 1) / 1000, atol=1e-7)
    assert quad.to_zero  # the DDIM code's last step lands on alphabar = 1
    uni = samplers.time_grid(lin, 50, "uniform")
    np.testing.assert_allclose(np.asarray(uni.ts), (np.arange(0, 1000, 20)[::-1] + 1) / 1000, atol=1e-7)
    lam = VP.log_snr(samplers.time_grid(VP, 8, "logsnr").ts)
    np.testing.assert_allclose(np.diff(np.asarray(lam)), float(lam[1] - lam[0]), rtol=1e-3)
