"""EDM preconditioning wrappers (Karras et al. 2022, Table 1; EDM's ``training/networks.py``).

A wrapper turns any backbone ``F`` (a network of diffjax.models) into the denoiser

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),

called like a network, ``apply(variables, x, sigma, y=None, context=None, train=False)``, with
``sigma`` of shape (B,) or () (the noise level; EDM schedules use ``c_noise(t) = sigma = t``).
The coefficients come from :mod:`diffjax.predictions`; the backbone's parameters live under
``params["backbone"]``. The backbone is kept separate, as EDM does, so the same network can be
trained with or without preconditioning.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax import predictions
from diffjax.schedules import bcast

Array = jax.Array


class Precond(nn.Module):
    """The wrapper; subclasses define ``coefficients(sigma) -> (c_skip, c_out, c_in, c_noise)``."""
    backbone: nn.Module

    def coefficients(self, sigma: Array) -> tuple[Array, Array, Array, Array]:
        raise NotImplementedError

    def __call__(self, x: Array, sigma: Array, y: Optional[Array] = None, context: Optional[Array] = None,
                 train: bool = False) -> Array:
        x = jnp.asarray(x, jnp.float32)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.backbone(bcast(c_in, x) * x, c_noise, y=y, context=context, train=train)
        if F_x.shape != x.shape:
            raise ValueError(f"{type(self).__name__}: the backbone output {F_x.shape} must have the shape of "
                             f"x {x.shape} (a learned-variance backbone cannot be preconditioned)")
        return bcast(c_skip, x) * x + bcast(c_out, x) * F_x.astype(jnp.float32)


class EDMPrecond(Precond):
    """EDM: c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4."""
    sigma_data: float = 0.5

    def coefficients(self, sigma: Array) -> tuple[Array, Array, Array, Array]:
        return predictions.edm_preconditioning(sigma, self.sigma_data)


class VPPrecond(Precond):
    """Table 1's "VP" column: the score_sde VP network (eps-prediction) seen as a denoiser."""
    beta_d: float = 19.9
    beta_min: float = 0.1
    M: int = 1000

    def coefficients(self, sigma: Array) -> tuple[Array, Array, Array, Array]:
        return predictions.vp_preconditioning(sigma, self.beta_d, self.beta_min, self.M)


class VEPrecond(Precond):
    """Table 1's "VE" column: the score_sde VE network seen as a denoiser."""

    def coefficients(self, sigma: Array) -> tuple[Array, Array, Array, Array]:
        return predictions.ve_preconditioning(sigma)


PRECONDS: dict[str, Any] = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond}
