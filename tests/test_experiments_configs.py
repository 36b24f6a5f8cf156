"""experiments/configs: every paper setting loads, validates and holds the paper's settings;
``--config`` files with ``--config.<field>`` overrides and plain flags on the command line
(precedence, one-line errors); each setting runs a tiny smoke on the TFDS mock."""
import dataclasses
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import config as cfg_lib, config_checks, run_setup, train as train_cli, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "experiments", "configs")

#: The paper's settings (AUTODO.md, original_autodo_facts.md 1.5) each file must hold, by
#: (file, dataset part of the config argument).
WRN_CIFAR = dict(model="wrn28_10", epochs=200, batch_size=256, learning_rate=0.1,
                 hyper_start_epoch=50, hyper_batch_size=256, hyper_lr=0.05, upsample=4)
EXPECTED = {
    ("mnist5k.py", ""): dict(dataset="mnist5k", model="small_cnn", epochs=60, batch_size=32,
                             learning_rate=0.01, hyper_start_epoch=15, hyper_batch_size=0,
                             hyper_lr=0.05, upsample=1),
    ("svhn_wrn28_10.py", ""): dict(dataset="svhn_cropped", **dict(WRN_CIFAR,
                                                                  learning_rate=0.005)),
    ("cifar_wrn28_10.py", "cifar10:"): dict(dataset="cifar10", **WRN_CIFAR),
    ("cifar_wrn28_10.py", "cifar100:"): dict(dataset="cifar100", **WRN_CIFAR),
    ("imagenet_resnet18.py", ""): dict(dataset="imagenet2012", model="resnet18", epochs=200,
                                       batch_size=256, learning_rate=0.1,
                                       hyper_start_epoch=100, hyper_batch_size=128,
                                       hyper_lr=0.01, upsample=1),
}
COLUMNS = {"mnist5k.py": (),
           "svhn_wrn28_10.py": ("1-0.0", "100-0.0", "1-0.1", "100-0.1"),
           "cifar_wrn28_10.py": ("1-0.0", "10-0.0", "1-0.1", "10-0.1"),
           "imagenet_resnet18.py": ("10-0.0", "10-0.1")}


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIG_DIR, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(name, arg=None, **changes):
    return cfg_lib.from_dict({**_load(name).get_config(arg).to_dict(), **changes})


def _cli(*args, workdir):
    p = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
                        *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stderr.strip().splitlines()


def test_every_config_file_loads_validates_and_holds_the_paper_settings():
    files = sorted(f for f in os.listdir(CONFIG_DIR)
                   if f.endswith(".py") and f not in ("__init__.py", "base.py"))
    assert files == sorted(COLUMNS)
    for (name, prefix), expected in EXPECTED.items():
        module = _load(name)
        assert "Target" in module.__doc__, name  # states the number it aims at
        for column in COLUMNS[name] + ("",):
            arg = prefix + column or None
            config = _config(name, arg)
            assert config_checks.static_errors(config) == [], (name, arg)
            assert {k: getattr(config, k) for k in expected} == expected, (name, arg)
            ir, nr = (column or (COLUMNS[name] or ("10-0.2",))[-1]).split("-")
            assert (config.imbalance_ratio, config.noise_ratio) == (float(ir), float(nr))
            assert config.method == "autodo_aws" and config.symmetric_kl == "auto"
        if COLUMNS[name]:
            with pytest.raises(ValueError, match="allowed columns"):
                module.get_config(prefix + "3-0.5")
    with pytest.raises(ValueError, match="dataset must be one of cifar10, cifar100"):
        _load("cifar_wrn28_10.py").get_config("svhn:1-0.0")


def test_paper_models_fit_their_images():
    """The full models trace on the datasets' image shapes (abstractly, no compile)."""
    shapes = {("svhn_wrn28_10.py", None): ((32, 32, 3), 10),
              ("cifar_wrn28_10.py", "cifar100"): ((32, 32, 3), 100),
              ("imagenet_resnet18.py", None): ((224, 224, 3), 1000)}
    for (name, arg), (shape, classes) in shapes.items():
        assert run_setup.model_fit_error(_config(name, arg), shape, classes) is None, name


def test_mnist5k_file_is_the_default_config():
    assert _config("mnist5k.py") == cfg_lib.Config()
    assert os.path.basename(train_cli.config_files.DEFAULT_FILE) == "mnist5k.py"


def test_precedence_file_then_overrides_then_plain_flags():
    values = _load("cifar_wrn28_10.py").get_config("cifar10:1-0.1").to_dict()
    values["epochs"] = 7  # as --config.epochs=7 leaves it
    config = train_cli.resolve_config(values, ["epochs"], {"seed": 3, "learning_rate": 0.2})
    assert (config.epochs, config.seed, config.learning_rate) == (7, 3, 0.2)
    assert (config.dataset, config.noise_ratio, config.upsample) == ("cifar10", 0.1, 4)
    with pytest.raises(ValueError, match="--epochs and --config.epochs both given"):
        train_cli.resolve_config(values, ["epochs"], {"epochs": 9})
    with pytest.raises(TypeError, match=r"unknown config keys \['epoch'\] \(did you mean epochs"):
        train_cli.resolve_config({**values, "epoch": 1}, [], {})


