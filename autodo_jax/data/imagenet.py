"""Host-side decode/resize of variable-size images (ImageNet) to a fixed size.

Train: torchvision-style RandomResizedCrop (area U(0.08, 1) of the image, aspect ratio
log-uniform in (3/4, 4/3), 10 tries, then a centre crop fallback), bilinear resize.
Eval: shorter side resized to ``resize`` (bilinear), centre crop ``size``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

RRC_AREA = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


def _to_pil(image: np.ndarray) -> Image.Image:
    image = np.asarray(image, dtype=np.uint8)
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _to_array(pil: Image.Image, channels: int) -> np.ndarray:
    out = np.asarray(pil, dtype=np.uint8)
    return out.reshape(out.shape[0], out.shape[1], channels)


def rrc_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random-resized-crop box ``(top, left, h, w)`` inside a height x width image."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*RRC_AREA)
        ratio = math.exp(rng.uniform(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < RRC_RATIO[0]:
        w, h = width, int(round(width / RRC_RATIO[0]))
    elif in_ratio > RRC_RATIO[1]:
        h, w = height, int(round(height * RRC_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(images: Sequence[np.ndarray], size: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Random-resized crops of variable-size uint8 (h, w, C) images -> uint8 (n, size, size, C)."""
    out = []
    for image in images:
        top, left, h, w = rrc_box(image.shape[0], image.shape[1], rng)
        pil = _to_pil(image).resize((size, size), Image.BILINEAR,
                                    box=(left, top, left + w, top + h))
        out.append(_to_array(pil, image.shape[-1]))
    return np.stack(out)


def resize_center_crop(images: Sequence[np.ndarray], resize: int, size: int) -> np.ndarray:
    """Shorter side to ``resize`` (bilinear), centre crop ``size`` -> uint8 (n, size, size, C)."""
    out = []
    for image in images:
        h, w = image.shape[:2]
        scale = resize / min(h, w)
        nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
        pil = _to_pil(image).resize((nw, nh), Image.BILINEAR)
        top, left = (nh - size) // 2, (nw - size) // 2
        pil = pil.crop((left, top, left + size, top + size))
        out.append(_to_array(pil, image.shape[-1]))
    return np.stack(out)
