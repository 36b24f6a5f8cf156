"""Our inner step against the original AutoDO's, side by side on this CPU, paired by round.

Usage::

    python -m benchmarks.cpu_parity --orig /tmp/autodo-orig [--rounds 5] [--steps 20]
        [--threads 2] [--devices 1] [--upsample 4]

The original (PyTorch) is timed by the peer harness ``shared/reference/peer/
time_autodo_torch.py`` (its ``innerTrain`` on one batch per call: MNIST "ResNet-18", batch
32, λ^{A,W,S} tables of N = 50,000 rows, 4x upsampled warp), in a subprocess with
``--threads`` torch threads; it needs torch and kornia and an unmodified export of
gudovskiy/autodo (``--orig`` or ``$AUTODO_ORIG``; the peer README says how). Ours is the
AutoDO inner step of ``benchmarks.step_time`` (same model, batch, table size and upsample),
compiled once in this process, on a mesh of ``--devices`` devices (CPU: force them with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``).

Each round times both, back to back, in an order that alternates by round, so that load
drift on a shared machine hits both alike; the figure is the median over rounds of each
round's ours / original img/s. Prints one JSON line per round ``{"round", "orig_img_per_s",
"ours_img_per_s", "ours_over_orig"}``, then ``{"ours_over_orig_median", "rounds",
"devices", "threads", "upsample", "cpu_count"}`` (target >= 1.0).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import jax
import numpy as np

from autodo_jax import parallel, train
from benchmarks import step_time

_PEER = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "peer",
                     "time_autodo_torch.py")
MODEL, BATCH = "mnist_resnet", 32


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orig", default=os.environ.get("AUTODO_ORIG"),
                        help="export of gudovskiy/autodo (or $AUTODO_ORIG)")
    parser.add_argument("--peer_script", default=os.path.normpath(_PEER))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side and round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (original)")
    parser.add_argument("--devices", type=int, default=1, help="our data-parallel mesh size")
    parser.add_argument("--upsample", type=int, default=4, choices=(1, 4))
    args = parser.parse_args(argv)
    if not args.orig or not os.path.isdir(os.path.join(args.orig, "custom_models")):
        parser.error(f"--orig: not an export of gudovskiy/autodo: {args.orig!r}")
    if not os.path.isfile(args.peer_script):
        parser.error(f"--peer_script: no such file: {args.peer_script}")
    if not 1 <= args.devices <= jax.device_count():
        parser.error(f"--devices: {jax.device_count()} device(s) visible, asked for "
                     f"{args.devices}; set XLA_FLAGS=--xla_force_host_platform_device_count="
                     f"{args.devices}")
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be >= 1")
    return args


def _original(args) -> float:
    """img/s of one run of the original's inner step (its median over --steps)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peer.json")
        proc = subprocess.run(
            [sys.executable, args.peer_script, "--orig", args.orig, "--config", "mnist_resnet18",
             "--phase", "inner", "--threads", str(args.threads), "--warmup", "3",
             "--steps", str(args.steps), "--json", out], capture_output=True, text=True)
        if proc.returncode or not os.path.exists(out):
            raise SystemExit(f"the original's run failed (exit {proc.returncode}): "
                             f"{proc.stderr.strip()[-400:]}")
        result = json.load(open(out))["results"][0]
    if "img_per_s" not in result:
        raise SystemExit(f"the original's run failed: {result.get('error')}")
    return float(result["img_per_s"])


class Ours:
    """Our inner step of benchmarks.step_time's setup, compiled once."""

    def __init__(self, args):
        shape = step_time.SHAPES[MODEL]
        rng = np.random.default_rng(0)
        labels = rng.integers(0, step_time.CLASSES, step_time.N_ROWS).astype(np.int32)
        self.cfg = step_time._config(MODEL, args.upsample, "float32", learn=True)
        self.mesh = parallel.make_mesh(args.devices) if args.devices > 1 else None
        table = train.autodo_table_init(labels, step_time.CLASSES, aug=True, weight=True,
                                        soft=True)
        self.state = train.create_train_state(jax.random.key(0), self.cfg, table, shape,
                                              mesh=self.mesh)
        self.batches = step_time._batches(rng, shape, BATCH, 4, mesh=self.mesh)
        self.step, _ = step_time._compile(train.inner_step, self.state, self.batches[0],
                                          self.cfg, self.mesh)
        self.state, _ = step_time._timed(self.step, self.state, self.batches, 3)  # warm up

    def img_per_s(self, steps: int) -> float:
        self.state, times = step_time._timed(self.step, self.state, self.batches, steps)
        return BATCH / statistics.median(t[0] for t in times)


def main(argv=None) -> None:
    args = _parse(argv)
    ours = Ours(args)
    ratios = []
    for r in range(args.rounds):
        sides = [("orig", lambda: _original(args)), ("ours", lambda: ours.img_per_s(args.steps))]
        got = {name: fn() for name, fn in (sides if r % 2 == 0 else sides[::-1])}
        ratios.append(got["ours"] / got["orig"])
        print(json.dumps({"round": r, "orig_img_per_s": round(got["orig"], 1),
                          "ours_img_per_s": round(got["ours"], 1),
                          "ours_over_orig": round(ratios[-1], 3)}), flush=True)
    print(json.dumps({"ours_over_orig_median": round(statistics.median(ratios), 3),
                      "rounds": args.rounds, "devices": args.devices, "threads": args.threads,
                      "upsample": args.upsample, "cpu_count": os.cpu_count(),
                      "backend": jax.default_backend()}), flush=True)


if __name__ == "__main__":
    main()
