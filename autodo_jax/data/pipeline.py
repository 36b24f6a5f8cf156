"""Seeded, random-access, checkpointable batch loading with prefetching.

A train batch is a pure function of (seed, epoch, step): the ids come from a sampler
(``.steps_per_epoch``, ``.batch_ids(epoch, step) -> (B,) int32``, e.g.
``autodo_jax.parallel.ShardLocalSampler``); each process loads only the blocks of the
global batch that its devices hold (``shards``, from ``autodo_jax.parallel.host_shards``),
and the host augmentation of block k draws from
``np.random.default_rng([seed, epoch, step, k])``. So the loader's position is just
``(epoch, step)`` and a batch does not depend on how the devices are spread over
processes: a resumed run, and a run on 2 processes x 4 devices instead of 1 x 8, see the
same batches bit for bit.

Own loader rather than grain: the order must come from the external sampler (row-shard
locality of the tables) and the vectorised host transforms work on whole batches, so a
grain MapDataset would only wrap an index lookup; :func:`prefetched` (worker threads a
bounded number of batches ahead) gives the prefetching.
"""
from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import jax
import numpy as np

from autodo_jax.data.distortion import val_source

Batch = dict[str, np.ndarray]
Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
#: ``((block, rows), ...)``: the blocks of a global batch this process loads, as given by
#: ``autodo_jax.parallel.host_shards(mesh, global_batch_size)``; None = the whole batch
#: as one block 0 (one device, or no mesh).
Shards = Sequence[tuple[int, slice]] | None


def _blocks(shards: Shards, global_size: int) -> list[tuple[int, slice]]:
    """The (block, rows) pairs to load of a global batch of ``global_size``."""
    if shards is None:
        return [(0, slice(0, global_size))]
    out = [(int(k), rows) for k, rows in shards]
    if not out or any(r.stop > global_size for _, r in out):
        raise ValueError(f"shards {shards!r} do not fit a global batch of {global_size}")
    return out


