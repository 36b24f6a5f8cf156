"""The L2RW and Meta-Weight-Net inner steps: the update equals the model optimizer applied
to the gradient of Σ w ℓ with the library's weights; MWN's MLP state moves, is replicated
on a mesh and survives K-step dispatch; configuration errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_step_fixtures import B, C, HW, NONE, data, host, make_batch

from autodo_jax import losses, parallel, reweight, train
from autodo_jax._src.train import step_config as step_impl
from autodo_jax.models import encode, head_apply

L2RW = dataclasses.replace(NONE, reweight="l2rw")
MWN = dataclasses.replace(NONE, reweight="mwn")
L2RW_HEAD = dataclasses.replace(L2RW, reweight_scope="head")
MWN_HEAD = dataclasses.replace(MWN, reweight_scope="head")


def _state(cfg, mesh=None):
    return train.create_train_state(jax.random.key(0), cfg, {}, HW, mesh=mesh)


def _batches():
    images, labels = data()
    return make_batch(images, labels, np.arange(B)), {"images": images[B:2 * B],
                                                      "labels": labels[B:2 * B]}


def _reference_losses(cfg, state):
    model = train.model_from_config(cfg)

    def per_example(params, b):
        feats, _ = encode(model, params, state.batch_stats, b["images"], train=True)
        return losses.cross_entropy(head_apply(params["head"], feats), b["labels"])

    return per_example, lambda p, b: jnp.mean(per_example(p, b))


@pytest.mark.parametrize("cfg", [L2RW, MWN, L2RW_HEAD, MWN_HEAD],
                         ids=["l2rw", "mwn", "l2rw_head", "mwn_head"])
def test_step_applies_the_optimizer_to_the_weighted_gradient(cfg):
    # Reference: the library's look-ahead over every parameter, or (scope "head") over the
    # head's parameters with the encoder at θ inside the losses (recomputed on every call,
    # not stored); then the gradient of Σ w ℓ over every parameter.
    batch, val = _batches()
    state = _state(cfg)
    before = host(state)
    per_example, _ = _reference_losses(cfg, state)
    head_only = cfg.reweight_scope == "head"

    @jax.jit
    def reference(params, opt_state, phi, phi_state):
        lr = step_impl.lr_schedule(cfg)(0)
        moved = (lambda hp: dict(params, head=hp)) if head_only else (lambda p: p)
        look_loss = lambda p, b: per_example(moved(p), b)
        look_val = lambda p, b: jnp.mean(per_example(moved(p), b))
        look_params = params["head"] if head_only else params
        if cfg.reweight == "l2rw":
            w, info = reweight.l2rw_weights(look_loss, look_val, look_params, batch, val,
                                            step_size=lr)
            meta = {}
        else:
            g, info = reweight.mwn_meta_grad(look_loss, look_val, look_params, phi, batch,
                                             val, step_size=lr)
            updates, phi_state = step_impl.mwn_optimizer(cfg).update(g, phi_state, phi)
            meta = {"params": optax.apply_updates(phi, updates), "opt_state": phi_state}
            w = reweight.mwn_example_weights(meta["params"], per_example(params, batch))
        grads = jax.grad(lambda p: jnp.sum(w * per_example(p, batch)))(params)
        updates, _ = step_impl.inner_optimizer(cfg).update(grads, opt_state, params)
        return optax.apply_updates(params, updates), meta, w, info.val_loss

    want, meta, w, val_loss = reference(before.params, before.opt_state,
                                        before.meta.get("params", {}),
                                        before.meta.get("opt_state", {}))
    new, metrics = train.reweight_step(state, batch, val, cfg)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(new.meta), jax.tree.leaves(meta)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(float(metrics["val_loss"]), float(val_loss), rtol=1e-5)
    assert int(new.step) == 1 and int(metrics["skipped"]) == 0
    assert float(metrics["weight_max"]) >= 1.0
    if cfg.reweight == "l2rw":
        np.testing.assert_allclose(float(metrics["kept_fraction"]), float(np.mean(w > 0)))
        assert 0 < float(metrics["kept_fraction"]) < 1


def test_mwn_trains_on_a_mesh_and_in_k_step_dispatches(xla_optimized):
    # Compiled as in production: the tolerance below is for XLA's optimised programs
    # (unoptimised, the 8-device and the scanned paths round differently: ~7e-4 relative).
    batch, val = _batches()
    mesh = parallel.make_mesh(8)
    put = lambda t: parallel.global_batch(t, mesh)
    one = _state(MWN, mesh)
    for _ in range(2):
        one, _ = train.reweight_step(one, put(batch), put(val), MWN, mesh)
    assert one.meta["params"]["hidden"]["kernel"].sharding.is_fully_replicated
    stacked = lambda t: jax.tree.map(lambda x: np.stack([x, x]), t)
    two, metrics = train.reweight_steps(_state(MWN), stacked(batch), stacked(val),
                                        jnp.array([True, True]), MWN)
    assert metrics["loss"].shape == (2,)
    for a, b in zip(jax.tree.leaves(host(one.meta)), jax.tree.leaves(host(two.meta))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    curve = train.mwn_weight_curve(two, jnp.linspace(0.0, 5.0, 6))
    assert curve.shape == (6,) and bool(jnp.all((curve > 0) & (curve < 1)))


@pytest.mark.parametrize("cfg", [L2RW, MWN], ids=["l2rw", "mwn"])
def test_a_non_finite_batch_is_skipped(cfg):
    batch, val = _batches()
    batch = dict(batch, images=batch["images"].copy())
    batch["images"][0, 0, 0, 0] = np.nan
    state = _state(cfg)
    before = host(state)
    new, metrics = train.reweight_step(state, batch, val, cfg)
    assert int(metrics["skipped"]) == 1 and int(new.step) == 1
    for a, b in zip(jax.tree.leaves(host((new.params, new.opt_state, new.meta))),
                    jax.tree.leaves((before.params, before.opt_state, before.meta))):
        np.testing.assert_array_equal(a, b)


def test_configuration_errors():
    with pytest.raises(ValueError, match="StepConfig.reweight must be one of"):
        train.StepConfig(reweight="focal")
    with pytest.raises(ValueError, match='StepConfig.reweight must be "none" when a table'):
        train.StepConfig(reweight="l2rw", learn_weight=True)
    with pytest.raises(ValueError, match="StepConfig.reweight_scope must be one of"):
        train.StepConfig(reweight="mwn", reweight_scope="encoder")
    with pytest.raises(ValueError, match="StepConfig.mwn_hidden"):
        train.StepConfig(reweight="mwn", mwn_hidden=0)
    batch, val = _batches()
    with pytest.raises(ValueError, match='reweight_step needs cfg.reweight "l2rw" or "mwn"'):
        train.reweight_step(_state(NONE), batch, val, NONE)
    assert _state(L2RW).meta == {} and set(_state(MWN).meta) == {"params", "opt_state"}
    _ = C
