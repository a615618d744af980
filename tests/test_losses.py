"""Each loss is minimised by the Bayes-optimal predictor for Gaussian data, at its closed-form value.

Data x0 ~ N(m, s^2 I) in D dims, x_t = a x0 + sig eps. Then x0 | x_t is Gaussian with mean
x0*(x_t) = m + k (x_t - a m), k = a s^2 / (a^2 s^2 + sig^2), and variance V = s^2 sig^2 / (a^2 s^2 + sig^2)
per dimension. Every kind is affine in x0 at fixed x_t, ``kind = ... + c_kind x0``, with
c_x0 = 1, c_eps = -a / sig, c_v = -(a^2 + sig^2) / sig, c_score = a / sig^2,
c_velocity = a' - sig' a / sig, so the irreducible squared error of a kind is c_kind^2 V per dimension
and each loss's minimum is E_t[w(t) c_target(t)^2 V(t)] (times D for summed losses).

The test predictor is ``x0_hat = theta_0 m + theta_1 k (x_t - a m)`` (converted to the network's
kind), which is optimal at theta = (1, 1). Every example gets its own copy of theta, so the gradient
of the summed per-example losses w.r.t. theta is the matrix of per-example gradients: their mean is
the Monte-Carlo gradient of the expected loss and their standard deviation / sqrt(B) its standard
error (SE). Checks: at theta = 1 the mean gradient is within K_SE standard errors of 0, at perturbed
theta it is more than K_SE away, and the mean of (loss_i - irreducible(t_i)) is within K_SE standard
errors of 0 (conditioning on each example's sampled time removes the time noise from the check).
"""
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from diffjax import losses as L
from diffjax import predictions as P
from diffjax import schedules as S
from diffjax.schedules import bcast

M_DATA, S_DATA, D, B = 0.5, 0.6, 2, 50_000
K_SE = 4.0
PERTURBED = (1.15, 0.85)


def _x0(B=B):
    return M_DATA + S_DATA * jax.random.normal(jax.random.key(1), (B, D))


def _coefs(sched, t, x):
    a, sig = bcast(sched.alpha(t), x), bcast(sched.sigma(t), x)
    k = a * S_DATA ** 2 / (a ** 2 * S_DATA ** 2 + sig ** 2)
    V = S_DATA ** 2 * sig ** 2 / (a ** 2 * S_DATA ** 2 + sig ** 2)
    return a, sig, k, V


def _c(kind, sched, t, x):
    a, sig, _, _ = _coefs(sched, t, x)
    if kind == "x0":
        return jnp.ones_like(a)
    if kind == "eps":
        return -a / sig
    if kind == "v":
        return -(a ** 2 + sig ** 2) / sig
    if kind == "score":
        return a / sig ** 2
    da, ds = bcast(sched.d_alpha(t), x), bcast(sched.d_sigma(t), x)
    return da - ds * a / sig


def _affine_model(sched, prediction, theta):
    def fn(x, t):
        a, _, k, _ = _coefs(sched, t, x)
        x0_hat = theta[:, 0:1] * M_DATA + theta[:, 1:2] * k * (x - a * M_DATA)
        return P.convert(x0_hat, x, t, sched, source="x0", target=prediction)

    return fn


def _log_snr_range(sched):
    return float(sched.log_snr(sched.t_eps) - sched.log_snr(sched.t_max))


