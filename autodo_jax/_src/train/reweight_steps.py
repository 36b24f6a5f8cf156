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
from autodo_jax._src.implicit.tree import all_finite
from autodo_jax._src.train.multistep import scan_steps
from autodo_jax._src.train.state import TrainState
from autodo_jax._src.train.step_config import (StepConfig, inner_optimizer, lr_schedule,
                                               model_from_config, mwn_optimizer)
from autodo_jax.models import encode, head_apply

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def _model_losses(state: TrainState, cfg: StepConfig):
    """(per_example_loss, val_loss) of ``reweight``: cross-entropy against the given
    labels; both passes in training mode (BatchNorm batch statistics, as the authors'
    code); the train pass returns (logits, new BatchNorm statistics) as aux."""
    model = model_from_config(cfg)

    def logits_and_stats(params, images):
        feats, stats = encode(model, params, state.batch_stats, images, train=True)
        return head_apply(params["head"], feats), stats

    def per_example_loss(params, batch):
        logits, stats = logits_and_stats(params, batch["images"])
        return losses.cross_entropy(logits, batch["labels"]), (logits, stats)

    def val_loss(params, batch):
        return losses.val_loss(logits_and_stats(params, batch["images"])[0], batch["labels"])

    return per_example_loss, val_loss


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
    per_example_loss, val_loss = _model_losses(state, cfg)
    lr = lr_schedule(cfg)(state.step)
    meta = state.meta
    if cfg.reweight == "l2rw":
        (loss, (logits, stats)), grads, w, info = reweight.l2rw_value_and_grad(
            per_example_loss, val_loss, state.params, batch, val_batch, step_size=lr,
            has_aux=True)
        ce = jnp.mean(losses.cross_entropy(logits, batch["labels"]))
    else:
        (loss, (logits, stats)), grads, (phi, phi_state), w, info = reweight.mwn_value_and_grad(
            per_example_loss, val_loss, state.params, meta["params"], meta["opt_state"],
            batch, val_batch, step_size=lr, optimizer=mwn_optimizer(cfg),
            normalize=cfg.mwn_normalize, has_aux=True)
        meta = {"params": phi, "opt_state": phi_state}
        ce = jnp.mean(info.losses)
    updates, opt_state = inner_optimizer(cfg).update(grads, state.opt_state, state.params)
    new = (optax.apply_updates(state.params, updates), stats, opt_state, meta)
    finite = info.finite & all_finite(loss, *new)
    params, stats, opt_state, meta = jax.tree.map(
        lambda a, b: jnp.where(finite, a, b), new,
        (state.params, state.batch_stats, state.opt_state, state.meta))
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
