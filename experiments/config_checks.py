"""Validation of an experiment `Config`, in two stages, both run before anything is
written to the workdir:

- `static_errors(config)`: the settings alone (ranges, choices, combinations);
- `data_errors(config, ...)`: settings against the loaded data (image size, sizes of the
  train/validation sets, divisibility by the number of devices).

Each error is one line naming the flag and what is allowed.
"""
from __future__ import annotations

import math

from experiments import methods
from experiments.config import (MAX_DEFAULT_HYPER_BATCH, Config, field_specs, hyper_batch_size,
                                hyper_val_rows, parse_image_size)


def static_errors(config: Config) -> list[str]:
    """Errors found from the settings alone; one line each, naming the flag."""
    c, errs = config, []

    def need(ok: bool, flag: str, allowed: str):
        if not ok:
            errs.append(f"--{flag}={getattr(c, flag)!r}: {allowed}")

    for f in field_specs():
        choices = f.metadata.get("choices")
        if choices is not None:
            need(getattr(c, f.name) in choices, f.name, f"allowed: {', '.join(choices)}")
    need(bool(c.dataset), "dataset", "must name a dataset (mnist5k or a TFDS name)")
    need(math.isfinite(c.imbalance_ratio) and c.imbalance_ratio >= 1, "imbalance_ratio",
         "allowed: a number >= 1")
    need(0 <= c.noise_ratio < 1, "noise_ratio", "allowed: 0 <= NR < 1")
    need(0 < c.subsample_ratio <= 1, "subsample_ratio", "allowed: 0 < SR <= 1")
    need(not c.svhn_extra or c.dataset == "svhn_cropped", "svhn_extra",
         "only allowed with --dataset=svhn_cropped")
    try:
        parse_image_size(c.image_size)
    except ValueError as err:
        errs.append(f"--{err}")
    need(c.val_size >= 0, "val_size", "allowed: an integer >= 0 (0 = dataset default)")
    need(c.epochs >= 1, "epochs", "allowed: an integer >= 1")
    for name in ("batch_size", "eval_batch_size", "solver_iters", "checkpoint_every",
                 "upsample", "max_nonfinite_steps"):
        need(getattr(c, name) >= 1, name, "allowed: an integer >= 1")
    need(0 <= c.data_workers <= 64, "data_workers", "allowed: an integer in [0, 64] (0 = auto)")
    need(c.steps_per_dispatch >= 0, "steps_per_dispatch", "allowed: an integer >= 0 (0 = auto)")
    for name in ("learning_rate", "hyper_lr", "neumann_alpha", "mwn_lr"):
        v = getattr(c, name)
        need(math.isfinite(v) and v > 0, name, "allowed: a finite number > 0")
    need(math.isfinite(c.solver_tol) and c.solver_tol >= 0, "solver_tol",
         "allowed: a finite number >= 0")
    need(0 <= c.momentum < 1, "momentum", "allowed: 0 <= momentum < 1")
    need(0 <= c.rmsprop_decay < 1, "rmsprop_decay", "allowed: 0 <= decay < 1")
    if c.soft_norm == "row" and c.table_optimizer != "rmsprop_local":
        errs.append(f"--soft_norm=row (the default): needs --table_optimizer=rmsprop_local, "
                    f"not {c.table_optimizer}; with {c.table_optimizer} pass "
                    "--soft_norm=coordinate")
    for name in ("hyper_lr_aug", "hyper_lr_weight", "hyper_lr_soft"):
        v = getattr(c, name)
        need(math.isfinite(v) and v >= 0, name, "allowed: a finite number >= 0 (0 = --hyper_lr)")
    need(math.isfinite(c.device_memory_gb) and c.device_memory_gb >= 0, "device_memory_gb",
         "allowed: a number of GiB >= 0 (0 = the device's own memory)")
    need(math.isfinite(c.weight_decay) and c.weight_decay >= 0, "weight_decay",
         "allowed: a finite number >= 0")
    need(math.isfinite(c.warmup_epochs) and c.warmup_epochs >= 0, "warmup_epochs",
         "allowed: a number >= 0 (capped at --epochs)")
    for name in ("hyper_batch_size", "hyper_steps_per_epoch", "max_steps_per_epoch",
                 "eval_limit", "log_every",
                 "num_devices", "seed", "hyper_start_epoch", "stop_after_epoch",
                 "checkpoint_every_steps"):
        need(getattr(c, name) >= 0, name, "allowed: an integer >= 0")
    if errs or c.method not in methods.METHODS:
        return errs
    # combinations
    method = methods.get(c.method)
    if method.hyper_steps:
        need(c.hyper_start_epoch < c.epochs, "hyper_start_epoch",
             f"must be < --epochs={c.epochs} for --method={c.method} (else no hyper step runs)")
    if c.symmetric_kl != "auto" and "soft" not in method.table:
        soft = ", ".join(m.name for m in methods.METHODS.values() if "soft" in m.table)
        errs.append(f"--symmetric_kl={c.symmetric_kl}: only applies to methods with soft "
                    f"labels ({soft}), not --method={c.method}; leave it at auto")
    for name, default in (("mwn_lr", 1e-3), ("mwn_normalize", False)):
        if getattr(c, name) != default and method.reweight != "mwn":
            errs.append(f"--{name}={getattr(c, name)}: only applies to --method=mwn, not "
                        f"--method={c.method}")
    if c.reweight_scope != "all" and method.reweight == "none":
        errs.append(f"--reweight_scope={c.reweight_scope}: only applies to --method=l2rw or "
                    f"mwn, not --method={c.method}")
    if c.upsample != 1 and "aug" not in method.run_table(c.init_warp):
        errs.append(f"--upsample={c.upsample}: only applies to the warp of autodo_* methods "
                    f"(or --init_warp), not --method={c.method}")
    if c.init_warp and "aug" in method.table:
        errs.append(f"--init_warp=True: only for methods without AutoDO's warp; --method={c.method} "
                    "already warps with its table's λ_A")
    if c.host_policy != "auto" and c.host_policy != "color_subset" and not c.colour_policy:
        errs.append(f"--colour_policy=False: only applies with --host_policy=auto or "
                    f"color_subset, not {c.host_policy}")
    if c.train_on_val and not method.table:
        errs.append(f"--train_on_val=True: only for autodo_* methods (a table with a row per "
                    f"training example); --method={c.method} trains on "
                    f"{method.train_on!r}, use train_plus_val to train on both")
    if method.trains_on(c.train_on_val) != "train":
        need(c.ablation == "none", "ablation",
             f"only 'none' with --method={c.method}"
             f"{' --train_on_val=True' if c.train_on_val else ''} (it uses the validation "
             "split for training)")
    if c.ablation == "overfit" and not method.uses_val_batches:
        errs.append(f"--ablation=overfit: only changes the validation batches of hyper or "
                    f"look-ahead steps; --method={c.method} has none")
    return errs


