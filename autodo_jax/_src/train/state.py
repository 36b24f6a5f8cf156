"""``TrainState`` and its constructors (model variables, optimizer states, tables)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from autodo_jax import augment, losses, parallel, reweight, tables
from autodo_jax._src.train.step_config import (StepConfig, inner_optimizer, model_from_config,
                                               mwn_optimizer, table_optimizer)
from autodo_jax.models import init_variables

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
    """Everything a run updates (a pytree; checkpoint it whole).

    Attributes:
        params: ``{"encoder": ..., "head": {"kernel": (D, C), "bias": (C,)}}`` float32.
        batch_stats: ``{"encoder": ...}`` BatchNorm running statistics, or ``{}``.
        opt_state: optax state of the model's SGD (``inner_optimizer(cfg)``).
        table: per-example hyperparameters ``{name: (N, ...) | (1, ...)}`` (``{}`` for
            methods that learn nothing); row-sharded on a mesh.
        table_opt_state: ``tables.RowOptState`` of the row RMSprop (None when ``table``
            is empty).
        step: int32 scalar, inner steps done.
        hyper_count: int32 scalar, hyper steps done (skipped ones included).
        rng: uint32 (2,) raw PRNG key data; step keys are folded in from it.
        meta: meta-learned parameters outside the tables: ``{"params": MLP params,
            "opt_state": their Adam state}`` for Meta-Weight-Net (``cfg.reweight ==
            "mwn"``), ``{}`` otherwise; replicated.
    """

    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    table: PyTree
    table_opt_state: PyTree
    step: jax.Array
    hyper_count: jax.Array
    rng: jax.Array
    meta: PyTree = flax.struct.field(default_factory=dict)


def autodo_table_init(labels: Any, num_classes: int, *, aug: bool, shared_aug: bool = False,
                      weight: bool, soft: bool, dtype: Any = jnp.float32,
                      soft_eps: float = 0.05) -> tables.Table:
    """The initial per-example table of an AutoDO method.

    Args:
        labels: int (N,) given (possibly noisy) train labels, row r <-> example r.
        num_classes: C.
        aug: learn augmentation: "aug_p" (N|1, K) = logit(0.2), "aug_m" (N|1, K) = 0
            (σ = 0.5).
        shared_aug: one shared λ_A row (leading axis 1) instead of N rows.
        weight: learn loss weights: "weight" (N,) = 0 (weight 1).
        soft: learn soft labels: "soft" (N, C) = ``losses.soft_label_init(labels, C,
            soft_eps)``.
        dtype: storage dtype of the table.
        soft_eps: label smoothing of the soft-label initialisation.

    Returns:
        ``{name: array}`` validated by ``tables.init_table``, or ``{}`` when nothing is
        learned.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an int array of shape (N,), got {labels.dtype} "
                         f"{labels.shape}")
    if shared_aug and not aug:
        raise ValueError("shared_aug=True needs aug=True")
    n, k = labels.shape[0], augment.NUM_OPS
    initial = {}
    if aug:
        rows = 1 if shared_aug else n
        initial["aug_p"] = np.full((rows, k), augment.P_LOGIT_INIT, np.float32)
        initial["aug_m"] = np.full((rows, k), augment.M_LOGIT_INIT, np.float32)
    if weight:
        initial["weight"] = np.zeros((n,), np.float32)
    if soft:
        initial["soft"] = losses.soft_label_init(jnp.asarray(labels), num_classes, soft_eps)
    return tables.init_table(initial, dtype=dtype) if initial else {}


def create_train_state(key: jax.Array, cfg: StepConfig, table: tables.Table,
                       input_shape: Sequence[int], *,
                       mesh: Optional[Mesh] = None) -> TrainState:
    """A fresh train state.

    Args:
        key: PRNG key (typed or raw uint32); split into the init key and ``state.rng``.
        cfg: the step configuration (model, optimizers).
        table: from :func:`autodo_table_init` (unsharded); must hold exactly the fields
            ``cfg`` learns (``cfg.table_keys()``).
        input_shape: one image's shape (H, W, C).
        mesh: optional mesh with axis "data": the table is padded and row-sharded
            (``parallel.shard_table``), everything else replicated.

    Returns:
        A :class:`TrainState` with step = hyper_count = 0.
    """
    if set(table) != cfg.table_keys():
        raise ValueError(f"table has fields {sorted(table)} but cfg learns "
                         f"{sorted(cfg.table_keys())}")
    init_key, rng_key = jax.random.split(key)
    variables = init_variables(model_from_config(cfg), init_key, input_shape)
    params = variables["params"]
    if mesh is not None and table:
        table = parallel.shard_table(table, mesh)
    state = TrainState(
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=inner_optimizer(cfg).init(params),
        table=dict(table),
        table_opt_state=table_optimizer(cfg).init(table) if table else None,
        step=jnp.zeros((), jnp.int32),
        hyper_count=jnp.zeros((), jnp.int32),
        rng=_raw_key(rng_key),
        meta=_meta_init(jax.random.fold_in(key, 1), cfg),
    )
    return place_state(state, mesh) if mesh is not None else state


def _meta_init(key: jax.Array, cfg: StepConfig) -> PyTree:
    if cfg.reweight != "mwn":
        return {}
    mwn = reweight.mwn_init(key, cfg.mwn_hidden)
    return {"params": mwn, "opt_state": mwn_optimizer(cfg).init(mwn)}


def place_state(state: TrainState, mesh: Mesh) -> TrainState:
    """Puts ``state`` on ``mesh``: table and per-row optimizer leaves row-sharded
    ``P("data")``, everything else replicated (e.g. after a restore)."""
    rep = parallel.replicated_sharding(mesh)
    rows = tables.num_table_rows(state.table) if state.table else 0
    placed = jax.tree.map(lambda x: jax.device_put(x, rep),
                          state.replace(table={}, table_opt_state=None))
    if not state.table:
        return placed
    table_part = (state.table, state.table_opt_state)
    table_part = jax.device_put(table_part, parallel.row_shardings(table_part, mesh, rows))
    return placed.replace(table=table_part[0], table_opt_state=table_part[1])


def _raw_key(key: jax.Array) -> jax.Array:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return jnp.asarray(key, jnp.uint32)
