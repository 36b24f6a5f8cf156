"""experiments.checkpointing: round trip, integrity (flipped byte, truncation, garbage,
edited metadata), mismatch refusal that moves nothing, re-sharding for another device
count, and the refusal to save a non-finite state."""
import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from autodo_jax import parallel, tables
from experiments.checkpointing import (Checkpointer, CheckpointMismatchError,
                                       NonFiniteStateError)


def _state(mesh, n=61, scale=1.0):
    """A table-like state: per-example leaves padded for the mesh, shared and scalar leaves."""
    rng = np.random.default_rng(0)
    table = tables.init_table({"p": rng.normal(size=(n, 3)) * scale, "s": rng.normal(size=(1, 2))})
    table = parallel.shard_table(table, mesh)
    opt = tables.row_rmsprop(0.05)
    # "big" is large enough that OCDBT stores it out of line, in a data file of its own with no
    # checksum of Orbax's (small values sit inside the CRC-checked b-tree nodes)
    return {"table": table, "opt": opt.init(table), "w": jnp.ones(3) * scale,
            "big": jnp.asarray(rng.normal(size=4096) * scale, jnp.float32),
            "rng": jax.random.key(3), "step": jnp.int32(4), "empty": jnp.zeros((0,), jnp.int32)}


def _files(path):
    return sorted(f for f in glob.glob(os.path.join(path, "**"), recursive=True) if os.path.isfile(f))


def _data_file(ckpt_dir, step):
    """The largest data file a process wrote for a step (Orbax OCDBT layout): the one holding
    the out-of-line values. The top-level ``d/`` holds the merged b-tree nodes instead."""
    return max((f for f in _files(os.path.join(ckpt_dir, str(step), "state"))
                if re.search(r"/ocdbt\.process_\d+/d/", f)), key=os.path.getsize)


@pytest.fixture()
def saved(tmp_path):
    mesh = parallel.make_mesh(8)
    state = _state(mesh)
    msgs = []
    ck = Checkpointer(str(tmp_path / "ckpt"), log=msgs.append)
    assert ck.save(4, state, {"epoch": 1})
    assert ck.save(8, {**state, "w": state["w"] * 2}, {"epoch": 2, "x": [0.1, float("nan")]})
    assert not ck.save(8, state, {"epoch": 2})  # already saved: nothing written
    ck.close()
    return str(tmp_path / "ckpt"), state, mesh, msgs


def _restore(path, template, msgs, **kw):
    ck = Checkpointer(path, log=msgs.append)
    try:
        return ck.restore_latest(template, **kw)
    finally:
        ck.close()


def test_round_trip_keeps_values_shardings_keys_and_empty_leaves(saved):
    path, state, mesh, msgs = saved
    step, got, meta = _restore(path, state, msgs)
    assert step == 8 and meta["epoch"] == 2 and np.isnan(meta["x"][1]) and "integrity" not in meta
    np.testing.assert_array_equal(got["w"], 2 * np.ones(3))
    np.testing.assert_array_equal(got["table"]["p"], state["table"]["p"])
    assert got["table"]["p"].sharding.spec == P("data") and got["opt"].last.sharding.spec == P("data")
    assert got["empty"].shape == (0,) and got["empty"].dtype == jnp.int32
    assert jax.random.key_data(got["rng"]).tolist() == jax.random.key_data(state["rng"]).tolist()
    assert isinstance(got["opt"], tables.RowOptState) and msgs == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's
