"""Curvature-vector products and the mixed derivative, built once per ``hypergrad`` call.

Notation: f(θ, λ) = train_loss(θ, λ, batch), g = ∇_θ f, H = ∂g/∂θ (symmetric),
M = ∂g/∂λ. ``hypergrad`` needs g, products w ↦ C w for a curvature C (H, Gauss-Newton or
empirical Fisher) and the mixed product u ↦ Mᵀu = ∇_λ⟨∇_θ f, u⟩.

Differentiation modes (``MODES``), all exact, differing only in cost:

* ``"joint"``: one ``jax.vjp`` of (θ, λ) ↦ g. Its forward pass is the only train forward;
  Hessian products are its θ-cotangent pullback (reverse-over-reverse; the λ part is dead
  code and removed), the mixed product is its λ-cotangent pullback. Parts of ``train_loss``
  that do not depend on θ (a frozen encoder) are never re-run for a Hessian product.
* ``"linearize"``: ``jax.linearize`` of θ ↦ g (forward-over-reverse, θ-independent work kept
  as residuals) and a separate reverse-over-forward mixed product ∇_λ (jvp_θ f · u): two
  train forwards.
* ``"jvp"``: a fresh forward-over-reverse ``jax.jvp`` of g per Hessian product plus the
  reverse-over-forward mixed product (no stored linearisation; least memory).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from autodo_jax._src.implicit import tree as T

PyTree = Any
Matvec = Callable[[PyTree], PyTree]
MODES = ("joint", "linearize", "jvp")
CURVATURES = ("hessian", "gauss_newton", "empirical_fisher")


def train_derivatives(
    loss: Callable[[PyTree, PyTree], jax.Array], params: PyTree, hparams: PyTree, mode: str
) -> tuple[jax.Array, PyTree, Matvec, Matvec]:
    """The loss value, g = ∇_θ loss, the Hessian product and the mixed product for ``mode``.

    Args:
      loss: (params, hparams) -> scalar.
      params, hparams: the point (θ, λ).
      mode: one of ``MODES``.

    Returns:
      (value, g, hvp, mixed): value = loss(θ, λ) (a scalar); g has the structure of params;
      hvp(w) = H w (params -> params); mixed(u) = Mᵀu = ∇_λ⟨∇_θ loss, u⟩ (params -> hparams).
    """
    def grad_and_value(th, lam):
        value, grad = jax.value_and_grad(loss)(th, lam)
        return grad, value

    if mode == "joint":
        g, pullback, value = jax.vjp(grad_and_value, params, hparams, has_aux=True)
        return value, g, (lambda w: pullback(w)[0]), (lambda u: pullback(u)[1])

    def mixed(u):
        directional = lambda lam: jax.jvp(lambda th: loss(th, lam), (params,), (u,))[1]
        return jax.grad(directional)(hparams)

    grad_theta = lambda th: grad_and_value(th, hparams)
    if mode == "linearize":
        g, hvp, value = jax.linearize(grad_theta, params, has_aux=True)
        return value, g, hvp, mixed
    g, value = grad_theta(params)
    hvp = lambda w: jax.jvp(lambda th: grad_theta(th)[0], (params,), (w,))[1]
    return value, g, hvp, mixed


def curvature_product(
    curvature: str, hvp: Matvec, params: PyTree, hparams: PyTree, args: tuple,
    train_outputs: Callable[..., PyTree] | None,
    output_loss: Callable[..., jax.Array] | None,
    per_example_loss: Callable[..., jax.Array] | None,
) -> tuple[Matvec, jax.Array | None]:
    """w ↦ C w for ``curvature`` at (θ, λ, *args), and the train loss as the substitute
    splits it.

    Args:
      curvature: one of ``CURVATURES``.
      hvp: the exact Hessian product (returned for "hessian").
      params, hparams, args: θ, λ and the remaining arguments of the functions below.
      train_outputs, output_loss: ``(θ, λ, *args) -> outputs`` and ``(outputs, λ, *args) ->
        scalar`` ("gauss_newton").
      per_example_loss: ``(θ, λ, *args) -> (B,)`` ("empirical_fisher").

    Returns:
      (matvec, split_value): split_value is output_loss(train_outputs(θ)) or the mean of
      the per-example losses at θ (None for "hessian"); it should equal the train loss.
    """
    if curvature == "gauss_newton":
        return gauss_newton_product(lambda th: train_outputs(th, hparams, *args),
                                    lambda z: output_loss(z, hparams, *args), params)
    if curvature == "empirical_fisher":
        return empirical_fisher_product(lambda th: per_example_loss(th, hparams, *args),
                                        params)
    return hvp, None


def gauss_newton_product(
    outputs_fn: Callable[[PyTree], PyTree],
    output_loss: Callable[[PyTree], jax.Array],
    params: PyTree,
) -> tuple[Matvec, jax.Array]:
    """w ↦ Jᵀ H_out J w with J = ∂outputs/∂θ and H_out = ∇²_z output_loss at z = outputs(θ),
    and output_loss(outputs(θ)).

    ``outputs_fn`` runs once (``jax.linearize``); every product is one JVP of the stored
    linearisation, one output-space Hessian product and its transpose. Terms of the train
    loss that depend on θ other than through the outputs (an L2 penalty on θ) are missing
    from this curvature unless ``outputs_fn`` also returns what they read (θ itself).
    """
    outputs, jac = jax.linearize(outputs_fn, params)
    jac_t = jax.linear_transpose(jac, params)
    _, out_hvp = jax.linearize(jax.grad(output_loss), outputs)
    return (lambda w: jac_t(out_hvp(jac(w)))[0]), output_loss(outputs)


def empirical_fisher_product(per_example: Callable[[PyTree], jax.Array],
                             params: PyTree) -> tuple[Matvec, jax.Array]:
    """w ↦ (1/B) Σ_i ∇ℓ_i ⟨∇ℓ_i, w⟩ = (1/B) Jᵀ J w with J the (B, P) Jacobian of the
    per-example losses ℓ (their mean should be the train loss), and that mean.

    Matrix-free: one JVP and one transposed JVP of a single linearisation per product.
    A biased curvature: it is not the Hessian even at the optimum (it equals the Fisher
    only when the labels are drawn from the model), so it trades accuracy for cost."""
    losses, jac = jax.linearize(per_example, params)
    jac_t = jax.linear_transpose(jac, params)
    inv_b = 1.0 / losses.shape[0] if losses.shape[0] else 0.0
    return (lambda w: T.scale(inv_b, jac_t(jac(w))[0])), jnp.mean(losses)
