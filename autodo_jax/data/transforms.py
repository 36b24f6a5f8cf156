"""Host transforms: per-dataset preprocessing and the baseline policies, by name.

A host transform maps a uint8 batch (B, H, W, C) and a ``np.random.Generator`` to the
float32 normalised batch (B, H, W, C) the train step consumes. Order, as the original:
policy op (uint8) -> random crop with zero padding / horizontal flip (uint8) ->
normalise -> random erasing (fills 0 after normalisation, i.e. the mean colour).

Policy names (``POLICY_NAMES``; ``host_transform(name, family)``):
    ``none``: normalisation only (evaluation, or training without any augmentation);
    ``crop_flip``: the dataset's standard preprocessing (the original's NONE baseline);
    ``randaugment``: RandAugment (original variant) + standard preprocessing;
    ``fast_aa`` / ``dada``: Fast AutoAugment / DADA policy + standard preprocessing;
    ``color_subset``: RandAugment's colour-only subset + standard preprocessing (used with
    learned augmentation, whose geometry is done on the device);
    ``trivialaugment``: TrivialAugment Wide (one op, uniform strength) + standard
    preprocessing.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from autodo_jax.data import policies as _policies
from autodo_jax.data.types import DATASETS

PolicyOp = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Family:
    """Preprocessing facts of a dataset family (original_autodo_facts.md, 1.1-1.2).

    Attributes:
        mean, std: per-channel normalisation of [0, 1] pixels.
        crop_pad: random-crop zero padding in pixels (0: no crop).
        flip: random horizontal flip (p = 0.5).
        erase: torchvision RandomErasing defaults after normalisation.
        randaugment, color_subset: (N, M) of RandAugment and of its colour subset.
        fast_aa, dada: policy names in policies.json, or None where the original has none.
        name: what error messages call the family (``str(family)``); families built from
            data (``family_from_images``) have one, the named ``FAMILIES`` are their keys.
    """
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pad: int
    flip: bool
    erase: bool
    randaugment: tuple[int, int]
    color_subset: tuple[int, int]
    fast_aa: str | None
    dada: str | None
    name: str = ""

    def __str__(self) -> str:
        return self.name or repr(self)


FAMILIES: dict[str, Family] = {
    "mnist": Family((0.1307,), (0.3081,), 0, False, False, (3, 5), (3, 5), None, None),
    "svhn": Family((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 4, False, True,
                   (3, 7), (3, 7), "fa_reduced_svhn", "dada_reduced_svhn"),
    "cifar10": Family((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True, True,
                      (3, 15), (1, 15), "fa_reduced_cifar10", "dada_reduced_cifar10"),
    "cifar100": Family((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4, True, True,
                       (3, 15), (1, 15), "fa_reduced_cifar10", "dada_reduced_cifar100"),
    # Random-resized crop happens when the source decodes (tfds_data.TfdsSplit).
    "imagenet": Family((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0, True, False,
                       (2, 9), (2, 9), "fa_resnet50_rimagenet", "dada_resnet50_rimagenet"),
    "generic": Family((0.5,), (0.25,), 0, False, False, (2, 9), (2, 9), None, None),
}

#: Settings of the family of user data (``family_from_images``): RandAugment and colour
#: subset (N, M) as the generic family; pad-and-crop of 1/8 of the shorter side.
USER_RANDAUGMENT = (2, 9)
USER_CROP_FRACTION = 8
#: Smallest per-channel std (of [0, 1] pixels) used for normalisation (constant channels).
MIN_STD = 1e-3

ERASE_P = 0.5
ERASE_AREA = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)


def random_crop(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Random H x W crops of the batch zero-padded by ``pad`` px: uint8 (B,H,W,C)."""
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    top = rng.integers(0, 2 * pad + 1, size=b)
    left = rng.integers(0, 2 * pad + 1, size=b)
    out = np.empty_like(images)
    for i in range(b):   # b slice copies beat one (b, H, W) fancy-index gather
        out[i] = padded[i, top[i]:top[i] + h, left[i]:left[i] + w]
    return out


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip of each image with probability 0.5."""
    flip = rng.random(images.shape[0]) < 0.5
    out = images.copy()
    out[flip] = images[flip, :, ::-1]
    return out


def random_erasing(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """torchvision RandomErasing (p 0.5, area U(0.02, 0.33), log-uniform aspect in
    (0.3, 3.3), 10 tries, value 0) on float (B,H,W,C), vectorised."""
    b, h, w, _ = x.shape
    tries = 10
    area = h * w * rng.uniform(*ERASE_AREA, size=(b, tries))
    ratio = np.exp(rng.uniform(np.log(ERASE_RATIO[0]), np.log(ERASE_RATIO[1]),
                               size=(b, tries)))
    eh = np.round(np.sqrt(area * ratio)).astype(np.int64)
    ew = np.round(np.sqrt(area / ratio)).astype(np.int64)
    ok = (eh < h) & (ew < w)
    first = np.argmax(ok, axis=1)
    apply = (rng.random(b) < ERASE_P) & ok.any(axis=1)
    eh, ew = eh[np.arange(b), first], ew[np.arange(b), first]
    top = np.floor(rng.random(b) * (h - eh + 1)).astype(np.int64)
    left = np.floor(rng.random(b) * (w - ew + 1)).astype(np.int64)
    r, c = np.arange(h), np.arange(w)
    inside = (((r >= top[:, None]) & (r < (top + eh)[:, None]))[:, :, None] &
              ((c >= left[:, None]) & (c < (left + ew)[:, None]))[:, None, :])
    inside &= apply[:, None, None]
    return np.where(inside[..., None], np.zeros((), x.dtype), x)


@dataclasses.dataclass(frozen=True)
class HostTransform:
    """uint8 (B,H,W,C) + rng -> float32 (B,H,W,C) normalised; see the module doc."""
    family: Family
    policy: PolicyOp | None = None
    augment: bool = True   # crop/flip/erase of the family

    def normalize(self, images: np.ndarray) -> np.ndarray:
        channels = images.shape[-1]
        mean = np.resize(np.asarray(self.family.mean, np.float32), channels)
        std = np.resize(np.asarray(self.family.std, np.float32), channels)
        return images.astype(np.float32) * (1.0 / (255.0 * std)) - mean / std

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError(f"images must be uint8 (B,H,W,C), got {images.dtype} {images.shape}")
        if self.policy is not None:
            images = self.policy(images, rng)
        f = self.family
        if self.augment and f.crop_pad:
            images = random_crop(images, f.crop_pad, rng)
        if self.augment and f.flip:
            images = random_flip(images, rng)
        x = self.normalize(images)
        if self.augment and f.erase:
            x = random_erasing(x, rng)
        return x


def family_from_images(images: np.ndarray, name: str = "user data") -> Family:
    """The preprocessing family of user data, computed from its train images.

    Normalisation by the per-channel mean and std of the train set (std floored at
    ``MIN_STD``); ``crop_flip`` is a random crop zero-padded by round(min(H, W) / 8) pixels
    (4 at 32 px, 0 below 5 px) without flips (not every dataset is mirror-invariant) and
    without random erasing; RandAugment and its colour subset use (N, M) = (2, 9) as the
    generic family; the original has no Fast AutoAugment / DADA policy for it.

    Args:
        images: uint8 (n, H, W, C) train images, n >= 1.
        name: what messages call the family.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or not images.shape[0]:
        raise TypeError(f"images must be uint8 (n>=1, H, W, C), got {images.dtype} {images.shape}")
    channels = images.shape[-1]
    total, squares = np.zeros(channels), np.zeros(channels)
    for start in range(0, images.shape[0], 1024):   # float64 in chunks: bounded memory
        chunk = images[start:start + 1024].reshape(-1, channels).astype(np.float64) / 255.0
        total += chunk.sum(0)
        squares += np.square(chunk).sum(0)
    count = images.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    pad = int(round(min(images.shape[1:3]) / USER_CROP_FRACTION))
    return Family(tuple(float(m) for m in mean), tuple(float(max(s, MIN_STD)) for s in std),
                  pad, False, False, USER_RANDAUGMENT, USER_RANDAUGMENT, None, None, name)


