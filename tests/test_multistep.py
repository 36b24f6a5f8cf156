"""Several steps per dispatch (lax.scan over stacked batches).

Bitwise: K steps in one dispatch equal K dispatches of one step (K = 1 scans), padded
steps included (``valid=False`` leaves the state exactly as it was): every K runs the same
compiled loop body, with the same per-step PRNG keys folded from the state's counters. So
a run's results do not depend on ``--steps_per_dispatch``.

To float tolerance only: the scanned step against the plain jitted ``inner_step`` /
``hyper_step``. XLA compiles the loop body (parameters loop-carried, batch
dynamic-sliced) with other layouts for a few backward convolutions than the top-level
program, which reorders their sums (measured: the first convolution's weight gradient
differs in the last bits, ~1e-6 relative; everything else is bitwise equal).
"""
import chex
import jax
import numpy as np
import pytest
from train_step_fixtures import B, FULL, N, data, host, make_batch, make_state

from autodo_jax import train

K = 3


def _stack(batches):
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


@pytest.fixture(scope="module")
def problem():
    images, labels = data()
    rng = np.random.default_rng(1)
    train_batches = [make_batch(images, labels, rng.choice(N, B, replace=False))
                     for _ in range(K)]
    val_batches = [make_batch(images, labels, rng.choice(N, B, replace=False))
                   for _ in range(K)]
    return labels, train_batches, val_batches


def _sequential(step, state, *batch_lists):
    metrics = []
    for batches in zip(*batch_lists):
        state, m = step(state, *batches)
        metrics.append(host(m))
    return host(state), _stack(metrics)


def _assert_tree_close(a, b):
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-7)


def test_inner_steps_equal_for_every_k(problem):
    """K = 3 in one dispatch == three K = 1 dispatches (bitwise) ~= three inner_step."""
    labels, tb, _ = problem
    one = lambda s, b: train.inner_steps(s, _stack([b]), None, FULL)
    want_state, want_metrics = _sequential(one, make_state(FULL, labels), tb)
    state, metrics = train.inner_steps(make_state(FULL, labels), _stack(tb), None, FULL)
    assert int(state.step) == K
    chex.assert_trees_all_equal(host(state), want_state)
    chex.assert_trees_all_equal(host(metrics), jax.tree.map(lambda x: x[:, 0], want_metrics))
    plain_state, plain_metrics = _sequential(lambda s, b: train.inner_step(s, b, FULL),
                                             make_state(FULL, labels), tb)
    _assert_tree_close(want_state, plain_state)
    _assert_tree_close(host(metrics), plain_metrics)


def test_hyper_steps_with_padding_equal_single_steps(problem):
    """K = 3 stacked steps, the last padded: bitwise two K = 1 dispatches; metrics 0 at
    the padded step; close to two hyper_step calls."""
    labels, tb, vb = problem
    one = lambda s, t, v: train.hyper_steps(s, _stack([t]), _stack([v]), None, FULL)
    want_state, want_metrics = _sequential(one, make_state(FULL, labels), tb[:2], vb[:2])
    want_metrics = jax.tree.map(lambda x: x[:, 0], want_metrics)
    plain_state, _ = _sequential(lambda s, t, v: train.hyper_step(s, t, v, FULL),
                                 make_state(FULL, labels), tb[:2], vb[:2])
    _assert_tree_close(want_state, plain_state)
    valid = np.array([True, True, False])
    state, metrics = train.hyper_steps(make_state(FULL, labels), _stack(tb), _stack(vb),
                                           valid, FULL)
    assert int(state.hyper_count) == 2 and int(state.step) == 0
    chex.assert_trees_all_equal(host(state), want_state)
    got = host(metrics)
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x[:2], got), want_metrics)
    for value in jax.tree.leaves(got):
        np.testing.assert_array_equal(value[2], np.zeros_like(value[2]))


def test_jit_multi_step_is_generic_and_checks_shapes():
    """Any (state, *batch) -> (state, metrics) step; a skipped step changes nothing."""
    def step(state, x, y):
        new = state * 2.0 + x - y
        return new, {"sum": new.sum()}

    run = train.jit_multi_step(step)
    xs, ys = np.arange(6.0).reshape(3, 2), np.ones((3, 2))
    state, metrics = run(np.zeros(2), (xs, ys), np.array([True, False, True]))
    want = np.zeros(2)
    for k in (0, 2):
        want = want * 2.0 + xs[k] - ys[k]
    np.testing.assert_array_equal(state, want)
    np.testing.assert_array_equal(metrics["sum"][1], 0.0)
    with pytest.raises(ValueError, match="same leading size K"):
        train.scan_steps(step, np.zeros(2), (xs, ys[:2]))
    with pytest.raises(ValueError, match="valid must have shape"):
        train.scan_steps(step, np.zeros(2), (xs, ys), np.array([True]))


def test_global_batch_axis_1_shards_the_batch_axis_of_stacked_batches():
    from autodo_jax import parallel
    mesh = parallel.make_mesh()
    n = mesh.shape["data"]
    host = np.arange(3 * 2 * n * 5).reshape(3, 2 * n, 5)
    arr = parallel.global_batch({"x": host}, mesh, axis=1)["x"]
    assert arr.shape == host.shape and tuple(arr.sharding.spec) == (None, "data")
    np.testing.assert_array_equal(np.asarray(arr), host)
    for shard in arr.addressable_shards:
        assert shard.data.shape == (3, 2, 5)
        np.testing.assert_array_equal(np.asarray(shard.data), host[shard.index])
