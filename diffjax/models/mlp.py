"""A small residual MLP score network for vector data (the toy 2D experiments).

The noise label enters through sinusoidal features (the Transformer / DDPM embedding) followed by
a two-layer MLP, and is added to every residual block, as the DDPM UNet does with its time
embedding. Noise labels span very different ranges (DDPM step indices 0..999, VE sigmas, EDM's
``log(sigma) / 4``, flow times in [0, 1]); ``label_scale`` multiplies them before the sinusoids so
the highest frequency (1 rad per unit) resolves the range (e.g. 1000 for labels in [0, 1]).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.layers import sinusoidal_embedding

Array = jax.Array


class MLP(nn.Module):
    """``x (B, D), noise_labels (B,) -> (B, D)`` (``(B, 2D)`` with ``learn_sigma``).

    ``num_classes > 0`` adds a class embedding with ``num_classes + 1`` rows, the last being the
    null label of classifier-free guidance; ``context (B, L, C)`` is mean-pooled over ``L`` and
    projected into the same embedding.
    """

    hidden: int = 256
    depth: int = 3
    num_classes: int = 0
    embed_dim: int = 64
    label_scale: float = 1.0
    dropout: float = 0.0
    learn_sigma: bool = False

    @nn.compact
    def __call__(self, x: Array, noise_labels: Array, y: Optional[Array] = None,
                 context: Optional[Array] = None, train: bool = False) -> Array:
        if x.ndim != 2:
            raise ValueError(f"MLP expects x of shape (B, D), got {x.shape}")
        labels = jnp.broadcast_to(jnp.asarray(noise_labels, jnp.float32), (x.shape[0],))
        emb = sinusoidal_embedding(labels * self.label_scale, self.embed_dim, freq_shift=0.0,
                                   flip_sin_to_cos=True)
        emb = nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(emb)))
        if self.num_classes > 0:
            if y is None:  # unconditional use of a conditional model: the null label
                y = jnp.full((x.shape[0],), self.num_classes, jnp.int32)
            emb = emb + nn.Embed(self.num_classes + 1, self.hidden)(y)
        if context is not None:
            emb = emb + nn.Dense(self.hidden)(jnp.mean(context, axis=1))

        h = nn.Dense(self.hidden)(x)
        for _ in range(self.depth):
            r = nn.Dense(self.hidden)(nn.silu(nn.LayerNorm()(h)))
            r = r + nn.Dense(self.hidden)(nn.silu(emb))
            r = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(r))
            h = h + nn.Dense(self.hidden)(r)
        out_dim = x.shape[-1] * (2 if self.learn_sigma else 1)
        return nn.Dense(out_dim)(nn.silu(nn.LayerNorm()(h)))
