"""The ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", Sec. 3; guided-diffusion
``unet.py``), which also covers Improved DDPM's UNet (Nichol & Dhariwal 2021).

Residual blocks with adaptive group normalisation (``use_scale_shift_norm``: the time/class
embedding gives a per-channel scale and shift applied after the second GroupNorm), BigGAN
residual up/down-sampling (``resblock_updown``), multi-head self-attention at several
resolutions (``num_head_channels`` channels per head, or a fixed ``num_heads``), class
embedding added to the time embedding, zero-initialised output layers, learned variances
(``learn_sigma``: 2C output channels). GroupNorm has 32 groups and eps 1e-5 as in PyTorch.

Attention uses separate q, k, v projections; guided-diffusion's fused ``qkv`` 1x1 conv (in its
"legacy" or "new" channel order) is the same function with the weights permuted, and has the same
number of parameters. The class embedding has one more row than guided-diffusion's (the null
label for classifier-free guidance), so a class-conditional model here has ``4 * ch`` more
parameters than the reference. Paper configurations are in ``PAPER_CONFIGS``; their counts from
guided-diffusion's code (``create_model`` with the README's flags) are ImageNet 64x64 295,904,454,
128x128 421,529,606, 256x256 553,838,086 (unconditional 256x256: 552,814,086).
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.layers import (Attention, Dtype, avg_pool, check_conditioning, check_inputs,
                                   label_embedding, nearest_upsample, sinusoidal_embedding,
                                   torch_default_init)

Array = jax.Array

_IMAGENET = dict(attn_resolutions=(32, 16, 8), learn_sigma=True, num_classes=1000, resblock_updown=True,
                 use_scale_shift_norm=True)
PAPER_CONFIGS = {
    # guided-diffusion README, "Classifier guidance" model flags; channel_mult from create_model.
    "adm_imagenet64": dict(_IMAGENET, ch=192, ch_mult=(1, 2, 3, 4), num_res_blocks=3, num_head_channels=64,
                           dropout=0.1),
    "adm_imagenet128": dict(_IMAGENET, ch=256, ch_mult=(1, 1, 2, 3, 4), num_res_blocks=2, num_heads=4,
                            num_head_channels=-1),
    "adm_imagenet256": dict(_IMAGENET, ch=256, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                            num_head_channels=64),
}
_ZERO = nn.initializers.zeros


class ADMResBlock(nn.Module):
    """guided-diffusion ``ResBlock``; ``up``/``down`` resample inside the block (BigGAN)."""
    out_ch: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    up: bool = False
    down: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, emb: Array, train: bool) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name: nn.GroupNorm(32, epsilon=1e-5, name=name, **kw)  # noqa: E731
        h = nn.swish(norm("in_norm")(x))
        if self.up:
            h, x = nearest_upsample(h), nearest_upsample(x)
        elif self.down:
            h, x = avg_pool(h), avg_pool(x)
        h = nn.Conv(self.out_ch, (3, 3), padding=1, kernel_init=torch_default_init, name="in_conv", **kw)(h)
        emb_out = nn.Dense(2 * self.out_ch if self.use_scale_shift_norm else self.out_ch,
                           kernel_init=torch_default_init, name="emb_proj", **kw)(nn.swish(emb))[:, None, None, :]
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = norm("out_norm")(h) * (1 + scale) + shift
        else:
            h = norm("out_norm")(h + emb_out)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(h))
        h = nn.Conv(self.out_ch, (3, 3), padding=1, kernel_init=_ZERO, name="out_conv", **kw)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), kernel_init=torch_default_init, name="skip", **kw)(x)
        return x + h


class ADMUNet(nn.Module):
    """ADM UNet; ``__call__(x, noise_labels, y=None, context=None, train=False)``.

    ``noise_labels``: the (possibly respaced) timestep index, as guided-diffusion feeds it.
    """
    ch: int = 128
    ch_mult: Sequence[float] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.0
    in_channels: int = 3
    learn_sigma: bool = False
    num_heads: int = 4
    num_head_channels: int = -1          # -1: num_heads heads; else channels // num_head_channels heads
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    conv_resample: bool = True
    num_classes: int = 0
    context_dim: Optional[int] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, noise_labels: Array, y: Optional[Array] = None,
                 context: Optional[Array] = None, train: bool = False) -> Array:
        levels = len(self.ch_mult)
        noise_labels = check_inputs(x, noise_labels, channels=self.in_channels,
                                    divisor=2 ** (levels - 1), name="ADMUNet")
        y = check_conditioning(y, context, batch=x.shape[0], num_classes=self.num_classes,
                               context_dim=self.context_dim, name="ADMUNet")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        res_kw = dict(dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm, **kw)

        def attend(h):
            C = h.shape[-1]
            heads = self.num_heads if self.num_head_channels == -1 else C // self.num_head_channels
            attn = lambda: Attention(heads, 32, 1e-5, kernel_init=torch_default_init, out_init=_ZERO, **kw)  # noqa: E731
            h = attn()(h)
            return attn()(h, context) if self.context_dim else h

        def conv3x3(h, out_ch, strides=1, init=torch_default_init):
            return nn.Conv(out_ch, (3, 3), strides=strides, padding=1, kernel_init=init, **kw)(h)

        emb_dim = 4 * self.ch
        emb = sinusoidal_embedding(noise_labels, self.ch, freq_shift=0.0, flip_sin_to_cos=True)
        emb = nn.Dense(emb_dim, kernel_init=torch_default_init, **kw)(emb)
        emb = nn.Dense(emb_dim, kernel_init=torch_default_init, **kw)(nn.swish(emb))
        if self.num_classes:
            emb = emb + label_embedding(self.num_classes, emb_dim, self.param_dtype)(y)

        h = conv3x3(x.astype(self.dtype), int(self.ch_mult[0] * self.ch))
        hs = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ADMResBlock(int(mult * self.ch), **res_kw)(h, emb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attend(h)
                hs.append(h)
            if level != levels - 1:
                if self.resblock_updown:
                    h = ADMResBlock(h.shape[-1], down=True, **res_kw)(h, emb, train)
                elif self.conv_resample:
                    h = conv3x3(h, h.shape[-1], strides=2)
                else:
                    h = avg_pool(h)
                hs.append(h)

        h = ADMResBlock(h.shape[-1], **res_kw)(h, emb, train)
        h = attend(h)
        h = ADMResBlock(h.shape[-1], **res_kw)(h, emb, train)

        for level in reversed(range(levels)):
            for i in range(self.num_res_blocks + 1):
                h = ADMResBlock(int(self.ch * self.ch_mult[level]), **res_kw)(
                    jnp.concatenate([h, hs.pop()], axis=-1), emb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attend(h)
                if level and i == self.num_res_blocks:
                    if self.resblock_updown:
                        h = ADMResBlock(h.shape[-1], up=True, **res_kw)(h, emb, train)
                    else:
                        h = nearest_upsample(h)
                        if self.conv_resample:
                            h = conv3x3(h, h.shape[-1])
        assert not hs

        h = nn.swish(nn.GroupNorm(32, epsilon=1e-5, **kw)(h))
        h = conv3x3(h, self.in_channels * (2 if self.learn_sigma else 1), init=_ZERO)
        return h.astype(jnp.float32)
