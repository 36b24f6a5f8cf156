"""Table step cost versus table size N: one jitted gather + row-RMSprop update, donated.

Usage::

    python -m benchmarks.table_scaling [--quick] [--devices 8] [--repeats 200]

Table of AutoDO's row size for 10 classes: aug_p (N,7) + aug_m (N,7) + weight (N,) +
soft (N,10) = 25 float32 per row, batch 256 from ``ShardLocalSampler``. For every N it
prints one JSON line ``{"n_rows", "devices", "update_ms", "bytes_per_device"}``
(median ms of one step; bytes of table + optimizer state held by one device), then
``{"ratio_largest_vs_smallest": ...}`` (target <= 1.05). Rounds are interleaved over N so
that load drift on a shared machine hits every size alike. ``--devices D`` forces D host
CPU devices (XLA_FLAGS is set in this process before JAX is imported) and row-shards the
table over a D-device mesh; without it the plain single-device path (mesh=None) runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

FULL_SIZES = (10**3, 10**4, 10**5, 10**6, 10**7)
QUICK_SIZES = (10**3, 10**6)
BATCH = 256
ROW_FIELDS = {"aug_p": (7,), "aug_m": (7,), "weight": (), "soft": (10,)}


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N in {1e3, 1e6} only")
    parser.add_argument("--devices", type=int, default=None, help="force this many host CPU devices and shard")
    parser.add_argument("--repeats", type=int, default=200, help="timed steps per N (split over rounds)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over N")
    args = parser.parse_args(argv)
    if args.devices is not None and args.devices < 1:
        parser.error("--devices must be >= 1")
    return args


def _setup(n, mesh, devices):
    import jax
    import jax.numpy as jnp

    from autodo_jax import parallel, tables

    n_pad = parallel.padded_num_rows(n, devices)
    shapes = {k: (n_pad,) + s for k, s in ROW_FIELDS.items()}
    if mesh is None:
        table = {k: jnp.zeros(s, jnp.float32) for k, s in shapes.items()}
    else:  # built in place, sharded, without a host copy
        table = jax.jit(lambda: {k: jnp.zeros(s, jnp.float32) for k, s in shapes.items()},
                        out_shardings={k: parallel.data_sharding(mesh) for k in shapes})()
    opt = tables.row_rmsprop(0.01)
    state = opt.init(table)

    def step(table, state, ids):
        rows = tables.gather(table, ids, mesh=mesh)
        grads = jax.tree.map(lambda r: 0.01 * r.astype(jnp.float32) + 1.0, rows)
        return tables.apply_rows(opt, table, state, ids, grads, mesh=mesh)

    sampler = parallel.ShardLocalSampler(n, devices, BATCH, seed=0)
    epoch = sampler.epoch_ids(0)
    place = (lambda x: parallel.global_batch(x, mesh)) if mesh is not None else jnp.asarray
    ids = [place(epoch[s % sampler.steps_per_epoch]) for s in range(16)]
    leaves = jax.tree.leaves((table, state))
    per_device = sum(leaf.addressable_shards[0].data.nbytes for leaf in leaves)
    return {"step": jax.jit(step, donate_argnums=(0, 1)), "table": table, "state": state,
            "ids": ids, "bytes": per_device, "times": []}


def _time_steps(case, count):
    import jax

    for i in range(count):
        ids = case["ids"][i % len(case["ids"])]
        start = time.perf_counter()
        case["table"], case["state"] = case["step"](case["table"], case["state"], ids)
        jax.block_until_ready((case["table"], case["state"]))
        case["times"].append((time.perf_counter() - start) * 1e3)


def main(argv=None) -> None:
    args = _parse(argv)
    if args.devices is not None:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    import jax

    from autodo_jax import parallel

    devices = args.devices or 1
    mesh = parallel.make_mesh(devices) if args.devices is not None else None
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    cases = {n: _setup(n, mesh, devices) for n in sizes}
    for case in cases.values():
        _time_steps(case, 5)  # compile and warm up
        case["times"].clear()
    per_round = max(1, args.repeats // args.rounds)
    for _ in range(args.rounds):
        for case in cases.values():
            _time_steps(case, per_round)
    medians = {}
    for n, case in cases.items():
        medians[n] = statistics.median(case["times"])
        print(json.dumps({"n_rows": n, "devices": jax.device_count() if mesh is not None else 1,
                          "update_ms": round(medians[n], 4), "bytes_per_device": case["bytes"]}), flush=True)
    print(json.dumps({"ratio_largest_vs_smallest": round(medians[max(sizes)] / medians[min(sizes)], 3)}))


if __name__ == "__main__":
    main()
