"""Per-example loss weights from a one-step look-ahead on a clean split: L2RW and MWN.

Pure functions over arbitrary pytrees; nothing here knows about images (imports from the
package only the pytree helpers of ``implicit``). Notation: θ = ``params``, ℓ_i(θ) the
per-example train losses of a batch (B,), L_val(θ) the clean validation loss, α the
look-ahead step. The *virtual step* with per-example weights w is

    θ'(w) = θ − α ∇_θ Σ_i w_i ℓ_i(θ),

and since θ' is affine in w, dθ'/dw_i = −α ∇ℓ_i(θ) exactly, so

    ∂L_val(θ'(w))/∂w_i = −α ⟨∇ℓ_i(θ), ∇L_val(θ'(w))⟩ = −α (J v)_i,

with J the (B, P) Jacobian of ℓ at θ and v = ∇L_val(θ'). :func:`lookahead` computes it
forward-over-reverse without materialising J: one linearisation of θ ↦ ℓ(θ) (one train
forward), v by one reverse pass through the validation loss at θ', and J v by one
forward-mode product of the stored linearisation; θ' itself needs Jᵀw, the transposed
product (a backward pass), skipped when w = 0. The same linearisation also gives the
gradient of the final weighted loss, Jᵀw, with no new forward (:func:`l2rw_value_and_grad`,
:func:`mwn_value_and_grad`).

- :func:`l2rw_weights` / :func:`l2rw_value_and_grad`: Learning to Reweight Examples
  (Ren, Zeng, Yang, Urtasun, ICML 2018).
- :func:`mwn_init`, :func:`mwn_apply`, :func:`mwn_example_weights`, :func:`mwn_meta_grad`,
  :func:`mwn_value_and_grad`, :func:`mwn_optimizer`: Meta-Weight-Net (Shu, Xie, Yi, Zhao, Zhou, Xu, Meng, NeurIPS 2019).

    >>> w, info = l2rw_weights(per_example_loss, val_loss, params, batch, val_batch)
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from autodo_jax._src.implicit import tree as T
from autodo_jax._src.implicit.checks import check_output

PyTree = Any
PerExampleLoss = Callable[[PyTree, PyTree], Any]   # (params, batch) -> (B,) | ((B,), aux)
ValLoss = Callable[[PyTree, PyTree], jax.Array]    # (params, batch) -> scalar

__all__ = [
    "Lookahead", "lookahead", "L2RWInfo", "l2rw_weights", "l2rw_value_and_grad",
    "normalize_positive", "MWN_HIDDEN", "mwn_init", "mwn_apply", "mwn_example_weights",
    "MWNInfo", "mwn_meta_grad", "mwn_value_and_grad", "mwn_optimizer", "MWN_LEARNING_RATE",
    "MWN_WEIGHT_DECAY",
]


class Lookahead(NamedTuple):
    """The result of :func:`lookahead` (arrays only: jit-able).

    Attributes:
      example_grads: (B,) ∂L_val(θ'(w))/∂w_i at the given w.
      weights: (B,) the w of the virtual step (zeros when ``weight_fn`` is None).
      losses: (B,) per-example train losses ℓ_i(θ).
      aux: the auxiliary output of ``per_example_loss`` (None without ``has_aux``).
      val_loss: scalar L_val(θ'(w)).
      val_grad: ∇L_val(θ'(w)), the pytree of ``params``.
    """

    example_grads: jax.Array
    weights: jax.Array
    losses: jax.Array
    aux: Any
    val_loss: jax.Array
    val_grad: PyTree


def _validate(per_example_loss, val_loss, params, train_batch, val_batch, has_aux) -> None:
    for name, fn in (("per_example_loss", per_example_loss), ("val_loss", val_loss)):
        if not callable(fn):
            raise TypeError(f"`{name}` must be callable, got {type(fn).__name__}")
    losses_only = (lambda p, b: per_example_loss(p, b)[0]) if has_aux else per_example_loss
    check_output(losses_only, "per_example_loss", "(params, train_batch)",
                 (params, train_batch), "vector", culprit="params")
    check_output(val_loss, "val_loss", "(params, val_batch)", (params, val_batch),
                 "scalar", culprit="params")


def lookahead(
    per_example_loss: PerExampleLoss,
    val_loss: ValLoss,
    params: PyTree,
    train_batch: PyTree,
    val_batch: PyTree,
    *,
    step_size: float | jax.Array = 1.0,
    weight_fn: Callable[[jax.Array], jax.Array] | None = None,
    has_aux: bool = False,
) -> Lookahead:
    """Gradient of the validation loss after one virtual SGD step w.r.t. the example weights.

    Computes ∂/∂w_i L_val(θ − α ∇_θ Σ_j w_j ℓ_j(θ)) = −α ⟨∇ℓ_i(θ), ∇L_val(θ')⟩ (exact:
    the virtual step is affine in w) at w = ``weight_fn(stop_gradient(ℓ(θ)))``, or at
    w = 0 (then θ' = θ) when ``weight_fn`` is None. Every parameter of ``params`` takes
    the virtual step; it is plain SGD (no momentum, no weight decay).

    Args:
      per_example_loss: ``(params, batch) -> (B,)`` float losses, or ``((B,), aux)`` with
        ``has_aux`` (e.g. new BatchNorm statistics). Randomness must come from ``batch``.
      val_loss: ``(params, batch) -> scalar`` clean validation loss.
      params: pytree θ (float leaves).
      train_batch, val_batch: any pytrees passed to the losses.
      step_size: α > 0 of the virtual step (a float or a traced scalar, e.g. the current
        learning rate).
      weight_fn: ``losses (B,) -> w (B,)``; gradients do not flow into its input.
      has_aux: ``per_example_loss`` returns ``(losses, aux)``.

    Returns:
      A :class:`Lookahead`.

    Raises:
      TypeError / ValueError at trace time for non-callables, a per-example loss that is
      not (B,) float or a validation loss that is not a float scalar.
    """
    return _lookahead(per_example_loss, val_loss, params, train_batch, val_batch,
                      step_size, weight_fn, has_aux)[0]


def _lookahead(per_example_loss, val_loss, params, train_batch, val_batch, step_size,
               weight_fn, has_aux) -> tuple[Lookahead, Callable[[jax.Array], PyTree]]:
    """:func:`lookahead` plus ``pullback: c (B,) -> Σ_i c_i ∇_θ ℓ_i(θ)``, the gradient of
    a weighted loss with c held fixed, from the stored linearisation (no new forward)."""
    _validate(per_example_loss, val_loss, params, train_batch, val_batch, has_aux)
    fn = lambda p: per_example_loss(p, train_batch)
    if has_aux:
        losses, jvp, aux = jax.linearize(fn, params, has_aux=True)
    else:
        (losses, jvp), aux = jax.linearize(fn, params), None
    transpose = jax.linear_transpose(jvp, params)
    pullback = lambda c: transpose(jnp.asarray(c).astype(losses.dtype))[0]
    if weight_fn is None:
        weights, virtual = jnp.zeros_like(losses), params
    else:
        weights = jax.lax.stop_gradient(weight_fn(jax.lax.stop_gradient(losses)))
        virtual = T.axpy(-step_size, pullback(weights), params)
    val, v = jax.value_and_grad(val_loss)(virtual, val_batch)
    example_grads = -step_size * jvp(v)
    return Lookahead(example_grads, weights, losses, aux, val, v), pullback


# ------------------------------------------------------------------------------- L2RW
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
    la, pullback = _lookahead(per_example_loss, val_loss, params, train_batch, val_batch,
                              step_size, None, has_aux)
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


# ------------------------------------------------------------------------- Meta-Weight-Net
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
    la, pullback = _lookahead(
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