def prefetched(produce: Callable[[Any], Any], keys: Iterator[Any], size: int,
               workers: int = 1) -> Iterator[Any]:
    """Yields ``(key, produce(key))`` for ``keys`` in order, computed ahead by worker threads.

    Each value is computed by one call of ``produce`` in one thread, so the values do not
    depend on ``workers`` (when ``produce`` is a pure function of its key, as the loaders'
    batches are). numpy and Pillow release the GIL in their array loops, so threads scale
    with cores for batch-sized work.

    Args:
        produce: the (thread-safe) work per key.
        keys: the keys, in order (may be endless: keys are drawn only as work is queued).
        size: values computed ahead of the consumer beyond the ``workers`` being
            computed; ``size <= 0`` with ``workers <= 1`` computes in the caller's thread.
        workers: threads computing values concurrently (>= 1).

    Closing the generator (or leaving the for loop) cancels the queued work; an exception
    of ``produce`` is re-raised in the consumer at its key's turn.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if size <= 0 and workers == 1:
        for key in keys:
            yield key, produce(key)
        return
    ahead = max(size, 0) + workers
    pending: collections.deque = collections.deque()
    pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="autodo-prefetch")
    keys = iter(keys)
    try:
        for key in itertools.islice(keys, ahead):
            pending.append((key, pool.submit(produce, key)))
        while pending:
            key, future = pending.popleft()
            value = future.result()
            for nxt in itertools.islice(keys, 1):
                pending.append((nxt, pool.submit(produce, nxt)))
            yield key, value
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def stack_batches(batches: Sequence[Any], size: int) -> tuple[Any, np.ndarray]:
    """Stacks batches on a new leading axis of ``size`` for a multi-step dispatch.

    Args:
        batches: 1 to ``size`` pytrees of equal structure and shapes (e.g. batch dicts).
        size: K, the leading size of the result; missing batches are filled with copies
            of the last one (padding that ``autodo_jax.train.inner_steps`` skips).

    Returns:
        ``(stacked, valid)``: every leaf ``(K, ...)``, and bool (K,) marking the real
        batches.
    """
    n = len(batches)
    if not 1 <= n <= size:
        raise ValueError(f"stack_batches: need 1 to size={size} batches, got {n}")
    padded = list(batches) + [batches[-1]] * (size - n)
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *padded)
    return stacked, np.arange(size) < n


class BatchLoader:
    """Random batches of (a subset of) a source split, positioned by (epoch, step).

    Args:
        source_split: random-access split (``len``, ``train_images(idx, rng)``).
        index: int (N,) example of ``source_split`` for every row; ids are rows.
        labels: int (N,) label of every row.
        sampler: object with ``.steps_per_epoch`` and ``.batch_ids(epoch, step)`` giving the
            global batch of rows, int (B,).
        transform: ``transform(images uint8 (b,H,W,C), rng) -> float32 (b,H,W,C)``
            (see ``transforms.host_transform``).
        seed: seed of the host augmentation.
        shards: the blocks of every global batch this process loads
            (``parallel.host_shards(mesh, B)``); None: the whole batch, one block.
        with_ids: include ``"ids"`` (int32 rows) in the batches.
        random_decode: read images with ``train_images(idx, rng)`` (random-resized crop for
            variable-size data) rather than the deterministic ``images(idx)``.
    """

    def __init__(self, source_split: Any, index: np.ndarray, labels: np.ndarray, sampler: Any,
                 transform: Transform, *, seed: int, shards: Shards = None,
                 with_ids: bool = True, random_decode: bool = True):
        if not (hasattr(sampler, "batch_ids") and hasattr(sampler, "steps_per_epoch")):
            raise TypeError("sampler must have .steps_per_epoch and .batch_ids(epoch, step), "
                            f"got {type(sampler).__name__}")
        if not callable(transform):
            raise TypeError(f"transform must be callable(images, rng), got {transform!r}")
        self.index = np.asarray(index, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int32)
        if self.index.shape != self.labels.shape or self.index.ndim != 1:
            raise ValueError(f"index {self.index.shape} and labels {self.labels.shape} must be "
                             "equal (N,) shapes")
        if self.index.size and (self.index.min() < 0 or self.index.max() >= len(source_split)):
            raise ValueError(f"index values must lie in [0, {len(source_split)})")
        self.source_split, self.sampler, self.transform = source_split, sampler, transform
        self.seed, self.with_ids = int(seed), with_ids
        self.random_decode = random_decode
        self.shards = None if shards is None else tuple(shards)

    @property
    def steps_per_epoch(self) -> int:
        return int(self.sampler.steps_per_epoch)

    def host_ids(self, epoch: int, step: int) -> list[tuple[int, np.ndarray]]:
        """``[(block, int32 ids), ...]``: this process's blocks of the batch at (epoch, step)."""
        ids = np.asarray(self.sampler.batch_ids(epoch, step)).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.index.size):
            raise ValueError(f"sampler gave ids outside [0, {self.index.size}) at "
                             f"(epoch={epoch}, step={step})")
        return [(k, ids[rows].astype(np.int32)) for k, rows in _blocks(self.shards, ids.size)]

    def batch(self, epoch: int, step: int) -> Batch:
        """The batch at (epoch, step): ``{"images": float32 (b,H,W,C), "labels": int32 (b,),
        "ids": int32 (b,)}``, b = the rows of this process's blocks (B on one process), in
        block order; a pure function of the position."""
        parts = []
        for k, ids in self.host_ids(epoch, step):
            rng = np.random.default_rng([self.seed, int(epoch), int(step), k])
            examples = self.index[ids]
            raw = (self.source_split.train_images(examples, rng) if self.random_decode
                   else self.source_split.images(examples))
            part = {"images": self.transform(raw, rng), "labels": self.labels[ids]}
            if self.with_ids:
                part["ids"] = ids
            parts.append(part)
        if len(parts) == 1:
            return parts[0]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def TrainLoader(source: Any, split: Any, sampler: Any, transform: Transform, seed: int,
                shards: Shards = None) -> BatchLoader:
    """Train batches ``{"images", "labels", "ids"}`` of a distorted split (ids = table rows).

    Args:
        source: ``sources.Source``; split: ``distortion.Split``; the rest as ``BatchLoader``.
    """
    return BatchLoader(source.train, split.train_index, split.train_labels, sampler, transform,
                       seed=seed, shards=shards, with_ids=True)


