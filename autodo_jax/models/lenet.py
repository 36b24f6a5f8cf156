"""Small encoders for tests and MNIST-size data: LeNet-5 and the calibration CNN."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from autodo_jax.models.common import Dtype


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 ('VALID': an odd last row/column is dropped), (B, H, W,
    C) -> (B, H//2, W//2, C): the forward of ``nn.max_pool(x, (2, 2), strides=(2, 2))``.

    Written as a max over a reshaped axis pair rather than a ``reduce_window``: the gradient
    is then elementwise (the window's maximum gets the cotangent; tied maxima share it
    equally) instead of XLA's ``select_and_scatter``, which XLA:CPU runs ~2.5x slower
    (measured; 2x the whole small_cnn hyper step).
    """
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class LeNetEncoder(nn.Module):
    """LeNet-5: conv6(5x5)-pool-conv16(5x5)-pool-dense120-dense84, ReLU; features D = 84.

    Convolutions are unpadded (28x28 inputs give 16x4x4 before the dense layers).
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no BatchNorm or dropout
        x = x.astype(self.dtype)
        for feats in (6, 16):
            x = max_pool_2x2(nn.relu(nn.Conv(feats, (5, 5), padding="VALID", dtype=self.dtype)(x)))
        x = x.reshape(x.shape[0], -1)
        for feats in (120, 84):
            x = nn.relu(nn.Dense(feats, dtype=self.dtype)(x))
        return x


class SmallCNNEncoder(nn.Module):
    """conv32(3x3)-pool-conv64(3x3)-pool-dense128, ReLU, no BatchNorm; features D = 128.

    The model of the mnist5k calibration (AUTODO.md); convolutions use 'SAME' padding.
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = x.astype(self.dtype)
        for feats in (32, 64):
            x = max_pool_2x2(nn.relu(nn.Conv(feats, (3, 3), padding="SAME", dtype=self.dtype)(x)))
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(128, dtype=self.dtype)(x))
