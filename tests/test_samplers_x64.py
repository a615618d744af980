"""Every sampler against a float64 peer written from its paper: float64 must mean float64.

The peers are NumPy float64 loops over Gaussian data ``N(M, diag(S^2))`` under the VP SDE, whose
denoiser, score and schedule are closed forms: the k-diffusion loops (``get_sigmas_karras`` with
``append_zero``, ``sample_euler``, ``sample_heun`` with churn, ``sample_dpmpp_2m``) in EDM's
``sigma~ = sigma / alpha``, and the update of each paper in schedule time for the others. They build
their own grids and read the same standard normal draws as the sampler (``jax.random`` with the
sampler's key splits). Under ``jax.enable_x64`` the samplers agree with them to round-off (<= 1e-12);
in float32 the k-diffusion ones agree to float32 round-off.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import samplers
from diffjax.schedules import VPSDE

M, S = np.array([0.5, -1.0]), np.array([0.3, 1.5])
B0, B1 = 0.1, 20.0
T_EPS = 1e-3
TOL64 = 1e-12
TOL32 = 1e-6  # float32 round-off, relative to the largest |x~| on the way (x_T / alpha(1) ~ 300)
SHAPE = (4, 2)


# --- the VP SDE and Gaussian data in closed form (Song et al. 2021, eq. 11 and App. B) ---------------
def log_alpha(t):
    return -0.25 * t ** 2 * (B1 - B0) - 0.5 * t * B0


def alpha(t):
    return np.exp(log_alpha(t))


def sigma(t):
    return np.sqrt(-np.expm1(2 * log_alpha(t)))


def lam(t):  # log-SNR
    return -np.log(np.expm1(-2 * log_alpha(t)))


def t_of_lam(l):
    integral = np.logaddexp(0.0, -l)  # int_0^t beta = -2 log alpha = log(1 + e^-lambda)
    return 2 * integral / (B0 + np.sqrt(B0 ** 2 + 2 * (B1 - B0) * integral))


def t_of_sigma_tilde(s):
    return t_of_lam(-2 * np.log(s))


def denoise(x, t):
    a, s = alpha(t), sigma(t)
    return M + a * S ** 2 / (a ** 2 * S ** 2 + s ** 2) * (x - a * M)


def denoise_tilde(x, s):  # EDM's D(x~; sigma~) of the same data
    return M + S ** 2 / (S ** 2 + s ** 2) * (x - M)


def score(x, t):
    return (alpha(t) * denoise(x, t) - x) / sigma(t) ** 2


def f(t):
    return -0.5 * (B0 + t * (B1 - B0))


def g2(t):
    return B0 + t * (B1 - B0)


def normal(key):
    """The sampler's standard normal draw from ``key``, in its float type (float64 under x64)."""
    return np.asarray(jax.random.normal(key, SHAPE, jnp.result_type(float)), np.float64)


# --- grids ------------------------------------------------------------------------------------------
def uniform(n):
    return np.linspace(1.0, T_EPS, n + 1)


def logsnr(n):
    ts = t_of_lam(np.linspace(lam(1.0), lam(T_EPS), n + 1))
    ts[0], ts[-1] = 1.0, T_EPS
    return ts


def karras_sigmas(n, sigma_min, sigma_max, rho=7.0):
    """k-diffusion's get_sigmas_karras: n rho-spaced levels (EDM eq. 5), then append_zero."""
    ramp = np.linspace(0, 1, n)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(sigmas, 0.0)


def vp_karras(n):
    return karras_sigmas(n, np.exp(-0.5 * lam(T_EPS)), np.exp(-0.5 * lam(1.0)))


# Exact in float32 as well: Schedule.discretize (the reverse-diffusion predictor) casts its dt to float32.
DYADIC = np.array([1.0, 0.75, 0.5, 0.25, 0.125])


