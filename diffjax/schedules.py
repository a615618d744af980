"""Forward processes: noise schedules and the SDEs they define.

Every schedule describes ``x_t = alpha(t) x_0 + sigma(t) eps`` with ``eps ~ N(0, I)`` on a time
domain ``[0, t_max]`` (see docs/conventions.md). Each is a small immutable pytree; samplers, losses
and the likelihood are generic over it, as in score_sde's ``sde_lib``.

The SDE ``dx = f(t) x dt + g(t) dW`` with these marginals has ``f = d log(alpha)/dt`` and
``g^2 = d(sigma^2)/dt - 2 f sigma^2`` (Kingma et al. 2021, App. A; Song et al. 2021, eq. 5).
Closed forms are used where the papers give them; any other schedule gets them by autodiff.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def bcast(v: Array, x: Array) -> Array:
    """Broadcast a scalar or per-example ``(B,)`` coefficient against ``x`` of shape ``(B, ...)``."""
    v = jnp.asarray(v)
    if v.ndim == 0:
        return v
    if v.ndim != 1 or v.shape[0] != x.shape[0]:
        raise ValueError(
            f"a per-example coefficient must have shape () or (B,)=({x.shape[0]},), got {v.shape}")
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def _is_concrete(t: Any) -> bool:
    return not isinstance(t, jax.core.Tracer)


def _as_float(v: Any) -> Array:
    """``v`` as an array of its own float type (float64 stays float64 under x64), else JAX's default float."""
    v = jnp.asarray(v)
    return v if jnp.issubdtype(v.dtype, jnp.floating) else v.astype(jnp.result_type(float))


def _elementwise_derivative(fn: Callable[[Array], Array], t: Array) -> Array:
    t = jnp.asarray(t, jnp.float32)
    _, dt = jax.jvp(fn, (t,), (jnp.ones_like(t),))
    return dt


