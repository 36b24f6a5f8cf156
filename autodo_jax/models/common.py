"""Shared pieces of the model zoo: the encoder + linear-head wrapper and its helpers.

Every model built by :func:`autodo_jax.models.get_model` is a :class:`Classifier` whose
variables are laid out as::

    {"params": {"encoder": {...}, "head": {"kernel": (D, C), "bias": (C,)}},
     "batch_stats": {"encoder": {...}}}      # {} for models without BatchNorm

The head is always computed in float32 on float32 features, whatever the encoder's compute
dtype, so that :func:`head_apply` reproduces ``model.apply`` exactly.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any
Dtype = Any

# He-normal on fan-out, as torchvision's ResNets and the usual WideResNet code initialise.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(train: bool, dtype: Dtype, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=dtype, param_dtype=jnp.float32, name=name)


def conv(features: int, kernel: int, stride: int, dtype: Dtype, padding: int | None = None,
         name: str | None = None) -> nn.Conv:
    """Bias-free square convolution with PyTorch-style symmetric padding (kernel // 2)."""
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                   param_dtype=jnp.float32, kernel_init=conv_kernel_init, name=name)


class Classifier(nn.Module):
    """An encoder followed by a linear classification head named ``head``.

    Attributes:
        encoder: module mapping images (B, H, W, C) and ``train`` to features (B, D).
        num_classes: number of output classes C.
    """

    encoder: nn.Module
    num_classes: int

    def setup(self) -> None:
        self.head = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32)

    def encode(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Features (B, D) in float32 of images x (B, H, W, C)."""
        return self.encoder(x, train=train).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits (B, C) in float32 of images x (B, H, W, C)."""
        return self.head(self.encode(x, train=train))


def init_variables(model: Classifier, key: jax.Array, input_shape: Sequence[int]) -> dict:
    """Initial variables ``{"params": ..., "batch_stats": ...}`` (batch_stats maybe ``{}``).

    Args:
        model: a :class:`Classifier`.
        key: PRNG key.
        input_shape: shape of one image (H, W, C) or of a batch (B, H, W, C).
    """
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (H, W, C) or (B, H, W, C), got {input_shape}")
    variables = _jit_init(model, shape)(key)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


@functools.lru_cache(maxsize=32)
def _jit_init(model: Classifier, shape: tuple[int, ...]):
    def init(key):
        # Threefry streams for dozens of parameter arrays take XLA:CPU tens of seconds to
        # compile; an "rbg" key seeded deterministically from ``key`` compiles several times faster.
        seed = jax.random.bits(key, (4,), jnp.uint32)
        rbg = jax.random.wrap_key_data(seed, impl="rbg")
        return model.init(rbg, jnp.zeros(shape, jnp.float32), train=False)
    return jax.jit(init)


def encode(model: Classifier, params: PyTree, batch_stats: PyTree, x: jax.Array, *,
           train: bool) -> tuple[jax.Array, PyTree]:
    """Encoder features and updated BatchNorm statistics.

    Args:
        model: a :class:`Classifier`.
        params: the full ``params`` collection ({"encoder": ..., "head": ...}); only the
            encoder part is read.
        batch_stats: the ``batch_stats`` collection ({"encoder": ...} or {}).
        x: images (B, H, W, C).
        train: BatchNorm on batch statistics (and returning updated running statistics)
            when True; running statistics (inference mode) when False.

    Returns:
        (features (B, D) float32, new batch_stats) ; new batch_stats is ``batch_stats``
        itself when ``train`` is False or the model has no BatchNorm.
    """
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if train and batch_stats:
        feats, updates = model.apply(variables, x, train=True, method="encode",
                                     mutable=["batch_stats"])
        return feats, updates["batch_stats"]
    return model.apply(variables, x, train=train, method="encode"), batch_stats


def head_apply(head_params: PyTree, features: jax.Array) -> jax.Array:
    """Logits (B, C) = features (B, D) @ kernel (D, C) + bias (C,), in float32."""
    return jnp.dot(features.astype(jnp.float32), head_params["kernel"]) + head_params["bias"]


def count_params(tree: PyTree) -> int:
    """Total number of scalars in a pytree of arrays."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