# --- the peers ----------------------------------------------------------------------------------------
def kd_edm(x, sigmas, key, second_order=True, s_churn=0.0, s_tmin=0.0, s_tmax=np.inf, s_noise=1.0):
    """k-diffusion sample_euler / sample_heun (EDM Alg. 1-2): Euler on the step that lands on sigma = 0."""
    n = len(sigmas) - 1
    keys = jax.random.split(key, n)
    for i in range(n):
        gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + normal(keys[i]) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        d = (x - denoise_tilde(x, sigma_hat)) / sigma_hat
        dt = sigmas[i + 1] - sigma_hat
        if not second_order or sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoise_tilde(x_2, sigmas[i + 1])) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


def kd_dpmpp_2m(x, sigmas):
    """k-diffusion sample_dpmpp_2m (DPM-Solver++(2M), Lu et al. 2022b, Alg. 2) in t = -log sigma."""
    old_den = None
    for i in range(len(sigmas) - 1):
        den = denoise_tilde(x, sigmas[i])
        t = -np.log(sigmas[i])
        h = (-np.log(sigmas[i + 1]) if sigmas[i + 1] > 0 else np.inf) - t
        if old_den is None or sigmas[i + 1] == 0:
            d = den
        else:
            r = (t + np.log(sigmas[i - 1])) / h
            d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old_den
        x = (sigmas[i + 1] / sigmas[i]) * x - np.expm1(-h) * d
        old_den = den
    return x


def ancestral(x, ts, key, eta=None):
    """DDPM Alg. 2 with the posterior variance (``eta=None``; no noise on the last step) or DDIM eq. 12."""
    keys = jax.random.split(key, len(ts) - 1)
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        a_t, s_t, a_s, s_s = alpha(t), sigma(t), alpha(s), sigma(s)
        x0 = denoise(x, t)
        beta_tilde = (s_t ** 2 - (a_t / a_s) ** 2 * s_s ** 2) * s_s ** 2 / s_t ** 2
        z = normal(keys[i])
        if eta is None:
            mean = a_s * x0 + (a_t / a_s) * s_s ** 2 / s_t ** 2 * (x - a_t * x0)
            x = mean + (np.sqrt(beta_tilde) * z if i < len(ts) - 2 else 0.0)
        else:
            c = eta * np.sqrt(beta_tilde)
            x = a_s * x0 + np.sqrt(s_s ** 2 - c ** 2) * (x - a_t * x0) / s_t + c * z
    return x


def predictor_corrector(x, ts, key, predictor, corrector, snr=0.16):
    """Song et al. 2021, Alg. 1-5 with one Langevin corrector step; returns the last predictor mean."""
    keys = jax.random.split(key, len(ts) - 1)
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        kc, kp = jax.random.split(keys[i])
        if corrector:
            z = normal(jax.random.split(kc, 1)[0])
            grad = score(x, t)
            norm = lambda v: np.mean(np.linalg.norm(v, axis=-1))  # noqa: E731
            step = 2 * (alpha(t) / alpha(s)) ** 2 * (snr * norm(z) / norm(grad)) ** 2
            x = x + step * grad + np.sqrt(2 * step) * z
        z = normal(kp)
        if predictor == "euler_maruyama":
            mean = x - (f(t) * x - g2(t) * score(x, t)) * (t - s)
            x = mean + np.sqrt(g2(t)) * np.sqrt(t - s) * z
        else:  # reverse diffusion: the reverse of the exact forward step from s to t (eq. 46-47)
            ratio = alpha(t) / alpha(s)
            G2 = sigma(t) ** 2 - (ratio * sigma(s)) ** 2
            mean = x - (ratio - 1) * x + G2 * score(x, t)
            x = mean + np.sqrt(G2) * z
    return mean


def annealed_langevin(x, levels, key, n_each, step_lr):
    """Song & Ermon 2019, Alg. 1."""
    for t, k in zip(levels, jax.random.split(key, len(levels))):
        step = step_lr * (sigma(t) / sigma(levels[-1])) ** 2
        for kk in jax.random.split(k, n_each):
            x = x + 0.5 * step * score(x, t) + np.sqrt(step) * normal(kk)
    return x


