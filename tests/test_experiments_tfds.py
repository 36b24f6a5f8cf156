"""A real TFDS dataset on disk, not a mock: built with TFDS's own writer (a
``GeneratorBasedBuilder`` over generated images, array_record files, no TensorFlow) into a
temporary data_dir, read by name through ``load_source`` (metadata, class names, train and
test splits, ``label_key``) and trained on end to end as ``--dataset=NAME --data_dir=DIR``.

The builder is not registered, so TFDS finds the dataset only on disk, as for any dataset a
user prepared with ``tfds build``. Its images have the shapes of test_experiments_user_data's
data (434 train = 394 train rows + 40 clean validation, 28x28x1, 10 classes) and the run
uses its settings, so that in one pytest session the steps compiled there are reused.
"""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from autodo_jax.data import sources
from experiments import config as cfg_lib, run_setup, trainer
from experiments import workdir as workdir_lib
from test_experiments_user_data import AS_GIVEN

NAME = "autodo_test_digits"
CLASSES = tuple(f"digit_{k}" for k in range(10))
TRAIN, TEST, VAL = 434, 40, 40


def _examples(n: int, seed: int):
    """(key, example): 28x28 grayscale images whose brightness encodes the class; every
    7th example's ``noisy_label`` names the next class."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = i % 10
        pixels = rng.integers(0, 60, (28, 28)) + 19 * label
        yield i, {"image": Image.fromarray(pixels.astype(np.uint8)), "label": label,
                  "noisy_label": (label + (i % 7 == 0)) % 10}


class AutodoTestDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The test dataset's builder (train and test splits)."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(names=CLASSES),
            "noisy_label": tfds.features.ClassLabel(names=CLASSES)}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": _examples(TRAIN, 0), "test": _examples(TEST, 1)}

    def _generate_examples(self):
        raise NotImplementedError   # _split_generators yields the examples itself


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("tfds"))
    AutodoTestDigits(data_dir=root, file_format="array_record").download_and_prepare()
    return root


def test_the_dataset_is_array_record_files_on_disk(data_dir):
    version_dir = os.path.join(data_dir, NAME, "1.0.0")
    files = sorted(os.listdir(version_dir))
    assert f"{NAME}-train.array_record-00000-of-00001" in files
    assert f"{NAME}-test.array_record-00000-of-00001" in files
    assert "dataset_info.json" in files


def test_load_source_reads_it_by_name(data_dir):
    src = sources.load_source(NAME, data_dir=data_dir)
    assert (src.num_classes, src.image_shape, src.family) == (10, (28, 28, 1), "generic")
    assert src.class_names == CLASSES and src.notes() == {"class_names": list(CLASSES)}
    assert (len(src.train), len(src.test), src.label_key, src.truth_known) == (TRAIN, TEST,
                                                                               "label", True)
    # every generated example is there once with its labels (TFDS shuffles on writing)
    for split, n, seed in ((src.train, TRAIN, 0), (src.test, TEST, 1)):
        written = {np.asarray(e["image"]).tobytes(): e["label"] for _, e in _examples(n, seed)}
        images = split.images(np.arange(n))
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        assert sorted(written) == sorted(im.tobytes() for im in images)
        np.testing.assert_array_equal(split.labels, [written[im.tobytes()] for im in images])
    # another ClassLabel feature as the given train labels; "label" stays the truth
    noisy = sources.load_source(NAME, data_dir=data_dir, label_key="noisy_label")
    given = {np.asarray(e["image"]).tobytes(): e["noisy_label"] for _, e in _examples(TRAIN, 0)}
    np.testing.assert_array_equal(noisy.train.labels, [
        given[im.tobytes()] for im in noisy.train.images(np.arange(TRAIN))])
    np.testing.assert_array_equal(noisy.train.clean_labels, src.train.labels)
    np.testing.assert_array_equal(noisy.test.labels, src.test.labels)
    assert 0 < (noisy.train.labels != noisy.train.clean_labels).sum() < TRAIN
    with pytest.raises(ValueError, match=r"label_key='image' is not allowed for "
                                         r"'autodo_test_digits': its ClassLabel features with "
                                         r"the classes of 'label' are \('label', 'noisy_label'\)"):
        sources.load_source(NAME, data_dir=data_dir, label_key="image")


def test_a_name_not_prepared_there_is_one_line(data_dir, tmp_path):
    wd = tmp_path / "wd"
    with pytest.raises(run_setup.ConfigError) as err:
        run_setup.prepare(cfg_lib.Config(**dict(AS_GIVEN, dataset=NAME,
                                                data_dir=str(tmp_path))), str(wd))
    (line,) = err.value.lines
    assert line.startswith(f"--dataset={NAME}: unknown dataset name '{NAME}'"), line
    assert not wd.exists()


@pytest.mark.slow
def test_trains_end_to_end_by_name_from_data_dir(data_dir, tmp_path):
    """The users' path: train_and_evaluate (what ``python -m experiments.train
    --dataset=NAME --data_dir=DIR --label_key=noisy_label`` calls) on the prepared data."""
    config = cfg_lib.Config(**dict(AS_GIVEN, dataset=NAME, data_dir=data_dir,
                                   label_key="noisy_label", val_size=VAL))
    summary = trainer.train_and_evaluate(config, str(tmp_path / "wd"), log=lambda m: None)
    assert summary["dataset"] == NAME and summary["class_names"] == list(CLASSES)
    assert summary["num_train"] == TRAIN - VAL and summary["num_val"] == VAL
    assert summary["hyper_images"] == 16 * 2 and 0.0 <= summary["test_accuracy_final"] <= 1.0
    # the noisy_label feature is the given label, "label" the truth: noise is measured
    src = sources.load_source(NAME, data_dir=data_dir, label_key="noisy_label")
    with np.load(tmp_path / "wd" / "split.npz") as split:
        index = split["train_index"]
        np.testing.assert_array_equal(split["train_labels"], src.train.labels[index])
        np.testing.assert_array_equal(split["train_clean_labels"], src.train.clean_labels[index])
        noisy = int((src.train.labels[index] != src.train.clean_labels[index]).sum())
    assert summary["num_noisy_train"] == noisy > 0
    assert 0.0 <= summary["weight_auc_clean_vs_noisy"] <= 1.0
    assert workdir_lib.load_final_table(str(tmp_path / "wd"))["weight"].shape == (TRAIN - VAL,)