CASES = {
    # id: (loss, schedule, options, target kind of the error, weight(t, sched), summed over dims)
    "simple_eps_ddpm_linear": (L.simple, S.DiscreteSchedule.linear(), {"prediction": "eps"}, "eps", None, False),
    "simple_x0_ddpm_cosine": (L.simple, S.DiscreteSchedule.cosine(), {"prediction": "x0"}, "x0", None, False),
    "simple_v_vp": (L.simple, S.VPSDE(), {"prediction": "v"}, "v", None, False),
    "simple_v_net_eps_target_cosine": (L.simple, S.DiscreteSchedule.cosine(),
                                       {"prediction": "v", "target": "eps"}, "eps", None, False),
    "ncsn_dsm": (L.ncsn_dsm, S.VESDE(sigma_min=0.01, sigma_max=1.0), {"num_scales": 10}, "eps",
                 lambda t, s: 0.5, True),
    "dsm_ve": (L.dsm, S.VESDE(), {}, "eps", None, True),
    "dsm_vp_likelihood_weighting": (L.dsm, S.VPSDE(), {"likelihood_weighting": True}, "eps",
                                    lambda t, s: s.diffusion_sq(t) / s.sigma(t) ** 2, True),
    "dsm_vp_importance_sampling": (L.dsm, S.VPSDE(), {"likelihood_weighting": True, "importance_sampling": True},
                                   "eps", lambda t, s: _log_snr_range(s) / (1.0 - 1e-3), True),
    "dsm_subvp_reduce_mean": (L.dsm, S.SubVPSDE(), {"reduce_mean": True, "prediction": "eps"}, "eps", None, False),
    "edm": (L.edm, S.EDMSchedule(), {}, "x0", lambda t, s: (t ** 2 + 0.25) / (0.5 * t) ** 2, True),
    # x0-parametrised errors cost c_velocity^2 = 1/t^2 for rectified flow: keep t away from 0.
    "flow_matching_rectified_flow": (L.flow_matching, S.RectifiedFlow(), {"t_eps": 0.05}, "velocity", None, False),
    "flow_matching_vp_eps_net": (L.flow_matching, S.VPSDE(), {"prediction": "eps", "t_eps": 0.01},
                                 "velocity", None, False),
}


def _per_example_grads(loss, sched, options, theta, x0, key):
    prediction = options.get("prediction", _default_prediction(loss))

    def total(th):
        out = loss.per_example(_affine_model(sched, prediction, th), x0, key, sched, **options)
        return jnp.sum(out["loss"]), out

    return jax.grad(total, has_aux=True)(theta)


def _default_prediction(loss):
    return inspect.signature(loss.per_example).parameters["prediction"].default


def _mean_and_se(v):
    v = np.asarray(v, np.float64)
    return v.mean(0), v.std(0) / math.sqrt(v.shape[0])


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_is_minimised_by_the_gaussian_posterior_mean_at_its_irreducible_value(case):
    loss, sched, options, target, weight, summed = CASES[case]
    x0, key = _x0(), jax.random.key(2)
    theta = jnp.ones((B, 2))
    g, out = _per_example_grads(loss, sched, options, theta, x0, key)
    mean, se = _mean_and_se(g)
    assert np.all(np.abs(mean) < K_SE * se), (mean, se)

    t = out["t"]
    expected = _c(target, sched, t, x0[:, :1])[:, 0] ** 2 * _coefs(sched, t, x0[:, :1])[3][:, 0]
    expected = expected * (D if summed else 1) * (1.0 if weight is None else weight(t, sched))
    diff_mean, diff_se = _mean_and_se(out["loss"] - expected)
    assert abs(diff_mean) < K_SE * diff_se, (diff_mean, diff_se, float(jnp.mean(out["loss"])))

    g_bad, out_bad = _per_example_grads(loss, sched, options, theta * jnp.array(PERTURBED), x0, key)
    mean_bad, se_bad = _mean_and_se(g_bad)
    assert np.all(np.abs(mean_bad) > K_SE * se_bad), (mean_bad, se_bad)
    assert float(jnp.mean(out_bad["loss"])) > float(jnp.mean(out["loss"]))


def _oracle(sched, kind, x0, learned_variance=False):
    """A model that knows x0 (batch-aligned) and returns the exact target of its kind."""
    def fn(x, t):
        a, sig = bcast(sched.alpha(t), x), bcast(sched.sigma(t), x)
        out = P.from_x0_eps(x0, (x - a * x0) / sig, t, sched, kind)
        return jnp.concatenate([out, jnp.zeros_like(out)], -1) if learned_variance else out
    return fn


@pytest.mark.parametrize("case", sorted(CASES))
def test_oracle_that_knows_x0_has_zero_loss(case):
    loss, sched, options, _, _, _ = CASES[case]
    x0 = _x0(64)
    prediction = options.get("prediction", _default_prediction(loss))
    value, terms = loss(_oracle(sched, prediction, x0), x0, jax.random.key(3), sched, **options)
    assert float(value) < 1e-6 * max(1.0, float(loss(lambda x, t: jnp.zeros_like(x), x0, jax.random.key(3),
                                                          sched, **options)[0]))
    assert set(terms) == {"loss"}


