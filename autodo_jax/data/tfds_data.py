"""TFDS datasets read from prepared array_record files (``tfds.data_source``; no TensorFlow).

``dataset_info(name, data_dir)`` reads a prepared dataset's metadata (classes and their
names, image shape, the ClassLabel features a ``label_key`` may name);
``load_split(name, splits, ...)`` gives its split(s) as one random-access split: in memory
(``sources.ArraySplit``) or decoded on demand (:class:`TfdsSplit`). Nothing is ever
downloaded: data that is not prepared raises :class:`DatasetNotPreparedError` saying how to
prepare it. ``sources.load_source`` is the entry point.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from autodo_jax.data import imagenet
from autodo_jax.data.types import ArraySplit, as_index


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset has no prepared array_record files under the data directory."""


@dataclasses.dataclass(frozen=True)
class TfdsInfo:
    """Metadata of a prepared TFDS image-classification dataset.

    Attributes:
        num_classes: classes of the ``label`` feature.
        image_shape: (H, W, C) of the ``image`` feature (None for variable sizes).
        class_names: names of classes 0..C-1 (the ClassLabel's names).
        label_keys: the ClassLabel features with the same classes as ``label``, which a
            ``label_key`` may name as the train labels ("label" first).
    """
    num_classes: int
    image_shape: tuple
    class_names: tuple[str, ...]
    label_keys: tuple[str, ...]


def dataset_info(name: str, data_dir: str | None) -> TfdsInfo:
    """The metadata of TFDS dataset ``name`` (a registered builder, or one prepared under
    ``data_dir`` by name).

    Raises:
        ValueError: unknown name, or not an image-classification dataset (it needs an
            ``image`` and a ClassLabel ``label`` feature).
    """
    import tensorflow_datasets as tfds  # lazy: slow import, unneeded for mnist5k
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"unknown dataset name {name!r}: allowed are mnist5k, folder:PATH, npz:PATH, a "
            "known name (mnist, svhn_cropped, cifar10, ...) or any TFDS image-classification "
            "dataset prepared under --data_dir") from None
    features = builder.info.features
    label = features["label"] if "label" in features else None
    if "image" not in features or not hasattr(label, "num_classes"):
        raise ValueError(f"dataset {name!r} is not an image-classification dataset: it needs "
                         f"an 'image' and a ClassLabel 'label' feature, has {list(features)}")
    keys = ("label",) + tuple(sorted(
        k for k, f in features.items() if k != "label" and hasattr(f, "num_classes")
        and f.num_classes == label.num_classes))
    return TfdsInfo(int(label.num_classes), tuple(features["image"].shape),
                    tuple(str(n) for n in label.names), keys)


class _RecordReader:
    """Random access over one or more TFDS data sources laid end to end."""

    def __init__(self, sources: Sequence[Any]):
        self._sources = list(sources)
        self._offsets = np.cumsum([0] + [len(s) for s in self._sources])
        self._batched = [True] * len(self._sources)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def read(self, index: np.ndarray) -> list[dict[str, Any]]:
        out: list[Any] = [None] * index.size
        which = np.searchsorted(self._offsets, index, side="right") - 1
        for s in np.unique(which):
            pos = np.flatnonzero(which == s)
            keys = [int(k) for k in index[pos] - self._offsets[s]]
            records = None
            if self._batched[s]:
                try:
                    records = self._sources[s].__getitems__(keys)
                except (TypeError, AttributeError):  # tfds 4.9.10's default mock lacks it
                    self._batched[s] = False
            if records is None:
                records = [self._sources[s][k] for k in keys]
            for p, r in zip(pos, records):
                out[p] = r
        return out


