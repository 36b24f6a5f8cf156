"""One inner + one hyper step on 8 (forced host) devices equal the 1-device result."""
import chex
import jax
import numpy as np
import pytest
from train_step_fixtures import B, FULL, data, host, make_batch, make_state

from autodo_jax import parallel, train


def test_one_device_equals_eight_devices():
    if jax.device_count() < 8:
        pytest.fail("tests/conftest.py should force 8 host devices")
    images, labels = data()
    # Device d's slice of the batch holds rows of its shard (8 rows each): ids 8d, 8d+1.
    ids = np.stack([np.arange(8) * 8, np.arange(8) * 8 + 1], 1).reshape(-1)
    tb, vb = make_batch(images, labels, ids), make_batch(images, labels, np.arange(32, 32 + B))
    results = []
    for mesh in (None, parallel.make_mesh(8)):
        state = make_state(FULL, labels, mesh)
        t, v = (tb, vb) if mesh is None else (parallel.global_batch(tb, mesh),
                                              parallel.global_batch(vb, mesh))
        state, m_inner = train.inner_step(state, t, FULL, mesh=mesh)
        state, m_hyper = train.hyper_step(state, t, v, FULL, mesh=mesh)
        if mesh is not None:
            assert state.table["soft"].sharding.spec[0] == "data"
        results.append(host((state.params, state.table, state.table_opt_state,
                              m_inner["loss"], m_hyper["val_loss"])))
    chex.assert_trees_all_close(*results, rtol=1e-5, atol=1e-5)