def pf_ode(x, ts, heun):
    """Euler / Heun on dx/dt = f x - g^2 / 2 score (Song et al. 2021, eq. 13)."""
    v = lambda x, t: f(t) * x - 0.5 * g2(t) * score(x, t)  # noqa: E731
    for t, s in zip(ts[:-1], ts[1:]):
        d = v(x, t)
        x_next = x + (s - t) * d
        x = x + (s - t) * 0.5 * (d + v(x_next, s)) if heun else x_next
    return x


def gaussian_pf_ode_map(x, t, s):
    """The exact PF-ODE map of Gaussian data: z = (x - alpha m) / sqrt(alpha^2 S^2 + sigma^2) is conserved."""
    v_t, v_s = alpha(t) ** 2 * S ** 2 + sigma(t) ** 2, alpha(s) ** 2 * S ** 2 + sigma(s) ** 2
    return alpha(s) * M + np.sqrt(v_s / v_t) * (x - alpha(t) * M)


def dpm_solver(x, ts, order):
    """Singlestep DPM-Solver (Lu et al. 2022a): eq. 3.7 (order 1), Alg. 1 (r1 = 1/2), Alg. 2 (r1 = 1/3, r2 = 2/3)."""
    eps = lambda x, t: (x - alpha(t) * denoise(x, t)) / sigma(t)  # noqa: E731
    half = lambda t: 0.5 * lam(t)  # noqa: E731
    t_of_half = lambda l: t_of_lam(2 * l)  # noqa: E731

    def dpm1(x, e, t, u, rh):
        return alpha(u) / alpha(t) * x - sigma(u) * np.expm1(rh) * e

    for t, s in zip(ts[:-1], ts[1:]):
        h = half(s) - half(t)
        e = eps(x, t)
        if order == 1:
            x = dpm1(x, e, t, s, h)
        elif order == 2:
            s1 = t_of_half(half(t) + 0.5 * h)
            u1 = dpm1(x, e, t, s1, 0.5 * h)
            x = dpm1(x, e, t, s, h) - sigma(s) * np.expm1(h) * (eps(u1, s1) - e)
        else:
            r1, r2 = 1 / 3, 2 / 3
            s1, s2 = t_of_half(half(t) + r1 * h), t_of_half(half(t) + r2 * h)
            u1 = dpm1(x, e, t, s1, r1 * h)
            D1 = eps(u1, s1) - e
            u2 = dpm1(x, e, t, s2, r2 * h) - sigma(s2) * (r2 / r1) * (np.expm1(r2 * h) / (r2 * h) - 1) * D1
            x = dpm1(x, e, t, s, h) - sigma(s) / r2 * (np.expm1(h) / h - 1) * (eps(u2, s2) - e)
    return x


def edm_on_vp(x_T, key, **churn):
    sig = vp_karras(4)
    return kd_edm(x_T / alpha(1.0), sig, key, **churn)


