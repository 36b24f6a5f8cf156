"""Baseline augmentation policies: the original's RandAugment, Fast AutoAugment and DADA,
and TrivialAugment Wide (Müller & Hutter, ICCV 2021).

Sampling follows the original code (original_autodo_facts.md 1.3-1.4); application uses
the vectorised PIL ops of ``pil_ops``. Every policy is a callable
``policy(images uint8 (B,H,W,C), rng) -> uint8 (B,H,W,C)`` made of ``sample(B, rng)``
(op index and signed value per image and slot; index -1 = skip) and ``apply``.

Policy data (Fast-AA / DADA sub-policies, op ranges) is ``policies.json``, shipped with the
package, extracted from gudovskiy/autodo @ ad80c5c (custom_transforms/auto_augment.py,
dada_augment.py, rand_augment.py); see its ``source`` field.
"""
from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autodo_jax.data import pil_ops

OpFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _cutout(x: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, h, w, _ = x.shape
    cx, cy = rng.uniform(0, w, size=n), rng.uniform(0, h, size=n)
    return pil_ops.cutout(x, np.asarray(v) * w, cx, cy)


#: Op name -> fn(images, values (n,), rng). Values are already signed / mapped to range.
OPS: dict[str, OpFn] = {
    "Identity": lambda x, v, rng: x,
    "AutoContrast": lambda x, v, rng: pil_ops.autocontrast(x),
    "Equalize": lambda x, v, rng: pil_ops.equalize(x),
    "Invert": lambda x, v, rng: pil_ops.invert(x),
    "Solarize": lambda x, v, rng: pil_ops.solarize(x, v),
    "Posterize": lambda x, v, rng: pil_ops.posterize(x, v),
    "Color": lambda x, v, rng: pil_ops.color(x, v),
    "Contrast": lambda x, v, rng: pil_ops.contrast(x, v),
    "Brightness": lambda x, v, rng: pil_ops.brightness(x, v),
    "Sharpness": lambda x, v, rng: pil_ops.sharpness(x, v),
    "Rotate": lambda x, v, rng: pil_ops.rotate(x, v),
    "ShearX": lambda x, v, rng: pil_ops.shear_x(x, v),
    "ShearY": lambda x, v, rng: pil_ops.shear_y(x, v),
    "TranslateX": lambda x, v, rng: pil_ops.translate_x(x, v),
    "TranslateY": lambda x, v, rng: pil_ops.translate_y(x, v),
    # translations by v pixels (TrivialAugment's ranges are in pixels, not fractions)
    "TranslateXPixels": lambda x, v, rng: pil_ops.translate_x(x, np.asarray(v) / x.shape[2]),
    "TranslateYPixels": lambda x, v, rng: pil_ops.translate_y(x, np.asarray(v) / x.shape[1]),
    "Cutout": _cutout,
}
#: Ops whose value flips sign with probability 0.5 (the original's random mirror).
GEOMETRIC = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY",
                       "TranslateXPixels", "TranslateYPixels"})

#: RandAugment op lists of the original (name, lo, hi); value = lo + U * M/30 * (hi - lo).
RANDAUGMENT_OPS = (("Identity", 0, 1), ("AutoContrast", 0, 1), ("Equalize", 0, 1),
                   ("Invert", 0, 1), ("Color", 0.1, 1.9), ("Sharpness", 0.1, 1.9),
                   ("Rotate", 0, 30), ("ShearX", 0.0, 0.3), ("ShearY", 0.0, 0.3),
                   ("TranslateX", 0.0, 0.45), ("TranslateY", 0.0, 0.45))
COLOUR_OPS = RANDAUGMENT_OPS[:6]


@functools.lru_cache(maxsize=1)
def policy_data() -> dict[str, Any]:
    """The parsed ``policies.json`` (Fast-AA / DADA policies and op ranges)."""
    text = importlib.resources.files("autodo_jax.data").joinpath("policies.json").read_text()
    return json.loads(text)


