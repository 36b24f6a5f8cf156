"""A run directory: its file names, the one atomic writer, the readers, the split file, the lock.

Everything a run writes into its workdir (and everything that reads it back: the trainer,
the summary, the results, the report, the probe, the sweep) goes through this module:

- ``config.json`` (:data:`CONFIG_FILE`): the Config of the run (see experiments.config);
- ``split.npz`` (:data:`SPLIT_FILE`): the distorted split (``autodo_jax.data.distortion``
  draws it; :func:`save_split` / :func:`load_split` keep it, with the settings and the
  source it was drawn for, so that a resumed run trains on the same rows);
- ``checkpoints/`` (:data:`CHECKPOINT_DIR`): Orbax checkpoints (experiments.checkpointing);
- ``metrics.jsonl`` (:data:`METRICS_FILE`): one JSON record per line, written by
  experiments.metric_writer, read by :func:`read_metrics`; ``tensorboard/``
  (:data:`TENSORBOARD_DIR`) its TensorBoard events;
- ``summary.json`` (:data:`SUMMARY_FILE`): the final numbers (see experiments.summary);
- ``final_table.npz`` (:data:`TABLE_FILE`): the learned per-example table at the end of
  training, one row per training example, with the labels needed to analyse it. Keys:
    ``aug_p`` (N|1, K), ``aug_m`` (N|1, K) augmentation probability / magnitude logits,
    ``weight`` (N,) loss-weight logits, ``soft`` (N, C) soft-label logits (each only when
    the method learns it); ``given_labels`` (N,), ``clean_labels`` (N,), ``noisy`` (N,)
    bool, ``train_index`` (N,); scalars ``num_classes``, ``method``,
    ``clean_labels_known`` (False for user data: ``clean_labels`` are then the given labels
    before synthetic noise and ``noisy`` marks only the synthetically redrawn labels);
    ``op_names`` (K,);
- ``.lock`` (:data:`LOCK_FILE`): one run per workdir: :func:`hold` takes an advisory
  ``fcntl.flock`` on it while a run writes. The kernel drops the lock when the holder dies
  (kill -9, preemption, crash), so a killed run's lock file never blocks the next run; the
  file says who holds it (host, pid, start time) for the message of a refused run. With
  several processes, process 0 takes the lock and tells the others (a collective). On
  NFSv4 flock is emulated with POSIX locks; on a filesystem without locks the lock is not
  taken and a warning is logged.

Every file is written whole or not at all (:func:`atomic_write`), so a kill at any moment
leaves either the old file or the new one.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import zipfile
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Union

import jax
import numpy as np
from jax.experimental import multihost_utils

from autodo_jax.data.distortion import DistortionConfig, Split

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.npz"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "final_table.npz"
LOCK_FILE = ".lock"

#: What :func:`atomic_write` writes: bytes, text (UTF-8), or ``write(binary_file)``.
Content = Union[bytes, str, Callable[[BinaryIO], Any]]


def _fsync_directory(directory: str) -> None:
    """Makes a rename in ``directory`` durable (a no-op where directories cannot be synced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is atomic
    finally:
        os.close(fd)


def atomic_write(path: str, content: Content) -> None:
    """Writes ``path`` whole or not at all, and durably.

    The content goes to a new temporary file in the same directory (created with the
    usual permissions, i.e. 0666 less the umask), which is flushed, fsynced and renamed
    over ``path`` with ``os.replace``; then the directory is fsynced. On any failure
    (including an exception from a ``write`` callable) the temporary file is removed
    and ``path`` keeps its old content (or stays absent).

    Args:
      path: the file to (re)write; its directory is created if missing.
      content: bytes, a str (written as UTF-8), or a callable ``write(binary_file)``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory,
                       f".{os.path.basename(path)}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, str):
                f.write(content.encode())
            elif isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON (plus a newline), atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str) -> Any:
    """The JSON value in ``path``."""
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


# --- the split file --------------------------------------------------------------------------

_SPLIT_FORMAT = 1
_SPLIT_ARRAYS = ("train_index", "train_labels", "train_clean_labels", "noisy", "val_index",
                 "val_labels")


def _request_meta(config: DistortionConfig, source: Any | None) -> dict[str, Any]:
    """What a saved split must have been drawn for: the file format, the settings and the
    source (its content fingerprint, for user data)."""
    meta = {"format": _SPLIT_FORMAT, "config": config.to_dict()}
    if source is not None:
        meta["source"] = {"name": source.name, "num_classes": int(source.num_classes),
                          "train_size": len(source.train)}
        if getattr(source, "fingerprint", ""):
            meta["source"]["fingerprint"] = source.fingerprint
    return meta


def save_split(workdir: str, split: Split, config: DistortionConfig,
               source: Any | None = None) -> str:
    """Writes ``split`` (drawn by ``distortion.make_split(source, config)``) to
    ``<workdir>/split.npz`` atomically; returns the path."""
    arrays = {k: getattr(split, k) for k in _SPLIT_ARRAYS}
    meta = json.dumps({**_request_meta(config, source), "val_from": split.val_from,
                       "num_classes": split.num_classes}, sort_keys=True)
    path = os.path.join(workdir, SPLIT_FILE)
    atomic_write(path, lambda f: np.savez(f, meta=np.array(meta), **arrays))
    return path


def _split_mismatches(saved: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """One line per setting in which a saved split's meta differs from the request."""
    diffs = []
    for k in ("format", "config", "source"):
        if k not in expected or saved.get(k) == expected[k]:
            continue
        have, wanted = saved.get(k), expected[k]
        if isinstance(have, dict) and isinstance(wanted, dict):
            diffs += [f"{k}.{f}: saved {have.get(f)!r}, requested {wanted.get(f)!r}"
                      for f in sorted(set(have) | set(wanted)) if have.get(f) != wanted.get(f)]
        else:
            diffs.append(f"{k}: saved {have!r}, requested {wanted!r}")
    return [d + " (the dataset's content changed since the split was saved)"
            if d.startswith("source.fingerprint:") else d for d in diffs]


def load_split(workdir: str, config: DistortionConfig,
               source: Any | None = None) -> Split | None:
    """The split saved by :func:`save_split` in ``workdir``, checked against the request;
    None when the workdir has no split file.

    Raises:
        ValueError: the file is corrupt, or was saved for other settings / another source
            (one message naming every difference; the file is left as it is).
    """
    path = os.path.join(workdir, SPLIT_FILE)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: np.array(data[k]) for k in _SPLIT_ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"saved split {path!r} is corrupt or not a split file "
                         f"({type(e).__name__}: {e}); delete it to redraw the split") from e
    diffs = _split_mismatches(meta, _request_meta(config, source))
    if diffs:
        raise ValueError(f"saved split {path!r} does not match the requested settings: "
                         + "; ".join(diffs) + ". Use another workdir or the saved settings.")
    n = arrays["train_index"].shape[0]
    if any(arrays[k].shape != (n,) for k in _SPLIT_ARRAYS[:4]) or (
            arrays["val_index"].shape != arrays["val_labels"].shape):
        raise ValueError(f"saved split {path!r} is corrupt: inconsistent array shapes "
                         f"{ {k: arrays[k].shape for k in _SPLIT_ARRAYS} }")
    return Split(arrays["train_index"], arrays["train_labels"], arrays["train_clean_labels"],
                 arrays["noisy"].astype(bool), arrays["val_index"], arrays["val_labels"],
                 meta["val_from"], int(meta["num_classes"]))


# --- comparing two runs ----------------------------------------------------------------------

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


# --- the lock --------------------------------------------------------------------------------

class WorkdirBusyError(Exception):
    """Another live run holds the workdir (one-line message)."""


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            h = json.load(f)
        return f"pid {h['pid']} on {h['host']} since {h['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _try_lock(workdir: str, log: Callable[[str], None]):
    """(open file holding the lock | None, error message | None)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        f.close()
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None, (f"--workdir={workdir}: in use by a running job ({_holder(path)}); "
                          "wait for it to end or use another --workdir")
        log(f"warning: cannot lock {path} ({err}); not guarding against a second run")
        return None, None
    f.seek(0)
    f.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
    f.flush()
    return f, None


@contextlib.contextmanager
def hold(workdir: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Holds the workdir's lock for the duration of the block (creating the workdir).

    Raises:
      WorkdirBusyError: another live run holds it (nothing else was written).
    """
    f, error = _try_lock(workdir, log) if jax.process_index() == 0 else (None, None)
    if jax.process_count() > 1:
        busy = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if int(busy) and error is None:
            error = f"--workdir={workdir}: in use by a running job (see process 0's message)"
    if error:
        raise WorkdirBusyError(error)
    try:
        yield
    finally:
        if f is not None:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
