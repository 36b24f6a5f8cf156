"""Your own data: ``load_source("folder:PATH")`` and ``load_source("npz:PATH")``.

A folder dataset::

    PATH/train/<class name>/*.png|*.jpg|*.jpeg     required: the labels you were given
    PATH/val/<class name>/...                      optional: a small set you cleaned by hand
    PATH/test/<class name>/...                     optional: a clean test set

Class names are the train subfolder names, sorted (class c = the c-th name); a val/test
class that train lacks is an error. Only files directly inside a class folder with the
extensions .png/.jpg/.jpeg (any case) are read; hidden files and other files are skipped.
8-bit grayscale images (PIL modes 1, L, LA) stay one channel when every image of the
dataset is grayscale; otherwise every image is converted to RGB (alpha dropped).

An npz dataset (``np.savez``) holds ``x_train``, ``y_train`` and optionally ``x_val,
y_val``, ``x_test, y_test`` and ``class_names``: images uint8 (N, H, W, C) with C = 1 or
3, or (N, H, W) for grayscale; labels (N,) integer class indices, or strings (class
names). Without ``class_names`` the classes are 0..max(y_train) for integer labels and
the sorted distinct train labels for strings. Every class needs at least one train example.

The whole dataset is decoded into memory. Images of one size keep it; ``image_size=(H,
W)`` resizes every image to it (PIL bilinear, antialiased when shrinking, aspect ratio not
kept), which also admits folders of mixed sizes. The train labels are the user's given
(maybe noisy) labels: their truth is unknown (``Source.truth_known`` is False), a given val
split is taken as clean and replaces the carved-out one (``distortion.make_split``). The
preprocessing family is computed from the train images (``transforms.family_from_images``).
``Source.fingerprint`` is a hash of the content (file paths and bytes, or array bytes).

Every problem raises a one-line ``ValueError`` naming the file, class or array
(``ImageFolderError`` for folders, ``NpzDatasetError`` for npz files).
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from autodo_jax.data import transforms, types

KINDS = ("folder", "npz")
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "class_names")
_GRAY_MODES = ("1", "L", "LA")
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


class UserDataError(ValueError):
    """User data that cannot be used; the message is one line naming what is wrong."""


class ImageFolderError(UserDataError):
    """A folder dataset that cannot be used."""


class NpzDatasetError(UserDataError):
    """An npz dataset that cannot be used."""


def parse_dataset(name: str) -> tuple[str, str] | None:
    """``("folder", PATH)`` / ``("npz", PATH)`` for user data names, None for other names.

    Raises:
        UserDataError: ``folder:`` or ``npz:`` with an empty path.
    """
    kind, sep, path = name.partition(":")
    if not sep or kind not in KINDS:
        return None
    if not path:
        raise UserDataError(f"{name!r} needs a path after '{kind}:'")
    return kind, os.path.expanduser(path)


def _names(values: Sequence[Any], limit: int = 8) -> str:
    values = [str(v) for v in values]
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w, C) -> uint8 (H, W, C), PIL bilinear."""
    if image.shape[:2] == size:
        return image
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR), dtype=np.uint8)
    return out.reshape(size[0], size[1], image.shape[-1])


# ---------------------------------------------------------------------------------------
# folder:PATH


def _class_folders(root: str, split: str) -> list[tuple[str, list[str]]]:
    """[(class name, [image paths relative to root, sorted])] of ``root/split``, sorted."""
    directory = os.path.join(root, split)
    classes = []
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if name.startswith("."):
            continue
        if os.path.isdir(full):
            files = sorted(f for f in os.listdir(full) if not f.startswith(".")
                           and f.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(full, f)))
            if not files:
                raise ImageFolderError(
                    f"class folder {split}/{name}/ is empty: it has no "
                    f"{'/'.join(IMAGE_EXTENSIONS)} files; remove it or add images")
            classes.append((name, [f"{split}/{name}/{f}" for f in files]))
        elif name.lower().endswith(IMAGE_EXTENSIONS):
            raise ImageFolderError(f"image {split}/{name} lies directly in {split}/; images "
                                   f"belong in class folders {split}/<class name>/")
    if not classes:
        raise ImageFolderError(f"{split}/ has no class folders; expected "
                               f"{split}/<class name>/*.png|*.jpg")
    return classes


