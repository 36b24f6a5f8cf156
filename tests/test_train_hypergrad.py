"""The hyper step's hypergradient (features as hyperparameters of the head, pulled back
through encoder and warp by a VJP) equals differentiating through the warp directly."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from train_step_fixtures import B, FULL, data, make_batch, make_state

from autodo_jax import augment, implicit, losses, tables, train
from autodo_jax._src.train import step_config as step_impl, steps as steps_impl
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
        solver=step_impl.make_solver(FULL, key)))()
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


def test_centred_kernel_hypergradient_matches_closed_form():
    """implicit_theta="centred_kernel", identity solver, plain KL: for example n of the
    batch, dL_val/dλ_S,n = (w_n/B) J_q,n V_Kᵀ(f_n − f̄) with J_q = diag q − qqᵀ,
    V_K = (F_val − f̄)ᵀ(P_val − Y_val)/V and f̄ the batch's mean train feature; the part
    shared by every example (bias and mean feature) is gone, so Σ_n s_n = 0."""
    images, labels = data()
    cfg = dataclasses.replace(FULL, learn_aug=False, symmetric_kl=False, solver="identity",
                              implicit_theta="centred_kernel")
    state = make_state(cfg, labels)
    state = state.replace(table={**state.table, "weight": state.table["weight"] + 0.3 *
                                 jnp.sin(jnp.arange(state.table["weight"].shape[0]))})
    tb = make_batch(images, labels, np.arange(B))
    vb = make_batch(images, labels, np.arange(32, 32 + B))
    rows, grads, info, values = jax.jit(train.table_hypergrads, static_argnames="cfg")(
        state, tb, vb, cfg=cfg)
    model = train.model_from_config(cfg)

    def feats(x):
        return np.asarray(encode(model, state.params, state.batch_stats, x, train=False)[0],
                          np.float64)

    f, fv = feats(tb["images"]), feats(vb["images"])
    head = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params["head"])
    pv = np.asarray(jax.nn.softmax(fv @ head["kernel"] + head["bias"]))
    fbar = f.mean(0)
    vk = (fv - fbar).T @ (pv - np.eye(10)[vb["labels"]]) / B
    s = (f - fbar) @ vk
    q = np.asarray(jax.nn.softmax(np.asarray(rows["soft"], np.float64)))
    jq_s = q * (s - np.sum(q * s, -1, keepdims=True))
    w = np.asarray(losses.loss_weight(rows["weight"]), np.float64)
    want = w[:, None] / B * jq_s
    np.testing.assert_allclose(grads["soft"], want, atol=1e-4 * np.abs(want).max(), rtol=1e-3)
    np.testing.assert_allclose(s.sum(0), 0.0, atol=1e-9 * np.abs(s).max() * B)
    # The same logits: the train and validation losses equal those of the plain head.
    _, _, _, plain = jax.jit(train.table_hypergrads, static_argnames="cfg")(
        state, tb, vb, cfg=dataclasses.replace(cfg, implicit_theta="head"))
    for k in ("train_loss", "val_loss"):
        np.testing.assert_allclose(values[k], plain[k], rtol=1e-5)
