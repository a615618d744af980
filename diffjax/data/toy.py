"""Toy 2D distributions: pure functions of a PRNG key, with exact densities where they exist.

Sets (``names()``), all returning float32 arrays of shape ``(n, 2)``:

- ``"swiss_roll"``: scikit-learn's ``make_swiss_roll`` curve ``s (cos s, sin s)`` with
  ``s = 1.5 pi (1 + 2u)``, ``u ~ U(0, 1)``, plus N(0, 1) noise, all divided by 5 (the scaling of
  the FFJORD toy experiments), so points lie roughly in ``[-2.5, 3]^2``. No closed-form density.
- ``"8gaussians"``: 8 equal-weight isotropic Gaussians, std 0.1, centred on the circle of radius 2
  at angles ``k pi / 4``.
- ``"25gaussians"``: 25 equal-weight isotropic Gaussians, std 0.05, on the grid ``{-2, ..., 2}^2``.
- ``"checkerboard"``: uniform on the 8 black squares of a 4 x 4 board of unit squares covering
  ``[-2, 2]^2`` (a square is black when the sum of its integer corner coordinates is even);
  density 1/8 there, 0 elsewhere.
- ``"two_pixels"``: the "two grey pixels" picture: an image of two pixels is a point in
  ``[0, 255]^2``, and images of a kind form clusters there. Three isotropic Gaussians (std 10) at
  (64, 64) (dark-dark, weight 0.4), (192, 192) (light-light, 0.4) and (64, 192) (dark-light, 0.2).
  Samples are clipped to ``[0, 255]``; every mean is more than 6 std inside, so the clipped mass is
  below 1e-8 and the mixture density is exact to that precision.
- ``"two_pixels_scaled"``: the same mapped to ``[-1, 1]`` by ``x / 127.5 - 1`` (the image
  convention of the trainer); its mixture parameters and density are the transformed ones.

Mixtures expose their parameters through ``mixture(name)`` so that the exact score of the
diffused distribution (each component convolved with ``N(0, sigma^2)``) can be computed elsewhere.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Mixture(NamedTuple):
    """An isotropic Gaussian mixture: ``sum_k weights[k] N(means[k], stds[k]^2 I)``."""

    weights: np.ndarray  # (K,), sums to 1
    means: np.ndarray    # (K, 2)
    stds: np.ndarray     # (K,)


def _eight_gaussians() -> Mixture:
    angles = np.arange(8) * np.pi / 4
    means = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return Mixture(np.full(8, 1 / 8), means, np.full(8, 0.1))


def _twenty_five_gaussians() -> Mixture:
    g = np.arange(-2.0, 3.0)
    means = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2)
    return Mixture(np.full(25, 1 / 25), means, np.full(25, 0.05))


def _two_pixels() -> Mixture:
    means = np.array([[64.0, 64.0], [192.0, 192.0], [64.0, 192.0]])
    return Mixture(np.array([0.4, 0.4, 0.2]), means, np.full(3, 10.0))


def _two_pixels_scaled() -> Mixture:
    w, m, s = _two_pixels()
    return Mixture(w, m / 127.5 - 1.0, s / 127.5)


_MIXTURES = {
    "8gaussians": _eight_gaussians,
    "25gaussians": _twenty_five_gaussians,
    "two_pixels": _two_pixels,
    "two_pixels_scaled": _two_pixels_scaled,
}
# Sets whose samples are clipped to a box (the clipped mass is negligible, see the module doc).
_CLIP = {"two_pixels": (0.0, 255.0), "two_pixels_scaled": (-1.0, 1.0)}
_OTHERS = ("swiss_roll", "checkerboard")


def names() -> tuple[str, ...]:
    return tuple(sorted((*_MIXTURES, *_OTHERS)))


def _check_name(name: str) -> None:
    if name not in names():
        raise ValueError(f"unknown toy dataset {name!r}; known: {', '.join(names())}")


def mixture(name: str) -> Mixture:
    """The Gaussian-mixture parameters of a mixture set (float64 numpy arrays)."""
    _check_name(name)
    if name not in _MIXTURES:
        raise ValueError(f"toy dataset {name!r} is not a Gaussian mixture; mixtures: {', '.join(sorted(_MIXTURES))}")
    return _MIXTURES[name]()


def _sample_mixture(mix: Mixture, key: Array, n: int) -> Array:
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.choice(k_comp, len(mix.weights), (n,), p=jnp.asarray(mix.weights, jnp.float32))
    means = jnp.asarray(mix.means, jnp.float32)[comp]
    stds = jnp.asarray(mix.stds, jnp.float32)[comp][:, None]
    return means + stds * jax.random.normal(k_noise, (n, 2))


def _sample_swiss_roll(key: Array, n: int) -> Array:
    k_s, k_noise = jax.random.split(key)
    s = 1.5 * jnp.pi * (1.0 + 2.0 * jax.random.uniform(k_s, (n,)))
    x = jnp.stack([s * jnp.cos(s), s * jnp.sin(s)], axis=-1) + jax.random.normal(k_noise, (n, 2))
    return x / 5.0


def _sample_checkerboard(key: Array, n: int) -> Array:
    k_x, k_y, k_row = jax.random.split(key, 3)
    x = jax.random.uniform(k_x, (n,), minval=-2.0, maxval=2.0)
    # In each column pick one of the two black squares; black means floor(x) + floor(y) even.
    row = 2.0 * jax.random.randint(k_row, (n,), 0, 2) - 2.0 + jnp.mod(jnp.floor(x), 2.0)
    y = row + jax.random.uniform(k_y, (n,))
    return jnp.stack([x, y], axis=-1)


def sample(name: str, key: Array, n: int) -> Array:
    """``n`` points of the named set, shape ``(n, 2)``, float32; a pure function of ``key``."""
    _check_name(name)
    if name == "swiss_roll":
        return _sample_swiss_roll(key, n)
    if name == "checkerboard":
        return _sample_checkerboard(key, n)
    x = _sample_mixture(_MIXTURES[name](), key, n)
    if name in _CLIP:
        x = jnp.clip(x, *_CLIP[name])
    return x


def mixture_log_prob(mix: Mixture, x: Array) -> Array:
    """log of ``sum_k w_k N(x; mu_k, s_k^2 I)`` for ``x`` of shape ``(..., 2)``."""
    x = jnp.asarray(x, jnp.float32)
    means = jnp.asarray(mix.means, jnp.float32)
    var = jnp.asarray(mix.stds, jnp.float32) ** 2
    sq = jnp.sum((x[..., None, :] - means) ** 2, axis=-1)
    log_comp = jnp.log(jnp.asarray(mix.weights, jnp.float32)) - sq / (2 * var) - jnp.log(2 * math.pi * var)
    return jax.scipy.special.logsumexp(log_comp, axis=-1)


def log_prob(name: str, x: Array) -> Array:
    """Exact log-density of the named set at ``x`` of shape ``(..., 2)``; shape ``(...)``."""
    _check_name(name)
    x = jnp.asarray(x, jnp.float32)
    if x.shape[-1:] != (2,):
        raise ValueError(f"toy points must have shape (..., 2), got {x.shape}")
    if name == "swiss_roll":
        raise ValueError("toy dataset 'swiss_roll' has no closed-form density (a noisy curve); "
                         f"sets with one: {', '.join(n for n in names() if n != 'swiss_roll')}")
    if name == "checkerboard":
        inside = jnp.all((x >= -2.0) & (x < 2.0), axis=-1)
        black = jnp.mod(jnp.floor(x[..., 0]) + jnp.floor(x[..., 1]), 2.0) == 0
        return jnp.where(inside & black, -math.log(8.0), -jnp.inf)
    return mixture_log_prob(_MIXTURES[name](), x)
