"""experiments.train under interruption and bad input (tiny runs on 8 forced CPU devices).

Preemption (SIGTERM mid-pass, in process) and kill -9 (a subprocess with step
checkpoints) each resume to the uninterrupted run's summary, table and metrics; a
workdir in use is refused while a killed run's lock is not; a diverging run (too many
skipped non-finite steps) stops with one line and exit code 3, keeping its last good
checkpoint; every bad input of issues 11 and 22 (broken user data, a workdir that is a
file, steps that cannot fit in device memory) is one line, exit code 2, found before any
training or compilation, with nothing written.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from autodo_jax import parallel
from experiments import config as cfg_lib, memory_check, run_setup, trainer
from experiments import workdir as workdir_lib
from experiments.checkpointing import Checkpointer
from experiments.preemption import Preempted
from experiments.pipes import build_pipes
from experiments.progress import Diverged
from experiments.workdir import read_metrics

#: 2 epochs of 6 inner steps (3 dispatches of K = 2), a hyper pass of 6 steps in epoch 2.
TINY = dict(epochs=2, batch_size=8, hyper_batch_size=16, eval_batch_size=64,
            hyper_start_epoch=1, max_steps_per_epoch=6, eval_limit=64, subsample_ratio=0.2,
            warmup_epochs=1.0, checkpoint_every=1, steps_per_dispatch=2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def _run(workdir, log=lambda m: None, **changes):
    return trainer.train_and_evaluate(cfg_lib.Config(**{**TINY, **changes}), str(workdir), log=log)


def assert_same_run(a, b):
    """Two finished workdirs hold the same results (summary, final table, metrics)."""
    assert workdir_lib.run_differences(str(a), str(b)) == []


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
    with workdir_lib.hold(str(wd)):
        before = sorted(os.listdir(wd))
        with pytest.raises(trainer.ConfigError) as err:
            _run(wd, epochs=1, hyper_start_epoch=0)
        assert err.value.lines[0].startswith(f"--workdir={wd}: in use by a running job (pid "
                                             f"{os.getpid()} on ")
        assert sorted(os.listdir(wd)) == before
    with open(wd / workdir_lib.LOCK_FILE, "w") as f:  # a killed run's lock file
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
    s = workdir_lib.read_json(os.path.join(str(straight), "summary.json"))
    assert s["skipped_inner_steps"] == 0 and s["skipped_hyper_steps"] == 0


def _folder(root, sizes=((28, 28),) * 4, empty_class=False):
    """A folder dataset: train/a/ and train/b/ with grayscale PNGs of ``sizes``."""
    rng = np.random.default_rng(0)
    for i, size in enumerate(sizes):
        os.makedirs(root / "train" / "ab"[i % 2], exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(
            root / "train" / "ab"[i % 2] / f"{i:03d}.png")
    if empty_class:
        os.makedirs(root / "train" / "c")
        (root / "train" / "c" / "notes.txt").write_text("no images here")
    return f"folder:{root}"


def _damaged_folder(root, how):
    dataset = _folder(root)
    png = root / "train" / "b" / "001.png"
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2] if how == "truncated" else b"not an image at all")
    return dataset


def _npz(root, **changes):
    """An npz dataset (uint8 images, labels 0..9) with arrays replaced by ``changes``."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
              "y_train": np.arange(40) % 10, **changes}
    os.makedirs(root, exist_ok=True)
    np.savez(root / "d.npz", **arrays)
    return f"npz:{root / 'd.npz'}"


def _workdir_is_a_file(root):
    os.makedirs(root)
    (root / "run").write_text("not a workdir")
    return {"workdir": root / "run"}


