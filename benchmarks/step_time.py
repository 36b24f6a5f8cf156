"""Images/s of the inner step and of the hyper step at equal batch, plus compile times.

Usage::

    python -m benchmarks.step_time [--quick] [--dtype bfloat16] [--cases mnist_resnet:32:4,...]

Setup of the original's per-example run: learned augmentation per example (warp upsample 4
as the original on 28x28/32x32, and 1), loss weights and (symmetric) soft labels, N =
50,000 table rows, Hessian curvature with Neumann J = 5, α = 0.01, row RMSprop; SGD
Nesterov with weight decay on the model. Random data of the right shapes, 10 classes,
batch ids drawn at random from the N rows, a validation batch of the same size.

Each case prints one JSON line per phase: ``{"model", "phase", "batch", "upsample",
"dtype", "img_per_s", "ms_median", "cpu_ms_median", "compile_s"}`` with phase "inner" (AutoDO inner step),
"hyper" (one hyper step; img/s counts the train batch) or "plain" (the same model's inner
step without augmentation or table: the floor of a Flax training step), then one line
``{"model", "batch", "upsample", "hyper_over_inner_per_image"}`` (wall-time ratio; also
``..._cpu``, the ratio of process CPU time, steadier on a shared machine); the last line is
``{"hyper_over_inner_per_image_max": ...}`` (target <= 0.9).

``--steps_per_dispatch K`` (K > 1) adds phases "inner_kK"/"hyper_kK": ``train.inner_steps``
/ ``hyper_steps`` with K stacked batches per call, reported per step. ``--table_rows
1000,10000000`` times only the whole hyper step at each table size N (interleaved) and
ends each case with ``{"hyper_ms_ratio", "hyper_cpu_ms_ratio"}`` (largest N / smallest N;
target <= 1.05). Inner and hyper steps are
timed in interleaved rounds so that load drift on a shared machine hits both alike.

``--reweight`` adds the competitors' look-ahead inner steps (``train.reweight_step``:
"l2rw" and "mwn", no table, a clean batch of the train batch's size per step, as
``experiments.train`` runs them), each with the papers' look-ahead over every parameter
and with ``reweight_scope="head"`` ("l2rw_head", "mwn_head"), and one line per case
``{"l2rw_over_plain_per_image", "mwn_over_plain_per_image", "l2rw_head_...", ...}`` (+
``_cpu``): their cost per train image relative to the plain step (issue 13's target: <= 3).
Example for the mnist5k default model:
``python -m benchmarks.step_time --cases small_cnn:32:1 --reweight``.

``--devices N`` runs every step data-parallel on a mesh of N devices (the batch sharded
``P("data")``, the table row-sharded, as ``experiments.train`` runs them); on a CPU host
force them with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``. Each device then
runs its share of the batch on its own thread.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import numpy as np

from autodo_jax import parallel, train

N_ROWS = 50_000
CLASSES = 10
SHAPES = {"mnist_resnet": (28, 28, 1), "wrn28_2": (32, 32, 3), "wrn28_10": (32, 32, 3),
          "small_cnn": (28, 28, 1), "lenet": (28, 28, 1), "resnet18": (224, 224, 3)}
FULL_CASES = ("mnist_resnet:32:4", "mnist_resnet:32:1", "mnist_resnet:256:4",
              "wrn28_2:64:4", "wrn28_2:64:1")
QUICK_CASES = ("mnist_resnet:32:4", "mnist_resnet:32:1", "wrn28_2:64:4")


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and steps")
    parser.add_argument("--cases", default=None,
                        help="comma-separated model:batch:upsample (default: all of a mode)")
    parser.add_argument("--dtype", default="float32", choices=train.COMPUTE_DTYPES,
                        help="encoder compute dtype")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-step floor")
    parser.add_argument("--table_rows", default=None,
                        help="comma-separated table sizes N (e.g. 1000,10000000): time the "
                             "whole hyper step at each N instead (ratio largest/smallest)")
    parser.add_argument("--steps_per_dispatch", type=int, default=1,
                        help="K > 1: also time train.inner_steps/hyper_steps (K steps per "
                             "call), per step")
    parser.add_argument("--reweight", action="store_true",
                        help="also time the l2rw and mwn inner steps against the plain step")
    parser.add_argument("--devices", type=int, default=1,
                        help="data-parallel mesh of this many devices (CPU: force them with "
                             "XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    args = parser.parse_args(argv)
    if not 1 <= args.devices <= jax.device_count():
        parser.error(f"--devices: {jax.device_count()} device(s) visible, asked for "
                     f"{args.devices}; on a CPU host set XLA_FLAGS="
                     f"--xla_force_host_platform_device_count={args.devices}")
    if args.devices > 1 and (args.table_rows or args.steps_per_dispatch > 1):
        parser.error("--devices > 1 times single steps only (no --table_rows, "
                     "--steps_per_dispatch 1)")
    if args.reweight and args.no_plain:
        parser.error("--reweight needs the plain step (drop --no-plain)")
    cases = args.cases.split(",") if args.cases else (QUICK_CASES if args.quick else FULL_CASES)
    args.cases = []
    for case in cases:
        try:
            model, batch, upsample = case.split(":")
            args.cases.append((model, int(batch), int(upsample)))
        except ValueError:
            parser.error(f"--cases: expected model:batch:upsample, got {case!r}")
        if model not in SHAPES:
            parser.error(f"--cases: model must be one of {sorted(SHAPES)}, got {model!r}")
    if args.table_rows:
        try:
            args.table_rows = [int(float(n)) for n in args.table_rows.split(",")]
        except ValueError:
            parser.error(f"--table_rows: expected comma-separated integers, got {args.table_rows!r}")
        if min(args.table_rows) < 1:
            parser.error("--table_rows: every N must be >= 1")
    if args.steps_per_dispatch < 1:
        parser.error("--steps_per_dispatch: must be >= 1")
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.steps = args.steps or (3 if args.quick else 5)
    return args


def _config(model: str, upsample: int, dtype: str, learn: bool) -> train.StepConfig:
    return train.StepConfig(
        model=model, num_classes=CLASSES, compute_dtype=dtype, learn_aug=learn,
        learn_weight=learn, learn_soft=learn, symmetric_kl=learn, upsample=upsample,
        lr=0.05, warmup_steps=5, total_steps=10_000, hyper_warmup_steps=5,
        hyper_total_steps=10_000, solver="neumann", solver_iters=5, neumann_alpha=0.01,
        curvature="hessian")


def _batches(rng: np.random.Generator, shape, batch: int, count: int, rows: int = N_ROWS,
             mesh=None):
    """``count`` random batches; with ``mesh``, sharded ``P("data")`` with each device's ids
    drawn from its own shard of the (padded) table rows, as the trainer's sampler does."""
    shards = 1 if mesh is None else mesh.size
    local_rows = parallel.padded_num_rows(rows, shards) // shards
    out = []
    for _ in range(count):
        ids = np.concatenate([np.sort(rng.choice(local_rows, batch // shards, replace=False))
                              for _ in range(shards)]).astype(np.int32)
        out.append({"images": rng.normal(size=(batch,) + shape).astype(np.float32),
                    "labels": rng.integers(0, CLASSES, batch).astype(np.int32), "ids": ids})
    if mesh is None:
        return jax.device_put(out)
    return [parallel.global_batch(b, mesh) for b in out]


def _compile(fn, *args):
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - start


def _timed(call, state, batches, steps):
    """Runs ``steps`` steps; returns (state, [(wall s, process CPU s) per step])."""
    times = []
    for i in range(steps):
        start, cpu = time.perf_counter(), time.process_time()
        state, metrics = call(state, batches[i % len(batches)])
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return state, times


def _line(model, phase, batch, upsample, dtype, times, compile_s) -> dict:
    ms = 1e3 * statistics.median(t[0] for t in times)
    cpu_ms = 1e3 * statistics.median(t[1] for t in times)
    return {"model": model, "phase": phase, "batch": batch, "upsample": upsample,
            "dtype": dtype, "img_per_s": round(batch / ms * 1e3, 1), "ms_median": round(ms, 2),
            "cpu_ms_median": round(cpu_ms, 2), "compile_s": round(compile_s, 1)}


def run_case(model: str, batch: int, upsample: int, args) -> list[dict]:
    """Benchmarks one (model, batch, upsample) case; returns its JSON records."""
    shape = SHAPES[model]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, N_ROWS).astype(np.int32)
    cfg = _config(model, upsample, args.dtype, learn=True)
    table = train.autodo_table_init(labels, CLASSES, aug=True, weight=True, soft=True)
    mesh = parallel.make_mesh(args.devices) if args.devices > 1 else None
    if batch % args.devices:
        raise SystemExit(f"--cases: batch {batch} does not split over {args.devices} devices")
    state = train.create_train_state(jax.random.key(0), cfg, table, shape, mesh=mesh)
    batches = _batches(rng, shape, batch, 4, mesh=mesh)
    val = _batches(rng, shape, batch, 1, mesh=mesh)[0]
    inner, inner_compile = _compile(train.inner_step, state, batches[0], cfg, mesh)
    hyper, hyper_compile = _compile(train.hyper_step, state, batches[0], val, cfg, mesh)
    phases = {"inner": (lambda s, b: inner(s, b)), "hyper": (lambda s, b: hyper(s, b, val))}
    compile_s = {"inner": inner_compile, "hyper": hyper_compile}
    plain_state = None
    if not args.no_plain:
        plain_cfg = _config(model, upsample, args.dtype, learn=False)
        plain_state = train.create_train_state(jax.random.key(0), plain_cfg, {}, shape,
                                               mesh=mesh)
        plain, compile_s["plain"] = _compile(train.inner_step, plain_state, batches[0],
                                             plain_cfg, mesh)
        phases["plain"] = lambda s, b: plain(s, b)
    states = {"inner": state, "hyper": state, "plain": plain_state}
    k = args.steps_per_dispatch
    if k > 1:   # K steps per call on stacked batches; timed per call, reported per step
        stacked = jax.device_put(jax.tree.map(lambda *x: np.stack(x), *[
            jax.device_get(batches[i % len(batches)]) for i in range(k)]))
        vals = jax.device_put(jax.tree.map(lambda x: np.stack([np.asarray(x)] * k), val))
        inner_k, compile_s[f"inner_k{k}"] = _compile(train.inner_steps, state, stacked, None, cfg)
        hyper_k, compile_s[f"hyper_k{k}"] = _compile(train.hyper_steps, state, stacked, vals,
                                                     None, cfg)
        phases[f"inner_k{k}"] = lambda s, b: inner_k(s, stacked, None)
        phases[f"hyper_k{k}"] = lambda s, b: hyper_k(s, stacked, vals, None)
        fresh = train.autodo_table_init(labels, CLASSES, aug=True, weight=True, soft=True)
        states[f"inner_k{k}"] = train.create_train_state(jax.random.key(0), cfg, fresh, shape)
    for name, (method, scope) in (_reweight_phases() if args.reweight else {}).items():
        rcfg = dataclasses.replace(plain_cfg, reweight=method, reweight_scope=scope)
        states[name] = train.create_train_state(jax.random.key(0), rcfg, {}, shape, mesh=mesh)
        step, compile_s[name] = _compile(train.reweight_step, states[name], batches[0],
                                         val, rcfg, mesh)
        phases[name] = lambda s, b, step=step: step(s, b, val)
    times = {phase: [] for phase in phases}
    for _ in range(args.rounds + 1):  # round 0 warms up (first calls, allocations)
        for phase, call in phases.items():
            key = {"hyper": "inner", f"hyper_k{k}": f"inner_k{k}"}.get(phase, phase)
            states[key], t = _timed(call, states[key], batches, args.steps)
            times[phase].append(t)
    per_step = {phase: k if phase.endswith(f"_k{k}") else 1 for phase in phases}
    records = [_line(model, phase, batch, upsample, args.dtype,
                     [(w / per_step[phase], c / per_step[phase])
                      for r in times[phase][1:] for w, c in r], compile_s[phase])
               for phase in phases]
    for record in records:
        record["devices"] = args.devices
    by_phase = {r["phase"]: r for r in records}
    ratio = {key: round(by_phase["hyper"][key] / by_phase["inner"][key], 3)
             for key in ("ms_median", "cpu_ms_median")}
    records.append({"model": model, "batch": batch, "upsample": upsample,
                    "hyper_over_inner_per_image": ratio["ms_median"],
                    "hyper_over_inner_per_image_cpu": ratio["cpu_ms_median"]})
    if args.reweight:
        line = {"model": model, "batch": batch, "upsample": upsample}
        for name in _reweight_phases():
            for key, suffix in (("ms_median", ""), ("cpu_ms_median", "_cpu")):
                line[f"{name}_over_plain_per_image{suffix}"] = round(
                    by_phase[name][key] / by_phase["plain"][key], 3)
        records.append(line)
    return records


def _reweight_phases() -> dict[str, tuple[str, str]]:
    """Phase name -> (reweight, reweight_scope): "l2rw", "mwn" (the papers' look-ahead over
    every parameter) and "l2rw_head", "mwn_head" (the head-only look-ahead)."""
    return {(m if scope == "all" else f"{m}_{scope}"): (m, scope)
            for m in train.REWEIGHTS[1:] for scope in train.REWEIGHT_SCOPES}


def run_table_rows(model: str, batch: int, upsample: int, args) -> list[dict]:
    """The whole hyper step at every N of ``args.table_rows`` (interleaved rounds); records
    per N and the ratio of the largest N's step time to the smallest's."""
    shape = SHAPES[model]
    cfg = _config(model, upsample, args.dtype, learn=True)
    calls, states, batches, compile_s = {}, {}, {}, {}
    for n in args.table_rows:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, CLASSES, n).astype(np.int32)
        table = train.autodo_table_init(labels, CLASSES, aug=True, weight=True, soft=True)
        states[n] = train.create_train_state(jax.random.key(0), cfg, table, shape)
        batches[n] = _batches(rng, shape, batch, 4, rows=n) if n >= batch else None
        if batches[n] is None:
            raise SystemExit(f"--table_rows: N={n} is smaller than the batch {batch}")
        val = _batches(rng, shape, batch, 1, rows=n)[0]
        hyper, compile_s[n] = _compile(train.hyper_step, states[n], batches[n][0], val, cfg)
        calls[n] = lambda s, b, hyper=hyper, val=val: hyper(s, b, val)
    times = {n: [] for n in args.table_rows}
    for _ in range(args.rounds + 1):
        for n in args.table_rows:
            states[n], t = _timed(calls[n], states[n], batches[n], args.steps)
            times[n].append(t)
    records = []
    for n in args.table_rows:
        rec = _line(model, "hyper", batch, upsample, args.dtype,
                    [x for r in times[n][1:] for x in r], compile_s[n])
        rec["table_rows"] = n
        records.append(rec)
    lo, hi = records[0], records[-1]
    records.append({"model": model, "batch": batch, "upsample": upsample,
                    "table_rows": [lo["table_rows"], hi["table_rows"]],
                    "hyper_ms_ratio": round(hi["ms_median"] / lo["ms_median"], 3),
                    "hyper_cpu_ms_ratio": round(hi["cpu_ms_median"] / lo["cpu_ms_median"], 3)})
    return records


def main(argv=None) -> None:
    args = _parse(argv)
    if args.table_rows:
        args.table_rows = sorted(args.table_rows)
        for model, batch, upsample in args.cases:
            for record in run_table_rows(model, batch, upsample, args):
                print(json.dumps(record), flush=True)
        return
    ratios = {"hyper_over_inner_per_image": []}
    ratios.update({f"{name}_over_plain_per_image": [] for name in _reweight_phases()
                   if args.reweight})
    for model, batch, upsample in args.cases:
        for record in run_case(model, batch, upsample, args):
            print(json.dumps(record), flush=True)
            for name, values in ratios.items():
                if name in record:
                    values.append(record[name])
    print(json.dumps({**{f"{name}_max": max(v) for name, v in ratios.items()},
                      "devices": jax.device_count(), "backend": jax.default_backend()}))


if __name__ == "__main__":
    main()
