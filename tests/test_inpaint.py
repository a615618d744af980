"""Inpainting and colourisation (diffjax.samplers.inpaint) on Gaussian data, against closed forms.

Data ``N(mu, Sigma)`` with a strongly correlated Sigma = Q diag(s^2) Q^T: its exact denoiser is
``GaussianMixture``'s (one component, diagonal) in the rotated coordinates. Two references:

* the exact conditional law of the unknown coordinates given the known ones (Schur complement);
* the exact law of the *algorithm*: with a Gaussian, DDIM / DDPM steps, the replacement and RePaint's
  re-noising are affine maps plus independent Gaussian noise, so the mean and covariance of what the
  sampler draws follow by propagating moments (written here from DDIM eq. 12 and the replacement
  formula, independently of the library's code). Monte-Carlo samples must match it within their
  standard errors; the gap between it and the conditional is the method's own bias, free of
  sampling noise.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import samplers, schedules
from diffjax.samplers import GaussianMixture, common

Q = np.linalg.qr(np.array([[1.0, 0.9, 0.8], [0.2, 1.0, 0.5], [0.3, 0.1, 1.0]]))[0]
S = np.array([1.5, 0.3, 0.1])
MU = np.array([0.5, -0.3, 0.2])
SIGMA = Q @ np.diag(S ** 2) @ Q.T  # correlations 0.68, 0.96, 0.57
SCHEDULE = schedules.DiscreteSchedule.linear(T=1000)
N = 20000


def _denoiser(basis=Q, mean=MU, std=S):
    gm = GaussianMixture.gaussian(basis.T @ mean, std)
    b = jnp.asarray(basis)
    return lambda x, t: gm.denoise(x @ b, t, SCHEDULE) @ b.T


def conditional(sigma, mu, y, known):
    """Mean and covariance of the unknown coordinates given ``x[known] = y[known]`` (Schur complement)."""
    k, u = np.flatnonzero(known), np.flatnonzero(~known)
    gain = sigma[np.ix_(u, k)] @ np.linalg.inv(sigma[np.ix_(k, k)])
    return mu[u] + gain @ (y[k] - mu[k]), sigma[np.ix_(u, u)] - gain @ sigma[np.ix_(k, u)]


def algorithm_law(sigma, mu, y, known, steps, eta, resample=1, jump=1):
    """Exact mean and covariance of DDIM(eta) + replacement (+ RePaint) on ``SCHEDULE``'s grid of ``steps``."""
    D = mu.size
    ts = np.asarray(common.time_grid(SCHEDULE, steps).ts, np.float64)
    times = np.append(ts, SCHEDULE.t_max)
    alphas, sigmas = np.asarray(SCHEDULE.alpha(times), np.float64), np.asarray(SCHEDULE.sigma(times), np.float64)
    coef = dict(zip(times, zip(alphas, sigmas)))
    a_of = lambda t: coef[t][0]  # noqa: E731
    s_of = lambda t: coef[t][1]  # noqa: E731
    m = known.astype(float)

    def denoiser(t):  # D(x) = A x + c for N(mu, Sigma)
        a, s = a_of(t), s_of(t)
        A = a * sigma @ np.linalg.inv(a ** 2 * sigma + s ** 2 * np.eye(D))
        return A, mu - a * A @ mu

    def project(mean, cov, t):  # known coordinates <- alpha_t y + sigma_t z
        U = np.diag(1.0 - m)
        return U @ mean + m * a_of(t) * y, U @ cov @ U + s_of(t) ** 2 * np.diag(m)

    def step(mean, cov, t, s):  # DDIM eq. 12: x_s = a_s x0 + k eps + std z
        a_t, sg_t, a_s, sg_s = a_of(t), s_of(t), a_of(s), s_of(s)
        beta = sg_t ** 2 - (a_t / a_s) ** 2 * sg_s ** 2
        std = eta * np.sqrt(beta * sg_s ** 2 / sg_t ** 2)
        k = np.sqrt(sg_s ** 2 - std ** 2)
        A, c = denoiser(t)
        M = (a_s - k * a_t / sg_t) * A + k / sg_t * np.eye(D)
        return M @ mean + (a_s - k * a_t / sg_t) * c, M @ cov @ M.T + std ** 2 * np.eye(D)

    mean, cov = project(np.zeros(D), np.eye(D), SCHEDULE.t_max)
    n = ts.size - 1
    for b in range(0, n, jump):
        e = min(b + jump, n)
        for u in range(resample):
            if u:  # re-noise x_{ts[e]} -> x_{ts[b]} by q(x_t | x_s)
                r = a_of(ts[b]) / a_of(ts[e])
                mean, cov = r * mean, r ** 2 * cov + (s_of(ts[b]) ** 2 - r ** 2 * s_of(ts[e]) ** 2) * np.eye(D)
            for i in range(b, e):
                mean, cov = project(*step(mean, cov, ts[i], ts[i + 1]), ts[i + 1])
    A, c = denoiser(ts[-1])  # the grid's last step to sigma = 0: x0_hat
    mean, cov = A @ mean + c, A @ cov @ A.T
    u = ~known
    return mean[u], cov[np.ix_(u, u)]


