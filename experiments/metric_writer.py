"""Metrics to ``metrics.jsonl`` (one JSON object per record) and TensorBoard events
(tensorboardX, no TensorFlow), behind one small interface.

A record is ``{"kind": str, "step": int, "epoch": int, <name>: float, ...}``; TensorBoard
gets each number as the scalar ``<kind>/<name>`` at ``step``. On resume,
`MetricWriter(..., resume_epoch=e)` drops the records of epochs after ``e`` (they belong
to the part of a killed run that is being redone) and tells TensorBoard to purge events
from the resumed step on, so both logs read as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

from experiments.workdir import METRICS_FILE, TENSORBOARD_DIR, atomic_write, read_metrics


def _plain(v: Any) -> Any:
    if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, "__array__"):
        v = np.asarray(v)
        return v.item() if v.ndim == 0 else v.tolist()
    return v


class MetricWriter:
    """Appends metric records to metrics.jsonl and TensorBoard.

    Args:
      workdir: run directory; events go to ``workdir/tensorboard`` (``workdir.TENSORBOARD_DIR``).
      resume_epoch: completed epochs of the checkpoint being resumed (None = fresh run).
      resume_step: global step of that checkpoint (TensorBoard purges events >= it).
      enabled: False on non-zero processes (writes nothing).
    """

    def __init__(self, workdir: str, *, resume_epoch: int | None = None,
                 resume_step: int = 0, enabled: bool = True):
        self._enabled = enabled
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._path = os.path.join(workdir, METRICS_FILE)
        keep = []
        if resume_epoch is not None:
            keep = [r for r in read_metrics(workdir) if r.get("epoch", 0) <= resume_epoch]
        atomic_write(self._path, "".join(json.dumps(rec) + "\n" for rec in keep))
        from tensorboardX import SummaryWriter  # local: keeps import of this module light
        purge = resume_step if resume_epoch is not None else None
        self._tb = SummaryWriter(logdir=os.path.join(workdir, TENSORBOARD_DIR), purge_step=purge)

    def write(self, kind: str, step: int, epoch: int, values: Mapping[str, Any]) -> None:
        if not self._enabled:
            return
        rec = {"kind": kind, "step": int(step), "epoch": int(epoch)}
        rec.update({k: _plain(v) for k, v in values.items()})
        with open(self._path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        for k, v in rec.items():
            if k in ("kind", "step", "epoch") or not isinstance(v, (int, float)):
                continue
            if isinstance(v, bool) or not math.isfinite(float(v)):
                continue
            self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))

    def write_text(self, tag: str, text: str) -> None:
        if self._enabled:
            self._tb.add_text(tag, text, 0)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
