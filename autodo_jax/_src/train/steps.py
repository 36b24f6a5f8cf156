"""The jit-compiled steps: inner (model) step, hyper (table) step, eval step."""
from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh

from autodo_jax import augment, implicit, losses, tables
from autodo_jax._src.train.step_config import (LR_FIELDS, StepConfig, hyper_lr_schedule,
                                               inner_optimizer, lr_schedule, make_solver,
                                               model_from_config, table_optimizer)
from autodo_jax._src.implicit.tree import all_finite
from autodo_jax._src.train.state import TrainState
from autodo_jax.models import encode, head_apply

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
_AUG_KEYS = ("aug_p", "aug_m")
_INNER_STREAM, _HYPER_STREAM = 0, 1


def _step_key(rng: jax.Array, stream: int, step: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(rng, stream), step)


def _rows(state: TrainState, ids: jax.Array, cfg: StepConfig,
          mesh: Optional[Mesh]) -> dict[str, jax.Array]:
    """The batch's table rows in float32 (``{}`` when nothing is learned)."""
    if set(state.table) != cfg.table_keys():
        raise ValueError(f"state.table has fields {sorted(state.table)} but cfg learns "
                         f"{sorted(cfg.table_keys())}")
    if not state.table:
        return {}
    rows = tables.gather(state.table, ids, mesh=mesh)
    return {k: v.astype(jnp.float32) for k, v in rows.items()}


def _augmented(key: jax.Array, images: jax.Array, rows: Mapping[str, jax.Array],
               cfg: StepConfig) -> jax.Array:
    """Images warped with the rows' λ_A (per-example rows; shared rows arrive broadcast,
    which samples exactly as ``shared=True`` and sums their gradients over the batch)."""
    if not cfg.learn_aug:
        return images
    return augment.augment(key, images, {k: rows[k] for k in _AUG_KEYS},
                           upsample=cfg.upsample)


def _loss_kwargs(rows: Mapping[str, jax.Array], cfg: StepConfig) -> dict[str, Any]:
    """The ``losses.train_loss`` arguments of ``cfg`` given the batch's rows (λ_S, λ_W)."""
    return {"mode": cfg.loss_mode, "soft_logits": rows.get("soft"),
            "lambda_w": rows.get("weight")}


def _train_loss(logits: jax.Array, labels: jax.Array, rows: Mapping[str, jax.Array],
                cfg: StepConfig) -> jax.Array:
    return losses.train_loss(logits, labels=labels, **_loss_kwargs(rows, cfg))


def _weight_mean(rows: Mapping[str, jax.Array]) -> jax.Array:
    return jnp.mean(losses.loss_weight(rows["weight"]))


def _global_norm(tree: Any) -> jax.Array:
    return optax.tree.norm(tree) if jax.tree.leaves(tree) else jnp.zeros(())


def guarded_update(loss: jax.Array, new: tuple, old: tuple,
                   finite: Optional[jax.Array] = None) -> tuple[tuple, jax.Array]:
    """The numerical guard of the model steps: ``new`` only if it can be trusted.

    Args:
        loss: the step's loss (scalar).
        new: the updated values, a tuple of pytrees (e.g. ``(params, batch_stats,
            opt_state)``).
        old: the current values, the same structure, shapes and dtypes as ``new``.
        finite: optional bool scalar, another condition for the update (e.g. the
            look-ahead's own finite flag).

    Returns:
        ``(kept, ok)``: ``kept`` is ``new`` when ``ok``, else ``old`` (leaf by leaf,
        ``jnp.where``); ``ok`` (bool scalar) is True when the loss and every element of
        ``new`` are finite and ``finite`` (if given) is True.
    """
    ok = all_finite(loss, *new)
    if finite is not None:
        ok = finite & ok
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old), ok