def test_rectified_flow_target_is_eps_minus_x0():
    sched, x0 = S.RectifiedFlow(), _x0(256)

    def model(x, t):  # x = (1 - t) x0 + t eps  =>  eps - x0 = (x - x0) / t
        return (x - x0) / bcast(t, x)

    assert float(L.flow_matching(model, x0, jax.random.key(0), sched)[0]) < 1e-8
    out = L.flow_matching.per_example(model, x0, jax.random.key(0), sched)
    assert 0.0 <= float(out["t"].min()) and float(out["t"].max()) <= 1.0


# --- improved DDPM hybrid loss --------------------------------------------------------------

def _hybrid_model(sched, theta):
    """Optimal mean (theta_0, theta_1 = 1) and optimal variance (theta_2 = 0) for Gaussian data.

    The true reverse p(x_{n-1} | x_n) is Gaussian with variance beta_tilde_n + c_x0^2 V_n, the
    minimiser of the expected KL; v is set so eq. 15 gives it (signed convention), shifted by
    theta_2 on steps n >= 1 only (the n = 0 decoder term is a discretised likelihood).
    """
    base = _affine_model(sched, "eps", theta)

    def fn(x, t):
        n = sched.t_to_step(t)
        c_x0, _, log_bt = sched.posterior(n)
        _, _, _, V = _coefs(sched, t, x)
        bt_true = jnp.where(n == 0, 0.0, jnp.exp(log_bt))
        opt_var = bcast(bt_true, x) + bcast(c_x0, x) ** 2 * V
        log_b = bcast(jnp.log(sched.betas[n]), x)
        frac = (jnp.log(opt_var) - bcast(log_bt, x)) / (log_b - bcast(log_bt, x))
        v = jnp.broadcast_to(2 * frac - 1 + theta[:, 2:3] * bcast(n >= 1, x), x.shape)
        return jnp.concatenate([base(x, t), v], axis=-1)

    return fn


def test_hybrid_loss_is_minimised_by_the_true_reverse_mean_and_variance():
    sched = S.DiscreteSchedule.cosine(T=100)
    x0, key = _x0(), jax.random.key(4)

    def grads(theta):
        def total(th):
            out = L.hybrid.per_example(_hybrid_model(sched, th), x0, key, sched)
            return jnp.sum(out["loss"]), out
        return jax.grad(total, has_aux=True)(theta)

    g, out = grads(jnp.ones((B, 3)).at[:, 2].set(0.0))
    mean, se = _mean_and_se(g)
    assert np.all(np.abs(mean) < K_SE * se), (mean, se)
    g_bad, out_bad = grads(jnp.array([1.15, 0.85, 0.3]) * jnp.ones((B, 3)))
    mean_bad, se_bad = _mean_and_se(g_bad)
    assert np.all(np.abs(mean_bad) > K_SE * se_bad), (mean_bad, se_bad)

    # L_simple part: c_eps^2 V per dimension; L_vlb part: T L_n with L_n = KL(true || optimal) =
    # 1/2 log(Sigma* / beta_tilde) nats per dimension for n >= 1.
    t = out["t"]
    xs = x0[:, :1]
    mse_expected = (_c("eps", sched, t, xs) ** 2 * _coefs(sched, t, xs)[3])[:, 0]
    diff_mean, diff_se = _mean_and_se(out["mse"] - mse_expected)
    assert abs(diff_mean) < K_SE * diff_se
    n = np.asarray(sched.t_to_step(t))
    c_x0, _, log_bt = sched.posterior(n)
    opt_var = jnp.exp(log_bt) + c_x0 ** 2 * _coefs(sched, t, xs)[3][:, 0]
    vlb_expected = sched.T * 0.5 * (jnp.log(opt_var) - log_bt) / math.log(2)
    mask = n >= 1
    diff_mean, diff_se = _mean_and_se(np.asarray(out["vlb"] - vlb_expected)[mask])
    assert abs(diff_mean) < K_SE * diff_se, (diff_mean, diff_se)
    np.testing.assert_allclose(out["loss"], out["mse"] + 1e-3 * out["vlb"], rtol=1e-6)

    # Stop-gradient: L_vlb gives the mean parameters no gradient.
    g_vlb = jax.grad(lambda th: jnp.sum(L.hybrid.per_example(_hybrid_model(sched, th), x0, key,
                                                              sched)["vlb"]))(jnp.ones((B, 3)) * 1.1)
    assert np.all(np.asarray(g_vlb[:, :2]) == 0.0) and np.any(np.asarray(g_vlb[:, 2]) != 0.0)


