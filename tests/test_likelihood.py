"""PF-ODE log-likelihoods against exact densities, and the DDPM bound against closed forms."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import ndtr

from diffjax import likelihood, schedules
from diffjax.samplers.gmm import GaussianMixture
from diffjax.samplers.ode import pf_ode_velocity

SCHEDULES = {"vp": schedules.VPSDE(), "subvp": schedules.SubVPSDE(), "ve": schedules.VESDE(),
             "edm": schedules.EDMSchedule()}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_pf_ode_loglik_of_gaussian_data_matches_exact_density(name):
    schedule, d = SCHEDULES[name], 3
    data = GaussianMixture.gaussian(jnp.array([0.3, -0.2, 0.5]), jnp.array([0.5, 0.3, 0.8]))
    x = data.sample(jax.random.key(0), 8)
    result = jax.jit(lambda x: likelihood.ode_log_likelihood(
        data.denoiser(schedule), schedule, x, divergence_method="exact"))(x)
    exact = data.log_prob(x, schedule.t_eps, schedule)
    assert float(jnp.max(jnp.abs(result.logp - exact))) / d < 1e-2
    # What remains is the prior's mismatch with p_{t_max}; with the true marginal the ODE is
    # exact to the solver tolerance.
    solved = data.log_prob(result.z, schedule.t_max, schedule) + result.delta_logp
    assert float(jnp.max(jnp.abs(solved - exact))) / d < 1e-4


def test_pf_ode_loglik_of_2d_mixture_with_exact_divergence():
    schedule = schedules.VPSDE()
    data = GaussianMixture.create([0.5, 0.3, 0.2], [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]],
                                  [0.3, 0.2, 0.4])
    x = data.sample(jax.random.key(1), 16)
    result = jax.jit(lambda x: likelihood.ode_log_likelihood(
        data.denoiser(schedule), schedule, x, divergence_method="exact", rtol=1e-6, atol=1e-6))(x)
    exact = data.log_prob(x, schedule.t_eps, schedule)
    assert float(jnp.max(jnp.abs(result.logp - exact))) / 2 < 1e-2


@pytest.mark.parametrize("method", ["gaussian", "rademacher"])
def test_hutchinson_mean_matches_exact_divergence(method):
    schedule = schedules.VPSDE()
    data = GaussianMixture.create([0.6, 0.4], [[-1.0, 0.0, 1.0, 0.5], [1.0, 0.5, 0.0, -0.5]],
                                  [0.3, 0.5])
    velocity = pf_ode_velocity(data.denoiser(schedule), schedule)
    fn = lambda y: velocity(y, jnp.float32(0.3))  # noqa: E731
    x = data.sample(jax.random.key(2), 3)
    exact = jax.jit(lambda x: likelihood.divergence(fn, x, "exact"))(x)
    # The exact trace against the Jacobian's diagonal computed by jacfwd.
    jac = jax.jit(jax.vmap(jax.jacfwd(lambda xi: fn(xi[None])[0])))(x)
    np.testing.assert_allclose(exact, jnp.trace(jac, axis1=1, axis2=2), rtol=1e-5)
    probes = likelihood.hutchinson_probe(jax.random.key(3), (2000,) + x.shape, method)
    estimates = jax.jit(jax.vmap(lambda p: likelihood.divergence(fn, x, method, p)))(probes)
    se = estimates.std(0) / math.sqrt(len(probes))
    assert jnp.all(jnp.abs(estimates.mean(0) - exact) < 4 * se + 1e-4)


def test_hutchinson_ode_loglik_is_unbiased():
    schedule = schedules.VPSDE()
    data = GaussianMixture.gaussian(jnp.array([0.3, -0.2, 0.5, 0.0]), jnp.array([0.5, 0.2, 0.3, 0.4]))
    x = jnp.broadcast_to(data.sample(jax.random.key(4), 1), (256, 4))  # one point, 256 probes
    exact = float(data.log_prob(x[:1], schedule.t_eps, schedule)[0])
    solve = jax.jit(lambda x, k, method: likelihood.ode_log_likelihood(
        data.denoiser(schedule), schedule, x, k, divergence_method=method), static_argnums=2)
    gaussian = solve(x, jax.random.key(5), "gaussian").logp
    se = float(gaussian.std()) / math.sqrt(len(gaussian))
    assert float(gaussian.std()) > 0.1 and abs(float(gaussian.mean()) - exact) < 4 * se + 2e-2
    # Rademacher probes are exact whenever the Jacobian is diagonal, as it is for this data.
    rademacher = solve(x, jax.random.key(6), "rademacher").logp
    assert float(jnp.max(jnp.abs(rademacher - exact))) < 2e-2


def test_bits_per_dim_convention():
    # A uniform density on [-1, 1]^D is the uniform distribution over the 256 values: 8 bits.
    d = 12
    assert float(likelihood.bits_per_dim(jnp.float32(d * math.log(2.0)), d)) == pytest.approx(8.0)
    assert float(likelihood.bits_per_dim(jnp.float32(0.0), d)) == pytest.approx(7.0)  # score_sde
    assert float(likelihood.bits_per_dim(jnp.float32(0.0), d, centered=False)) == pytest.approx(8.0)
    k = jnp.array([[0, 255, 128]], jnp.uint8)
    x = likelihood.dequantize(jnp.broadcast_to(k, (1000, 3)), jax.random.key(0))
    lo, hi = 2 * k.astype(jnp.float32) / 256 - 1, 2 * (k.astype(jnp.float32) + 1) / 256 - 1
    assert jnp.all((x >= lo) & (x < hi))
    x01 = likelihood.dequantize(jnp.broadcast_to(k, (1000, 3)), jax.random.key(0), centered=False)
    np.testing.assert_allclose(x01, (x + 1) / 2, atol=1e-6)  # the same bins on [0, 1]
    with pytest.raises(ValueError, match="uint8"):
        likelihood.dequantize(jnp.zeros((2, 3)), jax.random.key(0))


def test_ode_bits_per_dim_of_exact_model_is_the_discrete_log_probability():
    # 8-bit data: N(0, 0.25^2) binned into score_sde's dequantisation bins [2k/256 - 1, 2(k+1)/256 - 1).
    schedule, s = schedules.VPSDE(), 0.25
    edges = 2 * np.arange(257) / 256 - 1
    p = np.diff(np.asarray(ndtr(edges / s), np.float64))
    p /= p.sum()
    k = np.random.default_rng(0).choice(256, size=(128, 4), p=p)
    data = GaussianMixture.gaussian(jnp.zeros(4), s)
    bpd = jax.jit(lambda x, key: likelihood.ode_bits_per_dim(
        data.denoiser(schedule), schedule, x, key))(jnp.asarray(k, jnp.uint8), jax.random.key(0))
    # A smooth density gives each bin about density x bin volume, so bits/dim is -log2 P(k) / D
    # per example (the "+7" offset is what makes the two agree), and on average the entropy.
    exact = -np.log2(p[k]).mean(1)
    np.testing.assert_allclose(bpd, exact, atol=0.05)
    entropy = -(p * np.log2(p)).sum()
    assert abs(float(bpd.mean()) - entropy) < 4 * float(bpd.std()) / math.sqrt(128) + 0.01


def test_discretized_gaussian_decoder_is_a_distribution_on_256_values():
    values = jnp.arange(256) / 127.5 - 1.0
    loglik = jax.jit(likelihood.discretized_gaussian_log_likelihood)
    for mean, log_scale in [(0.1, -3.0), (-0.99, -5.0), (0.5, 0.5)]:
        logp = loglik(values, jnp.float32(mean), jnp.float32(log_scale))
        assert float(jnp.sum(jnp.exp(logp))) == pytest.approx(1.0, abs=1e-4)
    # An interior bin is Phi(upper) - Phi(lower) of the bin edges x -+ 1/255 (Ho et al. eq. 13).
    lp = loglik(values[100], jnp.float32(0.0), jnp.log(jnp.float32(0.2)))
    ref = ndtr((values[100] + 1 / 255) / 0.2) - ndtr((values[100] - 1 / 255) / 0.2)
    assert float(jnp.exp(lp)) == pytest.approx(float(ref), rel=1e-4)


# ---------------------------------------------------------------------------- VLB

M, S = 0.1, 0.4  # data: N(M, S^2) per dimension, discretised to the 256 8-bit values


def _discretised_gaussian_data(b, d, seed=0):
    edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 127.5 - 1, [np.inf]])
    p = np.diff(np.asarray(ndtr((edges - M) / S), np.float64))
    p /= p.sum()
    entropy_bits = -(p * np.log2(p)).sum()
    k = np.random.default_rng(seed).choice(256, size=(b, d), p=p).astype(np.uint8)
    return jnp.asarray(k), entropy_bits


def _vp_discretised(T, t1=1e-3):
    """The VP-SDE's alpha_bar at t = 0, t1, ..., 1 (T steps): the same end points for every T."""
    t = np.concatenate([[0.0], np.linspace(t1, 1.0, T)])
    abar = np.exp(-0.5 * t ** 2 * 19.9 - 0.1 * t)
    return schedules.DiscreteSchedule.from_betas(1 - abar[1:] / abar[:-1]), abar


