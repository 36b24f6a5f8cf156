"""User data: folder:PATH and npz:PATH sources, a given clean val split, clear errors."""
import os

import numpy as np
import pytest
from PIL import Image

from autodo_jax.data import distortion, sources, transforms, user_sources
from autodo_jax.data.distortion import DistortionConfig
from experiments import workdir as workdir_lib


def _image(label: int, i: int, size=(6, 5), channels=3) -> np.ndarray:
    rng = np.random.default_rng(1000 * label + i)
    shape = size + ((channels,) if channels > 1 else ())
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _write(root, rel, array=None, fmt=None):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(_image(0, 0) if array is None else array).save(path, format=fmt)
    return path


def _folder(root, layout=None, size=(6, 5), channels=3):
    """Writes PNGs: layout {split: {class: count}}; returns {split: [(label name, array)]}."""
    layout = layout or {"train": {"cat": 3, "dog": 2, "ant": 2}, "val": {"dog": 1, "cat": 1},
                        "test": {"ant": 1, "cat": 2}}
    written = {}
    for split, classes in layout.items():
        for name, count in classes.items():
            for i in range(count):
                array = _image(len(name) + ord(name[0]), i + 10 * len(split), size, channels)
                _write(root, f"{split}/{name}/{i:03d}.png", array)
                written.setdefault(split, []).append((name, array))
    return written


def _reshape(array):
    return array.reshape(array.shape[0], array.shape[1], -1)


