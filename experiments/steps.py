"""Binds a run's Config to the library's jit-compiled steps (autodo_jax.train).

`build_steps(config, data, mesh, steps_per_epoch, hyper_steps_per_epoch)` returns a
`Steps` object with the few calls the loop needs: a fresh state, the inner / hyper /
eval steps on global (sharded) batches, the finiteness check and the final table.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from autodo_jax import augment, train as lib
from experiments import config as cfg_lib


def step_config(config: cfg_lib.Config, num_classes: int, steps_per_epoch: int,
                hyper_steps_per_epoch: int) -> lib.StepConfig:
    """The library StepConfig of a run.

    Schedules: the inner learning rate warms up linearly from lr/10 over
    ``min(warmup_epochs, epochs)`` epochs, then follows a cosine to lr·1e-3 at the last
    step. The table learning rate has the same shape over the hyper steps, warming up over
    the first ``min(warmup_epochs, hyper epochs)`` hyper epochs.
    """
    c = config
    total = c.epochs * steps_per_epoch
    hyper_epochs = max(c.epochs - c.hyper_start_epoch, 0) if cfg_lib.has_hyper_steps(c.method) else 0
    hyper_total = max(hyper_epochs * hyper_steps_per_epoch, 1)
    return lib.StepConfig(
        model=c.model, num_classes=int(num_classes), compute_dtype=c.compute_dtype,
        learn_aug=cfg_lib.learns(c.method, "A"), shared_aug=cfg_lib.METHODS[c.method]["shared"],
        learn_weight=cfg_lib.learns(c.method, "W"), learn_soft=cfg_lib.learns(c.method, "S"),
        symmetric_kl=cfg_lib.symmetric_kl(c), upsample=c.upsample, lr=c.learning_rate,
        momentum=c.momentum, nesterov=True, weight_decay=c.weight_decay,
        warmup_steps=int(round(min(c.warmup_epochs, c.epochs) * steps_per_epoch)),
        total_steps=max(total, 1), hyper_lr=c.hyper_lr,
        hyper_lr_aug=c.hyper_lr_aug or None, hyper_lr_weight=c.hyper_lr_weight or None,
        hyper_lr_soft=c.hyper_lr_soft or None, table_optimizer=c.table_optimizer,
        rmsprop_decay=c.rmsprop_decay,
        hyper_warmup_steps=int(round(min(c.warmup_epochs, hyper_epochs) * hyper_steps_per_epoch)),
        hyper_total_steps=hyper_total, solver=c.solver, solver_iters=c.solver_iters,
        nystrom_rank=c.solver_iters, neumann_alpha=c.neumann_alpha,
        neumann_scale=c.neumann_scale, curvature=c.curvature)


@dataclasses.dataclass
class Steps:
    """The library steps bound to one StepConfig and mesh."""
    cfg: lib.StepConfig
    mesh: Mesh
    seed: int
    labels: np.ndarray
    image_shape: tuple[int, ...]
    op_names: tuple[str, ...] = augment.OP_NAMES

    def init_state(self) -> lib.TrainState:
        cfg = self.cfg
        table = lib.autodo_table_init(self.labels, cfg.num_classes, aug=cfg.learn_aug,
                                      shared_aug=cfg.shared_aug, weight=cfg.learn_weight,
                                      soft=cfg.learn_soft)
        return lib.create_train_state(jax.random.key(self.seed), cfg, table, self.image_shape,
                                      mesh=self.mesh)

    def inner(self, state, batch):
        return lib.inner_step(state, batch, self.cfg, self.mesh)

    def hyper(self, state, train_batch, val_batch):
        return lib.hyper_step(state, train_batch, val_batch, self.cfg, self.mesh)

    def evaluate(self, state, batch) -> dict[str, Any]:
        """eval_step outputs: loss_sum, correct, count, predictions (B,)."""
        return lib.eval_step(state, batch, self.cfg)

    def check_finite(self, metrics: Mapping[str, Any], step: int) -> None:
        lib.check_finite(metrics, step)

    def table_arrays(self, state, num_rows: int) -> dict[str, np.ndarray]:
        """The learned table on the host, padding rows removed: {name: (N|1, ...)}."""
        out = {}
        for k, v in jax.device_get(state.table).items():
            v = np.asarray(v)
            out[k] = v if v.shape[0] == 1 else v[:num_rows]
        return out


def build_steps(config: cfg_lib.Config, data: Any, mesh: Mesh, steps_per_epoch: int,
                hyper_steps_per_epoch: int, seed: int) -> Steps:
    cfg = step_config(config, int(data.source.num_classes), steps_per_epoch,
                      hyper_steps_per_epoch)
    return Steps(cfg, mesh, seed, np.asarray(data.split.train_labels),
                 tuple(data.source.image_shape))
