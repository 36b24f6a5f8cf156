"""Meta-Weight-Net (Shu, Xie, Yi, Zhao, Zhou, Xu, Meng, NeurIPS 2019) over the look-ahead."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from autodo_jax._src.implicit import tree as T
from autodo_jax._src.reweight.lookahead import (PerExampleLoss, PyTree, ValLoss,
                                                lookahead_and_pullback)

#: Hidden units of the weighting MLP (the paper: one hidden layer of 100 units).
MWN_HIDDEN = 100
#: Adam learning rate and (coupled, PyTorch-style) weight decay of the weighting MLP in
#: the authors' released noisy-label code (see :func:`mwn_optimizer`).
MWN_LEARNING_RATE = 1e-3
MWN_WEIGHT_DECAY = 1e-4


def mwn_init(key: jax.Array, hidden: int = MWN_HIDDEN, dtype: Any = jnp.float32) -> PyTree:
    """Parameters of the weighting MLP 1 -> ``hidden`` (ReLU) -> 1 (sigmoid).

    Initialised like PyTorch's ``nn.Linear`` default (the authors' framework): every
    kernel and bias uniform in ±1/√fan_in.

    Returns:
      ``{"hidden": {"kernel": (1, H), "bias": (H,)}, "output": {"kernel": (H, 1),
      "bias": (1,)}}``.
    """
    if not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
    k = jax.random.split(key, 4)
    u = lambda kk, shape, fan_in: jax.random.uniform(
        kk, shape, dtype, -1.0 / fan_in ** 0.5, 1.0 / fan_in ** 0.5)
    return {"hidden": {"kernel": u(k[0], (1, hidden), 1), "bias": u(k[1], (hidden,), 1)},
            "output": {"kernel": u(k[2], (hidden, 1), hidden), "bias": u(k[3], (1,), hidden)}}


def mwn_apply(mwn_params: PyTree, losses: jax.Array) -> jax.Array:
    """V(ℓ; φ) = sigmoid(W₂ relu(W₁ ℓ + b₁) + b₂) per example: (B,) -> (B,) in (0, 1)."""
    x = jnp.asarray(losses)[:, None].astype(mwn_params["hidden"]["kernel"].dtype)
    h = jax.nn.relu(x @ mwn_params["hidden"]["kernel"] + mwn_params["hidden"]["bias"])
    return jax.nn.sigmoid(h @ mwn_params["output"]["kernel"] + mwn_params["output"]["bias"])[:, 0]


def mwn_example_weights(mwn_params: PyTree, losses: jax.Array, *,
                        normalize: bool = False) -> jax.Array:
    """Per-example weights of the batch loss Σ_i w_i ℓ_i: w = V(ℓ)/B (the paper's
    equations, a weighted mean), or V(ℓ)/Σ V(ℓ) with ``normalize`` (the authors'
    class-imbalance code). The MLP's input is the loss value without gradient."""
    v = mwn_apply(mwn_params, jax.lax.stop_gradient(losses))
    return v / jnp.sum(v) if normalize else v / v.shape[0]


class MWNInfo(NamedTuple):
    """Diagnostics of :func:`mwn_meta_grad` (scalar arrays unless noted).

    Attributes:
      example_grads: (B,) ∂L_val(θ̂)/∂w_i at the MLP's weights (the look-ahead gradient).
      weights: (B,) w(φ) of the virtual step.
      losses: (B,) per-example train losses ℓ_i(θ).
      val_loss: L_val(θ̂(φ)), the meta loss after the virtual step.
      finite: bool, False when a loss or a gradient is NaN or infinite.
    """

    example_grads: jax.Array
    weights: jax.Array
    losses: jax.Array
    val_loss: jax.Array
    finite: jax.Array


def _mwn(per_example_loss, val_loss, params, mwn_params, train_batch, val_batch, step_size,
         normalize, has_aux):
    la, pullback = lookahead_and_pullback(
        per_example_loss, val_loss, params, train_batch, val_batch, step_size,
        lambda l: mwn_example_weights(mwn_params, l, normalize=normalize), has_aux)
    losses = jax.lax.stop_gradient(la.losses)
    _, vjp = jax.vjp(lambda phi: mwn_example_weights(phi, losses, normalize=normalize),
                     mwn_params)
    grads = vjp(la.example_grads.astype(la.weights.dtype))[0]
    info = MWNInfo(example_grads=la.example_grads, weights=la.weights, losses=la.losses,
                   val_loss=la.val_loss,
                   finite=T.all_finite(la.losses, la.example_grads, la.val_grad, grads))
    return la, pullback, grads, info


