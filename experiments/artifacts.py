"""Files of a run directory other than checkpoints, written atomically, and their readers.

- ``config.json``: the Config of the run (see experiments.config);
- ``summary.json``: the final numbers (see experiments.summary);
- ``final_table.npz``: the learned per-example table at the end of training, one row per
  training example, with the labels needed to analyse it. Keys:
    ``aug_p`` (N|1, K), ``aug_m`` (N|1, K) augmentation probability / magnitude logits,
    ``weight`` (N,) loss-weight logits, ``soft`` (N, C) soft-label logits (each only when
    the method learns it); ``given_labels`` (N,), ``clean_labels`` (N,), ``noisy`` (N,)
    bool, ``train_index`` (N,); scalars ``num_classes``, ``method``,
    ``clean_labels_known`` (False for user data: ``clean_labels`` are then the given labels
    before synthetic noise and ``noisy`` marks only the synthetically redrawn labels);
    ``op_names`` (K,).
- ``metrics.jsonl``: read here (:func:`read_metrics`), written by
  ``experiments.metric_writer``.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping

import numpy as np

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "final_table.npz"
METRICS_FILE = "metrics.jsonl"


def atomic_write(path: str, write) -> None:
    """Calls ``write(binary_file)`` on a temporary file beside `path`, then renames it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON, atomically (temp file + rename)."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def save_final_table(workdir: str, fields: Mapping[str, np.ndarray], **labels: Any) -> str:
    """Writes ``final_table.npz`` atomically; returns its path."""
    arrays = {k: np.asarray(v) for k, v in fields.items()}
    arrays.update({k: np.asarray(v) for k, v in labels.items()})
    path = os.path.join(workdir, TABLE_FILE)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def load_final_table(workdir: str) -> dict[str, np.ndarray]:
    """Reads ``final_table.npz`` into a dict of arrays (scalars as 0-d arrays)."""
    path = os.path.join(workdir, TABLE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: the run has not finished")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_metrics(workdir: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of ``workdir/metrics.jsonl`` (optionally of one kind); [] if absent."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
    return out


def volatile_summary_field(name: str) -> bool:
    """Summary fields that differ between any two runs of one configuration: times and
    rates (``*_s``: wall_time_s, pass_time_s, images_per_s, ...) and the workdir."""
    return name == "workdir" or name.endswith("_s")


def run_differences(workdir_a: str, workdir_b: str) -> list[str]:
    """How two finished runs differ in their results: summary.json (without the
    :func:`volatile_summary_field` s), every array of final_table.npz (bitwise) and every record of
    metrics.jsonl (without the ``*time_s`` fields). [] when they are the same.
    """
    out = []
    sa, sb = (read_json(os.path.join(w, SUMMARY_FILE)) for w in (workdir_a, workdir_b))
    for k in sorted(set(sa) | set(sb)):
        if not volatile_summary_field(k) and sa.get(k) != sb.get(k):
            out.append(f"summary {k}: {sa.get(k)!r} != {sb.get(k)!r}")
    tables = [os.path.exists(os.path.join(w, TABLE_FILE)) for w in (workdir_a, workdir_b)]
    if tables[0] != tables[1]:
        out.append(f"{TABLE_FILE} exists in one run only")
    elif tables[0]:
        ta, tb = load_final_table(workdir_a), load_final_table(workdir_b)
        for k in sorted(set(ta) | set(tb)):
            if k not in ta or k not in tb or not np.array_equal(ta[k], tb[k]):
                diff = ("missing in one" if k not in ta or k not in tb or ta[k].shape != tb[k].shape
                        else f"max |diff| {np.max(np.abs(ta[k].astype(float) - tb[k].astype(float)))}")
                out.append(f"table {k}: {diff}")

    def strip(workdir):
        return [{k: v for k, v in r.items() if not k.endswith("time_s")}
                for r in read_metrics(workdir)]
    ma, mb = strip(workdir_a), strip(workdir_b)
    if ma != mb:
        bad = next((i for i, (a, b) in enumerate(zip(ma, mb)) if a != b), min(len(ma), len(mb)))
        out.append(f"metrics.jsonl: {len(ma)} vs {len(mb)} records, first difference at "
                   f"record {bad}")
    return out
