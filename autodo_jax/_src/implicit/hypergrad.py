"""``hypergrad``: the implicit-function-theorem hypergradient dL_val(θ*(λ))/dλ."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from autodo_jax._src.implicit import checks
from autodo_jax._src.implicit import tree as T
from autodo_jax._src.implicit.curvature import curvature_product, train_derivatives
from autodo_jax._src.implicit.solvers import DEFAULT_SOLVER, Neumann, SolverInfo

PyTree = Any


class HypergradInfo(NamedTuple):
    """Diagnostics of one ``hypergrad`` call (scalar arrays; vmap adds a leading axis).

    Attributes:
      train_grad_norm: ‖g‖, g = ∇_θ L_train.
      val_grad_norm: ‖v‖, v = ∇_θ L_val.
      grad_divergence: ‖g‖² + ‖v‖² − 2⟨g, v⟩ = ‖g − v‖² with the raw v (the original
        logs it with v replaced by its last Neumann term).
      residual: solver relative residual ‖A u − v‖/‖v‖ (see the solver for A).
      iterations: int32 effective solver iterations.
      finite: bool, False when anything computed (g, v, u, the hypergradient, the residual)
        has a NaN or Inf.
      neumann_gap: ‖S − (J+1)v‖/‖S‖ with S = Σ_{j=0..J}(I − αH)^j v the unscaled Neumann
        series (0 means the solve equals (J+1)·v, i.e. the identity solver up to scale);
        NaN for solvers other than ``neumann`` and for ``alpha="auto"``.
      solution_cosine: cos(u, v); 1 when the solve does not change the direction of v.
      unused_hparams: int32 number of ``hparams`` leaves that ∇_θ L_train does not depend
        on at all (read from the program, not the data): their mixed derivative, and so
        their hypergradient, is structurally zero. Equal to the number of leaves when the
        train loss ignores ``hparams``.
      loss_gap: |L̃ − L_train| / |L_train| at θ, with L̃ the train loss as the curvature
        substitute splits it (output_loss(train_outputs(θ)) for "gauss_newton", the mean of
        per_example_loss for "empirical_fisher"); non-zero means the split is not the train
        loss (e.g. an L2 term on θ not routed through ``train_outputs``), so the curvature
        misses that term's curvature. NaN for "hessian".
    """

    train_grad_norm: jax.Array
    val_grad_norm: jax.Array
    grad_divergence: jax.Array
    residual: jax.Array
    iterations: jax.Array
    finite: jax.Array
    neumann_gap: jax.Array
    solution_cosine: jax.Array
    unused_hparams: jax.Array
    loss_gap: jax.Array


def hypergrad(
    train_loss: Callable[[PyTree, PyTree, PyTree], jax.Array],
    val_loss: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    hparams: PyTree,
    train_batch: PyTree,
    val_batch: PyTree,
    *,
    solver: Callable[..., tuple[PyTree, SolverInfo]] | None = None,
    curvature: str = "hessian",
    train_outputs: Callable[[PyTree, PyTree, PyTree], PyTree] | None = None,
    output_loss: Callable[[PyTree, PyTree, PyTree], jax.Array] | None = None,
    per_example_loss: Callable[[PyTree, PyTree, PyTree], jax.Array] | None = None,
    mode: str = "joint",
) -> tuple[PyTree, HypergradInfo]:
    """Implicit hypergradient of the validation loss with respect to the hyperparameters.

    With θ*(λ) a stationary point of L_train(·, λ) (∇_θ L_train = 0), the implicit function
    theorem gives dθ*/dλ = −H⁻¹ ∂²L_train/∂θ∂λ, so

        dL_val(θ*(λ))/dλ = −(∂²L_train/∂λ∂θ) · H⁻¹ ∇_θ L_val,

    evaluated at the given θ (assumed close to θ*). The result is a *descent* gradient for
    λ (subtract it). Nothing is materialised: u ≈ C⁻¹ v comes from ``solver`` using
    curvature-vector products (C = H, or its Gauss-Newton / empirical-Fisher substitute),
    then −∇_λ⟨∇_θ L_train, u⟩ is one reverse pass. ``neumann(scale="original")`` makes the
    result 1/α times this (the original AutoDO's scale). ``val_loss`` must not depend on λ.

    Args:
      train_loss: ``(params, hparams, batch) -> float scalar``. Randomness must come from
        ``batch`` (e.g. a key leaf) so repeated evaluations see the same sample. Parts that
        do not depend on ``params`` (a frozen encoder) run once per call in mode "joint".
      val_loss: ``(params, batch) -> float scalar``.
      params: pytree θ differentiated implicitly (float leaves; any shapes, empty allowed).
      hparams: pytree λ (float leaves); the result has its structure, shapes and dtypes.
      train_batch, val_batch: any pytrees passed through to the losses.
      solver: ``solver(matvec, b) -> (x, SolverInfo)``; default ``cg()`` (conjugate
        gradients to a relative residual of 1e-6, at most 100 matvecs: the IFT
        hypergradient for a positive-definite curvature). Also ``identity()``,
        ``neumann(...)`` (AutoDO's), ``nystrom(...)``.
      curvature: one of ``CURVATURES``: "hessian" (exact), "gauss_newton" (needs
        ``train_outputs`` and ``output_loss``), "empirical_fisher" (needs
        ``per_example_loss``).
      train_outputs: ``(params, hparams, batch) -> outputs pytree`` (e.g. logits (B, C)).
        A term of the train loss that reads θ directly (an L2 penalty) must be reached
        through the outputs too (return θ as one of them), or its curvature is lost.
      output_loss: ``(outputs, hparams, batch) -> scalar`` with
        output_loss(train_outputs(θ, λ, b), λ, b) == train_loss(θ, λ, b) (measured:
        ``info.loss_gap``).
      per_example_loss: ``(params, hparams, batch) -> (B,)`` whose mean is train_loss.
      mode: one of ``MODES`` ("joint", "linearize", "jvp"): how derivatives are formed;
        same result, different cost (see benchmarks/hypergrad_modes.py).

    Returns:
      ``(hparam_grads, info)``: hparam_grads has the pytree structure of ``hparams``;
      info is a :class:`HypergradInfo`.

    Raises:
      ValueError / TypeError at trace time for unknown names, a solver builder passed
      uncalled, bad solver arguments, non-float leaves, non-scalar losses or pytrees the
      losses cannot consume (naming the argument most likely at fault).
    """
    solver = DEFAULT_SOLVER if solver is None else solver
    checks.check_names(curvature, mode, solver)
    checks.check_losses(train_loss, val_loss, params, hparams, train_batch, val_batch)
    checks.check_curvature_functions(curvature, params, hparams, (train_batch,),
                                     train_outputs, output_loss, per_example_loss)
    v = jax.grad(val_loss)(params, val_batch)
    loss = lambda th, lam: train_loss(th, lam, train_batch)
    value, g, hvp, mixed = train_derivatives(loss, params, hparams, mode)
    matvec, split_value = curvature_product(curvature, hvp, params, hparams, (train_batch,),
                                            train_outputs, output_loss, per_example_loss)
    u, solver_info = solver(matvec, v)
    chex.assert_trees_all_equal_shapes(u, v)  # a solver returns x with the tree of b
    hparam_grads = T.neg(mixed(u))
    chex.assert_trees_all_equal_shapes_and_dtypes(hparam_grads, T.abstract(hparams))

    g_norm, v_norm, u_norm = T.norm(g), T.norm(v), T.norm(u)
    nan = jnp.full((), jnp.nan, g_norm.dtype)
    if isinstance(solver, Neumann) and solver.alpha != "auto":
        target = T.scale(solver.prefactor * (solver_info.iterations + 1), v)
        gap = T.relative(T.norm(T.sub(u, target)), u_norm)
    else:
        gap = nan
    loss_gap = nan if split_value is None else T.relative(
        jnp.abs(split_value - value).astype(nan.dtype), jnp.abs(value).astype(nan.dtype))
    unused = checks.unused_leaves(lambda lam: jax.grad(train_loss)(params, lam, train_batch),
                                  hparams)
    info = HypergradInfo(
        train_grad_norm=g_norm,
        val_grad_norm=v_norm,
        grad_divergence=g_norm**2 + v_norm**2 - 2 * T.vdot(g, v),
        residual=solver_info.residual,
        iterations=solver_info.iterations,
        finite=(solver_info.finite & T.all_finite(g, v, u, hparam_grads)),
        neumann_gap=gap,
        solution_cosine=T.relative(T.vdot(u, v), u_norm * v_norm),
        unused_hparams=jnp.asarray(unused, jnp.int32),
        loss_gap=loss_gap,
    )
    return hparam_grads, info