def _decode(root: str, rel: str) -> tuple[bytes, np.ndarray, bool]:
    """(file bytes, uint8 (h, w, 1|3) image, is grayscale) of ``root/rel``."""
    try:
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as pil:
            pil.load()
            mode = pil.mode
            if mode not in _GRAY_MODES + _COLOUR_MODES:
                raise ImageFolderError(
                    f"image {rel} has PIL mode {mode!r} (16-bit or float pixels); only 8-bit "
                    "grayscale or colour PNG/JPEG is supported")
            gray = mode in _GRAY_MODES
            image = np.asarray(pil.convert("L" if gray else "RGB"), dtype=np.uint8)
    except ImageFolderError:
        raise
    except Exception as err:  # noqa: BLE001  PIL raises assorted errors on corrupt files
        why = ("not an image file that PIL can identify (corrupt, or not PNG/JPEG)"
               if isinstance(err, Image.UnidentifiedImageError) else
               f"{type(err).__name__}: {' '.join(str(err).split())}")
        raise ImageFolderError(f"cannot read image {rel}: {why}") from None
    return data, image.reshape(image.shape[0], image.shape[1], -1), gray


def _read_folder(path: str, size: tuple[int, int] | None
                 ) -> tuple[dict[str, tuple[list[np.ndarray], np.ndarray, list[str]]], list[str], str]:
    """{split: (images, labels, relative paths)}, class names, fingerprint of a folder;
    images are resized to ``size`` as they are decoded (when given)."""
    if not os.path.isdir(path):
        raise ImageFolderError(f"{path} is not a directory")
    if not os.path.isdir(os.path.join(path, "train")):
        raise ImageFolderError(
            f"{path} has no train/ folder; expected train/<class name>/*.png|*.jpg and "
            "optional val/ and test/ folders of the same layout")
    listing = {s: _class_folders(path, s) for s in SPLITS if os.path.isdir(os.path.join(path, s))}
    class_names = [name for name, _ in listing["train"]]
    lookup = {name: c for c, name in enumerate(class_names)}
    digest = hashlib.sha256(b"folder")
    out = {}
    for split, classes in listing.items():
        unseen = [name for name, _ in classes if name not in lookup]
        if unseen:
            raise ImageFolderError(
                f"{split}/ has class {unseen[0]!r} that train/ lacks (classes come from the "
                f"train/ folders: {_names(class_names)})")
        images, labels, files = [], [], []
        for name, rels in classes:
            for rel in rels:
                data, image, gray = _decode(path, rel)
                image = image if size is None else _resize(image, size)
                digest.update(f"{rel}\0{len(data)}\0".encode())
                digest.update(data)
                images.append((image, gray))
                labels.append(lookup[name])
                files.append(rel)
        out[split] = (images, np.asarray(labels, np.int64), files)
    any_colour = any(not gray for images, _, _ in out.values() for _, gray in images)
    for split, (images, labels, files) in out.items():
        out[split] = ([np.repeat(im, 3, -1) if any_colour and gray else im
                       for im, gray in images], labels, files)
    return out, class_names, digest.hexdigest()[:16]