def _optimal_gaussian_model(schedule, learned_variance):
    """x0-prediction E[x0|x_t] of N(M, S^2) data and, optionally, the exact reverse variance
    beta~_t + c_t^2 Var[x0|x_t] in the learned-range parameterisation."""
    betas = np.asarray(schedule.betas, np.float64)
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    min_log = jnp.asarray(np.log(np.concatenate([post_var[1:2], post_var[1:]])), jnp.float32)
    max_log = jnp.asarray(np.log(betas), jnp.float32)
    coef = jnp.asarray(betas * np.sqrt(abar_prev) / (1 - abar), jnp.float32)
    post_var = jnp.asarray(post_var, jnp.float32)

    def fn(x, t):
        a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
        var = a ** 2 * S ** 2 + s ** 2
        x0 = M + a * S ** 2 / var * (x - a * M)
        if not learned_variance:
            return x0
        n = schedule.t_to_step(t)[:, None]
        true_var = post_var[n] + coef[n] ** 2 * S ** 2 * s ** 2 / var
        frac = (jnp.log(true_var) - min_log[n]) / (max_log[n] - min_log[n])
        return jnp.concatenate([x0, jnp.broadcast_to(2 * frac - 1, x0.shape)], axis=-1)

    return fn


def _vlb(schedule, x0, key, learned_variance):
    fn = _optimal_gaussian_model(schedule, learned_variance)
    return jax.jit(lambda x, k: likelihood.vlb_terms(
        fn, schedule, x, k, prediction="x0", clip_denoised=False,
        variance="learned_range" if learned_variance else "fixedsmall"))(x0, key)


