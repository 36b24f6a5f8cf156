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

from autodo_jax._src.implicit import tree as T

PyTree = Any
Matvec = Callable[[PyTree], PyTree]
MODES = ("joint", "linearize", "jvp")
CURVATURES = ("hessian", "gauss_newton", "empirical_fisher")


def train_derivatives(
    loss: Callable[[PyTree, PyTree], jax.Array], params: PyTree, hparams: PyTree, mode: str
) -> tuple[PyTree, Matvec, Matvec]:
    """g = ∇_θ loss, the Hessian product and the mixed product for one ``mode``.

    Args:
      loss: (params, hparams) -> scalar.
      params, hparams: the point (θ, λ).
      mode: one of ``MODES``.

    Returns:
      (g, hvp, mixed): g has the structure of params; hvp(w) = H w (params -> params);
      mixed(u) = Mᵀu = ∇_λ⟨∇_θ loss, u⟩ (params -> hparams).
    """
    grad_theta = jax.grad(loss)
    if mode == "joint":
        g, pullback = jax.vjp(grad_theta, params, hparams)
        return g, (lambda w: pullback(w)[0]), (lambda u: pullback(u)[1])

    def mixed(u):
        directional = lambda lam: jax.jvp(lambda th: loss(th, lam), (params,), (u,))[1]
        return jax.grad(directional)(hparams)

    if mode == "linearize":
        g, hvp = jax.linearize(lambda th: grad_theta(th, hparams), params)
        return g, hvp, mixed
    g = grad_theta(params, hparams)
    hvp = lambda w: jax.jvp(lambda th: grad_theta(th, hparams), (params,), (w,))[1]
    return g, hvp, mixed


def gauss_newton_product(
    outputs_fn: Callable[[PyTree], PyTree],
    output_loss: Callable[[PyTree], jax.Array],
    params: PyTree,
) -> Matvec:
    """w ↦ Jᵀ H_out J w with J = ∂outputs/∂θ and H_out = ∇²_z output_loss at z = outputs(θ).

    ``outputs_fn`` runs once (``jax.linearize``); every product is one JVP of the stored
    linearisation, one output-space Hessian product and its transpose.
    """
    outputs, jac = jax.linearize(outputs_fn, params)
    jac_t = jax.linear_transpose(jac, params)
    _, out_hvp = jax.linearize(jax.grad(output_loss), outputs)
    return lambda w: jac_t(out_hvp(jac(w)))[0]


def empirical_fisher_product(per_example: Callable[[PyTree], jax.Array], params: PyTree) -> Matvec:
    """w ↦ (1/B) Σ_i ∇ℓ_i ⟨∇ℓ_i, w⟩ = (1/B) Jᵀ J w with J the (B, P) Jacobian of the
    per-example losses ℓ (their mean is the train loss). Matrix-free: one JVP and one
    transposed JVP of a single linearisation per product."""
    losses, jac = jax.linearize(per_example, params)
    jac_t = jax.linear_transpose(jac, params)
    inv_b = 1.0 / losses.shape[0] if losses.shape[0] else 0.0
    return lambda w: T.scale(inv_b, jac_t(jac(w))[0])