def _assert_matches_law(x, mean, cov, z=5.0):
    """Sample mean and covariance within ``z`` standard errors of the law's."""
    n = x.shape[0]
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / n)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), z * se_mean)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), z * se_cov)


Y = np.array([1.0, 0.0, 0.0])
KNOWN = np.array([True, False, False])


@pytest.mark.parametrize("name, opts, eta, resample, jump", [
    ("ddpm", dict(steps=10), 1.0, 1, 1),        # DDPM with beta_tilde is DDIM with eta = 1
    ("ddim", dict(steps=10, eta=0.0), 0.0, 1, 1),
    ("ddpm", dict(steps=10), 1.0, 3, 2),        # RePaint, 3 passes over blocks of 2 steps
])
def test_inpaint_samples_the_exact_law_of_replacement_and_repaint(name, opts, eta, resample, jump):
    x, info = samplers.inpaint(name, _denoiser(), SCHEDULE, jax.random.PRNGKey(1), np.tile(Y, (N, 1)),
                               KNOWN.astype(float), resample=resample, jump=jump, **opts)
    x = np.asarray(x, np.float64)
    np.testing.assert_array_equal(x[:, 0], Y[0])  # the known part is the observation
    mean, cov = algorithm_law(SIGMA, MU, Y, KNOWN, opts["steps"], eta, resample, jump)
    _assert_matches_law(x[:, 1:], mean, cov)
    assert info["nfe"] == 10 and info["resample"] == resample


def _bias(steps, eta=1.0, resample=1, jump=1):
    mean, cov = algorithm_law(SIGMA, MU, Y, KNOWN, steps, eta, resample, jump)
    c_mean, c_cov = conditional(SIGMA, MU, Y, KNOWN)
    return np.abs(mean - c_mean).max(), np.abs(cov - c_cov).max() / np.abs(c_cov).max()


def test_replacement_is_biased_and_repaint_resampling_removes_the_mean_bias():
    # docs/inpainting.md's table. Replacement's error in the conditional mean does not vanish with
    # more steps (0.0087 at 250 steps, 0.0086 at 1000). RePaint's resampling (jump 1) shrinks it like
    # 1/r: 0.0029, 0.0009, 0.0004 for r = 2, 5, 10; but each pass repeats DDPM's per-step error in the
    # variance (the reverse kernel's beta_tilde is too small), so at 250 steps the covariance error
    # grows with r (0.06, 0.11, 0.16, 0.21) and shrinks with the step size (r = 2: 0.027 at 1000 steps).
    mean_250, cov_250 = _bias(250)
    assert _bias(1000)[0] > 0.008 and mean_250 > 0.008
    repaint = [_bias(250, resample=r) for r in (2, 5, 10)]
    np.testing.assert_array_less([m for m, _ in repaint], [0.004, 0.0015, 0.0006])
    assert cov_250 < repaint[0][1] < repaint[1][1] < repaint[2][1]
    assert _bias(1000, resample=2)[1] < 0.3 * repaint[0][1]