# reader threads report the failed read of a truncated file once more after the restore
@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "meta"])
def test_damaged_newest_checkpoint_is_detected_and_the_previous_one_used(saved, damage):
    path, state, _, msgs = saved
    if damage == "meta":  # a JSON that still parses, with one digit changed
        f = os.path.join(path, "8", "meta", "metadata")
        text = open(f).read()
        assert '"epoch": 2' in text
        open(f, "w").write(text.replace('"epoch": 2', '"epoch": 3'))
    elif damage == "garbage":
        for f in _files(os.path.join(path, "8")):
            open(f, "wb").write(b"garbage")
    else:
        f = _data_file(path, 8)
        size = os.path.getsize(f)
        with open(f, "r+b") as fh:
            if damage == "truncate":
                fh.truncate(size // 2)
            else:  # one flipped bit in the middle of the array data: Orbax reads it silently
                fh.seek(size // 2)
                b = fh.read(1)
                fh.seek(size // 2)
                fh.write(bytes([b[0] ^ 0x10]))
    step, got, meta = _restore(path, state, msgs)
    assert (step, meta["epoch"]) == (4, 1)
    np.testing.assert_array_equal(got["w"], np.ones(3))
    assert len(msgs) == 1 and "checkpoint step 8" in msgs[0] and "corrupt" in msgs[0]
    assert "falling back to step 4" in msgs[0], msgs
    if damage == "flip":  # read without an error by Orbax: found by our checksum
        assert "checksum of ['big'] differs" in msgs[0], msgs
    assert os.path.isdir(path + "_corrupt/8") and not os.path.exists(os.path.join(path, "8"))


def test_flipped_byte_changes_the_values_orbax_returns():
    """The reason for the checksums: Orbax restores the flipped array without an error."""
    mesh = parallel.make_mesh(8)
    state = _state(mesh)
    from experiments import checkpointing
    record, _ = checkpointing._integrity(checkpointing._for_saving(state))
    changed = {**state, "table": {**state["table"], "p": state["table"]["p"].at[17, 1].add(1e-7)}}
    again, _ = checkpointing._integrity(checkpointing._for_saving(changed))
    one = parallel.make_mesh(1)
    moved = jax.device_put(state["table"]["p"], NamedSharding(one, P("data")))
    other, _ = checkpointing._integrity({"x": moved})
    diff = [k for k in record if record[k]["checksum"] != again[k]["checksum"]]
    assert diff == ["['table']['p']"]
    assert other["['x']"]["checksum"] == record["['table']['p']"]["checksum"]  # sharding-free


def test_another_structure_is_refused_and_nothing_is_moved(saved):
    path, state, mesh, msgs = saved
    before = _files(os.path.join(os.path.dirname(path)))
    wrong = {**state, "w": jnp.ones(4)}
    with pytest.raises(CheckpointMismatchError, match=r"\['w'\] has shape \(3,\), this state \(4,\)"):
        _restore(path, wrong, msgs)
    extra = {**state, "more": jnp.ones(2)}
    with pytest.raises(CheckpointMismatchError, match=r"\['more'\] missing in checkpoint"):
        _restore(path, extra, msgs)
    with pytest.raises(CheckpointMismatchError, match=r"\['opt'\].last has shape \(64,\), this state \(62,\)"):
        _restore(path, _state(parallel.make_mesh(2)), msgs)  # no num_rows: no re-padding
    assert _files(os.path.dirname(path)) == before and msgs == []


@pytest.mark.parametrize("devices, padded", [(2, 62), (1, 61), (3, 63)])
def test_another_device_count_re_pads_the_tables(saved, devices, padded):
    path, state, _, msgs = saved
    mesh = parallel.make_mesh(devices)
    template = _state(mesh, scale=0.0)
    step, got, _ = _restore(path, template, msgs, num_rows=61)
    assert step == 8 and got["table"]["p"].shape == (padded, 3)
    np.testing.assert_array_equal(np.asarray(got["table"]["p"])[:61], np.asarray(state["table"]["p"])[:61])
    np.testing.assert_array_equal(np.asarray(got["table"]["p"])[61:], 0.0)
    np.testing.assert_array_equal(got["table"]["s"], state["table"]["s"])
    assert got["opt"].last.shape == (padded,) and int(got["opt"].count) == int(state["opt"].count)
    assert got["table"]["p"].sharding == template["table"]["p"].sharding
    assert got["opt"].last.sharding == template["opt"].last.sharding
    assert msgs == []  # same device count (a mesh of fewer of them is no device change)


def test_non_finite_state_is_never_saved(tmp_path):
    mesh = parallel.make_mesh(8)
    state = _state(mesh)
    bad = {**state, "w": state["w"].at[1].set(jnp.nan)}
    ck = Checkpointer(str(tmp_path / "ckpt"))
    with pytest.raises(NonFiniteStateError, match=r"not saving step 3: non-finite values in \['w'\]"):
        ck.save(3, bad, {})
    ck.close()
    assert ck.steps() == [] and not glob.glob(str(tmp_path / "ckpt" / "3*"))


def test_only_the_reads_orbax_abandons_are_kept_from_printing(monkeypatch):
    """After a failed restore, a suspended Orbax shard read that turns its close into an
    exception prints nothing; any other unraisable exception still reaches the hook."""
    import gc
    import sys
    import types
    from experiments import checkpointing
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))

    @types.coroutine
    def pending():
        yield

    def read(message):  # behaves like Orbax's read: any BaseException becomes an Exception
        async def coro():
            try:
                await pending()
            except BaseException as e:
                raise Exception(message) from e
        return coro

    orbax_like = read("error while reading array index")
    orbax_like.__qualname__ = "_read_array_index_and_device_put"
    checkpointing._drop_orbax_abandoned_reads()
    checkpointing._drop_orbax_abandoned_reads()  # once per process: not wrapped twice
    assert not getattr(sys.unraisablehook.__closure__[0].cell_contents,
                       "_drops_orbax_abandoned_reads", False)
    for make in (orbax_like, read("another failure")):
        c = make()
        c.send(None)  # suspended at its await, as Orbax leaves them
        del c
        gc.collect()
    assert seen == ["another failure"]
