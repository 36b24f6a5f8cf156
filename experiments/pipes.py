"""The loaders of a run: seeds, samplers, host transforms and per-process blocks.

`build_pipes(config, data, mesh)` gives every loader a run needs, each loading only the
blocks of a global batch that this process's devices hold (``parallel.host_shards``);
every batch is a pure function of its position (epoch, step).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator

import jax
import numpy as np

from autodo_jax import parallel
from autodo_jax.data import pipeline, transforms
from experiments import config as cfg_lib, methods, run_setup
from experiments.run_setup import ConfigError


def derive_seed(seed: int, tag: int) -> int:
    """An independent non-negative int seed for stream `tag` of run seed `seed`."""
    return int(np.random.SeedSequence([int(seed), int(tag)]).generate_state(1)[0] >> 1)


def default_data_workers() -> int:
    """Host pipeline threads when ``--data_workers=0``: half the cores (XLA computes on the
    others), at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def default_steps_per_dispatch() -> int:
    """Steps per jit call when ``--steps_per_dispatch=0``: 1 on CPU, 8 on accelerators.

    XLA:CPU compiles the backward convolutions inside the scanned loop body to its generic
    (unvectorised) convolution code: measured 8x the CPU time of the same step called
    once per batch (small_cnn, batch 32), far more than the dispatch cost it saves.
    """
    return 1 if jax.default_backend() == "cpu" else 8


@dataclasses.dataclass
class Pipes:
    """Samplers and loaders of a run (all positioned by (epoch, step))."""
    train: pipeline.BatchLoader
    steps_per_epoch: int
    hyper_train: pipeline.BatchLoader | None
    hyper_val: pipeline.BatchLoader | None
    hyper_steps_per_epoch: int
    eval_transform: Any
    reweight_val: pipeline.BatchLoader | None = None   # clean batches of l2rw / mwn steps
    hyper_batch_size: int = 0


def build_pipes(config: cfg_lib.Config, data: run_setup.Data, mesh) -> Pipes:
    """Loaders of this process: each loads only the blocks of a global batch that its
    devices hold (``parallel.host_shards``)."""
    c, src, split = config, data.source, data.split
    num_shards = mesh.size
    cap = c.max_steps_per_epoch or None
    method = methods.get(c.method)
    train_tf = transforms.host_transform(method.run_host_policy(c.host_policy, c.colour_policy),
                                         src.family)
    eval_tf = transforms.host_transform("none", src.family)

    def sampler_of(rows: int, flag: str, batch: int, what: str,
                   tag: int) -> parallel.ShardLocalSampler:
        try:
            return parallel.ShardLocalSampler(rows, num_shards, batch, derive_seed(c.seed, tag))
        except ValueError:
            per = parallel.padded_num_rows(rows, num_shards) // num_shards
            smallest = min(per, rows - (num_shards - 1) * per)
            raise ConfigError([
                f"--{flag}={batch}: too large for the {rows} {what} on {num_shards} devices "
                f"(each device draws {batch // num_shards} rows a step from its shard; the "
                f"smallest shard has {smallest}); allowed: <= {smallest * num_shards}"]) from None

    sampler = sampler_of(len(data.train_index), "batch_size", c.batch_size, "training examples", 1)
    train = pipeline.BatchLoader(data.inner, data.train_index, data.train_labels, sampler,
                                 train_tf, seed=derive_seed(c.seed, 2),
                                 shards=parallel.host_shards(mesh, c.batch_size))
    spe = min(sampler.steps_per_epoch, cap or sampler.steps_per_epoch)
    hyper_train = hyper_val = None
    hspe = hb = 0
    if method.hyper_steps:
        hb = cfg_lib.hyper_batch_size(c, split.num_train, int(split.val_index.size), num_shards)
        # every table row takes hyper steps: the train rows, and with --train_on_val the
        # validation rows after them (one row layout for inner and hyper batches)
        hs = sampler_of(len(data.train_index), "hyper_batch_size", hb, "train rows", 3)
        hyper_shards = parallel.host_shards(mesh, hb)
        hyper_train = pipeline.BatchLoader(data.inner, data.train_index, data.train_labels, hs,
                                           train_tf, seed=derive_seed(c.seed, 4),
                                           shards=hyper_shards)
        vs = sampler_of(int(split.val_index.size), "hyper_batch_size", hb, "validation examples", 5)
        hyper_val = pipeline.ValLoader(src, split, vs, eval_tf, derive_seed(c.seed, 6),
                                       shards=hyper_shards)
        hspe = c.hyper_steps_per_epoch or hs.steps_per_epoch
        hspe = min(hspe, cap or hspe)
    reweight_val = None
    if method.reweight != "none":   # one clean batch (train batch size) per step
        rs = parallel.ShardLocalSampler(int(split.val_index.size), num_shards, c.batch_size,
                                        derive_seed(c.seed, 8))
        reweight_val = pipeline.ValLoader(src, split, rs, eval_tf, derive_seed(c.seed, 9),
                                          shards=parallel.host_shards(mesh, c.batch_size))
    return Pipes(train, spe, hyper_train, hyper_val, hspe, eval_tf, reweight_val, hb)


def build_run(config: cfg_lib.Config, data: run_setup.Data) -> tuple[Any, Pipes, Any]:
    """What a run is built from besides its data, the same for the trainer and the probe:
    ``(mesh, pipes, step_cfg)``: the mesh of ``config.num_devices`` devices (all when 0),
    this process's loaders on it, and the library's ``StepConfig`` for their step counts."""
    mesh = parallel.make_mesh(config.num_devices or None)
    pipes = build_pipes(config, data, mesh)
    step_cfg = cfg_lib.step_config(config, int(data.source.num_classes), pipes.steps_per_epoch,
                                   pipes.hyper_steps_per_epoch)
    return mesh, pipes, step_cfg


def loader_position(loader: pipeline.BatchLoader, k: int) -> tuple[int, int]:
    """The k-th batch of an endless sequence of the loader's epochs."""
    spe = loader.steps_per_epoch
    return k // spe, k % spe


def dispatches(produce: Callable[[int], Any], start: int, num_steps: int, k: int,
               mesh, workers: int) -> Iterator[tuple[int, int, tuple]]:
    """Yields ``(first, n, device_args)`` for the dispatches of a pass of ``num_steps``
    steps from step ``start`` on, K = ``k`` at a time (the last dispatch may hold n < k
    real steps).

    ``produce(j)`` gives the host batch (or tuple of batches) of the pass's step j;
    ``workers`` threads stack K of them (padding the last dispatch), place them on the
    mesh and hand back ``(*stacked batches, valid)`` ahead of the step; for K = 1,
    ``(*batches, None)`` unstacked (the plain one-step call).
    """
    def chunk(plan):
        first, n = plan
        if k == 1:
            parts = produce(first)
            parts = parts if isinstance(parts, tuple) else (parts,)
            return (*[parallel.global_batch(b, mesh) for b in parts], None)
        stacked, valid = pipeline.stack_batches([produce(j) for j in range(first, first + n)], k)
        parts = stacked if isinstance(stacked, tuple) else (stacked,)
        return (*[parallel.global_batch(b, mesh, axis=1) for b in parts],
                jax.make_array_from_process_local_data(
                    parallel.replicated_sharding(mesh), valid))

    plan = [(s, min(k, num_steps - s)) for s in range(start, num_steps, k)]
    for (first, n), args in pipeline.prefetched(chunk, iter(plan), 2,
                                                workers=workers):
        yield first, n, args