#: Bad inputs: (changes to TINY, or a function of a fresh directory DATA returning them
#: after writing the input files there; the start of the one line expected, with {DATA}).
BAD_INPUTS = [
    (dict(dataset="mnist:99.0.0"), "--dataset=mnist:99.0.0: cannot be loaded (AssertionError: "),
    (dict(dataset="coco"), "--dataset=coco: cannot be loaded ("),
    (dict(imbalance_ratio=1e6), "--imbalance_ratio=1000000.0: leaves no train example of "
                                "classes 5, 6, 7, 8, 9 "),
    (dict(hyper_batch_size=496, subsample_ratio=1.0, max_steps_per_epoch=1),
     "--hyper_batch_size=496: too large for the 500 validation examples on 8 devices"),
    # issue 22: broken user data, each named
    (lambda d: dict(dataset=_damaged_folder(d, "corrupt")),
     "--dataset=folder:{DATA}: cannot read image train/b/001.png: not an image file that PIL "
     "can identify (corrupt, or not PNG/JPEG)"),
    (lambda d: dict(dataset=_damaged_folder(d, "truncated")),
     "--dataset=folder:{DATA}: cannot read image train/b/001.png: OSError: image file is truncated"),
    (lambda d: dict(dataset=_folder(d, sizes=((28, 28), (28, 28), (28, 28), (32, 28)))),
     "--dataset=folder:{DATA}: images differ in size: train/a/000.png is 28x28 but "
     "train/b/003.png is 32x28 (height x width); set image_size (--image_size=HxW)"),
    (lambda d: dict(dataset=_folder(d, empty_class=True)),
     "--dataset=folder:{DATA}: class folder train/c/ is empty: it has no .png/.jpg/.jpeg files"),
    (lambda d: dict(dataset=_npz(d, x_train=np.full((40, 28, 28), np.nan, np.float32))),
     "--dataset=npz:{DATA}/d.npz: x_train has dtype float32; images must be uint8 (0..255)"),
    (lambda d: dict(dataset=_npz(d, x_train=np.zeros((40, 28, 28), np.int64))),
     "--dataset=npz:{DATA}/d.npz: x_train has dtype int64; images must be uint8 (0..255)"),
    (lambda d: dict(dataset=_npz(d, y_train=np.arange(40) % 10 - 1)),
     "--dataset=npz:{DATA}/d.npz: y_train has label -1 at index 0, out of range: allowed 0..8"),
    (lambda d: dict(dataset=_npz(d, x_val=np.zeros((2, 28, 28), np.uint8), y_val=np.array([3, 10]))),
     "--dataset=npz:{DATA}/d.npz: y_val has label 10 at index 1, out of range: allowed 0..9"),
    (lambda d: dict(dataset=_npz(d, y_train=np.arange(39) % 10)),
     "--dataset=npz:{DATA}/d.npz: y_train has shape (39,); it must be (40,), one label for each "
     "image of x_train"),
    (_workdir_is_a_file, "--workdir={DATA}/run: exists and is not a directory"),
    # issue 22: steps that cannot fit in memory (the upsampled warp; the evaluation batch)
    (dict(upsample=1000, hyper_batch_size=0),
     "--hyper_batch_size=0 (auto: 256; 32 per device), --model=small_cnn, 28x28x1 images, "
     "--upsample=1000: the hyper step needs at least 93.5 GiB per device, of which 93.5 GiB "
     "are the 1000x-upsampled images of the warp, more than the "),
    (dict(eval_batch_size=10 ** 9),
     "--eval_batch_size=1000000000 (125000000 per device), --model=small_cnn, 28x28x1 images: "
     "the evaluation step needs at least 365 GiB per device, more than the "),
]


def _contents(root) -> dict:
    """Every file and directory under ``root`` with its bytes (a snapshot)."""
    out = {}
    for path, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.join(path, name)] = None
        for name in files:
            with open(os.path.join(path, name), "rb") as f:
                out[os.path.join(path, name)] = f.read()
    return out


@pytest.mark.parametrize("changes, line", BAD_INPUTS)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, changes, line):
    """One ConfigError line (exit code 2 in experiments.train), found before any training
    or compilation, and nothing written anywhere (the workdir is never created)."""
    data = tmp_path / "data"
    changes = dict(changes(data) if callable(changes) else changes)
    wd = changes.pop("workdir", tmp_path / "wd")
    before = _contents(tmp_path)
    with pytest.raises(trainer.ConfigError) as err:
        _run(wd, **changes)
    expected = line.format(DATA=data)
    assert len(err.value.lines) == 1 and err.value.lines[0].startswith(expected), err.value.lines
    assert _contents(tmp_path) == before


@pytest.mark.slow
def test_memory_check_compiles_the_steps_it_is_unsure_of(tmp_path):
    """Between a step's lower bound and its generous estimate the memory check compiles the
    steps as the run calls them and XLA's memory analysis decides: a device memory below
    what the largest compiled step needs refuses the run (one line with that figure), one
    above every step's lets it through. Nothing is written either way."""
    config = cfg_lib.Config(**TINY)
    data = run_setup.prepare(config, str(tmp_path / "wd"))
    mesh = parallel.make_mesh()
    pipes = build_pipes(config, data, mesh)
    step_cfg = cfg_lib.step_config(config, 10, pipes.steps_per_epoch, pipes.hyper_steps_per_epoch)
    needs = memory_check.step_needs(config, step_cfg, (28, 28, 1), len(data.train_index),
                                    mesh.size, pipes.hyper_batch_size)
    compiled = memory_check._compiled_steps(config, data, mesh, pipes, step_cfg)
    exact = {n.step: memory_check.compiled_bytes(compiled[n.step]()) for n in needs}
    for n in needs:
        assert n.lower <= exact[n.step] <= n.typical, (n, exact)
    worst = max(needs, key=lambda n: exact[n.step])
    others = max([n.lower for n in needs] + [exact[n.step] for n in needs if n is not worst])
    assert exact[worst.step] > others

    def errors(budget):
        return memory_check.memory_errors(config.replace(device_memory_gb=budget / (1 << 30)),
                                          data, mesh, pipes, step_cfg)

    (line,) = errors((others + exact[worst.step]) / 2)
    assert line.startswith(f"{worst.flags}: the {worst.step} needs "
                           f"{exact[worst.step] / (1 << 30):.3g} GiB per device, more than "
                           "the "), line
    assert errors(exact[worst.step] * 1.01) == []
    assert not (tmp_path / "wd").exists()


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
