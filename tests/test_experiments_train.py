"""End-to-end tests of experiments.train on 8 forced CPU devices (tiny runs).

Every run is TINY: 2 epochs of 2 inner steps, a hyper pass of 2 steps in epoch 2 (the
schedule: none in epoch 1). One finished autodo_aws run on mnist5k is shared by the module
(resume equivalence, results, plots). Every method runs on mnist5k and on TFDS mock data;
the mock "mnist" runs reuse the compiled steps of the mnist5k runs (same shapes and
StepConfig), so only fast_aa / dada (no MNIST policy in the original) need a 32x32x3 mock.
Every test that trains is marked ``slow`` (the full suite runs them); the flag checks are not.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from autodo_jax import train as train_lib
from experiments import config as cfg_lib, methods, results, run_setup, trainer, visualize
from experiments import workdir as workdir_lib
from experiments.workdir import read_metrics

TINY = dict(epochs=2, batch_size=8, hyper_batch_size=16, eval_batch_size=64,
            hyper_start_epoch=1, max_steps_per_epoch=2, eval_limit=64, subsample_ratio=0.2,
            warmup_epochs=1.0, checkpoint_every=1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(workdir, **changes):
    return trainer.train_and_evaluate(cfg_lib.Config(**changes), str(workdir), log=lambda m: None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch autodo_aws run (hyper pass in epoch 2) on mnist5k."""
    wd = tmp_path_factory.mktemp("aws")
    summary = _run(wd, **TINY)
    return wd, summary


