"""Distortion: exact counts, determinism, ablations, clear errors (saving a split: test_workdir)."""
import dataclasses
import math

import numpy as np
import pytest

from autodo_jax.data import distortion, sources
from autodo_jax.data.distortion import DistortionConfig


def _source(per_class=(200,) * 10, val_size=100, test=50):
    labels = np.repeat(np.arange(len(per_class)), per_class)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(labels.size)]
    images = np.zeros((labels.size, 2, 2, 1), np.uint8)
    test_labels = np.arange(test) % len(per_class)
    return sources.Source("toy", len(per_class), (2, 2, 1), "mnist", val_size, "label",
                          sources.ArraySplit(images, labels),
                          sources.ArraySplit(np.zeros((test, 2, 2, 1), np.uint8), test_labels))


@pytest.mark.parametrize("ir,nr,sr", [(1, 0.0, 1.0), (10, 0.0, 1.0), (100, 0.1, 1.0),
                                      (4, 0.3, 0.5), (1, 0.2, 0.37), (2.5, 0.0, 0.8)])
def test_counts_are_exact(ir, nr, sr):
    src = _source()
    split = distortion.make_split(src, DistortionConfig(ir, nr, sr, seed=3))
    # Validation: 100 stratified = 10 a class, disjoint from train.
    np.testing.assert_array_equal(np.bincount(split.val_labels, minlength=10), [10] * 10)
    assert not set(split.val_index) & set(split.train_index)
    np.testing.assert_array_equal(split.val_labels, src.train.labels[split.val_index])
    pool = 1900
    kept = math.floor(sr * pool + 1e-9)
    per_class = np.bincount(split.train_clean_labels, minlength=10)
    major = per_class[:5].sum()
    if ir == 1:
        assert split.num_train == kept
    else:
        assert major + per_class[5:].sum() == split.num_train
        assert per_class[5:].sum() == math.floor(major / ir + 1e-9)
    if sr == 1.0:
        np.testing.assert_array_equal(per_class[:5], [190] * 5)
    # Noise: exactly round(NR n) labels redrawn; the flags say which differ.
    n = split.num_train
    np.testing.assert_array_equal(split.train_clean_labels, src.train.labels[split.train_index])
    np.testing.assert_array_equal(split.noisy, split.train_labels != split.train_clean_labels)
    redrawn = math.floor(nr * n + 0.5)
    assert split.noisy.sum() <= redrawn
    if redrawn >= 50:
        assert split.noisy.sum() >= 0.75 * redrawn   # 1/C of redraws keep the true label
    assert len(set(split.train_index)) == n


def test_mnist5k_calibration_setting():
    src = sources.load_source("mnist5k")
    split = distortion.make_split(src, DistortionConfig(imbalance_ratio=10, noise_ratio=0.2))
    per_class = np.bincount(split.train_clean_labels, minlength=10)
    np.testing.assert_array_equal(per_class[:5], [350] * 5)
    assert per_class[5:].sum() == 175 and split.num_train == 1925
    assert split.val_index.size == 500
    np.testing.assert_array_equal(np.bincount(split.val_labels), [50] * 10)
    assert 300 < split.noisy.sum() <= 385


def test_deterministic_and_stage_streams_independent():
    src = _source()
    a = distortion.make_split(src, DistortionConfig(10, 0.2, seed=1))
    b = distortion.make_split(src, DistortionConfig(10, 0.2, seed=1))
    for f in dataclasses.fields(a):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name))
    c = distortion.make_split(src, DistortionConfig(10, 0.0, seed=1))
    np.testing.assert_array_equal(a.val_index, c.val_index)
    assert set(a.train_index) == set(c.train_index)        # noise leaves the kept set alone
    d = distortion.make_split(src, DistortionConfig(10, 0.2, seed=2))
    assert not np.array_equal(a.val_index, d.val_index)


def test_rows_are_not_class_sorted():
    split = distortion.make_split(_source(), DistortionConfig())
    first_half = split.train_clean_labels[: split.num_train // 2]
    assert len(np.unique(first_half)) == 10
    assert not np.all(np.diff(split.train_index) > 0)


def test_ablations():
    src = _source()
    over = distortion.make_split(src, DistortionConfig(10, 0.1, ablation="overfit"))
    normal = distortion.make_split(src, DistortionConfig(10, 0.1))
    assert over.val_from == "test"
    np.testing.assert_array_equal(over.val_index, np.arange(50))
    np.testing.assert_array_equal(over.val_labels, src.test.labels)
    np.testing.assert_array_equal(over.train_index, normal.train_index)
    split = distortion.make_split(src, DistortionConfig(ablation="oversplit"))
    assert split.val_from == "train" and split.num_train == 2000
    np.testing.assert_array_equal(split.val_index, np.arange(2000))
    np.testing.assert_array_equal(split.val_labels, src.train.labels)


@pytest.mark.parametrize("kwargs,match", [
    ({"imbalance_ratio": 0.5}, "imbalance_ratio must be >= 1, got 0.5"),
    ({"noise_ratio": 1.0}, r"noise_ratio must lie in \[0, 1\), got 1.0"),
    ({"noise_ratio": -0.1}, "noise_ratio"),
    ({"subsample_ratio": 0.0}, r"subsample_ratio must lie in \(0, 1\], got 0.0"),
    ({"subsample_ratio": 1.5}, "subsample_ratio"),
    ({"val_size": 0}, "val_size"), ({"val_size": 1.5}, "val_size"),
    ({"ablation": "bogus"}, "ablation must be one of"),
    ({"seed": -1}, "seed"), ({"imbalance_ratio": float("nan")}, "finite"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistortionConfig(**kwargs)


def test_bad_sizes():
    with pytest.raises(ValueError, match="val_size=2000.*< 2000"):
        distortion.make_split(_source(), DistortionConfig(val_size=2000))
    small = _source(per_class=(10, 1), val_size=8)   # class 1 gets 0.73 -> 1 of its 1
    with pytest.raises(ValueError, match="class 1 has 1 examples.*needs 1 of them"):
        distortion.make_split(small, DistortionConfig())
    skewed = _source(per_class=(200,) * 5 + (20,) * 5, val_size=10)
    with pytest.raises(ValueError, match="imbalance_ratio=1.5 needs"):
        distortion.make_split(skewed, DistortionConfig(imbalance_ratio=1.5))
