"""Per-example hyperparameter tables indexed by example id, with row-sparse updates.

A table is a ``dict[str, jax.Array]``. Every leaf has leading axis N (one row per training
example, e.g. ``{"aug_p": (N, 7), "aug_m": (N, 7), "weight": (N,), "soft": (N, C)}``) or
leading axis 1 (a *shared* field, e.g. AutoDO's lambda^A_SHA, broadcast to every example).
A leaf with leading axis 1 is always treated as shared (so a per-example table with N = 1
behaves like a shared one; the results are the same for valid ids).

Cost model: :func:`gather` and :func:`apply_rows` touch only the B rows named by ``ids``
(gather, sort-based combination of duplicates, scatter): O(B) work and no N-sized
temporaries. Under ``jax.jit`` with the table and optimizer state donated, XLA updates
the buffers in place.

Ids: int32/int64 of shape (B,). When ``ids`` are concrete (not traced) they are checked
and bad ids raise ``ValueError`` (negative, >= N, a non-integer dtype, or, with a mesh,
not in the shard of the device that holds them). Under ``jit`` values cannot be checked:
an invalid id (including, with a mesh, an id outside its device's shard) gathers zeros
and its row update is dropped (scatter ``mode="drop"``); a negative id is never wrapped
around. Shared leaves still receive the gradients of every batch entry.
Duplicate ids in one batch are *summed*: the row is updated once with the sum of their
gradients (what a dense optimizer would see after a scatter-add).

Sharded tables (``mesh`` given): per-example leaves are sharded by row over the mesh axis
``"data"`` (``parallel.shard_table`` pads N to a multiple of the device count), shared
leaves are replicated, and ``ids`` is a global (B,) array sharded ``P("data")`` whose
device-d slice holds only rows of shard d (``parallel.ShardLocalSampler``). Gather and
update then run per device under ``jax.shard_map``; the only collective is the psum of the
shared leaves' gradients (one row each), never a table-sized one.

Row optimizers (:func:`row_sgd`, :func:`row_rmsprop` (global time, the original's),
:func:`row_rmsprop_local` (row-local time, scale-free), :func:`row_adam`) and their state
:class:`RowOptState` live in ``autodo_jax._src.row_optimizers`` and are re-exported here.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from autodo_jax._src.row_optimizers import (
    RowOptimizer,
    RowOptState,
    Table,
    num_table_rows,
    row_adam,
    row_rmsprop,
    row_rmsprop_local,
    row_sgd,
)

__all__ = [
    "DATA_AXIS",
    "RowOptState",
    "RowOptimizer",
    "Table",
    "apply_rows",
    "gather",
    "init_table",
    "num_table_rows",
    "row_adam",
    "row_rmsprop",
    "row_rmsprop_local",
    "row_sgd",
    "shared_keys",
]

DATA_AXIS = "data"


def init_table(initial: Mapping[str, Any], *, dtype: Any = jnp.float32) -> Table:
    """Builds a table from initial arrays.

    Args:
      initial: ``{name: array}``; each array has leading axis N (per-example) or 1 (shared),
        all per-example arrays the same N (N may be 0).
      dtype: floating storage dtype of every leaf (float32, bfloat16, float64, ...).

    Returns:
      ``{name: jax.Array}`` cast to ``dtype``.

    Raises:
      ValueError: on an empty mapping, a non-string key, a 0-d array, mismatched N or a
        non-floating ``dtype``.
    """
    if not isinstance(initial, Mapping) or not initial:
        raise ValueError(f"initial: expected a non-empty mapping name -> array, got {initial!r}")
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise ValueError(f"dtype: expected a floating dtype, got {dtype}")
    table = {}
    for name, value in initial.items():
        if not isinstance(name, str):
            raise ValueError(f"initial: keys must be strings, got {name!r}")
        arr = jnp.asarray(value, dtype)
        if arr.ndim == 0:
            raise ValueError(f"initial[{name!r}]: expected leading row axis, got a scalar")
        table[name] = arr
    num_table_rows(table)  # validates one common N
    return table


def shared_keys(table: Table) -> frozenset[str]:
    """Names of the shared (leading axis 1) leaves of ``table``."""
    return frozenset(k for k, v in table.items() if v.shape[0] == 1)


def _num_shards(mesh: Optional[Mesh]) -> int:
    if mesh is None:
        return 1
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh: expected an axis named {DATA_AXIS!r}, got {mesh.axis_names}")
    return mesh.shape[DATA_AXIS]


def _check_ids(ids: Any, n: int, mesh: Optional[Mesh]) -> jax.Array:
    """Validates ids statically, and by value when they are concrete; returns int32 ids."""
    dtype = getattr(ids, "dtype", None)
    if dtype is None:
        ids = np.asarray(ids)
        dtype = ids.dtype if ids.size else np.dtype(np.int32)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"ids: expected an integer array, got dtype {dtype}")
    if np.ndim(ids) != 1:
        raise ValueError(f"ids: expected shape (B,), got {np.shape(ids)}")
    shards = _num_shards(mesh)
    if ids.shape[0] % shards:
        raise ValueError(f"ids: batch size {ids.shape[0]} is not a multiple of the {shards} mesh devices")
    if mesh is not None and n % shards:
        raise ValueError(f"table: N={n} rows do not split over {shards} devices; use parallel.shard_table")
    concrete = not isinstance(ids, jax.core.Tracer) and getattr(ids, "is_fully_addressable", True)
    if concrete and ids.shape[0]:
        host = np.asarray(ids).astype(np.int64)
        bad = (host < 0) | (host >= n)
        if bad.any():
            raise ValueError(f"ids: expected values in [0, {n}), got {host[bad][:5].tolist()}")
        if shards > 1:
            owner = host.reshape(shards, -1) // (n // shards)
            if (owner != np.arange(shards)[:, None]).any():
                raise ValueError("ids: with a mesh, device d's slice of ids must hold only rows of shard d")
    return ids.astype(jnp.int32) if dtype != jnp.int32 else ids


def _sanitize(ids: jax.Array, n: int, offset: jax.Array | int) -> jax.Array:
    """Local row ids; anything outside [0, n) becomes n (gathers 0, scatter dropped)."""
    local = ids - offset
    return jnp.where((local >= 0) & (local < n), local, n)


def _gather_local(table: Table, ids: jax.Array, shared: frozenset[str], offset) -> Table:
    b = ids.shape[0]
    out = {}
    for k, leaf in table.items():
        if k in shared:
            out[k] = jnp.broadcast_to(leaf, (b,) + leaf.shape[1:])
        elif leaf.shape[0] == 0:  # N = 0: every id is invalid
            out[k] = jnp.zeros((b,) + leaf.shape[1:], leaf.dtype)
        else:
            out[k] = leaf.at[_sanitize(ids, leaf.shape[0], offset)].get(mode="fill", fill_value=0)
    return out


def _table_specs(table: Table, shared: frozenset[str]) -> dict[str, P]:
    return {k: P() if k in shared else P(DATA_AXIS) for k in table}


def _shard_offset(n_local: int):
    return lax.axis_index(DATA_AXIS) * n_local


def gather(table: Table, ids: Any, *, mesh: Optional[Mesh] = None) -> Table:
    """Rows of ``table`` for a batch of example ids.

    Args:
      table: ``{name: (N, ...) | (1, ...)}``.
      ids: int (B,) row ids. With ``mesh``, a global array sharded ``P("data")`` whose
        device-d slice holds only rows of shard d.
      mesh: optional mesh with axis ``"data"`` over which the table is row-sharded.

    Returns:
      ``{name: (B, ...)}`` in the table's storage dtype; shared leaves are broadcast.
      Under jit, invalid ids give zero rows (see module docstring).
    """
    n = num_table_rows(table)
    ids = _check_ids(ids, n, mesh)
    shared = shared_keys(table)
    if mesh is None:
        rows = _gather_local(table, ids, shared, 0)
    else:
        n_local = n // _num_shards(mesh)

        def local(tbl, idx):
            return _gather_local(tbl, idx, shared, _shard_offset(n_local))

        specs = _table_specs(table, shared)
        rows = jax.shard_map(local, mesh=mesh, in_specs=(specs, P(DATA_AXIS)),
                             out_specs={k: P(DATA_AXIS) for k in table})(table, ids)
    chex.assert_tree_shape_prefix(rows, ids.shape)  # {name: (B, ...)}
    return rows


def _compute_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def _update_rows(optimizer, table, state, ids, grads, shared, offset, count, t):
    """Row path of apply_rows on one shard: combine duplicates, gather, update, scatter."""
    n = state.last.shape[0]
    keys = [k for k in table if k not in shared]
    b = ids.shape[0]
    new_table, new_slots, new_last, new_visits = {}, {s: {} for s in state.slots}, state.last, state.visits
    if not keys or b == 0 or n == 0:
        return new_table, new_slots, new_last, new_visits
    local = _sanitize(ids, n, offset)
    uids, inv = jnp.unique(local, size=b, fill_value=n, return_inverse=True)
    uids = jnp.where(uids < n, uids, n + jnp.arange(b, dtype=uids.dtype))  # distinct, dropped
    inv = inv.reshape(b)

    clamped = jnp.minimum(uids, n - 1)  # rows read for padding slots are never written back

    def take(leaf):
        return leaf.at[clamped].get(mode="promise_in_bounds")

    def put(leaf, rows):
        return leaf.at[uids].set(rows.astype(leaf.dtype), mode="drop", unique_indices=True)

    g = {k: jax.ops.segment_sum(grads[k].astype(_compute_dtype(table[k].dtype)), inv, num_segments=b) for k in keys}
    slot_rows = {s: {k: take(state.slots[s][k]) for k in keys} for s in state.slots}
    last_rows = take(state.last)
    delta = t - last_rows
    visits = take(state.visits) + 1
    updates, slot_rows = optimizer.update(g, slot_rows, count, delta, visits)
    for k in keys:
        new_table[k] = put(table[k], take(table[k]).astype(g[k].dtype) + updates[k])
        for s in state.slots:
            new_slots[s][k] = put(state.slots[s][k], slot_rows[s][k])
    # max(last_rows, t) == t (last <= count < t). Writing it so makes the scatter depend on
    # the gather of ``last`` above; otherwise XLA copies all N entries to keep the order.
    new_last = put(state.last, jnp.maximum(last_rows, t))
    new_visits = put(state.visits, visits)
    return new_table, new_slots, new_last, new_visits


def _apply_local(optimizer, table, state, ids, grads, shared, offset, axis_name):
    count = state.count
    t = count + 1
    new_table, new_slots, new_last, new_visits = _update_rows(
        optimizer, table, state, ids, grads, shared, offset, count, t)
    keys = [k for k in table if k in shared]
    if keys:
        g = {k: jnp.sum(grads[k].astype(_compute_dtype(table[k].dtype)), axis=0, keepdims=True) for k in keys}
        if axis_name is not None:
            g = lax.psum(g, axis_name)
        slots = {s: {k: state.slots[s][k] for k in keys} for s in state.slots}
        # A shared row is touched by every step: delta = 1, visits = t.
        updates, slots = optimizer.update(g, slots, count, jnp.ones((1,), jnp.int32),
                                          jnp.reshape(t, (1,)))
        for k in keys:
            new_table[k] = (table[k].astype(g[k].dtype) + updates[k]).astype(table[k].dtype)
            for s in state.slots:
                new_slots[s][k] = slots[s][k].astype(state.slots[s][k].dtype)
    for k in table:  # untouched leaves (e.g. empty batch) keep their arrays
        new_table.setdefault(k, table[k])
        for s in state.slots:
            new_slots[s].setdefault(k, state.slots[s][k])
    ordered = {k: new_table[k] for k in table}
    slots = {s: {k: new_slots[s][k] for k in table} for s in state.slots}
    return ordered, RowOptState(count=t, last=new_last, slots=slots, visits=new_visits)


def _check_state_and_grads(optimizer, table, state, grads, batch):
    n = num_table_rows(table)
    if not isinstance(state, RowOptState):
        raise ValueError(f"opt_state: expected RowOptState from optimizer.init, got {type(state).__name__}")
    if (tuple(state.slots) != optimizer.slot_names or state.last.shape != (n,)
            or state.visits.shape != (n,)):
        raise ValueError(
            f"opt_state: expected slots {optimizer.slot_names} and last, visits of shape ({n},), "
            f"got {tuple(state.slots)}, {state.last.shape} and {state.visits.shape}"
        )
    for s, slot in state.slots.items():
        if set(slot) != set(table) or any(slot[k].shape != table[k].shape for k in table):
            raise ValueError(f"opt_state.slots[{s!r}]: expected leaves shaped like the table")
    if not isinstance(grads, Mapping) or set(grads) != set(table):
        keys = sorted(grads) if isinstance(grads, Mapping) else type(grads).__name__
        raise ValueError(f"grads: expected keys {sorted(table)}, got {keys}")
    for k, leaf in table.items():
        want = (batch,) + leaf.shape[1:]
        if tuple(grads[k].shape) != want:
            raise ValueError(f"grads[{k!r}]: expected shape {want} (as gather returns), got {tuple(grads[k].shape)}")
        if not jnp.issubdtype(grads[k].dtype, jnp.floating):
            raise ValueError(f"grads[{k!r}]: expected a floating dtype, got {grads[k].dtype}")


def apply_rows(
    optimizer: RowOptimizer,
    table: Table,
    opt_state: RowOptState,
    ids: Any,
    grads: Mapping[str, Any],
    *,
    mesh: Optional[Mesh] = None,
) -> tuple[Table, RowOptState]:
    """One optimizer step on the rows named by ``ids`` (O(B) work).

    Args:
      optimizer: a :class:`RowOptimizer` (``row_rmsprop_local(...)``, ``row_rmsprop``,
        ``row_adam``, ``row_sgd``).
      table: ``{name: (N, ...) | (1, ...)}``.
      opt_state: ``optimizer.init(table)`` (or a later state).
      ids: int (B,) row ids, as for :func:`gather`. Duplicates are summed.
      grads: ``{name: (B, ...)}``, the structure of ``gather(table, ids)``: per-example
        gradients of the loss with respect to the gathered rows. Shared leaves receive
        the batch sum of their gradients.
      mesh: optional mesh with axis ``"data"`` (see :func:`gather`).

    Returns:
      ``(new_table, new_opt_state)``; every step (even one with no valid row) counts as one
      dense optimizer step: ``count`` increases by one and untouched rows decay lazily.
    """
    n = num_table_rows(table)
    ids = _check_ids(ids, n, mesh)
    _check_state_and_grads(optimizer, table, opt_state, grads, ids.shape[0])
    grads = {k: jnp.asarray(grads[k]) for k in table}
    shared = shared_keys(table)
    if mesh is None:
        out = _apply_local(optimizer, table, opt_state, ids, grads, shared, 0, None)
    else:
        n_local = n // _num_shards(mesh)

        def local(tbl, state, idx, g):
            return _apply_local(optimizer, tbl, state, idx, g, shared, _shard_offset(n_local),
                                DATA_AXIS)

        specs = _table_specs(table, shared)
        state_specs = RowOptState(count=P(), last=P(DATA_AXIS),
                                  slots={s: specs for s in opt_state.slots}, visits=P(DATA_AXIS))
        fn = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(specs, state_specs, P(DATA_AXIS), {k: P(DATA_AXIS) for k in table}),
            out_specs=(specs, state_specs),
        )
        out = fn(table, opt_state, ids, grads)
    # Same trees, shapes and dtypes as the inputs: donated buffers are updated in place.
    chex.assert_trees_all_equal_shapes_and_dtypes(out, (table, opt_state))
    return out
