"""experiments.workdir: the atomic writer, the split file, the readers."""
import dataclasses
import json
import os

import numpy as np
import pytest

from autodo_jax.data import distortion, sources
from autodo_jax.data.distortion import DistortionConfig
from experiments import workdir as workdir_lib


def _source(name="toy", classes=10, per_class=200):
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(classes), per_class))
    return sources.Source(name, classes, (2, 2, 1), "mnist", 100, "label",
                          sources.ArraySplit(np.zeros((labels.size, 2, 2, 1), np.uint8), labels),
                          sources.ArraySplit(np.zeros((50, 2, 2, 1), np.uint8),
                                             np.arange(50) % classes))


def test_atomic_write_bytes_text_and_a_writer(tmp_path):
    path = str(tmp_path / "new" / "f.bin")   # the directory is created
    workdir_lib.atomic_write(path, b"\x00\x01")
    assert open(path, "rb").read() == b"\x00\x01"
    workdir_lib.atomic_write(path, "grüße\n")
    assert open(path, encoding="utf-8").read() == "grüße\n"
    workdir_lib.atomic_write(path, lambda f: np.save(f, np.arange(3)))
    np.testing.assert_array_equal(np.load(path), np.arange(3))
    assert os.listdir(tmp_path / "new") == ["f.bin"]
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask   # usual permissions, not mkstemp's


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    workdir_lib.write_json(str(path), {"a": 1})
    before = path.read_bytes()

    def half_then_fail(f):
        f.write(b'{"a": ')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        workdir_lib.atomic_write(str(path), half_then_fail)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["summary.json"]
    with pytest.raises(RuntimeError):   # nothing left either when there was no old file
        workdir_lib.atomic_write(str(tmp_path / "absent.json"), half_then_fail)
    assert os.listdir(tmp_path) == ["summary.json"]
    assert workdir_lib.read_json(str(path)) == {"a": 1}


def test_read_metrics_skips_a_cut_line(tmp_path):
    lines = [json.dumps({"kind": "train", "step": 1}), json.dumps({"kind": "eval", "step": 1}),
             '{"kind": "tra']
    (tmp_path / workdir_lib.METRICS_FILE).write_text("\n".join(lines))
    assert [r["kind"] for r in workdir_lib.read_metrics(str(tmp_path))] == ["train", "eval"]
    assert workdir_lib.read_metrics(str(tmp_path), "eval") == [{"kind": "eval", "step": 1}]
    assert workdir_lib.read_metrics(str(tmp_path / "none")) == []


def test_split_file_round_trip_and_refusals(tmp_path):
    src, cfg = _source(), DistortionConfig(10, 0.2, 0.9, seed=5)
    wd = str(tmp_path / "wd")
    assert workdir_lib.load_split(wd, cfg, src) is None   # no split file yet
    split = distortion.make_split(src, cfg)
    path = workdir_lib.save_split(wd, split, cfg, src)
    assert path == os.path.join(wd, workdir_lib.SPLIT_FILE) and os.listdir(wd) == ["split.npz"]
    again = workdir_lib.load_split(wd, cfg, src)
    for f in dataclasses.fields(split):
        np.testing.assert_array_equal(getattr(again, f.name), getattr(split, f.name))
    assert again.noisy.dtype == bool and again.val_from == "train" and again.num_classes == 10
    # Integer vs float ratios are the same request.
    workdir_lib.load_split(wd, DistortionConfig(10.0, 0.2, 0.9, seed=5), src)
    before = open(path, "rb").read()
    with pytest.raises(ValueError) as err:
        workdir_lib.load_split(wd, dataclasses.replace(cfg, noise_ratio=0.1, seed=6), src)
    message = str(err.value)
    assert "\n" not in message and message.count("does not match") == 1
    assert "config.noise_ratio: saved 0.2, requested 0.1" in message
    assert "config.seed: saved 5, requested 6" in message
    with pytest.raises(ValueError, match="does not match.*source.name: saved 'toy', requested"):
        workdir_lib.load_split(wd, cfg, _source(name="other"))
    assert open(path, "rb").read() == before   # a refusal changes nothing


def test_split_file_format_is_unchanged(tmp_path):
    """The keys and meta of split.npz as earlier versions wrote them (old workdirs resume)."""
    src, cfg = _source(), DistortionConfig(4, 0.1, seed=1)
    split = distortion.make_split(src, cfg)
    path = workdir_lib.save_split(str(tmp_path), split, cfg, src)
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(["meta", "train_index", "train_labels",
                                          "train_clean_labels", "noisy", "val_index",
                                          "val_labels"])
        meta = json.loads(str(z["meta"]))
    assert meta == {"format": 1, "config": cfg.to_dict(), "val_from": "train", "num_classes": 10,
                    "source": {"name": "toy", "num_classes": 10, "train_size": 2000}}


def test_corrupt_split_file(tmp_path):
    path = tmp_path / workdir_lib.SPLIT_FILE
    path.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt or not a split file.*delete it"):
        workdir_lib.load_split(str(tmp_path), DistortionConfig(), _source())
    assert path.read_bytes() == b"not a zip file"


def _finished_run(path, accuracy, weight, wall):
    path = str(path)
    os.makedirs(path)
    workdir_lib.write_json(os.path.join(path, workdir_lib.SUMMARY_FILE),
                       {"test_accuracy_final": accuracy, "wall_time_s": wall, "workdir": path})
    workdir_lib.save_final_table(path, {"weight": np.asarray(weight, np.float32)})
    with open(os.path.join(path, workdir_lib.METRICS_FILE), "w") as f:
        f.write(json.dumps({"kind": "epoch", "epoch": 1, "loss": 0.5, "pass_time_s": wall}) + "\n")
    return path


def test_compare_runs_ignores_times_and_names_what_differs(tmp_path, capsys):
    from experiments import compare_runs
    a = _finished_run(tmp_path / "a", 0.9, [1.0, 2.0], wall=10.0)
    b = _finished_run(tmp_path / "b", 0.9, [1.0, 2.0], wall=99.0)  # only times differ
    c = _finished_run(tmp_path / "c", 0.8, [1.0, 2.5], wall=10.0)
    assert compare_runs.main([a, b]) == 0 and "same" in capsys.readouterr().out
    assert compare_runs.main([a, b, a, c]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("same")
    assert "summary test_accuracy_final: 0.9 != 0.8" in out[1] and "table weight" in out[1]
    assert compare_runs.main([a]) == 2
    assert compare_runs.main([a, str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err
