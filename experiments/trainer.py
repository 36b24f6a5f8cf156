"""The training loop behind ``experiments.train``: ``train_and_evaluate(config, workdir)``.

Schedule (AUTODO.md): epochs ``0 .. hyper_start_epoch-1`` are ordinary epochs; from
``hyper_start_epoch`` on, every epoch first runs a pass of hyper steps (table rows
updated, model fixed), then one ordinary epoch (tables fixed). A hyper pass has
``--hyper_steps_per_epoch`` steps, by default one pass over the train rows at the hyper
batch size (``floor(N / hyper_batch)``, the original's hyper loader), which keeps a hyper
epoch about as costly as an ordinary one. Validation and test accuracy are measured after
every epoch.

Dispatch: the passes run ``--steps_per_dispatch`` (K) steps per jit call
(``train.make_steps``: for K >= 2 ``inner_steps`` / ``hyper_steps`` / ``reweight_steps``, a
``lax.scan`` over K stacked batches; the last dispatch of a pass is padded; K = 1 calls
``inner_step`` / ``hyper_step`` / ``reweight_step``);
``--data_workers`` threads build, stack and place the batches ahead of the step. Every
K >= 2 gives bitwise the same results (the same compiled step body); K = 1 agrees to float
rounding; the worker count changes nothing (every batch a pure function of its position).

Determinism: every random choice is a function of (seed, epoch, step): the split (seed),
the order of rows (ShardLocalSampler seeded per epoch), host augmentation
(``default_rng([seed', epoch, step, block])``) and device randomness (the state's key,
folded with the step inside the steps). So the data position is (epoch, pass, step) and
a resumed run reaches the same final numbers.

Checkpoints: at the end of every ``--checkpoint_every`` epochs, every
``--checkpoint_every_steps`` steps, and when a preemption notice (SIGTERM) arrives; all
three are taken at dispatch boundaries (a dispatch may run K steps), with the position
and the metric sums of the epoch in progress (``experiments.progress``). A preempted run
exits with ``preemption.EXIT_PREEMPTED`` after its checkpoint is written.

Numerical guard (``experiments.guard``): a step whose update is not finite is skipped by
the step itself and counted (in the progress lines and summary.json);
``--max_nonfinite_steps`` skipped steps of one kind in a row, or a pass with more skipped
than applied steps, stop the run (``Diverged``); a non-finite state is never checkpointed.

Several processes: every process runs this loop on its own blocks of each batch
(``parallel.host_shards``); what reaches the host goes through ``parallel.fetch``; files
are written by process 0 (config, split, metrics, summary, table) or collectively (Orbax).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from autodo_jax import augment, losses, parallel, train
from autodo_jax.data import pipeline
from experiments import guard, memory_check, methods, run_setup, summary as summary_lib
from experiments import workdir as workdir_lib
from experiments import config as cfg_lib
from experiments.checkpointing import (Checkpointer, CheckpointMismatchError,
                                       NonFiniteStateError)
from experiments.metric_writer import MetricWriter
from experiments.preemption import Preempted, PreemptionWatch
from experiments.progress import Diverged, Progress, progress_line, step_counts
from experiments.pipes import (Pipes, build_run, default_data_workers,
                               default_steps_per_dispatch, derive_seed, dispatches,
                               loader_position)
from experiments.run_setup import ConfigError  # noqa: F401  (re-exported for train.py)

#: Dispatches between reads of the step metrics (the numerical guard's check).
FLUSH_EVERY = 16


def host_table(state: train.TrainState, num_rows: int) -> dict[str, np.ndarray]:
    """The learned table on every host (gathered across processes: a collective), padding
    rows removed: {name: (N|1, ...)}."""
    return summary_lib.first_rows({k: np.asarray(v) for k, v in parallel.fetch(state.table).items()},
                      num_rows)


class Trainer:
    """One run: state, loaders, writers and the epoch loop (used by train_and_evaluate).

    ``step_cfg`` is the library ``StepConfig`` of the run; the loop calls the jit-compiled
    steps ``train.make_steps(step_cfg, mesh, K)`` picked for it. The inner / hyper step
    counts are the state's (``state.step``, ``state.hyper_count``); ``Progress`` holds the
    position inside the epoch.
    """

    def __init__(self, config: cfg_lib.Config, workdir: str, data: run_setup.Data, mesh,
                 pipes: Pipes, step_cfg: train.StepConfig, log: Callable[[str], None],
                 t_start: float | None = None):
        self.c, self.workdir, self.data, self.log = config, workdir, data, log
        self.step_cfg = step_cfg
        self.t_start = time.time() if t_start is None else t_start
        self.mesh, self.pipes = mesh, pipes
        self.is_main = jax.process_index() == 0
        self.ckpt = Checkpointer(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR), log=log)
        self.hyper = methods.get(config.method).hyper_steps
        self.data_workers = config.data_workers or default_data_workers()
        self.steps = train.make_steps(step_cfg, mesh, config.steps_per_dispatch or
                                      default_steps_per_dispatch())
        # set by run(): the session's start (wall time, images), dispatches so far, the
        # newest checkpoint's number, the preemption watch
        self._wall0, self._start_images, self._dispatches, self._last_saved = 0.0, 0, 0, 0
        self.watch: PreemptionWatch | None = None

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, state, which: str) -> dict[str, Any]:
        """Accuracy and loss on the validation or test set. Every process evaluates its
        blocks of each batch; the counts are reductions inside the eval step, read on
        every process (``parallel.fetch``)."""
        data, index, labels = pipeline.eval_set(self.data.source, self.data.split, which,
                                                self.c.eval_limit)
        outs = []
        shards = parallel.host_shards(self.mesh, self.c.eval_batch_size)
        for batch in pipeline.eval_batches(data, index, labels, self.c.eval_batch_size,
                                           transform=self.pipes.eval_transform, shards=shards):
            out = self.steps.eval(state, parallel.global_batch(batch, self.mesh))
            outs.append({k: out[k] for k in ("loss_sum", "correct_per_class", "count_per_class")})
        host = parallel.fetch(outs)
        correct = np.sum([o["correct_per_class"] for o in host], axis=0)
        count = np.sum([o["count_per_class"] for o in host], axis=0)
        loss_sum = sum(float(o["loss_sum"]) for o in host)
        out = {f"{which}_accuracy": float(correct.sum() / max(count.sum(), 1)),
               f"{which}_loss": loss_sum / max(int(count.sum()), 1)}
        if which == "test":
            out["test_per_class"] = summary_lib.per_class_accuracy(correct, count).tolist()
            out["test_minority_accuracy"] = summary_lib.minority_accuracy(correct, count)
        return out

    # ---------------------------------------------------------------- passes
    def hyper_pass(self, state, epoch: int, prog: Progress):
        """The rest of epoch `epoch`'s hyper pass, from step ``prog.hyper_done``."""
        p = self.pipes
        first = (epoch - self.c.hyper_start_epoch) * p.hyper_steps_per_epoch

        def produce(j):
            k = first + j
            return (p.hyper_train.batch(*loader_position(p.hyper_train, k)),
                    p.hyper_val.batch(*loader_position(p.hyper_val, k)))

        k = min(self.steps.steps_per_dispatch, p.hyper_steps_per_epoch)
        t = time.time()
        for _, n, (tb, vb, valid) in dispatches(produce, prog.hyper_done,
                                                p.hyper_steps_per_epoch, k, self.mesh,
                                                self.data_workers):
            state, m = self.steps.hyper(state, tb, vb, valid=valid)
            prog.advance("hyper", m if valid is None else {**m, "valid": valid}, n,
                         n * p.hyper_batch_size, time.time() - t)
            self.after_dispatch(state, prog, "hyper")
            t = time.time()
        self._check_guard(state, prog, "hyper", end_of_pass=True)
        return state

    def _train_produce(self, epoch: int) -> Callable[[int], Any]:
        """Host batch(es) of step j of a train pass: the train batch, plus a clean
        validation batch for look-ahead methods (l2rw, mwn)."""
        p = self.pipes
        if p.reweight_val is None:
            return lambda j: p.train.batch(epoch, j)
        first = epoch * p.steps_per_epoch
        return lambda j: (p.train.batch(epoch, j),
                          p.reweight_val.batch(*loader_position(p.reweight_val, first + j)))

    def train_pass(self, state, epoch: int, prog: Progress, t0: float):
        """The rest of epoch `epoch`'s train pass, from step ``prog.train_done``."""
        p, c = self.pipes, self.c
        k = min(self.steps.steps_per_dispatch, p.steps_per_epoch)
        t = time.time()
        for first, n, (*batches, valid) in dispatches(self._train_produce(epoch),
                                                      prog.train_done, p.steps_per_epoch, k,
                                                      self.mesh, self.data_workers):
            state, m = self.steps.train(state, *batches, valid=valid)
            prog.advance("train", m if valid is None else {**m, "valid": valid}, n,
                         n * c.batch_size, time.time() - t)
            self.after_dispatch(state, prog, "train")
            done = first + n
            if c.log_every and done // c.log_every > first // c.log_every and \
                    done < p.steps_per_epoch:
                self._progress(state, epoch, done, prog.pass_sums("train").means("train_"),
                               prog, t0)
            t = time.time()
        self._check_guard(state, prog, "train", end_of_pass=True)
        return state

    # ---------------------------------------------------------------- boundaries
    def after_dispatch(self, state, prog: Progress, kind: str) -> None:
        """Called after every dispatch (one or K steps) of a pass, on every process:
        the numerical guard, periodic step checkpoints (with --checkpoint_every_steps the
        state's step counts are read, which waits for the dispatch) and preemption."""
        self._dispatches += 1
        if self._dispatches % FLUSH_EVERY == 0:
            self._check_guard(state, prog, kind)
        every = self.c.checkpoint_every_steps
        if self.watch.requested(self._dispatches):
            saved = self.save(state, prog)
            self.ckpt.wait()
            raise Preempted(f"preempted: checkpoint step {saved} saved (epoch "
                            f"{prog.epoch + 1}, {prog.hyper_done} hyper and {prog.train_done} "
                            "inner steps into it); run the same command to resume")
        if every and sum(step_counts(state).values()) // every > self._last_saved // every:
            self.save(state, prog)

    def _check_guard(self, state, prog: Progress, kind: str, end_of_pass: bool = False) -> None:
        guard.check(prog, kind, self.c, self._last_saved, step_counts(state)[kind],
                    end_of_pass=end_of_pass)

    def save(self, state, prog: Progress) -> int:
        """Checkpoints the state at the current position (every process); returns the
        checkpoint's number (the steps of either kind done)."""
        prog.wall_time_s = self._wall0 + time.time() - self.t_start
        counts = step_counts(state)   # in the metadata too: the checkpoint format is kept
        meta = dict(prog.to_meta(), step=counts["train"], hyper_step=counts["hyper"],
                    steps_per_epoch=self.pipes.steps_per_epoch,
                    hyper_steps_per_epoch=self.pipes.hyper_steps_per_epoch)
        number = sum(counts.values())
        try:
            self.ckpt.save(number, state, meta)
        except NonFiniteStateError as err:
            raise Diverged(f"stopped: {err}; the newest checkpoint holds the last finite "
                           "state") from None
        self._last_saved = number
        return number

    def _progress(self, state, epoch: int, step_in_epoch: int, m: dict, prog: Progress,
                  t0: float, extra: str = "") -> None:
        """Progress line; `epoch` is 0-based, `step_in_epoch` the steps done in it."""
        c, p = self.c, self.pipes
        elapsed = time.time() - t0
        done_imgs = prog.train_images + prog.hyper_images - self._start_images
        ips = done_imgs / elapsed if elapsed > 0 else float("nan")
        hyper_epochs = max(0, c.epochs - max(epoch, c.hyper_start_epoch)) if self.hyper else 0
        left = ((c.epochs - epoch) * p.steps_per_epoch - step_in_epoch) * c.batch_size + \
            hyper_epochs * p.hyper_steps_per_epoch * p.hyper_batch_size
        eta = left / ips if ips and math.isfinite(ips) and ips > 0 else float("nan")
        skipped = {"inner": m.get("train_skipped", 0), "hyper": m.get(
            "hyper_skipped", prog.sums["hyper"].skipped if "hyper" in prog.sums else 0)}
        self.log(progress_line(epoch + 1, c.epochs, step_counts(state)["train"], m, ips, eta,
                               extra, skipped))

    # ---------------------------------------------------------------- loop
    def init_state(self) -> train.TrainState:
        """A fresh state: model variables (seeded by the run's seed), optimizer states and
        the method's table for the rows the inner steps train on (the split's train rows,
        then with --train_on_val the validation rows), placed on the mesh."""
        cfg = self.step_cfg
        table = train.autodo_table_init(
            np.asarray(self.data.train_labels), cfg.num_classes, aug=cfg.learn_aug,
            shared_aug=cfg.shared_aug, weight=cfg.learn_weight, soft=cfg.learn_soft)
        return train.create_train_state(jax.random.key(derive_seed(self.c.seed, 7)), cfg, table,
                                        tuple(self.data.source.image_shape), mesh=self.mesh)

    def restore(self, state) -> tuple[Any, Progress] | None:
        """The newest good checkpoint as (state, progress), or None; a checkpoint of
        another structure is refused (ConfigError) and nothing is moved."""
        try:
            restored = self.ckpt.restore_latest(state, num_rows=len(self.data.train_index))
        except CheckpointMismatchError as err:
            raise ConfigError([f"--workdir={self.workdir}: {err}; use another --workdir "
                               "(nothing was changed)"]) from None
        if restored is None:
            return None
        step, state, meta = restored
        prog = Progress.from_meta(meta)
        self.log(f"resumed from checkpoint step {step} in {self.ckpt.directory}: epoch "
                 f"{prog.epoch + 1}, {prog.hyper_done} hyper and {prog.train_done} inner steps "
                 "into it")
        return state, prog

    def run(self) -> dict[str, Any]:
        c = self.c
        state = self.init_state()
        prog = Progress()
        restored = self.restore(state)
        if restored is not None:
            state, prog = restored
        counts = step_counts(state)
        writer = MetricWriter(self.workdir, resume_epoch=prog.epoch if restored else None,
                              resume_step=counts["train"] + 1, enabled=self.is_main)
        if not restored:
            writer.write_text("config", "```\n" + json.dumps(c.to_dict(), indent=1) + "\n```")
        t0 = self.t_start  # wall time counts setup and compilation too
        self._wall0, self._start_images = prog.wall_time_s, prog.train_images + prog.hyper_images
        self._dispatches, self._last_saved = 0, sum(counts.values())
        self.watch = PreemptionWatch()
        stop = c.stop_after_epoch or c.epochs
        try:
            for epoch in range(prog.epoch, min(c.epochs, stop)):
                if self.hyper and epoch >= c.hyper_start_epoch:
                    state = self.hyper_pass(state, epoch, prog)
                state = self.train_pass(state, epoch, prog, t0)
                rec = prog.close_epoch()
                if self.data.has_val:
                    rec.update(self.evaluate(state, "val"))
                rec.update(self.evaluate(state, "test"))
                rec.update(epoch=epoch + 1, step=step_counts(state)["train"])
                prog.history.append(rec)
                writer.write("epoch", rec["step"], epoch + 1, {
                    k: v for k, v in rec.items() if k not in ("epoch", "step", "test_per_class")})
                val = f" val {100 * rec['val_accuracy']:.1f}%" if "val_accuracy" in rec else ""
                self._progress(state, epoch, self.pipes.steps_per_epoch, rec, prog, t0,
                               extra=f"{val} test {100 * rec['test_accuracy']:.1f}%")
                if (epoch + 1) % c.checkpoint_every == 0 or epoch + 1 in (c.epochs, stop):
                    self.save(state, prog)
                self.after_dispatch(state, prog, "train")  # a notice during evaluation
        finally:
            self.watch.close()
            writer.close()
            self.ckpt.wait()
        prog.wall_time_s = self._wall0 + time.time() - t0
        if prog.epoch < c.epochs:
            self.log(f"stopped after epoch {prog.epoch} (--stop_after_epoch); "
                     "run the same command again to resume")
            self.ckpt.close()
            return {"stopped_after_epoch": prog.epoch}
        out = self.finish(state, prog)
        self.ckpt.close()
        return out

    def finish(self, state, prog: Progress) -> dict[str, Any]:
        c, split, src = self.c, self.data.split, self.data.source
        method = methods.get(c.method)
        # the method's own table (none for the shared --init_warp row, which is not saved)
        rows = host_table(state, len(self.data.train_index)) if method.table else None
        table = None if rows is None else summary_lib.first_rows(rows, split.num_train)   # train split
        appended = ({} if rows is None or "weight" not in rows else
                    summary_lib.appended_rows_weights(
                        np.asarray(losses.loss_weight(rows["weight"])), split.num_train))
        if table is not None and self.is_main:
            workdir_lib.save_final_table(
                self.workdir, table, given_labels=split.train_labels,
                clean_labels=split.train_clean_labels, noisy=split.noisy,
                clean_labels_known=src.truth_known,
                train_index=split.train_index, num_classes=split.num_classes, method=c.method,
                op_names=np.array(augment.OP_NAMES))
        out = summary_lib.build_summary(
            history=prog.history, num_classes=split.num_classes, has_val=self.data.has_val,
            table=table, given=split.train_labels,
            clean=split.train_clean_labels if src.truth_known else None,
            table_fields=method.table, wall_time_s=prog.wall_time_s,
            train_images=prog.train_images, hyper_images=prog.hyper_images,
            extra={"method": c.method, "dataset": c.dataset, "model": c.model,
                   "imbalance_ratio": c.imbalance_ratio, "noise_ratio": c.noise_ratio,
                   "seed": c.seed, "num_train": split.num_train,
                   "num_val": int(split.val_index.size),
                   "num_devices": int(self.mesh.size), "epochs": c.epochs,
                   "host_policy": method.run_host_policy(c.host_policy, c.colour_policy),
                   "hyper_batch_size": self.pipes.hyper_batch_size,
                   "workdir": os.path.abspath(self.workdir), **prog.skipped_totals(),
                   **appended, **src.notes(), **mwn_curve(state)})
        if self.is_main:
            workdir_lib.write_json(os.path.join(self.workdir, workdir_lib.SUMMARY_FILE), out)
        return out


