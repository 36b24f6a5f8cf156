"""AutoDO's loss hyperparameters: loss weights g_W(λ_W) and soft labels g_S(λ_S).

Per-example train losses (all (B,) float32, computed from log-softmax in float32 whatever
the logits' dtype, so float32 and bfloat16 logits are both fine and no log(0) occurs):

  * ``"ce"``: cross-entropy against the given label (soft labels not learned),
  * ``"kl"``: KL(q ‖ p) with q = softmax(λ_S), p = softmax(logits),
  * ``"symmetric_kl"``: ½ [KL(q ‖ p) + KL(p ‖ q)] (the original's choice on distorted data,
    i.e. imbalance ratio ≠ 1 or noise ratio > 0).

The batch loss is ``mean_b(w_b · loss_b)`` with w = softplus(λ_W) / ln 2 (unnormalised
weights, plain batch mean, as in the original). Validation uses plain cross-entropy.

Bad input raises ValueError/TypeError at trace time; label ranges and ``eps`` are checked
when concrete.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LOSS_MODES", "loss_weight", "soft_label_init", "cross_entropy", "soft_label_loss",
    "weighted_per_example", "weighted_mean", "per_example_loss", "per_example_train_loss",
    "train_loss", "val_loss",
]

LOSS_MODES = ("ce", "kl", "symmetric_kl")


def _logits(name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (B, C); got shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating; got dtype {x.dtype}.")
    return x.astype(jnp.result_type(jnp.float32, x.dtype))


def _labels(labels, batch: int, num_classes: int) -> jax.Array:
    labels = jnp.asarray(labels)
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},); got {labels.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integer class ids; got dtype {labels.dtype}.")
    if not isinstance(labels, jax.core.Tracer) and labels.size:
        host = np.asarray(labels)  # concrete: a closed-over array inside jit is not staged
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}); got range [{lo}, {hi}].")
    return labels


def _per_example(name: str, x, batch: int) -> jax.Array:
    x = jnp.asarray(x)
    if x.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},); got {x.shape}.")
    return x.astype(jnp.result_type(jnp.float32, x.dtype))


def loss_weight(lambda_w: jax.Array) -> jax.Array:
    """Per-example loss weight w = softplus(λ_W) / ln 2 (w = 1 at λ_W = 0, always > 0).

    Args:
      lambda_w: any shape, e.g. (B,); computed in at least float32.
    """
    lambda_w = jnp.asarray(lambda_w)
    return jax.nn.softplus(lambda_w.astype(jnp.result_type(jnp.float32, lambda_w.dtype))) / math.log(2.0)


def soft_label_init(labels, num_classes: int, eps: float = 0.05) -> jax.Array:
    """Initial soft-label logits λ_S: d · (onehot(y) − ½), d = log(1 − C + C/ε).

    softmax of a row gives 1 − ε(C−1)/C on the given class and ε/C elsewhere (label
    smoothing with ε).

    Args:
      labels: (N,) integer labels in [0, C).
      num_classes: C >= 2.
      eps: smoothing in (0, 1].

    Returns:
      (N, C) float32 logits.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}.")
    if not 0.0 < float(eps) <= 1.0:
        raise ValueError(f"eps must lie in (0, 1]; got {eps!r}.")
    labels = jnp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,); got shape {labels.shape}.")
    labels = _labels(labels, labels.shape[0], num_classes)
    d = math.log(1.0 - num_classes + num_classes / float(eps))
    return d * (jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) - 0.5)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy −log softmax(logits)[label].

    Args:
      logits: (B, C) float32/bfloat16. labels: (B,) integers in [0, C).

    Returns:
      (B,) float32 (float64 for float64 logits).
    """
    logits = _logits("logits", logits)
    labels = _labels(labels, logits.shape[0], logits.shape[1])
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def soft_label_loss(logits: jax.Array, soft_logits: jax.Array, *, symmetric: bool = False) -> jax.Array:
    """Per-example KL(q ‖ p) or ½[KL(q ‖ p) + KL(p ‖ q)], q = softmax(soft_logits), p = softmax(logits).

    Written as Σ q (log q − log p) with log-softmax terms, so an underflowed probability
    contributes exactly 0 and the gradient reaches both arguments.

    Args:
      logits: (B, C) model logits; soft_logits: (B, C) soft-label logits λ_S.
      symmetric: use the symmetric form.

    Returns:
      (B,) float32.
    """
    logits = _logits("logits", logits)
    soft_logits = _logits("soft_logits", soft_logits)
    if soft_logits.shape != logits.shape:
        raise ValueError(f"soft_logits must match logits {logits.shape}; got {soft_logits.shape}.")
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool; got {symmetric!r}.")
    dtype = jnp.result_type(logits.dtype, soft_logits.dtype)
    log_p = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    log_q = jax.nn.log_softmax(soft_logits.astype(dtype), axis=-1)
    diff = log_q - log_p
    kl_qp = jnp.sum(jnp.exp(log_q) * diff, axis=-1)
    if not symmetric:
        return kl_qp
    return 0.5 * (kl_qp - jnp.sum(jnp.exp(log_p) * diff, axis=-1))


def weighted_per_example(per_example: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """w_b · loss_b (weights not renormalised); ``per_example`` unchanged when ``weights`` is None.

    Args:
      per_example: (B,) losses. weights: (B,) or None.

    Returns:
      (B,) in at least float32.
    """
    per_example = jnp.asarray(per_example)
    if per_example.ndim != 1:
        raise ValueError(f"per_example must be 1-D (B,); got shape {per_example.shape}.")
    per_example = per_example.astype(jnp.result_type(jnp.float32, per_example.dtype))
    if weights is None:
        return per_example
    return _per_example("weights", weights, per_example.shape[0]) * per_example


def weighted_mean(per_example: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """mean_b(w_b · loss_b) (weights not renormalised); plain mean when ``weights`` is None.

    Args:
      per_example: (B,) losses. weights: (B,) or None.

    Returns:
      scalar.
    """
    return jnp.mean(weighted_per_example(per_example, weights))


def per_example_loss(logits: jax.Array, *, mode: str, labels: jax.Array | None = None,
                     soft_logits: jax.Array | None = None) -> jax.Array:
    """Per-example train loss by mode (``LOSS_MODES``).

    Args:
      logits: (B, C) model logits.
      mode: ``"ce"`` (needs ``labels``), ``"kl"`` or ``"symmetric_kl"`` (need ``soft_logits``).
      labels: (B,) given labels. soft_logits: (B, C) λ_S rows.

    Returns:
      (B,) float32.
    """
    if mode not in LOSS_MODES:
        raise ValueError(f"Unknown loss mode {mode!r}; allowed: {LOSS_MODES}.")
    if mode == "ce":
        if labels is None:
            raise ValueError("mode='ce' needs labels.")
        return cross_entropy(logits, labels)
    if soft_logits is None:
        raise ValueError(f"mode={mode!r} needs soft_logits.")
    return soft_label_loss(logits, soft_logits, symmetric=mode == "symmetric_kl")


def per_example_train_loss(logits: jax.Array, *, mode: str, labels: jax.Array | None = None,
                           soft_logits: jax.Array | None = None,
                           lambda_w: jax.Array | None = None) -> jax.Array:
    """Weighted per-example train loss w(λ_W)_b · loss_b; unweighted when ``lambda_w`` is None.

    Args: as ``per_example_loss``, plus ``lambda_w`` (B,) raw weight hyperparameters.

    Returns:
      (B,) float32.
    """
    losses = per_example_loss(logits, mode=mode, labels=labels, soft_logits=soft_logits)
    return weighted_per_example(losses, None if lambda_w is None else loss_weight(lambda_w))


def train_loss(logits: jax.Array, *, mode: str, labels: jax.Array | None = None,
               soft_logits: jax.Array | None = None,
               lambda_w: jax.Array | None = None) -> jax.Array:
    """AutoDO train loss mean_b(w(λ_W)_b · loss_b); unweighted when ``lambda_w`` is None.

    Args: as ``per_example_loss``, plus ``lambda_w`` (B,) raw weight hyperparameters.

    Returns:
      scalar float32.
    """
    return jnp.mean(per_example_train_loss(logits, mode=mode, labels=labels,
                                           soft_logits=soft_logits, lambda_w=lambda_w))


def val_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Validation loss: mean cross-entropy over the (unpadded) examples.

    Args:
      logits: (B, C). labels: (B,). mask: optional (B,) bool/0-1, False for padding rows.

    Returns:
      scalar float32 (0 when the mask is all False).
    """
    losses = cross_entropy(logits, labels)
    if mask is None:
        return jnp.mean(losses)
    m = _per_example("mask", mask, losses.shape[0])
    return jnp.sum(m * losses) / jnp.maximum(jnp.sum(m), 1.0)