def mwn_meta_grad(
    per_example_loss: PerExampleLoss,
    val_loss: ValLoss,
    params: PyTree,
    mwn_params: PyTree,
    train_batch: PyTree,
    val_batch: PyTree,
    *,
    step_size: float | jax.Array,
    normalize: bool = False,
    has_aux: bool = False,
) -> tuple[PyTree, MWNInfo]:
    """Meta-gradient of Meta-Weight-Net: d/dφ L_val(θ − α ∇_θ Σ_i w_i(φ) ℓ_i(θ)).

    w_i(φ) = :func:`mwn_example_weights` (the MLP sees ℓ_i without gradient, as in the
    paper). Exact for this one-step unrolled objective: the look-ahead gradient
    ∂L_val/∂w (:func:`lookahead`) pulled back through w(φ). The paper's Algorithm 1:
    (1) virtual step θ̂(φ) of all model parameters, plain SGD with the classifier's
    current learning rate α, on the MLP-weighted mean loss; (2) φ ← φ − β ∇_φ
    L_meta(θ̂(φ)) on a clean meta batch (mean cross-entropy); (3) the real step on
    (1/B) Σ_i V(ℓ_i(θ); φ_new) ℓ_i(θ) with the *updated* φ. :func:`mwn_value_and_grad`
    does all three.

    Args:
      per_example_loss, val_loss, params, train_batch, val_batch, has_aux: as for
        :func:`lookahead`.
      mwn_params: the MLP's parameters (:func:`mwn_init`).
      step_size: α, the classifier's current learning rate (the authors' code).
      normalize: normalise the weights by their sum instead of by B.

    Returns:
      ``(mwn_grads, MWNInfo)``: mwn_grads has the pytree of ``mwn_params``.
    """
    _, _, grads, info = _mwn(per_example_loss, val_loss, params, mwn_params, train_batch,
                             val_batch, step_size, normalize, has_aux)
    return grads, info


def mwn_value_and_grad(
    per_example_loss: PerExampleLoss,
    val_loss: ValLoss,
    params: PyTree,
    mwn_params: PyTree,
    mwn_opt_state: PyTree,
    train_batch: PyTree,
    val_batch: PyTree,
    *,
    step_size: float | jax.Array,
    optimizer: optax.GradientTransformation | None = None,
    normalize: bool = False,
    has_aux: bool = False,
) -> tuple[tuple[jax.Array, Any], PyTree, tuple[PyTree, PyTree], jax.Array, MWNInfo]:
    """One Meta-Weight-Net iteration up to the model's update (steps 1-3 of
    :func:`mwn_meta_grad`): the meta-gradient, the MLP's optimizer step, then the model's
    training objective Σ_i w_i(φ_new) ℓ_i(θ) and its gradient, reusing the look-ahead's
    linearisation (no second train forward).

    Args:
      mwn_opt_state: ``optimizer.init(mwn_params)``.
      optimizer: the MLP's optax optimizer (default :func:`mwn_optimizer`).
      Others: as for :func:`mwn_meta_grad`.

    Returns:
      ``((loss, aux), grads, (new_mwn_params, new_mwn_opt_state), weights (B,), info)``:
      grads has the pytree of ``params``; weights are w(φ_new); info is that of the
      meta-gradient (at the old φ).
    """
    optimizer = mwn_optimizer() if optimizer is None else optimizer
    la, pullback, mwn_grads, info = _mwn(per_example_loss, val_loss, params, mwn_params,
                                         train_batch, val_batch, step_size, normalize,
                                         has_aux)
    updates, mwn_opt_state = optimizer.update(mwn_grads, mwn_opt_state, mwn_params)
    mwn_params = optax.apply_updates(mwn_params, updates)
    weights = mwn_example_weights(mwn_params, la.losses, normalize=normalize)
    loss = jnp.sum(weights * la.losses)
    return (loss, la.aux), pullback(weights), (mwn_params, mwn_opt_state), weights, info


def mwn_optimizer(learning_rate: float | optax.Schedule = MWN_LEARNING_RATE,
                  weight_decay: float = MWN_WEIGHT_DECAY) -> optax.GradientTransformation:
    """The weighting MLP's optimizer: Adam (β 0.9/0.999, ε 1e-8) at a constant 1e-3 with
    PyTorch-style (coupled) weight decay 1e-4, as the authors' released noisy-label code
    (xjtushujun/meta-weight-net, ``MW-Net.py``). Their class-imbalance code uses SGD
    (lr 1e-5, Nesterov momentum 0.9, weight decay 5e-4) with sum-normalised weights
    (``normalize=True``) instead; the paper's Algorithm 1 writes plain gradient steps."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))