#: Loss values at which summary.json records the learned Meta-Weight-Net weight V(loss).
MWN_CURVE_LOSSES = tuple(0.5 * i for i in range(21))


def mwn_curve(state: train.TrainState) -> dict[str, Any]:
    """``{"mwn_weight_curve": {"loss": [...], "weight": [...]}}`` for a Meta-Weight-Net
    state (``{}`` otherwise): the learned weighting function on a grid of losses."""
    if not state.meta:
        return {}
    weight = train.mwn_weight_curve(state, np.asarray(MWN_CURVE_LOSSES, np.float32))
    weight = parallel.fetch(weight)
    return {"mwn_weight_curve": {"loss": list(MWN_CURVE_LOSSES),
                                 "weight": [float(w) for w in weight]}}


def train_and_evaluate(config: cfg_lib.Config, workdir: str,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs (or resumes) one experiment and returns its summary (also in summary.json).

    Raises:
      ConfigError: settings that cannot run, or steps that do not fit in device memory
        (``memory_check``; nothing has been written then), a workdir in
        use by a live run, or a checkpoint of another structure (nothing changed then).
      Preempted: a preemption notice arrived; a checkpoint was saved.
      Diverged: too many skipped (non-finite) steps (``experiments.guard``; the
        checkpoints are untouched).
    """
    t_start = time.time()
    log = log or (lambda m: print(m, flush=True) if jax.process_index() == 0 else None)
    data = run_setup.prepare(config, workdir)
    mesh, pipes, step_cfg = build_run(config, data)
    memory_check.check(config, data, mesh, pipes, step_cfg)   # still nothing written
    for key, note in data.source.notes().items():
        if isinstance(note, str):
            log(f"{key}: {note}")
    try:
        with workdir_lib.hold(workdir, log):
            run_setup.write_run_files(config, workdir, data)
            parallel.barrier("autodo_jax:run_files")  # process 0 wrote them; all read them
            return Trainer(config, workdir, data, mesh, pipes, step_cfg, log, t_start).run()
    except workdir_lib.WorkdirBusyError as err:
        raise ConfigError([str(err)]) from None
