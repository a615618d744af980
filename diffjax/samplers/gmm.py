"""The exact denoiser and score of a Gaussian mixture diffused under any schedule.

If ``x_0 ~ sum_k w_k N(mu_k, diag(s_k^2))`` then ``x_t = alpha x_0 + sigma eps`` is again a mixture,
component k becoming ``N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2))``, and within component k
``E[x_0 | x_t, k] = mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha mu_k)``. The exact
denoiser averages these with the posterior responsibilities ``p(k | x_t)``. Samplers run on it have
no model error, so what they get wrong is their own discretisation error.
"""
from __future__ import annotations

import math
from typing import Any

import flax.struct as struct
import jax
import jax.numpy as jnp

from diffjax.schedules import Schedule, bcast

Array = jax.Array


@struct.dataclass
class GaussianMixture:
    """``sum_k weights[k] N(means[k], diag(stds[k]^2))`` on ``R^D``.

    ``weights``: (K,) (normalised here); ``means``: (K, D); ``stds``: (K,) isotropic or (K, D) diagonal.
    """

    weights: Array
    means: Array
    stds: Array

    @classmethod
    def create(cls, weights: Any, means: Any, stds: Any) -> "GaussianMixture":
        means = jnp.asarray(means, float)
        if means.ndim == 1:
            means = means[:, None]
        K, D = means.shape
        w = jnp.asarray(weights, float)
        s = jnp.asarray(stds, float)
        if w.shape != (K,):
            raise ValueError(f"weights must have shape ({K},) to match means {means.shape}, got {w.shape}")
        if s.ndim == 0 or s.shape == (K,):
            s = jnp.broadcast_to(s.reshape((-1, 1)) if s.ndim else s, (K, D))
        if s.shape != (K, D):
            raise ValueError(f"stds must have shape (), ({K},) or ({K}, {D}), got {s.shape}")
        return cls(weights=w / jnp.sum(w), means=means, stds=s)

    @classmethod
    def gaussian(cls, mean: Any, std: Any) -> "GaussianMixture":
        """A single Gaussian ``N(mean, diag(std^2))``."""
        mean = jnp.atleast_1d(jnp.asarray(mean, float))
        std = jnp.broadcast_to(jnp.asarray(std, float), mean.shape)
        return cls.create(jnp.ones((1,)), mean[None], std[None])

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, key: Array, n: int) -> Array:
        kk, kz = jax.random.split(key)
        k = jax.random.categorical(kk, jnp.log(self.weights), shape=(n,))
        return self.means[k] + self.stds[k] * jax.random.normal(kz, (n, self.dim))

    def mean(self) -> Array:
        return self.weights @ self.means

    def cov(self) -> Array:
        m = self.mean()
        second = jnp.einsum("k,kd,ke->de", self.weights, self.means, self.means)
        return second + jnp.diag(self.weights @ self.stds ** 2) - jnp.outer(m, m)

    # --- the diffused mixture --------------------------------------------------------------
    def _diffused(self, x: Array, t: Any, schedule: Schedule):
        a = bcast(schedule.alpha(t), x[:, None, :])  # () or (B, 1, 1)
        s = bcast(schedule.sigma(t), x[:, None, :])
        var = a ** 2 * self.stds ** 2 + s ** 2  # (B|1, K, D)
        diff = x[:, None, :] - a * self.means  # (B, K, D)
        logp = (jnp.log(self.weights) - 0.5 * jnp.sum(diff ** 2 / var + jnp.log(2 * math.pi * var), -1))
        return a, var, diff, logp

    def log_prob(self, x: Array, t: Any, schedule: Schedule) -> Array:
        """``log p_t(x)`` for ``x`` of shape (B, D)."""
        return jax.nn.logsumexp(self._diffused(x, t, schedule)[3], axis=-1)

    def responsibilities(self, x: Array, t: Any, schedule: Schedule) -> Array:
        """``p(k | x_t = x)``, shape (B, K)."""
        return jax.nn.softmax(self._diffused(x, t, schedule)[3], axis=-1)

    def denoise(self, x: Array, t: Any, schedule: Schedule) -> Array:
        """``E[x_0 | x_t = x]`` (Tweedie), shape (B, D)."""
        a, var, diff, logp = self._diffused(x, t, schedule)
        x0_k = self.means + a * self.stds ** 2 / var * diff
        return jnp.einsum("bk,bkd->bd", jax.nn.softmax(logp, axis=-1), x0_k)

    def score(self, x: Array, t: Any, schedule: Schedule) -> Array:
        """``grad_x log p_t(x)``, shape (B, D)."""
        _, var, diff, logp = self._diffused(x, t, schedule)
        return jnp.einsum("bk,bkd->bd", jax.nn.softmax(logp, axis=-1), -diff / var)

    def denoiser(self, schedule: Schedule):
        """The denoiser ``D(x, t)`` samplers consume."""
        return lambda x, t: self.denoise(x, t, schedule)


def gaussian_pf_ode_map(x_t: Array, t: Any, s: Any, mean: Any, std: Any, schedule: Schedule) -> Array:
    """The exact probability-flow ODE map ``x_t -> x_s`` for data ``N(mean, diag(std^2))``.

    The marginal at time t is ``N(alpha_t m, v_t)`` with ``v_t = alpha_t^2 s^2 + sigma_t^2``, and the
    ODE ``dx/dt = f x - g^2/2 * score`` keeps ``z = (x - alpha_t m) / sqrt(v_t)`` constant (because
    ``dv/dt = 2 f v + g^2``), so ``x_s = alpha_s m + sqrt(v_s / v_t) (x_t - alpha_t m)``.
    """
    m, sd = jnp.asarray(mean, float), jnp.asarray(std, float)
    a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
    v_t, v_s = a_t ** 2 * sd ** 2 + s_t ** 2, a_s ** 2 * sd ** 2 + s_s ** 2
    return a_s * m + jnp.sqrt(v_s / v_t) * (x_t - a_t * m)