def test_discretized_gaussian_likelihood_sums_to_one_and_matches_scipy():
    levels = jnp.linspace(-1.0, 1.0, 256)
    for mean, log_scale in ((0.1, -3.0), (-0.97, -4.0), (0.99, -1.0), (0.0, 1.0)):
        lp = L.discretized_gaussian_log_likelihood(levels, jnp.full(256, mean), jnp.full(256, log_scale))
        assert float(jnp.sum(jnp.exp(lp))) == pytest.approx(1.0, abs=1e-4)
        sd = math.exp(log_scale)
        x = np.asarray(levels, np.float64)[100:150]
        with np.errstate(divide="ignore"):
            ref = np.log(stats.norm.cdf(x + 1 / 255, mean, sd) - stats.norm.cdf(x - 1 / 255, mean, sd))
        # Below -25 the implementation floors the probability at 1e-12 (as improved-diffusion).
        finite = np.isfinite(ref) & (ref > -25)
        np.testing.assert_allclose(np.asarray(lp)[100:150][finite], ref[finite], rtol=1e-3, atol=1e-5)


def test_normal_kl_matches_numerical_integration():
    m1, v1, m2, v2 = 0.3, 0.5, -0.2, 1.7
    p, q = stats.norm(m1, math.sqrt(v1)), stats.norm(m2, math.sqrt(v2))
    ref = integrate.quad(lambda z: p.pdf(z) * (p.logpdf(z) - q.logpdf(z)), -20, 20)[0]
    assert float(L.normal_kl(m1, math.log(v1), m2, math.log(v2))) == pytest.approx(ref, rel=1e-5)


# --- sampling of times / noise levels -------------------------------------------------------

def test_ncsn_levels_are_the_geometric_sigmas():
    for smax, smin, num in ((1.0, 0.01, 10), (50.0, 0.01, 232)):
        sched = S.VESDE(sigma_min=smin, sigma_max=smax)
        out = L.ncsn_dsm.per_example(lambda x, t: jnp.zeros_like(x), _x0(4096), jax.random.key(0), sched,
                                     num_scales=num)
        got = np.unique(np.round(np.asarray(sched.sigma(out["t"]), np.float64), 6))
        expected = np.geomspace(smin, smax, num)
        assert len(got) == num if num <= 10 else len(got) > 0.95 * num
        assert np.all(np.min(np.abs(np.log(got)[:, None] - np.log(expected)[None]), axis=1) < 1e-4)


