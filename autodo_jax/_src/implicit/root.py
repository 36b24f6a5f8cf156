"""``stationary_point``: make any inner solver differentiable by the implicit function theorem.

The decorated function returns θ*(λ, args), a stationary point of the train loss
(∇_θ L_train(θ*, λ, *args) = 0). Its derivatives are not read from the solver's loop but
from the optimality condition: dθ* = −C⁻¹ (∂_λ∇_θL dλ + ∂_args∇_θL dargs), with C the
curvature (the Hessian, or a Gauss-Newton / empirical-Fisher substitute) inverted by one of
the library's solvers. Built on ``jax.custom_jvp`` with a linear solve that JAX can
transpose, so forward mode (``jvp``), reverse mode (``grad``, ``vjp``), ``jit`` and
``vmap`` all work.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax

from autodo_jax._src.implicit import checks
from autodo_jax._src.implicit import tree as T
from autodo_jax._src.implicit.curvature import curvature_product
from autodo_jax._src.implicit.solvers import DEFAULT_SOLVER

PyTree = Any


def stationary_point(
    train_loss: Callable[..., jax.Array],
    *,
    solver: Callable[..., tuple[PyTree, Any]] | None = None,
    curvature: str = "hessian",
    train_outputs: Callable[..., PyTree] | None = None,
    output_loss: Callable[..., jax.Array] | None = None,
    per_example_loss: Callable[..., jax.Array] | None = None,
) -> Callable[[Callable[..., PyTree]], Callable[..., PyTree]]:
    """Decorator: differentiate ``inner_solve(hparams, *args) -> params`` implicitly.

    Use it on your own inner optimisation loop (the role of jaxopt's ``custom_root``)::

        @stationary_point(train_loss, solver=cg(tol=1e-10))
        def fit(hparams, batch):
            ...                     # any loop: optax steps, Newton, a closed form
            return params           # a stationary point of train_loss(·, hparams, batch)

        jax.grad(lambda lam: val_loss(fit(lam, batch), val_batch))(lam)

    The function is called as is for its value; derivatives with respect to ``hparams``
    and to every float leaf of ``args`` come from the implicit function theorem at the
    returned point, never from differentiating the loop. Integer leaves (labels) get no
    derivative; leaves of ``args`` that ``train_loss`` ignores (an initial θ) get zero,
    which is right when the stationary point does not depend on them. Python values that
    the loop needs as constants (a step count) belong in a closure or
    ``functools.partial``, not in ``args``.

    Args:
      train_loss: ``(params, hparams, *args) -> float scalar``; called with the same
        ``args`` as the decorated function.
      solver: as in :func:`hypergrad` (default ``cg()``); its accuracy is the accuracy of
        the derivatives.
      curvature: "hessian", "gauss_newton" (with ``train_outputs(params, hparams, *args)``
        and ``output_loss(outputs, hparams, *args)``) or "empirical_fisher" (with
        ``per_example_loss(params, hparams, *args) -> (B,)``); see :func:`hypergrad`.

    Returns:
      A decorator; the decorated function has the signature and output of
      ``inner_solve`` and composes with ``jit``, ``vmap``, ``grad``, ``jvp`` and
      ``jacfwd`` / ``jacrev``. Diagnostics of the solve are not returned: call
      :func:`hypergrad` at the solution to read them.

    Raises:
      ValueError at decoration for an unknown curvature or solver; ValueError / TypeError
      while tracing a derivative when the losses do not trace on the solution.
    """
    solver = DEFAULT_SOLVER if solver is None else solver
    checks.check_names(curvature, "joint", solver)
    if not callable(train_loss):
        raise TypeError(f"`train_loss` must be callable, got {type(train_loss).__name__}")

    def decorate(inner_solve: Callable[..., PyTree]) -> Callable[..., PyTree]:
        if not callable(inner_solve):
            raise TypeError("@stationary_point(...) decorates a function "
                            f"(hparams, *args) -> params, got {type(inner_solve).__name__}")

        @jax.custom_jvp
        def solution(hparams, *args):
            return inner_solve(hparams, *args)

        @solution.defjvp
        def solution_jvp(primals, tangents):
            hparams, *args = primals
            theta = inner_solve(hparams, *args)
            checks.check_leaves("the returned params", theta)
            checks.check_output(train_loss, "train_loss", "(params, hparams, *args)",
                                (theta, hparams, *args), "scalar")
            checks.check_curvature_functions(curvature, theta, hparams, tuple(args),
                                             train_outputs, output_loss, per_example_loss)
            grad_theta = lambda th, lam, *a: jax.grad(train_loss)(th, lam, *a)
            # the optimality condition's derivative along the inputs' tangents
            _, rhs = jax.jvp(lambda lam, *a: grad_theta(theta, lam, *a), primals, tangents)
            _, hvp = jax.linearize(lambda th: grad_theta(th, hparams, *args), theta)
            matvec, _ = curvature_product(curvature, hvp, theta, hparams, tuple(args),
                                          train_outputs, output_loss, per_example_loss)
            u, _ = solver(matvec, rhs)
            return theta, T.neg(u)

        return functools.wraps(inner_solve)(solution)

    return decorate
