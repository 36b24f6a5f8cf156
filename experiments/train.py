r"""Train one AutoDO (or baseline) run: ``python -m experiments.train [--flags]``.

With no flags: learned augmentation + loss weights + soft labels (``autodo_aws``) on the
embedded ``mnist5k`` with imbalance ratio 10 and noise ratio 0.2, small CNN, 60 epochs
(a few minutes on 2 CPU cores); ``--method=none`` is the plain baseline with the same
settings. Outputs go to ``--workdir`` (default ``./workdirs/<dataset>_<method>_ir<IR>_nr<NR>
_s<seed>[_<hash of other changed settings>]``): config.json, split.npz, checkpoints/,
metrics.jsonl, tensorboard/, final_table.npz and summary.json. Re-running the same command
resumes from the newest good checkpoint; a workdir of another configuration is refused.

Settings can come from a config file (``experiments/configs/*.py``, ml_collections style:
``get_config(arg)`` returns every field of ``experiments.config.Config``). Precedence, from
weakest to strongest: the defaults of ``Config`` < the ``--config`` file (default:
``experiments/configs/mnist5k.py``, which equals the defaults) < the command line, either
``--config.<field>=value`` or the plain ``--<field>=value`` (giving both for one field is
an error).

Flags are checked before any work: each error is printed as one line naming the flag and
what is allowed, the exit code is 2, and nothing is written.

  python -m experiments.train                                  # main job
  python -m experiments.train --config=experiments/configs/svhn_wrn28_10.py:100-0.1 \
      --config.data_dir=~/tensorflow_datasets --config.epochs=10  # a paper setting
  python -m experiments.train --method=none                    # baseline
  python -m experiments.train --dataset=svhn_cropped --data_dir=~/tensorflow_datasets \
      --model=wrn28_10 --imbalance_ratio=100 --noise_ratio=0.1 --epochs=200 \
      --batch_size=256 --learning_rate=0.005 --hyper_start_epoch=50 --upsample=4
  python -m experiments.train --dataset=folder:~/my_data --imbalance_ratio=1 \
      --noise_ratio=0 --image_size=32 --model=resnet18   # your images as given, val/ clean
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from typing import Any, Iterable, Mapping, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import config as cfg_lib
from experiments import config_checks
from experiments.configs import base as config_files

FLAGS = flags.FLAGS


def define_flags() -> None:
    """One absl flag per Config field (same name, default and help), plus --workdir."""
    for f in cfg_lib.field_specs():
        help_text = f.metadata["help"]
        choices = f.metadata.get("choices")
        if choices is not None:
            flags.DEFINE_enum(f.name, f.default, list(choices), help_text)
        elif f.type in (bool, "bool"):
            flags.DEFINE_bool(f.name, f.default, help_text)
        elif f.type in (int, "int"):
            flags.DEFINE_integer(f.name, f.default, help_text)
        elif f.type in (float, "float"):
            flags.DEFINE_float(f.name, f.default, help_text)
        else:
            flags.DEFINE_string(f.name, f.default, help_text)
    flags.DEFINE_string(
        "compilation_cache", os.path.join("~", ".cache", "autodo_jax", "xla"),
        "Directory of JAX's persistent compilation cache: runs of the same shapes and "
        "settings reuse compiled steps (saves the compile time of every repeated run); "
        "'' = off.")
    flags.DEFINE_string("workdir", "", "Run directory ('' = ./workdirs/<derived name>).")


def define_config_flag(argv: Sequence[str]) -> None:
    """``--config`` (ml_collections' config file flag). Defined when the command line is
    parsed: defining it loads the default file and applies the ``--config.<field>``
    overrides of ``argv``."""
    config_flags.DEFINE_config_file(
        "config", config_files.DEFAULT_FILE,
        "Config file experiments/configs/<setting>.py[:ARG] giving every setting; override a "
        "field with --config.<field>=value or --<field>=value (not both).", lock_config=True,
        sys_argv=list(argv))


def resolve_config(file_values: Mapping[str, Any], file_overrides: Iterable[str],
                   plain: Mapping[str, Any]) -> cfg_lib.Config:
    """The run's Config: the config file's values (with its ``--config.<field>`` overrides
    applied), then the plain flags given on the command line.

    Args:
      file_values: the loaded config file, overrides applied ({field: value}).
      file_overrides: fields set with ``--config.<field>``.
      plain: fields set with plain ``--<field>`` flags.

    Raises:
      TypeError: the file has a key that is not a Config field.
      ValueError: a field is set both ways.
    """
    both = sorted(set(file_overrides) & set(plain))
    if both:
        raise ValueError(f"--{both[0]} and --config.{both[0]} both given; use one of them")
    return cfg_lib.from_dict({**dict(file_values), **dict(plain)})


def _usage_error(message: str) -> None:
    """Prints ``message`` as one line and exits with code 2 (a usage error)."""
    sys.stderr.write(f"error: {' '.join(str(message).split())}\n")
    sys.exit(2)


def config_from_flags() -> cfg_lib.Config:
    """``resolve_config`` of the parsed flags; a bad config exits with code 2 on one line."""
    path = config_flags.get_config_filename(FLAGS["config"])
    try:
        loaded = FLAGS.config
        values = loaded.to_dict() if hasattr(loaded, "to_dict") else dict(loaded)
    except OSError:  # ml_collections defers a failed load to the first access
        _usage_error(f"--config={path}: no such config file, or it failed to import")
    plain = {f.name: FLAGS[f.name].value for f in cfg_lib.field_specs() if FLAGS[f.name].present}
    try:
        return resolve_config(values, config_flags.get_override_values(FLAGS["config"]), plain)
    except TypeError as err:  # the file has keys that are not Config fields
        _usage_error(f"--config={path}: {err}")
    except ValueError as err:
        _usage_error(str(err))


def _parse_flags(argv: Sequence[str]) -> list[str]:
    """absl parsing, but a bad flag exits with code 2 (usage error) on one line.

    ``--config.<field>`` overrides are checked against the Config fields first; an error
    raised by a config file (on import or by its ``get_config``) is reported by its last
    line (the exception).
    """
    fields = [a.split("=", 1)[0][len("--config."):] for a in argv if a.startswith("--config.")]
    unknown = cfg_lib.unknown_keys_error(fields)
    if unknown:
        _usage_error(f"--config.<field>: {unknown}")
    try:
        define_config_flag(argv)
        return FLAGS(list(argv))
    except flags.Error as err:
        text = str(err)
        if "Traceback (most recent call last)" in text:
            flag = text.split(":", 1)[0]
            text = f"{flag}: {text.strip().splitlines()[-1]}"
        _usage_error(text)
    except Exception as err:  # noqa: BLE001  a config file that fails to import or raises
        given = [a for a in argv if a.startswith("--config=")]
        where = given[-1] if given else f"--config={config_files.DEFAULT_FILE}"
        _usage_error(f"{where}: the config file failed to load ({type(err).__name__}: {err}); "
                     "it must define get_config([arg]) returning fields of "
                     "experiments.config.Config")


#: glibc malloc settings for this process: XLA on CPU allocates each step's temporaries as
#: one large block; above glibc's mmap threshold every step maps and unmaps it again
#: (measured: ~8,700 minor page faults and ~35 ms of system time per small_cnn inner step,
#: 0.6k and 2.5 ms with these settings). Opt out with AUTODO_NO_MALLOC_TUNING=1.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def _reexec_with_malloc_tuning() -> None:
    """Restarts this command once with MALLOC_ENV set (glibc reads it only at start-up)."""
    if os.environ.get("AUTODO_NO_MALLOC_TUNING") or all(k in os.environ for k in MALLOC_ENV):
        return
    if not sys.platform.startswith("linux"):
        return
    env = dict(os.environ, **{k: os.environ.get(k, v) for k, v in MALLOC_ENV.items()})
    sys.stdout.flush()
    sys.stderr.flush()
    warn = [f"-W{option}" for option in sys.warnoptions]  # keep -W (e.g. error::UserWarning)
    os.execve(sys.executable, [sys.executable, *warn, "-m", "experiments.train", *sys.argv[1:]],
              env)


def compilation_cache_problem(path: str) -> str | None:
    """Why JAX's persistent compilation cache cannot be written in ``path``, or None.

    Creates the directory if it is missing (and a probe file in it, removed again).
    """
    if importlib.util.find_spec("filelock") is None:  # JAX needs it to cap the size
        return "needs the filelock package (pip install -r requirements.txt)"
    directory = os.path.expanduser(path)
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".autodo_probe_"):
            pass
    except OSError as err:
        return f"cannot write to {directory} ({err.strerror or type(err).__name__})"
    return None


def enable_compilation_cache(path: str) -> bool:
    """Turns on JAX's persistent compilation cache in ``path`` ('' leaves it off).

    Compiled programs are keyed by their program, shapes, flags and backend, so a changed
    setting or code version compiles afresh; every program is stored (also those that
    compile in milliseconds), so a second identical run compiles nothing; the directory
    is capped at 4 GiB (least recently used entries go first). A cache that cannot be
    written (``compilation_cache_problem``) is reported in one warning line and left off.

    Returns:
        Whether the cache is on.
    """
    if not path:
        return False
    problem = compilation_cache_problem(path)
    if problem:
        sys.stderr.write(f"warning: --compilation_cache={path}: {problem}; compiling "
                         "without the persistent cache\n")
        return False
    import jax
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", 4 << 30)
    return True


#: Exit codes: 0 finished (or stopped by --stop_after_epoch); 2 bad input, a workdir in
#: use or a checkpoint of another structure (one line each, nothing changed); 3 diverged
#: (experiments.guard: --max_nonfinite_steps skipped steps in a row, or a pass with more
#: skipped than applied steps; one line); 75 preempted by SIGTERM after
#: saving a checkpoint (rerun to resume; experiments.preemption.EXIT_PREEMPTED).
EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        sys.stderr.write(f"error: unexpected arguments {list(argv[1:])}; use --flag=value\n")
        sys.exit(EXIT_BAD_INPUT)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep Orbax's INFO lines out of the progress
    config = config_from_flags()
    errors = config_checks.static_errors(config)
    if errors:
        sys.stderr.write("".join(f"error: {e}\n" for e in errors))
        sys.exit(EXIT_BAD_INPUT)
    _reexec_with_malloc_tuning()  # after the flag checks, before JAX starts
    # Imported here so that flag errors are reported before JAX starts.
    from autodo_jax import parallel
    from experiments.preemption import EXIT_PREEMPTED, Preempted
    from experiments.progress import Diverged
    from experiments.summary import print_summary
    from experiments.trainer import ConfigError, train_and_evaluate
    parallel.maybe_initialize_distributed()
    enable_compilation_cache(FLAGS.compilation_cache)
    try:
        summary = train_and_evaluate(config, FLAGS.workdir or cfg_lib.default_workdir(config))
    except ConfigError as err:
        sys.stderr.write("".join(f"error: {line}\n" for line in err.lines))
        sys.exit(EXIT_BAD_INPUT)
    except Diverged as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(EXIT_DIVERGED)
    except Preempted as err:
        sys.stderr.write(f"{err}\n")
        sys.exit(EXIT_PREEMPTED)
    print_summary(summary)


define_flags()

if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
