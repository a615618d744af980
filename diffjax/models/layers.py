"""Layers the score networks share: time features, attention, conditioning and input checks.

Every network of this package follows docs/conventions.md §3: NHWC images, `noise_labels` of
shape (B,), optional class labels `y` (the value `num_classes` is the null label reserved for
classifier-free guidance) and optional cross-attention `context` of shape (B, L, D_ctx).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
    """DDPM / score_sde initialiser: variance scaling, fan_avg, uniform (``scale=0`` -> 1e-10)."""
    return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


# PyTorch's default for nn.Conv2d / nn.Linear weights (kaiming_uniform with a = sqrt(5)),
# used by guided-diffusion's ADM.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def sinusoidal_embedding(t: Array, dim: int, *, freq_shift: float = 1.0, flip_sin_to_cos: bool = False,
                         max_period: float = 10000.0) -> Array:
    """Transformer positional features of a (B,) array of (possibly fractional) times.

    Frequencies ``max_period ** (-i / (dim / 2 - freq_shift))``, i = 0..dim/2-1; features
    ``[sin, cos]`` (``[cos, sin]`` with ``flip_sin_to_cos``). DDPM (Ho et al. 2020, tf code
    ``get_timestep_embedding``) and score_sde use ``freq_shift=1``, sin first; guided-diffusion
    (ADM) uses ``freq_shift=0``, cos first.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class GaussianFourierFeatures(nn.Module):
    """Random Fourier features of log(sigma) (Song et al. 2021, App. H; Tancik et al. 2020).

    ``W ~ N(0, scale^2)`` is a fixed (non-trained, ``stop_gradient``) parameter so that
    checkpoints carry it, as in score_sde's ``GaussianFourierProjection``.
    """
    embedding_size: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        W = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        proj = x.astype(jnp.float32)[:, None] * jax.lax.stop_gradient(W)[None, :] * 2 * jnp.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class Attention(nn.Module):
    """Pre-norm multi-head attention over the spatial positions of an NHWC map, with residual.

    Self-attention when ``context`` is None (DDPM's AttnBlock, score_sde's AttnBlockpp, ADM's
    AttentionBlock); cross-attention to a (B, L, D_ctx) sequence otherwise (keys and values are
    projections of ``context``, queries of the normalised image features); ``mask`` (B, L) bool
    marks the context positions to attend to (padded tokens are False; each row needs one True).
    Output ``x + out(attn)``, divided by sqrt(2) when ``skip_rescale`` (NCSN++).
    """
    num_heads: int = 1
    num_groups: int = 32
    epsilon: float = 1e-6
    skip_rescale: bool = False
    kernel_init: Any = default_init()
    out_init: Any = default_init(0.0)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Optional[Array] = None, mask: Optional[Array] = None) -> Array:
        B, H, W, C = x.shape
        if C % self.num_heads:
            raise ValueError(f"attention: {C} channels do not split into {self.num_heads} heads")
        dense = lambda name, init=self.kernel_init: nn.Dense(  # noqa: E731
            C, kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        h = nn.GroupNorm(self.num_groups, epsilon=self.epsilon, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="group_norm")(x).reshape(B, H * W, C)
        kv = h if context is None else context.astype(self.dtype)
        heads = lambda a: a.reshape(B, a.shape[1], self.num_heads, C // self.num_heads)  # noqa: E731
        q, k, v = heads(dense("to_q")(h)), heads(dense("to_k")(kv)), heads(dense("to_v")(kv))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(C // self.num_heads)
        if mask is not None:
            logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # softmax in float32, as the references
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(B, H * W, C)
        out = dense("to_out_0", self.out_init)(out).reshape(B, H, W, C)
        y = x + out
        return y / math.sqrt(2.0) if self.skip_rescale else y


def check_inputs(x: Array, noise_labels: Array, *, ndim: int = 4, channels: Optional[int] = None,
                 divisor: int = 1, name: str = "network") -> Array:
    """Validates ``x`` and returns ``noise_labels`` as a (B,) float array (a scalar is broadcast)."""
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected x of rank {ndim} (B, H, W, C), got shape {x.shape}")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{name}: expected {channels} input channels, got x of shape {x.shape}")
    if ndim == 4 and (x.shape[1] % divisor or x.shape[2] % divisor):
        raise ValueError(f"{name}: image size {x.shape[1]}x{x.shape[2]} is not divisible by {divisor}, "
                         f"the total downsampling factor of the network")
    noise_labels = jnp.asarray(noise_labels)
    if noise_labels.ndim == 0:
        noise_labels = jnp.broadcast_to(noise_labels, (x.shape[0],))
    if noise_labels.shape != (x.shape[0],):
        raise ValueError(f"{name}: expected noise_labels of shape ({x.shape[0]},), got {noise_labels.shape}")
    return noise_labels


def check_conditioning(y: Optional[Array], context: Optional[Array], *, batch: int, num_classes: int,
                       context_dim: Optional[int], name: str = "network") -> Optional[Array]:
    """Validates the conditioning inputs; returns the labels (null label when y is None)."""
    if num_classes:
        if y is None:
            y = jnp.full((batch,), num_classes, jnp.int32)  # the null label: unconditional
        if jnp.shape(y) != (batch,):
            raise ValueError(f"{name}: expected class labels y of shape ({batch},), got {jnp.shape(y)}")
    elif y is not None:
        raise ValueError(f"{name}: the model is unconditional (num_classes=0) but class labels y were given")
    if context_dim:
        if context is None:
            raise ValueError(f"{name}: the model has cross-attention (context_dim={context_dim}); "
                             f"pass context of shape ({batch}, L, {context_dim})")
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != context_dim:
            raise ValueError(f"{name}: expected context of shape ({batch}, L, {context_dim}), got {context.shape}")
    elif context is not None:
        raise ValueError(f"{name}: the model has no cross-attention (context_dim=None) but context was given")
    return y


def label_embedding(num_classes: int, features: int, param_dtype: Dtype = jnp.float32,
                    name: str = "class_embedding") -> nn.Embed:
    """Class embedding with ``num_classes + 1`` rows; row ``num_classes`` is the null label.

    Call inside a compact method; the embedding is added to the time embedding, as in ADM and
    classifier-free guidance (Ho & Salimans 2021).
    """
    return nn.Embed(num_classes + 1, features, embedding_init=nn.initializers.normal(1.0),
                    param_dtype=param_dtype, name=name)


def nearest_upsample(x: Array, factor: int = 2) -> Array:
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def avg_pool(x: Array, factor: int = 2) -> Array:
    B, H, W, C = x.shape
    return x.reshape(B, H // factor, factor, W // factor, factor, C).mean(axis=(2, 4))
