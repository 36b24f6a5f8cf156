"""Interrupt a run at random moments and check that the reruns reach the uninterrupted result.

One uninterrupted reference run, then the same command in a second workdir interrupted
by ``--kills`` kill -9 and ``--sigterms`` SIGTERM at random moments (in a seeded random
order; each delay after the start drawn uniformly from 2-30 % of the reference's wall
time, so that every interruption lands before the job is done and some land during
start-up, compilation or a checkpoint save), each followed by the same command, until one
run finishes.
Then ``experiments.workdir.run_differences`` compares summary, final table and metrics.
Optionally (``--device_change``) a run stopped after epoch 1 on N devices is resumed on
N/2 devices: it must re-shard and finish, moving nothing aside.

Prints one JSON line per attempt and a final summary line. Exit code 0 when every check
holds.

Usage: python -m benchmarks.preemption_check [--quick] [--kills=5] [--sigterms=2]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time

from experiments import workdir as workdir_lib
from experiments.local_cluster import Job

RUN = dict(epochs=6, batch_size=32, hyper_batch_size=64, eval_batch_size=256,
           hyper_start_epoch=1, max_steps_per_epoch=24, subsample_ratio=0.5,
           warmup_epochs=1.0, checkpoint_every=1, checkpoint_every_steps=4, steps_per_dispatch=2)
QUICK = dict(RUN, epochs=2, max_steps_per_epoch=8, eval_limit=256)


def _flags(settings: dict, workdir: str) -> list[str]:
    return [f"--{k}={v}" for k, v in settings.items()] + [f"--workdir={workdir}"]


def _run(settings, workdir, devices, log, *, signal_after=None, sig=None, timeout=3600):
    """One process of experiments.train; optionally `sig` after `signal_after` s.
    Returns (exit code, seconds, whether the signal was sent)."""
    t = time.time()
    job = Job(_flags(settings, workdir), num_processes=1, devices=devices, log_prefix=log)
    sent = False
    try:
        while job.procs[0].poll() is None:
            if signal_after is not None and not sent and time.time() - t >= signal_after:
                job.kill(sig)
                sent = True
            if time.time() - t > timeout:
                break
            time.sleep(0.02)
        code = job.wait(timeout)[0]
    finally:
        job.kill()
    return code, time.time() - t, sent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter run")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--sigterms", type=int, default=2)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device_change", action="store_true")
    parser.add_argument("--root", default="", help="work directory ('' = a temporary one)")
    a = parser.parse_args(argv)
    settings = QUICK if a.quick else RUN
    root = a.root or tempfile.mkdtemp(prefix="preemption_check_")
    os.makedirs(root, exist_ok=True)
    ok = True
    ref = os.path.join(root, "reference")
    code, ref_s, _ = _run(settings, ref, a.devices, ref)
    print(json.dumps({"run": "reference", "exit": code, "seconds": round(ref_s, 1)}), flush=True)
    if code != 0:
        print(json.dumps({"error": "reference run failed", "log": ref + ".0.log"}))
        return 1
    rng = random.Random(a.seed)
    plan = [signal.SIGKILL] * a.kills + [signal.SIGTERM] * a.sigterms
    rng.shuffle(plan)
    wd = os.path.join(root, "interrupted")
    codes = []
    for i, sig in enumerate(plan):
        delay = rng.uniform(0.02, 0.3) * ref_s
        code, secs, sent = _run(settings, wd, a.devices, f"{wd}.{i}", signal_after=delay,
                                sig=sig)
        codes.append(code)
        expected = {signal.SIGKILL: -9, signal.SIGTERM: 75}[sig] if sent else 0
        print(json.dumps({"run": i, "signal": signal.Signals(sig).name,
                          "after_s": round(delay, 1), "sent": sent, "exit": code,
                          "seconds": round(secs, 1)}), flush=True)
        # -15: a SIGTERM before the handler is installed (start-up) ends the process
        if not sent or code not in (expected, -15):
            ok = False
    code, secs, _ = _run(settings, wd, a.devices, f"{wd}.final")
    diffs = workdir_lib.run_differences(ref, wd) if code == 0 else ["final run failed"]
    ok = ok and code == 0 and not diffs
    corrupt = os.path.exists(os.path.join(wd, "checkpoints_corrupt"))
    out = {"final_exit": code, "differences": diffs, "interruptions": len(plan),
           "exit_codes": codes, "corrupt_set_aside": corrupt, "reference_s": round(ref_s, 1)}
    if a.device_change:
        dc = os.path.join(root, "device_change")
        c1, _, _ = _run(dict(settings, stop_after_epoch=1), dc, a.devices, dc + ".1")
        c2, _, _ = _run(settings, dc, a.devices // 2, dc + ".2")
        with open(dc + ".2.0.log", errors="replace") as f:
            resharded = f"was written on {a.devices} devices; restored onto" in f.read()
        moved = os.path.exists(os.path.join(dc, "checkpoints_corrupt"))
        out["device_change"] = {"exit_codes": [c1, c2], "resharded": resharded,
                                "moved_aside": moved}
        ok = ok and c1 == 0 and c2 == 0 and resharded and not moved
    out["ok"] = ok
    print(json.dumps(out), flush=True)
    if not a.root:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
