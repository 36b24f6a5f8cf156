"""Input checks of ``hypergrad`` and ``stationary_point``, run while tracing (no FLOPs).

Each check raises one ValueError / TypeError that names the argument at fault and what is
allowed. :func:`unused_leaves` finds hyperparameters that the train loss's θ-gradient does
not depend on at all (a structurally zero mixed derivative).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend.core import Literal

from autodo_jax._src.implicit import solvers as S
from autodo_jax._src.implicit.curvature import CURVATURES, MODES

PyTree = Any
SOLVER_BUILDERS = ("identity()", "neumann(iters, alpha, scale, tol=...)",
                   "cg(iters, damping, tol)", "nystrom(rank, rho, key)")
_BUILDER_FUNCTIONS = (S.identity, S.neumann, S.cg, S.nystrom)


def check_leaves(name: str, tree: PyTree) -> None:
    """Raise TypeError unless every leaf of ``tree`` is a floating array."""
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


def _trace(fn: Callable, args: tuple) -> tuple[Any, Exception | None]:
    try:
        return jax.eval_shape(fn, *args), None
    except Exception as e:  # reported by the caller with the argument at fault named
        return None, e


def _check_kind(out: Any, name: str, check: str) -> None:
    if check == "scalar":
        if not (hasattr(out, "shape") and out.shape == ()
                and jnp.issubdtype(out.dtype, jnp.floating)):
            raise ValueError(f"`{name}` must return a float scalar (shape ()), got {out}")
    elif check == "vector":
        if not (hasattr(out, "shape") and len(out.shape) == 1
                and jnp.issubdtype(out.dtype, jnp.floating)):
            raise ValueError(f"`{name}` must return per-example float losses of shape (B,), "
                             f"got {out}")


def _trace_failure(name: str, signature: str, hint: str, error: Exception) -> ValueError:
    return ValueError(f"`{name}`{signature} failed to trace on the given pytrees; {hint} "
                      f"({type(error).__name__}: {error})")


def check_output(fn: Callable, name: str, signature: str, args: tuple, check: str,
                 culprit: str = "hparams") -> Any:
    """Trace ``fn(*args)`` abstractly and check its output ("scalar", "vector" or "any").

    Raises a ValueError naming ``name`` and ``culprit`` (the argument to look at) when
    tracing fails, or when the output is not of the ``check`` kind.
    """
    out, error = _trace(fn, args)
    if error is not None:
        raise _trace_failure(name, signature, f"check that `{culprit}` has the structure and "
                             f"shapes that `{name}` uses", error) from error
    _check_kind(out, name, check)
    return out


def check_solver(solver: Any) -> None:
    """Raise ValueError unless ``solver`` is a built solver (or a solver-like callable)."""
    if solver in _BUILDER_FUNCTIONS or (isinstance(solver, type) and issubclass(
            solver, S.SOLVER_CLASSES)):
        raise ValueError(f"`solver` must be a built solver, got the builder "
                         f"`{solver.__name__}` itself; call it, e.g. "
                         f"`solver={solver.__name__.lower()}(...)`")
    if isinstance(solver, str) or isinstance(solver, type) or not callable(solver):
        raise ValueError(f"`solver` must be a solver built by one of {SOLVER_BUILDERS} (or a "
                         f"callable (matvec, b) -> (x, SolverInfo)), got {solver!r}")


def check_names(curvature: Any, mode: Any, solver: Any) -> None:
    """The static choices: curvature, derivative mode and solver."""
    if not isinstance(curvature, str) or curvature not in CURVATURES:
        raise ValueError(f"`curvature` must be one of {CURVATURES}, got {curvature!r}")
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
    check_solver(solver)


def check_curvature_functions(curvature: str, params: PyTree, hparams: PyTree, args: tuple,
                              train_outputs: Callable | None, output_loss: Callable | None,
                              per_example_loss: Callable | None) -> None:
    """The extra functions that "gauss_newton" and "empirical_fisher" need, traced on
    ``(params, hparams, *args)``."""
    signature = "(params, hparams, " + ", ".join(["train_batch"] * len(args)) + ")"
    if curvature == "gauss_newton":
        for name, fn in (("train_outputs", train_outputs), ("output_loss", output_loss)):
            if not callable(fn):
                raise ValueError(f'curvature="gauss_newton" needs `{name}` to be a callable, '
                                 f"got {fn!r}")
        outs = check_output(train_outputs, "train_outputs", signature,
                            (params, hparams, *args), "any")
        check_output(output_loss, "output_loss", "(outputs, hparams, train_batch)",
                     (outs, hparams, *args), "scalar")
    if curvature == "empirical_fisher":
        if not callable(per_example_loss):
            raise ValueError('curvature="empirical_fisher" needs `per_example_loss` to be a '
                             f"callable (params, hparams, batch) -> (B,), got {per_example_loss!r}")
        check_output(per_example_loss, "per_example_loss", signature,
                     (params, hparams, *args), "vector")


def check_losses(train_loss: Callable, val_loss: Callable, params: PyTree, hparams: PyTree,
                 train_batch: PyTree, val_batch: PyTree) -> None:
    """Both losses trace to float scalars; a failure names the argument most likely at
    fault: ``params`` when both losses fail, ``val_batch`` when only ``val_loss`` fails,
    ``train_batch`` when (batches of one structure) ``val_loss`` fails on it too or
    ``train_loss`` works on ``val_batch`` instead, else ``hparams`` and ``train_batch``."""
    for name, fn in (("train_loss", train_loss), ("val_loss", val_loss)):
        if not callable(fn):
            raise TypeError(f"`{name}` must be callable, got {type(fn).__name__}")
    check_leaves("params", params)
    check_leaves("hparams", hparams)
    train_out, train_error = _trace(train_loss, (params, hparams, train_batch))
    val_out, val_error = _trace(val_loss, (params, val_batch))
    if train_error is not None:
        same_kind = (jax.tree_util.tree_structure(train_batch)
                     == jax.tree_util.tree_structure(val_batch))
        if val_error is not None:
            hint = "both losses fail, so check `params` (or both batches)"
        elif same_kind and (_trace(val_loss, (params, train_batch))[1] is not None
                            or _trace(train_loss, (params, hparams, val_batch))[1] is None):
            hint = ("`val_loss` fails on it too, or `train_loss` traces with `val_batch` in "
                    "its place, so check `train_batch` (its structure, shapes and dtypes)")
        else:
            hint = ("`val_loss` traces on `params`, so check `hparams` and `train_batch` "
                    "(their structure and shapes, e.g. per-example leaves against the batch "
                    "size)")
        raise _trace_failure("train_loss", "(params, hparams, train_batch)", hint,
                             train_error) from train_error
    if val_error is not None:
        raise _trace_failure("val_loss", "(params, val_batch)", "`train_loss` traces on "
                             "`params`, so check `val_batch`", val_error) from val_error
    _check_kind(train_out, "train_loss", "scalar")
    _check_kind(val_out, "val_loss", "scalar")


def unused_leaves(fn: Callable[[PyTree], PyTree], hparams: PyTree) -> int:
    """Number of leaves of ``hparams`` that no output of ``fn(hparams)`` depends on.

    Read from the jaxpr of ``fn`` by forward propagation; an equation (a sub-program
    included) counts as depending on every input it takes, so a leaf is reported unused
    only when no data path from it to an output exists: a structural zero, never a guess.
    """
    jaxpr = jax.make_jaxpr(fn)(hparams).jaxpr
    sources: dict[Any, frozenset[int]] = {v: frozenset([i]) for i, v in enumerate(jaxpr.invars)}
    reach = lambda v: frozenset() if isinstance(v, Literal) else sources.get(v, frozenset())
    for eqn in jaxpr.eqns:
        inputs = frozenset().union(*(reach(v) for v in eqn.invars))
        for out in eqn.outvars:
            sources[out] = inputs
    used = frozenset().union(*(reach(v) for v in jaxpr.outvars))
    return len(jaxpr.invars) - len(used)
