"""Everything a run checks before it writes anything: data, split, model fit, workdir.

`prepare(config, workdir)` loads the source, draws (or reads) the split, checks the
settings against data, model and devices, and checks that the workdir belongs to this
configuration. Every problem becomes one line of a `ConfigError` (exit code 2 in
``experiments.train``). Only `write_run_files` writes (config.json and split.npz).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import jax
import numpy as np

from autodo_jax import models
from autodo_jax.data import distortion, sources, transforms, user_sources
from experiments import config as cfg_lib
from experiments import config_checks, methods
from experiments import workdir as workdir_lib


class ConfigError(Exception):
    """Settings that cannot run; ``lines`` holds one message per problem."""

    def __init__(self, lines):
        self.lines = [str(x) for x in lines]
        super().__init__("\n".join(self.lines))


@dataclasses.dataclass
class Data:
    """Loaded data of a run.

    Attributes:
      source: the ``sources.Source``.
      split: the ``distortion.Split`` (table row r <-> train example split.train_index[r]).
      distortion: the ``DistortionConfig`` of the split.
      train_index, train_labels: (R,) examples of source.train and labels the inner steps
        train on (the split's train rows; the validation examples for val_only; both for
        train_plus_val, validation rows appended after the train rows).
      has_val: a held-out validation split exists for model selection.
      inner: the random-access split ``train_index`` indexes (``source.train``, or train
        then a separately given validation split, see ``inner_examples``).
    """
    source: Any
    split: distortion.Split
    distortion: distortion.DistortionConfig
    train_index: np.ndarray
    train_labels: np.ndarray
    has_val: bool
    inner: Any


def distortion_config(config: cfg_lib.Config) -> distortion.DistortionConfig:
    return distortion.DistortionConfig(
        imbalance_ratio=float(config.imbalance_ratio), noise_ratio=float(config.noise_ratio),
        subsample_ratio=float(config.subsample_ratio), val_size=config.val_size or None,
        ablation=config.ablation, seed=int(config.seed))


def _flag_prefixed(message: str, default_flag: str) -> str:
    """Turns a library message "name=...: why" into "--name=...: why" when name is a flag."""
    names = {f.name for f in cfg_lib.field_specs()}
    head = message.split("=", 1)[0].split(" ", 1)[0]
    return f"--{message}" if head in names else f"{default_flag}: {message}"


def load_data(config: cfg_lib.Config) -> Data:
    c = config
    try:
        source = sources.load_source(c.dataset, data_dir=c.data_dir or None,
                                     label_key=c.label_key or None, extra=c.svhn_extra,
                                     image_size=cfg_lib.parse_image_size(c.image_size))
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError([f"--dataset={c.dataset}: {' '.join(str(err).split())}"]) from None
    except Exception as err:  # noqa: BLE001  TFDS raises anything (AssertionError, ImportError)
        raise ConfigError([
            f"--dataset={c.dataset}: cannot be loaded ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:300]}); allowed: mnist5k, folder:PATH, npz:PATH or "
            "a prepared TFDS image-classification dataset (NAME or NAME:VERSION)"]) from None
    dcfg = distortion_config(c)
    try:
        split = distortion.make_split(source, dcfg)
    except ValueError as err:
        raise ConfigError([_flag_prefixed(" ".join(str(err).split()), f"--dataset={c.dataset}")]) from None
    train_on = methods.get(c.method).trains_on(c.train_on_val)
    if source.test is None and train_on != "train":
        flag, other = (("--train_on_val=True", "leave the flag off") if c.train_on_val
                       else (f"--method={c.method}", "use another method"))
        raise ConfigError([f"{flag}: trains on the validation split, and "
                           f"--dataset={c.dataset} has no test set to evaluate on; add one "
                           f"(test/ or x_test, y_test) or {other}"])
    source = distortion.with_test_fallback(source, split)
    inner, index, labels = inner_examples(source, split, train_on)
    has_val = train_on == "train" and c.ablation != "oversplit"
    return Data(source, split, dcfg, np.asarray(index, np.int64), np.asarray(labels, np.int32),
                has_val, inner)


def inner_examples(source: Any, split: distortion.Split,
                   train_on: str) -> tuple[Any, np.ndarray, np.ndarray]:
    """``(source split, index (R,), labels (R,))`` of the rows the inner steps train on:
    the split's train rows, its validation examples, or both (validation rows after the
    train rows). The validation examples are read from the split they live in: the train
    split, or one the source gives apart (user data with val/ or x_val; then "train+val"
    reads a ``sources.ConcatSplit`` of the two)."""
    if train_on == "train":
        return source.train, split.train_index, split.train_labels
    val_data = distortion.val_source(source, split)
    if train_on == "val":
        return val_data, split.val_index, split.val_labels
    data, offset = source.train, 0
    if val_data is not source.train:
        data, offset = sources.ConcatSplit(source.train, val_data), len(source.train)
    return (data, np.concatenate([split.train_index, np.asarray(split.val_index) + offset]),
            np.concatenate([split.train_labels, split.val_labels]))


def model_fit_error(config: cfg_lib.Config, image_shape, num_classes: int,
                    resizable: bool = False) -> str | None:
    """Why the model cannot run on these images (traced abstractly), or None.

    ``resizable``: the data can be resized by ``--image_size`` (user data); the message then
    says so.
    """
    h, w = image_shape[:2]
    minimum = models.min_image_size(config.model)
    hint = "; resize them with --image_size=HxW" if resizable else ""
    if min(h, w) < minimum:
        return f"needs images of at least {minimum}x{minimum}{hint}"
    try:
        model = models.get_model(config.model, num_classes)
        jax.eval_shape(lambda k: models.init_variables(model, k, tuple(image_shape)),
                       jax.random.key(0))
    except Exception as err:  # noqa: BLE001  any trace failure means the model does not fit
        return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}{hint}"
    return None


def class_coverage_error(config: cfg_lib.Config, data: Data) -> str | None:
    """Why training cannot cover every class (a class without any train example), or None."""
    split = data.split
    train_on = methods.get(config.method).trains_on(config.train_on_val)
    clean = {"train": [split.train_clean_labels], "val": [split.val_labels],
             "train+val": [split.train_clean_labels, split.val_labels]}[train_on]
    counts = np.bincount(np.concatenate(clean).astype(np.int64), minlength=split.num_classes)
    empty = np.flatnonzero(counts == 0)
    if not empty.size:
        return None
    names = getattr(data.source, "class_names", None) or []
    named = [f"{k} ({names[k]})" if k < len(names) else str(k) for k in empty[:10]]
    which = (f"class {named[0]}" if empty.size == 1 else
             f"classes {', '.join(named)}{', ...' if empty.size > 10 else ''}")
    return (f"--imbalance_ratio={config.imbalance_ratio}: leaves no train example of {which} "
            f"(with --subsample_ratio={config.subsample_ratio}, --noise_ratio="
            f"{config.noise_ratio}); every class needs at least one: lower --imbalance_ratio "
            "or raise --subsample_ratio")


def workdir_error(workdir: str) -> str | None:
    """Why the run could not create or write `workdir`, or None. Writes nothing in an
    existing workdir; for a new one, creates and removes a probe directory beside it."""
    path = os.path.abspath(workdir)
    if os.path.isdir(path):
        ok = os.access(path, os.W_OK | os.X_OK)
        return None if ok else f"--workdir={workdir}: not writable"
    if os.path.exists(path):
        return f"--workdir={workdir}: exists and is not a directory"
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"--workdir={workdir}: cannot be created, {parent} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".autodo_probe_", dir=parent))
    except OSError as err:
        return (f"--workdir={workdir}: cannot be created in {parent} "
                f"({err.strerror or type(err).__name__})")
    return None


def check_workdir(config: cfg_lib.Config, workdir: str) -> bool:
    """Raises ConfigError if `workdir` holds a run of another configuration.

    Returns:
      True when the workdir already holds this configuration's config.json (resume).
    """
    path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
    error = workdir_error(workdir)
    if error:
        raise ConfigError([error])
    if not os.path.exists(path):
        return False
    try:
        saved = workdir_lib.read_json(path)
    except (OSError, ValueError) as err:
        raise ConfigError([f"--workdir={workdir}: unreadable {path} ({err}); "
                           "use another --workdir"]) from None
    diffs = cfg_lib.config_mismatch(saved, config)
    if diffs:
        raise ConfigError([f"--workdir={workdir}: holds a run of another configuration "
                           f"({'; '.join(diffs)}); use another --workdir or the saved flags"])
    return True


def prepare(config: cfg_lib.Config, workdir: str) -> Data:
    """All checks of a run; writes nothing. Raises ConfigError listing every problem."""
    errors = config_checks.static_errors(config)
    if errors:
        raise ConfigError(errors)
    data = load_data(config)
    src, split = data.source, data.split
    policy = methods.get(config.method).run_host_policy(config.host_policy,
                                                        config.colour_policy)
    errors = []
    allowed = transforms.allowed_policies(src.family)
    if policy not in allowed:
        flag = (f"--host_policy={policy}" if config.host_policy != "auto"
                else f"--method={config.method}: needs the host policy {policy}, which")
        errors.append(f"{flag}: the original does not define it for --dataset={config.dataset} "
                      f"(family {src.family}); policies there: {', '.join(allowed)}")
    errors += config_checks.data_errors(
        config, image_shape=tuple(src.image_shape), num_classes=int(src.num_classes),
        num_train=split.num_train, num_val=int(split.val_index.size), num_test=len(src.test),
        num_devices=jax.device_count(),
        model_error=model_fit_error(config, tuple(src.image_shape), int(src.num_classes),
                                    resizable=user_sources.parse_dataset(config.dataset) is not None))
    coverage = class_coverage_error(config, data)
    if coverage:
        errors.append(coverage)
    if errors:
        raise ConfigError(errors)
    check_workdir(config, workdir)
    try:
        saved = workdir_lib.load_split(workdir, data.distortion, src)
    except ValueError as err:
        raise ConfigError([f"--workdir={workdir}: {' '.join(str(err).split())}"]) from None
    if saved is not None and not np.array_equal(saved.train_index, split.train_index):
        raise ConfigError([f"--workdir={workdir}: its {workdir_lib.SPLIT_FILE} differs from "
                           "the split these flags draw; use another --workdir"])
    return data


def write_run_files(config: cfg_lib.Config, workdir: str, data: Data) -> None:
    """Writes config.json and split.npz (if absent); only process 0 writes."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
    if not os.path.exists(path):
        workdir_lib.write_json(path, config.to_dict())
    if not os.path.exists(os.path.join(workdir, workdir_lib.SPLIT_FILE)):
        workdir_lib.save_split(workdir, data.split, data.distortion, data.source)
