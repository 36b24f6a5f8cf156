"""WideResNet-28-k with CELU activations (pre-activation blocks, no dropout)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from autodo_jax.models.common import Dtype, batch_norm, conv


class WideBlock(nn.Module):
    """Pre-activation block: BN-act-conv3x3(stride)-BN-act-conv3x3 + shortcut.

    When the width changes the shortcut is a 1x1 strided conv of the activated input.
    """

    features: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        o = nn.celu(batch_norm(train, self.dtype)(x))
        if x.shape[-1] != self.features:
            shortcut = conv(self.features, 1, self.stride, self.dtype)(o)
        else:
            shortcut = x
        y = conv(self.features, 3, self.stride, self.dtype)(o)
        y = nn.celu(batch_norm(train, self.dtype)(y))
        y = conv(self.features, 3, 1, self.dtype)(y)
        return y + shortcut


class WideResNetEncoder(nn.Module):
    """WRN-depth-widen: conv16, 3 groups of (depth-4)/6 blocks (16k, 32k, 64k; strides
    1, 2, 2), BN-CELU, global average pool; features D = 64k.
    """

    depth: int = 28
    widen: int = 10
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4, got {self.depth}")
        n = (self.depth - 4) // 6
        x = conv(16, 3, 1, self.dtype)(x.astype(self.dtype))
        for width, stride in ((16 * self.widen, 1), (32 * self.widen, 2), (64 * self.widen, 2)):
            for b in range(n):
                x = WideBlock(width, stride if b == 0 else 1, self.dtype)(x, train)
        x = nn.celu(batch_norm(train, self.dtype)(x))
        return jnp.mean(x, axis=(1, 2))
