"""Inner steps reweighted by a look-ahead on a clean batch: L2RW and Meta-Weight-Net.

:func:`reweight_step` binds ``autodo_jax.reweight`` to the model, loss and optimizer of a
``StepConfig`` with ``reweight`` "l2rw" or "mwn"; :func:`reweight_steps` runs K of them
per dispatch (``scan_steps``). No table: the weights are recomputed at every step (L2RW)
or produced by the MLP in ``state.meta`` (MWN).
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from autodo_jax import losses, reweight
from autodo_jax._src.train.multistep import scan_steps
from autodo_jax._src.train.state import TrainState
from autodo_jax._src.train.steps import guarded_update
from autodo_jax._src.train.step_config import (StepConfig, inner_optimizer, lr_schedule,
                                               model_from_config, mwn_optimizer)
from autodo_jax.models import encode, head_apply

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def _model_losses(state: TrainState, cfg: StepConfig):
    """(features, per_example_loss, val_loss) of ``reweight`` over all parameters.

    ``features(params, images) -> (feats (B, D), new BatchNorm statistics)``;
    ``per_example_loss(params, batch) -> (ce (B,), (feats, logits, stats))``: cross-entropy
    against the given labels; ``val_loss(params, batch)``: the clean mean loss. Every pass
    in training mode (BatchNorm batch statistics, as the authors' code)."""
    model = model_from_config(cfg)

    def features(params, images):
        return encode(model, params, state.batch_stats, images, train=True)

    def per_example_loss(params, batch):
        feats, stats = features(params, batch["images"])
        logits = head_apply(params["head"], feats)
        return losses.cross_entropy(logits, batch["labels"]), (feats, logits, stats)

    def val_loss(params, batch):
        feats, _ = features(params, batch["images"])
        return losses.val_loss(head_apply(params["head"], feats), batch["labels"])

    return features, per_example_loss, val_loss


def _head_loss(head_params, batch):
    """Per-example cross-entropy of the head on stored features ``batch["feats"]``."""
    return losses.cross_entropy(head_apply(head_params, batch["feats"]), batch["labels"])


def _head_val_loss(head_params, batch):
    """Clean loss of the head on stored features."""
    return losses.val_loss(head_apply(head_params, batch["feats"]), batch["labels"])


def _look_ahead(per_example_loss, val_loss, params, batch, val_batch, cfg, meta, lr,
                has_aux):
    """The library's look-ahead of ``cfg.reweight`` over ``params``.
    Returns ((loss, aux), grads of ``params``, weights (B,), new meta, info)."""
    if cfg.reweight == "l2rw":
        value, grads, w, info = reweight.l2rw_value_and_grad(
            per_example_loss, val_loss, params, batch, val_batch, step_size=lr,
            has_aux=has_aux)
        return value, grads, w, meta, info
    value, grads, (phi, phi_state), w, info = reweight.mwn_value_and_grad(
        per_example_loss, val_loss, params, meta["params"], meta["opt_state"], batch,
        val_batch, step_size=lr, optimizer=mwn_optimizer(cfg), normalize=cfg.mwn_normalize,
        has_aux=has_aux)
    return value, grads, w, {"params": phi, "opt_state": phi_state}, info


def _all_scope(state: TrainState, batch: Batch, val_batch: Batch, cfg: StepConfig, lr):
    """The papers' look-ahead: every parameter takes the virtual step.
    Returns (loss, logits, stats, grads, weights, meta, info)."""
    _, per_example_loss, val_loss = _model_losses(state, cfg)
    (loss, (_, logits, stats)), grads, w, meta, info = _look_ahead(
        per_example_loss, val_loss, state.params, batch, val_batch, cfg, state.meta, lr,
        has_aux=True)
    return loss, logits, stats, grads, w, meta, info


def _head_scope(state: TrainState, batch: Batch, val_batch: Batch, cfg: StepConfig, lr):
    """Look-ahead of the head only: one linearisation of the whole model on the train
    batch (its features are kept), one forward of the encoder on the clean batch (the
    encoder does not move, so its clean features are those at θ), then the library's
    look-ahead on the head over the stored features (its head gradient is unused); the
    model's gradient of Σ w ℓ comes from the stored linearisation. Returns as
    :func:`_all_scope`."""
    features, per_example_loss, _ = _model_losses(state, cfg)
    ce, jvp, (feats, logits, stats) = jax.linearize(
        lambda p: per_example_loss(p, batch), state.params, has_aux=True)
    val_feats, _ = features(state.params, val_batch["images"])
    stored = {"feats": jax.lax.stop_gradient(feats), "labels": batch["labels"]}
    val_stored = {"feats": jax.lax.stop_gradient(val_feats), "labels": val_batch["labels"]}
    _, _, w, meta, info = _look_ahead(_head_loss, _head_val_loss, state.params["head"],
                                      stored, val_stored, cfg, state.meta, lr, has_aux=False)
    grads = jax.linear_transpose(jvp, state.params)(w.astype(ce.dtype))[0]
    return jnp.sum(w * ce), logits, stats, grads, w, meta, info


@functools.partial(jax.jit, static_argnames=("cfg", "mesh"), donate_argnums=0)
def reweight_step(state: TrainState, batch: Batch, val_batch: Batch, cfg: StepConfig,
                  mesh: Optional[Mesh] = None) -> tuple[TrainState, Metrics]:
    """One model step on the batch loss Σ_i w_i ℓ_i with weights from a look-ahead.

    ``cfg.reweight == "l2rw"``: w from :func:`autodo_jax.reweight.l2rw_value_and_grad`
    (normalised to sum 1, recomputed every step). ``"mwn"``: one Meta-Weight-Net iteration
    (:func:`autodo_jax.reweight.mwn_value_and_grad`): the MLP in ``state.meta`` takes its
    Adam step on the meta-gradient, then w = V(ℓ; φ_new)/B. The virtual step uses the
    current learning rate of the model's schedule and moves every model parameter. Then
    the model's SGD (Nesterov, weight decay) applies the gradient. ``state`` is donated.
    ``cfg.reweight_scope == "head"``: the same with only the linear head taking the
    virtual step (the encoder's train and clean features computed once at θ; exact for
    that objective); the model's update still moves every parameter.

    Numerical guard (as ``inner_step``): when the loss, a look-ahead quantity, or any new
    parameter, statistic, optimizer moment or MLP parameter is NaN or infinite, the update
    is skipped (the state keeps its values, ``step`` advances) and ``metrics["skipped"]``
    is 1.

    Args:
        state: the train state (donated); ``state.table`` is empty.
        batch: ``{"images": (B, H, W, C), "labels": int32 (B,), ...}`` (other keys
            ignored); sharded ``P("data")`` with ``mesh``.
        val_batch: ``{"images": (V, H, W, C), "labels": int32 (V,)}`` clean batch.
        cfg: static configuration with ``reweight`` "l2rw" or "mwn".
        mesh: optional static mesh (the batches' sharding; nothing else depends on it).

    Returns:
        ``(new_state, metrics)``; metrics: "loss" (Σ w ℓ), "ce" (unweighted mean
        cross-entropy), "accuracy", "grad_norm", "lr", "val_loss" (clean loss after the
        virtual step), "weight_max" (B·max w: 1 = uniform), "kept_fraction" (share of
        examples with w > 0), "skipped" (int32 0/1).
    """
    del mesh
    if cfg.reweight not in ("l2rw", "mwn"):
        raise ValueError(f'reweight_step needs cfg.reweight "l2rw" or "mwn", got '
                         f"{cfg.reweight!r}")
    lr = lr_schedule(cfg)(state.step)
    scope = _head_scope if cfg.reweight_scope == "head" else _all_scope
    loss, logits, stats, grads, w, meta, info = scope(state, batch, val_batch, cfg, lr)
    ce = jnp.mean(losses.cross_entropy(logits, batch["labels"]))
    updates, opt_state = inner_optimizer(cfg).update(grads, state.opt_state, state.params)
    (params, stats, opt_state, meta), finite = guarded_update(
        loss, (optax.apply_updates(state.params, updates), stats, opt_state, meta),
        (state.params, state.batch_stats, state.opt_state, state.meta), finite=info.finite)
    b = w.shape[0]
    metrics = {
        "loss": loss,
        "ce": ce,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"]),
        "grad_norm": optax.tree.norm(grads),
        "lr": lr,
        "val_loss": info.val_loss,
        "weight_max": b * jnp.max(w) / jnp.maximum(jnp.sum(w), 1e-12),
        "kept_fraction": jnp.mean(w > 0),
        "skipped": jnp.logical_not(finite).astype(jnp.int32),
    }
    new_state = state.replace(params=params, batch_stats=stats, opt_state=opt_state,
                              meta=meta, step=state.step + 1)
    return new_state, metrics


@functools.partial(jax.jit, static_argnames=("cfg", "mesh"), donate_argnums=0)
def reweight_steps(state: TrainState, batches: Batch, val_batches: Batch,
                   valid: Optional[jax.Array], cfg: StepConfig,
                   mesh: Optional[Mesh] = None) -> tuple[TrainState, Any]:
    """K :func:`reweight_step` s in one dispatch (batches with a leading axis K; ``valid``
    bool (K,) or None, as for ``inner_steps``); metrics get a leading axis K."""
    return scan_steps(lambda s, t, v: reweight_step(s, t, v, cfg, mesh), state,
                      (batches, val_batches), valid)


def mwn_weight_curve(state: TrainState, loss_values: jax.Array) -> jax.Array:
    """The learned MWN weighting function V(ℓ) at the given loss values ((L,) -> (L,))."""
    return reweight.mwn_apply(state.meta["params"], loss_values)
