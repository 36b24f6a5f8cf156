"""One data mesh, row-sharded tables, a shard-local id sampler and batch assembly.

Synopsis::

    maybe_initialize_distributed()            # multi-host only when the environment says so
    mesh = make_mesh()                        # 1-D mesh, axis "data", all devices
    table = shard_table(init_table(initial), mesh)      # rows P("data"), N padded
    opt = row_rmsprop(schedule); opt_state = opt.init(table)
    sampler = ShardLocalSampler(num_rows, mesh.size, global_batch_size=256, seed=0)
    ids = sampler.batch_ids(epoch, step)      # device d's slice only holds rows of shard d
    rows = np.concatenate([ids[r] for _, r in host_shards(mesh, ids.size)])  # this process's part
    batch = global_batch({"ids": rows, ...}, mesh)       # sharded P("data")
    rows = gather(table, batch["ids"], mesh=mesh)
    table, opt_state = apply_rows(opt, table, opt_state, batch["ids"], grads, mesh=mesh)

Row r of a padded table lives on device ``r // (N_padded / devices)``; padding rows are
appended at the end (rows N .. N_padded-1), hold zeros and are never sampled.

Several processes (multi-host): the mesh spans every process's devices. Each process
loads only the blocks of a global batch that its own devices hold (``host_shards``, the
one slicing rule, read off the mesh, so any device order works) and ``global_batch``
places them; ``fetch`` brings arrays to every host (``process_allgather`` where a leaf
spans other processes' devices).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, Sharding

from autodo_jax.tables import DATA_AXIS, Table, num_table_rows, shared_keys

__all__ = [
    "ShardLocalSampler",
    "barrier",
    "data_sharding",
    "fetch",
    "global_batch",
    "host_shards",
    "make_mesh",
    "maybe_initialize_distributed",
    "padded_num_rows",
    "replicated_sharding",
    "repad_rows",
    "row_read_sharding",
    "row_shardings",
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
    a SLURM / Open MPI job with more than one task, or ``AUTODO_DISTRIBUTED=1`` (JAX's
    cluster auto-detection, e.g. every worker of a Cloud TPU pod slice). Otherwise (single
    host) it does nothing. Must run before any other JAX call."""
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
    elif (env.get("AUTODO_DISTRIBUTED") == "1" or int(env.get("SLURM_NTASKS", "1")) > 1
          or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1):
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


def _local_data_positions(mesh: Mesh) -> list[int]:
    """Data-axis positions of this process's devices in ``mesh`` (sorted, distinct)."""
    axis = mesh.axis_names.index(DATA_AXIS)
    me = jax.process_index()
    return sorted({pos[axis] for pos, d in np.ndenumerate(mesh.devices) if d.process_index == me})


def host_shards(mesh: Mesh, global_size: int) -> tuple[tuple[int, slice], ...]:
    """The blocks of a ``P("data")``-sharded global batch that this process's devices hold.

    The one slicing rule of the package: loaders read exactly these rows, and
    :func:`global_batch` expects its host data to be their concatenation in this order.
    Read off the mesh, so it holds for any device order (processes need not own one
    contiguous range of the batch).

    Args:
      mesh: mesh with axis ``"data"`` (may span several processes).
      global_size: global leading size B, a multiple of the data-axis size n.

    Returns:
      ``((shard, rows), ...)`` sorted by ``shard``, the block's position on the data axis;
      ``rows = slice(shard * B/n, (shard + 1) * B/n)``. One process: all n blocks.

    Raises:
      ValueError: if ``global_size`` is not a multiple of the data-axis size.
    """
    n = mesh.shape[DATA_AXIS]
    if global_size < 0 or global_size % n:
        raise ValueError(f"global batch size {global_size} is not a multiple of the {n} "
                         "devices of the data axis")
    per = global_size // n
    return tuple((k, slice(k * per, (k + 1) * per)) for k in _local_data_positions(mesh))