def ValLoader(source: Any, split: Any, sampler: Any, transform: Transform, seed: int,
              shards: Shards = None) -> BatchLoader:
    """Random validation batches ``{"images", "labels"}`` (clean labels) for hyper steps.

    ``sampler`` must range over ``len(split.val_index)`` rows; ``transform`` is normally
    ``host_transform("none", source.family)`` (no augmentation); images are decoded
    deterministically (centre crop for ImageNet). Reads the test split for the
    ``overfit`` ablation and a given validation split (user data) where there is one.
    """
    data = val_source(source, split)
    return BatchLoader(data, split.val_index, split.val_labels, sampler, transform, seed=seed,
                       shards=shards, with_ids=False, random_decode=False)


def num_eval_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def eval_set(source: Any, split: Any, which: str,
             limit: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    """The examples an evaluation runs on: ``(source_split, index (n,), labels (n,))``.

    Args:
        source: ``sources.Source``; split: ``distortion.Split``.
        which: ``"val"`` (the split's clean validation examples: of the train split, of
            the test split for the ``overfit`` ablation, or a given validation split) or ``"test"`` (the whole test split, clean labels).
        limit: evaluate at most this many, a fixed random subset kept in order (0 = all).
    """
    if which == "test":
        data, index, labels = source.test, np.arange(len(source.test)), source.test.clean_labels
    elif which == "val":
        data, index, labels = val_source(source, split), split.val_index, split.val_labels
    else:
        raise ValueError(f"which must be 'val' or 'test', got {which!r}")
    index, labels = np.asarray(index, np.int64), np.asarray(labels, np.int32)
    if limit and limit < index.size:
        keep = np.sort(np.random.default_rng(0).permutation(index.size)[:limit])
        index, labels = index[keep], labels[keep]
    return data, index, labels


def eval_batches(source_split: Any, index: np.ndarray, labels: np.ndarray, batch_size: int,
                 *, transform: Transform, shards: Shards = None) -> Iterator[Batch]:
    """Fixed-order evaluation batches, the last one padded.

    Args:
        source_split: random-access split (``images(idx)``); index: int (n,) examples to
            evaluate; labels: int (n,) (e.g. from :func:`eval_set`).
        batch_size: global batch size B.
        transform: normally ``host_transform("none", family)`` (normalisation only).
        shards: this process's blocks of a global batch of B (``parallel.host_shards``);
            None: the whole batch.

    Yields:
        ``{"images": float32 (b,H,W,C), "labels": int32 (b,), "mask": bool (b,)}`` with the
        rows of this process's blocks (b = B on one process), ceil(n / B) batches; padded
        slots repeat example ``index[0]`` with mask False; computed two batches ahead in a
        thread.
    """
    index = np.asarray(index, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int32)
    if index.shape != labels.shape or index.ndim != 1 or index.size == 0:
        raise ValueError(f"index {index.shape} and labels {labels.shape} must be equal, "
                         "non-empty (n,) shapes")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    part = np.concatenate([np.arange(batch_size)[rows] for _, rows in _blocks(shards, batch_size)])
    rng = np.random.default_rng(0)   # eval transforms are deterministic; rng unused

    def produce(b: int) -> Batch:
        pos = b * batch_size + part
        mask = pos < index.size
        pos = np.where(mask, pos, 0)
        images = transform(source_split.images(index[pos]), rng)
        return {"images": images, "labels": labels[pos], "mask": mask}

    for _, batch in prefetched(produce, iter(range(num_eval_batches(index.size, batch_size))), 2):
        yield batch