def _stack_folder(splits: dict[str, tuple[list[np.ndarray], np.ndarray, list[str]]]
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stacks each split into uint8 (n, H, W, C); images of two sizes are an error."""
    first = None
    for images, _, files in splits.values():
        for image, rel in zip(images, files):
            if first is None:
                first = (image.shape[:2], rel)
            elif image.shape[:2] != first[0]:
                (h0, w0), (h1, w1) = first[0], image.shape[:2]
                raise ImageFolderError(
                    f"images differ in size: {first[1]} is {h0}x{w0} but {rel} is "
                    f"{h1}x{w1} (height x width); set image_size (--image_size=HxW) to "
                    "resize every image")
    return {split: (np.stack(images), labels) for split, (images, labels, _) in splits.items()}


# ---------------------------------------------------------------------------------------
# npz:PATH


def _read_npz(path: str) -> tuple[dict[str, np.ndarray], str]:
    """The arrays of an npz file and their fingerprint."""
    if not os.path.isfile(path):
        raise NpzDatasetError(f"{path} is not a file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise NpzDatasetError(f"{path} is not a readable .npz file "
                              f"({type(err).__name__}: {' '.join(str(err).split())})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise NpzDatasetError(f"{path} holds a single array; expected an .npz archive "
                              f"(np.savez) with arrays {', '.join(NPZ_KEYS)}")
    arrays = {}
    with loaded:
        unknown = sorted(set(loaded.files) - set(NPZ_KEYS))
        if unknown:
            raise NpzDatasetError(f"{path} has unexpected arrays {unknown}; allowed: "
                                  f"{', '.join(NPZ_KEYS)}")
        for key in loaded.files:
            try:
                arrays[key] = np.asarray(loaded[key])
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
                raise NpzDatasetError(
                    f"array {key} of {path} cannot be read ({type(err).__name__}: "
                    f"{' '.join(str(err).split())}); save plain uint8 / integer / string "
                    "arrays, not Python objects") from None
    digest = hashlib.sha256(b"npz")
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}\0{a.dtype.str}\0{a.shape}\0".encode())
        digest.update(a.tobytes())
    return arrays, digest.hexdigest()[:16]


def _npz_images(arrays: dict[str, np.ndarray], split: str) -> np.ndarray:
    key = f"x_{split}"
    x = arrays[key]
    if x.dtype != np.uint8:
        raise NpzDatasetError(f"{key} has dtype {x.dtype}; images must be uint8 (0..255), "
                              "e.g. np.clip(np.round(x * 255), 0, 255).astype(np.uint8)")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise NpzDatasetError(f"{key} has shape {x.shape}; allowed: (N, H, W) grayscale or "
                              "(N, H, W, C) with C = 1 or 3")
    if not x.shape[0] or not x.shape[1] or not x.shape[2]:
        raise NpzDatasetError(f"{key} has shape {x.shape}: no images")
    return x


def _npz_label_array(arrays: dict[str, np.ndarray], split: str, n: int) -> np.ndarray:
    key = f"y_{split}"
    y = arrays[key]
    if y.ndim != 1 or y.shape[0] != n:
        raise NpzDatasetError(f"{key} has shape {y.shape}; it must be ({n},), one label for "
                              f"each image of x_{split}")
    if y.dtype.kind == "S":
        y = np.char.decode(y, "utf-8")
    if y.dtype.kind not in "iuU":
        raise NpzDatasetError(f"{key} has dtype {y.dtype}; labels must be integers (class "
                              "indices) or strings (class names)")
    return y


def _npz_classes(arrays: dict[str, np.ndarray]) -> list[str] | None:
    """The class names (None: integer labels without names) after checking them."""
    if "class_names" not in arrays:
        return None
    names = arrays["class_names"]
    if names.dtype.kind == "S":
        names = np.char.decode(names, "utf-8")
    if names.ndim != 1 or names.dtype.kind != "U" or not names.size:
        raise NpzDatasetError(f"class_names has dtype {names.dtype} and shape {names.shape}; "
                              "it must be a non-empty 1-D array of strings")
    names = [str(v) for v in names]
    repeated = sorted({v for v in names if names.count(v) > 1})
    if repeated or "" in names:
        raise NpzDatasetError(f"class_names must be distinct non-empty strings; "
                              f"{repeated[0] if repeated else ''!r} is not")
    return names


def _npz_label_indices(labels: dict[str, np.ndarray], names: list[str] | None
                       ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Integer labels 0..C-1 of every split and the class names (str(c) if none given)."""
    kinds = {split: "U" if y.dtype.kind == "U" else "i" for split, y in labels.items()}
    mixed = [s for s in labels if kinds[s] != kinds["train"]]
    if mixed:
        raise NpzDatasetError(f"y_{mixed[0]} holds {'strings' if kinds[mixed[0]] == 'U' else 'integers'} "
                              f"but y_train {'strings' if kinds['train'] == 'U' else 'integers'}; "
                              "use one kind of label")
    out = {}
    if kinds["train"] == "U":
        source = "class_names" if names is not None else "y_train"
        names = names if names is not None else sorted(set(labels["train"].tolist()))
        lookup = {n: c for c, n in enumerate(names)}
        for split, y in labels.items():
            missing = [i for i, v in enumerate(y.tolist()) if v not in lookup]
            if missing:
                i = missing[0]
                raise NpzDatasetError(f"y_{split} has unknown label name {str(y[i])!r} (index {i}); "
                                      f"known names ({source}): {_names(names)}")
            out[split] = np.asarray([lookup[v] for v in y.tolist()], np.int64)
        return out, names
    count = len(names) if names is not None else int(labels["train"].max()) + 1
    for split, y in labels.items():
        bad = np.flatnonzero((y < 0) | (y >= count))
        if bad.size:
            i = int(bad[0])
            where = (f"class_names has {count} names" if names is not None
                     else f"y_train's largest label is {count - 1}")
            raise NpzDatasetError(f"y_{split} has label {int(y[i])} at index {i}, out of range: "
                                  f"allowed 0..{count - 1} ({where})")
        out[split] = y.astype(np.int64)
    return out, names if names is not None else [str(c) for c in range(count)]


def _load_npz(path: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], str]:
    arrays, fingerprint = _read_npz(path)
    for split in SPLITS:
        has, lacks = (f"x_{split}", f"y_{split}")[::1 if f"x_{split}" in arrays else -1]
        if has in arrays and lacks not in arrays:
            raise NpzDatasetError(f"{path} has {has} without {lacks}")
    if "x_train" not in arrays:
        raise NpzDatasetError(f"{path} has no x_train / y_train arrays (they are required)")
    present = [s for s in SPLITS if f"x_{s}" in arrays]
    images = {s: _npz_images(arrays, s) for s in present}
    labels = {s: _npz_label_array(arrays, s, images[s].shape[0]) for s in present}
    indices, names = _npz_label_indices(labels, _npz_classes(arrays))
    for split in present[1:]:
        if images[split].shape[-1] != images["train"].shape[-1]:
            raise NpzDatasetError(f"x_{split} has {images[split].shape[-1]} channel(s) but "
                                  f"x_train {images['train'].shape[-1]}")
    return {s: (images[s], indices[s]) for s in present}, names, fingerprint


