"""Model zoo: Flax Linen classifiers split into ``encoder`` and a linear ``head``.

``get_model(name, num_classes, dtype=...)`` builds one of ``MODEL_NAMES``. Variables:
``{"params": {"encoder": ..., "head": {"kernel": (D, C), "bias": (C,)}},
"batch_stats": {"encoder": ...}}`` (``{}`` without BatchNorm); see
:mod:`autodo_jax.models.common` for :func:`encode`, :func:`head_apply`, :func:`init_variables`.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from autodo_jax.models.common import (Classifier, count_params, encode, head_apply,
                                      init_variables)
from autodo_jax.models.lenet import LeNetEncoder, SmallCNNEncoder
from autodo_jax.models.resnet import mnist_resnet_encoder, resnet18_encoder
from autodo_jax.models.wrn import WideResNetEncoder

_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "lenet": lambda dtype: LeNetEncoder(dtype=dtype),
    "small_cnn": lambda dtype: SmallCNNEncoder(dtype=dtype),
    "mnist_resnet": mnist_resnet_encoder,
    "resnet18": resnet18_encoder,
    "wrn28_2": lambda dtype: WideResNetEncoder(depth=28, widen=2, dtype=dtype),
    "wrn28_10": lambda dtype: WideResNetEncoder(depth=28, widen=10, dtype=dtype),
}
MODEL_NAMES: tuple[str, ...] = tuple(_ENCODERS)


def get_model(name: str, num_classes: int, *, dtype=jnp.float32) -> Classifier:
    """Build a classifier by name.

    Args:
        name: one of ``MODEL_NAMES`` (lenet, small_cnn, mnist_resnet, resnet18, wrn28_2,
            wrn28_10).
        num_classes: number of classes C (>= 2).
        dtype: compute dtype of the encoder (e.g. ``jnp.bfloat16``); parameters, BatchNorm
            statistics, features and logits stay float32.

    Returns:
        An unbound :class:`Classifier` module.
    """
    if name not in _ENCODERS:
        raise ValueError(f"model name must be one of {MODEL_NAMES}, got {name!r}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return Classifier(encoder=_ENCODERS[name](jnp.dtype(dtype)), num_classes=int(num_classes))


__all__ = ["Classifier", "MODEL_NAMES", "count_params", "encode", "get_model", "head_apply",
           "init_variables"]
