"""NCSN: the noise-conditional score network of Song & Ermon 2019 (App. B.1), CondRefineNetDilated.

A RefineNet (Lin et al. 2017) with dilated convolutions in its last two stages, conditioned on the
noise level *index* ``i`` in ``0..L-1`` through conditional instance normalisation++ (one row of
``gamma, alpha, beta`` per level in every normalisation layer), ELU activations, and output the
score ``s(x, sigma_i)`` with the shape of ``x`` (NCSN v1 does *not* divide by sigma).

Layout (``nf`` = 128 for CIFAR-10; spatial size for a 32x32 input)::

    begin_conv 3x3 C -> nf                                                    32
    res1: 2 x ResBlock(nf -> nf)                                              32
    res2: ResBlock(nf -> 2nf, down: conv + 2x2 mean-pool), ResBlock(2nf)      16
    res3: ResBlock(2nf, "down" = dilation 2, no pooling), ResBlock(2nf, dilation 2)   16
    res4: ResBlock(2nf, "down" = dilation 4, no pooling), ResBlock(2nf, dilation 4)   16
    refine1([res4]) -> 2nf, refine2([res3, refine1]) -> 2nf,
    refine3([res2, refine2]) -> nf, refine4([res1, refine3]) -> nf (3 output RCUs)
    CondInstanceNorm++ -> ELU -> end_conv 3x3 nf -> C

Each RefineBlock: per-input residual conv units (2 blocks x 2 stages of norm-ELU-conv), multi-
resolution fusion (norm, 3x3 conv, bilinear upsampling with aligned corners, sum), chained residual
pooling (ELU, then 2 stages of norm, 5x5 stride-1 average pooling, 3x3 conv, each added to the
running sum), and output RCUs. The only resolution change is the mean-pool of res2, so the image
size must be even.

Conditional instance norm++ follows the reference code (ermongroup/ncsn
``ConditionalInstanceNorm2dPlus``): with per-channel spatial means ``mu_k`` and variances ``s_k^2``,
``m``, ``v^2`` the mean and *unbiased* variance of ``{mu_k}`` over channels (``torch.var``),

    z_k = gamma_i,k [ (x_k - mu_k) / sqrt(s_k^2 + 1e-5) + alpha_i,k (mu_k - m) / sqrt(v^2 + 1e-5) ] + beta_i,k,

i.e. the paper's eq. (App. B.1) with its alpha equal to ``gamma * alpha`` here; gamma and alpha are
initialised ``N(1, 0.02)``, beta at 0. Convolutions use PyTorch's default initialisation (kernel
and bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), as the reference.

Noise labels: the network receives ``schedule.c_noise(t)``, which for the VESDE is ``sigma``; it
maps sigma to the nearest of the ``L = num_scales`` geometric levels
``sigma_i = sigma_max (sigma_min / sigma_max)^(i / (L-1))``:
``i = round((log sigma_max - log sigma) / (log sigma_max - log sigma_min) (L-1))``, clipped to
``0..L-1`` (``losses.ncsn_dsm`` and the annealed Langevin sampler query exactly these sigmas).
With ``label_is_index=True`` the labels are taken as the indices themselves.

Input: NCSN trains on data in [0, 1] and maps it to [-1, 1] itself (``2 x - 1``, the reference's
``logit_transform=False`` branch); ``centered=True`` skips that for data already in [-1, 1].
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.layers import Dtype, avg_pool, check_conditioning, check_inputs

Array = jax.Array
_EPS = 1e-5


def _torch_uniform(fan_in: int):
    """PyTorch's default Conv2d initialisation for kernel and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class Conv(nn.Module):
    """k x k convolution, 'same' padding (``dilation * (k // 2)``), PyTorch initialisation."""
    features: int
    kernel: int = 3
    dilation: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = _torch_uniform(self.kernel * self.kernel * x.shape[-1])
        pad = self.dilation * (self.kernel // 2)
        return nn.Conv(self.features, (self.kernel, self.kernel), kernel_dilation=self.dilation,
                       padding=((pad, pad), (pad, pad)), use_bias=self.use_bias, kernel_init=init,
                       bias_init=init, dtype=self.dtype, param_dtype=jnp.float32, name="conv")(x)


class CondInstanceNormPlus(nn.Module):
    """Conditional instance normalisation++ (Song & Ermon 2019, App. B.1; formula in the module doc).

    ``x (B, H, W, C), level (B,) int -> (B, H, W, C)``; parameter ``embedding`` of shape
    ``(num_scales, 3 C)`` holding ``[gamma | alpha | beta]`` per level. Statistics in float32.
    """
    num_scales: int

    @nn.compact
    def __call__(self, x: Array, level: Array) -> Array:
        C = x.shape[-1]
        if C < 2:
            raise ValueError(f"CondInstanceNormPlus needs at least 2 channels (a variance across channels), got {C}")

        def init(key, shape, dtype=jnp.float32):
            scales = 1.0 + 0.02 * jax.random.normal(key, (shape[0], 2 * C), dtype)
            return jnp.concatenate([scales, jnp.zeros((shape[0], C), dtype)], axis=-1)

        table = self.param("embedding", init, (self.num_scales, 3 * C))
        gamma, alpha, beta = jnp.split(table[level], 3, axis=-1)           # (B, C) each
        xf = x.astype(jnp.float32)
        mu = jnp.mean(xf, axis=(1, 2))                                      # (B, C)
        var = jnp.var(xf, axis=(1, 2))
        m = jnp.mean(mu, axis=-1, keepdims=True)
        v = jnp.var(mu, axis=-1, keepdims=True, ddof=1)                     # torch.var: unbiased
        h = (xf - mu[:, None, None]) / jnp.sqrt(var[:, None, None] + _EPS)
        h = h + (alpha * (mu - m) / jnp.sqrt(v + _EPS))[:, None, None]
        return (gamma[:, None, None] * h + beta[:, None, None]).astype(x.dtype)


class CondResBlock(nn.Module):
    """ConditionalResidualBlock: norm-ELU-conv, norm-ELU-conv, plus a shortcut.

    ``down`` without dilation: the second conv and a 1x1 shortcut conv are followed by 2x2 mean
    pooling; ``down`` with dilation: dilated convs and a dilated 3x3 shortcut, no pooling.
    """
    features: int
    num_scales: int
    down: bool = False
    dilation: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, level: Array) -> Array:
        cin, d, kw = x.shape[-1], self.dilation, {"dtype": self.dtype}
        mid = cin if self.down else self.features
        h = nn.elu(CondInstanceNormPlus(self.num_scales, name="norm1")(x, level))
        h = Conv(mid, dilation=d, name="conv1", **kw)(h)
        h = nn.elu(CondInstanceNormPlus(self.num_scales, name="norm2")(h, level))
        h = Conv(self.features, dilation=d, name="conv2", **kw)(h)
        pool = self.down and d == 1
        if pool:
            h = avg_pool(h)
        if self.features == cin and not self.down:
            return x + h
        if pool:
            shortcut = avg_pool(Conv(self.features, kernel=1, name="shortcut", **kw)(x))
        elif d > 1:
            shortcut = Conv(self.features, dilation=d, name="shortcut", **kw)(x)
        else:
            shortcut = Conv(self.features, kernel=1, name="shortcut", **kw)(x)
        return shortcut + h