def _family(dataset: str | Family) -> tuple[str, Family]:
    if isinstance(dataset, Family):
        return str(dataset), dataset
    name = DATASETS[dataset].family if dataset in DATASETS else dataset
    if name not in FAMILIES:
        raise ValueError(f"unknown dataset family {dataset!r}: allowed are families "
                         f"{sorted(FAMILIES)} or dataset names {sorted(DATASETS)} "
                         "(for other TFDS sets pass source.family)")
    return name, FAMILIES[name]


def _named_policy(kind: str, pick: Callable[[Family], str | None]
                  ) -> Callable[[str, Family], PolicyOp]:
    def build(name: str, family: Family) -> PolicyOp:
        policy = pick(family)
        if policy is None:
            raise ValueError(f"policy {kind!r} has no original policy for dataset family "
                             f"{name!r}; allowed there: {allowed_policies(name)}")
        return _policies.SubPolicyAugment(policy)
    return build


_POLICIES: dict[str, Callable[[str, Family], PolicyOp | None]] = {
    "none": lambda name, family: None,
    "crop_flip": lambda name, family: None,
    "randaugment": lambda name, family: _policies.RandAugment(*family.randaugment),
    "color_subset": lambda name, family: _policies.RandAugment(*family.color_subset,
                                                                colour_only=True),
    "fast_aa": _named_policy("fast_aa", lambda f: f.fast_aa),
    "dada": _named_policy("dada", lambda f: f.dada),
    "trivialaugment": lambda name, family: _policies.TrivialAugmentWide(),
}
POLICY_NAMES = tuple(_POLICIES)


def allowed_policies(dataset: str | Family) -> tuple[str, ...]:
    """Policy names that exist for ``dataset`` (a family, family name or dataset name)."""
    _, family = _family(dataset)
    missing = {"fast_aa": family.fast_aa is None, "dada": family.dada is None}
    return tuple(p for p in POLICY_NAMES if not missing.get(p, False))


def host_transform(policy: str, dataset: str | Family) -> HostTransform:
    """The host transform of ``policy`` (a name in ``POLICY_NAMES``) for ``dataset``.

    Args:
        policy: ``none``, ``crop_flip``, ``randaugment``, ``fast_aa``, ``dada``,
            ``color_subset`` or ``trivialaugment``.
        dataset: a family name (``mnist``, ``svhn``, ``cifar10``, ``cifar100``,
            ``imagenet``, ``generic``), a known dataset name, or a ``Family`` (user data);
            ``source.family`` works for any source.

    Raises:
        ValueError: unknown policy or dataset, or a policy the original lacks for it.
    """
    if policy not in _POLICIES:
        raise ValueError(f"unknown policy {policy!r}; allowed: {POLICY_NAMES}")
    name, family = _family(dataset)
    return HostTransform(family, _POLICIES[policy](name, family), augment=policy != "none")
