"""Cost of a checkpoint of the main job's state: integrity checksums, save, restore.

Builds the state of ``python -m experiments.train`` (autodo_aws, mnist5k, small_cnn; the
table has one row per train example) on all visible devices, then times over
``--repeats`` rounds: the checksum pass alone, ``Checkpointer.save`` until it returns
(the part a training step waits for), save + ``wait`` (the write), and
``restore_latest`` (read + integrity check). Prints one JSON line.

Usage: python -m benchmarks.checkpoint_cost [--quick] [--rows_scale=K]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np

from autodo_jax import parallel, train
from experiments import config as cfg_lib
from experiments import checkpointing
from experiments.checkpointing import Checkpointer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=1750, help="table rows (main job: 1750)")
    parser.add_argument("--repeats", type=int, default=5)
    a = parser.parse_args(argv)
    repeats = 2 if a.quick else a.repeats
    mesh = parallel.make_mesh()
    cfg = cfg_lib.step_config(cfg_lib.Config(), 10, 54, 6)
    labels = np.random.default_rng(0).integers(0, 10, a.rows)
    table = train.autodo_table_init(labels, 10, aug=True, weight=True, soft=True)
    state = train.create_train_state(jax.random.key(0), cfg, table, (28, 28, 1), mesh=mesh)
    saved = checkpointing._for_saving(state)
    checkpointing._integrity(saved)  # compile
    times = {"checksums_ms": [], "save_returns_ms": [], "save_written_ms": [], "restore_ms": []}
    with tempfile.TemporaryDirectory() as d:
        ck = Checkpointer(os.path.join(d, "ckpt"), log=lambda m: None)
        for r in range(repeats + 1):
            t = time.perf_counter()
            checkpointing._integrity(saved)
            t1 = time.perf_counter()
            ck.save(r, state, {"round": r})
            t2 = time.perf_counter()
            ck.wait()
            t3 = time.perf_counter()
            ck.restore_latest(state)
            t4 = time.perf_counter()
            if r:  # round 0 compiles and warms up
                for k, v in zip(times, (t1 - t, t2 - t1, t3 - t1, t4 - t3)):
                    times[k].append(1e3 * v)
        ck.close()
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(saved))
    out = {"devices": jax.device_count(), "table_rows": a.rows, "state_mb": state_bytes / 2**20,
           **{k: round(float(np.median(v)), 1) for k, v in times.items()},
           "load_1min": os.getloadavg()[0]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
