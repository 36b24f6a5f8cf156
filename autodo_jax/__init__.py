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
- ``autodo_jax.data``: sources, the distortion protocol, batches with ids, baseline
  policies.

Every room is imported on first use (PEP 562 ``__getattr__``): ``import autodo_jax`` and
``from autodo_jax import hypergrad`` load only what they name, so the implicit-
differentiation library does not pull in Flax, the models or tensorflow_datasets.
"""
import importlib
from typing import Any

__version__ = "0.1.0"

_MODULES = ("augment", "data", "implicit", "losses", "models", "parallel", "reweight",
            "tables", "train")
_NAMES = {
    "implicit": ("hypergrad", "stationary_point", "HypergradInfo", "SolverInfo", "identity",
                 "neumann", "cg", "nystrom"),
    "reweight": ("lookahead", "l2rw_weights", "l2rw_value_and_grad", "mwn_init", "mwn_apply",
                 "mwn_meta_grad", "mwn_value_and_grad"),
    "tables": ("init_table", "gather", "apply_rows", "row_rmsprop", "row_rmsprop_local",
               "row_adam", "row_sgd", "RowOptState", "RowOptimizer"),
    "parallel": ("make_mesh", "maybe_initialize_distributed", "data_sharding",
                 "replicated_sharding", "padded_num_rows", "shard_table", "ShardLocalSampler",
                 "global_batch", "host_shards", "fetch"),
    "augment": ("sample_ops", "affine_matrices", "warp", "OP_NAMES", "NUM_OPS"),
    "losses": ("loss_weight", "soft_label_init", "cross_entropy", "soft_label_loss",
               "weighted_mean"),
    "models": ("get_model", "MODEL_NAMES", "encode", "head_apply", "init_variables"),
    "train": ("StepConfig", "TrainState", "autodo_table_init", "create_train_state",
              "inner_step", "hyper_step", "eval_step", "make_steps", "Steps"),
}
_HOME = {name: module for module, names in _NAMES.items() for name in names}

__all__ = [m for m in _MODULES if m != "data"] + [n for names in _NAMES.values() for n in names]


def __getattr__(name: str) -> Any:
    """Import a room (``autodo_jax.models``) or a public name (``hypergrad``) on first use."""
    if name in _MODULES:
        return importlib.import_module(f"autodo_jax.{name}")
    if name in _HOME:
        return getattr(importlib.import_module(f"autodo_jax.{_HOME[name]}"), name)
    raise AttributeError(f"module 'autodo_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULES) | set(_HOME))
