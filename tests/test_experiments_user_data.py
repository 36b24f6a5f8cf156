"""experiments.train on your own data: folder:PATH and npz:PATH with a hand-given clean val.

The end-to-end runs use the tiny settings and compile settings of test_experiments_train
(imported) and data of the same shapes as its mnist5k runs (394 train rows of 28x28x1, 10
classes, soft labels with symmetric KL), so that in one pytest session they reuse its
compiled steps.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from autodo_jax import parallel
from experiments import config as cfg_lib, config_checks, methods, run_setup, trainer, visualize
from experiments import workdir as workdir_lib
from experiments.pipes import build_pipes
from experiments.workdir import read_metrics
from test_experiments_train import REPO, TINY

ROWS, VAL, CLASSES, HW = 394, 40, 10, 28
AS_GIVEN = dict(TINY, subsample_ratio=1.0, imbalance_ratio=1.0, noise_ratio=0.0,
                symmetric_kl="true")


def _digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 28, 28) images whose brightness encodes the label, and the labels."""
    labels = np.arange(n) % CLASSES
    noise = np.random.default_rng(seed).integers(0, 60, (n, HW, HW))
    return (noise + 19 * labels[:, None, None]).astype(np.uint8), labels


def _save_npz(path, with_test=True) -> str:
    x, y = _digits(ROWS, 0)
    xv, yv = _digits(VAL, 1)
    extra = dict(x_test=xv[::-1], y_test=yv[::-1]) if with_test else {}
    np.savez(path, x_train=x, y_train=y, x_val=xv, y_val=yv,
             class_names=np.array([f"c{k}" for k in range(CLASSES)]), **extra)
    return f"npz:{path}"


def _save_folder(root, test=False) -> str:
    for split, (x, y) in (("train", _digits(ROWS, 0)), ("val", _digits(VAL, 1)),
                          *((("test", _digits(VAL, 2)),) if test else ())):
        for i, (image, label) in enumerate(zip(x, y)):
            os.makedirs(root / split / f"class{label}", exist_ok=True)
            Image.fromarray(image).save(root / split / f"class{label}" / f"{i:04d}.png")
    return f"folder:{root}"


def _run(workdir, dataset, **changes):
    config = cfg_lib.Config(**dict(AS_GIVEN, dataset=dataset, **changes))
    return trainer.train_and_evaluate(config, str(workdir), log=lambda m: None)


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("npz")
    dataset = _save_npz(root / "data.npz")
    return root / "wd", dataset, _run(root / "wd", dataset)


@pytest.mark.slow
def test_npz_dataset_trains_on_the_data_as_given(npz_run):
    wd, dataset, summary = npz_run
    assert summary["num_train"] == ROWS and summary["dataset"] == dataset
    assert 0.0 <= summary["test_accuracy_final"] <= 1.0
    assert summary["hyper_images"] == 16 * 2 and len(summary["per_class_accuracy_final"]) == 10
    # no clean labels are known for the given train labels: no noise metrics, a note instead
    assert summary["label_truth"].startswith("unknown")
    for key in ("weight_auc_clean_vs_noisy", "soft_label_noisy_fixed_fraction",
                "num_noisy_train"):
        assert key not in summary, key
    assert "test_set" not in summary and len(summary["dataset_fingerprint"]) == 16
    assert summary["class_names"] == [f"c{k}" for k in range(CLASSES)]
    with np.load(wd / "split.npz") as split:
        np.testing.assert_array_equal(np.sort(split["train_index"]), np.arange(ROWS))
        np.testing.assert_array_equal(split["val_index"], np.arange(VAL))
        assert not split["noisy"].any()
    table = workdir_lib.load_final_table(str(wd))
    assert not table["clean_labels_known"] and table["weight"].shape == (ROWS,)
    assert workdir_lib.read_json(wd / "config.json")["dataset"] == dataset
    assert "true label noise unknown" in visualize._truth_note(table)
    assert sorted(os.path.basename(p) for p in visualize.make_plots(str(wd), str(wd / "plots"))) == [
        "augmentation.png", "curves.png", "soft_labels.png", "weights.png"]


