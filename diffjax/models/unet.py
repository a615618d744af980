"""The DDPM UNet (Ho et al. 2020, App. B; the authors' ``diffusion_tf/models/unet.py``).

A PixelCNN++-style UNet: per resolution ``num_res_blocks`` residual blocks (GroupNorm, swish,
3x3 convs, the time embedding added between the convs, dropout before the second conv),
self-attention at the resolutions in ``attn_resolutions``, stride-2 conv downsampling with TF
"SAME" padding (pad bottom/right), nearest-neighbour upsampling followed by a 3x3 conv, skip
connections from every down-path block to the up path, sinusoidal time embedding (sin first,
frequency shift 1) through two dense layers. CIFAR-10 (``ch=128, ch_mult=(1, 2, 2, 2)``,
attention at 16x16) has 35,746,307 parameters; the 256x256 model (``ch_mult=(1, 1, 2, 2, 4, 4)``)
113,673,219.

Module and parameter names mirror diffusers' ``UNet2DModel`` (``down_blocks_0/resnets_1/conv1``
for ``down_blocks.0.resnets.1.conv1``) so that ``diffjax.convert.diffusers_unet`` maps the
diffusers conversions of the original checkpoints (google/ddpm-cifar10-32, ...) one to one.
Additions, all off by default: class labels (``num_classes``; an embedding with a null row
added to the time embedding), cross-attention to ``context`` after every self-attention
(``context_dim``; ``context_mask`` (B, L) marks the real, unpadded tokens), several attention heads (``attn_head_dim``), learned variances
(``learn_sigma``: 2C output channels).
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.layers import (Attention, Dtype, check_conditioning, check_inputs, default_init,
                                   label_embedding, nearest_upsample, sinusoidal_embedding)

Array = jax.Array


class ResnetBlock(nn.Module):
    """DDPM residual block (diffusers ``ResnetBlock2D`` with the default time-embedding shift)."""
    out_ch: int
    dropout: float = 0.0
    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array, train: bool) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name: nn.GroupNorm(self.num_groups, epsilon=self.epsilon, name=name, **kw)  # noqa: E731
        conv = lambda k, name, scale=1.0: nn.Conv(self.out_ch, (k, k), padding=k // 2,  # noqa: E731
                                                  kernel_init=default_init(scale), name=name, **kw)
        h = conv(3, "conv1")(nn.swish(norm("norm1")(x)))
        h = h + nn.Dense(self.out_ch, kernel_init=default_init(), name="time_emb_proj", **kw)(
            nn.swish(temb))[:, None, None, :]
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(norm("norm2")(h)))
        h = conv(3, "conv2", scale=0.0)(h)
        if x.shape[-1] != self.out_ch:
            x = conv(1, "conv_shortcut")(x)
        return x + h


class DDPMUNet(nn.Module):
    """The DDPM UNet; ``__call__(x, noise_labels, y=None, context=None, train=False)``.

    ``noise_labels`` are DDPM's integer timesteps 0..T-1 (any float is accepted).
    """
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    in_channels: int = 3
    learn_sigma: bool = False
    num_groups: int = 32
    epsilon: float = 1e-6
    attn_head_dim: Optional[int] = None        # None: one head over all channels (DDPM)
    num_classes: int = 0
    context_dim: Optional[int] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, noise_labels: Array, y: Optional[Array] = None,
                 context: Optional[Array] = None, train: bool = False,
                 context_mask: Optional[Array] = None) -> Array:
        levels = len(self.ch_mult)
        noise_labels = check_inputs(x, noise_labels, channels=self.in_channels,
                                    divisor=2 ** (levels - 1), name="DDPMUNet")
        y = check_conditioning(y, context, batch=x.shape[0], num_classes=self.num_classes,
                               context_dim=self.context_dim, name="DDPMUNet")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        res_kw = dict(dropout=self.dropout, num_groups=self.num_groups, epsilon=self.epsilon, **kw)

        def attend(h, prefix, index):
            heads = 1 if self.attn_head_dim is None else h.shape[-1] // self.attn_head_dim
            attn = lambda n: Attention(heads, self.num_groups, self.epsilon, name=n, **kw)  # noqa: E731
            h = attn(f"{prefix}_attentions_{index}")(h)
            if self.context_dim:
                h = attn(f"{prefix}_cross_attentions_{index}")(h, context, context_mask)
            return h

        temb_dim = 4 * self.ch
        temb = sinusoidal_embedding(noise_labels, self.ch, freq_shift=1.0, flip_sin_to_cos=False)
        temb = nn.Dense(temb_dim, kernel_init=default_init(), name="time_embedding_linear_1", **kw)(temb)
        temb = nn.Dense(temb_dim, kernel_init=default_init(), name="time_embedding_linear_2", **kw)(nn.swish(temb))
        if self.num_classes:
            temb = temb + label_embedding(self.num_classes, temb_dim, self.param_dtype)(y)

        h = nn.Conv(self.ch, (3, 3), padding=1, kernel_init=default_init(), name="conv_in", **kw)(
            x.astype(self.dtype))
        hs = [h]
        for i, mult in enumerate(self.ch_mult):
            with_attn = h.shape[1] in self.attn_resolutions
            for j in range(self.num_res_blocks):
                h = ResnetBlock(self.ch * mult, name=f"down_blocks_{i}_resnets_{j}", **res_kw)(h, temb, train)
                if with_attn:
                    h = attend(h, f"down_blocks_{i}", j)
                hs.append(h)
            if i != levels - 1:
                # TF "SAME" padding for a stride-2 3x3 conv on an even size: one row/column of
                # zeros at the bottom/right (diffusers: downsample_padding=0).
                h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
                h = nn.Conv(h.shape[-1], (3, 3), strides=2, padding="VALID", kernel_init=default_init(),
                            name=f"down_blocks_{i}_downsamplers_0_conv", **kw)(h)
                hs.append(h)

        h = ResnetBlock(h.shape[-1], name="mid_block_resnets_0", **res_kw)(h, temb, train)
        h = attend(h, "mid_block", 0)
        h = ResnetBlock(h.shape[-1], name="mid_block_resnets_1", **res_kw)(h, temb, train)

        for i, mult in enumerate(reversed(self.ch_mult)):
            with_attn = h.shape[1] in self.attn_resolutions
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = ResnetBlock(self.ch * mult, name=f"up_blocks_{i}_resnets_{j}", **res_kw)(h, temb, train)
                if with_attn:
                    h = attend(h, f"up_blocks_{i}", j)
            if i != levels - 1:
                h = nn.Conv(h.shape[-1], (3, 3), padding=1, kernel_init=default_init(),
                            name=f"up_blocks_{i}_upsamplers_0_conv", **kw)(nearest_upsample(h))
        assert not hs

        h = nn.swish(nn.GroupNorm(self.num_groups, epsilon=self.epsilon, name="conv_norm_out", **kw)(h))
        out_ch = self.in_channels * (2 if self.learn_sigma else 1)
        h = nn.Conv(out_ch, (3, 3), padding=1, kernel_init=default_init(0.0), name="conv_out", **kw)(h)
        return h.astype(jnp.float32)
