"""experiments.train under interruption and bad input (tiny runs on 8 forced CPU devices).

Preemption (SIGTERM mid-pass, in process) and kill -9 (a subprocess with step
checkpoints) each resume to the uninterrupted run's summary, table and metrics; a
workdir in use is refused while a killed run's lock is not; a diverging run (too many
skipped non-finite steps) stops with one line and exit code 3, keeping its last good
checkpoint; every bad input of issue 11 is one line,
exit code 2, with the workdir untouched.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import artifacts, config as cfg_lib, trainer, workdir_lock
from experiments.checkpointing import Checkpointer
from experiments.metric_writer import read_metrics
from experiments.preemption import Preempted
from experiments.progress import Diverged

#: 2 epochs of 6 inner steps (3 dispatches of K = 2), a hyper pass of 6 steps in epoch 2.
TINY = dict(epochs=2, batch_size=8, hyper_batch_size=16, eval_batch_size=64,
            hyper_start_epoch=1, max_steps_per_epoch=6, eval_limit=64, subsample_ratio=0.2,
            warmup_epochs=1.0, checkpoint_every=1, steps_per_dispatch=2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def _run(workdir, log=lambda m: None, **changes):
    return trainer.train_and_evaluate(cfg_lib.Config(**{**TINY, **changes}), str(workdir), log=log)


def assert_same_run(a, b):
    """Two finished workdirs hold the same results (summary, final table, metrics)."""
    assert artifacts.run_differences(str(a), str(b)) == []


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    wd = tmp_path_factory.mktemp("straight")
    _run(wd)
    return wd


@pytest.mark.slow
def test_sigterm_mid_pass_saves_exits_and_resumes_to_the_same_result(straight, tmp_path):
    sent = []

    def log(msg):  # SIGTERM while the first train pass is under way (after dispatch 1)
        if msg.startswith("epoch 1/2 step 2 ") and not sent:
            sent.append(msg)
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(Preempted, match=r"preempted: checkpoint step 4 saved \(epoch 1, 0 hyper "
                                        r"and 4 inner steps into it\)"):
        _run(tmp_path, log=log, log_every=1)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    assert not os.path.exists(tmp_path / "summary.json")
    msgs = []
    _run(tmp_path, log=msgs.append)
    assert msgs[0].startswith("resumed from checkpoint step 4") and "4 inner steps into it" in msgs[0]
    assert_same_run(straight, tmp_path)


@pytest.mark.slow
def test_kill_9_with_step_checkpoints_resumes_to_the_same_result(straight, tmp_path):
    """A subprocess (same compile options) checkpoints every step and is killed -9 once its
    checkpoint of step 10 (4 steps into epoch 2's hyper pass) exists; the rerun finishes."""
    flags = [f"--{k}={v}" for k, v in TINY.items()] + [
        f"--workdir={tmp_path}", "--checkpoint_every_steps=1", "--compilation_cache="]
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", PYTHONPATH=REPO,
               JAX_COMPILATION_CACHE_DIR="")  # nor the tests' cache (conftest)
    p = subprocess.Popen([sys.executable, "-m", "experiments.train", *flags], cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not os.path.isdir(tmp_path / "checkpoints" / "10") and p.poll() is None:
            assert time.time() < deadline, "no checkpoint of step 10 within 600 s"
            time.sleep(0.05)
    finally:
        p.kill()
        p.wait()
    assert not os.path.exists(tmp_path / "summary.json")
    msgs = []
    _run(tmp_path, log=msgs.append)
    assert msgs[0].startswith("resumed from checkpoint step "), msgs[0]
    assert_same_run(straight, tmp_path)


@pytest.mark.slow
def test_workdir_in_use_is_refused_and_a_stale_lock_is_not(tmp_path):
    wd = tmp_path / "wd"
    with workdir_lock.hold(str(wd)):
        before = sorted(os.listdir(wd))
        with pytest.raises(trainer.ConfigError) as err:
            _run(wd, epochs=1, hyper_start_epoch=0)
        assert err.value.lines[0].startswith(f"--workdir={wd}: in use by a running job (pid "
                                             f"{os.getpid()} on ")
        assert sorted(os.listdir(wd)) == before
    with open(wd / workdir_lock.LOCK_FILE, "w") as f:  # a killed run's lock file
        json.dump({"pid": 999999, "host": "gone", "started": "then"}, f)
    out = _run(wd, epochs=1, hyper_start_epoch=0, method="none")
    assert 0 <= out["test_accuracy_final"] <= 1


@pytest.mark.slow
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    """--hyper_lr=1e30: epoch 1 trains and is checkpointed (step 6); epoch 2's hyper pass
    blows the learned loss weights up, so from its second inner step on every update is
    non-finite and skipped; 5 in a row (the default --max_nonfinite_steps) stop the run with
    one line. Checkpoint 6 stays the newest and is intact: a rerun resumes from it."""
    line = ("diverged: inner steps 8-12 (epoch 2) had non-finite losses or updates and were "
            "skipped: 5 in a row (--max_nonfinite_steps=5); the newest checkpoint (step 6) "
            "holds the last finite state; try a lower --learning_rate (now 0.01), a lower "
            "--hyper_lr (now 1e+30; learned loss weights scale the inner loss), or check the "
            "data for extreme values")
    with pytest.raises(Diverged) as err:
        _run(tmp_path, hyper_lr=1e30, epochs=3)
    assert str(err.value) == line
    assert [r["train_skipped"] for r in read_metrics(str(tmp_path), "epoch")] == [0]
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    steps = ck.steps()
    ck.close()
    assert steps == [6] and not os.path.exists(tmp_path / "summary.json")
    msgs = []
    with pytest.raises(Diverged) as again:
        _run(tmp_path, log=msgs.append, hyper_lr=1e30, epochs=3)
    assert msgs[0].startswith("resumed from checkpoint step 6") and str(again.value) == line


@pytest.mark.slow
def test_a_diverging_run_exits_3_with_one_line(tmp_path):
    """The issue's run (--learning_rate=1e30, 3 epochs of 3 steps; hyper steps from epoch
    2): 2 of the 3 inner steps of epoch 1 are skipped, fewer than --max_nonfinite_steps in
    a row, but more than half of the pass: exit code 3, one line, no summary."""
    wd = tmp_path / "wd"
    p = subprocess.run([sys.executable, "-m", "experiments.train", "--learning_rate=1e30",
                        "--epochs=3", "--max_steps_per_epoch=3", "--hyper_start_epoch=1",
                        f"--workdir={wd}", "--compilation_cache="],   # the tests' cache (env)
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 3, p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: diverged: 2 of the 3 inner steps of epoch 1 (inner steps 1-3) had non-finite "
        "losses or updates and were skipped (more than half of the pass); no checkpoint was "
        "written; try a lower --learning_rate (now 1e+30), a lower --hyper_lr (now 0.05; "
        "learned loss weights scale the inner loss), or check the data for extreme values"]
    assert not (wd / "summary.json").exists() and not os.listdir(wd / "checkpoints")


@pytest.mark.slow
def test_skipped_steps_are_reported_in_the_summary(straight):
    s = artifacts.read_json(os.path.join(str(straight), "summary.json"))
    assert s["skipped_inner_steps"] == 0 and s["skipped_hyper_steps"] == 0


@pytest.mark.parametrize("changes, line", [
    (dict(dataset="mnist:99.0.0"), "--dataset=mnist:99.0.0: cannot be loaded (AssertionError: "),
    (dict(dataset="coco"), "--dataset=coco: cannot be loaded ("),
    (dict(imbalance_ratio=1e6), "--imbalance_ratio=1000000.0: leaves no train example of "
                                "classes 5, 6, 7, 8, 9 "),
    (dict(hyper_batch_size=496, subsample_ratio=1.0, max_steps_per_epoch=1),
     "--hyper_batch_size=496: too large for the 500 validation examples on 8 devices"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, changes, line):
    wd = tmp_path / "wd"
    with pytest.raises(trainer.ConfigError) as err:
        _run(wd, **changes)
    assert len(err.value.lines) == 1 and err.value.lines[0].startswith(line), err.value.lines
    assert not wd.exists()


def test_unwritable_workdir_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    p = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={blocker}/run",
                        "--epochs=1", "--hyper_start_epoch=0"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"error: --workdir={blocker}/run: cannot be created, {blocker} is not a directory"]
    assert blocker.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["a_file"]