@functools.partial(jax.jit, static_argnames=("cfg", "mesh"), donate_argnums=0)
def inner_step(state: TrainState, batch: Batch, cfg: StepConfig,
               mesh: Optional[Mesh] = None) -> tuple[TrainState, Metrics]:
    """One SGD step of the model on a train batch, hyperparameters fixed.

    The batch's table rows are gathered and applied under ``stop_gradient`` (λ_A warps
    the images, λ_W weights the loss, λ_S gives the soft labels); no gradient reaches the
    table and the warp is not differentiated. ``state`` is donated.

    Numerical guard: when the loss, or any new parameter, BatchNorm statistic or optimizer
    moment is NaN or infinite, the update is skipped (parameters, statistics and
    optimizer state keep their values; ``step`` still advances, the batch is consumed)
    and ``metrics["skipped"]`` is 1.

    Args:
        state: the train state (donated: do not use it afterwards).
        batch: ``{"images": (B, H, W, C) float32, "labels": int32 (B,), "ids": int32
            (B,)}``; with ``mesh`` sharded ``P("data")`` (ids shard-local).
        cfg: static step configuration.
        mesh: optional static mesh (axis "data") over which the table is row-sharded.

    Returns:
        ``(new_state, metrics)``; metrics: "loss" (weighted train loss), "accuracy" (vs
        the given labels), "grad_norm", "lr", "skipped" (int32 0/1), and "weight_mean"
        when weights are learned.
    """
    model = model_from_config(cfg)
    rows = jax.lax.stop_gradient(_rows(state, batch["ids"], cfg, mesh))
    images = _augmented(_step_key(state.rng, _INNER_STREAM, state.step), batch["images"],
                        rows, cfg)

    def loss_fn(params):
        feats, new_stats = encode(model, params, state.batch_stats, images, train=True)
        logits = head_apply(params["head"], feats)
        return _train_loss(logits, batch["labels"], rows, cfg), (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = inner_optimizer(cfg).update(grads, state.opt_state, state.params)
    (params, new_stats, opt_state), finite = guarded_update(
        loss, (optax.apply_updates(state.params, updates), new_stats, opt_state),
        (state.params, state.batch_stats, state.opt_state))
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"]),
        "grad_norm": _global_norm(grads),
        "lr": lr_schedule(cfg)(state.step),
        "skipped": jnp.logical_not(finite).astype(jnp.int32),
    }
    if cfg.learn_weight:
        metrics["weight_mean"] = _weight_mean(rows)
    new_state = state.replace(params=params, batch_stats=new_stats, opt_state=opt_state,
                              step=state.step + 1)
    return new_state, metrics


def _implicit_head(head: Mapping[str, jax.Array], train_feats: jax.Array,
                   cfg: StepConfig) -> tuple[dict[str, jax.Array], Any]:
    """θ of the implicit differentiation and ``logits(θ, features)`` (``cfg.implicit_theta``).

    At the returned θ the logits equal ``head_apply(head, features)``; only which
    directions count as the inner solution differ: the whole head, the kernel with the
    bias fixed, or the kernel on features centred by the batch's mean train feature f̄
    (constant, no gradient) with bias b + Wᵀf̄ fixed.
    """
    if cfg.implicit_theta == "head":
        return dict(head), head_apply
    if cfg.implicit_theta == "kernel":
        shift, bias = 0.0, head["bias"]
    else:
        shift = lax.stop_gradient(jnp.mean(train_feats, axis=0))
        bias = head["bias"] + shift @ head["kernel"]

    def logits(theta, feats):
        return head_apply({"kernel": theta["kernel"], "bias": bias}, feats - shift)

    return {"kernel": head["kernel"]}, logits


def _hypergrad_kwargs(cfg: StepConfig, key: jax.Array, labels: jax.Array, logits_fn) -> dict:
    """Solver, curvature and the loss decompositions the chosen curvature needs."""
    kwargs = {"solver": make_solver(cfg, key), "curvature": cfg.curvature,
              "mode": cfg.hypergrad_mode}
    if cfg.curvature == "gauss_newton":
        kwargs["train_outputs"] = lambda th, hp, b: logits_fn(th, hp.get("features",
                                                                         b["features"]))
        kwargs["output_loss"] = lambda logits, hp, b: _train_loss(logits, labels, hp, cfg)
    elif cfg.curvature == "empirical_fisher":
        kwargs["per_example_loss"] = lambda th, hp, b: losses.per_example_train_loss(
            logits_fn(th, hp.get("features", b["features"])), labels=labels,
            **_loss_kwargs(hp, cfg))
    return kwargs