def data_errors(config: Config, *, image_shape: tuple[int, ...], num_classes: int,
                num_train: int, num_val: int, num_test: int, num_devices: int,
                model_error: str | None = None) -> list[str]:
    """Errors of the settings against the data and devices; one line each."""
    c, errs = config, []
    if model_error:
        errs.append(f"--model={c.model}: does not fit --dataset={c.dataset} images of shape "
                    f"{tuple(image_shape)}: {model_error}")
    if num_classes < 2:
        errs.append(f"--dataset={c.dataset}: needs >= 2 classes, has {num_classes}")
    if c.imbalance_ratio != 1 and num_classes < 2:
        errs.append(f"--imbalance_ratio={c.imbalance_ratio}: needs >= 2 classes")
    method = methods.get(c.method)
    rows = {"train": num_train, "val": num_val, "train+val": num_train + num_val}[
        method.trains_on(c.train_on_val)]
    if c.batch_size > rows:
        errs.append(f"--batch_size={c.batch_size}: larger than the {rows} training examples of "
                    f"--method={c.method} (after IR/NR/SR); allowed: <= {rows}")
    n = c.num_devices or num_devices
    val_rows = hyper_val_rows(c, num_train=num_train, num_val=num_val, num_test=num_test)
    if method.hyper_steps:
        if c.hyper_batch_size > num_train:
            errs.append(f"--hyper_batch_size={c.hyper_batch_size}: larger than the {num_train} "
                        f"train rows; allowed: <= {num_train}")
        if c.hyper_batch_size > val_rows:
            errs.append(f"--hyper_batch_size={c.hyper_batch_size}: larger than the {val_rows} "
                        f"validation examples; allowed: <= {val_rows}")
        if not c.hyper_batch_size and hyper_batch_size(c, num_train, val_rows, n) == 0:
            errs.append(f"--hyper_batch_size=0: the automatic size min({MAX_DEFAULT_HYPER_BATCH}, "
                        f"{val_rows} validation examples, {num_train} train rows) has no multiple "
                        f"of the {n} devices; pass --hyper_batch_size")
    if method.reweight != "none":
        if c.batch_size > val_rows:
            errs.append(f"--batch_size={c.batch_size}: --method={c.method} draws clean batches "
                        f"of this size from the {val_rows} validation examples; allowed: "
                        f"<= {val_rows}")
    if c.num_devices > num_devices:
        errs.append(f"--num_devices={c.num_devices}: only {num_devices} devices are visible")
    names = ["batch_size", "eval_batch_size"] + (["hyper_batch_size"] if method.hyper_steps else [])
    for name in names:
        if getattr(c, name) % n:
            errs.append(f"--{name}={getattr(c, name)}: must be a multiple of the {n} devices")
    return errs
