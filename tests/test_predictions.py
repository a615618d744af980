"""Prediction conversions, EDM preconditioning (Table 1) and the learned reverse variance."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import predictions as P
from diffjax import schedules as S

SCHEDULES = {
    "ddpm_linear": S.DiscreteSchedule.linear(),
    "ddpm_cosine": S.DiscreteSchedule.cosine(),
    "vp": S.VPSDE(),
    "subvp": S.SubVPSDE(),
    "ve": S.VESDE(),
    "edm": S.EDMSchedule(),
    "rectified_flow": S.RectifiedFlow(),
}


def _pair(sched, B=6, D=3):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.normal(k1, (B, D))
    eps = jax.random.normal(k2, (B, D))
    t = jax.random.uniform(k3, (B,), minval=0.05, maxval=0.9) * sched.t_max
    x = S.bcast(sched.alpha(t), x0) * x0 + S.bcast(sched.sigma(t), x0) * eps
    return x0, eps, t, x


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_conversions_are_mutual_inverses_across_all_pairs(name):
    sched = SCHEDULES[name]
    x0, eps, t, x = _pair(sched)
    truth = {k: P.from_x0_eps(x0, eps, t, sched, k) for k in P.KINDS}
    for a, b in itertools.product(P.KINDS, P.KINDS):
        got = P.convert(truth[a], x, t, sched, source=a, target=b)
        np.testing.assert_allclose(np.asarray(got), np.asarray(truth[b]), rtol=2e-3, atol=2e-4,
                                   err_msg=f"{a} -> {b}")
        back = P.convert(got, x, t, sched, source=b, target=a)
        np.testing.assert_allclose(np.asarray(back), np.asarray(truth[a]), rtol=2e-3, atol=2e-4,
                                   err_msg=f"{a} -> {b} -> {a}")


def test_kinds_have_their_defining_formulas():
    sched = S.VPSDE()
    x0, eps, t, x = _pair(sched)
    a, s = S.bcast(sched.alpha(t), x0), S.bcast(sched.sigma(t), x0)
    np.testing.assert_allclose(P.from_x0_eps(x0, eps, t, sched, "v"), a * eps - s * x0, rtol=1e-6)
    np.testing.assert_allclose(P.from_x0_eps(x0, eps, t, sched, "score"), -eps / s, rtol=1e-6)
    # VP velocity: alpha' = f alpha, sigma' = (g^2/2 - f sigma^2) / sigma ... checked through d/dt.
    dt = 1e-3
    x_plus = S.bcast(sched.alpha(t + dt), x0) * x0 + S.bcast(sched.sigma(t + dt), x0) * eps
    x_minus = S.bcast(sched.alpha(t - dt), x0) * x0 + S.bcast(sched.sigma(t - dt), x0) * eps
    np.testing.assert_allclose(P.from_x0_eps(x0, eps, t, sched, "velocity"), (x_plus - x_minus) / (2 * dt),
                               rtol=2e-3, atol=2e-3)
    rf = S.RectifiedFlow()
    x0, eps, t, x = _pair(rf)
    np.testing.assert_allclose(P.from_x0_eps(x0, eps, t, rf, "velocity"), eps - x0, rtol=1e-6)


def test_edm_preconditioning_equals_table1():
    sigma = np.array([0.002, 0.1, 0.5, 1.0, 7.0, 80.0])
    sd = 0.5
    c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64) for c in P.edm_preconditioning(sigma, sd))
    np.testing.assert_allclose(c_skip, sd ** 2 / (sigma ** 2 + sd ** 2), rtol=1e-6)
    np.testing.assert_allclose(c_out, sigma * sd / np.sqrt(sd ** 2 + sigma ** 2), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma ** 2 + sd ** 2), rtol=1e-6)
    np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-6)
    # VP column: sigma^-1(sigma) = (sqrt(beta_min^2 + 2 beta_d log(sigma^2 + 1)) - beta_min) / beta_d.
    beta_d, beta_min, M = 19.9, 0.1, 1000
    c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64) for c in P.vp_preconditioning(sigma))
    t = (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log(sigma ** 2 + 1)) - beta_min) / beta_d
    np.testing.assert_allclose(c_skip, 1.0)
    np.testing.assert_allclose(c_out, -sigma, rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma ** 2 + 1), rtol=1e-6)
    np.testing.assert_allclose(c_noise, (M - 1) * t, rtol=1e-4)
    # sigma(t) of EDM's VP is sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1): the inverse is exact.
    np.testing.assert_allclose(np.sqrt(np.exp(0.5 * beta_d * t ** 2 + beta_min * t) - 1), sigma, rtol=1e-4)
    # VE column.
    c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64) for c in P.ve_preconditioning(sigma))
    np.testing.assert_allclose(c_skip, 1.0)
    np.testing.assert_allclose(c_out, sigma, rtol=1e-6)
    np.testing.assert_allclose(c_in, 1.0)
    np.testing.assert_allclose(c_noise, np.log(0.5 * sigma), rtol=1e-5)


def test_edm_preconditioned_denoiser_has_unit_variance_target():
    """Karras et al. 2022, App. B.6: with the Table 1 coefficients the effective training target
    (x0 - c_skip (x0 + n)) / c_out has unit variance when Var(x0) = sigma_data^2."""
    sd, sigma = 0.5, np.array([0.01, 0.3, 2.0, 50.0])
    c_skip, c_out, c_in, _ = (np.asarray(c, np.float64) for c in P.edm_preconditioning(sigma, sd))
    target_var = ((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * sigma ** 2) / c_out ** 2
    np.testing.assert_allclose(target_var, 1.0, rtol=1e-5)
    np.testing.assert_allclose(c_in ** 2 * (sd ** 2 + sigma ** 2), 1.0, rtol=1e-5)


def test_model_fn_feeds_c_noise_and_views_convert():
    sched = S.DiscreteSchedule.linear()
    seen = {}

    def apply_fn(x, labels):
        seen["labels"] = labels
        return jnp.zeros_like(x)

    fn = P.model_fn(apply_fn, sched)
    x = jnp.ones((4, 2))
    fn(x, sched.step_to_t(jnp.array([0, 1, 2, 999])))
    np.testing.assert_allclose(seen["labels"], [0, 1, 2, 999], atol=1e-3)
    fn(x, 0.5)
    assert seen["labels"].shape == (4,)
    # A zero eps prediction denoises to x / alpha.
    den = P.as_denoiser(fn, sched, "eps")(x, 0.5)
    np.testing.assert_allclose(den, x / sched.alpha(0.5), rtol=1e-6)


def test_posterior_coefficients_match_ddpm_eq7_in_float64():
    sched = S.DiscreteSchedule.linear()
    b = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - b)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    n = np.array([0, 1, 2, 10, 500, 999])
    c_x0, c_xt, log_var = (np.asarray(v, np.float64) for v in sched.posterior(n))
    np.testing.assert_allclose(c_x0, (b * np.sqrt(abar_prev) / (1 - abar))[n], rtol=1e-5)
    np.testing.assert_allclose(c_xt, (np.sqrt(1 - b) * (1 - abar_prev) / (1 - abar))[n], rtol=1e-5)
    beta_tilde = b * (1 - abar_prev) / (1 - abar)
    expected = np.log(np.where(n == 0, beta_tilde[1], beta_tilde[n]))
    np.testing.assert_allclose(log_var, expected, rtol=1e-5)


def test_learned_log_variance_interpolates_beta_and_beta_tilde():
    sched = S.DiscreteSchedule.cosine(T=100)
    n = jnp.array([3, 50])
    t = sched.step_to_t(n)
    _, _, log_bt = sched.posterior(n)
    log_b = jnp.log(sched.betas[n])
    ones = jnp.ones((2, 1))
    for v, signed, w in ((1.0, True, 1.0), (-1.0, True, 0.0), (0.0, True, 0.5), (0.25, False, 0.25)):
        got = P.learned_log_variance(v * ones, t, sched, signed=signed)[:, 0]
        np.testing.assert_allclose(got, w * log_b + (1 - w) * log_bt, rtol=1e-6)


def test_bad_kind_and_mismatched_shapes_raise():
    sched = S.VPSDE()
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="unknown prediction kind 'noise'.*'eps'"):
        P.convert(x, x, 0.5, sched, source="noise", target="eps")
    with pytest.raises(ValueError, match=r"model output has shape \(2, 4\) but x_t has shape \(2, 3\)"):
        P.convert(jnp.ones((2, 4)), x, 0.5, sched, source="eps", target="x0")
    with pytest.raises(ValueError, match=r"shape \(\) or \(B,\)=\(2,\)"):
        P.convert(x, x, jnp.ones((3,)) * 0.5, sched, source="eps", target="x0")