def _resize_arrays(splits: dict[str, tuple[np.ndarray, np.ndarray]],
                   size: tuple[int, int] | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if size is None:
        for split, (x, _) in splits.items():
            if x.shape[1:3] != splits["train"][0].shape[1:3]:
                (h0, w0), (h1, w1) = splits["train"][0].shape[1:3], x.shape[1:3]
                raise NpzDatasetError(
                    f"x_{split} images are {h1}x{w1} but x_train images are {h0}x{w0} (height "
                    "x width); set image_size (--image_size=HxW) to resize every image")
        return splits
    return {s: (np.stack([_resize(im, size) for im in x]), y) for s, (x, y) in splits.items()}


# ---------------------------------------------------------------------------------------
# Both


def load_user_source(name: str, *, image_size: tuple[int, int] | None = None) -> types.Source:
    """Loads ``folder:PATH`` or ``npz:PATH`` (see the module doc) into memory.

    Args:
        name: ``"folder:PATH"`` or ``"npz:PATH"``.
        image_size: (H, W) every image is resized to, or None to keep the data's size.

    Returns:
        A ``types.Source``: ``train`` (given labels, ``truth_known=False``), ``val`` and
        ``test`` ``ArraySplit``s or None where absent, ``class_names``, ``fingerprint``,
        a ``transforms.Family`` from the train images, ``val_size`` = the given val's size
        (else 10% of train, carved out by ``distortion.make_split``).

    Raises:
        UserDataError: one line naming the file, class or array at fault.
    """
    parsed = parse_dataset(name)
    if parsed is None:
        raise UserDataError(f"{name!r} is not a folder:PATH or npz:PATH dataset")
    kind, path = parsed
    if kind == "folder":
        raw, class_names, fingerprint = _read_folder(path, image_size)
        splits = _stack_folder(raw)
    else:
        raw_arrays, class_names, fingerprint = _load_npz(path)
        splits = _resize_arrays(raw_arrays, image_size)
    train_x, train_y = splits["train"]
    empty = [c for c in range(len(class_names)) if not np.any(train_y == c)]
    if empty:
        raise UserDataError(f"class {empty[0]} ({class_names[empty[0]]!r}) has no train "
                              "examples (an empty class); every class needs at least one")
    made = {s: types.ArraySplit(*splits[s]) if s in splits else None for s in SPLITS}
    val = made["val"]
    return types.Source(
        name=name, num_classes=len(class_names), image_shape=made["train"].image_shape,
        family=transforms.family_from_images(train_x, name=f"user data ({name})"),
        val_size=len(val) if val is not None else types.GENERIC_VAL_FRACTION,
        label_key="label", train=made["train"], test=made["test"], val=val,
        truth_known=False, class_names=tuple(class_names), fingerprint=fingerprint)
