r"""Run a grid of experiments (settings × methods × seeds × clean-val sizes), resumably,
then write the tables: ``python -m experiments.sweep --preset=mnist5k_grid --workers=2``.

Every run is one ``python -m experiments.train`` subprocess with its own workdir under
``--root`` (named like ``experiments.train``'s default workdir, so it is unique to the
run's settings). Finished runs (``summary.json`` present) are skipped; unfinished ones are
started again with the same flags, which resumes them from their newest checkpoint. So a
killed sweep (Ctrl-C, SIGTERM, a reboot) is continued by running the same command again,
and nothing that finished is repeated. ``--workers`` runs go at once (default: one per
CPU core; on a GPU machine several runs share the device, each with preallocation off).
Each run's output goes to ``<root>/logs/<run>.log``; a failed run is reported and left to
the next invocation.

When every run of the grid has finished, the report is written with
``experiments.report`` to ``--results_dir`` (default ``docs/results/<preset>``):
``results.md`` (the paper's layout, rows = methods, columns = IR-NR, top-1 test error %
mean ± std over seeds, one table per clean-val size; and the noise-handling table: weight
AUC, % of noisy labels fixed by the soft labels, % of clean labels kept, minority
accuracy), ``results.csv`` and ``accuracy_vs_val_size.png``.

  python -m experiments.sweep --preset=mnist5k_grid --workers=2
  python -m experiments.sweep --preset=mnist5k_grid --dry_run          # what would run
  python -m experiments.sweep --preset=mnist5k_grid --methods=autodo_aws,none \
      --settings=10-0.2 --val_sizes=500 --seeds=0                      # one column

Presets (``PRESETS``): ``mnist5k_grid`` (the public grid: IR 10 NR 0.2, IR 50 NR 0.1,
IR 5 NR 0.5 at 100 and 500 clean validation examples, 3 seeds) and ``tiny`` (a few-second
grid for tests).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from absl import app, flags

from experiments import config as cfg_lib
from experiments import config_checks
from experiments import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A method of a preset: (method name, extra flags that define the row's variant).
#: "+aug" variants give val_only / train_plus_val the augmentation AutoDO starts from
#: (the colour subset on the host, AutoDO's initial warp on the device).
AUTODO_START_AUG = {"host_policy": "color_subset", "init_warp": True}


@dataclasses.dataclass(frozen=True)
class Preset:
    """A grid: every combination of ``settings`` (IR, NR) × ``val_sizes`` × ``seeds`` ×
    ``methods`` (name, extra flags), on top of the ``base`` flags."""
    settings: tuple[tuple[float, float], ...]
    val_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    methods: tuple[tuple[str, Mapping[str, Any]], ...]
    base: Mapping[str, Any] = dataclasses.field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "mnist5k_grid": Preset(
        settings=((10.0, 0.2), (50.0, 0.1), (5.0, 0.5)),
        val_sizes=(100, 500),
        seeds=(0, 1, 2),
        methods=(("none", {}), ("randaugment", {}), ("autodo_fixed", {}), ("autodo_aw", {}),
                 ("autodo_aws", {}), ("autodo_aw", {"train_on_val": True}),
                 ("autodo_aws", {"train_on_val": True}),
                 ("val_only", {}), ("val_only", AUTODO_START_AUG),
                 ("train_plus_val", {}), ("train_plus_val", AUTODO_START_AUG),
                 # competitors (issue 13), AutoDO's budget (epochs, batch, lr); host: the
                 # colour subset for l2rw / mwn as AutoDO, TrivialAugment Wide for its row
                 ("trivialaugment", {}), ("l2rw", {}), ("mwn", {})),
        base={"dataset": "mnist5k"}),
    "tiny": Preset(
        settings=((10.0, 0.2),), val_sizes=(40,), seeds=(0,),
        methods=(("none", {}), ("autodo_aws", {}), ("val_only", AUTODO_START_AUG)),
        base={"dataset": "mnist5k", "epochs": 2, "batch_size": 8, "eval_batch_size": 64,
              "hyper_start_epoch": 1, "max_steps_per_epoch": 2, "eval_limit": 64,
              "subsample_ratio": 0.2, "warmup_epochs": 1.0, "checkpoint_every": 1}),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its config and workdir."""
    config: cfg_lib.Config
    workdir: str

    @property
    def name(self) -> str:
        return os.path.basename(self.workdir)

    def finished(self) -> bool:
        return os.path.exists(os.path.join(self.workdir, workdir_lib.SUMMARY_FILE))

    def flags(self) -> list[str]:
        """The ``experiments.train`` flags of this run (fields that differ from the
        defaults) and its workdir."""
        default = cfg_lib.Config()
        out = [f"--{k}={v}" for k, v in self.config.to_dict().items()
               if getattr(default, k) != v]
        return out + [f"--workdir={self.workdir}"]


