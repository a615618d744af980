"""Samplers on a 25-mode Gaussian mixture with its exact score; guidance; named grids; bad inputs."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import predictions, samplers
from diffjax.samplers import guidance
from diffjax.schedules import DiscreteSchedule, EDMSchedule, VESDE, VPSDE

GRID = np.array([(i, j) for i in range(-2, 3) for j in range(-2, 3)], np.float32)
WEIGHTS = 1.0 + np.arange(25) % 3  # unequal on purpose: samplers must get the weights, not only the modes
MIXTURE = samplers.GaussianMixture.create(WEIGHTS, GRID, 0.1)
N = 5000
FREQ_TOL = 0.015  # per mode; the sampling s.e. of a frequency ~0.06 from 5000 samples is 0.0034

VP = VPSDE()
MODE_CASES = [
    ("ddpm", VP, dict(steps=250)),
    ("ddim", VP, dict(steps=100)),
    ("euler_maruyama", VP, dict(steps=500)),
    ("reverse_diffusion", VP, dict(steps=500)),
    ("pc", VP, dict(steps=250, snr=0.1)),
    ("annealed_langevin", VESDE(sigma_min=0.01, sigma_max=10.0), dict(steps=20, n_steps_each=100, step_lr=1e-4)),
    ("ode_euler", VP, dict(steps=200)),
    ("ode_heun", VP, dict(steps=50)),
    ("ode_adaptive", VP, dict(rtol=1e-3, atol=1e-3)),
    ("edm_heun", EDMSchedule(), dict(steps=32)),
    ("edm_euler", VP, dict(steps=100)),
    ("edm_stochastic", EDMSchedule(), dict(steps=64)),
    ("dpm_solver_1", VP, dict(steps=100)),
    ("dpm_solver_2", VP, dict(steps=25)),
    ("dpm_solver_3", VP, dict(steps=15)),
    ("dpm_solver_pp_2m", VP, dict(steps=30)),
]


def mode_frequencies(x):
    d = np.linalg.norm(np.asarray(x)[:, None, :] - GRID[None], axis=-1)
    nearest = d.argmin(1)
    return np.bincount(nearest, minlength=25) / len(x), np.mean(d.min(1) < 0.5)


def test_every_registered_sampler_is_covered():
    assert {c[0] for c in MODE_CASES} == set(samplers.names())


@pytest.mark.parametrize("name,schedule,opts", MODE_CASES, ids=[c[0] for c in MODE_CASES])
def test_sampler_covers_all_25_modes_with_their_weights(name, schedule, opts):
    fn = jax.jit(lambda k: samplers.sample(name, MIXTURE.denoiser(schedule), schedule, k, shape=(N, 2), **opts))
    x, _ = fn(jax.random.PRNGKey(0))
    freq, near = mode_frequencies(x)
    assert near > 0.97  # within 5 component stds of a mode
    assert np.max(np.abs(freq - np.asarray(MIXTURE.weights))) < FREQ_TOL, freq


# --- the mixture utility ----------------------------------------------------------------
def test_mixture_denoiser_and_score_are_tweedie_consistent():
    """D = (x + sigma^2 score) / alpha, and the score is the gradient of the log-density."""
    schedule = VP
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 2)) * 2
    t = jnp.full((7,), 0.3)

    @jax.jit
    def check(x, t):
        a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
        score = MIXTURE.score(x, t, schedule)
        grad = jax.grad(lambda y: jnp.sum(MIXTURE.log_prob(y, t, schedule)))(x)
        return MIXTURE.denoise(x, t, schedule), (x + s ** 2 * score) / a, score, grad

    den, tweedie, score, grad = check(x, t)
    np.testing.assert_allclose(den, tweedie, atol=1e-5)
    np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-4)
    diag = samplers.GaussianMixture.create([1.0], [[0.5, -1.0]], [[0.3, 1.5]])
    x0 = diag.sample(jax.random.PRNGKey(2), 20000)
    np.testing.assert_allclose(np.asarray(x0.std(0)), [0.3, 1.5], rtol=3e-2)


# --- guidance ------------------------------------------------------------------------------
def class_eps(x, t, labels, schedule=VP):
    """The exact eps of class k (the k-th component, a Gaussian) or, for the null label 25, of the mixture."""
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    mu = jnp.asarray(GRID)[jnp.minimum(labels, 24)]
    eps_k = s * (x - a * mu) / (a ** 2 * 0.1 ** 2 + s ** 2)
    return jnp.where((labels == 25)[:, None], -s * MIXTURE.score(x, t, schedule), eps_k)


def test_classifier_guidance_with_the_exact_noisy_classifier_gives_the_conditional_score():
    """grad log p_t(x) + grad log p_t(y | x) = grad log p_t(x | y) (Dhariwal & Nichol 2021, Sec. 4.1)."""
    schedule = VP
    y = jnp.array([3, 12, 24, 0])
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 2))
    t = jnp.full((4,), 0.4)
    eps_fn = lambda x, t: -schedule.sigma(t)[:, None] * MIXTURE.score(x, t, schedule)
    log_p_y = lambda x, t, y: jnp.log(jnp.take_along_axis(MIXTURE.responsibilities(x, t, schedule), y[:, None], 1)[:, 0])
    guided = jax.jit(guidance.classifier(eps_fn, schedule, "eps", log_p_y, y, scale=1.0))(x, t)
    expected = class_eps(x, t, y)
    np.testing.assert_allclose(guided, expected, rtol=1e-4, atol=1e-5)


def test_classifier_free_guidance_combines_conditional_and_null_outputs():
    seen = []

    def cond_model(x, t, y):
        seen.append(y)
        return x * (1.0 + y[:, None].astype(jnp.float32)) + t[:, None]

    x = jnp.ones((3, 2))
    y = jnp.array([0, 1, 2])
    w = 2.5
    out = guidance.classifier_free(cond_model, y, w, num_classes=10)(x, jnp.float32(0.5))
    cond, uncond = cond_model(x, jnp.full((3,), 0.5), y), cond_model(x, jnp.full((3,), 0.5), jnp.full((3,), 10))
    np.testing.assert_allclose(out, (1 + w) * cond - w * uncond, rtol=1e-6)
    assert list(np.asarray(seen[0])) == [0, 1, 2, 10, 10, 10]  # one doubled batch, null label = num_classes
    np.testing.assert_allclose(guidance.classifier_free(cond_model, y, 0.0, 10)(x, 0.5), cond, rtol=1e-6)


def test_classifier_free_guided_sampling_on_exact_class_scores():
    """w = 0 samples the class exactly; w > 0 sharpens it (Ho & Salimans 2021, Fig. 1)."""
    schedule = VP
    y = jnp.full((2000,), 7)

    stds = []
    for w in (0.0, 3.0):
        den = predictions.as_denoiser(guidance.classifier_free(class_eps, y, w, 25), schedule, "eps")
        x, _ = jax.jit(lambda k: samplers.sample("dpm_solver_pp_2m", den, schedule, k, shape=(2000, 2), steps=20))(
            jax.random.PRNGKey(4))
        stds.append(float(x.std(0).mean()))
        if w == 0.0:
            np.testing.assert_allclose(np.asarray(x.mean(0)), GRID[7], atol=0.01)
    assert abs(stds[0] - 0.1) < 0.01 and stds[1] < 0.8 * stds[0]


# --- bad inputs ----------------------------------------------------------------------------
def _den(x, t):
    return MIXTURE.denoise(x, t, VP)


def test_unknown_sampler_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="known samplers: .*ddim.*dpm_solver_pp_2m"):
        samplers.sample("dddim", _den, VP, jax.random.PRNGKey(0), shape=(4, 2))


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_steps_below_one_or_not_an_integer_is_an_error(steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        samplers.sample("ddim", _den, VP, jax.random.PRNGKey(0), shape=(4, 2), steps=steps)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "pc", "ode_heun", "edm_heun", "dpm_solver_3", "dpm_solver_pp_2m",
                                  "annealed_langevin", "ode_adaptive"])
def test_model_output_of_the_wrong_shape_is_an_error(name):
    bad = lambda x, t: x[:, :1]
    steps = {} if name == "ode_adaptive" else {"steps": 2}
    with pytest.raises(ValueError, match=r"denoiser must return an array of the input's shape \(4, 2\)"):
        samplers.sample(name, bad, VP, jax.random.PRNGKey(0), shape=(4, 2), **steps)


def test_unknown_option_and_bad_learned_variance_output_are_errors():
    with pytest.raises(ValueError, match="has no option"):
        samplers.sample("ddim", _den, VP, jax.random.PRNGKey(0), shape=(4, 2), etta=1.0)
    with pytest.raises(ValueError, match=r"must return a pair \(x0_hat, v\)"):
        samplers.sample("ddpm", _den, VP, jax.random.PRNGKey(0), shape=(4, 2), steps=2, variance="learned")
    with pytest.raises(ValueError, match="unknown spacing"):
        samplers.sample("ddim", _den, VP, jax.random.PRNGKey(0), shape=(4, 2), steps=2, spacing="cubic")


# (spacing, final) -> the steps of that grid that are not the last step to sigma = 0, for steps = 4
NAMED_GRIDS = [("uniform", "t_end"), ("uniform", "append_zero"), ("quadratic", "replace_zero"), ("logsnr", "t_end"),
               ("karras", None), ("karras", "t_end"), ("linspace", None), ("leading", "replace_zero"),
               ("trailing", None)]


@pytest.mark.parametrize("spacing,final", NAMED_GRIDS)
def test_first_order_samplers_agree_on_every_named_grid(spacing, final):
    """DDIM (eta = 0), DPM-Solver-1 and EDM's Euler step are one update, the exponential integrator
    in sigma~ = sigma / alpha (Song et al. 2021a, eq. 13-14; Lu et al. 2022a, eq. 3.7; Karras et al. 2022,
    Sec. 3), so on the same named grid, with the same last step to sigma = 0, they give the same samples."""
    schedule = DiscreteSchedule.linear(1000) if spacing in ("linspace", "leading", "trailing") else VP
    den = MIXTURE.denoiser(schedule)
    x_T = schedule.prior_sample(jax.random.PRNGKey(7), (64, 2))
    grid = samplers.time_grid(schedule, 4, spacing, final=final)
    out = {}
    for name in ("ddim", "dpm_solver_1", "edm_euler"):
        x, info = jax.jit(lambda x: samplers.sample(name, den, schedule, jax.random.PRNGKey(0), x_T=x, steps=4,
                                                    spacing=spacing, final=final))(x_T)
        assert int(info["nfe"]) == grid.steps == 4
        out[name] = np.asarray(x)
    np.testing.assert_allclose(out["dpm_solver_1"], out["ddim"], atol=1e-4)  # float32 round-off of three forms
    np.testing.assert_allclose(out["edm_euler"], out["ddim"], atol=1e-4)


@pytest.mark.parametrize("opts,match", [
    (dict(spacing="linspace"), "spacing 'linspace' picks integer steps of a DiscreteSchedule, got VPSDE"),
    (dict(final="zero"), "unknown final 'zero'; known: t_end, append_zero, replace_zero"),
    (dict(t_end=0.01, sigma_min=0.1), "give t_end or sigma_min, not both"),
    (dict(sigma_min=0.0), "sigma_min must be > 0"),
    (dict(rho=0.0), "rho must be > 0"),
    (dict(sigma_max=1e-3, sigma_min=0.5), "the grid must run from a later to an earlier time"),
])
def test_bad_grid_options_are_errors_that_say_what_was_expected(opts, match):
    with pytest.raises(ValueError, match=match):
        samplers.sample("dpm_solver_pp_2m", _den, VP, jax.random.PRNGKey(0), shape=(4, 2), steps=3, **opts)


def test_step_spacings_of_a_discrete_schedule_take_no_end_points():
    with pytest.raises(ValueError, match="spacing 'leading' picks integer steps of the whole DiscreteSchedule; "
                                         "sigma_min do not apply"):
        samplers.time_grid(DiscreteSchedule.linear(1000), 3, "leading", sigma_min=0.1)


def test_sampler_submodules_are_not_hidden_by_functions_of_the_same_name():
    for name in ("ancestral", "common", "dpm_solver", "edm", "gmm", "guidance", "ode", "sde"):
        assert inspect.ismodule(getattr(samplers, name)), name
    assert samplers.get("edm_heun").__name__ == "edm_sampler"
    assert samplers.get("dpm_solver_2").func.__name__ == "dpm_solver_singlestep"


def test_langevin_corrector_step_is_song_et_al_algorithm_5():
    """One corrector step by hand: eps = 2 a (snr ||z|| / ||grad||)^2 with batch-mean norms and
    a = (alpha(t) / alpha(t - dt))^2, then x + eps grad + sqrt(2 eps) z (Song et al. 2021, Alg. 5)."""
    from diffjax.samplers import sde as sde_lib
    from diffjax.schedules import VPSDE

    schedule = VPSDE()
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 6))
    t, dt, snr, key = jnp.float32(0.5), jnp.float32(0.1), 0.16, jax.random.PRNGKey(7)
    score = lambda x, t: -x / 2.0  # noqa: E731
    out, out_mean = sde_lib.langevin_corrector(score, schedule, x, t, dt, key, snr, 1)

    xn = np.asarray(x, np.float64)
    z = np.asarray(jax.random.normal(jax.random.split(key, 1)[0], x.shape), np.float64)
    grad = -xn / 2.0
    a = float(schedule.alpha(t) / schedule.alpha(t - dt)) ** 2
    mean_norm = lambda v: np.mean(np.linalg.norm(v, axis=-1))  # noqa: E731
    eps = 2.0 * a * (snr * mean_norm(z) / mean_norm(grad)) ** 2
    np.testing.assert_allclose(out_mean, xn + eps * grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, xn + eps * grad + np.sqrt(2.0 * eps) * z, rtol=1e-5, atol=1e-6)