class TfdsSplit:
    """A lazily read TFDS split (records decoded on demand).

    Args:
        reader: the records.
        labels, clean_labels: int64 (n,).
        image_shape: (H, W, C) of the images it returns.
        train_size, eval_resize: for variable-size images (ImageNet) the random-resized-crop
            size of ``train_images`` and the shorter-side resize before the centre crop of
            ``images``; None for fixed-size data.
    """

    def __init__(self, reader: _RecordReader, labels: np.ndarray, clean_labels: np.ndarray,
                 image_shape: tuple[int, int, int], train_size: int | None = None,
                 eval_resize: int | None = None):
        self._reader = reader
        self.labels, self.clean_labels = labels, clean_labels
        self.image_shape = image_shape
        self._train_size, self._eval_resize = train_size, eval_resize

    def __len__(self) -> int:
        return len(self._reader)

    def _raw(self, idx: Any) -> list[np.ndarray]:
        return [np.asarray(r["image"]) for r in self._reader.read(as_index(idx, len(self)))]

    def images(self, idx: Any) -> np.ndarray:
        """uint8 (n, H, W, C); variable-size images are resized and centre-cropped."""
        raw = self._raw(idx)
        if self._train_size is None:
            return np.stack(raw).astype(np.uint8, copy=False).reshape((-1, *self.image_shape))
        return imagenet.resize_center_crop(raw, self._eval_resize, self._train_size)

    def train_images(self, idx: Any, rng: np.random.Generator) -> np.ndarray:
        """uint8 (n, H, W, C); variable-size images get a random-resized crop from ``rng``."""
        if self._train_size is None:
            return self.images(idx)
        return imagenet.random_resized_crop(self._raw(idx), self._train_size, rng)


def prepare_hint(name: str, data_dir: str | None) -> str:
    where = data_dir or "~/tensorflow_datasets"
    manual = ("; ImageNet and CIFAR-N need their manual files in <data_dir>/downloads/manual "
              "first" if name in ("imagenet2012", "cifar10_n", "cifar100_n") else "")
    return (f"Dataset {name!r} is not prepared under data_dir={where!r}. Prepare it once on a "
            f"machine with TensorFlow and network access: `tfds build {name} "
            f"--data_dir={where} --file_format=array_record`{manual}; then pass "
            f"--data_dir={where}. Training never downloads data.")


def _tfds_sources(name: str, splits: Sequence[str], data_dir: str | None) -> list[Any]:
    import tensorflow_datasets as tfds  # lazy: slow import, unneeded for mnist5k
    out = []
    for split in splits:
        try:
            out.append(tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                        try_gcs=False))
        except Exception as e:  # tfds raises assorted errors for missing/partial data
            raise DatasetNotPreparedError(prepare_hint(name, data_dir) +
                                          f" (split {split!r}: {type(e).__name__}: {e})") from e
    return out


def _read_labels(sources: Sequence[Any], splits: Sequence[str], key: str, name: str,
                 data_dir: str | None) -> np.ndarray:
    """Reads one int label field of every record, skipping image decoding where possible."""
    import tensorflow_datasets as tfds  # lazy: slow import, unneeded for mnist5k
    labels = []
    for src, split in zip(sources, splits):
        try:
            fast = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                    decoders={"image": tfds.decode.SkipDecoding()})
            values = [fast[i][key] for i in range(len(src))]
        except Exception:  # noqa: BLE001  mock data cannot skip decoding
            values = [src[i][key] for i in range(len(src))]
        labels.append(np.asarray(values, dtype=np.int64).reshape(-1))
    return np.concatenate(labels) if labels else np.zeros((0,), np.int64)


def load_split(name: str, splits: Sequence[str], data_dir: str | None, label_key: str,
               image_shape: tuple, in_memory: bool, image_size: int) -> Any:
    """The TFDS splits ``splits`` of ``name`` laid end to end as one random-access split.

    Args:
        label_key: the feature given as ``labels``; ``clean_labels`` are ``label``.
        image_shape: the ``image`` feature's shape (None entries: variable size).
        in_memory: decode every image once into a ``sources.ArraySplit``; else a
            :class:`TfdsSplit` decoding on demand.
        image_size: the square size of variable-size images (random-resized crops for
            ``train_images``, resize and centre crop for ``images``).

    Raises:
        DatasetNotPreparedError: a split is not prepared under ``data_dir``.
    """
    sources = _tfds_sources(name, splits, data_dir)
    reader = _RecordReader(sources)
    if in_memory:
        records = reader.read(np.arange(len(reader)))
        images = np.stack([np.asarray(r["image"]) for r in records]).astype(np.uint8)
        labels = np.array([r[label_key] for r in records], dtype=np.int64)
        clean = np.array([r["label"] for r in records], dtype=np.int64)
        return ArraySplit(images.reshape((-1, *image_shape)), labels, clean)
    labels = _read_labels(sources, splits, label_key, name, data_dir)
    clean = (labels if label_key == "label"
             else _read_labels(sources, splits, "label", name, data_dir))
    if None in image_shape:
        channels = image_shape[2] or 3
        return TfdsSplit(reader, labels, clean, (image_size, image_size, channels),
                         train_size=image_size, eval_resize=round(image_size * 256 / 224))
    return TfdsSplit(reader, labels, clean, tuple(image_shape))
