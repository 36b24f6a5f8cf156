"""Writes a PNG grid of the 7 learned affine ops applied to one mnist5k digit.

Usage::

    python -m experiments.augment_grid [--out docs/augment_grid.png] [--index 0] [--upsample 1]

Rows are the ops of ``autodo_jax.augment.OP_NAMES``; columns are op values
mid + f · range for f in (-1, -0.5, 0, 0.5, 1) (one op at a time, the others at their mid,
i.e. identity), which is ±1 and ±½ standard deviation of a sample at σ(m) = 1. The digit is
warped with ``augment.warp`` exactly as in training (bilinear, border replication).
"""
from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from autodo_jax import augment  # noqa: E402
from autodo_jax.data.mnist5k import load_mnist5k_arrays  # noqa: E402

FRACTIONS = (-1.0, -0.5, 0.0, 0.5, 1.0)
_UNITS = ("°", "·W", "·H", "", "", "", "")


def grid_values() -> np.ndarray:
    """(K, F, K) op values: row k varies op k over FRACTIONS of its range."""
    mids, ranges = np.asarray(augment.OP_MIDS), np.asarray(augment.OP_RANGES)
    values = np.tile(mids, (augment.NUM_OPS, len(FRACTIONS), 1))
    for k in range(augment.NUM_OPS):
        values[k, :, k] = mids[k] + np.asarray(FRACTIONS) * ranges[k]
    return values


def render(digit: np.ndarray, out_path: str, upsample: int = 1) -> None:
    """Warps ``digit`` (28, 28, 1) uint8 by every grid value and saves the figure."""
    values = grid_values()
    k, f = values.shape[:2]
    image = digit.astype(np.float32)[None] / 255.0
    images = np.repeat(image, k * f, axis=0)
    mats = augment.affine_matrices(values.reshape(k * f, -1), *digit.shape[:2])
    warped = np.asarray(augment.warp(images, mats, upsample=upsample)).reshape(k, f, *digit.shape)
    fig, axes = plt.subplots(k, f, figsize=(1.3 * f + 1.0, 1.3 * k), squeeze=False)
    for i in range(k):
        for j in range(f):
            ax = axes[i, j]
            ax.imshow(warped[i, j, ..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            value = values[i, j, i]
            ax.set_title(f"{value:+.3g}{_UNITS[i]}", fontsize=7, pad=2)
            if j == 0:
                ax.set_ylabel(augment.OP_NAMES[i], fontsize=8)
    fig.suptitle(f"augment ops at mid + f·range, f = {FRACTIONS} (upsample {upsample})", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("docs", "augment_grid.png"))
    parser.add_argument("--index", type=int, default=0, help="index into the mnist5k train pool")
    parser.add_argument("--upsample", type=int, default=1, help="warp super-sampling factor")
    args = parser.parse_args(argv)
    images, _ = load_mnist5k_arrays()["train"]
    if not 0 <= args.index < images.shape[0]:
        parser.error(f"--index must be in [0, {images.shape[0]}); got {args.index}")
    render(images[args.index], args.out, args.upsample)
    print(args.out)


if __name__ == "__main__":
    main()
