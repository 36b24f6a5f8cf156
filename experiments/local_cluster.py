"""Several local processes of one JAX distributed job: ``python -m experiments.train``
(or any module) on this machine, each with its own forced CPU devices.

Used by the multi-process tests and the preemption check; also a way to try a
multi-host launch on a laptop::

    python -m experiments.local_cluster --processes=2 --devices=4 -- --epochs=2

Each process gets ``JAX_COORDINATOR_ADDRESS=localhost:<free port>``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (read by
``autodo_jax.parallel.maybe_initialize_distributed``), ``JAX_PLATFORMS=cpu`` and
``--xla_force_host_platform_device_count``; CPU collectives are JAX's default (gloo).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port that was free a moment ago on localhost."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def process_env(process_id: int, num_processes: int, devices: int, port: int,
                extra: Mapping[str, str] | None = None,
                distributed: bool | None = None) -> dict[str, str]:
    """The environment of process ``process_id`` of a local job; ``distributed`` (default:
    more than one process) sets the JAX_COORDINATOR_ADDRESS variables (then even one
    process uses the distributed runtime and its gloo CPU collectives)."""
    env = dict(os.environ)
    env.update({"JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                "JAX_NUM_PROCESSES": str(num_processes), "JAX_PROCESS_ID": str(process_id),
                "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "PYTHONPATH": os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])})
    if not (num_processes > 1 if distributed is None else distributed):
        for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
            env.pop(k)
    env.update(extra or {})
    return env


class Job:
    """``num_processes`` local processes running ``python -m module *args``.

    Output of process i goes to ``<log_prefix>.<i>.log``. Always end a job with
    :meth:`wait` or :meth:`kill` (no process outlives it).
    """

    def __init__(self, args: Sequence[str], *, num_processes: int, devices: int,
                 log_prefix: str, module: str = "experiments.train",
                 env: Mapping[str, str] | None = None, distributed: bool | None = None):
        port = free_port()
        self.logs = [f"{log_prefix}.{i}.log" for i in range(num_processes)]
        self.procs: list[subprocess.Popen] = []
        try:
            for i in range(num_processes):
                with open(self.logs[i], "ab") as out:
                    self.procs.append(subprocess.Popen(
                        [sys.executable, "-m", module, *args], cwd=REPO, stdout=out,
                        stderr=subprocess.STDOUT,
                        env=process_env(i, num_processes, devices, port, env, distributed)))
        except BaseException:
            self.kill()
            raise

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def kill(self, sig: int = 9) -> None:
        """Sends ``sig`` to every process still running (SIGKILL by default) and reaps them."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass
        if sig == 9:
            for p in self.procs:
                p.wait()

    def wait(self, timeout: float, grace: float = 60.0) -> list[int]:
        """Exit codes once all processes end. A process that fails leaves the others
        ``grace`` seconds (they may be blocked in a collective) before they are killed;
        at ``timeout`` all are killed (their codes are then -9)."""
        deadline = time.time() + timeout
        failed_at = None
        try:
            while any(p.poll() is None for p in self.procs):
                now = time.time()
                if failed_at is None and any(p.poll() not in (None, 0) for p in self.procs):
                    failed_at = now
                if now > deadline or (failed_at is not None and now > failed_at + grace):
                    break
                time.sleep(0.2)
        finally:
            self.kill()
        return [p.returncode for p in self.procs]

    def output(self, i: int = 0) -> str:
        with open(self.logs[i], errors="replace") as f:
            return f.read()


def main(argv: Sequence[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices", type=int, default=4, help="forced CPU devices per process")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--log_prefix", default="local_cluster")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- then experiments.train flags")
    a = parser.parse_args(argv)
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    job = Job(rest, num_processes=a.processes, devices=a.devices, log_prefix=a.log_prefix)
    codes = job.wait(a.timeout)
    print(f"exit codes {codes}; logs {job.logs}")
    return max(codes, key=abs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
