"""autodo_jax: AutoDO (Gudovskiy et al., CVPR 2021) in JAX.

The public API, re-exported explicitly from the rooms below:

- ``autodo_jax.implicit``: :func:`hypergrad` and its solvers (:func:`identity`,
  :func:`neumann`, :func:`cg`, :func:`nystrom`); knows nothing about images.
- ``autodo_jax.reweight``: per-example loss weights from a one-step look-ahead on a
  clean split: Learning to Reweight (:func:`l2rw_weights`) and Meta-Weight-Net
  (:func:`mwn_meta_grad`); knows nothing about images either.
- ``autodo_jax.tables`` / ``autodo_jax.parallel``: per-example hyperparameter tables,
  row-sparse optimizers, the ``data`` mesh, row sharding and the shard-local sampler.
- ``autodo_jax.augment`` / ``autodo_jax.losses``: differentiable affine augmentation
  (λ_A) and the weighted, soft-label losses (λ_W, λ_S).
- ``autodo_jax.models``: Flax Linen encoders with an explicit linear head.
- ``autodo_jax.train``: the jit-compiled inner, hyper and eval steps.
- ``autodo_jax.data`` (imported on demand, it pulls in tensorflow_datasets): sources,
  the distortion protocol, batches with ids, baseline policies.
"""
from autodo_jax import augment, implicit, losses, models, parallel, reweight, tables, train
from autodo_jax.augment import NUM_OPS, OP_NAMES, affine_matrices, sample_ops, warp
from autodo_jax.implicit import (HypergradInfo, SolverInfo, cg, hypergrad, identity,
                                 neumann, nystrom)
from autodo_jax.losses import (cross_entropy, loss_weight, soft_label_init,
                               soft_label_loss, weighted_mean)
from autodo_jax.models import MODEL_NAMES, encode, get_model, head_apply, init_variables
from autodo_jax.reweight import (l2rw_value_and_grad, l2rw_weights, lookahead, mwn_apply,
                                 mwn_init, mwn_meta_grad, mwn_value_and_grad)
from autodo_jax.parallel import (ShardLocalSampler, data_sharding, fetch, global_batch,
                                 host_shards, make_mesh, maybe_initialize_distributed,
                                 padded_num_rows, replicated_sharding, shard_table)
from autodo_jax.tables import (RowOptState, RowOptimizer, apply_rows, gather, init_table,
                               row_adam, row_rmsprop, row_rmsprop_local, row_sgd)
from autodo_jax.train import (StepConfig, TrainState, autodo_table_init, check_finite,
                              create_train_state, eval_step, hyper_step, inner_step)

__version__ = "0.1.0"

__all__ = [
    # modules
    "augment", "implicit", "losses", "models", "parallel", "reweight", "tables", "train",
    # implicit
    "hypergrad", "HypergradInfo", "SolverInfo", "identity", "neumann", "cg", "nystrom",
    # reweight
    "lookahead", "l2rw_weights", "l2rw_value_and_grad", "mwn_init", "mwn_apply",
    "mwn_meta_grad", "mwn_value_and_grad",
    # tables and parallel
    "init_table", "gather", "apply_rows", "row_rmsprop", "row_rmsprop_local", "row_adam", "row_sgd",
    "RowOptState", "RowOptimizer", "make_mesh", "maybe_initialize_distributed",
    "data_sharding", "replicated_sharding", "padded_num_rows", "shard_table",
    "ShardLocalSampler", "global_batch", "host_shards", "fetch",
    # augmentation and losses
    "sample_ops", "affine_matrices", "warp", "OP_NAMES", "NUM_OPS", "loss_weight",
    "soft_label_init", "cross_entropy", "soft_label_loss", "weighted_mean",
    # models and steps
    "get_model", "MODEL_NAMES", "encode", "head_apply", "init_variables", "StepConfig",
    "TrainState", "autodo_table_init", "create_train_state", "inner_step", "hyper_step",
    "eval_step", "check_finite",
]
