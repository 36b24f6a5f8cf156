"""The hyper step's hypergradient (features as hyperparameters of the head, pulled back
through encoder and warp by a VJP) equals differentiating through the warp directly."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from train_step_fixtures import B, FULL, data, make_batch, make_state

from autodo_jax import augment, implicit, losses, tables, train
from autodo_jax._src.train import steps as steps_impl
from autodo_jax.models import encode, head_apply


def test_table_hypergrads_equal_direct_hypergradient():
    """Features-as-hyperparameters + VJP equals differentiating through the warp."""
    images, labels = data()
    state = make_state(FULL, labels)
    tb = make_batch(images, labels, np.arange(B))
    vb = make_batch(images, labels, np.arange(32, 32 + B))
    rows, grads, info, _ = jax.jit(train.table_hypergrads, static_argnames="cfg")(
        state, tb, vb, cfg=FULL)
    model = train.model_from_config(FULL)
    key = steps_impl._step_key(state.rng, steps_impl._HYPER_STREAM, state.hyper_count)

    def feats(x):
        return encode(model, state.params, state.batch_stats, x, train=False)[0]

    def train_loss(head, hp, b):
        x = augment.augment(key, b["images"], hp)
        per = losses.soft_label_loss(head_apply(head, feats(x)), hp["soft"], symmetric=True)
        return losses.weighted_mean(per, losses.loss_weight(hp["weight"]))

    def val_loss(head, b):
        return jnp.mean(losses.cross_entropy(head_apply(head, feats(b["images"])),
                                             b["labels"]))

    direct_rows = tables.gather(state.table, tb["ids"])
    direct, direct_info = jax.jit(lambda: implicit.hypergrad(
        train_loss, val_loss, state.params["head"], direct_rows, tb, vb,
        solver=train.make_solver(FULL, key)))()
    assert bool(info.finite)
    for k in direct:
        scale = float(jnp.max(jnp.abs(direct[k])))
        assert scale > 0, k
        np.testing.assert_allclose(grads[k], direct[k], atol=2e-4 * scale, rtol=2e-3,
                                   err_msg=k)
    np.testing.assert_allclose(info.grad_divergence, direct_info.grad_divergence, rtol=1e-4)


def test_gauss_newton_equals_hessian_for_the_linear_head():
    """The head is linear in θ, so its Gauss-Newton matrix equals the Hessian: both
    curvatures, selected through StepConfig, give the same hypergradients."""
    images, labels = data()
    ws = dataclasses.replace(FULL, learn_aug=False)  # weights + soft labels, no warp
    state = make_state(ws, labels)
    tb = make_batch(images, labels, np.arange(B))
    vb = make_batch(images, labels, np.arange(32, 32 + B))
    run = jax.jit(train.table_hypergrads, static_argnames="cfg")
    out = {}
    for name, cfg in {
        "hessian": ws,
        "gauss_newton": dataclasses.replace(ws, curvature="gauss_newton"),
    }.items():
        _, grads, info, _ = run(state, tb, vb, cfg=cfg)
        assert bool(info.finite), name
        assert set(grads) == {"weight", "soft"}
        out[name] = grads
    for k in ("weight", "soft"):
        scale = float(jnp.max(jnp.abs(out["hessian"][k])))
        assert scale > 0, k
        np.testing.assert_allclose(out["gauss_newton"][k], out["hessian"][k],
                                   atol=1e-4 * scale, err_msg=k)
