"""Schedules against closed forms, float64 references and forward simulation of their SDEs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from diffjax import schedules as S

CONTINUOUS = {
    "vp": S.VPSDE(),
    "subvp": S.SubVPSDE(),
    "ve": S.VESDE(),
    "edm": S.EDMSchedule(),
    "rectified_flow": S.RectifiedFlow(),
}
ALL = {**CONTINUOUS, "ddpm_linear": S.DiscreteSchedule.linear(), "ddpm_cosine": S.DiscreteSchedule.cosine()}


def test_linear_ddpm_alpha_bar_equals_float64_cumprod():
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    assert abar[-1] == pytest.approx(4.0358e-5, rel=1e-4)
    sched = S.DiscreteSchedule.linear()
    n = np.arange(1000)
    np.testing.assert_allclose(np.asarray(sched.alphas_cumprod), abar, rtol=2e-6)
    np.testing.assert_allclose(np.asarray(sched.alpha(sched.step_to_t(n))) ** 2, abar, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(sched.sigma(sched.step_to_t(n))) ** 2, 1 - abar, rtol=1e-5)


def test_cosine_alpha_bar_follows_improved_ddpm_eq17():
    T, s = 1000, 0.008
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    sched = S.DiscreteSchedule.cosine(T)
    abar = np.asarray(sched.alphas_cumprod, np.float64)
    # Every beta but the last is below the 0.999 clip, so alpha_bar_n = f(n+1) / f(0) there.
    np.testing.assert_allclose(abar[:-1], f[1:-1] / f[0], rtol=1e-5, atol=1e-9)
    assert float(sched.betas[-1]) == pytest.approx(0.999)
    assert abar[-1] == pytest.approx(abar[-2] * 0.001, rel=1e-5)


def test_discrete_schedule_continuous_queries_agree_at_integer_steps():
    sched = S.DiscreteSchedule.cosine(T=50)
    n = np.arange(50)
    t = sched.step_to_t(n)
    abar = np.asarray(sched.alphas_cumprod, np.float64)
    np.testing.assert_allclose(np.asarray(sched.log_snr(t)), np.log(abar / (1 - abar)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sched.c_noise(t)), n, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(sched.t_to_step(t)), n)
    assert float(sched.alpha(0.0)) == 1.0 and float(sched.sigma(0.0)) == 0.0
    # Between steps log alpha_bar is linear in t.
    mid = float(np.log(abar[10]) + np.log(abar[11])) / 2
    assert float(jnp.log(sched.alpha((11.5) / 50) ** 2)) == pytest.approx(mid, rel=1e-5)
    # The plain constructor gives the same schedule as the named one.
    direct = S.DiscreteSchedule(betas=np.asarray(sched.betas, np.float64))
    assert direct.t_eps == 1 / 50
    np.testing.assert_allclose(np.asarray(direct.alphas_cumprod), abar, rtol=1e-5, atol=1e-8)


def test_vp_and_subvp_marginals_are_exp_minus_integral_of_beta():
    beta = lambda s: 0.1 + s * (20.0 - 0.1)
    for t in (0.05, 0.3, 0.7, 1.0):
        integral = integrate.quad(beta, 0.0, t)[0]
        alpha = math.exp(-0.5 * integral)
        assert float(S.VPSDE().alpha(t)) == pytest.approx(alpha, rel=1e-5)
        assert float(S.VPSDE().sigma(t)) == pytest.approx(math.sqrt(1 - alpha ** 2), rel=1e-5)
        assert float(S.SubVPSDE().alpha(t)) == pytest.approx(alpha, rel=1e-5)
        assert float(S.SubVPSDE().sigma(t)) == pytest.approx(1 - alpha ** 2, rel=1e-5)


def test_ve_edm_and_flow_closed_forms():
    ve = S.VESDE(sigma_min=0.01, sigma_max=50.0)
    assert float(ve.sigma(0.0)) == pytest.approx(0.01, rel=1e-6)
    assert float(ve.sigma(1.0)) == pytest.approx(50.0, rel=1e-6)
    assert float(ve.sigma(0.5)) == pytest.approx(math.sqrt(0.01 * 50.0), rel=1e-5)
    assert float(ve.alpha(0.7)) == 1.0 and ve.prior_std == 50.0
    edm = S.EDMSchedule()
    assert (edm.t_eps, edm.t_max, edm.prior_std) == (0.002, 80.0, 80.0)
    assert float(edm.sigma(3.0)) == 3.0 and float(edm.alpha(3.0)) == 1.0
    rf = S.RectifiedFlow()
    assert float(rf.alpha(0.25)) == 0.75 and float(rf.sigma(0.25)) == 0.25


@pytest.mark.parametrize("name", sorted(ALL))
def test_t_from_log_snr_inverts_log_snr(name):
    sched = ALL[name]
    t = np.linspace(max(sched.t_eps, 0.01 * sched.t_max), 0.99 * sched.t_max, 37)
    back = np.asarray(sched.t_from_log_snr(sched.log_snr(t)))
    np.testing.assert_allclose(back, t, rtol=1e-4, atol=1e-5 * sched.t_max)
    # log-SNR decreases in t (the convention every sampler relies on).
    assert np.all(np.diff(np.asarray(sched.log_snr(t))) < 0)


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_autodiff_drift_and_diffusion_equal_closed_forms(name):
    sched = CONTINUOUS[name]
    t = jnp.linspace(0.05, 0.95, 19) * sched.t_max
    np.testing.assert_allclose(np.asarray(S.Schedule._drift_coef(sched, t)),
                               np.asarray(sched.drift_coef(t)), rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(S.Schedule._diffusion_sq(sched, t)),
                               np.asarray(sched.diffusion_sq(t)), rtol=2e-3, atol=1e-5)


def test_discrete_schedule_sde_is_vp_with_beta_T_beta_n():
    sched = S.DiscreteSchedule.linear()
    n = np.arange(5, 1000, 97)
    t = (n + 0.5) / 1000.0  # inside a segment, where log alpha_bar is linear
    f_expected = 0.5 * 1000 * np.log1p(-np.asarray(sched.betas, np.float64)[n])
    np.testing.assert_allclose(np.asarray(sched.drift_coef(t)), f_expected, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(sched.diffusion_sq(t)), -2 * f_expected, rtol=1e-2)


def _euler_maruyama(sched, x_start, t1, key, steps):
    dt = t1 / steps

    def step(x, inp):
        i, k = inp
        t = i * dt
        x = x + sched._drift_coef(t) * x * dt + jnp.sqrt(sched._diffusion_sq(t) * dt) * jax.random.normal(k, x.shape)
        return x, None

    keys = jax.random.split(key, steps)
    x, _ = jax.lax.scan(step, x_start, (jnp.arange(steps, dtype=jnp.float32), keys))
    return x


SDE_CASES = {  # (schedule, end time)
    "vp": (S.VPSDE(), 0.5),
    "subvp": (S.SubVPSDE(), 0.5),
    "ve": (S.VESDE(), 0.6),
    "edm": (S.EDMSchedule(), 2.0),
    "rectified_flow": (S.RectifiedFlow(), 0.5),
    "ddpm_linear": (S.DiscreteSchedule.linear(), 0.5),
}


@pytest.mark.parametrize("name", sorted(SDE_CASES))
def test_euler_maruyama_reproduces_marginal_mean_and_std(name):
    """Simulate dx = f x dt + g dW from x_0 = 1.5 with 2000 steps and 40000 paths (1-D).

    The sample mean must be within 4 standard errors (std / sqrt(M)) of alpha(t) x_0 and the sample
    std within 4 standard errors (std / sqrt(2M)) of sigma(t). The Euler bias is O(dt), an order of
    magnitude below these. VE starts from N(x_0, sigma_min^2): its marginal std is sigma(t), which
    includes sigma(0) = sigma_min (score_sde's convention), while the SDE adds only
    sigma(t)^2 - sigma_min^2 of variance.
    """
    sched, t1 = SDE_CASES[name]
    M, x0 = 40_000, 1.5
    k_start, k_path = jax.random.split(jax.random.key(0))
    x_start = x0 + float(sched.sigma(0.0)) * jax.random.normal(k_start, (M,))
    x = np.asarray(jax.jit(_euler_maruyama, static_argnums=(2, 4))(sched, x_start, t1, k_path, 2000), np.float64)
    mean, std = float(sched.marginal(jnp.full((1,), x0), t1)[0][0]), float(sched.sigma(t1))
    assert abs(x.mean() - mean) < 4 * std / math.sqrt(M), (x.mean(), mean)
    assert abs(x.std() - std) < 4 * std / math.sqrt(2 * M), (x.std(), std)


def test_discretize_is_the_ddpm_step_for_the_discrete_schedule():
    sched = S.DiscreteSchedule.linear()
    x = jnp.array([[0.3, -1.2], [2.0, 0.5]])
    betas = np.asarray(sched.betas, np.float64)
    for n in (0, 1, 500, 999):
        f, G = sched.discretize(x, (n + 1) / 1000, 1 / 1000)
        np.testing.assert_allclose(np.asarray(f), (np.sqrt(1 - betas[n]) - 1) * np.asarray(x), rtol=1e-3, atol=1e-7)
        assert float(G) == pytest.approx(math.sqrt(betas[n]), rel=1e-3)


def test_discretize_is_the_smld_step_for_ve():
    sched, N = S.VESDE(sigma_min=0.01, sigma_max=50.0), 1000
    sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), N))  # score_sde's discrete_sigmas
    x = jnp.array([[0.3, -1.2]])
    for i in (1, 10, 500, 999):
        f, G = sched.discretize(x, i / (N - 1), 1 / (N - 1))
        assert np.all(np.asarray(f) == 0)
        assert float(G) == pytest.approx(math.sqrt(sigmas[i] ** 2 - sigmas[i - 1] ** 2), rel=1e-3)


@pytest.mark.parametrize("name", ["vp", "ve", "edm"])
def test_prior_logp_is_the_gaussian_log_density_and_prior_sample_has_its_std(name):
    sched = ALL[name]
    z = sched.prior_sample(jax.random.key(1), (4000, 3))
    assert float(jnp.std(z)) == pytest.approx(sched.prior_std, rel=0.03)
    expected = stats.norm(0, sched.prior_std).logpdf(np.asarray(z[:5], np.float64)).sum(-1)
    np.testing.assert_allclose(np.asarray(sched.prior_logp(z[:5])), expected, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(ALL))
def test_query_outside_time_domain_raises(name):
    sched = ALL[name]
    for bad in (-0.1, 1.5 * sched.t_max, float("nan")):
        with pytest.raises(ValueError, match=r"time must lie in \[0, "):
            sched.sigma(bad)
    with pytest.raises(ValueError, match="time must lie"):
        sched.alpha(jnp.array([0.5, 2.0]) * sched.t_max)


def test_get_builds_schedules_and_rejects_unknown_names_and_fields():
    assert S.get({"name": "ve", "sigma_max": 1.0}) == S.VESDE(sigma_max=1.0)
    assert S.get({"name": "ddpm_linear", "T": 10}).T == 10
    with pytest.raises(ValueError, match="unknown schedule 'foo'.*known schedules: .*ddpm_cosine"):
        S.get({"name": "foo"})
    with pytest.raises(ValueError, match=r"has no field\(s\) \['beta'\]"):
        S.get({"name": "vp", "beta": 1.0})
    with pytest.raises(ValueError, match="betas must be"):
        S.DiscreteSchedule(betas=[0.1, 1.5])


def test_schedules_are_pytrees_usable_under_jit():
    sched = S.DiscreteSchedule.linear()
    sigma = jax.jit(lambda s, t: s.sigma(t))(sched, jnp.float32(0.5))
    assert float(sigma) == pytest.approx(float(sched.sigma(0.5)), rel=1e-6)
    assert jax.jit(lambda s: s.alpha(0.5))(S.VPSDE()) == pytest.approx(float(S.VPSDE().alpha(0.5)))


@pytest.mark.parametrize("T", [250, 4000])
def test_linear_schedule_scales_betas_by_1000_over_T_as_improved_ddpm(T):
    sched = S.DiscreteSchedule.linear(T)
    np.testing.assert_allclose(np.asarray(sched.betas)[[0, -1]], [1e-4 * 1000 / T, 0.02 * 1000 / T], rtol=1e-6)
    # x_T stays near N(0, I): log alpha_bar_T = -sum beta_n (to first order) ~ -10.1 at any T.
    expected = np.sum(np.log1p(-np.linspace(1e-4, 0.02, T) * 1000 / T))
    np.testing.assert_allclose(float(sched.log_alphas_cumprod[-1]), expected, rtol=1e-5)
    assert float(sched.alphas_cumprod[-1]) < 1e-4
