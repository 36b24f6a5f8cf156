"""``hypergrad``: the implicit-function-theorem hypergradient dL_val(θ*(λ))/dλ."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from autodo_jax._src.implicit import tree as T
from autodo_jax._src.implicit.curvature import (
    CURVATURES,
    MODES,
    empirical_fisher_product,
    gauss_newton_product,
    train_derivatives,
)
from autodo_jax._src.implicit.solvers import Neumann, SolverInfo, neumann

PyTree = Any
SOLVER_BUILDERS = ("identity()", "neumann(iters, alpha, scale)", "cg(iters, damping)",
                   "nystrom(rank, rho, key)")


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
        NaN for solvers other than ``neumann``.
      solution_cosine: cos(u, v); 1 when the solve does not change the direction of v.
    """

    train_grad_norm: jax.Array
    val_grad_norm: jax.Array
    grad_divergence: jax.Array
    residual: jax.Array
    iterations: jax.Array
    finite: jax.Array
    neumann_gap: jax.Array
    solution_cosine: jax.Array


def _check_leaves(name: str, tree: PyTree) -> None:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    for path, leaf in leaves:
        try:
            dtype = jnp.result_type(leaf)
        except TypeError as e:
            raise TypeError(f"`{name}` leaves must be float arrays; leaf "
                            f"{jax.tree_util.keystr(path)} is {type(leaf).__name__}") from e
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`{name}` leaves must have a floating dtype (bfloat16, float16, "
                            f"float32, float64); leaf {jax.tree_util.keystr(path)} has {dtype}")


def _check_output(fn: Callable, name: str, signature: str, args: tuple, check: str,
                  culprit: str = "hparams") -> Any:
    """Trace ``fn(*args)`` abstractly; raise a ValueError naming ``name`` on failure."""
    try:
        out = jax.eval_shape(fn, *args)
    except Exception as e:  # re-raised with the argument named; the cause stays attached
        raise ValueError(
            f"`{name}`{signature} failed to trace on the given pytrees; check that "
            f"`{culprit}` has the structure and shapes that `{name}` uses "
            f"({type(e).__name__}: {e})") from e
    if check == "scalar":
        bad = not (hasattr(out, "shape") and out.shape == ()
                   and jnp.issubdtype(out.dtype, jnp.floating))
        if bad:
            raise ValueError(f"`{name}` must return a float scalar (shape ()), got {out}")
    elif check == "vector":
        bad = not (hasattr(out, "shape") and len(out.shape) == 1
                   and jnp.issubdtype(out.dtype, jnp.floating))
        if bad:
            raise ValueError(f"`{name}` must return per-example float losses of shape (B,), "
                             f"got {out}")
    return out


