"""Learning to Reweight Examples (Ren, Zeng, Yang, Urtasun, ICML 2018) over the look-ahead."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from autodo_jax._src.implicit import tree as T
from autodo_jax._src.reweight.lookahead import (PerExampleLoss, PyTree, ValLoss,
                                                lookahead_and_pullback)


class L2RWInfo(NamedTuple):
    """Diagnostics of :func:`l2rw_weights` (scalar arrays unless noted).

    Attributes:
      example_grads: (B,) ∂L_val/∂ε_i at ε = 0 (negative = the example helps).
      val_loss: L_val(θ) on the validation batch.
      num_positive: int32, examples with a positive weight.
      finite: bool, False when a loss, a gradient or a weight is NaN or infinite.
    """

    example_grads: jax.Array
    val_loss: jax.Array
    num_positive: jax.Array
    finite: jax.Array


def normalize_positive(scores: jax.Array) -> jax.Array:
    """w = max(s, 0) / (Σ max(s, 0) + δ), δ = 1 if the sum is 0 else 0 (Ren et al.):
    weights sum to 1, or are all 0 when no score is positive. (B,) -> (B,)."""
    clipped = jnp.maximum(scores, 0)
    total = jnp.sum(clipped)
    return clipped / (total + (total == 0).astype(total.dtype))


def _l2rw(per_example_loss, val_loss, params, train_batch, val_batch, step_size, has_aux):
    la, pullback = lookahead_and_pullback(per_example_loss, val_loss, params, train_batch,
                                          val_batch, step_size, None, has_aux)
    weights = normalize_positive(-la.example_grads)
    info = L2RWInfo(example_grads=la.example_grads, val_loss=la.val_loss,
                    num_positive=jnp.sum(weights > 0).astype(jnp.int32),
                    finite=T.all_finite(la.losses, la.example_grads, la.val_grad))
    return la, pullback, weights, info


def l2rw_weights(
    per_example_loss: PerExampleLoss,
    val_loss: ValLoss,
    params: PyTree,
    train_batch: PyTree,
    val_batch: PyTree,
    *,
    step_size: float | jax.Array = 1.0,
    has_aux: bool = False,
) -> tuple[jax.Array, L2RWInfo]:
    """Learning-to-Reweight example weights of a train batch (Ren et al., ICML 2018).

    The paper (Algorithm 1): perturb each example's loss by ε_i (ε = 0), take one virtual
    SGD step of *all* model parameters on Σ_i ε_i ℓ_i with the training step size α,
    and set w̃_i = max(0, −∂L_val(θ'(ε))/∂ε_i |_{ε=0}), w = w̃ / (Σ w̃ + δ(Σ w̃)) with
    δ(0) = 1: when every w̃ is 0 the weights stay all 0 (the batch is skipped, no
    division by zero). Weights are recomputed at every step and never stored. At ε = 0
    the virtual step is the identity (θ' = θ), so −∂L_val/∂ε_i = α ⟨∇ℓ_i(θ), ∇L_val(θ)⟩:
    α only scales the scores, and the normalised weights do not depend on it (the
    authors' code uses α = 1, the default here). Cost: one train forward, one forward-mode
    product and one validation forward + backward.

    Args:
      per_example_loss: ``(params, batch) -> (B,)`` (or ``((B,), aux)`` with ``has_aux``).
      val_loss: ``(params, batch) -> scalar`` on clean data (the paper: mean loss over
        the clean batch).
      params, train_batch, val_batch: as for :func:`lookahead`.
      step_size: α > 0 of the virtual step.
      has_aux: as for :func:`lookahead`.

    Returns:
      ``(weights (B,), L2RWInfo)``: weights ≥ 0 summing to 1 (or all 0); use them as
      ``Σ_i w_i ℓ_i`` (a weighted sum, not a mean), with stop-gradient.
    """
    _, _, weights, info = _l2rw(per_example_loss, val_loss, params, train_batch, val_batch,
                                step_size, has_aux)
    return weights, info


def l2rw_value_and_grad(
    per_example_loss: PerExampleLoss,
    val_loss: ValLoss,
    params: PyTree,
    train_batch: PyTree,
    val_batch: PyTree,
    *,
    step_size: float | jax.Array = 1.0,
    has_aux: bool = False,
) -> tuple[tuple[jax.Array, Any], PyTree, jax.Array, L2RWInfo]:
    """The L2RW training objective Σ_i w_i ℓ_i(θ) and its gradient, w from
    :func:`l2rw_weights` held fixed, reusing the look-ahead's linearisation (no second
    train forward).

    Returns:
      ``((loss, aux), grads, weights (B,), info)``: grads has the pytree of ``params``;
      aux is None without ``has_aux``.
    """
    la, pullback, weights, info = _l2rw(per_example_loss, val_loss, params, train_batch,
                                        val_batch, step_size, has_aux)
    loss = jnp.sum(weights * la.losses)
    return (loss, la.aux), pullback(weights), weights, info
