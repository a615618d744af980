"""Likelihoods in bits/dim: the probability-flow ODE (exact up to the solver and the trace
estimator) and DDPM's variational bound.

**Probability-flow ODE** (Song et al. 2021, Sec. 4.3 and App. D.2). The ODE
``dx/dt = f(t) x - g(t)^2 / 2 * score(x, t)`` carries the data marginal at ``t_eps`` to the prior
at ``t_max``, and by the instantaneous change of variables (Chen et al. 2018)

    log p_{t_eps}(x) = log p_prior(x(t_max)) + int_{t_eps}^{t_max} div_x f~(x(t), t) dt.

The divergence is exact (``D`` forward-mode JVPs; for low dimensions) or the Hutchinson-Skilling
estimate ``eps^T (d f~/dx) eps`` with one Gaussian or Rademacher probe per example, fixed along the
trajectory (unbiased for the log-likelihood). The augmented ODE is solved on device with a diffrax
adaptive Runge-Kutta method (Tsit5; score_sde uses RK45 on the host).

**Bits/dim** (score_sde ``likelihood.py``/``run_lib.py``). uint8 data ``k`` are dequantised as
``x = 2 (k + u) / 256 - 1``, ``u ~ U[0, 1)^D``, i.e. into bins of width ``Delta = 2/256`` that tile
[-1, 1]. A density on [-1, 1]^D gives the discrete model ``P(k) >= exp(E_u log p(x)) Delta^D``, so

    bpd = (NLL_nats(x) + D log(1 / Delta)) / (D ln 2) = NLL_nats(x) / (D ln 2) + 7,

the "+7" being score_sde's offset ``7 - inverse_scaler(-1)`` for data centred on [-1, 1] (+8 for
models of [0, 1] data, ``centered=False``).

**Variational bound** (Ho et al. 2020, eq. 5 and 13; Nichol & Dhariwal 2021 learned variances;
improved-diffusion ``_vb_terms_bpd``/``calc_bpd_loop``): for the discrete chain with T steps,
``L = L_T + sum_{t>1} L_{t-1} + L_0`` with ``L_T = KL(q(x_T|x_0) || N(0, I))``,
``L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || p(x_{t-1}|x_t))`` at one sampled ``x_t`` per step, and
``L_0 = -log p(x_0|x_1)`` under the discretised Gaussian decoder (eq. 13, bins of width 2/255
centred on the 256 data values, the outer ones open to +-infinity). Each term is reported in
bits/dim; their sum upper-bounds the model's NLL of the 8-bit data (no dequantisation: the
decoder is discrete).
"""
from __future__ import annotations

import math
from typing import Callable

import diffrax
import flax.struct as struct
import jax
import jax.numpy as jnp

from diffjax import predictions
from diffjax.losses import discretized_gaussian_log_likelihood, normal_kl
from diffjax.samplers.ode import pf_ode_velocity
from diffjax.schedules import DiscreteSchedule, Schedule, bcast

Array = jax.Array
DIVERGENCES = ("exact", "gaussian", "rademacher")
VARIANCES = ("fixedlarge", "fixedsmall", "learned_range")


# ---------------------------------------------------------------------------- divergence

def divergence(fn: Callable[[Array], Array], x: Array, method: str = "exact",
               probe: Array | None = None) -> Array:
    """Per-example divergence ``sum_i d fn(x)_i / d x_i`` of a batched map ``(B, ...) -> (B, ...)``
    that acts on each example independently. ``method="exact"`` costs ``D`` JVPs; otherwise
    ``probe`` (same shape as ``x``) gives the Hutchinson estimate ``probe . J probe``."""
    _, jvp_fn = jax.linearize(fn, x)
    return jacobian_trace(jvp_fn, x.shape, method, probe)


def jacobian_trace(jvp_fn: Callable[[Array], Array], shape: tuple[int, ...], method: str,
                   probe: Array | None = None) -> Array:
    """Per-example trace of the linear map ``jvp_fn`` (a Jacobian-vector product, as returned by
    ``jax.linearize``) on tangents of ``shape = (B, ...)``; see `divergence`."""
    batch, d = shape[0], math.prod(shape[1:])
    if method == "exact":
        basis = jnp.eye(d).reshape((d, 1) + tuple(shape[1:]))

        def diagonal_entry(e):
            jv = jvp_fn(jnp.broadcast_to(e, shape))
            return jnp.sum((jv * e).reshape(batch, -1), axis=-1)

        return jnp.sum(jax.lax.map(diagonal_entry, basis), axis=0)
    if probe is None:
        raise ValueError(f"divergence method {method!r} needs a probe")
    return jnp.sum((jvp_fn(probe) * probe).reshape(batch, -1), axis=-1)