def _parse_list(text: str, kind: Callable[[str], Any]) -> tuple | None:
    return tuple(kind(x) for x in text.split(",") if x) if text else None


def grid(preset: Preset, root: str, *, methods: Sequence[str] | None = None,
         settings: Sequence[str] | None = None, val_sizes: Sequence[int] | None = None,
         seeds: Sequence[int] | None = None, overrides: Mapping[str, Any] = ()) -> list[Run]:
    """The runs of ``preset`` (optionally filtered), ordered seed by seed so that a
    partial sweep already covers every cell once.

    Args:
      preset: the grid.
      root: directory of the runs' workdirs.
      methods, settings ("IR-NR" strings), val_sizes, seeds: keep only these.
      overrides: flags applied to every run on top of the preset's base.

    Raises:
      ValueError: one line per run whose flags are invalid, or a filter that matches
        nothing in the preset.
    """
    def keep(values, allowed, what):
        if allowed is None:
            return tuple(values)
        kept = tuple(v for v in values if v in allowed)
        if not kept:
            raise ValueError(f"--{what}: none of {list(allowed)} is in the preset "
                             f"({list(values)})")
        return kept

    names = [f"{ir:g}-{nr:g}" for ir, nr in preset.settings]
    chosen = keep(names, None if settings is None else
                  [f"{float(a):g}-{float(b):g}" for a, b in (s.split("-", 1) for s in settings)],
                  "settings")
    pairs = [p for p, n in zip(preset.settings, names) if n in chosen]
    method_rows = [m for m in preset.methods if methods is None or m[0] in methods]
    if not method_rows:
        raise ValueError(f"--methods: none of {list(methods)} is in the preset "
                         f"({sorted({m for m, _ in preset.methods})})")
    runs, errors = [], []
    for seed, (ir, nr), val, (method, extra) in itertools.product(
            keep(preset.seeds, seeds, "seeds"), pairs, keep(preset.val_sizes, val_sizes, "val_sizes"),
            method_rows):
        values = {**preset.base, **dict(overrides), **extra, "method": method, "seed": seed,
                  "imbalance_ratio": ir, "noise_ratio": nr, "val_size": val}
        try:
            config = cfg_lib.from_dict(values)
        except TypeError as err:
            raise ValueError(str(err)) from None
        errs = config_checks.static_errors(config)
        if errs:
            variant = "".join(f" --{k}={v}" for k, v in extra.items())
            errors.append(f"{method}{variant} seed {seed} IR {ir:g} NR {nr:g} val {val}: "
                          + "; ".join(errs))
            continue
        name = os.path.basename(cfg_lib.default_workdir(config))
        runs.append(Run(config, os.path.join(root, name)))
    if errors:
        raise ValueError("\n".join(errors))
    return runs