@pytest.mark.slow
def test_changed_dataset_is_refused_on_resume(npz_run, tmp_path):
    wd, dataset, _ = npz_run
    path = dataset.split(":", 1)[1]
    with np.load(path) as z:
        arrays = dict(z)
    arrays["x_train"][0, 0, 0] ^= 1
    np.savez(tmp_path / "data.npz", **arrays)
    os.replace(tmp_path / "data.npz", path)
    before = sorted(os.listdir(wd))
    try:
        with pytest.raises(trainer.ConfigError) as err:
            _run(wd, dataset)
    finally:
        _save_npz(path)
    (line,) = err.value.lines
    assert line.startswith(f"--workdir={wd}:") and "the dataset's content changed" in line
    assert sorted(os.listdir(wd)) == before


@pytest.mark.slow
def test_folder_dataset_without_test_set(tmp_path):
    dataset = _save_folder(tmp_path / "data")
    # synthetic noise on top of the given labels; the test figures come from val (said so)
    s = _run(tmp_path / "wd", dataset, noise_ratio=0.1, symmetric_kl="auto")
    assert s["num_train"] == ROWS and s["test_set"].startswith("val: no test set was given")
    last = read_metrics(str(tmp_path / "wd"), "epoch")[-1]
    assert s["test_accuracy_final"] == last["test_accuracy"] == last["val_accuracy"]
    assert "weight_auc_clean_vs_noisy" not in s and s["label_truth"].startswith("unknown")
    with np.load(tmp_path / "wd" / "split.npz") as split:
        assert 0 < split["noisy"].sum() <= round(0.1 * ROWS)


def _prepare_error(workdir, **changes) -> str:
    with pytest.raises(run_setup.ConfigError) as err:
        run_setup.prepare(cfg_lib.Config(**dict(AS_GIVEN, **changes)), str(workdir))
    (line,) = err.value.lines
    assert not os.path.exists(workdir)
    return line


def test_user_data_setting_errors(tmp_path):
    wd = tmp_path / "wd"
    npz = _save_npz(tmp_path / "d.npz", with_test=False)
    assert _prepare_error(wd, dataset=npz, val_size=5).startswith(
        "--val_size=5: not allowed when the dataset gives its own validation split")
    assert _prepare_error(wd, dataset=npz, method="val_only", symmetric_kl="auto").startswith(
        f"--method=val_only: trains on the validation split, and --dataset={npz} has no test")
    assert _prepare_error(wd, dataset=npz, train_on_val=True).endswith(
        "(test/ or x_test, y_test) or leave the flag off")
    assert _prepare_error(wd, dataset=npz, ablation="overfit").startswith(
        "--ablation=overfit: validates on the test split")
    assert _prepare_error(wd, dataset=npz, model="resnet18").startswith(
        f"--model=resnet18: does not fit --dataset={npz} images of shape (28, 28, 1): needs "
        "images of at least 32x32; resize them with --image_size=HxW")
    assert _prepare_error(wd, dataset="mnist5k", image_size="32").startswith(
        "--dataset=mnist5k: image_size=(32, 32): only for folder:/npz: data")
    assert _prepare_error(wd, dataset=f"folder:{tmp_path}/none").startswith(
        f"--dataset=folder:{tmp_path}/none: {tmp_path}/none is not a directory")
    data = run_setup.load_data(cfg_lib.Config(**dict(AS_GIVEN, dataset=npz, image_size="32x30")))
    assert data.source.image_shape == (32, 30, 1) and data.split.val_from == "val"
    assert data.source.test_from == "val" and len(data.source.test) == VAL


@pytest.mark.slow
def test_train_on_val_learns_a_row_for_every_clean_example(tmp_path):
    """--train_on_val: the clean examples are table rows after the train rows; hyper steps
    move their λ too (mean weight off its initial 1), and the saved table and the noise
    metrics keep to the train rows."""
    dataset = _save_npz(tmp_path / "data.npz")
    s = _run(tmp_path / "wd", dataset, train_on_val=True, hyper_batch_size=VAL)
    assert s["num_train"] == ROWS and s["hyper_images"] == VAL * 2
    assert s["weight_mean_val_rows"] != 1.0 and s["weight_mean_train_rows"] != 1.0
    assert s["selected_epochs"]["val_selected"] is None   # the clean split was trained on
    table = workdir_lib.load_final_table(str(tmp_path / "wd"))
    assert table["weight"].shape == (ROWS,) and table["soft"].shape == (ROWS, CLASSES)