def apply_ops(images: np.ndarray, op_idx: np.ndarray, values: np.ndarray,
              names: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """Applies slot after slot: image i gets op ``names[op_idx[i, s]]`` with ``values[i, s]``.

    Args:
        images: uint8 (B,H,W,C).
        op_idx: int (B, S), -1 = nothing in that slot.
        values: float (B, S).
    """
    out = images.copy()
    for s in range(op_idx.shape[1]):
        for k in np.unique(op_idx[:, s]):
            if k < 0:
                continue
            sel = np.flatnonzero(op_idx[:, s] == k)
            out[sel] = OPS[names[k]](out[sel], values[sel, s], rng)
    return out


def _signs(names: Sequence[str], op_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    geometric = np.array([n in GEOMETRIC for n in names] + [False])   # index -1 -> False
    flip = rng.random(op_idx.shape) > 0.5
    return np.where(geometric[op_idx] & flip, -1.0, 1.0)


class RandAugment:
    """The original's RandAugment(N, M): N ops drawn with replacement, random magnitude.

    Args:
        n: ops per image; m: magnitude in [0, 30]; colour_only: use the colour-only subset
            (the original's RandSubAugment, applied alongside learned augmentation).
    """

    def __init__(self, n: int, m: float, *, colour_only: bool = False):
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"RandAugment n must be an int >= 0, got {n!r}")
        if not 0 <= m <= 30:
            raise ValueError(f"RandAugment m must lie in [0, 30], got {m!r}")
        self.n, self.m = n, float(m)
        table = COLOUR_OPS if colour_only else RANDAUGMENT_OPS
        self.names = tuple(t[0] for t in table)
        self.lo = np.array([t[1] for t in table], np.float64)
        self.hi = np.array([t[2] for t in table], np.float64)

    def sample(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(op_idx int (b, n), values float (b, n))."""
        op_idx = rng.integers(0, len(self.names), size=(b, self.n))
        u = rng.random((b, self.n))
        values = self.lo[op_idx] + u * (self.m / 30.0) * (self.hi - self.lo)[op_idx]
        return op_idx, values * _signs(self.names, op_idx, rng)

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        op_idx, values = self.sample(images.shape[0], rng)
        return apply_ops(images, op_idx, values, self.names, rng)


class SubPolicyAugment:
    """A Fast AutoAugment or DADA policy from ``policies.json`` by name.

    Per image: one sub-policy uniformly; each of its ops applied with its probability;
    value = level * (hi - lo) + lo (DADA clips level to [0, 1] first); geometric values
    flip sign with probability 0.5.
    """

    def __init__(self, name: str):
        data = policy_data()
        if name not in data["policies"]:
            raise ValueError(f"unknown policy set {name!r}; allowed: {sorted(data['policies'])}")
        subs = data["policies"][name]
        self.name = name
        self.names = tuple(sorted({op for sub in subs for op, _, _ in sub}))
        lookup = {n: i for i, n in enumerate(self.names)}
        self.op_idx = np.array([[lookup[op] for op, _, _ in sub] for sub in subs], np.int64)
        self.prob = np.array([[p for _, p, _ in sub] for sub in subs], np.float64)
        level = np.array([[lv for _, _, lv in sub] for sub in subs], np.float64)
        if name.startswith("dada"):
            level = np.clip(level, 0.0, 1.0)
        ranges = data["op_ranges"]
        lo = np.array([ranges[n]["lo"] for n in self.names], np.float64)
        hi = np.array([ranges[n]["hi"] for n in self.names], np.float64)
        self.value = level * (hi - lo)[self.op_idx] + lo[self.op_idx]

    def sample(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(op_idx int (b, 2), values float (b, 2)); op index -1 where not applied."""
        sub = rng.integers(0, self.op_idx.shape[0], size=b)
        applied = rng.random((b, self.op_idx.shape[1])) < self.prob[sub]
        op_idx = np.where(applied, self.op_idx[sub], -1)
        return op_idx, self.value[sub] * _signs(self.names, op_idx, rng)

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        op_idx, values = self.sample(images.shape[0], rng)
        return apply_ops(images, op_idx, values, self.names, rng)


#: TrivialAugment Wide: the 14 ops of the authors' "wide_standard" space (automl/
#: trivialaugment, aug_lib.py) as (name, (kind, m, a)): the value at strength level
#: l in 0..30 is l*m/30 + a ("float"), int(l*m/30) + a ("trunc") or a - int(l*m/30)
#: ("minus"). Rotate, shears and translations flip sign with probability 0.5;
#: translations are in pixels.
TRIVIALAUGMENT_LEVELS = 31
TRIVIALAUGMENT_OPS = (
    ("Identity", ("float", 0.0, 0.0)),
    ("AutoContrast", ("float", 0.0, 0.0)),
    ("Equalize", ("float", 0.0, 0.0)),
    ("Rotate", ("trunc", 135.0, 0.0)),                 # degrees 0..135
    ("Solarize", ("minus", 256.0, 256.0)),             # threshold 256..0
    ("Color", ("float", 2.0 - 0.01, 0.01)),            # enhance factor 0.01..2.0
    ("Posterize", ("minus", 6.0, 8.0)),                # bits 8..2
    ("Contrast", ("float", 2.0 - 0.01, 0.01)),
    ("Brightness", ("float", 2.0 - 0.01, 0.01)),
    ("Sharpness", ("float", 2.0 - 0.01, 0.01)),
    ("ShearX", ("float", 0.99, 0.0)),
    ("ShearY", ("float", 0.99, 0.0)),
    ("TranslateXPixels", ("trunc", 32.0, 0.0)),        # pixels 0..32
    ("TranslateYPixels", ("trunc", 32.0, 0.0)),
)


def trivialaugment_values(op_idx: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Unsigned values of TrivialAugment Wide ops ``op_idx`` at integer strength levels
    ``level`` (0..30), with the authors' integer truncations (int arrays of one shape ->
    float64 of that shape)."""
    op_idx = np.asarray(op_idx)
    level = np.broadcast_to(np.asarray(level, np.float64), op_idx.shape)
    out = np.zeros(op_idx.shape, np.float64)
    for k, (_, (kind, m, a)) in enumerate(TRIVIALAUGMENT_OPS):
        sel = op_idx == k
        scaled = level[sel] * m / (TRIVIALAUGMENT_LEVELS - 1)
        out[sel] = {"float": scaled + a, "trunc": np.trunc(scaled) + a,
                    "minus": a - np.trunc(scaled)}[kind]
    return out


class TrivialAugmentWide:
    """TrivialAugment (Müller & Hutter, ICCV 2021) in its recommended "wide" space.

    Per image: one op uniformly from ``TRIVIALAUGMENT_OPS`` and one strength level
    uniformly from the 31 integers 0..30 (the authors' code and torchvision draw the same
    discrete levels), mapped to the op's wide range; geometric values flip sign with
    probability 0.5. Translations are absolute (up to 32 px, the range defined for 32x32
    CIFAR images; on 28x28 MNIST the largest shift moves the digit out of the frame).
    Nothing is learned or tuned.
    """

    def __init__(self):
        self.names = tuple(name for name, _ in TRIVIALAUGMENT_OPS)

    def sample(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(op_idx int (b, 1), signed values float (b, 1))."""
        op_idx = rng.integers(0, len(self.names), size=(b, 1))
        level = rng.integers(0, TRIVIALAUGMENT_LEVELS, size=(b, 1))
        return op_idx, trivialaugment_values(op_idx, level) * _signs(self.names, op_idx, rng)

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        op_idx, values = self.sample(images.shape[0], rng)
        return apply_ops(images, op_idx, values, self.names, rng)