def test_vlb_of_optimal_model_bounds_entropy_and_its_terms_match_closed_forms():
    x0, entropy = _discretised_gaussian_data(64, 16)
    schedule, abar = _vp_discretised(100)
    terms = _vlb(schedule, x0, jax.random.key(0), learned_variance=True)
    n = x0.size
    total, se = float(terms.total.mean()), float(terms.total.std()) / math.sqrt(x0.shape[0])
    assert total > entropy - 3 * se  # an upper bound on the NLL, so on the entropy
    assert total - entropy < 0.15  # and a tight one for the optimal model
    # With the exact reverse kernels the KL terms telescope to I(x0; x1) - I(x0; x_T).
    snr = abar[1:] / (1 - abar[1:])  # SNR of the 0-based steps n = 0..T-1
    mi_bits = 0.5 * np.log2((1 + snr[0] * S ** 2) / (1 + snr[-1] * S ** 2))
    diffusion_se = float(terms.diffusion.std()) / math.sqrt(x0.shape[0])
    assert abs(float(terms.diffusion.mean()) - mi_bits) < 4 * diffusion_se + 0.02
    # L_T = KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) in bits/dim.
    x = np.asarray(x0, np.float64) / 127.5 - 1
    prior = 0.5 * (abar[-1] * x ** 2 + (1 - abar[-1]) - 1 - np.log(1 - abar[-1])) / np.log(2)
    np.testing.assert_allclose(terms.prior, prior.mean(1), rtol=1e-3, atol=1e-7)
    assert terms.per_step.shape == (x0.shape[0], 100) and n == 1024


def test_vlb_tightens_as_T_grows():
    x0, entropy = _discretised_gaussian_data(64, 16, seed=1)
    totals = []
    for T in (10, 100, 1000):
        schedule, abar = _vp_discretised(T)
        terms = _vlb(schedule, x0, jax.random.key(T), learned_variance=False)
        # With Sigma = beta~ the step-n KL is (SNR_{n-1} - SNR_n) |x0 - x0_hat|^2 / 2 (Kingma et
        # al. 2021, eq. 13): E over Gaussian data is that times the MMSE S^2 / (1 + SNR_n S^2).
        snr = abar[1:] / (1 - abar[1:])
        expected = 0.5 * np.sum((snr[:-1] - snr[1:]) * S ** 2 / (1 + snr[1:] * S ** 2)) / np.log(2)
        se = float(terms.diffusion.std()) / math.sqrt(x0.shape[0])
        assert abs(float(terms.diffusion.mean()) - expected) < 4 * se + 0.03 * expected
        totals.append(float(terms.total.mean()))
    assert totals[0] > totals[1] > totals[2] > entropy


def test_vlb_rejects_a_continuous_schedule():
    with pytest.raises(ValueError, match="DiscreteSchedule"):
        likelihood.vlb_terms(lambda x, t: x, schedules.VPSDE(), jnp.zeros((1, 2)), jax.random.key(0))
