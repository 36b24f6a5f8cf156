"""The data types every room of ``autodo_jax.data`` shares, with no dependency on them.

Known datasets (:class:`DatasetInfo`, ``DATASETS``), the random-access splits
(:class:`ArraySplit`, :class:`SubsetSplit`, :class:`ConcatSplit`) and the :class:`Source`
that ``sources.load_source`` and ``user_sources.load_user_source`` return. Kept apart so
that the readers (``sources``, ``user_sources``, ``tfds_data``) and the host policies
(``transforms``) import these without importing each other.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


def as_index(idx: Any, n: int) -> np.ndarray:
    """``idx`` as an int64 (k,) index into a split of ``n`` examples (IndexError if out of
    range)."""
    index = np.asarray(idx, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= n):
        raise IndexError(f"indices must lie in [0, {n}), got [{index.min()}, {index.max()}]")
    return index


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Facts of a known dataset (the original's settings where it has them).

    Attributes:
        family: preprocessing family, a key of ``policies.FAMILIES``.
        val_size: size of the clean validation split (int) or its fraction of train (float).
        test_split: TFDS split used as the test set.
        label_keys: allowed ``label_key`` values (first = default); for CIFAR-N every key but
            ``"label"`` is a real noisy annotation and ``"label"`` is the clean one.
    """
    family: str
    val_size: int | float
    test_split: str = "test"
    label_keys: tuple[str, ...] = ("label",)


#: Known datasets. Any other TFDS image-classification name also loads (family
#: "generic", validation 10% of train).
DATASETS: dict[str, DatasetInfo] = {
    "mnist5k": DatasetInfo("mnist", 500),
    "mnist": DatasetInfo("mnist", 10_000),
    "svhn_cropped": DatasetInfo("svhn", 23_257),
    "cifar10": DatasetInfo("cifar10", 10_000),
    "cifar100": DatasetInfo("cifar100", 10_000),
    "cifar10_n": DatasetInfo("cifar10", 10_000, label_keys=(
        "aggre_label", "worse_label", "random_label1", "random_label2", "random_label3",
        "label")),
    "cifar100_n": DatasetInfo("cifar100", 10_000, label_keys=("noise_label", "label")),
    "imagenet2012": DatasetInfo("imagenet", 0.2, test_split="validation"),
}
SVHN_EXTRA_VAL_SIZE = 104_388   # the original's SVHN_extra validation size
GENERIC_VAL_FRACTION = 0.1
IMAGENET_TRAIN_SIZE = 224
IMAGENET_RESIZE = 256