def test_colorize_samples_the_exact_law_in_the_colour_basis():
    # score_sde's M (controllable_generation.py, float32) is COLOR_BASIS.
    score_sde_M = np.array([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
                            [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
                            [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]])
    M = samplers.COLOR_BASIS
    np.testing.assert_allclose(M, score_sde_M, atol=2e-7)
    np.testing.assert_allclose(M.T @ M, np.eye(3), atol=1e-12)
    # One colour pixel ~ N(MU, SIGMA); its grey level g fixes z_0 = sqrt(3) g of z = x M.
    g = 0.4
    x, _ = samplers.colorize("ddpm", _denoiser(), SCHEDULE, jax.random.PRNGKey(2), np.full((N, 1), g), steps=10)
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(x.mean(-1), g, atol=1e-5)  # the grey level is the given one
    y = np.array([np.sqrt(3.0) * g, 0.0, 0.0])
    mean, cov = algorithm_law(M.T @ SIGMA @ M, M.T @ MU, y, KNOWN, 10, 1.0)
    _assert_matches_law((x @ M)[:, 1:], mean, cov)


@pytest.mark.parametrize("mask, observed, message", [
    (np.ones((2, 2, 1)), np.zeros((4, 3, 3, 1)), "does not broadcast"),
    (np.full((3, 3, 1), 0.5), np.zeros((4, 3, 3, 1)), "only 0 .unknown. and 1"),
])
def test_inpaint_rejects_bad_masks(mask, observed, message):
    with pytest.raises(ValueError, match=message):
        samplers.inpaint("ddim", _denoiser(), SCHEDULE, jax.random.PRNGKey(0), observed, mask, steps=2)


def test_bad_inputs_raise_clear_errors():
    den, key, obs = _denoiser(), jax.random.PRNGKey(0), np.zeros((4, 3))
    with pytest.raises(ValueError, match="do not match the observed"):
        c = samplers.replacement(obs, np.ones(3), SCHEDULE, key)
        samplers.ddim(den, SCHEDULE, jnp.zeros((5, 3)), key, steps=2, constraint=c)
    with pytest.raises(ValueError, match="do not pass x_T"):
        samplers.inpaint("ddim", den, SCHEDULE, key, obs, np.ones(3), x_T=jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="no step loop"):
        samplers.inpaint("ode_adaptive", den, SCHEDULE, key, obs, np.ones(3))
    with pytest.raises(ValueError, match="one channel"):
        samplers.colorize("ddim", den, SCHEDULE, key, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="resample must be an integer >= 1"):
        samplers.inpaint("ddim", den, SCHEDULE, key, obs, np.ones(3), resample=0)


@pytest.mark.parametrize("name, opts", [
    ("euler_maruyama", dict(steps=20)), ("pc", dict(steps=20, snr=0.05)), ("ode_euler", dict(steps=20)),
    ("ode_heun", dict(steps=20)), ("dpm_solver_2", dict(steps=10)), ("dpm_solver_pp_2m", dict(steps=20)),
    ("dpm_solver_pp_2m", dict(steps=20, resample=2, jump=3)),  # RePaint restores the multistep history
    ("annealed_langevin", dict(steps=10, n_steps_each=20, step_lr=2e-4)),
])
def test_every_step_loop_sampler_follows_the_constraint(name, opts):
    # y_0 = 2.5 moves the conditional mean of the unknown coordinates by (0.39, 0.60) from the
    # unconditional one; on these short grids each sampler lands within 0.2 of it (measured <= 0.12).
    y = np.array([2.5, 0.0, 0.0])
    x, _ = samplers.inpaint(name, _denoiser(), SCHEDULE, jax.random.PRNGKey(3), np.tile(y, (4000, 1)),
                            KNOWN.astype(float), **opts)
    x = np.asarray(x, np.float64)
    np.testing.assert_array_equal(x[:, 0], y[0])
    np.testing.assert_array_less(np.abs(x[:, 1:].mean(0) - conditional(SIGMA, MU, y, KNOWN)[0]), 0.2)
