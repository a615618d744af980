"""NCSN++ and DDPM++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. H).

Follows score_sde's ``models/ncsnpp.py`` / ``layerspp.py`` / ``up_or_down_sampling.py``:
BigGAN-type residual blocks (the block itself resamples, with FIR filters [1, 3, 3, 1] or
naive nearest/average resampling), every residual and attention output rescaled by 1/sqrt(2),
GroupNorm with min(C/4, 32) groups, progressive growing of the input ("input_skip" or
"residual") and of the output ("output_skip"), Gaussian Fourier features of log(sigma) (scale
16, VE) or sinusoidal features of the time label (VP), output divided by sigma for VE models
(``scale_by_sigma``). Paper configurations (score_sde's configs/*/cifar10_*_continuous.py) are in
``PAPER_CONFIGS``; their parameter counts, computed from score_sde's own code, are NCSN++ VE
62,758,915, DDPM++ VP 61,804,419, NCSN++ deep 107,587,075, DDPM++ deep 106,632,579.

Not implemented: the DDPM-type residual blocks (``resblock_type='ddpm'``) and the "residual"
progressive output, which no paper configuration uses.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import fir
from diffjax.models.layers import (Attention, Dtype, GaussianFourierFeatures, avg_pool, check_conditioning,
                                   check_inputs, default_init, label_embedding, nearest_upsample,
                                   sinusoidal_embedding)

Array = jax.Array

_NCSNPP_COMMON = dict(nf=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), dropout=0.1, skip_rescale=True,
                      fir_kernel=(1, 3, 3, 1), progressive="none", progressive_combine="sum")
PAPER_CONFIGS = {
    # configs/ve/cifar10_ncsnpp_continuous.py (data in [0, 1]: centered=False)
    "ncsnpp_cifar10_ve": dict(_NCSNPP_COMMON, num_res_blocks=4, fir=True, progressive_input="residual",
                              embedding_type="fourier", fourier_scale=16.0, scale_by_sigma=True, centered=False),
    "ncsnpp_deep_cifar10_ve": dict(_NCSNPP_COMMON, num_res_blocks=8, fir=True, progressive_input="residual",
                                   embedding_type="fourier", fourier_scale=16.0, scale_by_sigma=True,
                                   centered=False),
    # configs/vp/cifar10_ddpmpp_continuous.py
    "ddpmpp_cifar10_vp": dict(_NCSNPP_COMMON, num_res_blocks=4, fir=False, progressive_input="none",
                              embedding_type="positional", scale_by_sigma=False),
    "ddpmpp_deep_cifar10_vp": dict(_NCSNPP_COMMON, num_res_blocks=8, fir=False, progressive_input="none",
                                   embedding_type="positional", scale_by_sigma=False),
}


def _groups(channels: int) -> int:
    return min(channels // 4, 32)


class ResnetBlockBigGAN(nn.Module):
    """score_sde ``ResnetBlockBigGANpp``: norm-act, (resample), conv, +temb, norm-act, dropout, conv."""
    out_ch: int
    up: bool = False
    down: bool = False
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[float] = (1, 3, 3, 1)
    skip_rescale: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array, train: bool) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.swish(nn.GroupNorm(_groups(x.shape[-1]), **kw)(x))
        if self.up:
            resample = (lambda a: fir.upsample_2d(a, self.fir_kernel)) if self.fir else nearest_upsample
            h, x = resample(h), resample(x)
        elif self.down:
            resample = (lambda a: fir.downsample_2d(a, self.fir_kernel)) if self.fir else avg_pool
            h, x = resample(h), resample(x)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=default_init(), **kw)(h)
        h = h + nn.Dense(self.out_ch, kernel_init=default_init(), **kw)(nn.swish(temb))[:, None, None, :]
        h = nn.swish(nn.GroupNorm(_groups(h.shape[-1]), **kw)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=default_init(0.0), **kw)(h)
        if x.shape[-1] != self.out_ch or self.up or self.down:
            x = nn.Conv(self.out_ch, (1, 1), kernel_init=default_init(), **kw)(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++; ``__call__(x, noise_labels, y=None, context=None, train=False)``.

    ``noise_labels``: sigma for the Fourier embedding (VE), the time label (VP: 999 t) for the
    positional one. With ``centered=False`` the network maps inputs from [0, 1] to [-1, 1] first,
    as score_sde's VE models do.
    """
    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    in_channels: int = 3
    fir: bool = True
    fir_kernel: Sequence[float] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"              # "none" | "output_skip"
    progressive_input: str = "residual"    # "none" | "input_skip" | "residual"
    progressive_combine: str = "sum"       # "sum" | "cat" (input_skip)
    embedding_type: str = "fourier"        # "fourier" | "positional"
    fourier_scale: float = 16.0
    scale_by_sigma: bool = False
    centered: bool = True
    learn_sigma: bool = False
    num_classes: int = 0
    context_dim: Optional[int] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _check_options(self) -> None:
        for name, value, allowed in (("resblock_type", self.resblock_type, ("biggan",)),
                                     ("progressive", self.progressive, ("none", "output_skip")),
                                     ("progressive_input", self.progressive_input, ("none", "input_skip", "residual")),
                                     ("progressive_combine", self.progressive_combine, ("sum", "cat")),
                                     ("embedding_type", self.embedding_type, ("fourier", "positional"))):
            if value not in allowed:
                raise ValueError(f"NCSNpp: {name}={value!r} is not supported; expected one of {allowed}")

    @nn.compact
    def __call__(self, x: Array, noise_labels: Array, y: Optional[Array] = None,
                 context: Optional[Array] = None, train: bool = False) -> Array:
        self._check_options()
        levels = len(self.ch_mult)
        noise_labels = check_inputs(x, noise_labels, channels=self.in_channels,
                                    divisor=2 ** (levels - 1), name="NCSNpp")
        y = check_conditioning(y, context, batch=x.shape[0], num_classes=self.num_classes,
                               context_dim=self.context_dim, name="NCSNpp")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        nf, C = self.nf, x.shape[-1]

        if self.embedding_type == "fourier":
            temb = GaussianFourierFeatures(nf, self.fourier_scale)(jnp.log(noise_labels))
        else:
            temb = sinusoidal_embedding(noise_labels, nf, freq_shift=1.0)
        temb = nn.Dense(4 * nf, kernel_init=default_init(), **kw)(temb)
        temb = nn.Dense(4 * nf, kernel_init=default_init(), **kw)(nn.swish(temb))
        if self.num_classes:
            temb = temb + label_embedding(self.num_classes, 4 * nf, self.param_dtype)(y)

        def resblock(h, out_ch=None, up=False, down=False):
            return ResnetBlockBigGAN(out_ch or h.shape[-1], up=up, down=down, dropout=self.dropout, fir=self.fir,
                                     fir_kernel=self.fir_kernel, skip_rescale=self.skip_rescale, **kw)(h, temb, train)

        def attend(h):
            # score_sde's AttnBlockpp: NIN projections initialised with scale 0.1, the output with 0.
            attn = lambda: Attention(1, _groups(h.shape[-1]), 1e-6, self.skip_rescale,  # noqa: E731
                                     kernel_init=default_init(0.1), out_init=default_init(0.0), **kw)
            h = attn()(h)
            return attn()(h, context) if self.context_dim else h

        def conv3x3(h, out_ch, scale=1.0):
            return nn.Conv(out_ch, (3, 3), kernel_init=default_init(scale), **kw)(h)

        x = x.astype(self.dtype)
        if not self.centered:
            x = 2 * x - 1.0
        input_pyramid = x
        hs = [conv3x3(x, nf)]
        for i_level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = resblock(hs[-1], nf * mult)
                if h.shape[1] in self.attn_resolutions:
                    h = attend(h)
                hs.append(h)
            if i_level != levels - 1:
                h = resblock(hs[-1], down=True)
                if self.progressive_input == "input_skip":
                    input_pyramid = (fir.downsample_2d(input_pyramid, self.fir_kernel) if self.fir
                                     else avg_pool(input_pyramid))
                    skip = nn.Conv(h.shape[-1], (1, 1), kernel_init=default_init(), **kw)(input_pyramid)
                    h = skip + h if self.progressive_combine == "sum" else jnp.concatenate([skip, h], axis=-1)
                elif self.progressive_input == "residual":
                    if self.fir:
                        input_pyramid = fir.FIRDownConv(h.shape[-1], self.fir_kernel, **kw)(input_pyramid)
                    else:
                        input_pyramid = nn.Conv(h.shape[-1], (3, 3), strides=2, kernel_init=default_init(),
                                                **kw)(input_pyramid)
                    input_pyramid = (input_pyramid + h) / math.sqrt(2.0) if self.skip_rescale else input_pyramid + h
                    h = input_pyramid
                hs.append(h)

        h = resblock(hs[-1])
        h = attend(h)
        h = resblock(h)

        out_ch = C * (2 if self.learn_sigma else 1)
        pyramid = None
        for i_level in reversed(range(levels)):
            for _ in range(self.num_res_blocks + 1):
                h = resblock(jnp.concatenate([h, hs.pop()], axis=-1), nf * self.ch_mult[i_level])
            if h.shape[1] in self.attn_resolutions:
                h = attend(h)
            if self.progressive == "output_skip":
                if pyramid is not None:
                    pyramid = fir.upsample_2d(pyramid, self.fir_kernel) if self.fir else nearest_upsample(pyramid)
                out = conv3x3(nn.swish(nn.GroupNorm(_groups(h.shape[-1]), **kw)(h)), out_ch, 0.0)
                pyramid = out if pyramid is None else pyramid + out
            if i_level != 0:
                h = resblock(h, up=True)
        assert not hs

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = conv3x3(nn.swish(nn.GroupNorm(_groups(h.shape[-1]), **kw)(h)), out_ch, 0.0)
        h = h.astype(jnp.float32)
        if self.scale_by_sigma:
            h = h / noise_labels.astype(jnp.float32)[:, None, None, None]
        return h
