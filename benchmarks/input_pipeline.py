"""Images/s of the host train pipeline (TrainLoader + host transform + prefetch threads).

Cases: mnist5k (IR 10, NR 0.2 split, batch 32 as the original's MNIST) with every policy
the original has for MNIST, and random 32x32x3 uint8 arrays (CIFAR-10 preprocessing,
batch 256) with every baseline policy. Prints one JSON line per case and a final
``{"min_images_per_s": ...}``.

With ``--workers 1,4,16`` every case is measured at each thread count
(``pipeline.prefetched(..., workers=N)``: whole batches per thread, batches identical for
any count); ``images_per_cpu_s`` is images per second of process CPU time.

Usage: python -m benchmarks.input_pipeline [--quick] [--workers 1,2]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import numpy as np

from autodo_jax.data import distortion, pipeline, sources, transforms
from autodo_jax.parallel import ShardLocalSampler
from experiments.pipes import loader_position


def _array_source(n: int = 8192) -> sources.Source:
    rng = np.random.default_rng(0)
    train = sources.ArraySplit(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                               rng.integers(0, 10, n))
    test = sources.ArraySplit(np.zeros((10, 32, 32, 3), np.uint8), np.arange(10))
    return sources.Source("arrays32", 10, (32, 32, 3), "cifar10", 1000, "label", train, test)


def measure(source: sources.Source, policy: str, batch: int, steps: int,
            workers: int = 1) -> dict:
    split = distortion.make_split(source, distortion.DistortionConfig(10, 0.2, seed=0))
    sampler = ShardLocalSampler(split.num_train, 1, batch, 0)
    loader = pipeline.TrainLoader(source, split, sampler,
                                  transforms.host_transform(policy, source.family), seed=0)
    positions = (loader_position(loader, k) for k in itertools.count())
    it = pipeline.prefetched(lambda pos: loader.batch(*pos), positions, 2, workers=workers)
    next(it)   # warm-up (thread start, first batch)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        next(it)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    it.close()
    return {"dataset": source.name, "policy": policy, "batch": batch, "steps": steps,
            "workers": workers, "seconds": round(elapsed, 4),
            "images_per_s": round(steps * batch / elapsed, 1),
            "images_per_cpu_s": round(steps * batch / cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps per case")
    parser.add_argument("--workers", default="1",
                        help="comma-separated worker-thread counts to measure (e.g. 1,4,16)")
    args = parser.parse_args()
    cases = [(sources.load_source("mnist5k"), p, 32) for p in
             transforms.allowed_policies("mnist")]
    arrays = _array_source()
    cases += [(arrays, p, 256) for p in transforms.POLICY_NAMES]
    workers = [int(w) for w in args.workers.split(",")]
    rates = {w: [] for w in workers}
    for src, policy, batch in cases:
        steps = (20 if batch == 32 else 5) if args.quick else (200 if batch == 32 else 40)
        for w in workers:
            row = measure(src, policy, batch, max(steps, 2 * w), workers=w)
            row["cpus"] = os.cpu_count()
            rates[w].append(row["images_per_s"])
            print(json.dumps(row), flush=True)
    print(json.dumps({"min_images_per_s": {w: min(r) for w, r in rates.items()}}), flush=True)


if __name__ == "__main__":
    main()