def table_hypergrads(state: TrainState, train_batch: Batch, val_batch: Batch,
                     cfg: StepConfig, mesh: Optional[Mesh] = None):
    """Hypergradients of the validation loss with respect to the batch's table rows.

    θ = the head, its kernel, or its kernel on centred features (``cfg.implicit_theta``,
    see :func:`_implicit_head`); the encoder is frozen and in inference mode (BatchNorm
    running statistics). The train features f(λ_A) = encoder(augment(x; λ_A)) are computed once
    with a VJP; ``implicit.hypergrad`` then treats (features, λ_W, λ_S) as the
    hyperparameters of the head's losses, so every curvature product touches the head
    only, and the features' hypergradient is pulled back through encoder and warp into
    λ_A (the chain rule; the same result as differentiating through the warp inside the
    train loss). Pure; called inside :func:`hyper_step`.

    Args:
        state, train_batch, val_batch, cfg, mesh: as for :func:`hyper_step`.

    Returns:
        ``(rows, row_grads, info, losses)``: gathered float32 rows ``{name: (B, ...)}``,
        their descent gradients (same structure), the ``implicit.HypergradInfo`` and
        ``{"train_loss", "val_loss"}`` at the current head.
    """
    if not cfg.learns_anything:
        raise ValueError("hyper_step: cfg learns no hyperparameters (learn_aug, "
                         "learn_weight and learn_soft are all False)")
    model = model_from_config(cfg)
    key = _step_key(state.rng, _HYPER_STREAM, state.hyper_count)
    labels = train_batch["labels"]
    rows = _rows(state, train_batch["ids"], cfg, mesh)
    params, stats = state.params, state.batch_stats

    def features(aug_rows):
        images = _augmented(key, train_batch["images"], aug_rows, cfg)
        return encode(model, params, stats, images, train=False)[0]

    aug_rows = {k: rows[k] for k in _AUG_KEYS if k in rows}
    if cfg.learn_aug:
        train_feats, features_vjp = jax.vjp(features, aug_rows)
    else:
        train_feats = features(aug_rows)
    val_feats = encode(model, params, stats, val_batch["images"], train=False)[0]

    hparams = {k: v for k, v in rows.items() if k not in _AUG_KEYS}
    tb = {}
    if cfg.learn_aug:
        hparams["features"] = train_feats
    else:
        tb["features"] = train_feats
    vb = {"features": val_feats, "labels": val_batch["labels"]}

    theta, logits_fn = _implicit_head(params["head"], train_feats, cfg)

    def train_loss(th, hp, b):
        logits = logits_fn(th, hp["features"] if "features" in hp else b["features"])
        return _train_loss(logits, labels, hp, cfg)

    def val_loss(th, b):
        return losses.val_loss(logits_fn(th, b["features"]), b["labels"])

    hp_grads, info = implicit.hypergrad(
        train_loss, val_loss, theta, hparams, tb, vb,
        **_hypergrad_kwargs(cfg, jax.random.fold_in(key, 1), labels, logits_fn))
    row_grads = {k: v for k, v in hp_grads.items() if k != "features"}
    if cfg.learn_aug:
        row_grads.update(features_vjp(hp_grads["features"])[0])
    values = {"train_loss": train_loss(theta, hparams, tb),
              "val_loss": val_loss(theta, vb)}
    return rows, row_grads, info, values