class Schedule:
    """Base class: subclasses implement ``_alpha`` and ``_sigma`` and may override the rest."""

    t_min: float = 0.0  # every schedule starts at t = 0 (x_0 = data, up to VE's sigma_min)
    t_max: float = 1.0
    t_eps: float = 1e-3  # smallest time samplers and the likelihood integrate to
    prior_std: float = 1.0

    # --- the time domain -------------------------------------------------------------------
    def check_time(self, t: Any) -> Array:
        """Convert ``t`` to an array and, when it is concrete, check it lies in ``[0, t_max]``."""
        if _is_concrete(t):
            a = np.asarray(t, dtype=np.float64)
            if a.size and (not np.all(np.isfinite(a)) or a.min() < 0.0
                           or a.max() > self.t_max * (1 + 1e-6)):
                raise ValueError(
                    f"{type(self).__name__}: time must lie in [0, {self.t_max}], "
                    f"got values in [{a.min()}, {a.max()}]")
        return _as_float(t)

    # --- marginals -------------------------------------------------------------------------
    def alpha(self, t: Any) -> Array:
        return self._alpha(self.check_time(t))

    def sigma(self, t: Any) -> Array:
        return self._sigma(self.check_time(t))

    def log_snr(self, t: Any) -> Array:
        """lambda(t) = log(alpha^2 / sigma^2)."""
        return self._log_snr(self.check_time(t))

    def _log_snr(self, t: Array) -> Array:
        return 2.0 * (jnp.log(self._alpha(t)) - jnp.log(self._sigma(t)))

    def t_from_log_snr(self, lam: Any) -> Array:
        """Inverse of ``log_snr`` (used by DPM-Solver to place steps uniformly in lambda)."""
        return self._t_from_log_snr(_as_float(lam))

    def _t_from_log_snr(self, lam: Array) -> Array:
        # Bisection on the monotone log-SNR; subclasses with a closed form override this.
        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            above = self._log_snr(mid) > lam
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 60, body, (jnp.zeros_like(lam), jnp.full_like(lam, self.t_max)))
        return 0.5 * (lo + hi)

    def d_alpha(self, t: Any) -> Array:
        return _elementwise_derivative(self._alpha, self.check_time(t))

    def d_sigma(self, t: Any) -> Array:
        return _elementwise_derivative(self._sigma, self.check_time(t))

    def marginal(self, x0: Array, t: Any) -> tuple[Array, Array]:
        """Mean and standard deviation of ``p(x_t | x_0)``."""
        return bcast(self.alpha(t), x0) * x0, self.sigma(t)

    # --- the SDE ---------------------------------------------------------------------------
    def drift_coef(self, t: Any) -> Array:
        """f(t) in ``dx = f(t) x dt + g(t) dW``."""
        return self._drift_coef(self.check_time(t))

    def _drift_coef(self, t: Array) -> Array:
        return _elementwise_derivative(lambda s: jnp.log(self._alpha(s)), t)

    def diffusion_sq(self, t: Any) -> Array:
        """g(t)^2 in ``dx = f(t) x dt + g(t) dW``."""
        return self._diffusion_sq(self.check_time(t))

    def _diffusion_sq(self, t: Array) -> Array:
        dvar = _elementwise_derivative(lambda s: self._sigma(s) ** 2, t)
        return dvar - 2.0 * self._drift_coef(t) * self._sigma(t) ** 2

    def drift(self, x: Array, t: Any) -> Array:
        return bcast(self.drift_coef(t), x) * x

    def diffusion(self, t: Any) -> Array:
        return jnp.sqrt(self.diffusion_sq(t))

    def reverse_drift(self, x: Array, t: Any, score: Array, probability_flow: bool = False) -> Array:
        """Drift of the reverse-time SDE (eq. 6) or of the probability-flow ODE (eq. 13)."""
        weight = 0.5 if probability_flow else 1.0
        return self.drift(x, t) - weight * bcast(self.diffusion_sq(t), x) * score

    def discretize(self, x: Array, t: Any, dt: Any) -> tuple[Array, Array]:
        """``(f, G)`` with ``x_t = x_{t-dt} + f + G z`` the exact Gaussian transition from t-dt to t.

        For VP schedules this is the DDPM step (beta = 1 - alpha_t^2 / alpha_s^2) and for VE the
        SMLD step (G^2 = sigma_t^2 - sigma_s^2), as in score_sde's ``discretize``; it serves the
        reverse-diffusion predictor and ancestral samplers for any schedule.
        """
        t = self.check_time(t)
        # Clip so that a last step landing a rounding error below 0 starts from t = 0.
        s = jnp.maximum(t - jnp.asarray(dt, jnp.float32), 0.0)
        ratio = self._alpha(t) / self._alpha(s)
        var = self._sigma(t) ** 2 - (ratio * self._sigma(s)) ** 2
        return bcast(ratio - 1.0, x) * x, jnp.sqrt(jnp.maximum(var, 0.0))

    # --- the prior -------------------------------------------------------------------------
    def prior_sample(self, key: Array, shape: tuple[int, ...]) -> Array:
        return self.prior_std * jax.random.normal(key, shape)

    def prior_logp(self, z: Array) -> Array:
        """log N(z; 0, prior_std^2 I), summed over all axes but the first."""
        d = math.prod(z.shape[1:])
        sq = jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=-1)
        return -0.5 * d * math.log(2 * math.pi * self.prior_std ** 2) - 0.5 * sq / self.prior_std ** 2

    # --- what a network sees ---------------------------------------------------------------
    def c_noise(self, t: Any) -> Array:
        return self.check_time(t)


def _vp_log_alpha(t: Array, beta_min: float, beta_max: float) -> Array:
    return -0.25 * t ** 2 * (beta_max - beta_min) - 0.5 * t * beta_min


def _vp_t_from_integral(integral: Array, beta_min: float, beta_max: float) -> Array:
    """Solve ``beta_min t + (beta_max - beta_min) t^2 / 2 = integral`` for t >= 0."""
    bd = beta_max - beta_min
    return 2.0 * integral / (beta_min + jnp.sqrt(beta_min ** 2 + 2.0 * bd * integral))


