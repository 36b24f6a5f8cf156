"""The one-step look-ahead gradient that L2RW and MW-Net share (see ``autodo_jax.reweight``)."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from autodo_jax._src.implicit import tree as T
from autodo_jax._src.implicit.checks import check_output

PyTree = Any
PerExampleLoss = Callable[[PyTree, PyTree], Any]   # (params, batch) -> (B,) | ((B,), aux)
ValLoss = Callable[[PyTree, PyTree], jax.Array]    # (params, batch) -> scalar


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
    return lookahead_and_pullback(per_example_loss, val_loss, params, train_batch, val_batch,
                                  step_size, weight_fn, has_aux)[0]


def lookahead_and_pullback(per_example_loss: PerExampleLoss, val_loss: ValLoss, params: PyTree,
                           train_batch: PyTree, val_batch: PyTree, step_size: float | jax.Array,
                           weight_fn: Callable[[jax.Array], jax.Array] | None, has_aux: bool,
                           ) -> tuple[Lookahead, Callable[[jax.Array], PyTree]]:
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
