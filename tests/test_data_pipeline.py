"""Batches: determinism by position, resume, per-host slices, prefetching, eval padding."""
import numpy as np
import pytest

from autodo_jax.data import distortion, pipeline, sources, transforms


class PermSampler:
    """Trivial sampler: a seeded permutation per epoch cut into batches."""

    def __init__(self, num_rows, batch, seed):
        self.num_rows, self.batch, self.seed = num_rows, batch, seed
        self.steps_per_epoch = num_rows // batch

    def batch_ids(self, epoch, step):
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
        return perm[step * self.batch:(step + 1) * self.batch].astype(np.int32)


@pytest.fixture(scope="module")
def mnist():
    src = sources.load_source("mnist5k")
    split = distortion.make_split(src, distortion.DistortionConfig(10, 0.2, seed=0))
    return src, split


def _loader(mnist, policy="randaugment", batch=32, **kw):
    src, split = mnist
    return pipeline.TrainLoader(src, split, PermSampler(split.num_train, batch, 7),
                                transforms.host_transform(policy, src.family), seed=11, **kw)


def test_train_batch_contents(mnist):
    src, split = mnist
    loader = _loader(mnist, policy="none")
    b = loader.batch(0, 3)
    assert set(b) == {"images", "labels", "ids"}
    assert b["images"].dtype == np.float32 and b["images"].shape == (32, 28, 28, 1)
    assert b["labels"].dtype == np.int32 and b["ids"].dtype == np.int32
    ids = PermSampler(split.num_train, 32, 7).batch_ids(0, 3)
    np.testing.assert_array_equal(b["ids"], ids)
    np.testing.assert_array_equal(b["labels"], split.train_labels[ids])
    raw = src.train.images(split.train_index[ids]).astype(np.float32) / 255
    np.testing.assert_allclose(b["images"], (raw - 0.1307) / 0.3081, atol=1e-5)


def test_position_is_pure_and_resume_matches(mnist):
    """A batch is a function of its position: a fresh loader (a resumed run) gives the same
    batch at the same position, across the epoch boundary too; another epoch differs."""
    loader = _loader(mnist)
    spe = loader.steps_per_epoch
    positions = [(0, spe - 1), (1, 0), (1, 1)]
    run = [loader.batch(*pos) for pos in positions]
    resumed = _loader(mnist)
    for pos, a in zip(reversed(positions), reversed(run)):
        b = resumed.batch(*pos)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(loader.batch(0, 1)["images"], loader.batch(0, 1)["images"])
    assert not np.array_equal(loader.batch(0, 1)["images"], loader.batch(1, 1)["images"])


def _blocks(num_blocks, batch, keep):
    per = batch // num_blocks
    return [(k, slice(k * per, (k + 1) * per)) for k in keep]


def test_per_process_blocks_equal_the_whole_batch(mnist):
    """Two "processes" holding blocks {0,1,2,3} and {4,5,6,7} of 8 (and one holding the odd
    blocks) load exactly their rows of what one process holding all 8 loads, random
    augmentation included: a batch does not depend on how devices are spread."""
    whole = _loader(mnist, batch=32, shards=_blocks(8, 32, range(8))).batch(1, 2)
    halves = [_loader(mnist, batch=32, shards=_blocks(8, 32, keep)).batch(1, 2)
              for keep in (range(4), range(4, 8))]
    odd = _loader(mnist, batch=32, shards=_blocks(8, 32, (1, 3, 5, 7))).batch(1, 2)
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
        np.testing.assert_array_equal(odd[key], whole[key].reshape(8, 4, *whole[key].shape[1:])
                                      [1::2].reshape(-1, *whole[key].shape[1:]))
    assert halves[0]["images"].shape[0] == 16
    one_block = _loader(mnist, batch=32).batch(1, 2)  # one block: another random stream
    np.testing.assert_array_equal(one_block["ids"], whole["ids"])
    assert not np.array_equal(one_block["images"], whole["images"])
    with pytest.raises(ValueError, match="do not fit"):
        _loader(mnist, batch=32, shards=_blocks(4, 64, [3])).batch(0, 0)