class CondRCU(nn.Module):
    """Residual conv units: ``n_blocks`` x (x + [norm-ELU-conv] x n_stages), bias-free convs."""
    n_blocks: int
    num_scales: int
    n_stages: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, level: Array) -> Array:
        for i in range(self.n_blocks):
            residual = x
            for j in range(self.n_stages):
                x = nn.elu(CondInstanceNormPlus(self.num_scales, name=f"norm_{i}_{j}")(x, level))
                x = Conv(x.shape[-1], use_bias=False, dtype=self.dtype, name=f"conv_{i}_{j}")(x)
            x = x + residual
        return x


class CondCRP(nn.Module):
    """Chained residual pooling: ELU, then per stage norm, 5x5/1 average pool, bias-free conv, summed."""
    num_scales: int
    n_stages: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, level: Array) -> Array:
        x = nn.elu(x)
        path = x
        for i in range(self.n_stages):
            path = CondInstanceNormPlus(self.num_scales, name=f"norm_{i}")(path, level)
            # torch AvgPool2d(5, 1, 2): zero padding counted, always divides by 25
            path = nn.avg_pool(path, (5, 5), (1, 1), padding=((2, 2), (2, 2)), count_include_pad=True)
            path = Conv(x.shape[-1], use_bias=False, dtype=self.dtype, name=f"conv_{i}")(path)
            x = path + x
        return x


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation with aligned corners."""
    if n_in == n_out:
        return np.eye(n_in, dtype=np.float32)
    pos = np.zeros(n_out) if n_out == 1 else np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = pos - lo
    mat = np.zeros((n_out, n_in), np.float32)
    mat[np.arange(n_out), lo] += 1.0 - w
    mat[np.arange(n_out), hi] += w
    return mat


def resize_bilinear_aligned(x: Array, size: tuple[int, int]) -> Array:
    """``F.interpolate(mode='bilinear', align_corners=True)`` for NHWC ``x``."""
    H, W = size
    if x.shape[1:3] == (H, W):
        return x
    mh = jnp.asarray(_interp_matrix(x.shape[1], H), x.dtype)
    mw = jnp.asarray(_interp_matrix(x.shape[2], W), x.dtype)
    return jnp.einsum("ih,jw,bhwc->bijc", mh, mw, x)


class CondMSF(nn.Module):
    """Multi-resolution fusion: per input norm and 3x3 conv to ``features``, upsample, sum."""
    features: int
    num_scales: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[Array], level: Array, size: tuple[int, int]) -> Array:
        total = 0.0
        for i, x in enumerate(xs):
            h = CondInstanceNormPlus(self.num_scales, name=f"norm_{i}")(x, level)
            h = Conv(self.features, dtype=self.dtype, name=f"conv_{i}")(h)
            total = total + resize_bilinear_aligned(h, size)
        return total


class CondRefineBlock(nn.Module):
    """RefineNet block: adaptive RCUs per input, fusion (several inputs), CRP, output RCUs."""
    features: int
    num_scales: int
    end: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[Array], level: Array, size: tuple[int, int]) -> Array:
        kw = {"num_scales": self.num_scales, "dtype": self.dtype}
        hs = [CondRCU(2, name=f"adapt_{i}", **kw)(x, level) for i, x in enumerate(xs)]
        h = CondMSF(self.features, name="msf", **kw)(hs, level, size) if len(hs) > 1 else hs[0]
        h = CondCRP(name="crp", **kw)(h, level)
        return CondRCU(3 if self.end else 1, name="output", **kw)(h, level)


class NCSN(nn.Module):
    """CondRefineNetDilated (Song & Ermon 2019): ``x (B, H, W, C), sigma (B,) -> score (B, H, W, C)``.

    ``nf``: base width (128 for CIFAR-10 and CelebA, 64 for MNIST); ``num_scales``, ``sigma_min``,
    ``sigma_max``: the L geometric noise levels the labels are mapped to (set them to the
    schedule's and loss's values); ``centered``: the input is already in [-1, 1].
    """
    nf: int = 128
    in_channels: int = 3
    num_scales: int = 10
    sigma_min: float = 0.01
    sigma_max: float = 1.0
    label_is_index: bool = False
    centered: bool = False
    dtype: Dtype = jnp.float32

    def level_index(self, noise_labels: Array) -> Array:
        """The noise-level index ``i`` in ``0..L-1`` of each label (sigma, or the index itself)."""
        labels = jnp.asarray(noise_labels, jnp.float32)
        L = self.num_scales
        if self.label_is_index:
            return jnp.clip(jnp.round(labels), 0, L - 1).astype(jnp.int32)
        frac = (math.log(self.sigma_max) - jnp.log(labels)) / (math.log(self.sigma_max) - math.log(self.sigma_min))
        return jnp.clip(jnp.round(frac * (L - 1)), 0, L - 1).astype(jnp.int32)

    @nn.compact
    def __call__(self, x: Array, noise_labels: Array, y: Array | None = None,
                 context: Array | None = None, train: bool = False) -> Array:
        if self.num_scales < 2:
            raise ValueError(f"NCSN: num_scales must be at least 2, got {self.num_scales}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"NCSN: need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        noise_labels = check_inputs(x, noise_labels, channels=self.in_channels, divisor=2, name="NCSN")
        check_conditioning(y, context, batch=x.shape[0], num_classes=0, context_dim=None, name="NCSN")
        level = self.level_index(noise_labels)
        nf, L, kw = self.nf, self.num_scales, {"num_scales": self.num_scales, "dtype": self.dtype}

        h = x.astype(jnp.float32)
        if not self.centered:
            h = 2.0 * h - 1.0
        h = Conv(nf, dtype=self.dtype, name="begin_conv")(h.astype(self.dtype))
        h = CondResBlock(nf, name="res1_0", **kw)(h, level)
        layer1 = CondResBlock(nf, name="res1_1", **kw)(h, level)
        h = CondResBlock(2 * nf, down=True, name="res2_0", **kw)(layer1, level)
        layer2 = CondResBlock(2 * nf, name="res2_1", **kw)(h, level)
        h = CondResBlock(2 * nf, down=True, dilation=2, name="res3_0", **kw)(layer2, level)
        layer3 = CondResBlock(2 * nf, dilation=2, name="res3_1", **kw)(h, level)
        h = CondResBlock(2 * nf, down=True, dilation=4, name="res4_0", **kw)(layer3, level)
        layer4 = CondResBlock(2 * nf, dilation=4, name="res4_1", **kw)(h, level)

        size = lambda a: a.shape[1:3]
        ref = CondRefineBlock(2 * nf, name="refine1", **kw)([layer4], level, size(layer4))
        ref = CondRefineBlock(2 * nf, name="refine2", **kw)([layer3, ref], level, size(layer3))
        ref = CondRefineBlock(nf, name="refine3", **kw)([layer2, ref], level, size(layer2))
        ref = CondRefineBlock(nf, end=True, name="refine4", **kw)([layer1, ref], level, size(layer1))

        h = nn.elu(CondInstanceNormPlus(L, name="norm_out")(ref, level))
        h = Conv(x.shape[-1], dtype=self.dtype, name="end_conv")(h)
        return h.astype(jnp.float32)
