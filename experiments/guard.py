"""The numerical guard: when skipped steps mean that a run has diverged.

A step whose loss or update is not finite is skipped by the step itself (the state is
left unchanged) and counted in the pass's ``progress.MetricSums``. The run stops with
``progress.Diverged`` (exit code 3 in ``experiments.train``) when

- ``--max_nonfinite_steps`` steps of one kind (inner or hyper) in a row were skipped
  (checked whenever the trainer reads the step metrics), or
- a pass ends with more skipped than applied steps (checked at the end of each pass), so
  a run that diverges within fewer steps than the limit, or that skips every other step,
  stops too.

The message is one line: what diverged, at which steps, which checkpoint is the newest
(no checkpoint of a non-finite state is ever written), and what to try.
"""
from __future__ import annotations

from experiments import config as cfg_lib, methods
from experiments.progress import Diverged, MetricSums, Progress

#: Step kinds as ``Progress`` names them, and how a message names them.
_NAMES = {"train": "inner", "hyper": "hyper"}


def hints(config: cfg_lib.Config, kind: str) -> str:
    """What to try after steps of ``kind`` ("train" | "hyper") diverged (one phrase)."""
    if kind == "train":
        tries = [f"a lower --learning_rate (now {config.learning_rate:g})"]
        if methods.get(config.method).hyper_steps:
            tries.append(f"a lower --hyper_lr (now {config.hyper_lr:g}; learned loss weights "
                         "scale the inner loss)")
    else:
        tries = [f"a lower --hyper_lr (now {config.hyper_lr:g})",
                 f"a smaller --neumann_alpha (now {config.neumann_alpha:g}) or --solver=cg"
                 if config.solver == "neumann" else f"another --solver (now {config.solver})"]
    if config.compute_dtype != "float32":
        tries.append(f"--compute_dtype=float32 (now {config.compute_dtype})")
    return ", ".join(tries) + ", or check the data for extreme values"


def divergence(sums: MetricSums, kind: str, prog: Progress, config: cfg_lib.Config,
               done: int, *, end_of_pass: bool) -> str | None:
    """Why the steps of ``kind`` in the pass ``sums`` counts mean divergence, or None.

    Args:
        sums: the metric sums of the epoch's ``kind`` pass (flushed).
        kind: "train" or "hyper".
        prog: the run's position (its epoch).
        config: the run's settings (``max_nonfinite_steps`` and the hints' flags).
        done: the steps of ``kind`` done so far (the state's ``step`` / ``hyper_count``).
        end_of_pass: the pass is complete, so its skipped share is judged too.
    """
    name = _NAMES[kind]
    limit = config.max_nonfinite_steps
    if sums.run >= limit:
        return (f"{name} steps {done - sums.run + 1}-{done} (epoch {prog.epoch + 1}) had "
                f"non-finite losses or updates and were skipped: {sums.run} in a row "
                f"(--max_nonfinite_steps={limit})")
    total = sums.count + sums.skipped
    if end_of_pass and sums.skipped > sums.count:
        return (f"{sums.skipped} of the {total} {name} steps of epoch {prog.epoch + 1} "
                f"({name} steps {done - total + 1}-{done}) had non-finite losses or updates "
                "and were skipped (more than half of the pass)")
    return None


def check(prog: Progress, kind: str, config: cfg_lib.Config, newest_checkpoint: int,
          done: int, *, end_of_pass: bool) -> None:
    """Raises ``Diverged`` (one line) if the ``kind`` pass in progress has diverged.

    Reads the pending step metrics first (``MetricSums.flush``: a sync point).

    Args:
        newest_checkpoint: number of the newest checkpoint of this run (0 = none yet).
        done: the steps of ``kind`` done so far (see :func:`divergence`).
    """
    sums = prog.pass_sums(kind)
    sums.flush()
    why = divergence(sums, kind, prog, config, done, end_of_pass=end_of_pass)
    if why is None:
        return
    kept = (f"the newest checkpoint (step {newest_checkpoint}) holds the last finite state"
            if newest_checkpoint else "no checkpoint was written")
    raise Diverged(f"diverged: {why}; {kept}; try {hints(config, kind)}")
