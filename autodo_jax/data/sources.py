"""Dataset sources: uint8 NHWC images and integer labels with random access.

``load_source(name, data_dir=...)`` returns a :class:`Source` with a ``train`` and a
``test`` split (and, for user data, maybe a given clean ``val`` split; see
``user_sources`` for ``folder:PATH`` and ``npz:PATH``). Every split is random-access: ``len(split)``, ``split.images(idx)`` (uint8
(n, H, W, C)), ``split.labels`` (int64 (len,), the labels a trainer is given) and
``split.clean_labels`` (int64 (len,), the true labels; equal to ``labels`` except for the
real-noise CIFAR-N sets). ``split.train_images(idx, rng)`` is what a train pipeline
reads: identical to ``images`` for fixed-size datasets, a random-resized crop for
variable-size ones (ImageNet), whose ``images`` is the resize-256 / centre-crop-224 path.

TFDS datasets are read with ``tfds.data_source`` (array_record files, no TensorFlow;
``tfds_data``), never downloaded at training time: a dataset that is not prepared raises
:class:`DatasetNotPreparedError` saying how to prepare it. Any TFDS image-classification
dataset loads by name, a known one (``DATASETS``) with the paper's settings; its class
names come from the ``label`` ClassLabel, and ``label_key`` may name any ClassLabel feature
with the same classes as the given train labels (``label`` stays the truth).
"""
from __future__ import annotations

from autodo_jax.data import mnist5k as _mnist5k
from autodo_jax.data import tfds_data, user_sources
from autodo_jax.data.tfds_data import DatasetNotPreparedError, TfdsSplit  # noqa: F401  (re-exported)
from autodo_jax.data.types import (  # noqa: F401  (re-exported: the types of this room)
    DatasetInfo,
    DATASETS,
    SVHN_EXTRA_VAL_SIZE,
    GENERIC_VAL_FRACTION,
    IMAGENET_TRAIN_SIZE,
    IMAGENET_RESIZE,
    ArraySplit,
    SubsetSplit,
    ConcatSplit,
    Source,
    image_size_pair,
)


def load_source(name: str, *, data_dir: str | None = None, label_key: str | None = None,
                extra: bool = False, in_memory: bool | None = None,
                image_size: int | tuple[int, int] | None = None) -> Source:
    """Loads a dataset's train and test splits.

    Args:
        name: ``"mnist5k"`` (embedded, offline), a key of ``DATASETS``, any TFDS
            image-classification name, or your own data as ``"folder:PATH"`` /
            ``"npz:PATH"`` (see ``autodo_jax.data.user_sources``; loaded into memory,
            ``data_dir`` unused).
        data_dir: TFDS data directory holding prepared array_record files.
        label_key: label feature used as the given train labels (CIFAR-N: one of the noisy
            annotation keys, default ``aggre_label`` / ``noise_label``; another TFDS dataset:
            any ClassLabel feature with the classes of ``label``, default ``label``); the
            clean ``label`` stays known as ``clean_labels``. Test labels are always the clean
            ``label``.
        extra: SVHN only: append the ``extra`` split (531,131 digits) to train.
        in_memory: decode the whole split into a uint8 array once (default: True for
            fixed-size images, False for variable-size ones such as ImageNet; user data is
            always in memory).
        image_size: None, S or (H, W). User data: every image is resized (bilinear) to
            it; None keeps the data's size (which must then be one size). Variable-size
            TFDS data (ImageNet): the square output size S (random-resized crop for train,
            resize to S*256/224 then centre crop for test; None = 224). Not allowed for
            fixed-size TFDS data.

    Returns:
        A :class:`Source`.

    Raises:
        ValueError: unknown name, bad label_key, extra on a non-SVHN set, not an image
            classification dataset, a bad image_size, or bad user data (one line naming
            the file, class or array).
        DatasetNotPreparedError: the TFDS data is not prepared under ``data_dir``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    info = DATASETS.get(name)
    if info and label_key is not None and label_key not in info.label_keys:
        raise ValueError(f"label_key={label_key!r} is not allowed for {name!r}; allowed: "
                         f"{info.label_keys}")
    if extra and name != "svhn_cropped":
        raise ValueError(f"extra=True is only allowed for 'svhn_cropped', not {name!r}")
    size = None if image_size is None else image_size_pair(image_size)
    if user_sources.parse_dataset(name) is not None:
        if in_memory is False:
            raise ValueError(f"in_memory=False: user data ({name!r}) is always in memory")
        return user_sources.load_user_source(name, image_size=size)
    if size is not None and name == "mnist5k":
        raise ValueError(f"image_size={image_size!r}: only for folder:/npz: data and "
                         "variable-size TFDS datasets, not 'mnist5k'")
    if name == "mnist5k":
        arrays = _mnist5k.load_mnist5k_arrays()
        return Source(name, 10, (28, 28, 1), info.family, info.val_size, "label",
                      ArraySplit(*arrays["train"]), ArraySplit(*arrays["test"]))
    meta = tfds_data.dataset_info(name, data_dir)
    keys = info.label_keys if info else meta.label_keys
    label_key = keys[0] if label_key is None else label_key
    if label_key not in keys:
        raise ValueError(f"label_key={label_key!r} is not allowed for {name!r}: its ClassLabel "
                         f"features with the classes of 'label' are {keys}")
    num_classes, shape = meta.num_classes, meta.image_shape
    if size is not None and (None not in shape or size[0] != size[1]):
        raise ValueError(f"image_size={image_size!r}: for TFDS data only a square size of "
                         f"variable-size images (such as imagenet2012); {name!r} has "
                         f"images of shape {shape}")
    image_size = IMAGENET_TRAIN_SIZE if size is None else size[0]
    if in_memory is None:
        in_memory = None not in shape
    elif in_memory and None in shape:
        raise ValueError(f"in_memory=True needs fixed-size images; {name!r} has shape {shape}")
    if info is None:
        info = DatasetInfo("generic", GENERIC_VAL_FRACTION)
    val_size = SVHN_EXTRA_VAL_SIZE if extra else info.val_size
    train_splits = ("train", "extra") if extra else ("train",)
    train = tfds_data.load_split(name, train_splits, data_dir, label_key, shape, in_memory,
                                 image_size)
    test = tfds_data.load_split(name, (info.test_split,), data_dir, "label", shape, in_memory,
                                image_size)
    return Source(name + ("+extra" if extra else ""), num_classes, tuple(train.image_shape),
                  info.family, val_size, label_key, train, test, class_names=meta.class_names)