def hutchinson_probe(key: Array, shape: tuple[int, ...], method: str) -> Array:
    if method == "gaussian":
        return jax.random.normal(key, shape)
    if method == "rademacher":
        return jax.random.rademacher(key, shape).astype(jnp.float32)
    raise ValueError(f"unknown divergence method {method!r}; expected one of {DIVERGENCES}")


# ---------------------------------------------------------------------------- PF-ODE

@struct.dataclass
class ODELikelihood:
    """``logp = prior_logp + delta_logp`` (nats, per example) of the inputs at ``t_eps``."""
    logp: Array
    prior_logp: Array
    delta_logp: Array
    z: Array
    num_steps: Array


def ode_log_likelihood(denoise_fn: Callable[[Array, Array], Array], schedule: Schedule, x: Array,
                       key: Array | None = None, *, divergence_method: str = "rademacher",
                       rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 16384,
                       solver: diffrax.AbstractSolver | None = None) -> ODELikelihood:
    """log p_{t_eps}(x) under the probability-flow ODE of the denoiser ``denoise_fn(x, t) -> x0_hat``
    (what samplers consume: ``predictions.as_denoiser(model_fn, schedule, prediction)``).

    ``divergence_method``: ``"exact"`` (no key needed), ``"rademacher"`` (score_sde's default)
    or ``"gaussian"`` Hutchinson probes drawn from ``key``. Jit-compatible; the whole solve is one device program.
    """
    if divergence_method not in DIVERGENCES:
        raise ValueError(f"unknown divergence method {divergence_method!r}; expected one of {DIVERGENCES}")
    probe = None
    if divergence_method != "exact":
        if key is None:
            raise ValueError(f"the Hutchinson estimator ({divergence_method!r}) needs a PRNG key")
        probe = hutchinson_probe(key, x.shape, divergence_method)
    batch = x.shape[0]
    velocity = pf_ode_velocity(denoise_fn, schedule)

    def vector_field(t, state, _):
        x_t, _ = state
        drift, jvp_fn = jax.linearize(lambda y: velocity(y, t), x_t)
        return drift, jacobian_trace(jvp_fn, x_t.shape, divergence_method, probe)

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), solver or diffrax.Tsit5(),
        t0=schedule.t_eps, t1=schedule.t_max, dt0=None, y0=(x, jnp.zeros((batch,), x.dtype)),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
    z, delta_logp = sol.ys[0][0], sol.ys[1][0]
    prior_logp = schedule.prior_logp(z)
    return ODELikelihood(logp=prior_logp + delta_logp, prior_logp=prior_logp,
                         delta_logp=delta_logp, z=z, num_steps=sol.stats["num_steps"])


# ---------------------------------------------------------------------------- bits/dim

def dequantize(images: Array, key: Array, centered: bool = True) -> Array:
    """uint8 ``k`` -> ``(k + u) / 256`` with ``u ~ U[0, 1)``, then ``2 x - 1`` when ``centered``:
    uniform dequantisation into bins that tile the data range (score_sde's evaluation)."""
    if images.dtype != jnp.uint8:
        raise ValueError(f"dequantize takes the uint8 data, got dtype {images.dtype}")
    x = (images.astype(jnp.float32) + jax.random.uniform(key, images.shape)) / 256.0
    return 2.0 * x - 1.0 if centered else x


def bits_per_dim(nll_nats: Array, dim: int, centered: bool = True) -> Array:
    """``(NLL - D log(bin width)) / (D ln 2)``: the NLL (nats) of dequantised data in bits per
    dimension of the 8-bit data; the bins are ``2/256`` wide on [-1, 1] (``centered``, the
    offset is +7 bits) or ``1/256`` on [0, 1] (+8 bits). See the module docstring."""
    bin_width = (2.0 if centered else 1.0) / 256.0
    return (nll_nats - dim * math.log(bin_width)) / (dim * math.log(2.0))