def _env(workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if workers > 1:  # runs sharing one accelerator must not each grab most of its memory
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


class Sweeper:
    """Runs the unfinished runs of a grid with ``workers`` subprocesses."""

    def __init__(self, runs: Sequence[Run], workers: int, log: Callable[[str], None] = print,
                 python: Sequence[str] = (sys.executable,)):
        self.runs, self.workers, self.log = list(runs), max(1, workers), log
        self.python = list(python)
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.failed: list[str] = []

    def _one(self, run: Run) -> None:
        os.makedirs(os.path.join(os.path.dirname(run.workdir), "logs"), exist_ok=True)
        log_path = os.path.join(os.path.dirname(run.workdir), "logs", run.name + ".log")
        cmd = self.python + ["-m", "experiments.train", *run.flags()]
        t0 = time.time()
        with open(log_path, "a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=_env(self.workers), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            with self._lock:
                self._procs[run.name] = proc
            rc = proc.wait()
            with self._lock:
                self._procs.pop(run.name, None)
        if self._stop.is_set():
            return
        if rc == 0 and run.finished():
            self.log(f"done {run.name} ({time.time() - t0:.0f} s)")
        else:
            self.failed.append(run.name)
            self.log(f"FAILED {run.name} (exit {rc}); see {log_path}")

    def stop(self) -> None:
        """Terminates the running subprocesses (they resume on the next invocation)."""
        self._stop.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def run(self) -> bool:
        """Runs every unfinished run; True when all runs of the grid have finished."""
        todo = [r for r in self.runs if not r.finished()]
        self.log(f"{len(self.runs)} runs: {len(self.runs) - len(todo)} finished (skipped), "
                 f"{len(todo)} to run with {self.workers} worker(s)")
        queue = list(todo)
        qlock = threading.Lock()

        def worker():
            while not self._stop.is_set():
                with qlock:
                    if not queue:
                        return
                    run = queue.pop(0)
                self.log(f"start {run.name}")
                self._one(run)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.workers)]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.log("interrupted: stopping the runs (run the same command again to resume)")
            self.stop()
            raise
        return all(r.finished() for r in self.runs)


def _define_flags() -> None:
    flags.DEFINE_enum("preset", "mnist5k_grid", list(PRESETS), "The grid to run.")
    flags.DEFINE_integer("workers", 0, "Runs at once (0 = one per CPU core).")
    flags.DEFINE_string("root", "", "Directory of the runs ('' = workdirs/sweep_<preset>).")
    flags.DEFINE_string("results_dir", "", "Where the report goes ('' = docs/results/<preset>;"
                        " 'none' = no report).")
    flags.DEFINE_string("methods", "", "Comma-separated methods to keep ('' = all).")
    flags.DEFINE_string("settings", "", "Comma-separated IR-NR settings to keep, e.g. 10-0.2.")
    flags.DEFINE_string("val_sizes", "", "Comma-separated clean-val sizes to keep.")
    flags.DEFINE_string("seeds", "", "Comma-separated seeds to keep.")
    flags.DEFINE_multi_string("set", [], "Override a train flag for every run: name=value.")
    flags.DEFINE_bool("dry_run", False, "List the runs and their state; run nothing.")


def _overrides(items: Sequence[str]) -> dict[str, Any]:
    fields = {f.name: f for f in cfg_lib.field_specs()}
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set={item}: expected name=value with a train flag name")
        default = fields[name].default
        if isinstance(default, bool):
            value: Any = text.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)):
            value = type(default)(float(text)) if isinstance(default, float) else int(text)
        else:
            value = text
        out[name] = value
    return out


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        sys.stderr.write(f"error: unexpected arguments {list(argv[1:])}\n")
        sys.exit(2)
    F = flags.FLAGS  # noqa: N806
    root = F.root or os.path.join("workdirs", f"sweep_{F.preset}")
    try:
        runs = grid(PRESETS[F.preset], root, methods=_parse_list(F.methods, str),
                    settings=_parse_list(F.settings, str),
                    val_sizes=_parse_list(F.val_sizes, int), seeds=_parse_list(F.seeds, int),
                    overrides=_overrides(F.set))
    except ValueError as err:
        sys.stderr.write("".join(f"error: {line}\n" for line in str(err).splitlines()))
        sys.exit(2)
    if F.dry_run:
        for run in runs:
            print(f"{'finished' if run.finished() else 'to run  '} {run.workdir} "
                  f"{' '.join(run.flags()[:-1])}")
        return
    workers = F.workers or os.cpu_count() or 1
    sweeper = Sweeper(runs, workers, log=lambda m: print(m, flush=True))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        complete = sweeper.run()
    except KeyboardInterrupt:
        sys.exit(130)
    if not complete:
        print(f"{len(sweeper.failed)} run(s) failed: {', '.join(sweeper.failed)}; run the same "
              "command again to retry them", flush=True)
        sys.exit(1)
    if F.results_dir != "none":
        from experiments import report  # noqa: PLC0415  (matplotlib only when reporting)
        out = F.results_dir or os.path.join("docs", "results", F.preset)
        paths = report.write_report([r.workdir for r in runs], out)
        print("report: " + ", ".join(paths), flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
