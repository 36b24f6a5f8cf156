"""The method registry (experiments.methods): every record is complete and consistent with
what the flags, the step configuration and the analysis tools read from it."""
import dataclasses
import os
import re
import subprocess
import sys

import pytest

from autodo_jax.data import transforms
from experiments import config as cfg_lib, methods, report, report_plot, results, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUG_KEYS = frozenset({"aug_p", "aug_m"})


def test_every_method_has_a_label_words_and_a_valid_host_policy():
    labels = [m.label for m in methods.METHODS.values()]
    assert all(labels) and len(set(labels)) == len(labels)
    for name, m in methods.METHODS.items():
        assert m.name == name and m.words
        assert m.host_policy in transforms.POLICY_NAMES
        assert results.row_label(name) == m.label
        assert report_plot.row_words(name).startswith(m.words)
        # every method's policy is defined for some dataset family the library knows
        assert any(m.host_policy in transforms.allowed_policies(f)
                   for f in ("mnist", "svhn", "cifar10", "cifar100", "imagenet"))


def test_unknown_method_fails_with_the_allowed_list():
    with pytest.raises(ValueError) as err:
        methods.get("autodo_xyz")
    msg = str(err.value)
    assert "\n" not in msg and "'autodo_xyz'" in msg
    assert msg.endswith("allowed: " + ", ".join(methods.METHODS))


def test_records_reject_what_no_step_implements():
    ok = dict(name="m", label="M", words="m", host_policy="none")
    methods.Method(**ok, table=frozenset({"aug"}), hyper_steps=True, shared_aug=True)
    for bad, field in ((dict(host_policy="colour"), "host_policy"),
                       (dict(table=frozenset({"A"})), "table"),
                       (dict(hyper_steps=True), "hyper_steps"),
                       (dict(shared_aug=True, table=frozenset({"weight"})), "shared_aug"),
                       (dict(reweight="l2rw", table=frozenset({"weight"})), "reweight"),
                       (dict(reweight="meta"), "reweight"),
                       (dict(train_on="test"), "train_on"),
                       (dict(train_on="val", table=frozenset({"soft"})), "train_on")):
        with pytest.raises(ValueError, match=f"Method 'm': {field}="):
            methods.Method(**{**ok, **bad})
    m = methods.get("autodo_aws")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.hyper_steps = False


def test_flag_choices_and_step_config_follow_the_registry():
    choices = next(f for f in cfg_lib.field_specs() if f.name == "method").metadata["choices"]
    assert tuple(choices) == tuple(methods.METHODS)
    for name, m in methods.METHODS.items():
        step = cfg_lib.step_config(cfg_lib.Config(method=name), 10, 10, 5)
        keys = (AUG_KEYS if "aug" in m.table else set()) | (m.table - {"aug"})
        assert step.table_keys() == keys and step.shared_aug == m.shared_aug
        assert step.reweight == m.reweight
        # hyper steps get a schedule only when the method runs them
        assert (step.hyper_total_steps > 1) == m.hyper_steps
        assert m.learned == (m.table if m.hyper_steps else frozenset())
        assert m.uses_val_batches == (m.hyper_steps or m.reweight != "none")
        assert m.family == ("autodo" if m.table else "clean" if m.train_on != "train" else
                            "lookahead" if m.reweight != "none" else "plain")
        if "aug" not in m.table and m.reweight == "none":
            # --init_warp: a shared λ_A row in the table, which no hyper step learns
            warped = cfg_lib.step_config(cfg_lib.Config(method=name, init_warp=True), 10, 10, 5)
            assert warped.table_keys() == keys | AUG_KEYS and warped.shared_aug
            assert m.run_table(True) == m.table | {"aug"} and warped.hyper_total_steps == 1


def test_host_policy_and_train_on_of_a_run():
    for m in methods.METHODS.values():
        assert m.run_host_policy("randaugment", colour_policy=False) == "randaugment"
        assert m.run_host_policy("auto", colour_policy=True) == m.host_policy
        colour_off = m.run_host_policy("auto", colour_policy=False)
        assert colour_off == ("crop_flip" if m.host_policy == "color_subset" else m.host_policy)
        assert m.trains_on(False) == m.train_on and m.trains_on(True) == "train+val"


def test_presets_and_report_targets_name_registered_methods():
    named = {name for preset in sweep.PRESETS.values() for name, _ in preset.methods}
    named |= {report.TARGET_METHOD, *report.TARGET_RIVALS, report_plot.PAPER_ROW}
    assert named <= set(methods.METHODS)


def test_flags_help_lists_method_once():
    out = subprocess.run([sys.executable, "-m", "experiments.train", "--helpfull"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    defs = [i for i, line in enumerate(text.splitlines()) if re.match(r"\s+--method:", line)]
    assert len(defs) == 1, text[-2000:]
    listed = re.search(r"--method:<([^>]*)>", text.replace("\n", "").replace(" ", ""))
    assert listed and listed.group(1).split("|") == list(methods.METHODS)
