"""Train-data distortion (AUTODO.md): clean validation split, subsample, imbalance, noise.

Order, as the original: (1) a stratified clean validation split is drawn from the train
split; (2) subsample ratio SR keeps floor(SR * n) of the rest at random; (3) imbalance
ratio IR (step profile): classes c < C//2 keep all their L examples, classes c >= C//2
keep floor(L / IR) examples in total, drawn at random from all of them; (4) noise ratio
NR: round(NR * n) kept examples, chosen at random, get a label drawn uniformly from all C
classes (so about 1/C of them keep their true label); (5) the kept examples are put in a
seeded random order, so that row shards of the hyperparameter tables are not
class-sorted. Table row r <-> train example ``train_index[r]``.

A given clean validation split (``Source.val``, user data) replaces step (1): the whole
train split is the pool and the validation set is ``Source.val`` (``val_from="val"``);
``val_size`` must then be left unset and ``oversplit`` is refused. SR, IR and NR still apply
on top, so ``imbalance_ratio=1, noise_ratio=0`` trains on the data as given. For user data
the "clean" labels of the train rows are the given labels (``Source.truth_known`` False):
``noisy`` then marks only the labels this module redrew.

Ablations: ``"overfit"``: validation batches come from the whole test split (training data
as normal); ``"oversplit"``: no validation carve-out; the distorted training set is drawn
from all train data and validation uses all train data with clean labels (the original
in this mode also skips SR/IR; here they still apply, so the ablation isolates the split).

Every stage has its own random stream derived from ``seed``, so e.g. changing NR does not
change the validation split or the kept examples.

No I/O: :func:`make_split` returns the arrays and the caller keeps them (a run saves its
split in the workdir, see ``experiments.workdir.save_split``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from autodo_jax.data import sources

ABLATIONS = ("none", "overfit", "oversplit")


@dataclasses.dataclass(frozen=True)
class DistortionConfig:
    """Requested distortion of the train data.

    Attributes:
        imbalance_ratio: IR >= 1 (1 = balanced).
        noise_ratio: NR in [0, 1).
        subsample_ratio: SR in (0, 1].
        val_size: clean validation size: int count, float fraction in (0, 1), or None for the
            dataset's default (``Source.val_size``).
        ablation: ``"none"``, ``"overfit"`` or ``"oversplit"``.
        seed: seed of every random choice.
    """
    imbalance_ratio: float = 1.0
    noise_ratio: float = 0.0
    subsample_ratio: float = 1.0
    val_size: int | float | None = None
    ablation: str = "none"
    seed: int = 0

    def __post_init__(self):
        for field in ("val_size", "seed"):   # numpy scalars -> Python numbers
            value = getattr(self, field)
            if isinstance(value, (np.integer, np.floating)):
                object.__setattr__(self, field, value.item())
        ir, nr, sr = self.imbalance_ratio, self.noise_ratio, self.subsample_ratio
        for field, value in (("imbalance_ratio", ir), ("noise_ratio", nr),
                             ("subsample_ratio", sr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
                raise ValueError(f"{field} must be a finite number, got {value!r}")
        if ir < 1:
            raise ValueError(f"imbalance_ratio must be >= 1, got {ir!r}")
        if not 0 <= nr < 1:
            raise ValueError(f"noise_ratio must lie in [0, 1), got {nr!r}")
        if not 0 < sr <= 1:
            raise ValueError(f"subsample_ratio must lie in (0, 1], got {sr!r}")
        v = self.val_size
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or
                              (isinstance(v, int) and v < 1) or
                              (isinstance(v, float) and not 0 < v < 1)):
            raise ValueError(f"val_size must be None, an int >= 1 or a float in (0, 1), got {v!r}")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or (
            self.seed < 0):
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: floats as floats, so 10 and 10.0 compare equal."""
        d = dataclasses.asdict(self)
        for k in ("imbalance_ratio", "noise_ratio", "subsample_ratio"):
            d[k] = float(d[k])
        d["seed"] = int(d["seed"])
        return d


@dataclasses.dataclass(frozen=True)
class Split:
    """A distorted train set and its validation set.

    Attributes:
        train_index: int64 (N,) train-split example of each table row (random order).
        train_labels: int32 (N,) given labels (maybe noisy).
        train_clean_labels: int32 (N,) true labels (evaluation only).
        noisy: bool (N,) given label != true label (evaluation only).
        val_index: int64 (V,) examples of the ``val_from`` split used for validation.
        val_labels: int32 (V,) their labels (clean).
        val_from: ``"train"``, ``"test"`` or ``"val"`` (a given validation split); see
            :func:`val_source`.
        num_classes: C.
    """
    train_index: np.ndarray
    train_labels: np.ndarray
    train_clean_labels: np.ndarray
    noisy: np.ndarray
    val_index: np.ndarray
    val_labels: np.ndarray
    val_from: str
    num_classes: int

    @property
    def num_train(self) -> int:
        return int(self.train_index.shape[0])


def resolve_val_size(val_size: int | float, pool: int) -> int:
    """Validation count for ``val_size`` (count or fraction) out of ``pool`` examples."""
    count = int(round(val_size * pool)) if isinstance(val_size, float) else int(val_size)
    if not 1 <= count < pool:
        raise ValueError(f"val_size={val_size!r} gives {count} validation examples; allowed is "
                         f"1 <= count < {pool} (the train pool)")
    return count


