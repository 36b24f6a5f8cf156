"""Shared tiny problem for the train-step tests (not a test module).

small_cnn on 8x8x1 images, N = 64 table rows, batch 16: XLA compiles dominate the tests'
time, so every test uses these shapes and configurations (the jit cache is shared).
"""
import jax
import numpy as np

from autodo_jax import train

N, B, C, HW = 64, 16, 10, (8, 8, 1)
FULL = train.StepConfig(model="small_cnn", num_classes=C, learn_aug=True, learn_weight=True,
                        learn_soft=True, symmetric_kl=True, total_steps=100,
                        hyper_total_steps=10, hyper_lr_weight=0.1, hyper_lr_soft=0.2)
NONE = train.StepConfig(model="small_cnn", num_classes=C, lr=0.02, total_steps=100)


def data():
    """Random images (N, 8, 8, 1) float32 and labels (N,) int32."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, N).astype(np.int32)
    images = rng.normal(size=(N,) + HW).astype(np.float32)
    return images, labels


def make_batch(images, labels, ids):
    """Train batch dict for the given row ids."""
    ids = np.asarray(ids, np.int32)
    return {"images": images[ids], "labels": labels[ids], "ids": ids}


def host(tree):
    """Copy of a pytree on the host (survives donation of the device buffers)."""
    return jax.tree.map(np.array, tree)


def make_state(cfg, labels, mesh=None):
    """Fresh train state of ``cfg`` with its AutoDO table."""
    table = train.autodo_table_init(labels, C, aug=cfg.learn_aug, shared_aug=cfg.shared_aug,
                                    weight=cfg.learn_weight, soft=cfg.learn_soft)
    return train.create_train_state(jax.random.key(0), cfg, table, HW, mesh=mesh)