def test_methods_that_train_on_val_read_the_given_val_images(tmp_path):
    """val_only, train_plus_val and --train_on_val read a validation split that the data
    gives apart from train (x_val) from there, not train images at the same indices; the
    hyper batches of --train_on_val draw the appended validation rows too."""
    npz = _save_npz(tmp_path / "d.npz")
    x, y = _digits(ROWS, 0)
    xv, yv = _digits(VAL, 1)
    for method, changes in (("val_only", {}), ("train_plus_val", {}),
                            ("autodo_aws", {"train_on_val": True}), ("autodo_aws", {})):
        config = cfg_lib.Config(**dict(AS_GIVEN, dataset=npz, method=method, **changes))
        train_on = methods.get(method).trains_on(config.train_on_val)
        data = run_setup.load_data(config)
        split = data.split
        train_part = (x[split.train_index], y[split.train_index])
        val_part = (xv[split.val_index], yv[split.val_index])
        parts = {"val": [val_part], "train": [train_part],
                 "train+val": [train_part, val_part]}[train_on]
        np.testing.assert_array_equal(data.inner.images(data.train_index)[..., 0],
                                      np.concatenate([p[0] for p in parts]))
        np.testing.assert_array_equal(data.train_labels, np.concatenate([p[1] for p in parts]))
        assert data.has_val == (train_on == "train")
    mesh = parallel.make_mesh(1)
    pipes = build_pipes(config.replace(train_on_val=True), run_setup.load_data(
        config.replace(train_on_val=True)), mesh)
    ids = np.concatenate([pipes.hyper_train.batch(0, j)["ids"]
                          for j in range(pipes.hyper_train.steps_per_epoch)])
    assert len(set(ids.tolist())) == ids.size and ids.max() < ROWS + VAL
    assert (ids >= ROWS).sum() >= VAL - pipes.hyper_batch_size   # the validation rows too


def test_workdir_names_and_image_size_flag():
    name = cfg_lib.default_workdir(cfg_lib.Config(dataset="folder:/data/my pets/"))
    assert name.startswith(os.path.join("workdirs", "folder-my-pets-")) and " " not in name
    other = cfg_lib.default_workdir(cfg_lib.Config(dataset="folder:/other/my pets"))
    assert other != name   # the path, not only its last part, names the run
    assert cfg_lib.default_workdir(cfg_lib.Config()) == os.path.join(
        "workdirs", "mnist5k_autodo_aws_ir10_nr0.2_s0")
    assert cfg_lib.parse_image_size("") is None and cfg_lib.parse_image_size("24") == (24, 24)
    assert cfg_lib.parse_image_size("24X40") == (24, 40)
    assert config_checks.static_errors(cfg_lib.Config(image_size="0x3")) == [
        "--image_size='0x3': allowed: '' (keep the data's size), H or HxW with integers >= 1"]
    # a workdir saved before a field existed counts as the field's default
    saved = cfg_lib.Config().to_dict()
    del saved["image_size"]
    assert cfg_lib.config_mismatch(saved, cfg_lib.Config()) == []
    assert cfg_lib.config_mismatch(saved, cfg_lib.Config(image_size="8"))


def test_bad_folder_exits_2_and_writes_nothing(tmp_path):
    root = tmp_path / "data"
    for name, size in (("a/0.png", (28, 28)), ("b/1.png", (30, 28))):
        os.makedirs(root / "train" / os.path.dirname(name), exist_ok=True)
        Image.fromarray(np.zeros(size, np.uint8)).save(root / "train" / name)
    wd = tmp_path / "wd"
    p = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={wd}",
                        f"--dataset=folder:{root}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"error: --dataset=folder:{root}: images differ in size: train/a/0.png is 28x28 but "
        "train/b/1.png is 30x28 (height x width); set image_size (--image_size=HxW) to resize "
        "every image"]
    assert not wd.exists()
