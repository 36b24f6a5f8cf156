"""Where a run is, as a checkpoint records it: the data position (at any step), the
counters the state does not hold, the metric sums of the epoch in progress and the
evaluation history. The inner and hyper steps done are the state's own counters
(``TrainState.step`` / ``hyper_count``), not kept here.

A checkpoint may sit anywhere: between epochs, or inside a hyper or train pass after any
dispatch. Everything the rest of the epoch needs to produce the same record as an
uninterrupted run is here: per-step metrics are folded into float64 sums in step order
(``MetricSums``), so a resumed run adds the same numbers in the same order.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from autodo_jax import parallel

#: Step metrics that are counted, not averaged.
_NOT_AVERAGED = ("skipped",)


class Diverged(FloatingPointError):
    """The run cannot go on with finite numbers (one-line message)."""


class MetricSums:
    """Running sums of step metrics over the steps that were applied.

    Steps whose ``"skipped"`` metric is 1 (a non-finite update, left out by the step) are
    counted, not summed; ``run`` is the number of skipped steps since the last applied
    one. Device metrics are queued by :meth:`add` and read in one transfer by
    :meth:`flush` (a sync point; the trainer flushes every few dispatches).
    """

    def __init__(self, sums: Mapping[str, float] | None = None, count: int = 0,
                 skipped: int = 0, run: int = 0):
        self.sums = dict(sums or {})
        self.count, self.skipped, self.run = int(count), int(skipped), int(run)
        self._pending: list[Any] = []

    def add(self, metrics: Mapping[str, Any]) -> None:
        """Queues one dispatch's metrics: scalars (one step) or arrays (K,) (K steps; a
        bool ``"valid"`` (K,) entry marks the steps that ran)."""
        self._pending.append(metrics)

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = parallel.fetch(self._pending), []
        for m in pending:
            cols = {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in m.items()}
            steps = len(next(iter(cols.values())))
            valid = cols.pop("valid", np.ones(steps))
            for i in range(steps):
                if not valid[i]:
                    continue
                if cols.get("skipped", np.zeros(steps))[i]:
                    self.skipped += 1
                    self.run += 1
                    continue
                self.run = 0
                self.count += 1
                for k, v in cols.items():
                    if k not in _NOT_AVERAGED and v.shape == (steps,):
                        self.sums[k] = self.sums.get(k, 0.0) + float(v[i])

    def means(self, prefix: str) -> dict[str, float]:
        """``{prefix + name: mean over applied steps}`` plus ``prefix + "skipped"`` (count)."""
        self.flush()
        out = {(k if k.startswith(prefix) else prefix + k): s / self.count
               for k, s in self.sums.items()} if self.count else {}
        out[prefix + "skipped"] = self.skipped
        return out

    def to_json(self) -> dict[str, Any]:
        self.flush()
        return {"sums": self.sums, "count": self.count, "skipped": self.skipped, "run": self.run}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None, run: int = 0) -> "MetricSums":
        return cls(**d) if d else cls(run=run)


@dataclasses.dataclass
class Progress:
    """A run's position and bookkeeping (JSON in every checkpoint's metadata).

    Attributes:
      epoch: completed epochs (the epoch in progress is ``epoch``, 0-based).
      hyper_done, train_done: steps done of the epoch in progress's hyper / train pass
        (the steps done in total are the state's ``step`` / ``hyper_count``).
      train_images, hyper_images: images consumed; wall_time_s: time of all sessions.
      hyper_time_s, train_time_s: time spent in the passes of the epoch in progress.
      runs: consecutive skipped steps at the end, per kind ("hyper", "train").
      sums: MetricSums of the epoch in progress, per kind.
      history: one record per completed epoch.
    """
    epoch: int = 0
    hyper_done: int = 0
    train_done: int = 0
    train_images: int = 0
    hyper_images: int = 0
    wall_time_s: float = 0.0
    hyper_time_s: float = 0.0
    train_time_s: float = 0.0
    runs: dict = dataclasses.field(default_factory=lambda: {"hyper": 0, "train": 0})
    sums: dict = dataclasses.field(default_factory=dict)
    history: list = dataclasses.field(default_factory=list)

    def pass_sums(self, kind: str) -> MetricSums:
        """The MetricSums of this epoch's ``kind`` pass (created on first use)."""
        if kind not in self.sums:
            self.sums[kind] = MetricSums(run=self.runs[kind])
        return self.sums[kind]

    def advance(self, kind: str, metrics: Mapping[str, Any], steps: int, images: int,
                seconds: float) -> None:
        """Books one dispatch of ``steps`` steps of the epoch's ``kind`` ("hyper" |
        "train") pass: its metrics (see :meth:`MetricSums.add`), position and counters."""
        self.pass_sums(kind).add(metrics)
        for name, inc in ((f"{kind}_done", steps), (f"{kind}_images", images),
                          (f"{kind}_time_s", seconds)):
            setattr(self, name, getattr(self, name) + inc)

    def close_epoch(self) -> dict[str, Any]:
        """The pass part of the epoch record (means, skipped counts, pass times); moves to
        the next epoch's first step."""
        rec: dict[str, Any] = {}
        for kind, prefix in (("hyper", "hyper_"), ("train", "train_")):
            if kind in self.sums:
                s = self.sums.pop(kind)
                rec.update(s.means(prefix), **{f"{kind}_time_s": getattr(self, f"{kind}_time_s")})
                self.runs[kind] = s.run
        self.epoch += 1
        self.hyper_done = self.train_done = 0
        self.hyper_time_s = self.train_time_s = 0.0
        return rec

    def skipped_totals(self) -> dict[str, int]:
        """Skipped inner and hyper steps over the completed epochs."""
        return {"skipped_inner_steps": int(sum(r.get("train_skipped", 0) for r in self.history)),
                "skipped_hyper_steps": int(sum(r.get("hyper_skipped", 0) for r in self.history))}

    def to_meta(self) -> dict[str, Any]:
        d = dataclasses.asdict(dataclasses.replace(self, sums={}))
        d["sums"] = {k: s.to_json() for k, s in self.sums.items()}
        return d

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "Progress":
        fields = {f.name for f in dataclasses.fields(cls)}
        p = cls(**{k: v for k, v in meta.items() if k in fields and k != "sums"})
        p.sums = {k: MetricSums.from_json(v) for k, v in meta.get("sums", {}).items()}
        return p


def step_counts(state: Any) -> dict[str, int]:
    """``{"train": state.step, "hyper": state.hyper_count}`` of a ``train.TrainState`` on
    the host: the inner and hyper steps done (skipped ones included); their sum is a
    checkpoint's number. Reading them waits for the state's last dispatch."""
    step, hyper = parallel.fetch((state.step, state.hyper_count))
    return {"train": int(step), "hyper": int(hyper)}


def format_duration(seconds: float) -> str:
    """``"4m05s"``, or ``"1h02m03s"`` from an hour on; negative times count as 0."""
    s = int(max(seconds, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_line(epoch: int, epochs: int, step: int, metrics: Mapping[str, float],
                  images_per_s: float, eta_s: float, extra: str = "",
                  skipped: Mapping[str, int] | None = None) -> str:
    """One progress line: ``"epoch 2/60 step 120 loss 0.5123 acc 84.4%<extra> [skipped 3
    inner, 1 hyper ]img/s 250 ETA 4m05s"``.

    Args:
        epoch: the epoch in progress, 1-based; ``step``: inner steps done in total.
        metrics: ``train_loss`` and ``train_accuracy`` (means over the applied steps).
        extra: inserted after the accuracy (e.g. the epoch's val and test accuracy).
        skipped: skipped (non-finite) steps of the epoch by kind ("inner", "hyper"); the
            line names the kinds with any.
    """
    counts = [f"{int(n)} {kind}" for kind, n in (skipped or {}).items() if n]
    shown = f" skipped {', '.join(counts)}" if counts else ""
    eta = format_duration(eta_s) if math.isfinite(eta_s) else "?"
    return (f"epoch {epoch}/{epochs} step {step} "
            f"loss {metrics.get('train_loss', float('nan')):.4f} "
            f"acc {100 * metrics.get('train_accuracy', float('nan')):.1f}%{extra}{shown} "
            f"img/s {images_per_s:.0f} ETA {eta}")