def test_prefetch_propagates_errors_and_stops():
    def produce(k):
        if k == 3:
            raise RuntimeError("boom at 3")
        return k * 10
    got = []
    with pytest.raises(RuntimeError, match="boom at 3"):
        for k, v in pipeline.prefetched(produce, iter(range(10)), 2):
            got.append(v)
    assert got == [0, 10, 20]
    gen = pipeline.prefetched(lambda k: k, iter(range(10**9)), 2)
    assert next(gen) == (0, 0)
    gen.close()     # the worker thread stops instead of running forever
    assert [v for _, v in pipeline.prefetched(lambda k: k + 1, iter(range(4)), 0)] == [1, 2, 3, 4]


def test_eval_batches_padding_and_hosts(mnist):
    src, _ = mnist
    tf = transforms.host_transform("none", "mnist")
    index = np.arange(70)
    labels = src.test.labels[index]
    batches = list(pipeline.eval_batches(src.test, index, labels, 32, transform=tf))
    assert len(batches) == pipeline.num_eval_batches(70, 32) == 3
    assert [b["mask"].sum() for b in batches] == [32, 32, 6]
    np.testing.assert_array_equal(np.concatenate([b["labels"][b["mask"]] for b in batches]), labels)
    np.testing.assert_array_equal(batches[2]["images"][6:], np.repeat(batches[0]["images"][:1],
                                                                       26, axis=0))
    halves = [list(pipeline.eval_batches(src.test, index, labels, 32, transform=tf,
                                         shards=_blocks(4, 32, keep)))
              for keep in ((0, 1), (2, 3))]
    for key in batches[2]:
        np.testing.assert_array_equal(np.concatenate([halves[0][2][key], halves[1][2][key]]),
                                      batches[2][key])
    with pytest.raises(ValueError, match="batch_size"):
        list(pipeline.eval_batches(src.test, index, labels, 0, transform=tf))


def test_val_loader_reads_test_split_for_overfit(mnist):
    src, _ = mnist
    split = distortion.make_split(src, distortion.DistortionConfig(ablation="overfit"))
    tf = transforms.host_transform("none", src.family)
    loader = pipeline.ValLoader(src, split, PermSampler(split.val_index.size, 50, 0), tf, seed=0)
    b = loader.batch(0, 0)
    assert set(b) == {"images", "labels"}
    ids = PermSampler(split.val_index.size, 50, 0).batch_ids(0, 0)
    np.testing.assert_array_equal(b["labels"], src.test.labels[ids])
    ref = tf(src.test.images(ids), np.random.default_rng(0))
    np.testing.assert_array_equal(b["images"], ref)


def test_bad_loader_arguments(mnist):
    src, split = mnist
    tf = transforms.host_transform("none", src.family)
    with pytest.raises(TypeError, match="sampler"):
        pipeline.TrainLoader(src, split, object(), tf, seed=0)
    with pytest.raises(ValueError, match="ids outside"):
        pipeline.TrainLoader(src, split, PermSampler(10**6, 32, 0), tf, seed=0).batch(0, 0)


def test_eval_sets(mnist):
    src, split = mnist
    tf = transforms.host_transform("none", src.family)
    data, index, labels = pipeline.eval_set(src, split, "val")
    assert data is src.train
    val = list(pipeline.eval_batches(data, index, labels, 128, transform=tf))
    assert sum(b["mask"].sum() for b in val) == 500
    np.testing.assert_array_equal(np.concatenate([b["labels"][b["mask"]] for b in val]),
                                  split.val_labels)
    data, index, labels = pipeline.eval_set(src, split, "test")
    test = list(pipeline.eval_batches(data, index, labels, 256, transform=tf))
    assert len(test) == 4 and sum(b["mask"].sum() for b in test) == 1000
    data, index, labels = pipeline.eval_set(src, split, "test", limit=100)
    assert index.size == 100 and np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(labels, src.test.clean_labels[index])
    with pytest.raises(ValueError, match="which"):
        pipeline.eval_set(src, split, "train")


def test_val_loader_decodes_deterministically(mnist):
    src, split = mnist

    class NoRandomDecode(sources.ArraySplit):
        def train_images(self, idx, rng):
            raise AssertionError("validation must not use the random train decode")

    guarded = sources.Source(src.name, 10, src.image_shape, src.family, src.val_size, "label",
                             NoRandomDecode(src.train.images(np.arange(len(src.train))),
                                            src.train.labels), src.test)
    loader = pipeline.ValLoader(guarded, split, PermSampler(500, 100, 0),
                                transforms.host_transform("none", "mnist"), seed=0)
    assert loader.batch(0, 0)["images"].shape == (100, 28, 28, 1)
