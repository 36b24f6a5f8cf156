"""Experiment configuration: one frozen dataclass and its defaults.

`Config` holds every setting of `experiments.train`; the absl flags of `train.py` are
generated from its fields, so the flag names, defaults and help text live here only.
The choices of library settings (models, solvers, curvatures, dtypes, ablations) are the
library's own name tuples. `step_config(config, ...)` gives the library's `StepConfig`.
Its validation is `experiments.config_checks`.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
from typing import Any, Iterable, Mapping

from autodo_jax import implicit, models, train
from autodo_jax.data import distortion, transforms
from experiments import methods

TRISTATE = ("auto", "true", "false")

#: The largest default hyper batch (the original's).
MAX_DEFAULT_HYPER_BATCH = 256


# ---------------------------------------------------------------------------------------
# The configuration


def _f(default, help_text: str, **meta):
    return dataclasses.field(default=default, metadata=dict(help=help_text, **meta))


@dataclasses.dataclass(frozen=True)
class Config:
    """All settings of one run. Field metadata: `help`, optional `choices`."""

    # data
    dataset: str = _f("mnist5k", "mnist5k (embedded, offline), a TFDS image-classification name, "
                      "or your own data: folder:PATH (PATH/train/<class>/*.png|jpg, optional "
                      "val/ (clean) and test/) or npz:PATH (x_train, y_train, optional x_val, "
                      "y_val, x_test, y_test, class_names).")
    data_dir: str = _f("", "TFDS data directory ('' = TFDS default).")
    label_key: str = _f("", "Label feature of the train labels (CIFAR-N: a noisy annotation; "
                        "another TFDS dataset: any ClassLabel feature with the classes of "
                        "'label', which stays the truth; '' = default).")
    svhn_extra: bool = _f(False, "svhn_cropped only: add the 531,131 'extra' digits to train.")
    image_size: str = _f("", "Resize images to H or HxW pixels: folder:/npz: data (any sizes), or "
                         "the square size of variable-size TFDS data (imagenet2012). '' = keep "
                         "the data's size (imagenet2012: 224).")
    imbalance_ratio: float = _f(10.0, "IR >= 1: classes C/2..C-1 keep 1/IR as many examples.")
    noise_ratio: float = _f(0.2, "NR in [0, 1): fraction of train labels replaced at random.")
    subsample_ratio: float = _f(1.0, "SR in (0, 1]: fraction of the train pool kept.")
    ablation: str = _f("none", "none | overfit (val batches from test) | oversplit (val = train).",
                       choices=distortion.ABLATIONS)
    val_size: int = _f(0, "Clean validation examples (0 = the dataset's default).")
    # model and method
    model: str = _f("small_cnn", "Classifier.", choices=models.MODEL_NAMES)
    method: str = _f("autodo_aws", "Training method.", choices=tuple(methods.METHODS))
    compute_dtype: str = _f("float32", "Compute dtype of the model.", choices=train.COMPUTE_DTYPES)
    # inner optimisation
    epochs: int = _f(60, "Training epochs.")
    batch_size: int = _f(32, "Global train batch size.")
    eval_batch_size: int = _f(512, "Global evaluation batch size.")
    learning_rate: float = _f(0.01, "Peak SGD learning rate (0.01: chosen on validation, docs/tuning.md).")
    momentum: float = _f(0.9, "SGD Nesterov momentum.")
    weight_decay: float = _f(1e-4, "SGD weight decay.")
    warmup_epochs: float = _f(5.0, "Linear warm-up epochs from lr/10, then cosine to lr*1e-3.")
    # hyper optimisation
    hyper_start_epoch: int = _f(15, "First epoch (0-based) that runs a pass of hyper steps.")
    hyper_batch_size: int = _f(
        0, "Global hyper batch size (train and validation batch); 0 = min(256, clean "
        "validation examples, train rows), rounded down to a multiple of the devices.")
    hyper_steps_per_epoch: int = _f(
        0, "Hyper steps per hyper epoch (0 = one pass over the train rows at the hyper batch).")
    hyper_lr: float = _f(0.05, "Peak learning rate of the tables' row RMSprop (warm-up + cosine).")
    hyper_lr_aug: float = _f(0.0, "Peak learning rate of the augmentation rows λ_A (0 = --hyper_lr).")
    hyper_lr_weight: float = _f(0.0, "Peak learning rate of the loss-weight rows λ_W (0 = --hyper_lr).")
    hyper_lr_soft: float = _f(0.3, "Peak learning rate of the soft-label rows λ_S (0 = --hyper_lr; "
                                   "0.3 chosen on validation, docs/tuning.md).")
    table_optimizer: str = _f(
        "rmsprop_local", "Row optimizer of the tables: rmsprop_local (row-local time: a row's "
        "moment decays per visit, scale-free) | rmsprop_global (the original's dense clock).",
        choices=train.TABLE_OPTIMIZERS)
    soft_norm: str = _f("row", "Soft-label rows: RMSprop per coordinate or per row vector "
                               "(row: the C logits share one second moment; rmsprop_local).",
                        choices=train.SOFT_NORMS)
    implicit_theta: str = _f(
        "centred_kernel", "θ of the implicit differentiation: head (kernel + bias) | kernel (the "
        "original) | centred_kernel (kernel on batch-centred features; same logits; the "
        "default, chosen on validation, docs/tuning.md).",
        choices=train.IMPLICIT_THETAS)
    rmsprop_decay: float = _f(0.99, "RMSprop second-moment decay (per row visit for "
                                    "rmsprop_local, per hyper step for rmsprop_global).")
    solver: str = _f("neumann", "Inverse-curvature solver.", choices=train.SOLVERS)
    solver_iters: int = _f(5, "Solver iterations (Neumann terms J, CG steps, Nystrom rank); "
                              "the maximum when --solver_tol > 0.")
    solver_tol: float = _f(0.0, "Relative-residual tolerance of the neumann and cg solvers "
                                "(0 = always solver_iters, the paper's fixed J).")
    neumann_alpha: float = _f(0.01, "Neumann step alpha.")
    neumann_scale: str = _f("ift", "Neumann scale: ift (exact) | original (no alpha prefactor).",
                            choices=implicit.NEUMANN_SCALES)
    curvature: str = _f("hessian", "Curvature of the inner problem.", choices=implicit.CURVATURES)
    symmetric_kl: str = _f("auto", "Symmetric KL for soft labels (auto = when IR != 1 or NR > 0).",
                           choices=TRISTATE)
    colour_policy: bool = _f(True, "autodo_*, l2rw, mwn: apply the dataset's colour subset policy on the host.")
    host_policy: str = _f(
        "auto", "Host augmentation of the train batches for any method: auto (the method's "
        "own: none for none, the colour subset for autodo_*, crop/flip for val_only and "
        "train_plus_val, ...) or a policy name.", choices=("auto",) + transforms.POLICY_NAMES)
    init_warp: bool = _f(
        False, "Methods without a learned warp: also warp every train image on the device "
        "with AutoDO's initial augmentation (each of the 7 ops with p = 0.2, σ(m) = 0.5). "
        "With --host_policy=color_subset this is the augmentation AutoDO starts from.")
    train_on_val: bool = _f(
        False, "autodo_*: the inner steps also train on the clean validation split, as "
        "train_plus_val does: its examples are appended to the train rows, each with its own "
        "λ row learned like every other (autodo_fixed: kept at init); the hyper loss stays on "
        "the same clean split. Off: the paper's protocol (the clean split only guides λ).")
    upsample: int = _f(1, "Super-sampling factor of the learned warp (the original: 4).")
    mwn_lr: float = _f(1e-3, "mwn: Adam learning rate of the Meta-Weight-Net MLP (constant; "
                             "the authors' noisy-label code).")
    mwn_normalize: bool = _f(False, "mwn: weights V/sum(V) per batch (the authors' imbalance "
                                    "code) instead of V/B (the paper's equations).")
    reweight_scope: str = _f(
        "all", "l2rw, mwn: the parameters that take the look-ahead's virtual step: all (the "
        "papers) or head (the linear head only; the encoder's features are computed once, so "
        "a step costs about 1.3x a plain step instead of 2.6-3.3x on a BatchNorm ResNet).",
        choices=train.REWEIGHT_SCOPES)
    # run control
    seed: int = _f(0, "Seed of everything (split, init, order, augmentation).")
    checkpoint_every: int = _f(5, "Checkpoint every this many epochs (and at the end).")
    checkpoint_every_steps: int = _f(
        0, "Also checkpoint every this many steps (inner + hyper; 0 = only at epochs). A "
           "SIGTERM always checkpoints at the next step and exits with code 75.")
    max_nonfinite_steps: int = _f(
        5, "Stop (exit code 3) after this many consecutive skipped steps (non-finite loss "
           "or update) of one kind; a pass with more skipped than applied steps stops too.")
    device_memory_gb: float = _f(
        0.0, "Memory of one device in GiB that the memory check before the run assumes (0 = "
             "what the device reports; CPU: physical memory / local CPU devices).")
    max_steps_per_epoch: int = _f(0, "Cap on steps of each pass (0 = no cap; for smoke tests).")
    eval_limit: int = _f(0, "Evaluate on at most this many val/test examples (0 = all).")
    log_every: int = _f(0, "Progress line every this many steps (0 = once per epoch).")
    num_devices: int = _f(0, "Devices of the data mesh (0 = all).")
    steps_per_dispatch: int = _f(
        0, "Steps per jit call (lax.scan over K stacked batches; 0 = 1 on CPU, 8 on GPU/TPU); "
           "every K >= 2 gives identical results, K = 1 the same to float rounding.")
    data_workers: int = _f(0, "Host pipeline threads (0 = half the cores, 1..8); results are "
                              "identical for every count.")
    stop_after_epoch: int = _f(0, "Stop (resumably) once this many epochs are done (0 = never; "
                                  "simulates preemption).")

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Fields that do not change results: they may differ between a run and its resume.
NON_RESULT_FIELDS = ("data_dir", "checkpoint_every", "checkpoint_every_steps", "log_every",
                     "stop_after_epoch", "max_nonfinite_steps", "steps_per_dispatch",
                     "data_workers", "device_memory_gb")


def field_specs() -> list[dataclasses.Field]:
    return list(dataclasses.fields(Config))


def from_dict(values: Mapping[str, Any]) -> Config:
    """Builds a Config from a mapping, refusing unknown keys (TypeError names them and the
    closest field names)."""
    error = unknown_keys_error(values)
    if error:
        raise TypeError(error)
    return Config(**dict(values))


def unknown_keys_error(keys: Iterable[str]) -> str | None:
    """"unknown config keys [...] (did you mean ...?); allowed: ..." or None if every key
    is a Config field."""
    names = [f.name for f in field_specs()]
    unknown = sorted(set(keys) - set(names))
    if not unknown:
        return None
    close = sorted({m for k in unknown for m in difflib.get_close_matches(k, names, n=2)})
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"unknown config keys {unknown}{hint}; allowed: the fields of "
            "experiments.config.Config (python -m experiments.train --helpfull)")


# ---------------------------------------------------------------------------------------
# Derived values


def symmetric_kl(config: Config) -> bool:
    if config.symmetric_kl != "auto":
        return config.symmetric_kl == "true"
    return config.imbalance_ratio != 1.0 or config.noise_ratio > 0.0


def step_config(config: Config, num_classes: int, steps_per_epoch: int,
                hyper_steps_per_epoch: int) -> train.StepConfig:
    """The library ``StepConfig`` of a run (static argument of the jit-compiled steps).

    Schedules: the inner learning rate warms up linearly from lr/10 over
    ``min(warmup_epochs, epochs)`` epochs, then follows a cosine to lr·1e-3 at the last
    step. The table learning rate has the same shape over the hyper steps, warming up over
    the first ``min(warmup_epochs, hyper epochs)`` hyper epochs.
    """
    c, method = config, methods.get(config.method)
    total = c.epochs * steps_per_epoch
    hyper_epochs = max(c.epochs - c.hyper_start_epoch, 0) if method.hyper_steps else 0
    hyper_total = max(hyper_epochs * hyper_steps_per_epoch, 1)
    # StepConfig's learn_* say which fields the table has (the inner step reads them); the
    # hyper steps that learn them run only for method.hyper_steps, and never learn the
    # shared λ_A row that --init_warp adds.
    table = method.run_table(c.init_warp)
    return train.StepConfig(
        model=c.model, num_classes=int(num_classes), compute_dtype=c.compute_dtype,
        learn_aug="aug" in table, shared_aug=method.run_shared_aug(c.init_warp),
        learn_weight="weight" in table, learn_soft="soft" in table,
        symmetric_kl=symmetric_kl(c), upsample=c.upsample, lr=c.learning_rate,
        momentum=c.momentum, nesterov=True, weight_decay=c.weight_decay,
        warmup_steps=int(round(min(c.warmup_epochs, c.epochs) * steps_per_epoch)),
        total_steps=max(total, 1), hyper_lr=c.hyper_lr,
        hyper_lr_aug=c.hyper_lr_aug or None, hyper_lr_weight=c.hyper_lr_weight or None,
        hyper_lr_soft=c.hyper_lr_soft or None, table_optimizer=c.table_optimizer,
        rmsprop_decay=c.rmsprop_decay, soft_norm=c.soft_norm, implicit_theta=c.implicit_theta,
        hyper_warmup_steps=int(round(min(c.warmup_epochs, hyper_epochs) * hyper_steps_per_epoch)),
        hyper_total_steps=hyper_total, solver=c.solver, solver_iters=c.solver_iters,
        solver_tol=c.solver_tol,
        nystrom_rank=c.solver_iters, neumann_alpha=c.neumann_alpha,
        neumann_scale=c.neumann_scale, curvature=c.curvature, reweight=method.reweight,
        mwn_lr=c.mwn_lr, mwn_normalize=c.mwn_normalize, reweight_scope=c.reweight_scope)


def parse_image_size(text: str) -> tuple[int, int] | None:
    """``--image_size``: '' -> None, "H" -> (H, H), "HxW" -> (H, W).

    Raises:
        ValueError: anything else (sizes must be integers >= 1).
    """
    if not text:
        return None
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"image_size={text!r}: allowed: '' (keep the data's size), H or HxW "
                         "with integers >= 1")
    return int(parts[0]), int(parts[-1])


def _dataset_tag(dataset: str) -> str:
    """The dataset part of a workdir name: the name itself, or for a path
    (folder:PATH, npz:PATH) "<kind>-<base name>-<hash of the dataset string>"."""
    if re.fullmatch(r"[A-Za-z0-9_.+-]+", dataset):
        return dataset
    kind, _, path = dataset.partition(":")
    base = os.path.splitext(os.path.basename(os.path.normpath(path or kind)))[0]
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "-", f"{kind}-{base}" if path else base)
    return f"{safe}-{hashlib.sha1(dataset.encode()).hexdigest()[:6]}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def result_key(config: Config) -> dict[str, Any]:
    """The fields that determine the results (config.json comparison on resume)."""
    d = config.to_dict()
    for name in NON_RESULT_FIELDS:
        d.pop(name)
    return d


def default_workdir(config: Config) -> str:
    """./workdirs/<dataset>_<method>_ir<IR>_nr<NR>_s<seed>[_<hash of other non-defaults>].

    A dataset given by path (``folder:PATH``, ``npz:PATH``) is named
    ``<kind>-<base name>-<short hash of the dataset string>``.
    """
    name = (f"{_dataset_tag(config.dataset)}_{config.method}_ir{_number(config.imbalance_ratio)}"
            f"_nr{_number(config.noise_ratio)}_s{config.seed}")
    named = {"dataset", "method", "imbalance_ratio", "noise_ratio", "seed"}
    base = result_key(Config())
    others = {k: v for k, v in result_key(config).items() if k not in named and base[k] != v}
    if others:
        digest = hashlib.sha1(json.dumps(others, sort_keys=True).encode()).hexdigest()[:8]
        name += "_" + digest
    return os.path.join("workdirs", name)


def config_mismatch(saved: Mapping[str, Any], config: Config) -> list[str]:
    """Result-relevant fields where a saved config.json differs from `config`.

    A field missing from `saved` (a workdir older than the field) counts as its default.
    """
    current = result_key(config)
    saved = {**result_key(Config()), **saved}
    diffs = []
    for key in sorted(set(current) | (set(saved) - set(NON_RESULT_FIELDS))):
        if key in NON_RESULT_FIELDS:
            continue
        if saved.get(key, "<missing>") != current.get(key, "<missing>"):
            diffs.append(f"{key}: workdir has {saved.get(key, '<missing>')!r}, "
                         f"flags give {current.get(key, '<missing>')!r}")
    return diffs


def hyper_val_rows(config: Config, *, num_train: int, num_val: int, num_test: int) -> int:
    """Examples the hyper steps draw validation batches from (by --ablation)."""
    return {"none": num_val, "overfit": num_test, "oversplit": num_train}[config.ablation]


def hyper_batch_size(config: Config, num_train: int, num_val_rows: int, num_devices: int) -> int:
    """The hyper batch of a run: --hyper_batch_size, or when it is 0,
    min(256, validation rows, train rows) rounded down to a multiple of the devices."""
    if config.hyper_batch_size:
        return config.hyper_batch_size
    b = min(MAX_DEFAULT_HYPER_BATCH, num_val_rows, num_train)
    return b - b % max(num_devices, 1)
