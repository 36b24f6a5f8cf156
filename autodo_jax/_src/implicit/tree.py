"""Small pytree linear-algebra helpers shared by the solvers and ``hypergrad``.

Every reduction accumulates in an *accumulation dtype*: the promotion of float32 with all
leaf dtypes (float64 when any leaf is float64, float32 for float32/bfloat16 trees). Updates
are computed in that dtype and cast back to each leaf's own dtype, so a pytree keeps its
mixed dtypes through a solve.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def abstract(tree: PyTree) -> PyTree:
    """``jax.ShapeDtypeStruct`` of every leaf as JAX holds it (numpy float64 becomes float32
    unless x64 is on): what a traced function receives for ``tree``."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jax.dtypes.canonicalize_dtype(
            jnp.result_type(x))), tree)


def acc_dtype(*trees: PyTree) -> jnp.dtype:
    """Accumulation dtype of some pytrees: float32 promoted with every leaf dtype."""
    dtypes = [jnp.result_type(x) for t in trees for x in jax.tree_util.tree_leaves(t)]
    return jnp.result_type(jnp.float32, *dtypes)


def vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Real inner product ⟨a, b⟩ summed over all leaves (scalar in the accumulation dtype)."""
    dt = acc_dtype(a, b)
    terms = [
        jnp.sum(x.astype(dt) * y.astype(dt))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    ]
    return sum(terms, jnp.zeros((), dt))


def norm(a: PyTree) -> jax.Array:
    """Euclidean norm over all leaves; NaN when a leaf holds a NaN; its gradient at 0 is 0."""
    sq = vdot(a, a)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), sq * 0)


def scale(c: jax.Array | float, a: PyTree) -> PyTree:
    """c · a, computed per leaf in the promotion of the leaf dtype and float32."""
    return jax.tree_util.tree_map(lambda x: (c * _up(x)).astype(x.dtype), a)


def axpy(c: jax.Array | float, x: PyTree, y: PyTree) -> PyTree:
    """y + c · x (leafwise, result in y's leaf dtypes)."""
    return jax.tree_util.tree_map(lambda xi, yi: (_up(yi) + c * _up(xi)).astype(yi.dtype), x, y)


def add(a: PyTree, b: PyTree) -> PyTree:
    """a + b leafwise (dtype of a)."""
    return jax.tree_util.tree_map(lambda x, y: (x + y).astype(x.dtype), a, b)


def sub(a: PyTree, b: PyTree) -> PyTree:
    """a - b leafwise (dtype of a)."""
    return jax.tree_util.tree_map(lambda x, y: (x - y).astype(x.dtype), a, b)


def neg(a: PyTree) -> PyTree:
    """-a leafwise."""
    return jax.tree_util.tree_map(jnp.negative, a)


def select(pred: jax.Array, a: PyTree, b: PyTree) -> PyTree:
    """Leafwise ``where(pred, a, b)`` for a scalar predicate."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def all_finite(*trees: PyTree) -> jax.Array:
    """True when every element of every leaf is finite (True for empty trees)."""
    flags = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree_util.tree_leaves(t)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def relative(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, or num itself where den == 0 (so 0/0 reads as 0, not NaN); NaN stays NaN."""
    zero = den == 0
    return jnp.where(zero, num, num / jnp.where(zero, 1, den))


def _up(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
