"""Several JAX processes on this machine (``jax.distributed`` on localhost, gloo CPU
collectives), each a subprocess of ``experiments.train`` (experiments.local_cluster).

- 2 processes x 4 devices reach bit for bit the summary, final table and metrics of
  1 process x 8 devices. (The 1 x 8 run is a one-process distributed job, so that both
  sum across devices with the same gloo collectives; without the distributed runtime,
  XLA's in-process all-reduce adds in another order and the tables agree to ~1e-5.)
- A 2-process run preempted (SIGTERM to one process: both save at the same step and exit
  75), resumed, killed -9 (both) and resumed again reaches the same result.
- A run resumed on another device count re-shards its tables and finishes; nothing is
  moved aside.

Slow (each process compiles its steps; on 2 shared cores a 2 x 4 run takes ~1-2 min).
"""
import os
import signal
import time

import pytest

from experiments import workdir as workdir_lib
from experiments.local_cluster import Job

pytestmark = pytest.mark.slow

TINY = dict(epochs=2, batch_size=8, hyper_batch_size=16, eval_batch_size=64,
            hyper_start_epoch=1, max_steps_per_epoch=8, eval_limit=64, subsample_ratio=0.2,
            warmup_epochs=1.0, checkpoint_every=1, steps_per_dispatch=2, data_workers=1)
FLAGS = [f"--{k}={v}" for k, v in TINY.items()]
TIMEOUT = 900


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Fast compiles, and a compilation cache shared by the runs of this module (a rerun
    of the same job loads its steps instead of compiling them)."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "AUTODO_TEST_CACHE": str(cache)}


def _job(workdir, processes, devices, env, *extra, distributed=None):
    flags = FLAGS + [f"--compilation_cache={env['AUTODO_TEST_CACHE']}", f"--workdir={workdir}"]
    return Job(flags + list(extra), num_processes=processes, devices=devices,
               log_prefix=str(workdir) + ".log", env=env, distributed=distributed)


def _finish(job):
    codes = job.wait(TIMEOUT)
    assert codes == [0] * len(codes), (codes, job.output(0)[-3000:])


def _wait_for_checkpoint(job, workdir, beyond):
    """Waits until a checkpoint numbered > `beyond` exists (returns its number)."""
    deadline = time.time() + TIMEOUT
    while True:
        steps = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()] \
            if (workdir / "checkpoints").is_dir() else []
        if steps and max(steps) > beyond:
            return max(steps)
        codes = [p.poll() for p in job.procs]
        if any(c is not None for c in codes) or time.time() > deadline:
            job.kill()
            pytest.fail(f"no checkpoint beyond {beyond} (exit codes {codes}): "
                        f"{job.output(0)[-3000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def one_by_eight(tmp_path_factory, env):
    wd = tmp_path_factory.mktemp("mp") / "one_by_eight"
    _finish(_job(wd, 1, 8, env, distributed=True))
    return wd


def test_two_processes_by_four_devices_equal_one_by_eight(one_by_eight, tmp_path, env):
    wd = tmp_path / "two_by_four"
    _finish(_job(wd, 2, 4, env))
    assert workdir_lib.run_differences(str(one_by_eight), str(wd)) == []
    assert workdir_lib.read_json(str(wd / "summary.json"))["num_devices"] == 8


def test_two_processes_preempted_killed_and_resumed(one_by_eight, tmp_path, env):
    wd = tmp_path / "resumed"
    every = "--checkpoint_every_steps=2"
    job = _job(wd, 2, 4, env, every)
    first = _wait_for_checkpoint(job, wd, 0)
    os.kill(job.procs[1].pid, signal.SIGTERM)  # a notice to one process only
    codes = job.wait(TIMEOUT)
    assert codes == [75, 75], (codes, job.output(0)[-3000:], job.output(1)[-3000:])
    saved = [ln for ln in job.output(0).splitlines() if ln.startswith("preempted: checkpoint step")]
    assert len(saved) == 1, job.output(0)[-3000:]
    preempted_at = int(saved[0].split()[3])
    assert preempted_at >= first
    job = _job(wd, 2, 4, env, every)
    _wait_for_checkpoint(job, wd, preempted_at)
    job.kill()  # kill -9 of both processes
    assert not (wd / "summary.json").exists()
    job = _job(wd, 2, 4, env, every)
    _finish(job)
    assert "resumed from checkpoint step" in job.output(0)
    assert workdir_lib.run_differences(str(one_by_eight), str(wd)) == []


def test_resume_on_another_device_count_re_shards(tmp_path, env):
    wd = tmp_path / "devices"
    _finish(_job(wd, 1, 8, env, "--stop_after_epoch=1"))
    job = _job(wd, 1, 4, env)
    _finish(job)
    out = job.output(0)
    assert "was written on 8 devices; restored onto 4 (tables re-sharded, padding rows " \
        "re-padded)" in out, out[-3000:]
    assert not (wd / "checkpoints_corrupt").exists()
    summary = workdir_lib.read_json(str(wd / "summary.json"))
    assert summary["num_devices"] == 4 and 0 <= summary["test_accuracy_final"] <= 1