def test_edm_noise_levels_are_log_normal_and_discrete_steps_uniform():
    x0, n = _x0(20_000), 20_000
    sig = np.log(np.asarray(L.edm.per_example(lambda x, t: jnp.zeros_like(x), x0, jax.random.key(5),
                                              S.EDMSchedule())["t"], np.float64))
    assert abs(sig.mean() + 1.2) < 4 * 1.2 / math.sqrt(n)
    assert abs(sig.std() - 1.2) < 4 * 1.2 / math.sqrt(2 * n)
    sched = S.DiscreteSchedule.linear(T=10)
    t = L.simple.per_example(lambda x, t: jnp.zeros_like(x), x0, jax.random.key(6), sched)["t"]
    steps = np.asarray(sched.t_to_step(t))
    counts = np.bincount(steps, minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3 and set(steps) == set(range(10))
    t = L.dsm.per_example(lambda x, t: jnp.zeros_like(x), x0, jax.random.key(6), S.VPSDE(), t_eps=1e-5)["t"]
    assert float(t.min()) >= 1e-5 and stats.kstest(np.asarray(t), "uniform", args=(1e-5, 1 - 1e-5)).pvalue > 1e-3


def test_importance_sampling_draws_t_by_the_likelihood_weight_with_the_same_expected_loss():
    """p(t) = (g^2 / sigma^2) / Z: its CDF is (lambda(t_eps) - lambda(t)) / Z. Both estimators of the
    likelihood-weighted loss (a fixed suboptimal model) agree within 4 combined standard errors."""
    sched, x0, model = S.VPSDE(), _x0(), (lambda x, t: -0.8 * x)
    opts = dict(likelihood_weighting=True, prediction="eps")
    out_is = L.dsm.per_example(model, x0, jax.random.key(7), sched, importance_sampling=True, **opts)
    lam = lambda t: np.asarray(sched.log_snr(t), np.float64)
    cdf = lambda t: (lam(sched.t_eps) - lam(t)) / (lam(sched.t_eps) - lam(1.0))
    assert stats.kstest(np.asarray(out_is["t"]), cdf).pvalue > 1e-3
    out_u = L.dsm.per_example(model, x0, jax.random.key(8), sched, **opts)
    (m_is, se_is), (m_u, se_u) = _mean_and_se(out_is["loss"]), _mean_and_se(out_u["loss"])
    assert abs(m_is - m_u) < K_SE * math.hypot(se_is, se_u), (m_is, se_is, m_u, se_u)
    assert se_is < se_u  # observed: 0.46 vs 0.68
    with pytest.raises(ValueError, match="importance_sampling applies only with likelihood_weighting"):
        L.dsm(model, x0, jax.random.key(0), sched, importance_sampling=True)


# --- configuration and bad input ------------------------------------------------------------

def test_get_binds_options_and_rejects_unknown_names_and_fields():
    x0, key, sched = _x0(32), jax.random.key(0), S.VPSDE()
    model = lambda x, t: 0.1 * x
    fn = L.get({"name": "dsm", "t_eps": 1e-5, "likelihood_weighting": True}, prediction="eps")
    assert float(fn(model, x0, key, sched)[0]) == float(
        L.dsm(model, x0, key, sched, t_eps=1e-5, likelihood_weighting=True, prediction="eps")[0])
    assert set(L.names()) == {"simple", "hybrid", "ncsn_dsm", "dsm", "edm", "flow_matching"}
    with pytest.raises(ValueError, match="unknown loss 'l2'; known losses: dsm, edm, flow_matching"):
        L.get({"name": "l2"})
    with pytest.raises(ValueError, match=r"loss 'edm' has no option\(s\) \['sigma_max'\]; its options are"):
        L.get({"name": "edm", "sigma_max": 80.0})


def test_bad_inputs_raise_clear_errors():
    sched, key = S.DiscreteSchedule.linear(), jax.random.key(0)
    x0 = _x0(8)
    with pytest.raises(ValueError, match=r"simple: model_fn returned shape \(8, 3\), expected \(8, 2\)"):
        L.simple(lambda x, t: jnp.zeros((8, 3)), x0, key, sched)
    with pytest.raises(ValueError, match=r"hybrid: model_fn returned shape \(8, 2\), expected \(8, 4\)"):
        L.hybrid(lambda x, t: x, x0, key, sched)
    with pytest.raises(ValueError, match=r"x0 must be a batch of shape \(B, ...\)"):
        L.simple(lambda x, t: x, jnp.ones(8), key, sched)
    with pytest.raises(ValueError, match="hybrid: needs a DiscreteSchedule"):
        L.hybrid(lambda x, t: x, x0, key, S.VPSDE())
    with pytest.raises(ValueError, match="edm: needs a EDMSchedule"):
        L.edm(lambda x, t: x, x0, key, S.VPSDE())
    with pytest.raises(ValueError, match="ncsn_dsm: needs a VESDE"):
        L.ncsn_dsm(lambda x, t: x, x0, key, S.VPSDE())
    with pytest.raises(ValueError, match="unknown prediction kind 'noise'"):
        L.simple(lambda x, t: x, x0, key, sched, prediction="noise")


def test_losses_jit_and_differentiate_through_a_network():
    from diffjax.models.mlp import MLP
    sched = S.DiscreteSchedule.linear(T=100)
    net = MLP(hidden=32, depth=1)
    x0 = _x0(16)
    params = net.init(jax.random.key(0), x0, jnp.zeros(16))

    @jax.jit
    def step(params, key):
        def f(p):
            return L.simple(P.model_fn(lambda x, c: net.apply(p, x, c), sched), x0, key, sched)[0]
        return jax.value_and_grad(f)(params)

    value, grads = step(params, jax.random.key(1))
    assert np.isfinite(float(value))
    assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(grads))
