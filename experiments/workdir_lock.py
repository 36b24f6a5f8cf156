"""One run per workdir: an advisory lock on ``<workdir>/.lock`` held while a run writes.

The lock is ``fcntl.flock`` on an open file, which the kernel drops when the holder dies
(kill -9, preemption, crash): a killed run's lock file never blocks the next run. The
file says who holds it (host, pid, start time) for the message of a refused run. With
several processes, process 0 takes the lock and tells the others (a collective).
Network filesystems: flock works on NFSv4 (emulated with POSIX locks); on a filesystem
without locks the lock is not taken and a warning is logged.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

LOCK_FILE = ".lock"


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
