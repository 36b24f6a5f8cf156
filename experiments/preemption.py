"""Preemption notices (SIGTERM): every process learns of one at the same dispatch.

- Several processes (``jax.distributed`` initialised, JAX's preemption service on, the
  default): JAX's coordination service catches SIGTERM on any process and agrees on a
  sync point; :meth:`PreemptionWatch.requested` is
  ``multihost_utils.reached_preemption_sync_point`` (the same call Orbax's
  ``CheckpointManager.reached_preemption`` makes), True on every process at the same call.
- One process: a Python SIGTERM handler sets a flag (installed from the main thread for
  the duration of the run, the previous handler restored afterwards).

Call :meth:`PreemptionWatch.requested` at every dispatch boundary (a dispatch may cover K
steps) with an id that grows by one per call, identically on every process.
"""
from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

#: Exit code of a run stopped by a preemption notice after saving its checkpoint
#: (sysexits EX_TEMPFAIL: run the same command again to resume).
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """A preemption notice arrived; the run saved a checkpoint and stops."""


class PreemptionWatch:
    """Reports, at dispatch boundaries, whether a preemption notice has arrived."""

    def __init__(self):
        self.notice = False
        self._previous = None
        self._sync = (jax.distributed.is_initialized()
                      and bool(getattr(jax.config, "jax_enable_preemption_service", True)))
        if not self._sync and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.notice = True

    def requested(self, sync_id: int) -> bool:
        """True (on every process at once) when the run should save and stop now."""
        if self._sync:
            return bool(multihost_utils.reached_preemption_sync_point(int(sync_id)))
        return self.notice

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
