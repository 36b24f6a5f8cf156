"""One data mesh, row-sharded tables, a shard-local id sampler and batch assembly.

Synopsis::

    maybe_initialize_distributed()            # multi-host only when the environment says so
    mesh = make_mesh()                        # 1-D mesh, axis "data", all devices
    table = shard_table(init_table(initial), mesh)      # rows P("data"), N padded
    opt = row_rmsprop(schedule); opt_state = opt.init(table)
    sampler = ShardLocalSampler(num_rows, mesh.size, global_batch_size=256, seed=0)
    ids = sampler.batch_ids(epoch, step)      # device d's slice only holds rows of shard d
    batch = global_batch({"ids": ids, ...}, mesh)        # sharded P("data")
    rows = gather(table, batch["ids"], mesh=mesh)
    table, opt_state = apply_rows(opt, table, opt_state, batch["ids"], grads, mesh=mesh)

Row r of a padded table lives on device ``r // (N_padded / devices)``; padding rows are
appended at the end (rows N .. N_padded-1), hold zeros and are never sampled.
Table checkpoints (Orbax): ``save_tables`` / ``restore_tables``.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import orbax.checkpoint as ocp

from autodo_jax.tables import DATA_AXIS, RowOptState, Table, num_table_rows, shared_keys

__all__ = [
    "ShardLocalSampler",
    "data_sharding",
    "global_batch",
    "make_mesh",
    "maybe_initialize_distributed",
    "padded_num_rows",
    "process_batch_slice",
    "replicated_sharding",
    "restore_tables",
    "row_shardings",
    "save_tables",
    "shard_table",
]


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first ``num_devices`` devices (all if None).

    The axis type is ``Auto`` (the compiler places collectives for code outside
    ``shard_map``), so ordinary data-parallel jitted code needs no sharding annotations.

    Raises:
      ValueError: if ``num_devices`` is not in ``[1, jax.device_count()]``.
    """
    total = jax.device_count()
    n = total if num_devices is None else num_devices
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= total:
        raise ValueError(f"num_devices: expected an int in [1, {total}], got {num_devices!r}")
    return jax.make_mesh((int(n),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n])


def maybe_initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize`` once when the environment describes several
    processes: ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``),
    or a SLURM / Open MPI job with more than one task (cluster auto-detection). Otherwise
    (single host) it does nothing. Must run before any other JAX call."""
    if jax.distributed.is_initialized():
        return
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs: dict[str, Any] = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
        if env.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if env.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
        jax.distributed.initialize(**kwargs)
    elif int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        jax.distributed.initialize()


def data_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P("data"))``: leading axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P())``: a full copy on every device."""
    return NamedSharding(mesh, P())


def padded_num_rows(n: int, num_shards: int) -> int:
    """Smallest multiple of ``num_shards`` that is >= ``n``."""
    if n < 0 or num_shards < 1:
        raise ValueError(f"padded_num_rows: expected n >= 0 and num_shards >= 1, got {n}, {num_shards}")
    return -(-n // num_shards) * num_shards


def _put(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_table(table: Table, mesh: Mesh) -> Table:
    """Pads the per-example leaves to a multiple of the device count (zero rows appended)
    and places them row-sharded ``P("data")``; shared (leading axis 1) leaves replicated.

    Args:
      table: ``{name: (N, ...) | (1, ...)}`` (any placement; every process holds it all).
      mesh: mesh with axis ``"data"``.

    Returns:
      ``{name: (N_padded, ...) | (1, ...)}`` with ``N_padded = padded_num_rows(N, devices)``.
    """
    n = num_table_rows(table)
    n_pad = padded_num_rows(n, mesh.shape[DATA_AXIS])
    shared = shared_keys(table)
    out = {}
    for k, leaf in table.items():
        host = np.asarray(leaf)
        if k in shared:
            out[k] = _put(host, replicated_sharding(mesh))
        else:
            pad = [(0, n_pad - n)] + [(0, 0)] * (host.ndim - 1)
            out[k] = _put(np.pad(host, pad), data_sharding(mesh))
    return out


def process_batch_slice(mesh: Mesh, global_batch_size: int) -> slice:
    """The rows of a global batch that belong to this process's devices (all of them on a
    single host); use it to cut host-local data for :func:`global_batch`."""
    index_map = data_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    starts = sorted(idx[0].indices(global_batch_size)[:2] for idx in index_map.values())
    lo, hi = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in set(starts)) != hi - lo:
        raise ValueError("mesh: this process's devices do not hold one contiguous block of the batch")
    return slice(lo, hi)


def global_batch(host_batch_tree: Any, mesh: Mesh) -> Any:
    """Assembles per-process host data into global arrays sharded ``P("data")`` on axis 0.

    Args:
      host_batch_tree: pytree of arrays with this process's part of the batch on axis 0
        (the whole batch on a single host; see :func:`process_batch_slice`).
      mesh: mesh with axis ``"data"``.

    Returns:
      The same pytree of ``jax.Array`` with global leading size = sum over processes.
    """
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch_tree)