def _validate(train_loss, val_loss, params, hparams, train_batch, val_batch, solver,
              curvature, mode, train_outputs, output_loss, per_example_loss) -> None:
    for name, fn in (("train_loss", train_loss), ("val_loss", val_loss)):
        if not callable(fn):
            raise TypeError(f"`{name}` must be callable, got {type(fn).__name__}")
    if not isinstance(curvature, str) or curvature not in CURVATURES:
        raise ValueError(f"`curvature` must be one of {CURVATURES}, got {curvature!r}")
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
    if isinstance(solver, str) or not callable(solver):
        raise ValueError(f"`solver` must be a solver built by one of {SOLVER_BUILDERS} (or a "
                         f"callable (matvec, b) -> (x, SolverInfo)), got {solver!r}")
    _check_leaves("params", params)
    _check_leaves("hparams", hparams)
    _check_output(train_loss, "train_loss", "(params, hparams, train_batch)",
                  (params, hparams, train_batch), "scalar")
    _check_output(val_loss, "val_loss", "(params, val_batch)", (params, val_batch), "scalar",
                  culprit="params")
    if curvature == "gauss_newton":
        for name, fn in (("train_outputs", train_outputs), ("output_loss", output_loss)):
            if not callable(fn):
                raise ValueError(f'curvature="gauss_newton" needs `{name}` to be a callable, '
                                 f"got {fn!r}")
        outs = _check_output(train_outputs, "train_outputs", "(params, hparams, train_batch)",
                             (params, hparams, train_batch), "any")
        _check_output(output_loss, "output_loss", "(outputs, hparams, train_batch)",
                      (outs, hparams, train_batch), "scalar")
    if curvature == "empirical_fisher":
        if not callable(per_example_loss):
            raise ValueError('curvature="empirical_fisher" needs `per_example_loss` to be a '
                             f"callable (params, hparams, batch) -> (B,), got {per_example_loss!r}")
        _check_output(per_example_loss, "per_example_loss", "(params, hparams, train_batch)",
                      (params, hparams, train_batch), "vector")


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
      solver: ``solver(matvec, b) -> (x, SolverInfo)``; default ``neumann()`` (J = 5,
        α = 0.01, IFT scale). Also ``identity()``, ``cg(...)``, ``nystrom(...)``.
      curvature: one of ``CURVATURES``: "hessian" (exact), "gauss_newton" (needs
        ``train_outputs`` and ``output_loss``), "empirical_fisher" (needs
        ``per_example_loss``).
      train_outputs: ``(params, hparams, batch) -> outputs pytree`` (e.g. logits (B, C)).
      output_loss: ``(outputs, hparams, batch) -> scalar`` with
        output_loss(train_outputs(θ, λ, b), λ, b) == train_loss(θ, λ, b) (not checked).
      per_example_loss: ``(params, hparams, batch) -> (B,)`` whose mean is train_loss.
      mode: one of ``MODES`` ("joint", "linearize", "jvp"): how derivatives are formed;
        same result, different cost (see benchmarks/hypergrad_modes.py).

    Returns:
      ``(hparam_grads, info)``: hparam_grads has the pytree structure of ``hparams``;
      info is a :class:`HypergradInfo`.

    Raises:
      ValueError / TypeError at trace time for unknown names, bad solver arguments,
      non-float leaves, non-scalar losses or pytrees the losses cannot consume.
    """
    solver = neumann() if solver is None else solver
    _validate(train_loss, val_loss, params, hparams, train_batch, val_batch, solver,
              curvature, mode, train_outputs, output_loss, per_example_loss)
    v = jax.grad(val_loss)(params, val_batch)
    loss = lambda th, lam: train_loss(th, lam, train_batch)
    g, hvp, mixed = train_derivatives(loss, params, hparams, mode)
    if curvature == "gauss_newton":
        matvec = gauss_newton_product(lambda th: train_outputs(th, hparams, train_batch),
                                      lambda z: output_loss(z, hparams, train_batch), params)
    elif curvature == "empirical_fisher":
        matvec = empirical_fisher_product(
            lambda th: per_example_loss(th, hparams, train_batch), params)
    else:
        matvec = hvp
    u, solver_info = solver(matvec, v)
    chex.assert_trees_all_equal_shapes(u, v)  # a solver returns x with the tree of b
    hparam_grads = T.neg(mixed(u))
    chex.assert_trees_all_equal_shapes_and_dtypes(hparam_grads, T.abstract(hparams))

    g_norm, v_norm, u_norm = T.norm(g), T.norm(v), T.norm(u)
    if isinstance(solver, Neumann):
        target = T.scale(solver.prefactor * (solver.iters + 1), v)
        gap = T.relative(T.norm(T.sub(u, target)), u_norm)
    else:
        gap = jnp.full((), jnp.nan, g_norm.dtype)
    info = HypergradInfo(
        train_grad_norm=g_norm,
        val_grad_norm=v_norm,
        grad_divergence=g_norm**2 + v_norm**2 - 2 * T.vdot(g, v),
        residual=solver_info.residual,
        iterations=solver_info.iterations,
        finite=(solver_info.finite & T.all_finite(g, v, u, hparam_grads)),
        neumann_gap=gap,
        solution_cosine=T.relative(T.vdot(u, v), u_norm * v_norm),
    )
    return hparam_grads, info
