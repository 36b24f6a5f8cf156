"""Model zoo: Flax Linen classifiers split into ``encoder`` and a linear ``head``.

``get_model(name, num_classes, dtype=...)`` builds one of ``MODEL_NAMES``;
``min_image_size(name)`` is the smallest height and width it takes. Variables:
``{"params": {"encoder": ..., "head": {"kernel": (D, C), "bias": (C,)}},
"batch_stats": {"encoder": ...}}`` (``{}`` without BatchNorm); see
:mod:`autodo_jax.models.common` for :func:`encode`, :func:`head_apply`, :func:`init_variables`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from autodo_jax.models.common import (Classifier, count_params, encode, head_apply,
                                      init_variables)
from autodo_jax.models.lenet import LeNetEncoder, SmallCNNEncoder
from autodo_jax.models.resnet import mnist_resnet_encoder, resnet18_encoder
from autodo_jax.models.wrn import WideResNetEncoder


@dataclasses.dataclass(frozen=True)
class _Entry:
    """A registered encoder: its constructor ``encoder(dtype) -> nn.Module`` and the
    smallest image height and width it takes (its downsampling needs at least one pixel)."""
    encoder: Callable[[jnp.dtype], nn.Module]
    min_image_size: int


_ENCODERS: dict[str, _Entry] = {
    "lenet": _Entry(lambda dtype: LeNetEncoder(dtype=dtype), 16),
    "small_cnn": _Entry(lambda dtype: SmallCNNEncoder(dtype=dtype), 4),
    "mnist_resnet": _Entry(mnist_resnet_encoder, 8),
    "resnet18": _Entry(resnet18_encoder, 32),
    "wrn28_2": _Entry(lambda dtype: WideResNetEncoder(depth=28, widen=2, dtype=dtype), 8),
    "wrn28_10": _Entry(lambda dtype: WideResNetEncoder(depth=28, widen=10, dtype=dtype), 8),
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
    entry = _entry(name)
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return Classifier(encoder=entry.encoder(jnp.dtype(dtype)), num_classes=int(num_classes))


def min_image_size(name: str) -> int:
    """The smallest height and width (pixels) that model ``name`` (one of ``MODEL_NAMES``)
    takes; smaller images leave its feature maps empty."""
    return _entry(name).min_image_size


def _entry(name: str) -> _Entry:
    if name not in _ENCODERS:
        raise ValueError(f"model name must be one of {MODEL_NAMES}, got {name!r}")
    return _ENCODERS[name]


__all__ = ["Classifier", "MODEL_NAMES", "count_params", "encode", "get_model", "head_apply",
           "init_variables", "min_image_size"]
