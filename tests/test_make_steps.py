"""``train.make_steps``: the step of each method kind and K is picked once; the bound steps
are the module-level jitted steps; the one guarded update skips a non-finite step for the
inner and the reweighting steps alike."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_step_fixtures import B, FULL, HW, NONE, data, host, make_batch, make_state

from autodo_jax import train
from autodo_jax._src.train.steps import guarded_update

L2RW = dataclasses.replace(NONE, reweight="l2rw")
MWN = dataclasses.replace(NONE, reweight="mwn")


@pytest.mark.parametrize("cfg, one, many, hyper", [
    (NONE, train.inner_step, train.inner_steps, None),
    (FULL, train.inner_step, train.inner_steps, (train.hyper_step, train.hyper_steps)),
    (L2RW, train.reweight_step, train.reweight_steps, None),
    (MWN, train.reweight_step, train.reweight_steps, None),
], ids=["none", "autodo", "l2rw", "mwn"])
@pytest.mark.parametrize("k", [1, 4])
def test_make_steps_picks_the_step_of_each_method_and_k(cfg, one, many, hyper, k):
    mesh = object()   # any hashable static value: it is only bound, not used here
    steps = train.make_steps(cfg, mesh, k)
    assert steps.steps_per_dispatch == k
    assert steps.train == train.BoundStep(one, many if k > 1 else None, (cfg, mesh))
    assert steps.eval == train.BoundStep(train.eval_step, None, (cfg,))
    if hyper is None:
        assert steps.hyper is None
    else:
        assert steps.hyper == train.BoundStep(hyper[0], hyper[1] if k > 1 else None,
                                              (cfg, mesh))


def test_make_steps_refuses_bad_k_and_stacked_batches_at_k1():
    with pytest.raises(ValueError, match="steps_per_dispatch must be >= 1, got 0"):
        train.make_steps(NONE, None, 0)
    steps = train.make_steps(NONE, None, 1)
    with pytest.raises(ValueError, match="inner_step was built for one step per dispatch"):
        steps.train(None, {}, valid=np.ones(2, bool))


def test_guarded_update_keeps_old_values_unless_everything_is_finite():
    old = ({"w": jnp.zeros(3)}, jnp.ones(()))
    new = ({"w": jnp.array([1.0, 2.0, 3.0])}, jnp.full((), 2.0))
    kept, ok = guarded_update(jnp.float32(0.5), new, old)
    assert bool(ok)
    chex.assert_trees_all_equal(kept, new)
    for loss, tree, finite in [(jnp.float32(jnp.nan), new, None),   # the loss
                               (jnp.float32(0.5), ({"w": jnp.array([1.0, jnp.inf, 3.0])},
                                                   new[1]), None),   # one new leaf
                               (jnp.float32(0.5), new, jnp.array(False))]:   # the extra flag
        kept, ok = guarded_update(loss, tree, old, finite=finite)
        assert not bool(ok)
        chex.assert_trees_all_equal(kept, old)


def _nan_batch():
    images, labels = data()
    bad = images.copy()
    bad[3] = np.nan
    return (make_batch(bad, labels, np.arange(B)), make_batch(images, labels, np.arange(B)),
            {"images": images[B:2 * B], "labels": labels[B:2 * B]})


def test_bound_inner_step_is_the_plain_step_and_skips_a_nan_batch():
    bad, good, _ = _nan_batch()
    _, labels = data()
    steps = train.make_steps(NONE, None, 1)
    state = make_state(NONE, labels)
    before = host(state)
    state, metrics = steps.train(state, bad)
    assert int(metrics["skipped"]) == 1 and int(state.step) == 1
    chex.assert_trees_all_equal(host((state.params, state.batch_stats, state.opt_state)),
                                (before.params, before.batch_stats, before.opt_state))
    direct, direct_metrics = train.inner_step(make_state(NONE, labels), good, NONE)
    state, metrics = steps.train(make_state(NONE, labels), good)
    assert int(metrics["skipped"]) == 0
    chex.assert_trees_all_equal(host(state), host(direct))
    chex.assert_trees_all_equal(host(metrics), host(direct_metrics))
    batch = {k: v for k, v in good.items() if k != "ids"}
    chex.assert_trees_all_equal(host(steps.eval(state, batch)),
                                host(train.eval_step(state, batch, NONE)))


@pytest.mark.slow
def test_bound_k_step_skips_the_nan_step_of_a_dispatch():
    bad, good, _ = _nan_batch()
    _, labels = data()
    steps = train.make_steps(NONE, None, 2)
    stacked = jax.tree.map(lambda a, b: np.stack([a, b]), bad, good)
    state, metrics = steps.train(make_state(NONE, labels), stacked, valid=np.ones(2, bool))
    np.testing.assert_array_equal(metrics["skipped"], [1, 0])
    assert int(state.step) == 2
    # the same as the two plain steps, to float rounding (a scanned body and a plain step
    # agree to tolerance only)
    plain, skipped = train.inner_step(make_state(NONE, labels), bad, NONE)
    plain, _ = train.inner_step(plain, good, NONE)
    assert int(skipped["skipped"]) == 1
    chex.assert_trees_all_close(host(state.params), host(plain.params), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", [L2RW, MWN], ids=["l2rw", "mwn"])
def test_bound_reweight_step_skips_a_nan_batch(cfg):
    bad, _, val = _nan_batch()
    steps = train.make_steps(cfg, None, 1)
    state = train.create_train_state(jax.random.key(0), cfg, {}, HW)
    before = host(state)
    state, metrics = steps.train(state, bad, val)
    assert int(metrics["skipped"]) == 1 and int(state.step) == 1
    chex.assert_trees_all_equal(
        host((state.params, state.batch_stats, state.opt_state, state.meta)),
        (before.params, before.batch_stats, before.opt_state, before.meta))
