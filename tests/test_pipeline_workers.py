"""Parallel host pipeline: batches do not depend on the number of workers; stacking for
multi-step dispatches pads the last dispatch of a pass."""
import threading
import time

import numpy as np
import pytest

from autodo_jax.data import distortion, pipeline, sources, transforms
from autodo_jax.parallel import ShardLocalSampler


@pytest.fixture(scope="module")
def loader():
    src = sources.load_source("mnist5k")
    split = distortion.make_split(src, distortion.DistortionConfig(10, 0.2, seed=0))
    sampler = ShardLocalSampler(split.num_train, 1, 32, 3)
    return pipeline.TrainLoader(src, split, sampler,
                                transforms.host_transform("randaugment", src.family), seed=5)


def test_batches_identical_for_any_worker_count(loader):
    positions = [(e, s) for e in (0, 1) for s in range(4)]
    runs = {}
    for workers in (1, 2, 4):
        got = list(pipeline.prefetched(lambda pos: loader.batch(*pos), iter(positions), 2,
                                       workers=workers))
        assert [k for k, _ in got] == positions   # in order
        runs[workers] = [b for _, b in got]
    for workers in (2, 4):
        for a, b in zip(runs[1], runs[workers]):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    # and equal to the plain sequential batch of each position
    np.testing.assert_array_equal(runs[4][5]["images"], loader.batch(1, 1)["images"])


def test_workers_run_concurrently_and_errors_surface_in_order():
    active, peak, lock = [0], [0], threading.Lock()

    def produce(k):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        if k == 5:
            raise RuntimeError("boom at 5")
        return k

    got = []
    with pytest.raises(RuntimeError, match="boom at 5"):
        for _, v in pipeline.prefetched(produce, iter(range(20)), 1, workers=3):
            got.append(v)
    assert got == [0, 1, 2, 3, 4]
    assert peak[0] == 3
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        next(pipeline.prefetched(produce, iter(range(2)), 1, workers=0))


def test_stack_batches_pads_with_the_last_batch():
    batches = [{"x": np.full((2, 3), k, np.float32), "ids": np.array([k, k], np.int32)}
               for k in range(3)]
    stacked, valid = pipeline.stack_batches(batches, 4)
    assert stacked["x"].shape == (4, 2, 3) and stacked["ids"].dtype == np.int32
    np.testing.assert_array_equal(stacked["ids"][:, 0], [0, 1, 2, 2])
    np.testing.assert_array_equal(valid, [True, True, True, False])
    pair, valid = pipeline.stack_batches([(batches[0], batches[1])], 1)
    assert pair[1]["x"].shape == (1, 2, 3) and valid.tolist() == [True]
    with pytest.raises(ValueError, match="need 1 to size=2 batches, got 3"):
        pipeline.stack_batches(batches, 2)