def stratified_choice(labels: np.ndarray, count: int, num_classes: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Picks ``count`` positions of ``labels``, per class proportional to its size.

    Class c gets floor(count * n_c / n) plus one of the leftover slots for the classes with
    the largest remainders (ties: lower class first); members are drawn without
    replacement. Every class must keep at least one example outside the choice.

    Returns:
        int64 (count,) sorted positions.
    """
    n_c = np.bincount(labels, minlength=num_classes)
    exact = count * n_c / labels.size
    alloc = np.floor(exact).astype(np.int64)
    order = np.lexsort((np.arange(num_classes), -(exact - alloc)))
    alloc[order[:count - alloc.sum()]] += 1
    bad = np.flatnonzero((alloc > 0) & (alloc >= n_c))
    if bad.size:
        c = int(bad[0])
        raise ValueError(f"class {c} has {n_c[c]} examples but the validation split of {count} "
                         f"needs {alloc[c]} of them plus at least one left for training")
    picks = [rng.choice(np.flatnonzero(labels == c), alloc[c], replace=False)
             for c in range(num_classes) if alloc[c]]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def make_split(source: Any, config: DistortionConfig) -> Split:
    """Draws the split of ``source`` (a ``sources.Source``) for ``config``.

    Raises:
        ValueError: validation size not below the pool, a class too small for the
            validation split, or too few minority examples for the imbalance.
    """
    if not isinstance(config, DistortionConfig):
        raise TypeError(f"config must be a DistortionConfig, got {type(config).__name__}")
    given_val = getattr(source, "val", None)
    if given_val is not None and config.ablation == "oversplit":
        raise ValueError("ablation=oversplit: not allowed when the dataset gives its own "
                         "validation split (it validates on the train data instead)")
    if given_val is not None and config.val_size is not None:
        raise ValueError(f"val_size={config.val_size!r}: not allowed when the dataset gives "
                         f"its own validation split ({len(given_val)} examples); leave it unset")
    if config.ablation == "overfit" and source.test is None:
        raise ValueError("ablation=overfit: validates on the test split, and the dataset "
                         "has none")
    c = int(source.num_classes)
    clean = np.asarray(source.train.clean_labels, dtype=np.int64)
    given = np.asarray(source.train.labels, dtype=np.int64)
    n_total = clean.size
    r_val, r_sr, r_ir, r_nr, r_order = (
        np.random.default_rng(s) for s in np.random.SeedSequence([config.seed, 0xD15]).spawn(5))
    if config.ablation == "oversplit" or given_val is not None:
        pool = np.arange(n_total)
    else:
        v = resolve_val_size(source.val_size if config.val_size is None else config.val_size,
                             n_total)
        val = stratified_choice(clean, v, c, r_val)
        pool = np.setdiff1d(np.arange(n_total), val)
    keep = math.floor(config.subsample_ratio * pool.size + 1e-9)
    if keep < 1:
        raise ValueError(f"subsample_ratio={config.subsample_ratio} keeps no example of "
                         f"{pool.size}")
    kept = np.sort(r_sr.choice(pool, keep, replace=False))
    if config.imbalance_ratio != 1:
        major = kept[clean[kept] < c // 2]
        minor = kept[clean[kept] >= c // 2]
        s = math.floor(major.size / config.imbalance_ratio + 1e-9)
        if s > minor.size:
            raise ValueError(f"imbalance_ratio={config.imbalance_ratio} needs {s} examples of "
                             f"classes >= {c // 2} but only {minor.size} are left")
        kept = np.sort(np.concatenate([major, r_ir.choice(minor, s, replace=False)]))
    labels = given[kept].copy()
    num_noisy = math.floor(config.noise_ratio * kept.size + 0.5)
    flip = r_nr.choice(kept.size, num_noisy, replace=False)
    labels[flip] = r_nr.integers(0, c, size=num_noisy)
    order = r_order.permutation(kept.size)
    kept, labels = kept[order], labels[order]
    if config.ablation == "overfit":
        val_index, val_labels, val_from = (np.arange(len(source.test)),
                                           np.asarray(source.test.clean_labels), "test")
    elif config.ablation == "oversplit":
        val_index, val_labels, val_from = np.arange(n_total), clean, "train"
    elif given_val is not None:
        val_index, val_labels, val_from = (np.arange(len(given_val)),
                                           np.asarray(given_val.clean_labels), "val")
    else:
        val_index, val_labels, val_from = val, clean[val], "train"
    return Split(kept.astype(np.int64), labels.astype(np.int32),
                 clean[kept].astype(np.int32), labels != clean[kept],
                 val_index.astype(np.int64), np.asarray(val_labels).astype(np.int32),
                 val_from, c)


def val_source(source: Any, split: Split) -> Any:
    """The split of ``source`` that ``split.val_index`` indexes (by ``split.val_from``)."""
    data = {"train": source.train, "test": source.test,
            "val": getattr(source, "val", None)}.get(split.val_from)
    if data is None:
        raise ValueError(f"the split validates on {split.val_from!r}, which source "
                         f"{source.name!r} does not have")
    return data


def with_test_fallback(source: Any, split: Split) -> Any:
    """``source`` itself if it has a test split; else a copy whose test split is the
    validation set of ``split`` (``test_from="val"``: a run then reports its test figures
    on the validation split and says so, see ``Source.notes``)."""
    if source.test is not None:
        return source
    test = sources.SubsetSplit(val_source(source, split), split.val_index)
    return dataclasses.replace(source, test=test, test_from="val")


def split_summary(split: Split) -> dict[str, Any]:
    """Counts for logging: rows, per-class given/clean counts, noisy count, validation size."""
    c = split.num_classes
    return {"num_train": split.num_train, "num_val": int(split.val_index.size),
            "val_from": split.val_from, "num_noisy": int(split.noisy.sum()),
            "train_per_class": np.bincount(split.train_clean_labels, minlength=c).tolist(),
            "given_per_class": np.bincount(split.train_labels, minlength=c).tolist(),
            "val_per_class": np.bincount(split.val_labels, minlength=c).tolist()}