def test_folder_dataset_round_trip(tmp_path):
    written = _folder(tmp_path)
    src = sources.load_source(f"folder:{tmp_path}")
    assert src.class_names == ("ant", "cat", "dog") and src.num_classes == 3
    assert src.image_shape == (6, 5, 3) and not src.truth_known and src.val_size == 2
    assert src.test_from == "test"
    for split, given in (("train", src.train), ("val", src.val), ("test", src.test)):
        # examples in class-name order, then file name order
        expected = sorted(written[split], key=lambda t: t[0])
        np.testing.assert_array_equal(given.labels, [src.class_names.index(n) for n, _ in expected])
        np.testing.assert_array_equal(given.images(np.arange(len(given))),
                                      np.stack([a for _, a in expected]))
    # normalisation from the train images
    family = src.family
    train = src.train.images(np.arange(len(src.train))).astype(np.float64) / 255
    np.testing.assert_allclose(family.mean, train.mean((0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(family.std, train.std((0, 1, 2)), rtol=1e-9)
    x = transforms.host_transform("none", family)(src.train.images(np.arange(len(src.train))),
                                                 np.random.default_rng(0))
    np.testing.assert_allclose(x.mean((0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std((0, 1, 2)), 1, atol=1e-4)
    assert transforms.allowed_policies(family) == tuple(
        p for p in transforms.POLICY_NAMES if p not in ("fast_aa", "dada"))
    assert family.crop_pad == 1 and not family.flip and "user data" in str(family)
    # the fingerprint follows the content, not the place
    again = sources.load_source(f"folder:{tmp_path}/")
    assert again.fingerprint == src.fingerprint and len(src.fingerprint) == 16
    _write(tmp_path, "train/dog/000.png", _image(5, 5))
    assert sources.load_source(f"folder:{tmp_path}").fingerprint != src.fingerprint


def test_folder_grayscale_jpeg_and_mixed_modes(tmp_path):
    gray = tmp_path / "gray"
    _folder(gray, {"train": {"a": 2, "b": 1}}, channels=1)
    src = sources.load_source(f"folder:{gray}")
    assert src.image_shape == (6, 5, 1) and src.test is None and src.val is None
    assert src.val_size == sources.GENERIC_VAL_FRACTION
    # one RGB JPEG (upper-case extension) makes every image RGB; gray ones are replicated
    path = _write(gray, "train/c/x.JPG", _image(1, 1), fmt="JPEG")
    src = sources.load_source(f"folder:{gray}")
    assert src.image_shape == (6, 5, 3) and src.class_names == ("a", "b", "c")
    im = src.train.images([0])[0]
    np.testing.assert_array_equal(im[..., 0], im[..., 2])
    np.testing.assert_array_equal(src.train.images([3])[0], np.asarray(Image.open(path)))


def test_folder_sizes_mixed_or_resized(tmp_path):
    _folder(tmp_path, {"train": {"a": 2, "b": 1}}, size=(6, 5))
    _write(tmp_path, "train/b/big.png", _image(3, 3, size=(9, 7)))
    with pytest.raises(user_sources.ImageFolderError) as err:
        sources.load_source(f"folder:{tmp_path}")
    msg = str(err.value)
    assert "train/a/000.png is 6x5 but train/b/big.png is 9x7" in msg and "image_size" in msg
    src = sources.load_source(f"folder:{tmp_path}", image_size=(8, 4))
    assert src.image_shape == (8, 4, 3)
    big = src.train.images([3])[0]   # a/000, a/001, b/000, b/big
    resized = np.asarray(Image.fromarray(_image(3, 3, size=(9, 7))).resize((4, 8), Image.BILINEAR))
    np.testing.assert_array_equal(big, resized)
    assert sources.load_source(f"folder:{tmp_path}", image_size=7).image_shape == (7, 7, 3)


def _sixteen_bit(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((6, 5), 40000, np.uint16)).save(path)


@pytest.mark.parametrize("case, expected", [
    ("no_dir", "is not a directory"),
    ("no_train", "has no train/ folder"),
    ("empty_class", "class folder train/b/ is empty"),
    ("loose_image", "image train/x.png lies directly in train/"),
    ("no_classes", "train/ has no class folders"),
    ("corrupt", "cannot read image train/a/001.png"),
    ("truncated", "cannot read image train/a/000.png"),
    ("unseen_val_class", "val/ has class 'zebra' that train/ lacks"),
    ("unseen_test_class", "test/ has class 'b2' that train/ lacks"),
    ("sixteen_bit", "image train/a/deep.png has PIL mode"),
    ("empty_test_class", "class folder test/a/ is empty"),
])
def test_bad_folders_give_one_line(tmp_path, case, expected):
    root = tmp_path / "data"
    if case != "no_dir":
        os.makedirs(root / ("train" if case != "no_train" else "training"))
    if case not in ("no_dir", "no_train", "no_classes"):
        _folder(root, {"train": {"a": 2, "b": 1}})
    if case == "empty_class":
        for f in os.listdir(root / "train/b"):
            os.remove(root / "train/b" / f)
        (root / "train/b/notes.txt").write_text("not an image")
    elif case == "loose_image":
        _write(root, "train/x.png")
    elif case == "corrupt":
        (root / "train/a/001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif case == "truncated":
        data = (root / "train/a/000.png").read_bytes()
        (root / "train/a/000.png").write_bytes(data[: len(data) // 2])
    elif case == "unseen_val_class":
        _folder(root, {"val": {"a": 1, "zebra": 1}})
    elif case == "unseen_test_class":
        _folder(root, {"test": {"b2": 1}})
    elif case == "sixteen_bit":
        _sixteen_bit(str(root / "train/a/deep.png"))
    elif case == "empty_test_class":
        os.makedirs(root / "test/a")
    with pytest.raises(user_sources.ImageFolderError) as err:
        sources.load_source(f"folder:{root}")
    msg = str(err.value)
    assert expected in msg and "\n" not in msg, msg
    assert isinstance(err.value, ValueError)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_dataset_grayscale_and_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    y = np.array(["cat", "dog", "cat", "ant", "dog", "ant", "ant"])
    xv, yv = x[:2], np.array(["dog", "ant"])
    src = sources.load_source(_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_val=xv,
                                   y_val=yv))
    assert src.class_names == ("ant", "cat", "dog") and src.image_shape == (5, 4, 1)
    np.testing.assert_array_equal(src.train.labels, [1, 2, 1, 0, 2, 0, 0])
    np.testing.assert_array_equal(src.train.images(np.arange(7))[..., 0], x)
    np.testing.assert_array_equal(src.val.labels, [2, 0])
    assert src.test is None and src.val_size == 2 and not src.truth_known
    # integer labels with names; bytes names are accepted too
    src = sources.load_source(_npz(tmp_path / "e.npz", x_train=x[..., None], y_train=np.arange(7) % 3,
                                   class_names=np.array([b"z", b"y", b"x"]),
                                   x_test=x[:3], y_test=np.array([2, 2, 0], np.uint8)))
    assert src.class_names == ("z", "y", "x") and src.num_classes == 3
    np.testing.assert_array_equal(src.test.labels, [2, 2, 0])
    resized = sources.load_source(f"npz:{tmp_path / 'e.npz'}", image_size=(3, 3))
    assert resized.image_shape == (3, 3, 1) and resized.test.images([0]).shape == (1, 3, 3, 1)


_X = np.zeros((4, 3, 3, 3), np.uint8)
_Y = np.array([0, 1, 2, 1])


@pytest.mark.parametrize("arrays, expected", [
    (dict(x_train=_X.astype(np.float32), y_train=_Y), "x_train has dtype float32; images must be uint8"),
    (dict(x_train=_X[..., :2], y_train=_Y), "x_train has shape (4, 3, 3, 2); allowed"),
    (dict(x_train=_X, y_train=_Y[:3]), "y_train has shape (3,); it must be (4,)"),
    (dict(x_train=_X, y_train=_Y.astype(float)), "y_train has dtype float64; labels must be"),
    (dict(x_train=_X, y_train=_Y - 1), "y_train has label -1 at index 0, out of range"),
    (dict(x_train=_X, y_train=_Y, class_names=np.array(["a", "b"])),
     "y_train has label 2 at index 2, out of range: allowed 0..1 (class_names has 2 names)"),
    (dict(x_train=_X, y_train=_Y, x_val=_X, y_val=np.array([0, 1, 5, 0])),
     "y_val has label 5 at index 2, out of range"),
    (dict(x_train=_X, y_train=np.array(["a", "b", "a", "b"]), x_test=_X[:1], y_test=np.array(["c"])),
     "y_test has unknown label name 'c' (index 0); known names (y_train): a, b"),
    (dict(x_train=_X, y_train=np.array(["a", "b", "a", "b"]), class_names=np.array(["a", "b", "c"])),
     "class 2 ('c') has no train examples"),
    (dict(x_train=_X, y_train=np.array([0, 2, 0, 2])), "class 1 ('1') has no train examples"),
    (dict(x_train=_X, y_train=_Y, x_val=_X), "has x_val without y_val"),
    (dict(y_train=_Y), "has y_train without x_train"),
    (dict(x_val=_X, y_val=_Y), "has no x_train / y_train arrays"),
    (dict(x_train=_X, y_train=_Y, x_valid=_X), "unexpected arrays ['x_valid']"),
    (dict(x_train=_X, y_train=_Y, x_val=_X[..., :1], y_val=_Y), "x_val has 1 channel(s) but x_train 3"),
    (dict(x_train=_X, y_train=_Y, x_test=np.zeros((4, 2, 3, 3), np.uint8), y_test=_Y),
     "x_test images are 2x3 but x_train images are 3x3"),
    (dict(x_train=_X, y_train=_Y, x_val=_X, y_val=np.array(["a"] * 4)),
     "y_val holds strings but y_train integers"),
    (dict(x_train=_X[:0], y_train=_Y[:0]), "x_train has shape (0, 3, 3, 3): no images"),
    (dict(x_train=_X, y_train=_Y, class_names=np.array(["a", "a", "b"])),
     "class_names must be distinct"),
])
def test_bad_npz_gives_one_line(tmp_path, arrays, expected):
    with pytest.raises(user_sources.NpzDatasetError if "train examples" not in expected
                       else user_sources.UserDataError) as err:
        sources.load_source(_npz(tmp_path / "d.npz", **arrays))
    msg = str(err.value)
    assert expected in msg and "\n" not in msg, msg


def test_bad_npz_files(tmp_path):
    cases = {"missing.npz": None, "garbage.npz": b"not a zip at all",
             "single.npy": "npy", "objects.npz": "objects"}
    expected = {"missing.npz": "is not a file", "garbage.npz": "is not a readable .npz file",
                "single.npy": "holds a single array", "objects.npz": "array y_train of"}
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content == "npy":
            np.save(path, _X)
        elif content == "objects":
            np.savez(path, x_train=_X, y_train=np.array([0, "a", None, 1], dtype=object))
        with pytest.raises(user_sources.NpzDatasetError) as err:
            sources.load_source(f"npz:{path}")
        assert expected[name] in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(ValueError, match="needs a path after 'npz:'"):
        sources.load_source("npz:")
    with pytest.raises(ValueError, match="only for folder:/npz: data"):
        sources.load_source("mnist5k", image_size=32)
    with pytest.raises(ValueError, match="image_size=0"):
        sources.load_source(f"npz:{tmp_path}/x.npz", image_size=0)


def _given_split_source(tmp_path, test=True):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), [30, 30, 20, 20])
    x = rng.integers(0, 256, (y.size, 4, 4, 3), dtype=np.uint8)
    arrays = dict(x_train=x, y_train=y, x_val=x[:12], y_val=np.arange(12) % 4)
    if test:
        arrays.update(x_test=x[:8], y_test=np.arange(8) % 4)
    return sources.load_source(_npz(tmp_path / "d.npz", **arrays))


def test_given_val_replaces_the_carved_split(tmp_path):
    src = _given_split_source(tmp_path)
    split = distortion.make_split(src, DistortionConfig(seed=2))
    # IR 1, NR 0: every train example, as given, in a seeded order; val = the given val
    assert split.val_from == "val" and split.num_train == 100
    np.testing.assert_array_equal(np.sort(split.train_index), np.arange(100))
    np.testing.assert_array_equal(split.train_labels, src.train.labels[split.train_index])
    assert not split.noisy.any()
    np.testing.assert_array_equal(split.val_index, np.arange(12))
    np.testing.assert_array_equal(split.val_labels, np.arange(12) % 4)
    assert distortion.val_source(src, split) is src.val
    # synthetic distortion on top still applies
    noisy = distortion.make_split(src, DistortionConfig(imbalance_ratio=3, noise_ratio=0.2))
    assert noisy.num_train == 60 + 20 and noisy.noisy.sum() > 0
    with pytest.raises(ValueError, match=r"^val_size=5: not allowed when the dataset gives"):
        distortion.make_split(src, DistortionConfig(val_size=5))
    with pytest.raises(ValueError, match=r"^ablation=oversplit: not allowed"):
        distortion.make_split(src, DistortionConfig(ablation="oversplit"))
    overfit = distortion.make_split(src, DistortionConfig(ablation="overfit"))
    assert overfit.val_from == "test" and overfit.val_index.size == 8


def test_missing_test_falls_back_to_val(tmp_path):
    src = _given_split_source(tmp_path, test=False)
    with pytest.raises(ValueError, match=r"^ablation=overfit: validates on the test split"):
        distortion.make_split(src, DistortionConfig(ablation="overfit"))
    split = distortion.make_split(src, DistortionConfig())
    filled = distortion.with_test_fallback(src, split)
    assert filled.test_from == "val" and "test_set" in filled.notes()
    np.testing.assert_array_equal(filled.test.images(np.arange(12)), src.val.images(np.arange(12)))
    np.testing.assert_array_equal(filled.test.clean_labels, src.val.labels)
    # without a given val the carved validation examples stand in
    carved_src = sources.load_source(_npz(tmp_path / "c.npz", x_train=src.train.images(np.arange(100)),
                                          y_train=src.train.labels))
    carved = distortion.make_split(carved_src, DistortionConfig())
    assert carved.val_from == "train" and carved.val_index.size == 10
    filled = distortion.with_test_fallback(carved_src, carved)
    np.testing.assert_array_equal(filled.test.images([3]), carved_src.train.images(carved.val_index[[3]]))
    full = _given_split_source(tmp_path)
    assert distortion.with_test_fallback(full, split) is full


def test_saved_split_refuses_a_changed_dataset(tmp_path):
    src = _given_split_source(tmp_path)
    config = DistortionConfig()
    split = distortion.make_split(src, config)
    workdir_lib.save_split(str(tmp_path / "wd"), split, config, src)
    again = workdir_lib.load_split(str(tmp_path / "wd"), config, src)
    np.testing.assert_array_equal(again.train_index, split.train_index)
    assert again.val_from == "val"
    changed = sources.load_source(_npz(tmp_path / "d.npz", x_train=np.zeros((100, 4, 4, 3), np.uint8),
                                       y_train=src.train.labels, x_val=src.val.images(np.arange(12)),
                                       y_val=src.val.labels))
    with pytest.raises(ValueError, match="source.fingerprint: saved .*the dataset's content "
                                         "changed since the split was saved"):
        workdir_lib.load_split(str(tmp_path / "wd"), config, changed)
