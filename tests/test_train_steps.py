"""Train steps: the inner step learns with λ fixed, the hyper step touches only the
batch's rows and skips non-finite updates; table init, config validation, eval, checks."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_step_fixtures import (B, C, FULL, HW, N, NONE, data, host,
                                 make_batch, make_state)

from autodo_jax import losses, train
from autodo_jax.models import encode, head_apply


def test_table_init_values():
    _, labels = data()
    t = train.autodo_table_init(labels, C, aug=True, shared_aug=False, weight=True, soft=True)
    assert {k: v.shape for k, v in t.items()} == {
        "aug_p": (N, 7), "aug_m": (N, 7), "weight": (N,), "soft": (N, C)}
    np.testing.assert_allclose(jax.nn.sigmoid(t["aug_p"]), 0.2, rtol=1e-6)
    np.testing.assert_allclose(jax.nn.sigmoid(t["aug_m"]), 0.5, rtol=1e-6)
    np.testing.assert_array_equal(t["weight"], 0.0)
    q = jax.nn.softmax(t["soft"])
    np.testing.assert_allclose(q[np.arange(N), labels], 1 - 0.05 * (C - 1) / C, rtol=1e-5)
    shared = train.autodo_table_init(labels, C, aug=True, shared_aug=True, weight=False,
                                     soft=False)
    assert {k: v.shape for k, v in shared.items()} == {"aug_p": (1, 7), "aug_m": (1, 7)}
    assert train.autodo_table_init(labels, C, aug=False, weight=False, soft=False) == {}
    with pytest.raises(ValueError, match="shared_aug"):
        train.autodo_table_init(labels, C, aug=False, shared_aug=True, weight=False,
                                soft=False)
    with pytest.raises(ValueError, match="table has fields"):
        train.create_train_state(jax.random.key(0), NONE, t, HW)


def test_step_config_validation():
    with pytest.raises(ValueError, match="StepConfig.solver"):
        train.StepConfig(solver="newton")
    with pytest.raises(ValueError, match="StepConfig.model"):
        train.StepConfig(model="vgg")
    with pytest.raises(ValueError, match="StepConfig.hyper_lr_soft"):
        train.StepConfig(hyper_lr_soft=-1.0)
    with pytest.raises(ValueError, match="StepConfig.table_optimizer"):
        train.StepConfig(table_optimizer="adam")
    hash(FULL)  # static jit argument


def test_inner_steps_lower_loss_without_table():
    images, labels = data()
    state = make_state(NONE, labels)
    assert state.table == {} and state.table_opt_state is None
    batch = make_batch(images, labels, np.arange(B))
    before = train.eval_step(state, batch, NONE)
    step_losses = []
    for _ in range(8):
        state, metrics = train.inner_step(state, batch, NONE)
        assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 0
        step_losses.append(float(metrics["loss"]))
    after = train.eval_step(state, batch, NONE)
    assert int(state.step) == 8
    assert np.all(np.diff(step_losses) < 0), step_losses  # every step lowers the loss
    assert float(after["loss_sum"]) < 0.5 * float(before["loss_sum"])
    with pytest.raises(ValueError, match="learns no hyperparameters"):
        train.hyper_step(state, batch, batch, NONE)


def test_eval_step_masks_padding():
    images, labels = data()
    state = make_state(NONE, labels)
    batch = make_batch(images, labels, np.arange(B))
    full = train.eval_step(state, batch, NONE)
    masked = train.eval_step(state, {**batch, "mask": np.arange(B) < 10}, NONE)
    ce = losses.cross_entropy(_logits(state, batch["images"]), batch["labels"])
    assert int(masked["count"]) == 10 and int(full["count"]) == B
    np.testing.assert_allclose(masked["loss_sum"], np.sum(ce[:10]), rtol=1e-5)
    np.testing.assert_allclose(full["loss_sum"], np.sum(ce), rtol=1e-5)
    assert int(masked["correct"]) == int(np.sum(np.asarray(full["predictions"])[:10]
                                                == labels[:10]))
    hit = np.asarray(full["predictions"])[:10] == labels[:10]
    c = NONE.num_classes
    np.testing.assert_array_equal(masked["correct_per_class"],
                                  np.bincount(labels[:10], weights=hit, minlength=c))
    np.testing.assert_array_equal(masked["count_per_class"], np.bincount(labels[:10], minlength=c))


def _logits(state, images):
    model = train.model_from_config(NONE)
    return head_apply(state.params["head"],
                      encode(model, state.params, state.batch_stats, images, train=False)[0])


def test_inner_step_keeps_table_and_hyper_step_touches_only_batch_rows():
    images, labels = data()
    state = make_state(FULL, labels)
    batch = make_batch(images, labels, np.arange(10, 10 + B))
    before = host(state)
    state, metrics = train.inner_step(state, batch, FULL)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["weight_mean"]) == 1.0
    chex.assert_trees_all_equal(host(state.table), before.table)  # λ fixed in the inner step
    chex.assert_trees_all_equal(host(state.table_opt_state), before.table_opt_state)
    assert int(state.step) == 1 and int(state.hyper_count) == 0

    mid = host(state)
    val = make_batch(images, labels, np.arange(32, 32 + B))
    state, metrics = train.hyper_step(state, batch, val, FULL)
    assert int(metrics["skipped"]) == 0 and bool(metrics["finite"])
    assert int(state.hyper_count) == 1 and int(state.step) == 1
    for name in ("params", "batch_stats", "opt_state"):
        chex.assert_trees_all_equal(host(getattr(state, name)), getattr(mid, name))
    in_batch = np.zeros(N, bool)
    in_batch[batch["ids"]] = True
    for key, new in host(state.table).items():
        old = mid.table[key]
        changed = np.any(new != old, axis=tuple(range(1, old.ndim)))
        assert not changed[~in_batch].any(), key  # other rows bitwise identical
        assert changed[in_batch].mean() > 0.5, key
    nu = host(state.table_opt_state.slots["nu"])
    for key, v in nu.items():
        assert not np.any(v[~in_batch]) and np.any(v[in_batch]), key
    # Row-local RMSprop, first visit of each row: every coordinate with a non-zero gradient
    # moves by its field's peak rate (aug 0.05 = hyper_lr, weight 0.1, soft 0.2); a
    # magnitude logit of an op that was switched off has a zero gradient and stays.
    np.testing.assert_array_equal(host(state.table_opt_state.visits), in_batch.astype(np.int32))
    for key, lr in {"aug_p": 0.05, "aug_m": 0.05, "weight": 0.1, "soft": 0.2}.items():
        step = np.abs(host(state.table)[key] - mid.table[key])[in_batch]
        moved = step[step > 0]
        assert moved.size > 0.1 * step.size, key
        assert np.mean(np.isclose(moved, lr, rtol=1e-2)) > 0.9, (key, moved[:8])
        assert step.max() <= lr * (1 + 1e-5), key
    assert float(metrics["hyper_lr_soft"]) == pytest.approx(0.2)


def test_nonfinite_hypergradient_is_skipped_and_counted():
    images, labels = data()
    state = make_state(FULL, labels)
    tb = make_batch(images, labels, np.arange(B))
    vb = make_batch(images, labels, np.arange(32, 32 + B))
    # A NaN loss weight in one batch row makes the train loss and the hypergradient NaN.
    state = state.replace(table={**state.table, "weight": state.table["weight"].at[3].set(
        jnp.nan)})
    before = host(state)
    state, metrics = train.hyper_step(state, tb, vb, FULL)
    assert int(metrics["skipped"]) == 1 and not bool(metrics["finite"])
    chex.assert_trees_all_equal(host(state.table), before.table)
    chex.assert_trees_all_equal(host(state.table_opt_state), before.table_opt_state)
    assert int(state.hyper_count) == 1


def test_nonfinite_inner_update_is_skipped_and_counted():
    """A NaN image (NaN loss) and an overflowing learning rate (Inf parameters) each skip
    the update: parameters, statistics and optimizer state are kept, the step advances."""
    images, labels = data()
    state = make_state(NONE, labels)
    nan_images = images.copy()
    nan_images[5] = np.nan
    before = host(state)
    state, metrics = train.inner_step(state, make_batch(nan_images, labels, np.arange(B)), NONE)
    assert int(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["loss"]))
    chex.assert_trees_all_equal(host(state.params), before.params)
    chex.assert_trees_all_equal(host(state.opt_state), before.opt_state)
    assert int(state.step) == 1
    good = make_batch(images, labels, np.arange(B))
    state, metrics = train.inner_step(state, good, NONE)
    assert int(metrics["skipped"]) == 0 and int(state.step) == 2
    huge = dataclasses.replace(NONE, lr=1e30)  # the first step blows the weights up...
    state, metrics = train.inner_step(state, good, huge)
    assert int(metrics["skipped"]) == 0
    before = host(state)
    for _ in range(2):  # ...after which every step is non-finite and skipped
        state, metrics = train.inner_step(state, good, huge)
        assert int(metrics["skipped"]) == 1
    chex.assert_trees_all_equal(host(state.params), before.params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(host(state.params)))