@pytest.mark.slow
def test_finished_workdir_contents(finished):
    wd, summary = finished
    names = set(os.listdir(wd))
    assert {"config.json", "split.npz", "checkpoints", "metrics.jsonl", "tensorboard",
            "summary.json", "final_table.npz"} <= names
    assert workdir_lib.read_json(os.path.join(wd, "summary.json")) == summary
    assert summary["num_devices"] == 8 and summary["hyper_images"] == 16 * 2
    for key in ("test_accuracy_final", "test_accuracy_val_selected",
                "test_accuracy_best_on_test_paper_protocol", "minority_accuracy_final",
                "weight_auc_clean_vs_noisy", "soft_label_noisy_fixed_fraction"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert len(summary["per_class_accuracy_final"]) == 10
    epochs = read_metrics(str(wd), "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert "hyper_val_loss" in epochs[1] and "hyper_val_loss" not in epochs[0]
    table = workdir_lib.load_final_table(str(wd))
    n = summary["num_train"]
    assert table["aug_p"].shape == (n, 7) and table["weight"].shape == (n,)
    assert table["soft"].shape == (n, 10) and table["noisy"].shape == (n,)
    # the hyper step touched some rows, not all of them
    assert 0 < np.count_nonzero(table["weight"]) < n


@pytest.mark.slow
def test_resume_reaches_the_same_result(finished, tmp_path):
    _, straight = finished
    stopped = _run(tmp_path, **TINY, stop_after_epoch=1)
    assert stopped == {"stopped_after_epoch": 1}
    assert not os.path.exists(tmp_path / "summary.json")
    resumed = _run(tmp_path, **TINY)
    for key in ("test_accuracy_final", "test_accuracy_val_selected", "per_class_accuracy_final",
                "weight_auc_clean_vs_noisy", "soft_label_noisy_fixed_fraction", "epochs"):
        assert resumed[key] == straight[key], key
    a = workdir_lib.load_final_table(str(finished[0]))
    b = workdir_lib.load_final_table(str(tmp_path))
    for k in ("aug_p", "aug_m", "weight", "soft"):
        np.testing.assert_array_equal(a[k], b[k])
    assert [r["epoch"] for r in read_metrics(str(tmp_path), "epoch")] == [1, 2]


@pytest.mark.slow
def test_steps_per_dispatch_and_workers_do_not_change_results(tmp_path):
    """3 steps per pass: K = 2 (a padded second dispatch) with one pipeline thread equals
    K = 3 with three threads, bitwise (summary and final table)."""
    three = dict(TINY, max_steps_per_epoch=3)
    a = _run(tmp_path / "k2", **three, steps_per_dispatch=2, data_workers=1)
    b = _run(tmp_path / "k1", **three, steps_per_dispatch=3, data_workers=3)
    assert a["train_images"] == b["train_images"] == 2 * 3 * 8
    assert a["hyper_images"] == b["hyper_images"] == 3 * 16
    for key in ("test_accuracy_final", "per_class_accuracy_final", "epochs",
                "weight_auc_clean_vs_noisy"):
        assert a[key] == b[key], key

    def metrics(wd):   # train/hyper loss means etc. of every epoch, timings left out
        return [{k: v for k, v in r.items() if not k.endswith("time_s")}
                for r in read_metrics(str(wd), "epoch")]
    assert metrics(tmp_path / "k2") == metrics(tmp_path / "k1")
    ta = workdir_lib.load_final_table(str(tmp_path / "k2"))
    tb = workdir_lib.load_final_table(str(tmp_path / "k1"))
    for k in ("aug_p", "aug_m", "weight", "soft"):
        np.testing.assert_array_equal(ta[k], tb[k])


@pytest.mark.slow
def test_corrupt_checkpoint_falls_back(finished, tmp_path):
    _run(tmp_path, **TINY)
    ckpt = tmp_path / "checkpoints"
    first, last = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())
    for root, _, files in os.walk(ckpt / str(last)):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    os.remove(tmp_path / "summary.json")
    msgs = []
    out = trainer.train_and_evaluate(cfg_lib.Config(**TINY), str(tmp_path), log=msgs.append)
    assert any(f"checkpoint step {last}" in m and f"falling back to step {first}" in m
               for m in msgs), msgs
    assert out["selected_epochs"] == finished[1]["selected_epochs"]


@pytest.mark.slow
def test_workdir_of_another_config_is_refused(finished):
    wd, _ = finished
    before = sorted(os.listdir(wd))
    with pytest.raises(trainer.ConfigError) as err:
        _run(wd, **dict(TINY, epochs=3))
    assert err.value.lines[0].startswith(f"--workdir={wd}: holds a run of another configuration")
    assert "epochs: workdir has 2, flags give 3" in err.value.lines[0]
    assert sorted(os.listdir(wd)) == before


@pytest.mark.slow
@pytest.mark.parametrize("method", ["none", "crop_flip", "randaugment", "autodo_sha", "autodo_a",
                                    "autodo_aw", "val_only", "train_plus_val"])
def test_every_method_mnist5k(method, tmp_path):
    s = _run(tmp_path, **TINY, method=method)
    assert 0.0 <= s["test_accuracy_final"] <= 1.0
    assert (s["test_accuracy_val_selected"] is None) == (method in ("val_only", "train_plus_val"))
    # the epoch count and the per-selection view are two fields (one once overwrote the other)
    assert s["epochs"] == TINY["epochs"]
    assert s["selected_epochs"]["final"]["epoch"] == TINY["epochs"]
    assert (s["hyper_images"] > 0) == method.startswith("autodo")
    assert os.path.exists(tmp_path / "final_table.npz") == method.startswith("autodo")


COMPETITORS = ("trivialaugment", "l2rw", "mwn")


@pytest.mark.slow
@pytest.mark.parametrize("method", COMPETITORS)
def test_competitor_methods_mnist5k(method, tmp_path):
    s = _run(tmp_path, **TINY, method=method)
    assert 0.0 <= s["test_accuracy_final"] <= 1.0
    assert s["hyper_images"] == 0 and not os.path.exists(tmp_path / "final_table.npz")
    assert s["train_images"] == 2 * 2 * TINY["batch_size"] and s["wall_time_s"] > 0
    epochs = read_metrics(str(tmp_path), "epoch")
    if method == "trivialaugment":
        assert "train_val_loss" not in epochs[-1]
        return
    assert 0.0 < epochs[-1]["train_kept_fraction"] <= 1.0      # look-ahead step metrics
    assert np.isfinite(epochs[-1]["train_val_loss"]) and epochs[-1]["train_skipped"] == 0
    curve = s.get("mwn_weight_curve")
    assert (curve is not None) == (method == "mwn")
    if curve:
        assert len(curve["loss"]) == len(curve["weight"]) == 21
        assert all(0.0 < w < 1.0 for w in curve["weight"])


@pytest.mark.slow
def test_competitor_methods_tfds_mock(tmp_path):
    rows = run_setup.load_data(cfg_lib.Config(**TINY)).split.num_train
    with tfds.testing.mock_data(num_examples=rows + 40):
        for method in COMPETITORS:
            # K = 2 steps per dispatch: the scanned path (mnist5k runs above take K = 1)
            s = _run(tmp_path / method, **dict(TINY, subsample_ratio=1.0, val_size=40,
                                               imbalance_ratio=1.0), dataset="mnist",
                     method=method, steps_per_dispatch=2)
            assert s["num_train"] == rows and 0.0 <= s["test_accuracy_final"] <= 1.0, method
            if method != "trivialaugment":
                epoch = read_metrics(str(tmp_path / method), "epoch")[-1]
                assert 0.0 < epoch["train_kept_fraction"] <= 1.0, method


@pytest.mark.slow
def test_autodo_fixed_runs_no_hyper_step_and_keeps_the_initial_table(tmp_path):
    """autodo_fixed: AutoDO's warp, weights and soft labels at their initial values."""
    s = _run(tmp_path, **TINY, method="autodo_fixed")
    assert s["hyper_images"] == 0 and s["host_policy"] == "color_subset"
    assert not [r for r in read_metrics(str(tmp_path), "epoch") if "hyper_val_loss" in r]
    table = workdir_lib.load_final_table(str(tmp_path))
    init = train_lib.autodo_table_init(table["given_labels"], 10, aug=True, weight=True, soft=True)
    for k, v in init.items():
        np.testing.assert_array_equal(table[k], np.asarray(v), err_msg=k)
    assert s["weight_auc_clean_vs_noisy"] == 0.5 and s["soft_label_noisy_fixed_fraction"] == 0.0


@pytest.mark.slow
def test_baselines_with_the_augmentation_autodo_starts_from(tmp_path):
    """val_only / train_plus_val with --host_policy=color_subset --init_warp: the colour
    subset on the host and AutoDO's initial warp on the device; no table is learned."""
    for method in ("val_only", "train_plus_val"):
        s = _run(tmp_path / method, **TINY, method=method, host_policy="color_subset",
                 init_warp=True)
        assert s["host_policy"] == "color_subset" and s["hyper_images"] == 0
        assert not os.path.exists(tmp_path / method / "final_table.npz")


@pytest.mark.slow
@pytest.mark.parametrize("dataset, names", [
    ("mnist", list(methods.METHODS.keys() - {"fast_aa", "dada", *COMPETITORS})),
    ("cifar10", ["fast_aa", "dada"]),
])
def test_every_method_tfds_mock(dataset, names, tmp_path):
    # As many train rows as the tiny mnist5k runs, so that the mock "mnist" runs reuse
    # their compiled steps (same shapes, same StepConfig).
    rows = run_setup.load_data(cfg_lib.Config(**TINY)).split.num_train
    with tfds.testing.mock_data(num_examples=rows + 40):
        for method in names:
            s = _run(tmp_path / method, **dict(TINY, subsample_ratio=1.0, val_size=40,
                                               imbalance_ratio=1.0), dataset=dataset, method=method)
            assert s["num_train"] == rows or method in ("val_only", "train_plus_val")
            assert 0.0 <= s["test_accuracy_final"] <= 1.0, method


def test_flag_errors_exit_2_and_write_nothing(tmp_path):
    wd = tmp_path / "wd"
    cases = [
        (["--noise_ratio=1.5", "--batch_size=0"], ["--noise_ratio=1.5", "--batch_size=0"]),
        (["--method=bogus"], ["flag --method=bogus"]),
        (["--method=none", "--symmetric_kl=true"], ["--symmetric_kl=true"]),
        (["--compute_dtype=float16"], ["flag --compute_dtype=float16"]),  # no loss scaling
    ]
    for args, starts in cases:
        p = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={wd}", *args],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2, (args, p.stderr)
        for line, start in zip(lines, starts):
            assert line.startswith("error: " + start), line
        assert not wd.exists()


def test_data_dependent_errors_exit_2(tmp_path):
    wd = tmp_path / "wd"
    p = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={wd}",
                        "--batch_size=5000", "--model=resnet18", "--method=fast_aa"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert [ln.split("=")[0] for ln in lines] == ["error: --method", "error: --model",
                                                  "error: --batch_size"]
    assert not wd.exists()


@pytest.mark.slow
def test_results_and_visualize_on_finished_workdir(finished, tmp_path):
    wd, summary = finished
    tables = results.build_tables(results.find_runs([str(wd)]), "final")
    (key,) = tables
    assert key[:2] == ("mnist5k", "small_cnn") and "epochs=2" in key[2]
    t = tables[key]
    assert t["columns"] == ["10-0.2"]
    ((method, cells),) = t["rows"]
    assert method == "autodo_aws"
    assert cells["10-0.2"] == [pytest.approx(100 * (1 - summary["test_accuracy_final"]))]
    written = visualize.make_plots(str(wd), str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == [
        "augmentation.png", "curves.png", "soft_labels.png", "weights.png"]
    p = subprocess.run([sys.executable, "-m", "experiments.results", str(wd), "--csv",
                        str(tmp_path / "r.csv")], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "| λ^{A,W,S} |" in p.stdout and (tmp_path / "r.csv").exists()
    assert json.loads(json.dumps(summary)) == summary


@pytest.mark.slow
def test_hypergrad_probe_on_finished_workdir(finished):
    """The probe's closed-form hypergradients equal implicit.hypergrad on the run's
    checkpoint, and its report covers every θ choice and solver."""
    from experiments import hypergrad_probe
    wd, summary = finished
    run = hypergrad_probe.load_run(str(wd))
    assert run["epoch"] == 2
    assert hypergrad_probe.check_closed_form(run, rows=16) < 1e-6
    report = hypergrad_probe.probe(run)
    assert report["num_train"] == summary["num_train"]
    assert report["num_noisy"] == summary["num_noisy_train"]
    names = set(report["variants"])
    assert {"head/neumann5", "kernel/neumann5", "centred_kernel/neumann5",
            "centred_kernel/damped0.1"} <= names
    entry = report["variants"]["head/neumann5"]
    for key in ("S/full/sym/row", "S/common/jq/coord", "S/specific/jp/field"):
        assert 0.0 <= entry[key]["noisy_toward_clean"] <= 1.0
        assert 0.0 <= entry[key]["flip_auc"] <= 1.0
