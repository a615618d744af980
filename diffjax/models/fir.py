"""FIR up/down-sampling (StyleGAN2's upfirdn2d), as NCSN++ uses it (Song et al. 2021, App. H).

The resampling filter ``k`` (NCSN++: [1, 3, 3, 1]) is made separable-2D and normalised to sum 1;
padding conventions follow score_sde's ``models/up_or_down_sampling.py`` so outputs are aligned
with it. Implemented as one depthwise convolution (input dilation for upsampling, stride for
downsampling).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.layers import default_init

Array = jax.Array


def _kernel(k: Sequence[float]) -> np.ndarray:
    k = np.asarray(k, np.float32)
    k = np.outer(k, k) if k.ndim == 1 else k
    return k / k.sum()


def upfirdn2d(x: Array, k: np.ndarray, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Array:
    """Upsample by zero insertion, pad, convolve with the 2-D filter ``k``, keep every down-th pixel."""
    C = x.shape[-1]
    w = jnp.asarray(np.tile(k[::-1, ::-1][:, :, None, None], (1, 1, 1, C)), x.dtype)
    padding = ((pad[0], pad[1] + up - 1),) * 2
    return jax.lax.conv_general_dilated(x, w, window_strides=(down, down), padding=padding,
                                        lhs_dilation=(up, up), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=C)


def upsample_2d(x: Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
    k = _kernel(k) * factor ** 2
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
    k = _kernel(k)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


class FIRDownConv(nn.Module):
    """FIR filter then a stride-2 3x3 conv (score_sde ``Conv2d(down=True)``: ``conv_downsample_2d``)."""
    features: int
    fir_kernel: Sequence[float] = (1, 3, 3, 1)
    kernel_size: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", default_init(), (self.kernel_size, self.kernel_size, x.shape[-1],
                                                       self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        k = _kernel(self.fir_kernel)
        p = (k.shape[0] - 2) + (self.kernel_size - 1)
        x = upfirdn2d(x.astype(self.dtype), k, pad=((p + 1) // 2, p // 2))
        x = jax.lax.conv_general_dilated(x, kernel.astype(self.dtype), window_strides=(2, 2), padding="VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return x + bias.astype(self.dtype)
