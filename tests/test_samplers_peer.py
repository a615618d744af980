"""Parity with the PyTorch diffusers schedulers, given the same model outputs and noise draws.

Both sides see one deterministic fake eps-model ``eps = 0.3 x + 0.1 sin(n)`` of the integer
timestep n (diffusers passes n; diffjax's DiscreteSchedule maps step n to t = (n + 1) / T), the
same betas and alphas_cumprod, the same timesteps and the same x_T.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import samplers
from diffjax.schedules import DiscreteSchedule

pytestmark = pytest.mark.peer
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

T = 1000
TOL = 1e-5  # on max |ours - theirs| / max(1, |theirs|)
BETAS = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


def _schedule(sched) -> DiscreteSchedule:
    """diffjax's schedule on diffusers' own float32 betas and alphas_cumprod."""
    return DiscreteSchedule(betas=jnp.asarray(sched.betas.numpy()),
                            alphas_cumprod=jnp.asarray(sched.alphas_cumprod.numpy()), t_eps=1.0 / T)


def _fake_eps_torch(x, n):
    return 0.3 * x + 0.1 * torch.sin(torch.as_tensor(n, dtype=torch.float32))


def _fake_denoiser(schedule):
    """The fake eps-model seen through diffjax: the network gets c_noise(t) = T t - 1 = n."""

    def eps(x, t):
        n = jnp.round(schedule.c_noise(t))  # = n up to float32 round-off of (n + 1) / T
        return 0.3 * x + 0.1 * jnp.sin(n)[:, None]

    return lambda x, t: (x - schedule.sigma(t)[:, None] * eps(x, t)) / schedule.alpha(t)[:, None]


def _grid(timesteps) -> np.ndarray:
    return np.append((np.asarray(timesteps, np.float64) + 1.0) / T, 0.0)


def _x_T(shape=(16, 3)):
    return np.array(jax.random.normal(jax.random.PRNGKey(0), shape), np.float32)


def _max_diff(a, b) -> float:
    """max |a - b| / max(1, |b|): absolute below 1, relative above (the fake model's outputs grow to ~50)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_time_grid_reproduces_diffusers_timestep_spacings(spacing):
    sched = diffusers.DDIMScheduler(**BETAS, timestep_spacing=spacing)
    sched.set_timesteps(50)
    grid = samplers.time_grid(DiscreteSchedule.linear(T), 50, spacing)
    np.testing.assert_allclose(np.append(grid.ts, 0.0), _grid(sched.timesteps.numpy()), atol=1e-7)
    assert grid.to_zero


def test_ddim_deterministic_matches_diffusers_ddim_scheduler():
    sched = diffusers.DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    sched.set_timesteps(50)
    x = torch.from_numpy(_x_T())
    for n in sched.timesteps:
        x = sched.step(_fake_eps_torch(x, n), n, x, eta=0.0).prev_sample
    schedule = _schedule(sched)
    ours, info = samplers.sample("ddim", _fake_denoiser(schedule), schedule, jax.random.PRNGKey(1),
                                 x_T=jnp.asarray(_x_T()), ts=_grid(sched.timesteps.numpy()), eta=0.0)
    assert info["nfe"] == 50
    assert _max_diff(ours, x.numpy()) < TOL


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_stochastic_ddim_step_matches_diffusers_with_the_same_noise(eta):
    sched = diffusers.DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    sched.set_timesteps(20)
    schedule = _schedule(sched)
    denoise = _fake_denoiser(schedule)
    ts = _grid(sched.timesteps.numpy())
    x_t = torch.from_numpy(_x_T())
    x_j = jnp.asarray(_x_T())
    gen = torch.Generator().manual_seed(0)
    for i, n in enumerate(sched.timesteps):
        z = torch.randn(x_t.shape, generator=gen)
        x_t = sched.step(_fake_eps_torch(x_t, n), n, x_t, eta=eta, variance_noise=z).prev_sample
        x0 = denoise(x_j, jnp.full((x_j.shape[0],), ts[i], jnp.float32))
        x_j = samplers.ddim_step(x_j, x0, ts[i], ts[i + 1], schedule, eta, jnp.asarray(z.numpy()))
    assert _max_diff(x_j, x_t.numpy()) < TOL


def _float64(sched):
    """The scheduler with its float32 tables cast to float64 (the same values, computed in float64)."""
    for name in ("betas", "alphas", "alphas_cumprod", "one"):
        setattr(sched, name, getattr(sched, name).double())
    return sched


@pytest.mark.parametrize("variance_type,variance,steps", [
    ("fixed_small", "beta_tilde", 1000), ("fixed_large", "beta", 1000), ("fixed_small", "beta_tilde", 50),
    ("learned_range", "learned", 1000)])
def test_ddpm_step_matches_diffusers_ddpm_scheduler(variance_type, variance, steps):
    """Teacher-forced over every step: the same x_t on both sides; the mean and the variance compared.

    diffusers is evaluated in float64 (its tables cast from float32): in float32 its
    ``1 - alphabar_t / alphabar_prev`` loses ~4e-4 relative accuracy at n <= 2. diffjax's variance
    goes through float32 log-alphabar, whose round-off leaves ~1e-4 relative error in a
    beta ~ 0.015 at large n, so variances are compared at rtol 2e-4 and means at 1e-5.
    """
    sched = _float64(diffusers.DDPMScheduler(**BETAS, clip_sample=False, variance_type=variance_type,
                                             timestep_spacing="leading"))
    sched.set_timesteps(steps)
    schedule = DiscreteSchedule(betas=jnp.asarray(sched.betas.numpy(), jnp.float32),
                                alphas_cumprod=jnp.asarray(sched.alphas_cumprod.numpy(), jnp.float32), t_eps=1.0 / T)
    ts = _grid(sched.timesteps.numpy())
    learned = variance == "learned"

    def model_out_torch(x, n):  # eps, then (learned) a fake raw variance output r in [-1, 1]
        eps = _fake_eps_torch(x, n).double()
        return torch.cat([eps, torch.tanh(0.5 * x + 0.001 * n)], 1) if learned else eps

    def model_fn(x, t):  # diffjax's view of the same network
        n = jnp.round(schedule.c_noise(t))[:, None]
        return jnp.concatenate([0.3 * x + 0.1 * jnp.sin(n), jnp.tanh(0.5 * x + 0.001 * n)], -1)

    denoise = (samplers.learned_variance_denoiser(model_fn, schedule, "eps") if learned
               else _fake_denoiser(schedule))
    step = jax.jit(lambda x, t, s, z: _ddpm_step(denoise, schedule, variance, x, t, s, z))
    x = torch.from_numpy(_x_T()).double()
    worst_mean = worst_var = 0.0
    for i, n in enumerate(sched.timesteps[:-1]):  # the last step (n = 0) adds no noise on either side
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        out = model_out_torch(x, n)
        x_next = sched.step(out, n, x, generator=torch.Generator().manual_seed(i)).prev_sample
        var = sched._get_variance(n, predicted_variance=out[:, x.shape[1]:] if learned else None)
        std = torch.exp(0.5 * var) if learned else var.sqrt()
        x32 = jnp.asarray(x.numpy(), jnp.float32)
        mean = step(x32, ts[i], ts[i + 1], jnp.zeros(x.shape))
        our_std = step(x32, ts[i], ts[i + 1], jnp.ones(x.shape)) - mean
        worst_mean = max(worst_mean, _max_diff(mean, (x_next - std * z).numpy()))
        worst_var = max(worst_var, float(np.max(np.abs(np.asarray(our_std, np.float64) ** 2 / (std ** 2).numpy() - 1))))
        x = x_next
    assert worst_mean < TOL
    assert worst_var < 2e-4


def _ddpm_step(denoise, schedule, variance, x, t, s, z):
    out = denoise(x, jnp.full((x.shape[0],), t))
    x0, v = out if variance == "learned" else (out, None)
    return samplers.ddpm_step(x, x0, t, s, schedule, variance, z, v)


def _run_karras_scheduler(sched, x_tilde):
    x = torch.from_numpy(x_tilde)
    for n in sched.timesteps:
        x = sched.step(_fake_eps_torch(sched.scale_model_input(x, n), n), n, x).prev_sample
    return x.numpy()


@pytest.mark.parametrize("name,cls", [("edm_euler", "EulerDiscreteScheduler"), ("edm_heun", "HeunDiscreteScheduler")])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_edm_euler_and_heun_match_diffusers_karras_schedulers(name, cls, spacing):
    sched = getattr(diffusers, cls)(**BETAS, timestep_spacing=spacing)
    sched.set_timesteps(25)
    schedule = _schedule(sched)
    steps = np.unique(sched.timesteps.numpy())[::-1]
    ts = _grid(steps)
    x_T = _x_T()
    # diffusers works on x / alpha (EDM's scaled-out x~); diffjax takes x_T on the schedule's scale.
    x_tilde = x_T / np.sqrt(sched.alphas_cumprod.numpy()[int(steps[0])])
    theirs = _run_karras_scheduler(sched, x_tilde.astype(np.float32))
    ours, info = samplers.sample(name, _fake_denoiser(schedule), schedule, jax.random.PRNGKey(1),
                                 x_T=jnp.asarray(x_T), ts=ts)
    assert int(info["nfe"]) == (25 if name == "edm_euler" else 49)
    assert _max_diff(ours, theirs) < TOL


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_pp_2m_matches_diffusers_multistep_scheduler(steps):
    sched = diffusers.DPMSolverMultistepScheduler(**BETAS, solver_order=2, algorithm_type="dpmsolver++",
                                                  solver_type="midpoint", lower_order_final=True)
    sched.set_timesteps(steps)
    x = torch.from_numpy(_x_T())
    for n in sched.timesteps:
        x = sched.step(_fake_eps_torch(x, n), n, x).prev_sample
    schedule = _schedule(sched)
    ours, info = samplers.sample("dpm_solver_pp_2m", _fake_denoiser(schedule), schedule, jax.random.PRNGKey(1),
                                 x_T=jnp.asarray(_x_T()), ts=_grid(sched.timesteps.numpy()))
    assert info["nfe"] == steps
    assert _max_diff(ours, x.numpy()) < TOL


# diffusers' DPMSolverMultistepScheduler grids by name: (timestep_spacing, use_karras_sigmas) -> diffjax options
DPM_GRIDS = [("linspace", False, dict(spacing="linspace", final="replace_zero")),
             ("leading", False, dict(spacing="leading", final="replace_zero")),
             ("trailing", False, dict(spacing="trailing")),
             ("linspace", True, dict(spacing="karras"))]


@pytest.mark.parametrize("spacing,karras,opts", DPM_GRIDS, ids=[f"{g[0]}-karras{g[1]}" for g in DPM_GRIDS])
@pytest.mark.parametrize("steps", [7, 20])
def test_dpm_solver_pp_2m_builds_the_grids_of_diffusers_multistep_scheduler(spacing, karras, opts, steps):
    """No hand-built grid: diffusers' own spacing (final_sigmas_type="zero") by name, same trajectory."""
    sched = diffusers.DPMSolverMultistepScheduler(**BETAS, solver_order=2, algorithm_type="dpmsolver++",
                                                  timestep_spacing=spacing, use_karras_sigmas=karras)
    sched.set_timesteps(steps)
    x = torch.from_numpy(_x_T())
    for n in sched.timesteps:
        x = sched.step(_fake_eps_torch(x, n), n, x).prev_sample
    schedule = _schedule(sched)
    grid = samplers.time_grid(schedule, steps, **opts)
    their_sigmas = sched.sigmas.numpy().astype(np.float64)
    our_sigmas = np.append(np.exp(-0.5 * np.asarray(schedule.log_snr(grid.ts), np.float64)), 0.0)
    np.testing.assert_allclose(our_sigmas, their_sigmas, rtol=2e-6)
    ours, info = samplers.sample("dpm_solver_pp_2m", _fake_denoiser(schedule), schedule, jax.random.PRNGKey(1),
                                 x_T=jnp.asarray(_x_T()), steps=steps, **opts)
    assert info["nfe"] == steps
    assert _max_diff(ours, x.numpy()) < TOL
