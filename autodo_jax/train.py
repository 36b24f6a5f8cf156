"""Train state and the jit-compiled AutoDO steps.

- :class:`StepConfig`: frozen, hashable configuration (model, method flags, optimizers,
  schedules, hypergradient solver and curvature); a static argument of every step.
- :func:`autodo_table_init`, :func:`create_train_state`, :class:`TrainState`.
- :func:`make_steps` -> :class:`Steps` ``(train, hyper, eval)``: the steps of a run,
  picked once from its ``StepConfig`` and the steps per dispatch K.
- :func:`inner_step` (model SGD step with λ fixed), :func:`hyper_step` (implicit
  hypergradient and row-sparse RMSprop on the batch's table rows), :func:`eval_step`;
  :func:`table_hypergrads` (the hypergradient part of the hyper step).
- :func:`reweight_step` / :func:`reweight_steps`: the inner step of the competitors that
  reweight each batch by a look-ahead on a clean batch (``StepConfig.reweight`` "l2rw",
  "mwn"; ``autodo_jax.reweight``), and :func:`mwn_weight_curve`.
- :func:`inner_steps`, :func:`hyper_steps`: K steps per dispatch (``lax.scan`` over
  stacked batches); :func:`scan_steps` / :func:`jit_multi_step` for any other step.
- The choices of the ``StepConfig`` fields: :data:`COMPUTE_DTYPES`, :data:`SOLVERS`,
  :data:`TABLE_OPTIMIZERS`, :data:`REWEIGHTS`, :data:`REWEIGHT_SCOPES`,
  :data:`SOFT_NORMS`, :data:`IMPLICIT_THETAS`; :func:`model_from_config`.

Every step runs unchanged on one device or sharded over a mesh (batch ``P("data")``,
table rows ``P("data")``, everything else replicated): pass the static ``mesh``.
Optimizer and schedule builders (``lr_schedule``, ``inner_optimizer``, ...) live in
``autodo_jax._src.train.step_config``.
"""
from autodo_jax._src.train.step_config import (COMPUTE_DTYPES, IMPLICIT_THETAS,
                                               REWEIGHT_SCOPES, REWEIGHTS, SOFT_NORMS, SOLVERS,
                                               TABLE_OPTIMIZERS, StepConfig,
                                               model_from_config)
from autodo_jax._src.train.state import TrainState, autodo_table_init, create_train_state
from autodo_jax._src.train.multistep import (hyper_steps, inner_steps, jit_multi_step,
                                             scan_steps)
from autodo_jax._src.train.reweight_steps import (mwn_weight_curve, reweight_step,
                                                  reweight_steps)
from autodo_jax._src.train.steps import eval_step, hyper_step, inner_step, table_hypergrads
from autodo_jax._src.train.builder import BoundStep, Steps, make_steps

__all__ = [
    "COMPUTE_DTYPES",
    "IMPLICIT_THETAS",
    "REWEIGHTS",
    "REWEIGHT_SCOPES",
    "SOFT_NORMS",
    "SOLVERS",
    "TABLE_OPTIMIZERS",
    "BoundStep",
    "StepConfig",
    "Steps",
    "TrainState",
    "autodo_table_init",
    "create_train_state",
    "eval_step",
    "hyper_step",
    "hyper_steps",
    "inner_step",
    "inner_steps",
    "jit_multi_step",
    "make_steps",
    "model_from_config",
    "mwn_weight_curve",
    "reweight_step",
    "reweight_steps",
    "scan_steps",
    "table_hypergrads",
]