class ShardLocalSampler:
    """Seeded, resumable epochs of example ids whose per-device slices stay in the device's shard.

    Shard d owns rows ``[d * R, (d + 1) * R)`` of the padded table (``R = N_padded /
    num_shards``), of which the real ones (``< num_rows``) are sampled. Every epoch each
    shard draws a fresh permutation of its real rows (seeded by ``(seed, epoch, d)``) and
    cuts it into per-device batches of ``global_batch_size / num_shards``; global batch
    ``step`` is the concatenation over devices, so device d's slice holds rows of shard d
    only. ``steps_per_epoch`` is set by the smallest shard; the remainder of every shard's
    permutation (fewer than a per-device batch plus the padding imbalance, at most
    ``num_shards - 1`` rows) is skipped that epoch. With ``num_shards = 1`` this is a
    seeded per-epoch permutation cut into batches (remainder dropped). Padding rows are
    never returned.

    Args:
      num_rows: real number of rows N.
      num_shards: devices on the data axis.
      global_batch_size: ids per step, a multiple of ``num_shards``.
      seed: non-negative int.
    """

    def __init__(self, num_rows: int, num_shards: int, global_batch_size: int, seed: int):
        for name, value, low in (("num_rows", num_rows, 1), ("num_shards", num_shards, 1),
                                 ("global_batch_size", global_batch_size, 1), ("seed", seed, 0)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if global_batch_size % num_shards:
            raise ValueError(f"global_batch_size: {global_batch_size} is not a multiple of num_shards={num_shards}")
        self.num_rows, self.num_shards, self.seed = int(num_rows), int(num_shards), int(seed)
        self.global_batch_size = int(global_batch_size)
        self.rows_per_shard = padded_num_rows(self.num_rows, self.num_shards) // self.num_shards
        self.device_batch_size = self.global_batch_size // self.num_shards
        starts = np.arange(self.num_shards) * self.rows_per_shard
        self.real_rows_per_shard = np.clip(self.num_rows - starts, 0, self.rows_per_shard)
        self.steps_per_epoch = int(self.real_rows_per_shard.min()) // self.device_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"global_batch_size: {global_batch_size} too large: the smallest of {num_shards} shards "
                f"of {num_rows} rows has {int(self.real_rows_per_shard.min())} rows"
            )
        self._cache: tuple[int, np.ndarray] | None = None

    def epoch_ids(self, epoch: int) -> np.ndarray:
        """All batches of ``epoch``: int32 ``(steps_per_epoch, global_batch_size)``."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        take = self.steps_per_epoch * self.device_batch_size
        parts = []
        for d in range(self.num_shards):
            rng = np.random.default_rng([self.seed, int(epoch), d])
            perm = rng.permutation(int(self.real_rows_per_shard[d]))[:take] + d * self.rows_per_shard
            parts.append(perm.reshape(self.steps_per_epoch, self.device_batch_size))
        ids = np.concatenate(parts, axis=1).astype(np.int32)
        ids.setflags(write=False)
        self._cache = (int(epoch), ids)
        return ids

    def batch_ids(self, epoch: int, step: int) -> np.ndarray:
        """Global batch ``step`` of ``epoch``: int32 ``(global_batch_size,)``."""
        if not isinstance(step, (int, np.integer)) or not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"step: expected an int in [0, {self.steps_per_epoch}), got {step!r}")
        return self.epoch_ids(epoch)[step]


def row_shardings(tree: Any, mesh: Mesh, num_rows: int) -> Any:
    """Shardings for a table, its optimizer state or their abstract shapes: leaves with
    leading size ``num_rows`` (the padded N, != 1) are row-sharded ``P("data")``, all other
    leaves (shared rows, ``count``) replicated. Use for ``jit`` out_shardings and restores."""

    def pick(leaf):
        shape = np.shape(leaf)
        rows = len(shape) >= 1 and shape[0] == num_rows and num_rows != 1
        return data_sharding(mesh) if rows else replicated_sharding(mesh)

    return jax.tree.map(pick, tree)


def save_tables(path: str | os.PathLike, table: Table, opt_state: RowOptState, *, force: bool = False) -> None:
    """Saves ``{"table": table, "opt_state": opt_state}`` with Orbax and waits for it.

    The write goes to a temporary directory committed by rename (Orbax's atomic save), so
    an interrupted save never leaves a half-written checkpoint at ``path``.

    Args:
      path: checkpoint directory (must not exist unless ``force``).
      table: ``{name: (N, ...) | (1, ...)}``, any sharding.
      opt_state: the table's :class:`RowOptState`.
      force: overwrite an existing checkpoint at ``path``.
    """
    path = os.path.abspath(os.fspath(path))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, {"table": table, "opt_state": opt_state}, force=force)
        ckptr.wait_until_finished()


def _compare(saved: Any, expected: Any, n_saved: int, n_expected: int, num_rows: Optional[int]):
    """(errors, keys whose row count differs only by padding) between checkpoint metadata
    and the expected tree; both trees are flattened with paths."""
    flat_saved = dict(jax.tree_util.tree_flatten_with_path(saved)[0])
    flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    errors, repad = [], set()
    for key in sorted(set(flat_saved) | set(flat_expected), key=str):
        name = jax.tree_util.keystr(key)
        if key not in flat_saved or key not in flat_expected:
            errors.append(f"{name}: {'missing in checkpoint' if key not in flat_saved else 'not expected'}")
            continue
        got, want = tuple(flat_saved[key].shape), tuple(np.shape(flat_expected[key]))
        if got == want:
            continue
        padding_only = (
            num_rows is not None and got[1:] == want[1:] and (got[0], want[0]) == (n_saved, n_expected)
            and min(n_saved, n_expected) >= num_rows
        )
        if padding_only:
            repad.add(key)
        else:
            errors.append(f"{name}: checkpoint {got} != expected {want}")
    return errors, repad


def restore_tables(
    path: str | os.PathLike,
    like_table: Table,
    like_opt_state: RowOptState,
    mesh: Optional[Mesh] = None,
    *,
    num_rows: Optional[int] = None,
) -> tuple[Table, RowOptState]:
    """Restores a :func:`save_tables` checkpoint, resharding onto ``mesh``.

    Args:
      path: checkpoint directory.
      like_table: table (arrays or ``jax.ShapeDtypeStruct``) with the expected structure,
        shapes (padded N of the *new* mesh) and dtypes.
      like_opt_state: the matching optimizer state (or its abstract shape).
      mesh: target mesh; rows are placed ``P("data")``, the rest replicated. ``None``:
        the like leaves' own shardings, else the first device.
      num_rows: the real N. When given, the checkpoint's padded N may differ from the
        expected one (another device count): rows ``>= num_rows`` are padding and are
        re-padded with zeros. Those leaves are read whole onto one device per process
        first. Without it, shapes must match exactly.

    Returns:
      ``(table, opt_state)`` as new arrays.

    Raises:
      ValueError: when the checkpoint's structure or any leaf shape differs from the
        expected one (beyond padding, with ``num_rows``); nothing is read then, and the
        caller's arrays and the checkpoint are unchanged.
    """
    path = os.path.abspath(os.fspath(path))
    like = {"table": like_table, "opt_state": like_opt_state._asdict()}  # as stored on disk
    n_expected = num_table_rows(like_table)
    first = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if mesh is not None:
        shardings = row_shardings(like, mesh, n_expected)
    else:
        shardings = jax.tree.map(lambda x: getattr(x, "sharding", None) or first, like)
    with ocp.StandardCheckpointer() as ckptr:
        saved = ckptr.metadata(path).item_metadata.tree
        n_saved = num_table_rows(saved["table"]) if isinstance(saved, dict) and "table" in saved else -1
        errors, repad = _compare(saved, like, n_saved, n_expected, num_rows)
        if errors:
            raise ValueError(f"restore_tables({path}): checkpoint does not match the expected tables: " + "; ".join(errors))
        flat, treedef = jax.tree_util.tree_flatten_with_path(like)
        flat_shardings = treedef.flatten_up_to(shardings)
        abstract = [
            jax.ShapeDtypeStruct((n_saved,) + np.shape(x)[1:], x.dtype, sharding=first) if key in repad
            else jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh)
            for (key, x), sh in zip(flat, flat_shardings)
        ]
        leaves = treedef.flatten_up_to(ckptr.restore(path, treedef.unflatten(abstract)))
    for i, ((key, x), sh) in enumerate(zip(flat, flat_shardings)):
        if key in repad:
            host = np.asarray(leaves[i])[:num_rows]
            pad = [(0, n_expected - num_rows)] + [(0, 0)] * (host.ndim - 1)
            leaves[i] = _put(np.pad(host, pad), sh)
    restored = treedef.unflatten(leaves)
    return restored["table"], RowOptState(**restored["opt_state"])
