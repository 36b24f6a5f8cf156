"""ResNets: the original AutoDO's MNIST "ResNet-18" and the standard ImageNet ResNet-18."""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from autodo_jax.models.common import Dtype, batch_norm, conv


class BasicBlock(nn.Module):
    """Post-activation basic block: conv3x3-BN-act-conv3x3-BN (+ shortcut), act.

    The shortcut is a 1x1 strided convolution + BN when the stride or width changes.
    """

    features: int
    stride: int
    act: Callable[[jax.Array], jax.Array]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = conv(self.features, 3, self.stride, self.dtype)(x)
        y = self.act(batch_norm(train, self.dtype)(y))
        y = conv(self.features, 3, 1, self.dtype)(y)
        y = batch_norm(train, self.dtype)(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = conv(self.features, 1, self.stride, self.dtype)(x)
            x = batch_norm(train, self.dtype)(x)
        return self.act(y + x)


class ResNetEncoder(nn.Module):
    """Stem, stages of BasicBlocks, global average pool; features D = stage_widths[-1].

    Attributes:
        stage_widths: channels per stage.
        stage_strides: stride of each stage's first block.
        blocks_per_stage: BasicBlocks per stage.
        stem_width: channels of the stem convolution.
        stem_kernel: 3 (stride 1, no pooling) or 7 (stride 2 + 3x3/2 max pool, ImageNet).
        act: activation.
        dtype: compute dtype (parameters stay float32).
    """

    stage_widths: Sequence[int]
    stage_strides: Sequence[int]
    blocks_per_stage: int = 2
    stem_width: int = 16
    stem_kernel: int = 3
    act: Callable[[jax.Array], jax.Array] = nn.relu
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.astype(self.dtype)
        stem_stride = 1 if self.stem_kernel == 3 else 2
        x = conv(self.stem_width, self.stem_kernel, stem_stride, self.dtype)(x)
        x = self.act(batch_norm(train, self.dtype)(x))
        if self.stem_kernel != 3:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for width, stride in zip(self.stage_widths, self.stage_strides):
            for b in range(self.blocks_per_stage):
                x = BasicBlock(width, stride if b == 0 else 1, self.act, self.dtype)(x, train)
        return jnp.mean(x, axis=(1, 2))


def mnist_resnet_encoder(dtype: Dtype = jnp.float32) -> ResNetEncoder:
    """The original's MNIST "ResNet-18": 3 stages x 2 blocks, 16/32/64 channels, CELU.

    174,320 encoder parameters; features D = 64.
    """
    return ResNetEncoder((16, 32, 64), (1, 2, 2), stem_width=16, stem_kernel=3,
                         act=nn.celu, dtype=dtype)


def resnet18_encoder(dtype: Dtype = jnp.float32) -> ResNetEncoder:
    """Standard ResNet-18 for ImageNet-size inputs (7x7/2 stem + max pool, ReLU); D = 512."""
    return ResNetEncoder((64, 128, 256, 512), (1, 2, 2, 2), stem_width=64, stem_kernel=7,
                         act=nn.relu, dtype=dtype)