@struct.dataclass
class VPSDE(Schedule):
    """Variance-preserving SDE, ``beta(t) = beta_min + t (beta_max - beta_min)`` (Song et al. 2021, eq. 11)."""

    beta_min: float = struct.field(pytree_node=False, default=0.1)
    beta_max: float = struct.field(pytree_node=False, default=20.0)
    t_eps: float = struct.field(pytree_node=False, default=1e-3)

    def beta(self, t: Any) -> Array:
        return self.beta_min + self.check_time(t) * (self.beta_max - self.beta_min)

    def _alpha(self, t):
        return jnp.exp(_vp_log_alpha(t, self.beta_min, self.beta_max))

    def _sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * _vp_log_alpha(t, self.beta_min, self.beta_max)))

    def _log_snr(self, t):
        return -jnp.log(jnp.expm1(-2.0 * _vp_log_alpha(t, self.beta_min, self.beta_max)))

    def _t_from_log_snr(self, lam):
        return _vp_t_from_integral(jax.nn.softplus(-lam), self.beta_min, self.beta_max)

    def _drift_coef(self, t):
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def _diffusion_sq(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def c_noise(self, t):
        return 999.0 * self.check_time(t)  # score_sde's DDPM++ convention


@struct.dataclass
class SubVPSDE(Schedule):
    """Sub-VP SDE: VP drift, ``g^2 = beta(t) (1 - exp(-2 int_0^t beta))`` (Song et al. 2021, eq. 17)."""

    beta_min: float = struct.field(pytree_node=False, default=0.1)
    beta_max: float = struct.field(pytree_node=False, default=20.0)
    t_eps: float = struct.field(pytree_node=False, default=1e-3)

    def _alpha(self, t):
        return jnp.exp(_vp_log_alpha(t, self.beta_min, self.beta_max))

    def _sigma(self, t):
        return -jnp.expm1(2.0 * _vp_log_alpha(t, self.beta_min, self.beta_max))

    def _t_from_log_snr(self, lam):
        # alpha^2 = u solves u / (1 - u)^2 = e^lam; take the root in (0, 1) in a stable form.
        e = jnp.exp(lam)
        u = 2.0 * e / (2.0 * e + 1.0 + jnp.sqrt(4.0 * e + 1.0))
        return _vp_t_from_integral(-jnp.log(u), self.beta_min, self.beta_max)

    def _drift_coef(self, t):
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def _diffusion_sq(self, t):
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        return beta * -jnp.expm1(4.0 * _vp_log_alpha(t, self.beta_min, self.beta_max))

    def c_noise(self, t):
        return 999.0 * self.check_time(t)


@struct.dataclass
class VESDE(Schedule):
    """Variance-exploding SDE, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (Song et al. 2021, eq. 9)."""

    sigma_min: float = struct.field(pytree_node=False, default=0.01)
    sigma_max: float = struct.field(pytree_node=False, default=50.0)
    t_eps: float = struct.field(pytree_node=False, default=1e-5)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _alpha(self, t):
        return jnp.ones_like(t)

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def _t_from_log_snr(self, lam):
        return (-0.5 * lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def _drift_coef(self, t):
        return jnp.zeros_like(t)

    def _diffusion_sq(self, t):
        return 2.0 * self._sigma(t) ** 2 * math.log(self.sigma_max / self.sigma_min)

    def c_noise(self, t):
        return self.sigma(t)  # NCSN++ takes log(sigma) into its Fourier features itself


@struct.dataclass
class EDMSchedule(Schedule):
    """Karras et al. 2022: ``alpha = 1, sigma = t``; the training and sampling constants of Table 1."""

    sigma_min: float = struct.field(pytree_node=False, default=0.002)
    sigma_max: float = struct.field(pytree_node=False, default=80.0)
    sigma_data: float = struct.field(pytree_node=False, default=0.5)
    rho: float = struct.field(pytree_node=False, default=7.0)
    P_mean: float = struct.field(pytree_node=False, default=-1.2)
    P_std: float = struct.field(pytree_node=False, default=1.2)

    @property
    def t_max(self) -> float:
        return self.sigma_max

    @property
    def t_eps(self) -> float:
        return self.sigma_min

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _alpha(self, t):
        return jnp.ones_like(t)

    def _sigma(self, t):
        return t

    def _t_from_log_snr(self, lam):
        return jnp.exp(-0.5 * lam)

    def _drift_coef(self, t):
        return jnp.zeros_like(t)

    def _diffusion_sq(self, t):
        return 2.0 * t


@struct.dataclass
class RectifiedFlow(Schedule):
    """Straight paths ``x_t = (1 - t) x_0 + t eps`` (Liu et al. 2023; Lipman et al. 2023)."""

    t_eps: float = struct.field(pytree_node=False, default=0.0)

    def _alpha(self, t):
        return 1.0 - t

    def _sigma(self, t):
        return t

    def _t_from_log_snr(self, lam):
        return jax.nn.sigmoid(-0.5 * lam)

    def _drift_coef(self, t):
        return -1.0 / (1.0 - t)

    def _diffusion_sq(self, t):
        return 2.0 * t / (1.0 - t)


@struct.dataclass
class DiscreteSchedule(Schedule):
    """DDPM's discrete forward process with ``alpha_bar_n = prod_{i<=n} (1 - beta_i)`` (Ho et al. 2020).

    Step ``n`` (0-based, as networks and diffusers index it) is time ``t = (n + 1) / T``; between
    steps ``log alpha_bar`` is interpolated linearly, so the schedule is also a continuous-time
    process on [0, 1] that agrees with the discrete one at every step.
    """

    betas: Array
    alphas_cumprod: Array | None = None
    log_alphas_cumprod: Array | None = None
    t_eps: float | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        # ``DiscreteSchedule(betas=...)``: validate, and accumulate in float64. alpha_bar_T of the
        # linear schedule is ~4e-5, and 1 - alpha_bar_0 = 1e-4 loses 3 digits if computed from a
        # float32 alpha_bar, so log(alpha_bar) is kept too. When JAX rebuilds the pytree it
        # passes every field, and nothing here runs.
        if self.alphas_cumprod is None:
            b = np.asarray(self.betas, dtype=np.float64)
            if b.ndim != 1 or b.size < 1 or not np.all((b > 0) & (b < 1)):
                raise ValueError(
                    f"betas must be a non-empty 1-D array of values in (0, 1), got shape {b.shape}"
                    + (f" with values in [{b.min()}, {b.max()}]" if b.size else ""))
            log_abar = np.cumsum(np.log1p(-b))
            object.__setattr__(self, "betas", jnp.asarray(b, jnp.float32))
            object.__setattr__(self, "alphas_cumprod", jnp.asarray(np.exp(log_abar), jnp.float32))
            object.__setattr__(self, "log_alphas_cumprod", jnp.asarray(log_abar, jnp.float32))
        if self.log_alphas_cumprod is None:
            object.__setattr__(self, "log_alphas_cumprod", jnp.log(self.alphas_cumprod))
        if self.t_eps is None:
            object.__setattr__(self, "t_eps", 1.0 / self.betas.shape[0])  # step n = 0

    @classmethod
    def from_betas(cls, betas: Any) -> "DiscreteSchedule":
        return cls(betas=betas)

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float | None = None, beta_end: float | None = None,
               max_beta: float = 0.999) -> "DiscreteSchedule":
        """Ho et al. 2020, Sec. 4: betas linear from 1e-4 to 0.02 over T = 1000 steps.

        For another T the default end points are scaled by 1000 / T, as improved-diffusion does, so
        that x_T stays close to N(0, I) (alpha_bar_T ~ 4e-5 at any T >= 1000; betas are clipped at
        ``max_beta`` for very short schedules). Give ``beta_start``/``beta_end`` to fix them instead.
        """
        scale = 1000.0 / T
        start = 1e-4 * scale if beta_start is None else beta_start
        end = 0.02 * scale if beta_end is None else beta_end
        return cls.from_betas(np.minimum(np.linspace(start, end, T, dtype=np.float64), max_beta))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "DiscreteSchedule":
        """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi / 2)."""
        f = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1 + s) * np.pi / 2) ** 2
        return cls.from_betas(np.minimum(1.0 - f[1:] / f[:-1], max_beta))

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    def step_to_t(self, n: Any) -> Array:
        return (jnp.asarray(n, jnp.float32) + 1.0) / self.T

    def t_to_step(self, t: Any) -> Array:
        """The step whose time is nearest to ``t`` (clipped to 0..T-1)."""
        n = jnp.round(self.check_time(t) * self.T - 1.0)
        return jnp.clip(n, 0, self.T - 1).astype(jnp.int32)

    def _log_alpha_bar(self, t: Array) -> Array:
        # Interpolate in step units s = T t rather than on a float32 linspace of knots: then
        # t = (n + 1) / T lands on knot n + 1 up to the rounding of s, and alpha at integer steps
        # equals the cumulative product to float32 precision.
        knots = self._log_alpha_bar_knots()
        s = jnp.clip(t * self.T, 0.0, float(self.T))
        i = jnp.clip(jnp.floor(s), 0, self.T - 1)
        lo = knots[i.astype(jnp.int32)]
        hi = knots[i.astype(jnp.int32) + 1]
        return lo + (s - i) * (hi - lo)

    def _grid(self) -> Array:
        return jnp.linspace(0.0, 1.0, self.T + 1)

    def _log_alpha_bar_knots(self) -> Array:
        return jnp.concatenate([jnp.zeros((1,)), self.log_alphas_cumprod])

    def _alpha(self, t):
        return jnp.exp(0.5 * self._log_alpha_bar(t))

    def _sigma(self, t):
        return jnp.sqrt(-jnp.expm1(self._log_alpha_bar(t)))

    def _log_snr(self, t):
        return -jnp.log(jnp.expm1(-self._log_alpha_bar(t)))

    def _drift_coef(self, t):
        # f = d log(alpha)/dt = T log(1 - beta_n) / 2 on step n's segment: a VP SDE with
        # beta(t) ~ T beta_n, the continuum limit of DDPM (Song et al. 2021, App. B).
        return 0.5 * _elementwise_derivative(self._log_alpha_bar, t)

    def _diffusion_sq(self, t):
        return -2.0 * self._drift_coef(t)  # variance preserving: alpha^2 + sigma^2 = 1

    def _t_from_log_snr(self, lam):
        # log alpha_bar is piecewise linear and decreasing, so interpolate on the reversed grid.
        return jnp.interp(-jax.nn.log_sigmoid(lam), -self._log_alpha_bar_knots(), self._grid())

    def c_noise(self, t):
        return self.check_time(t) * self.T - 1.0

    def posterior(self, n: Any) -> tuple[Array, Array, Array]:
        """``q(x_{n-1} | x_n, x_0) = N(c_x0 x_0 + c_xt x_n, exp(log_var))`` at integer steps ``n``.

        Ho et al. 2020, eq. 6-7: ``c_x0 = beta_n sqrt(abar_{n-1}) / (1 - abar_n)``,
        ``c_xt = sqrt(1 - beta_n) (1 - abar_{n-1}) / (1 - abar_n)`` and
        ``beta_tilde_n = beta_n (1 - abar_{n-1}) / (1 - abar_n)``, with ``abar_{-1} = 1``. As in
        improved-diffusion, ``log_var`` at ``n = 0`` (where beta_tilde is 0) is clipped to that
        of ``n = 1``. Returns ``(c_x0, c_xt, log_var)`` indexed by ``n``.
        """
        n = jnp.asarray(n, jnp.int32)
        log_abar = self._log_alpha_bar_knots()
        one_minus_abar = -jnp.expm1(log_abar)  # 1 - alpha_bar without cancellation at small n
        var = self.betas * one_minus_abar[:-1] / one_minus_abar[1:]
        log_var = jnp.log(jnp.concatenate([var[1:2], var[1:]]) if self.T > 1 else self.betas)
        c_x0 = self.betas * jnp.exp(0.5 * log_abar[:-1]) / one_minus_abar[1:]
        c_xt = jnp.sqrt(1.0 - self.betas) * one_minus_abar[:-1] / one_minus_abar[1:]
        return c_x0[n], c_xt[n], log_var[n]


_REGISTRY: dict[str, Callable[..., Schedule]] = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "edm": EDMSchedule,
    "rectified_flow": RectifiedFlow,
    "ddpm": DiscreteSchedule.from_betas,
    "ddpm_linear": DiscreteSchedule.linear,
    "ddpm_cosine": DiscreteSchedule.cosine,
}


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get(config: Mapping[str, Any]) -> Schedule:
    """Build a schedule from ``{"name": ..., **fields}`` (an ml_collections ConfigDict or a dict)."""
    fields = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    name = fields.pop("name", None)
    if name not in _REGISTRY:
        raise ValueError(f"unknown schedule {name!r}; known schedules: {', '.join(names())}")
    ctor = _REGISTRY[name]
    accepted = set(inspect.signature(ctor).parameters)
    unknown = sorted(set(fields) - accepted)
    if unknown:
        raise ValueError(f"schedule {name!r} has no field(s) {unknown}; its fields are {sorted(accepted)}")
    return ctor(**fields)