def global_batch(host_batch_tree: Any, mesh: Mesh, *, axis: int = 0) -> Any:
    """Assembles this process's blocks of a batch into global arrays sharded ``P("data")``.

    Args:
      host_batch_tree: pytree of arrays whose batch axis ``axis`` is the concatenation of
        this process's blocks of the global batch in :func:`host_shards` order (the whole
        batch on a single host).
      mesh: mesh with axis ``"data"``.
      axis: the batch axis; 1 for K batches stacked on a leading axis (multi-step
        dispatches), sharded ``P(None, "data")``.

    Returns:
      The same pytree of ``jax.Array``; global size along ``axis`` = local size x n /
      (blocks held here).
    """
    sharding = NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))
    positions = _local_data_positions(mesh)
    n = mesh.shape[DATA_AXIS]

    def one(x):
        x = np.asarray(x)
        if x.shape[axis] % len(positions):
            raise ValueError(f"host batch of {x.shape[axis]} rows does not split into the "
                             f"{len(positions)} blocks of this process")
        per = x.shape[axis] // len(positions)
        shape = x.shape[:axis] + (per * n,) + x.shape[axis + 1:]
        offset = {rows.start: i * per
                  for i, (_, rows) in enumerate(host_shards(mesh, shape[axis]))}
        lead = (slice(None),) * axis

        def block(idx):   # this device's rows, out of the local concatenation
            start = offset[idx[axis].start or 0]
            return x[lead + (slice(start, start + per),)]

        pieces = [jax.device_put(block(idx), d)
                  for d, idx in sharding.addressable_devices_indices_map(shape).items()]
        return jax.make_array_from_single_device_arrays(shape, sharding, pieces)

    return jax.tree.map(one, host_batch_tree)


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (no-op on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def fetch(tree: Any) -> Any:
    """Host (NumPy) copies of every leaf, the same on every process.

    Leaves that this process can read whole (single process, or replicated) are copied;
    leaves sharded over other processes' devices are gathered with
    ``multihost_utils.process_allgather`` (a collective: every process must call
    ``fetch`` on the same tree).
    """
    def one(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


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


def row_read_sharding(sharding: Sharding, num_rows: int) -> Sharding:
    """How to place a per-example leaf of ``num_rows`` rows (e.g. a table saved on another
    device count) before :func:`repad_rows` brings it to ``sharding``.

    Args:
      sharding: the target placement of the re-padded leaf.
      num_rows: the leading size of the leaf to place (its padded row count).

    Returns:
      ``sharding``'s partitioning on its mesh when the mesh's devices divide ``num_rows``,
      else replicated on that mesh; ``sharding`` itself when it has no mesh.
    """
    mesh = getattr(sharding, "mesh", None)
    if mesh is None:
        return sharding
    if num_rows % mesh.size == 0:
        return NamedSharding(mesh, P(*sharding.spec))
    return NamedSharding(mesh, P())


def repad_rows(x: jax.Array, num_rows: int, padded_rows: int, sharding: Sharding) -> jax.Array:
    """A per-example leaf re-padded to another padded row count (another device count).

    Args:
      x: ``(R, ...)`` with ``R >= num_rows``: real rows first, padding after (any placement).
      num_rows: N, the real rows (``<= padded_rows``).
      padded_rows: the leading size of the result (e.g. ``padded_num_rows(N, devices)``).
      sharding: the placement of the result (e.g. ``data_sharding(mesh)``).

    Returns:
      ``(padded_rows, ...)``, same dtype: rows ``[0, N)`` of ``x``, zero rows after (as
      ``shard_table`` pads), placed with ``sharding``.
    """
    if not 0 <= num_rows <= min(x.shape[0], padded_rows):
        raise ValueError(f"repad_rows: num_rows={num_rows} must lie in [0, min(rows "
                         f"{x.shape[0]}, padded_rows {padded_rows})]")
    pad = [(0, padded_rows - num_rows)] + [(0, 0)] * (x.ndim - 1)
    return jax.jit(lambda a: jnp.pad(a[:num_rows], pad), out_shardings=sharding)(x)