def test_command_line_config_overrides_and_one_line_errors(tmp_path):
    wd = tmp_path / "wd"
    files = {"raises.py": "def get_config(arg=None):\n    raise RuntimeError('no setting ' + str(arg))\n",
             "broken.py": "def get_config(:\n",
             "extra.py": "def get_config():\n    return {'epochs': 2, 'epoch': 3}\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cases = [
        # --config.<field> reaches validation: the file's epochs (60) replaced by 0
        (["--config=experiments/configs/mnist5k.py", "--config.epochs=0"],
         "error: --epochs=0: allowed"),
        # a plain flag overrides the file: epochs 200 -> 10
        (["--config=experiments/configs/svhn_wrn28_10.py:1-0.0", "--epochs=10"],
         "error: --hyper_start_epoch=50: must be < --epochs=10"),
        (["--config.epoch=10"], "error: --config.<field>: unknown config keys ['epoch'] "
                                "(did you mean epochs?)"),
        (["--config=experiments/configs/svhn_wrn28_10.py:7-0.1"],
         "error: flag --config=experiments/configs/svhn_wrn28_10.py: ValueError: config "
         "argument '7-0.1'"),
        (["--config.epochs=3", "--epochs=3"],
         "error: --epochs and --config.epochs both given"),
        # issue 22: a config file that raises, one that does not import, an unknown field
        ([f"--config={tmp_path}/raises.py:x"],
         f"error: --config={tmp_path}/raises.py:x: the config file failed to load "
         "(RuntimeError: no setting x); it must define get_config([arg])"),
        ([f"--config={tmp_path}/broken.py"],
         f"error: --config={tmp_path}/broken.py: the config file failed to load (SyntaxError: "),
        ([f"--config={tmp_path}/extra.py"],
         f"error: --config={tmp_path}/extra.py: unknown config keys ['epoch'] (did you mean "
         "epochs?)"),
    ]
    for args, start in cases:
        code, lines = _cli(*args, workdir=wd)
        assert code == 2 and len(lines) == 1 and lines[0].startswith(start), (args, lines)
        assert not wd.exists()


#: Tiny run settings for the smoke (the setting's own model, dataset, method, noise,
#: schedule shape and upsampling; sizes cut to a few steps). The mock's few hundred
#: examples cannot keep every class at the paper's imbalance ratio (the run refuses a class
#: left without train examples), so the smoke trains balanced; the files' ratios are
#: checked by the paper-values test above.
SMOKE = dict(epochs=2, hyper_start_epoch=1, batch_size=8, hyper_batch_size=8,
             eval_batch_size=16, eval_limit=16, max_steps_per_epoch=1, val_size=16,
             warmup_epochs=1.0, checkpoint_every=1, steps_per_dispatch=1,
             imbalance_ratio=1.0)


def _every_class(num_classes: int, shape: tuple, per_class: int, file_names: bool = False):
    """A mock `as_data_source_fn` with every class present (`per_class` train images each);
    the default mock draws labels at random and leaves classes empty."""
    def records(self, split, decoders=None, **kw):
        del self, decoders, kw
        n = num_classes * per_class if split == "train" else 64
        rng = np.random.default_rng(0 if split == "train" else 1)
        extra = (lambda i: {"file_name": f"{i}.JPEG"}) if file_names else (lambda i: {})
        return [{"image": rng.integers(0, 256, shape, dtype=np.uint8),
                 "label": i % num_classes, **extra(i)} for i in range(n)]
    return records


@pytest.fixture()
def shallow_zoo(monkeypatch):
    """The settings' networks at one block per stage (what a setting configures is the
    run, not the depth): WRN-10-2 under the name wrn28_2 and a one-block-per-stage
    ResNet under resnet18, so each setting compiles in seconds on a 2-core CPU. The
    full-depth models are built and their fit checked elsewhere."""
    from autodo_jax import models
    from autodo_jax.models.resnet import ResNetEncoder
    from autodo_jax.models.wrn import WideResNetEncoder
    def shallow(name, encoder):
        entry = models._ENCODERS[name]
        monkeypatch.setitem(models._ENCODERS, name, dataclasses.replace(entry, encoder=encoder))

    shallow("wrn28_2", lambda dtype: WideResNetEncoder(depth=10, widen=2, dtype=dtype))
    shallow("resnet18", lambda dtype: ResNetEncoder(
        (64, 128, 256, 512), (1, 2, 2, 2), blocks_per_stage=1, stem_width=64, stem_kernel=7,
        dtype=dtype))


@pytest.mark.slow
@pytest.mark.usefixtures("shallow_zoo")
@pytest.mark.parametrize("name, arg, changes, mock", [
    # WRN-28-10 on CPU costs minutes per step: the same family at width 2 (and, with
    # shallow_zoo, depth 10) runs the setting here; the width-10 model's fit is checked
    # abstractly above.
    ("svhn_wrn28_10.py", None, dict(model="wrn28_2"), dict(num_examples=160)),
    ("cifar_wrn28_10.py", "cifar10", dict(model="wrn28_2"), dict(num_examples=160)),
    ("cifar_wrn28_10.py", "cifar100", dict(model="wrn28_2"),
     dict(as_data_source_fn=_every_class(100, (32, 32, 3), 4))),
    # random-resized 32x32 crops instead of 224x224
    ("imagenet_resnet18.py", None, dict(image_size="32"),
     dict(as_data_source_fn=_every_class(1000, (36, 44, 3), 3, file_names=True))),
])
def test_every_setting_runs_on_the_tfds_mock(name, arg, changes, mock, tmp_path):
    config = _config(name, arg, **SMOKE, **changes)
    with tfds.testing.mock_data(**mock):
        summary = trainer.train_and_evaluate(config, str(tmp_path), log=lambda m: None)
    assert summary["epochs"] == 2 and summary["hyper_images"] > 0
    assert 0.0 <= summary["test_accuracy_final"] <= 1.0