# name: (options, the peer's result from (x_T, key))
CASES = {
    "ddpm": (dict(steps=4), lambda x, k: ancestral(x, uniform(4), k)),
    "ddim": (dict(steps=4, eta=0.5), lambda x, k: ancestral(x, uniform(4), k, eta=0.5)),
    "euler_maruyama": (dict(steps=4), lambda x, k: predictor_corrector(x, uniform(4), k, "euler_maruyama", False)),
    "reverse_diffusion": (dict(ts=DYADIC), lambda x, k: predictor_corrector(x, DYADIC, k, "reverse_diffusion", False)),
    "pc": (dict(ts=DYADIC), lambda x, k: predictor_corrector(x, DYADIC, k, "reverse_diffusion", True)),
    "annealed_langevin": (dict(steps=3, n_steps_each=2, step_lr=1e-5),
                          lambda x, k: annealed_langevin(x, logsnr(2), k, 2, 1e-5)),
    "ode_euler": (dict(steps=4), lambda x, k: pf_ode(x, uniform(4), heun=False)),
    "ode_heun": (dict(steps=4), lambda x, k: pf_ode(x, uniform(4), heun=True)),
    "ode_adaptive": (dict(solver="dopri8", rtol=1e-13, atol=1e-13, max_steps=10000),
                     lambda x, k: gaussian_pf_ode_map(x, 1.0, T_EPS)),
    "edm_euler": (dict(steps=4), lambda x, k: edm_on_vp(x, k, second_order=False)),
    "edm_heun": (dict(steps=4), lambda x, k: edm_on_vp(x, k)),
    "edm_stochastic": (dict(steps=4), lambda x, k: edm_on_vp(x, k, s_churn=40.0, s_tmin=0.05, s_tmax=50.0,
                                                              s_noise=1.003)),
    "dpm_solver_1": (dict(steps=4), lambda x, k: dpm_solver(x, logsnr(4), 1)),
    "dpm_solver_2": (dict(steps=3), lambda x, k: dpm_solver(x, logsnr(3), 2)),
    "dpm_solver_3": (dict(steps=2), lambda x, k: dpm_solver(x, logsnr(2), 3)),
    "dpm_solver_pp_2m": (dict(steps=5, spacing="karras"), lambda x, k: kd_dpmpp_2m(x / alpha(1.0), vp_karras(5))),
}


def _run(name, opts, dtype):
    schedule = VPSDE()
    gauss = samplers.GaussianMixture.gaussian(M, S)
    x_T = jax.random.normal(jax.random.PRNGKey(0), SHAPE, dtype)
    key = jax.random.PRNGKey(1)
    x, _ = jax.jit(lambda x: samplers.get(name)(gauss.denoiser(schedule), schedule, x, key, **opts))(x_T)
    return x, x_T, key


def test_every_registered_sampler_has_a_float64_peer():
    assert set(CASES) == set(samplers.names())


@pytest.mark.parametrize("name", sorted(CASES))
def test_sampler_in_float64_agrees_with_its_float64_peer_to_round_off(name):
    opts, peer = CASES[name]
    with jax.enable_x64(True):
        x, x_T, key = _run(name, opts, jnp.float64)
        assert x.dtype == jnp.float64
        expected = peer(np.asarray(x_T), key)
    err = float(np.max(np.abs(np.asarray(x) - expected)))
    assert err < TOL64, err


@pytest.mark.parametrize("name", ["edm_euler", "edm_heun", "edm_stochastic", "dpm_solver_pp_2m"])
def test_karras_grid_samplers_in_float32_agree_with_the_k_diffusion_loops(name):
    """The same comparison in float32, whose round-off is relative to the start x~_T = x_T / alpha(1)."""
    opts, peer = CASES[name]
    x, x_T, key = _run(name, opts, jnp.float32)
    assert x.dtype == jnp.float32
    err = float(np.max(np.abs(np.asarray(x, np.float64) - peer(np.asarray(x_T, np.float64), key))))
    assert err < TOL32 * float(np.max(np.abs(x_T))) / alpha(1.0), err


@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_karras_grid_with_sigma_min_and_max_is_k_diffusion_get_sigmas_karras(rho):
    with jax.enable_x64(True):
        grid = samplers.time_grid(VPSDE(), 6, "karras", sigma_min=0.05, sigma_max=20.0, rho=rho)
        sigmas = np.exp(-0.5 * np.asarray(VPSDE().log_snr(grid.ts)))
    assert grid.to_zero and grid.ts.dtype == jnp.float64
    np.testing.assert_allclose(np.append(sigmas, 0.0), karras_sigmas(6, 0.05, 20.0, rho), rtol=1e-13, atol=0)
