"""Sources: embedded mnist5k (real file), TFDS through mock data, clear errors."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from autodo_jax.data import imagenet, mnist5k, sources


def test_mnist5k_real_counts_and_pixels():
    src = sources.load_source("mnist5k")
    assert (src.num_classes, src.image_shape, src.family, src.val_size) == (10, (28, 28, 1),
                                                                            "mnist", 500)
    assert len(src.train) == 4000 and len(src.test) == 1000
    np.testing.assert_array_equal(np.bincount(src.train.labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(src.test.labels), [100] * 10)
    images = src.train.images(np.arange(4000))
    assert images.dtype == np.uint8 and images.shape == (4000, 28, 28, 1)
    assert images.min() == 0 and images.max() == 255
    # Real digits: mostly black background, a few percent saturated strokes.
    assert 0.05 < (images > 128).mean() < 0.3
    assert (images[:, 0, :, 0] == 0).mean() > 0.99   # empty top row
    np.testing.assert_array_equal(src.train.clean_labels, src.train.labels)


def test_mnist5k_test_split_is_fixed():
    images, labels = mnist5k._read_csv(mnist5k.mnist5k_path())
    first = mnist5k.mnist5k_test_mask(labels)
    np.testing.assert_array_equal(first, mnist5k.mnist5k_test_mask(labels))
    assert first.sum() == 1000
    arrays = mnist5k.load_mnist5k_arrays()
    np.testing.assert_array_equal(arrays["test"][0], images[first])
    np.testing.assert_array_equal(arrays["train"][1], labels[~first])


def test_tfds_mock_svhn_with_extra():
    with tfds.testing.mock_data(num_examples=6):
        src = sources.load_source("svhn_cropped")
        both = sources.load_source("svhn_cropped", extra=True)
    assert (src.name, src.num_classes, src.image_shape, src.family) == (
        "svhn_cropped", 10, (32, 32, 3), "svhn")
    assert len(src.train) == 6 and len(both.train) == 12 and len(both.test) == 6
    assert both.name == "svhn_cropped+extra" and both.val_size == 104_388
    assert src.val_size == 23_257
    im = both.train.images([0, 11])
    assert im.dtype == np.uint8 and im.shape == (2, 32, 32, 3)


def test_tfds_mock_lazy_split_matches_in_memory():
    with tfds.testing.mock_data(num_examples=5):
        eager = sources.load_source("cifar10")
        lazy = sources.load_source("cifar10", in_memory=False)
        np.testing.assert_array_equal(lazy.train.images([4, 1]), eager.train.images([4, 1]))
    np.testing.assert_array_equal(lazy.train.labels, eager.train.labels)
    assert isinstance(lazy.train, sources.TfdsSplit)


def _cifar10n_records(self, split, decoders=None, **kw):
    del self, decoders, kw
    rng = np.random.default_rng(0 if split == "train" else 1)
    out = []
    for i in range(8):
        clean = i % 10
        noisy = -1 if split == "test" else (clean + (i % 3 == 0)) % 10
        out.append({"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "label": clean,
                    "aggre_label": noisy, "worse_label": (clean + 1) % 10 if split == "train"
                    else -1, "id": str(i)})
    return out


def test_cifar10n_label_keys_keep_clean_labels():
    with tfds.testing.mock_data(as_data_source_fn=_cifar10n_records):
        aggre = sources.load_source("cifar10_n")
        worse = sources.load_source("cifar10_n", label_key="worse_label")
        clean = sources.load_source("cifar10_n", label_key="label")
    assert aggre.label_key == "aggre_label" and aggre.family == "cifar10"
    np.testing.assert_array_equal(aggre.train.clean_labels, np.arange(8) % 10)
    np.testing.assert_array_equal(aggre.train.labels, (np.arange(8) + (np.arange(8) % 3 == 0)) % 10)
    np.testing.assert_array_equal(worse.train.labels, (np.arange(8) + 1) % 10)
    np.testing.assert_array_equal(clean.train.labels, clean.train.clean_labels)
    # Test labels are the clean ones, never the -1 of the noisy fields.
    np.testing.assert_array_equal(worse.test.labels, np.arange(8) % 10)


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="unknown dataset name 'no_such_set'"):
        sources.load_source("no_such_set")
    with pytest.raises(ValueError, match="label_key='worse'.*allowed"):
        sources.load_source("cifar10_n", label_key="worse")
    with pytest.raises(ValueError, match="extra=True is only allowed for 'svhn_cropped'"):
        sources.load_source("cifar10", extra=True)
    with pytest.raises(ValueError, match="label_key"):
        sources.load_source("mnist5k", label_key="aggre_label")


def test_not_prepared_gives_instructions(tmp_path):
    with pytest.raises(sources.DatasetNotPreparedError) as err:
        sources.load_source("cifar10", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "tfds build cifar10" in msg and f"--data_dir={tmp_path}" in msg
    assert "array_record" in msg
    assert not any(tmp_path.rglob("*.array_record*"))


def test_imagenet_decode_paths_fixed_size():
    with tfds.testing.mock_data(num_examples=4):
        src = sources.load_source("imagenet2012", image_size=32)
        assert src.image_shape == (32, 32, 3) and src.num_classes == 1000
        assert src.family == "imagenet" and src.val_size == 0.2
        ev = src.test.images([0, 1, 2])
        tr = src.train.train_images([0, 3], np.random.default_rng(0))
    assert ev.shape == (3, 32, 32, 3) and tr.shape == (2, 32, 32, 3)
    assert ev.dtype == tr.dtype == np.uint8


def test_imagenet_resize_center_crop_and_rrc_box():
    image = np.zeros((300, 400, 3), np.uint8)
    image[:, 200:] = 255     # right half white
    out = imagenet.resize_center_crop([image], 256, 224)[0]
    # Resized to 256 x 341, centre crop: the white edge sits at column 170 - 58 = 112.
    assert out.shape == (224, 224, 3)
    assert out[:, :110].max() == 0 and out[:, 114:].min() == 255
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left, h, w = imagenet.rrc_box(300, 400, rng)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        assert 0.08 * 120000 * 0.9 <= h * w <= 120000


def test_any_tfds_image_classification_name():
    with tfds.testing.mock_data(num_examples=4):
        src = sources.load_source("fashion_mnist")
    assert (src.family, src.val_size, src.num_classes, src.image_shape) == (
        "generic", 0.1, 10, (28, 28, 1))
    with pytest.raises(ValueError, match="not an image-classification dataset"):
        sources.load_source("imdb_reviews")


def test_concat_split_reads_each_example_from_its_part():
    a = sources.ArraySplit(np.arange(3 * 4).reshape(3, 2, 2, 1).astype(np.uint8), [0, 1, 0])
    b = sources.ArraySplit(np.full((2, 2, 2, 1), 200, np.uint8), [1, 1], clean_labels=[0, 1])
    both = sources.ConcatSplit(a, b)
    assert len(both) == 5 and both.image_shape == (2, 2, 1)
    np.testing.assert_array_equal(both.labels, [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(both.clean_labels, [0, 1, 0, 0, 1])
    idx = [4, 0, 3, 2]
    expected = np.stack([b.images([1])[0], a.images([0])[0], b.images([0])[0], a.images([2])[0]])
    np.testing.assert_array_equal(both.images(idx), expected)
    np.testing.assert_array_equal(both.train_images(idx, np.random.default_rng(0)), expected)
    assert both.images([]).shape == (0, 2, 2, 1)
    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        both.images([5])
    with pytest.raises(ValueError, match="image shapes differ"):
        sources.ConcatSplit(a, sources.ArraySplit(np.zeros((1, 3, 3, 1), np.uint8), [0]))
