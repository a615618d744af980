"""Inpainting and colourisation with an unconditional model, through any sampler's step loop.

Replacement (Song et al. 2021, App. I.2; score_sde's ``get_pc_inpainter``): after every step to a
time s the known part of x is replaced by the observation diffused to s, ``alpha_s y + sigma_s z``,
so the network only ever sees inputs of the marginal it was trained on. The unknown part never
feeds back into the known one, so this does not sample ``p(x_unknown | y)`` exactly (the known
part is noised independently of the unknown one; see docs/inpainting.md for the measured bias).
RePaint (Lugmayr et al. 2022, Alg. 1, Sec. 4.2) lets the two parts mix: each block of ``jump`` steps
is run ``resample`` times, x being re-noised by ``q(x_t | x_s)`` back to the block's start in between.

Colourisation (Song et al. 2021, App. I.3; score_sde's ``get_pc_colorizer``) is replacement in an
orthogonal colour basis whose first axis is the grey level: ``COLOR_BASIS``'s first column is
``(1, 1, 1) / sqrt(3)``, so the grey image ``g = mean(r, g, b)`` fixes the first coordinate
``sqrt(3) g`` and the two chroma coordinates are sampled. An orthogonal change of basis keeps the
noise standard normal, so the replacement is the same formula there.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.samplers import common
from diffjax.schedules import Schedule

Array = jax.Array

# score_sde's colorizer matrix M (controllable_generation.py), rounded there to float32; here exact.
# Columns: grey (1, 1, 1)/sqrt(3), then (-2, 1, 1)/sqrt(6) and (0, 1, -1)/sqrt(2).
COLOR_BASIS = np.array([[1 / np.sqrt(3), -2 / np.sqrt(6), 0.0],
                        [1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)],
                        [1 / np.sqrt(3), 1 / np.sqrt(6), -1 / np.sqrt(2)]])
NO_STEP_LOOP = ("ode_adaptive", "edm_heun", "edm_euler", "edm_stochastic")


def check_mask(mask: Any, observed: Array) -> Array:
    """``mask`` (1 = known) as a float array that broadcasts to ``observed``; must hold only 0 and 1."""
    mask = jnp.asarray(mask)
    try:
        shape = np.broadcast_shapes(mask.shape, observed.shape)
    except ValueError:
        shape = None
    if shape != observed.shape or mask.ndim > observed.ndim:
        raise ValueError(f"mask of shape {mask.shape} does not broadcast to the observed images' shape "
                         f"{observed.shape} (give e.g. {observed.shape}, {observed.shape[1:]} or "
                         f"{observed.shape[1:-1] + (1,)})")
    if not isinstance(mask, jax.core.Tracer):
        values = np.unique(np.asarray(mask))
        if not np.all(np.isin(values, (0, 1))):
            raise ValueError(f"mask must hold only 0 (unknown) and 1 (known), got values {values[:8]}")
    return mask.astype(observed.dtype)


def replacement(observed: Array, mask: Any, schedule: Schedule, key: Array, *, basis: Any = None,
                resample: int = 1, jump: int = 1) -> common.Constraint:
    """The constraint ``x <- (1 - m) x + m (alpha_t y + sigma_t z)``, in ``basis`` if given.

    ``basis``: an orthogonal (C, C) matrix acting on the last axis; ``observed`` and ``mask`` are then
    coordinates in that basis (``x_basis = x @ basis``).
    """
    observed = jnp.asarray(observed)
    m = check_mask(mask, observed)
    for what, v in (("resample", resample), ("jump", jump)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
    if basis is not None:
        basis = jnp.asarray(basis, observed.dtype)
        C = observed.shape[-1]
        if basis.shape != (C, C):
            raise ValueError(f"basis must be a ({C}, {C}) matrix on the last axis, got {basis.shape}")

    def project(x, t, k):
        if x.shape != observed.shape:
            raise ValueError(f"samples of shape {x.shape} do not match the observed images' shape {observed.shape}")
        z = x if basis is None else x @ basis
        y_t = schedule.alpha(t) * observed + schedule.sigma(t) * jax.random.normal(k, x.shape, x.dtype)
        z = (1.0 - m) * z + m * y_t
        return z if basis is None else z @ basis.T

    return common.Constraint(project, schedule, key, resample, jump)


def _paste(x: Array, observed: Array, m: Array, basis: Any) -> Array:
    z = x if basis is None else x @ basis
    z = (1.0 - m) * z + m * observed
    return z if basis is None else z @ basis.T


def inpaint(name: str, denoise_fn: Callable, schedule: Schedule, key: Array, observed: Any, mask: Any, *,
            resample: int = 1, jump: int = 1, basis: Any = None, **opts: Any) -> tuple[Array, dict]:
    """Fill the unknown part (``mask == 0``) of ``observed`` with the sampler ``name`` and its ``opts``.

    Starts from the prior with the known part diffused to ``t_max``; after the sampler, the known
    part is set to ``observed`` exactly. ``resample`` / ``jump``: RePaint's r and jump length
    (1 / 1: plain replacement). Every reverse step runs ``resample`` times; ``info["nfe"]`` is the
    sampler's count for one pass.
    """
    from diffjax import samplers  # the registry imports this module

    if name in NO_STEP_LOOP:
        raise ValueError(f"sampler {name!r} has no step loop to constrain; use one of "
                         f"{', '.join(n for n in samplers.names() if n not in NO_STEP_LOOP)}")
    observed = jnp.asarray(observed)
    if not jnp.issubdtype(observed.dtype, jnp.floating):
        observed = observed.astype(jnp.result_type(float))
    if "x_T" in opts or "shape" in opts:
        raise ValueError("inpaint draws x_T itself from the observed images' shape; do not pass x_T or shape")
    k_prior, k_init, k_proj, k_sample = jax.random.split(key, 4)
    c = replacement(observed, mask, schedule, k_proj, basis=basis, resample=resample, jump=jump)
    x_T = c.project(schedule.prior_sample(k_prior, observed.shape).astype(observed.dtype), schedule.t_max, k_init)
    x, info = samplers.sample(name, denoise_fn, schedule, k_sample, x_T=x_T, constraint=c, **opts)
    x = _paste(x, observed, check_mask(mask, observed), basis)
    return x, dict(info, resample=resample)


def to_gray(images: Any) -> Array:
    """The grey level ``mean(r, g, b)`` of (..., 3) images, shape (..., 1)."""
    images = jnp.asarray(images)
    if images.shape[-1] != 3:
        raise ValueError(f"expected colour images with 3 channels on the last axis, got shape {images.shape}")
    return jnp.mean(images, axis=-1, keepdims=True)


def colorize(name: str, denoise_fn: Callable, schedule: Schedule, key: Array, gray: Any, *, resample: int = 1,
             jump: int = 1, **opts: Any) -> tuple[Array, dict]:
    """Colour images whose grey level ``mean(r, g, b)`` is ``gray`` (shape (..., 1)), with a model of (..., 3) images.

    Replacement of the first coordinate of ``COLOR_BASIS`` (``sqrt(3) * gray``); the result's grey
    level equals ``gray``.
    """
    gray = jnp.asarray(gray)
    if gray.ndim < 2 or gray.shape[-1] != 1:
        raise ValueError(f"gray must have one channel on its last axis, shape (B, ..., 1), got {gray.shape}")
    if not jnp.issubdtype(gray.dtype, jnp.floating):
        gray = gray.astype(jnp.result_type(float))
    zeros = jnp.zeros(gray.shape[:-1] + (2,), gray.dtype)
    observed = jnp.concatenate([np.sqrt(3.0) * gray, zeros], axis=-1)
    mask = np.array([1.0, 0.0, 0.0])
    return inpaint(name, denoise_fn, schedule, key, observed, mask, resample=resample, jump=jump,
                   basis=COLOR_BASIS, **opts)