class ArraySplit:
    """An in-memory split.

    Args:
        images: uint8 (n, H, W, C).
        labels: int (n,), the given labels.
        clean_labels: int (n,) true labels, or None when ``labels`` are the true labels.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray,
                 clean_labels: np.ndarray | None = None):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError(f"images must be uint8 (n, H, W, C), got {images.dtype} {images.shape}")
        self._images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.clean_labels = (self.labels if clean_labels is None
                             else np.asarray(clean_labels, dtype=np.int64))
        if not (self.labels.shape == self.clean_labels.shape == (images.shape[0],)):
            raise ValueError(f"labels {self.labels.shape} / clean_labels {self.clean_labels.shape} "
                             f"must be ({images.shape[0]},)")
        self.image_shape = tuple(images.shape[1:])

    def __len__(self) -> int:
        return self._images.shape[0]

    def images(self, idx: Any) -> np.ndarray:
        """uint8 (n, H, W, C) images at ``idx`` (any int array-like)."""
        return self._images[as_index(idx, len(self))]

    def train_images(self, idx: Any, rng: np.random.Generator) -> np.ndarray:
        """Same as ``images`` (fixed-size data needs no random decoding); ``rng`` unused."""
        del rng
        return self.images(idx)


class SubsetSplit:
    """A view of some examples of another split: example i is ``base``'s ``index[i]``.

    Args:
        base: a random-access split (``images``, ``train_images``, ``labels``,
            ``clean_labels``, ``image_shape``).
        index: int (n,) examples of ``base``.
    """

    def __init__(self, base: Any, index: Any):
        self._base = base
        self._index = as_index(index, len(base))
        self.labels = np.asarray(base.labels, dtype=np.int64)[self._index]
        self.clean_labels = np.asarray(base.clean_labels, dtype=np.int64)[self._index]
        self.image_shape = tuple(base.image_shape)

    def __len__(self) -> int:
        return self._index.size

    def images(self, idx: Any) -> np.ndarray:
        """uint8 (n, H, W, C): ``base.images(index[idx])``."""
        return self._base.images(self._index[as_index(idx, len(self))])

    def train_images(self, idx: Any, rng: np.random.Generator) -> np.ndarray:
        """uint8 (n, H, W, C): ``base.train_images(index[idx], rng)``."""
        return self._base.train_images(self._index[as_index(idx, len(self))], rng)


class ConcatSplit:
    """Two random-access splits one after the other: example i < len(first) is ``first``'s
    i, the rest are ``second``'s ``i - len(first)`` (e.g. the train split, then a given
    validation split, for methods that train on both).

    Args:
        first, second: random-access splits (``images``, ``train_images``, ``labels``,
            ``clean_labels``, ``image_shape``) with the same image shape.
    """

    def __init__(self, first: Any, second: Any):
        if tuple(first.image_shape) != tuple(second.image_shape):
            raise ValueError(f"the splits' image shapes differ: {tuple(first.image_shape)} "
                             f"and {tuple(second.image_shape)}")
        self._parts = (first, second)
        self._offset = len(first)
        self.labels = np.concatenate([np.asarray(first.labels, np.int64),
                                      np.asarray(second.labels, np.int64)])
        self.clean_labels = np.concatenate([np.asarray(first.clean_labels, np.int64),
                                            np.asarray(second.clean_labels, np.int64)])
        self.image_shape = tuple(first.image_shape)

    def __len__(self) -> int:
        return self._offset + len(self._parts[1])

    def _gather(self, idx: Any, read) -> np.ndarray:
        index = as_index(idx, len(self))
        second = index >= self._offset
        out = None
        for part, mask, shift in ((0, ~second, 0), (1, second, self._offset)):
            if mask.any():
                images = read(self._parts[part], index[mask] - shift)
                if out is None:
                    out = np.empty((index.size,) + images.shape[1:], images.dtype)
                out[mask] = images
        if out is None:
            return np.empty((0,) + self.image_shape, np.uint8)
        return out

    def images(self, idx: Any) -> np.ndarray:
        """uint8 (n, H, W, C) images at ``idx``, from whichever split holds each."""
        return self._gather(idx, lambda part, i: part.images(i))

    def train_images(self, idx: Any, rng: np.random.Generator) -> np.ndarray:
        """As ``images``, through each split's ``train_images`` (random decoding)."""
        return self._gather(idx, lambda part, i: part.train_images(i, rng))


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset: metadata and its train / test (and maybe given val) splits.

    Attributes:
        name: dataset name as loaded (``"svhn_cropped+extra"`` when extra is added).
        num_classes: C.
        image_shape: (H, W, C) of the images the splits return.
        family: preprocessing family: a key of ``transforms.FAMILIES``, or for user data a
            ``transforms.Family`` computed from its train images.
        val_size: default clean validation size (int count or float fraction of train);
            the size of ``val`` when one is given.
        label_key: TFDS feature used as the given train labels.
        train, test: random-access splits (``ArraySplit``, ``TfdsSplit`` or
            ``SubsetSplit``); ``test`` is None for user data without a test set (until
            ``distortion.with_test_fallback`` puts the validation split in its place).
        val: a given clean validation split (user data), or None: then the validation
            split is carved out of ``train`` (``distortion.make_split``).
        truth_known: whether ``train.clean_labels`` are true labels. False for user data:
            its train labels are the labels the user was given, maybe noisy, and
            ``clean_labels`` merely repeats them.
        class_names: names of classes 0..C-1 where known (user data; TFDS: the ClassLabel's
            names), else ().
        fingerprint: content hash of user data ("" for TFDS / embedded data); saved with
            the split so that a changed dataset is refused on resume.
        test_from: ``"test"``, or ``"val"`` when ``test`` is the validation split standing
            in for a missing test set.
    """
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    family: Any
    val_size: int | float
    label_key: str
    train: Any
    test: Any
    val: Any = None
    truth_known: bool = True
    class_names: tuple[str, ...] = ()
    fingerprint: str = ""
    test_from: str = "test"

    def notes(self) -> dict[str, Any]:
        """What a run summary must say about this data beyond the numbers: class names
        (user and TFDS data), and for user data its fingerprint, unknown label truth and
        test set stand-in; {} for the embedded mnist5k."""
        out: dict[str, Any] = {}
        if self.class_names:
            out["class_names"] = list(self.class_names)
        if self.fingerprint:
            out["dataset_fingerprint"] = self.fingerprint
        if not self.truth_known:
            out["label_truth"] = ("unknown: the given train labels have no known clean "
                                  "labels, so the noise metrics that need the truth (weight "
                                  "AUC, soft-label fractions, noisy count) are omitted")
        if self.test_from == "val":
            out["test_set"] = ("val: no test set was given; the test_* figures are measured "
                               "on the clean validation split, which also drives the hyper "
                               "steps and model selection, so they are not held-out estimates")
        return out


def image_size_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``image_size`` (an int S or a pair (H, W) of ints >= 1) as (H, W).

    Raises:
        ValueError: anything else.
    """
    pair = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else image_size
    try:
        h, w = pair
    except (TypeError, ValueError):
        h = w = None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
               for v in (h, w)):
        raise ValueError(f"image_size={image_size!r}: allowed is an int >= 1 or a pair "
                         "(height, width) of them")
    return int(h), int(w)