@functools.partial(jax.jit, static_argnames=("cfg", "mesh"), donate_argnums=0)
def hyper_step(state: TrainState, train_batch: Batch, val_batch: Batch, cfg: StepConfig,
               mesh: Optional[Mesh] = None) -> tuple[TrainState, Metrics]:
    """One implicit-differentiation step on the batch's table rows (one compiled function).

    Gathers the rows, computes their hypergradients (:func:`table_hypergrads`: head-only
    implicit differentiation, encoder frozen in inference mode, gradients through the warp
    into λ_A) and updates the rows with the row-sparse RMSprop. A non-finite hypergradient
    leaves table and RMSprop state untouched (``lax.cond``; counted in
    ``metrics["skipped"]``). Model parameters, BatchNorm statistics and the SGD state are
    not changed. ``state`` is donated.

    Args:
        state: the train state (donated); ``cfg`` must learn something.
        train_batch: ``{"images", "labels", "ids"}`` as for :func:`inner_step`.
        val_batch: ``{"images": (V, H, W, C), "labels": int32 (V,)}`` clean validation
            batch (not augmented; other keys ignored).
        cfg: static step configuration (solver, curvature, hyper learning rate).
        mesh: optional static mesh (axis "data").

    Returns:
        ``(new_state, metrics)``; metrics: "train_loss", "val_loss", "train_grad_norm",
        "val_grad_norm", "grad_divergence", "residual", "solver_iterations",
        "neumann_gap", "solution_cosine", "hypergrad_norm", "finite" (bool), "skipped"
        (int32 0/1), "hyper_lr", and "weight_mean" when weights are learned.
    """
    rows, row_grads, info, values = table_hypergrads(state, train_batch, val_batch, cfg,
                                                     mesh)
    finite = info.finite & all_finite(row_grads)
    optimizer = table_optimizer(cfg)

    def update(operands):
        table, opt_state = operands
        return tables.apply_rows(optimizer, table, opt_state, train_batch["ids"], row_grads,
                                 mesh=mesh)

    table, table_opt_state = lax.cond(finite, update, lambda ops: ops,
                                      (state.table, state.table_opt_state))
    metrics = {
        **values,
        "train_grad_norm": info.train_grad_norm,
        "val_grad_norm": info.val_grad_norm,
        "grad_divergence": info.grad_divergence,
        "residual": info.residual,
        "solver_iterations": info.iterations,
        "neumann_gap": info.neumann_gap,
        "solution_cosine": info.solution_cosine,
        "hypergrad_norm": _global_norm(row_grads),
        "finite": finite,
        "skipped": jnp.logical_not(finite).astype(jnp.int32),
        "hyper_lr": hyper_lr_schedule(cfg)(state.table_opt_state.count),
        **{f"hyper_lr_{g}": hyper_lr_schedule(cfg, g)(state.table_opt_state.count)
           for g in LR_FIELDS if getattr(cfg, f"hyper_lr_{g}") is not None},
    }
    if cfg.learn_weight:
        metrics["weight_mean"] = _weight_mean(rows)
    new_state = state.replace(table=table, table_opt_state=table_opt_state,
                              hyper_count=state.hyper_count + 1)
    return new_state, metrics


@functools.partial(jax.jit, static_argnames=("cfg",))
def eval_step(state: TrainState, batch: Batch, cfg: StepConfig) -> Metrics:
    """Inference-mode evaluation of one (padded) batch; nothing is donated.

    Args:
        state: the train state.
        batch: ``{"images": (B, H, W, C), "labels": int (B,), "mask": bool (B,)}``; mask
            False marks padding (optional: all True when absent).
        cfg: static step configuration.

    Returns:
        ``{"loss_sum": cross-entropy summed over real examples, "correct": int32 count,
        "count": int32 number of real examples, "predictions": int32 (B,) argmax,
        "correct_per_class": int32 (C,), "count_per_class": int32 (C,)}`` (C =
        ``cfg.num_classes``, by true label). Every value but "predictions" is a reduction
        over the batch, so on a mesh it is replicated and readable on every process.
    """
    model = model_from_config(cfg)
    feats, _ = encode(model, state.params, state.batch_stats, batch["images"], train=False)
    logits = head_apply(state.params["head"], feats)
    labels = batch["labels"]
    mask = batch.get("mask")
    mask = jnp.ones(labels.shape, bool) if mask is None else mask.astype(bool)
    preds = jnp.argmax(logits, -1).astype(jnp.int32)
    ce = losses.cross_entropy(logits, labels)
    hit = mask & (preds == labels)
    per_class = jnp.zeros((cfg.num_classes,), jnp.int32)
    return {
        "loss_sum": jnp.sum(jnp.where(mask, ce, 0.0)),
        "correct": jnp.sum(hit).astype(jnp.int32),
        "count": jnp.sum(mask).astype(jnp.int32),
        "predictions": preds,
        "correct_per_class": per_class.at[labels].add(hit.astype(jnp.int32)),
        "count_per_class": per_class.at[labels].add(mask.astype(jnp.int32)),
    }

