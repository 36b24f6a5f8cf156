"""Tests for autodo_jax.parallel: mesh, row-sharded tables, shard-local sampler, HLO
locality of the table step, 1- vs 8-device equality, the per-process batch blocks."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from autodo_jax import parallel, tables


def _initial(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"p": rng.normal(size=(n, 3)), "w": rng.normal(size=(n,)), "s": rng.normal(size=(1, 2))}


def _step(opt, mesh):
    """One jitted, donated hyper-style step: gather rows, grads from rows, row update."""

    def step(table, state, ids):
        rows = tables.gather(table, ids, mesh=mesh)
        grads = jax.tree.map(lambda r: jnp.sin(r) + 0.1, rows)
        return tables.apply_rows(opt, table, state, ids, grads, mesh=mesh)

    return jax.jit(step, donate_argnums=(0, 1))


def test_make_mesh_and_shardings():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count() == 8
    one = parallel.make_mesh(1)
    assert one.size == 1 and list(one.devices.flat) == jax.devices()[:1]
    for bad in (0, 9, 2.0):
        with pytest.raises(ValueError, match="num_devices"):
            parallel.make_mesh(bad)
    assert parallel.data_sharding(mesh).spec == P("data")
    assert parallel.replicated_sharding(mesh).spec == P()
    assert [parallel.padded_num_rows(n, 8) for n in (0, 1, 8, 61)] == [0, 8, 8, 64]


def test_maybe_initialize_distributed_is_a_no_op_on_one_host(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "AUTODO_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    parallel.maybe_initialize_distributed()
    assert not jax.distributed.is_initialized()


def test_shard_table_pads_and_shards():
    mesh = parallel.make_mesh(8)
    table = parallel.shard_table(tables.init_table(_initial(61)), mesh)
    assert table["p"].shape == (64, 3) and table["w"].shape == (64,) and table["s"].shape == (1, 2)
    assert table["p"].sharding.spec == P("data") and table["s"].sharding.spec == P()
    assert {s.data.shape for s in table["p"].addressable_shards} == {(8, 3)}
    np.testing.assert_array_equal(np.asarray(table["p"])[61:], 0.0)
    np.testing.assert_allclose(np.asarray(table["p"])[:61], _initial(61)["p"], rtol=1e-6)
    state = tables.row_rmsprop(0.1).init(table)
    assert state.last.sharding.spec == P("data") and state.slots["nu"]["p"].sharding.spec == P("data")
    specs = parallel.row_shardings(state, mesh, 64)
    assert specs.last.spec == P("data") and specs.count.spec == P() and specs.slots["nu"]["s"].spec == P()


def test_sampler_covers_every_row_once_and_stays_local():
    sampler = parallel.ShardLocalSampler(64, 8, 16, seed=3)
    assert sampler.steps_per_epoch == 4
    ids = sampler.epoch_ids(0)
    assert ids.shape == (4, 16) and ids.dtype == np.int32
    np.testing.assert_array_equal(np.sort(ids.ravel()), np.arange(64))
    owner = ids.reshape(4, 8, 2) // sampler.rows_per_shard
    np.testing.assert_array_equal(owner, np.broadcast_to(np.arange(8)[None, :, None], owner.shape))


def test_sampler_with_padding_never_samples_padding_rows():
    sampler = parallel.ShardLocalSampler(61, 8, 16, seed=0)  # shards of 8 rows, the last has 5
    ids = sampler.epoch_ids(1).ravel()
    assert ids.max() < 61 and len(set(ids.tolist())) == ids.size
    assert 61 - ids.size <= 8 * (sampler.device_batch_size + sampler.rows_per_shard - 5)
    owner = sampler.epoch_ids(1).reshape(sampler.steps_per_epoch, 8, 2) // 8
    assert (owner == np.arange(8)[None, :, None]).all()


def test_sampler_is_deterministic_and_resumable():
    a = parallel.ShardLocalSampler(1000, 4, 64, seed=7)
    b = parallel.ShardLocalSampler(1000, 4, 64, seed=7)
    np.testing.assert_array_equal(a.batch_ids(3, 2), b.batch_ids(3, 2))  # fresh instance, same position
    np.testing.assert_array_equal(a.batch_ids(3, 2), a.epoch_ids(3)[2])
    assert not np.array_equal(a.epoch_ids(0), a.epoch_ids(1))
    assert not np.array_equal(a.epoch_ids(0), parallel.ShardLocalSampler(1000, 4, 64, seed=8).epoch_ids(0))


def test_single_shard_sampler_is_a_permutation_cut_into_batches():
    sampler = parallel.ShardLocalSampler(10, 1, 3, seed=0)
    ids = sampler.epoch_ids(0)
    assert ids.shape == (3, 3) and len(set(ids.ravel().tolist())) == 9 and ids.max() < 10


@pytest.mark.parametrize(
    "args, match",
    [((64, 8, 12, 0), "multiple"), ((10, 8, 16, 0), "too large"), ((0, 1, 1, 0), "num_rows"), ((8, 1, 1, -1), "seed")],
)
def test_sampler_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        parallel.ShardLocalSampler(*args)


def test_sampler_rejects_bad_positions():
    sampler = parallel.ShardLocalSampler(64, 8, 16, seed=0)
    with pytest.raises(ValueError, match="step"):
        sampler.batch_ids(0, 4)
    with pytest.raises(ValueError, match="epoch"):
        sampler.batch_ids(-1, 0)


def test_global_batch_shards_leading_axis():
    mesh = parallel.make_mesh(8)
    host = {"ids": np.arange(16, dtype=np.int32), "x": np.ones((16, 3), np.float32)}
    batch = parallel.global_batch(host, mesh)
    assert batch["ids"].sharding.spec == P("data") and batch["x"].shape == (16, 3)
    np.testing.assert_array_equal(np.asarray(batch["ids"]), host["ids"])


@pytest.mark.parametrize("order", ["identity", "permuted"])
def test_host_shards_match_the_mesh_in_any_device_order(order):
    """Every block host_shards names is the one its device holds: read back shard by shard
    (a mesh whose device order is permuted must still place row r on the device that
    NamedSharding assigns to it)."""
    devices = np.array(jax.devices())
    if order == "permuted":
        devices = devices[[3, 0, 7, 5, 1, 6, 2, 4]]
    mesh = jax.sharding.Mesh(devices, ("data",))
    rows = np.arange(24, dtype=np.int32) * 10
    blocks = parallel.host_shards(mesh, rows.size)
    assert [k for k, _ in blocks] == list(range(8))  # one process: every block
    assert [(r.start, r.stop) for _, r in blocks] == [(3 * k, 3 * k + 3) for k in range(8)]
    host = np.concatenate([rows[r] for _, r in blocks])
    arr = parallel.global_batch({"ids": host}, mesh)["ids"]
    want = parallel.data_sharding(mesh).addressable_devices_indices_map(rows.shape)
    for shard in arr.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), rows[want[shard.device]])
    np.testing.assert_array_equal(np.asarray(arr), rows)
    np.testing.assert_array_equal(parallel.fetch({"a": arr})["a"], rows)
    stacked = np.stack([rows, rows + 1])  # K = 2 batches of a multi-step dispatch
    host2 = np.concatenate([stacked[:, r] for _, r in blocks], axis=1)
    arr2 = parallel.global_batch(host2, mesh, axis=1)
    assert arr2.sharding.spec == P(None, "data")
    np.testing.assert_array_equal(np.asarray(arr2), stacked)
    with pytest.raises(ValueError, match="not a multiple of the 8 devices"):
        parallel.host_shards(mesh, 12)


def _collectives(hlo_text):
    """(op, element count) of every collective in compiled HLO text."""
    found = []
    pattern = r"=\s*\(?(\w+)\[([\d,]*)\].*?\b(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)"
    for match in re.finditer(pattern, hlo_text):
        dims = [int(d) for d in match.group(2).split(",") if d]
        found.append((match.group(3), int(np.prod(dims)) if dims else 1))
    return found


@pytest.mark.parametrize("with_shared", [True, False])
def test_compiled_update_step_has_no_table_collective(with_shared):
    mesh = parallel.make_mesh(8)
    init = _initial(4096)
    if not with_shared:
        del init["s"]
    table = parallel.shard_table(tables.init_table(init), mesh)
    opt = tables.row_rmsprop(0.01)
    state = opt.init(table)
    ids = parallel.global_batch(parallel.ShardLocalSampler(4096, 8, 64, 0).batch_ids(0, 0), mesh)
    text = _step(opt, mesh).lower(table, state, ids).compile().as_text()
    found = _collectives(text)
    assert not [op for op, _ in found if op != "all-reduce"], found
    # The only reduction: the shared leaf's (1, 2) gradient (rows per shard: 512).
    assert all(size <= 2 for _, size in found), found
    assert bool(found) == with_shared
    assert "all-gather" not in text and "all-to-all" not in text


def test_collective_detector_controls():
    """Controls for the HLO check: replicating a row-sharded table is a table-sized
    all-gather, and a gather without ``mesh`` needs (batch-sized) collectives that the
    shard_map path avoids; the detector reports both."""
    mesh = parallel.make_mesh(8)
    table = parallel.shard_table(tables.init_table(_initial(4096)), mesh)
    replicate = jax.jit(lambda t: t["p"] + 1.0, out_shardings=parallel.replicated_sharding(mesh))
    found = _collectives(replicate.lower(table).compile().as_text())
    assert ("all-gather", 4096 * 3) in found, found
    ids = parallel.global_batch(np.arange(0, 4096, 64, dtype=np.int32), mesh)
    assert _collectives(jax.jit(lambda t, i: tables.gather(t, i)).lower(table, ids).compile().as_text())
    assert not _collectives(jax.jit(lambda t, i: tables.gather(t, i, mesh=mesh)).lower(table, ids).compile().as_text())


def _run(mesh, n, steps, sampler):
    table = tables.init_table(_initial(n))
    opt = tables.row_rmsprop(0.05)
    if mesh is not None:
        table = parallel.shard_table(table, mesh)
    state = opt.init(table)
    step = _step(opt, mesh)
    for s in range(steps):
        ids = sampler.batch_ids(0, s)
        ids = parallel.global_batch(ids, mesh) if mesh is not None else jnp.asarray(ids)
        table, state = step(table, state, ids)
    return {k: np.asarray(v)[: n if v.shape[0] != 1 else 1] for k, v in table.items()}, state


@pytest.mark.parametrize("n", [64, 61])
def test_eight_devices_equal_one_device(n):
    sampler = parallel.ShardLocalSampler(n, 8, 16, seed=1)
    steps = sampler.steps_per_epoch
    t8, s8 = _run(parallel.make_mesh(8), n, steps, sampler)
    t1, _ = _run(parallel.make_mesh(1), n, steps, sampler)
    t0, _ = _run(None, n, steps, sampler)
    assert int(s8.count) == steps
    for k in t8:
        np.testing.assert_allclose(t8[k], t1[k], rtol=0, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(t8[k], t0[k], rtol=0, atol=1e-6, err_msg=k)
    assert not np.allclose(t8["p"], _initial(n)["p"])  # the step did something


def test_explicit_axis_mesh_works():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    table = parallel.shard_table(tables.init_table(_initial(64)), mesh)
    opt = tables.row_sgd(0.1)
    ids = parallel.global_batch(parallel.ShardLocalSampler(64, 8, 16, 0).batch_ids(0, 0), mesh)
    new, _ = _step(opt, mesh)(table, opt.init(table), ids)
    assert new["p"].shape == (64, 3)


def test_non_local_ids_with_a_mesh():
    """Concrete ids outside their device's shard raise; under jit they gather zeros and
    their row updates are dropped."""
    mesh = parallel.make_mesh(8)
    table = parallel.shard_table(tables.init_table(_initial(64)), mesh)
    ids = np.arange(16, dtype=np.int32)  # device 1's slice holds rows 2, 3 of shard 0
    with pytest.raises(ValueError, match="shard d"):
        tables.gather(table, parallel.global_batch(ids, mesh), mesh=mesh)
    with pytest.raises(ValueError, match="multiple"):
        tables.gather(table, np.arange(4, dtype=np.int32), mesh=mesh)
    rows = jax.jit(lambda t, i: tables.gather(t, i, mesh=mesh))(table, parallel.global_batch(ids, mesh))
    np.testing.assert_allclose(np.asarray(rows["p"])[:2], _initial(64)["p"][:2], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(rows["p"])[2:], 0.0)


@pytest.mark.parametrize("saved_rows,saved_devices,devices,padded", [(64, 8, 2, 62), (61, 1, 8, 64)])
def test_repad_rows_keeps_real_rows_and_zero_pads(saved_rows, saved_devices, devices, padded):
    """A table leaf of N = 61 rows saved padded for one device count (64 on 8 devices, 61 on
    1) re-padded for another (62 on 2, 64 on 8): rows kept, padding zero, sharding as asked."""
    n, rng = 61, np.random.default_rng(0)
    real = rng.normal(size=(n, 3)).astype(np.float32)
    host = np.concatenate([real, np.full((saved_rows - n, 3), 7.0, np.float32)])  # any padding
    saved = jax.device_put(host, parallel.data_sharding(parallel.make_mesh(saved_devices)))
    target = parallel.data_sharding(parallel.make_mesh(devices))
    read = parallel.row_read_sharding(target, saved_rows)
    assert read.spec == (P("data") if saved_rows % devices == 0 else P())
    out = parallel.repad_rows(jax.device_put(saved, read), n, padded, target)
    assert out.shape == (padded, 3) and out.dtype == jnp.float32
    assert out.sharding.is_equivalent_to(target, 2)
    np.testing.assert_array_equal(np.asarray(out[:n]), real)
    np.testing.assert_array_equal(np.asarray(out[n:]), 0)
    with pytest.raises(ValueError, match="num_rows"):
        parallel.repad_rows(saved, padded + 1, padded, target)