def ode_bits_per_dim(denoise_fn, schedule: Schedule, images: Array, key: Array,
                     centered: bool = True, **options) -> Array:
    """Per-example bits/dim of uint8 ``images`` under the PF-ODE of a model of data on [-1, 1]
    (``centered``) or [0, 1], with one dequantisation and one Hutchinson probe (``options`` go
    to `ode_log_likelihood`)."""
    k_deq, k_probe = jax.random.split(key)
    x = dequantize(images, k_deq, centered)
    result = ode_log_likelihood(denoise_fn, schedule, x, k_probe, **options)
    return bits_per_dim(-result.logp, math.prod(images.shape[1:]), centered)


# ---------------------------------------------------------------------------- VLB

@struct.dataclass
class VLBTerms:
    """Per-example bits/dim; ``total = prior + diffusion + decoder``; ``per_step[:, n]`` is the
    term at step ``n`` (0-based: ``n = 0`` is the decoder ``L_0``, ``n >= 1`` the KL ``L_n``)."""
    total: Array
    prior: Array
    diffusion: Array
    decoder: Array
    per_step: Array


def _mean_flat(v: Array) -> Array:
    return jnp.mean(v.reshape(v.shape[0], -1), axis=-1)


def vlb_terms(model_fn: Callable[[Array, Array], Array], schedule: DiscreteSchedule, x0: Array,
              key: Array, *, prediction: str = "eps", variance: str = "fixedlarge",
              clip_denoised: bool = True) -> VLBTerms:
    """DDPM's variational bound on -log p(x0) in bits/dim, term by term, for 8-bit data ``x0``
    (uint8, or floats on the grid ``k / 127.5 - 1``).

    ``model_fn(x, t)`` returns a ``prediction``-kind output; with ``variance="learned_range"`` it
    returns twice the channels, the second half ``v`` in the interpolation
    ``log Sigma = (v+1)/2 log beta_t + (1-v)/2 log beta~_t`` (Nichol & Dhariwal 2021, eq. 15).
    ``"fixedlarge"``: Sigma = beta_t (beta~_2 at t = 1); ``"fixedsmall"``: Sigma = beta~_t.
    One ``x_t ~ q(x_t | x_0)`` per step, as in improved-diffusion's ``calc_bpd_loop``.
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(f"the VLB is defined for a DiscreteSchedule, got {type(schedule).__name__}")
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; expected one of {VARIANCES}")
    if x0.dtype == jnp.uint8:
        x0 = x0.astype(jnp.float32) / 127.5 - 1.0
    batch = x0.shape[0]
    ln2 = math.log(2.0)

    def step_term(n, noise):
        t = schedule.step_to_t(jnp.full((batch,), n))
        x_t = bcast(schedule.alpha(t), x0) * x0 + bcast(schedule.sigma(t), x0) * noise
        out = model_fn(x_t, t)
        # log_var is beta~_n, clipped at n = 0 to beta~_1 (improved-diffusion), which is also what
        # "fixedlarge" uses at n = 0 so that the decoder's variance is not beta_0 (Ho et al.).
        coef_x0, coef_xt, log_var = schedule.posterior(n)
        if variance == "learned_range":
            out, v = jnp.split(out, 2, axis=-1)
            model_log_var = predictions.learned_log_variance(v, t, schedule)
        elif variance == "fixedlarge":
            model_log_var = jnp.full(x0.shape, jnp.where(n == 0, log_var, jnp.log(schedule.betas[n])))
        else:
            model_log_var = jnp.full(x0.shape, log_var)
        x0_hat = predictions.convert(out, x_t, t, schedule, source=prediction, target="x0")
        if clip_denoised:
            x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
        model_mean = coef_x0 * x0_hat + coef_xt * x_t
        true_mean = coef_x0 * x0 + coef_xt * x_t
        kl = normal_kl(true_mean, log_var, model_mean, model_log_var)
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
        return jnp.where(n == 0, _mean_flat(nll), _mean_flat(kl)) / ln2

    noises = jax.random.normal(key, (schedule.T,) + x0.shape)
    per_step = jax.lax.map(lambda a: step_term(*a), (jnp.arange(schedule.T), noises)).T
    abar_T = schedule.alphas_cumprod[-1]
    prior = _mean_flat(normal_kl(jnp.sqrt(abar_T) * x0, jnp.log(1.0 - abar_T), 0.0, 0.0)) / ln2
    decoder, diffusion = per_step[:, 0], jnp.sum(per_step[:, 1:], axis=1)
    return VLBTerms(total=prior + diffusion + decoder, prior=prior, diffusion=diffusion,
                    decoder=decoder, per_step=per_step)
