"""Achieved training throughput (host pipeline + inner step) against step-only throughput.

Usage::

    python -m benchmarks.end_to_end [--quick] [--model small_cnn] [--batch 32]
        [--policy color_subset] [--steps_per_dispatch 1,8] [--workers 1,2]

The main job's inner pass: mnist5k (IR 10, NR 0.2 split), the AutoDO inner step (learned
augmentation, weights and soft labels; table of the split's N rows), host policy
``color_subset`` as ``experiments.train`` uses for autodo_* methods. For every K
(``--steps_per_dispatch``) and worker count it times, in interleaved rounds:

- ``step``: ``train.inner_steps`` on K stacked batches already on the device (K = 1: the
  plain ``train.inner_step``, as the trainer calls it), the step alone: what the pipeline
  has to keep up with;
- ``pipeline``: the host pipeline alone (``pipeline.prefetched`` with the worker threads
  producing K stacked batches per dispatch, moved to the device);
- ``achieved``: both together, as the trainer runs them.

``achieved_over_step`` is the median over rounds of each round's achieved / step-only,
the two timed back to back in an order that alternates by round (paired, so that load
drift on a shared machine cancels).

Prints one JSON line per (K, workers): ``{"model", "batch", "k", "workers", "policy",
"step_img_per_s", "pipeline_img_per_s", "achieved_img_per_s", "achieved_over_step",
"achieved_over_step_rounds", "cpu_count"}`` (target: achieved_over_step >= 0.9), then
``{"min_achieved_over_step"}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np

from autodo_jax import train
from autodo_jax.data import distortion, pipeline, sources, transforms
from autodo_jax.parallel import ShardLocalSampler


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and dispatches")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--policy", default="color_subset", choices=transforms.POLICY_NAMES)
    parser.add_argument("--steps_per_dispatch", default="1,8",
                        help="comma-separated K values")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--images", type=int, default=None,
                        help="images per timed segment (default 1,024; --quick 512)")
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in args.steps_per_dispatch.split(",")]
    args.worker_counts = [int(w) for w in args.workers.split(",")]
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.images = args.images or (512 if args.quick else 1024)
    return args


class Case:
    """One K: the compiled multi-step, its state and the loader."""

    def __init__(self, k: int, loader: pipeline.BatchLoader, cfg: train.StepConfig,
                 labels: np.ndarray, shape: tuple[int, ...]):
        self.k, self.loader, self.cfg = k, loader, cfg
        table = train.autodo_table_init(labels, cfg.num_classes, aug=True, weight=True,
                                        soft=True)
        self.state = train.create_train_state(jax.random.key(0), cfg, table, shape)
        self.device_chunks = [self.produce(i) for i in range(2)]
        self.state = self.step(self.state, self.device_chunks[0])   # compile + warm up

    def produce(self, dispatch: int):
        """The batches of dispatch ``dispatch`` (cycling over epoch 0) on the device: K
        stacked with their valid mask, or for K = 1 one plain batch (as the trainer)."""
        spe = self.loader.steps_per_epoch
        batches = [self.loader.batch(0, (dispatch * self.k + j) % spe) for j in range(self.k)]
        if self.k == 1:
            return jax.device_put(batches[0]), None
        return jax.device_put(pipeline.stack_batches(batches, self.k))

    def step(self, state, chunk):
        batches, valid = chunk
        if valid is None:
            state, metrics = train.inner_step(state, batches, self.cfg)
        else:
            state, metrics = train.inner_steps(state, batches, valid, self.cfg)
        jax.block_until_ready(metrics)
        return state


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = _parse(argv)
    src = sources.load_source("mnist5k")
    split = distortion.make_split(src, distortion.DistortionConfig(10, 0.2, seed=0))
    sampler = ShardLocalSampler(split.num_train, 1, args.batch, 0)
    loader = pipeline.TrainLoader(src, split, sampler,
                                  transforms.host_transform(args.policy, src.family), seed=0)
    cfg = train.StepConfig(model=args.model, num_classes=src.num_classes, learn_aug=True,
                           learn_weight=True, learn_soft=True, symmetric_kl=True,
                           total_steps=10_000)
    cases = {k: Case(k, loader, cfg, np.asarray(split.train_labels), tuple(src.image_shape))
             for k in args.ks}
    rates = {(k, w, what): [] for k in args.ks for w in args.worker_counts
             for what in ("step", "pipeline", "achieved")}
    paired = {(k, w): [] for k in args.ks for w in args.worker_counts}
    for r in range(args.rounds):
        for k, case in cases.items():
            dispatches = max(1, args.images // (k * args.batch))
            images = dispatches * k * args.batch

            def step_only():
                for i in range(dispatches):
                    case.state = case.step(case.state, case.device_chunks[i % 2])

            for w in args.worker_counts:
                def pipeline_only():
                    for _ in pipeline.prefetched(case.produce, iter(range(dispatches)), 2,
                                                 workers=w):
                        pass

                def achieved():
                    for _, chunk in pipeline.prefetched(case.produce, iter(range(dispatches)),
                                                        2, workers=w):
                        case.state = case.step(case.state, chunk)

                # step-only and achieved back to back, their order alternating by round, so
                # that load drift on a shared machine cancels in the paired ratio
                order = (("step", step_only), ("achieved", achieved))
                got = {what: images / _time(fn) for what, fn in (order if r % 2 == 0
                                                                 else order[::-1])}
                rates[(k, w, "step")].append(got["step"])
                rates[(k, w, "achieved")].append(got["achieved"])
                rates[(k, w, "pipeline")].append(images / _time(pipeline_only))
                paired[(k, w)].append(got["achieved"] / got["step"])
    ratios = []
    for k in args.ks:
        for w in args.worker_counts:
            step = statistics.median(rates[(k, w, "step")])
            pipe = statistics.median(rates[(k, w, "pipeline")])
            got = statistics.median(rates[(k, w, "achieved")])
            ratio = statistics.median(paired[(k, w)])
            ratios.append(ratio)
            print(json.dumps({"model": args.model, "batch": args.batch, "k": k, "workers": w,
                              "policy": args.policy, "step_img_per_s": round(step, 1),
                              "pipeline_img_per_s": round(pipe, 1),
                              "achieved_img_per_s": round(got, 1),
                              "achieved_over_step": round(ratio, 3),
                              "achieved_over_step_rounds": [round(x, 3) for x in paired[(k, w)]],
                              "cpu_count": os.cpu_count(),
                              "backend": jax.default_backend()}), flush=True)
    print(json.dumps({"min_achieved_over_step": round(min(ratios), 3)}), flush=True)


if __name__ == "__main__":
    main()
