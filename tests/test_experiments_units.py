"""Unit tests of experiments/ pieces that need no training: config validation, summary
metrics, progress bookkeeping, metric writer resume, results tables, plots (checkpoints:
test_checkpointing.py)."""
import csv
import glob
import io
import json
import os

import numpy as np
import pytest

from experiments import (config as cfg_lib, config_checks, methods, results, summary,
                         visualize)
from experiments import workdir as workdir_lib
from experiments.metric_writer import MetricWriter
from experiments.workdir import read_metrics


# ------------------------------------------------------------------ config

def test_default_config_is_valid_and_named():
    c = cfg_lib.Config()
    assert config_checks.static_errors(c) == []
    assert cfg_lib.default_workdir(c) == os.path.join("workdirs", "mnist5k_autodo_aws_ir10_nr0.2_s0")
    assert cfg_lib.default_workdir(c.replace(method="none")).endswith("mnist5k_none_ir10_nr0.2_s0")
    other = cfg_lib.default_workdir(c.replace(epochs=3))
    assert other.startswith(os.path.join("workdirs", "mnist5k_autodo_aws_ir10_nr0.2_s0_"))
    assert cfg_lib.symmetric_kl(c) and not cfg_lib.symmetric_kl(c.replace(imbalance_ratio=1, noise_ratio=0))


def test_choices_are_the_library_names():
    """Flag choices are the library's own name tuples (each list lives in one place)."""
    from autodo_jax import implicit, models, train
    from autodo_jax.data import distortion
    choices = {f.name: f.metadata.get("choices") for f in cfg_lib.field_specs()}
    assert choices["table_optimizer"] is train.TABLE_OPTIMIZERS
    assert choices["solver"] is train.SOLVERS
    assert choices["compute_dtype"] is train.COMPUTE_DTYPES
    assert choices["model"] is models.MODEL_NAMES
    assert choices["curvature"] is implicit.CURVATURES
    assert choices["neumann_scale"] is implicit.NEUMANN_SCALES
    assert choices["ablation"] is distortion.ABLATIONS


@pytest.mark.parametrize("changes, flag", [
    (dict(method="bogus"), "--method"),
    (dict(noise_ratio=1.0), "--noise_ratio"),
    (dict(imbalance_ratio=0.5), "--imbalance_ratio"),
    (dict(subsample_ratio=0.0), "--subsample_ratio"),
    (dict(batch_size=0), "--batch_size"),
    (dict(hyper_start_epoch=60), "--hyper_start_epoch"),
    (dict(method="none", symmetric_kl="true"), "--symmetric_kl"),
    (dict(method="randaugment", upsample=4), "--upsample"),
    (dict(method="val_only", ablation="oversplit"), "--ablation"),
    (dict(learning_rate=float("nan")), "--learning_rate"),
    (dict(hyper_lr_soft=-0.1), "--hyper_lr_soft"),
    (dict(init_warp=True), "--init_warp"),
    (dict(method="none", upsample=2), "--upsample"),
    (dict(hyper_batch_size=-1), "--hyper_batch_size"),
    (dict(rmsprop_decay=1.0), "--rmsprop_decay"),
    (dict(table_optimizer="rmsprop_global"), "--soft_norm"),  # row norm needs row-local time
    (dict(method="l2rw", mwn_lr=0.01), "--mwn_lr"),
    (dict(method="mwn", mwn_lr=0.0), "--mwn_lr"),
    (dict(method="autodo_aws", mwn_normalize=True), "--mwn_normalize"),
    (dict(method="autodo_aws", reweight_scope="head"), "--reweight_scope"),
    (dict(method="trivialaugment", ablation="overfit"), "--ablation"),
    (dict(method="train_plus_val", train_on_val=True), "--train_on_val"),
    (dict(method="l2rw", train_on_val=True), "--train_on_val"),
    (dict(train_on_val=True, ablation="overfit"), "--ablation"),
    (dict(device_memory_gb=-1.0), "--device_memory_gb"),
    (dict(max_nonfinite_steps=0), "--max_nonfinite_steps"),
])
def test_static_errors_name_the_flag(changes, flag):
    errs = config_checks.static_errors(cfg_lib.Config().replace(**changes))
    assert len(errs) >= 1 and all("\n" not in e for e in errs)
    assert errs[0].startswith(flag + "=")


def test_the_originals_table_optimizer_with_coordinate_soft_norm_is_valid():
    c = cfg_lib.Config().replace(table_optimizer="rmsprop_global", soft_norm="coordinate",
                                 implicit_theta="kernel")
    assert config_checks.static_errors(c) == []


def test_hyper_batch_size_default_fits_the_clean_split():
    c = cfg_lib.Config()
    assert c.hyper_batch_size == 0
    assert cfg_lib.hyper_batch_size(c, 1925, 500, 1) == 256
    assert cfg_lib.hyper_batch_size(c, 1925, 100, 1) == 100
    assert cfg_lib.hyper_batch_size(c, 1925, 100, 8) == 96
    assert cfg_lib.hyper_batch_size(c.replace(hyper_batch_size=64), 1925, 100, 8) == 64
    ok = dict(image_shape=(28, 28, 1), num_classes=10, num_train=1925, num_val=100,
              num_test=1000, num_devices=8)
    assert config_checks.data_errors(c, **ok) == []  # no refusal with 100 clean examples
    errs = config_checks.data_errors(c.replace(hyper_batch_size=128), **ok)
    assert errs and errs[0].startswith("--hyper_batch_size=128: larger than the 100 validation")
    assert config_checks.data_errors(c, **dict(ok, num_val=4))[0].startswith("--hyper_batch_size=0")


def test_frozen_methods_and_host_policy():
    fixed = methods.get("autodo_fixed")
    assert not fixed.hyper_steps and methods.get("autodo_aws").hyper_steps
    assert fixed.table == methods.get("autodo_aws").table and not fixed.learned
    c = cfg_lib.Config(method="autodo_fixed")
    assert fixed.run_host_policy("auto", colour_policy=True) == "color_subset"
    assert fixed.run_host_policy("auto", colour_policy=False) == "crop_flip"
    assert methods.get("none").run_host_policy("randaugment", colour_policy=True) == "randaugment"
    assert methods.get("val_only").run_host_policy("auto", colour_policy=True) == "crop_flip"
    step = cfg_lib.step_config(c.replace(method="val_only", init_warp=True), 10, 10, 0)
    assert step.learn_aug and step.shared_aug and not step.learn_weight
    step = cfg_lib.step_config(c, 10, 10, 0)
    assert step.learn_aug and step.learn_weight and step.learn_soft and not step.shared_aug


def test_data_errors():
    c = cfg_lib.Config()
    ok = dict(image_shape=(28, 28, 1), num_classes=10, num_train=1925, num_val=500,
              num_test=1000, num_devices=8)
    assert config_checks.data_errors(c, **ok) == []
    errs = config_checks.data_errors(c.replace(batch_size=4000, eval_batch_size=100), **ok)
    assert [e.split("=")[0] for e in errs] == ["--batch_size", "--eval_batch_size"]
    errs = config_checks.data_errors(c, **ok, model_error="too small")
    assert errs[0].startswith("--model=small_cnn") and "too small" in errs[0]
    assert config_checks.data_errors(c.replace(method="val_only", batch_size=1000), **ok)[0].startswith(
        "--batch_size=1000")
    # look-ahead methods draw clean batches of the train batch size
    errs = config_checks.data_errors(c.replace(method="mwn", batch_size=512), **ok)
    assert len(errs) == 1 and errs[0].startswith("--batch_size=512: --method=mwn draws clean")
    assert config_checks.data_errors(c.replace(method="l2rw", ablation="overfit", batch_size=512),
                               **ok) == []
    assert config_checks.static_errors(c.replace(method="l2rw", ablation="overfit")) == []
    cfg = cfg_lib.step_config(c.replace(method="mwn", mwn_lr=0.01), 10, 60, 0)
    assert (cfg.reweight, cfg.mwn_lr, cfg.learns_anything) == ("mwn", 0.01, False)
    cfg = cfg_lib.step_config(c.replace(method="l2rw", reweight_scope="head"), 10, 60, 0)
    assert (cfg.reweight, cfg.reweight_scope) == ("l2rw", "head")


def test_config_mismatch_ignores_non_result_fields():
    c = cfg_lib.Config()
    saved = c.to_dict()
    assert cfg_lib.config_mismatch(saved, c.replace(checkpoint_every=1, log_every=7)) == []
    diffs = cfg_lib.config_mismatch(saved, c.replace(epochs=3))
    assert len(diffs) == 1 and diffs[0].startswith("epochs:")
    with pytest.raises(TypeError, match="unknown config keys"):
        cfg_lib.from_dict({**saved, "nope": 1})


# ------------------------------------------------------------------ summary

def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=60), 1)  # many ties
    pos = rng.random(60) < 0.4
    diff = s[pos][:, None] - s[~pos][None, :]
    brute = np.mean((diff > 0) + 0.5 * (diff == 0))
    assert summary.auc(s, pos) == pytest.approx(brute, abs=1e-12)
    assert summary.auc(np.arange(4.0), np.array([0, 0, 1, 1], bool)) == 1.0
    assert np.isnan(summary.auc(np.ones(3), np.ones(3, bool)))


def test_accuracies_and_selection():
    labels = np.array([0, 0, 1, 2, 3, 3])
    preds = np.array([0, 1, 1, 2, 0, 3])
    correct = np.bincount(labels, weights=preds == labels, minlength=5)
    count = np.bincount(labels, minlength=5)
    np.testing.assert_allclose(summary.per_class_accuracy(correct, count)[:4], [0.5, 1, 1, 0.5])
    assert np.isnan(summary.per_class_accuracy(correct, count)[4])
    assert summary.minority_accuracy(correct[:4], count[:4]) == pytest.approx(2 / 3)
    assert np.isnan(summary.minority_accuracy(correct[:2], count[:2] * 0))
    hist = [dict(epoch=1, val_accuracy=0.5, test_accuracy=0.6),
            dict(epoch=2, val_accuracy=0.7, test_accuracy=0.55),
            dict(epoch=3, val_accuracy=0.7, test_accuracy=0.58)]
    sel = summary.select(hist)
    assert (sel["final"]["epoch"], sel["val_selected"]["epoch"], sel["best_on_test"]["epoch"]) == (3, 3, 1)
    assert summary.select(hist, has_val=False)["val_selected"] is None


def test_soft_label_stats():
    given = np.array([0, 1, 2, 2])
    clean = np.array([0, 1, 1, 0])
    soft = np.eye(3)[[0, 1, 1, 2]] * 5
    st = summary.soft_label_stats(soft, given, clean)
    assert st == {"noisy_fixed": 0.5, "noisy_kept": 0.5, "clean_kept": 1.0}


# ------------------------------------------------------------------ metric writer

def test_metric_writer_resume_drops_redone_epochs(tmp_path):
    w = MetricWriter(str(tmp_path))
    for e in (1, 2, 3):
        w.write("epoch", 10 * e, e, {"loss": np.float32(1.0 / e)})
    w.close()
    w = MetricWriter(str(tmp_path), resume_epoch=2, resume_step=20)
    w.write("epoch", 30, 3, {"loss": 0.25})
    w.close()
    recs = read_metrics(str(tmp_path), "epoch")
    assert [(r["epoch"], r["loss"]) for r in recs] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))


# ------------------------------------------------------------------ results and plots

def _fake_run(root, method, ir, nr, seed, acc, cost=None, **other):
    """A finished run; ``cost`` = (wall seconds, train images) or None (older summary)."""
    c = cfg_lib.Config(method=method, imbalance_ratio=ir, noise_ratio=nr, seed=seed, **other)
    d = os.path.join(root, cfg_lib.default_workdir(c))
    workdir_lib.write_json(os.path.join(d, "config.json"), c.to_dict())
    summ = {"test_accuracy_final": acc, "test_accuracy_val_selected": acc,
            "test_accuracy_best_on_test_paper_protocol": acc + 0.01, "minority_accuracy_final": acc}
    if cost:
        summ.update(wall_time_s=cost[0], train_images=cost[1])
    workdir_lib.write_json(os.path.join(d, "summary.json"), summ)
    return d


def test_results_tables(tmp_path):
    for s, a in enumerate((0.80, 0.82)):
        _fake_run(tmp_path, "none", 10, 0.2, s, a)
        _fake_run(tmp_path, "autodo_aws", 10, 0.2, s, a + 0.1)
    _fake_run(tmp_path, "autodo_aws", 1, 0.0, 0, 0.99)
    runs = results.find_runs([str(tmp_path)])
    assert len(runs) == 5
    tables = results.build_tables(runs, "final")
    t = tables[("mnist5k", "small_cnn", ())]
    assert t["columns"] == ["1-0.0", "10-0.2"]
    assert [m for m, _ in t["rows"]] == ["none", "autodo_aws"]
    md = results.to_markdown(tables, "final", False)
    assert "| Baseline | – | 19.0 ± 1.4 (2) | none | – | – |" in md
    assert "| λ^{A,W,S} | 1.0 (1) | 9.0 ± 1.4 (2) | color_subset | – | – |" in md
    csv_text = results.to_csv(tables, "final")
    assert "mnist5k,small_cnn,,final,none,10-0.2,19.0000,1.4142,2,none,,\r\n" in csv_text


def test_results_cost_columns(tmp_path):
    # none: 100 s and 120 s for 1000 train images; mwn: 250 s; l2rw 300 s (older run without
    # cost fields next to one with them); trivialaugment has no baseline column to compare
    _fake_run(tmp_path, "none", 10, 0.2, 0, 0.8, cost=(100.0, 1000))
    _fake_run(tmp_path, "none", 10, 0.2, 1, 0.8, cost=(120.0, 1000))
    _fake_run(tmp_path, "mwn", 10, 0.2, 0, 0.9, cost=(250.0, 1000))
    _fake_run(tmp_path, "l2rw", 10, 0.2, 0, 0.9, cost=(300.0, 1000))
    _fake_run(tmp_path, "l2rw", 10, 0.2, 1, 0.9)
    _fake_run(tmp_path, "trivialaugment", 50, 0.1, 0, 0.9, cost=(80.0, 500))
    tables = results.build_tables(results.find_runs([str(tmp_path)]), "final")
    md = results.to_markdown(tables, "final", False)
    assert "| method | 50-0.1 | 10-0.2 | host | wall s | × none |" in md
    assert "| Baseline | – | 20.0 ± 0.0 (2) | none | 110 | 1.00 |" in md
    # summaries without host_policy: the policy their config.json gives (the colour subset)
    assert "| MW-Net | – | 10.0 (1) | color_subset | 250 | 2.27 |" in md
    assert "| L2RW | – | 10.0 ± 0.0 (2) | color_subset | 300 | 2.73 |" in md
    # per image: 80 s / 500 images against the none row's 0.11 s per image
    assert "| TA (wide) | 10.0 (1) | – | trivialaugment | 80 | 1.45 |" in md
    rows = {(r[4], r[5]): r for r in csv.reader(io.StringIO(results.to_csv(tables, "final")))}
    assert rows[("mwn", "10-0.2")][9:] == ["color_subset", "250.0", "2.273"]
    assert rows[("trivialaugment", "50-0.1")][9:] == ["trivialaugment", "80.0", ""]


def test_results_group_by_every_result_changing_setting(tmp_path):
    _fake_run(tmp_path, "none", 10, 0.05, 0, 0.9)
    _fake_run(tmp_path, "none", 10, 0.1, 0, 0.8)
    _fake_run(tmp_path, "none", 10, 0.1, 0, 0.7, epochs=30)
    _fake_run(tmp_path, "none", 10, 0.1, 1, 0.6, epochs=30, solver="cg")
    d = _fake_run(tmp_path, "none", 10, 0.1, 2, 0.5, checkpoint_every=2)  # not result-changing
    old = workdir_lib.read_json(os.path.join(d, "config.json"))
    del old["solver"]  # a config.json of an older version: missing fields take the default
    workdir_lib.write_json(os.path.join(d, "config.json"), old)
    tables = results.build_tables(results.find_runs([str(tmp_path)]), "final", accuracy=True)
    assert sorted(tables) == [("mnist5k", "small_cnn", ()),
                              ("mnist5k", "small_cnn", ("epochs=30",)),
                              ("mnist5k", "small_cnn", ("epochs=30", "solver=cg"))]
    t = tables[("mnist5k", "small_cnn", ())]
    assert t["columns"] == ["10-0.05", "10-0.1"]
    ((_, cells),) = t["rows"]
    assert cells["10-0.05"] == [pytest.approx(90.0)]
    assert cells["10-0.1"] == [pytest.approx(80.0), pytest.approx(50.0)]
    assert tables[("mnist5k", "small_cnn", ("epochs=30",))]["rows"][0][1] == {
        "10-0.1": [pytest.approx(70.0)]}
    md = results.to_markdown(tables, "final", True)
    assert "### mnist5k, small_cnn (epochs=30, solver=cg): top-1 test accuracy %" in md


def test_visualize_on_synthetic_workdir(tmp_path):
    rng = np.random.default_rng(0)
    n, c, k = 50, 4, 7
    clean = rng.integers(0, c, n)
    given = np.where(rng.random(n) < 0.3, rng.integers(0, c, n), clean)
    workdir_lib.save_final_table(str(tmp_path), {
        "aug_p": rng.normal(size=(n, k)), "aug_m": rng.normal(size=(n, k)),
        "weight": rng.normal(size=n), "soft": rng.normal(size=(n, c))},
        given_labels=given, clean_labels=clean, noisy=given != clean, train_index=np.arange(n),
        num_classes=c, method="autodo_aws", op_names=np.array([f"op{i}" for i in range(k)]))
    w = MetricWriter(str(tmp_path))
    for e in (1, 2):
        w.write("epoch", e, e, {"train_loss": 1 / e, "train_accuracy": 0.5, "val_accuracy": 0.6,
                                "test_accuracy": 0.7})
    w.close()
    written = visualize.make_plots(str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == [
        "augmentation.png", "curves.png", "soft_labels.png", "weights.png"]
    for p in written:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ progress

def test_metric_sums_fold_in_step_order_and_resume_exactly():
    from experiments.progress import MetricSums, Progress
    steps = [{"loss": np.float32(v), "skipped": np.int32(v > 9)} for v in (0.1, 0.2, 11.0, 12.0, 0.3)]
    whole = MetricSums()
    for m in steps:
        whole.add(m)
    part = MetricSums()
    for m in steps[:3]:
        part.add(m)
    part = MetricSums.from_json(json.loads(json.dumps(part.to_json())))  # a checkpoint
    assert part.run == 1 and part.skipped == 1
    k_steps = {"loss": np.array([12.0, 0.3, 5.0], np.float32), "skipped": np.array([1, 0, 0]),
               "valid": np.array([True, True, False])}  # a K=3 dispatch, last one padding
    part.add(k_steps)
    assert part.means("train_") == whole.means("train_") == {
        "train_loss": (float(np.float32(0.1)) + float(np.float32(0.2)) + float(np.float32(0.3))) / 3,
        "train_skipped": 2}
    assert whole.run == 0 and whole.count == 3
    prog = Progress(epoch=2, train_done=5)
    prog.advance("train", steps[0], 1, 8, 0.5)
    # the totals are the state's counters: metadata of older checkpoints still reads
    back = Progress.from_meta(json.loads(json.dumps(dict(prog.to_meta(), step=18))))
    assert (back.train_done, back.train_images) == (6, 8) and not hasattr(back, "step")
    assert back.pass_sums("train").means("train_")["train_loss"] == pytest.approx(0.1)
    rec = back.close_epoch()
    assert rec["train_skipped"] == 0 and rec["train_time_s"] == 0.5
    assert (back.epoch, back.train_done, back.sums) == (3, 0, {})


def _pass(prog, kind, skipped_flags):
    """Books one step per flag (1 = skipped) into ``prog``'s ``kind`` pass."""
    for flag in skipped_flags:
        prog.advance(kind, {"loss": np.float32(1.0), "skipped": np.int32(flag)}, 1, 8, 0.1)
    return prog


def test_guard_stops_on_a_run_of_skipped_steps_or_a_mostly_skipped_pass():
    from experiments import guard
    from experiments.progress import Diverged, Progress
    c = cfg_lib.Config()   # --max_nonfinite_steps=5
    assert c.max_nonfinite_steps == 5
    # 1 applied, then 5 skipped in a row: the limit, checked at any flush
    prog = _pass(Progress(epoch=1), "train", [0, 1, 1, 1, 1, 1])
    with pytest.raises(Diverged) as err:   # 10 inner steps before these 6
        guard.check(prog, "train", c, 10, 16, end_of_pass=False)
    assert str(err.value) == (
        "diverged: inner steps 12-16 (epoch 2) had non-finite losses or updates and were "
        "skipped: 5 in a row (--max_nonfinite_steps=5); the newest checkpoint (step 10) holds "
        "the last finite state; try a lower --learning_rate (now 0.01), a lower --hyper_lr "
        "(now 0.05; learned loss weights scale the inner loss), or check the data for "
        "extreme values")
    # 2 of 3 skipped (never 5 in a row): only the end of the pass judges the share
    prog = _pass(Progress(), "hyper", [0, 1, 1])
    guard.check(prog, "hyper", c, 0, 3, end_of_pass=False)
    with pytest.raises(Diverged, match=r"^diverged: 2 of the 3 hyper steps of epoch 1 \(hyper "
                                       r"steps 1-3\) .*more than half of the pass\); no checkpoint "
                                       r"was written; try a lower --hyper_lr \(now 0.05\), a "
                                       r"smaller --neumann_alpha \(now 0.01\) or --solver=cg, "
                                       r"--compute_dtype=float32 \(now bfloat16\), or check"):
        guard.check(prog, "hyper", c.replace(compute_dtype="bfloat16"), 0, 3, end_of_pass=True)
    # a few skipped steps, fewer than the applied ones: the run goes on, and says so
    prog = _pass(Progress(), "train", [0, 1, 0, 1, 1, 0, 0])
    guard.check(prog, "train", c, 0, 7, end_of_pass=True)
    assert guard.divergence(prog.pass_sums("train"), "train", prog, c, 7,
                            end_of_pass=True) is None
    rec = prog.close_epoch()
    assert rec["train_skipped"] == 3
    prog.history.append(rec)
    assert prog.skipped_totals() == {"skipped_inner_steps": 3, "skipped_hyper_steps": 0}


def test_progress_line_shows_skipped_steps():
    from experiments.progress import progress_line
    m = {"train_loss": 0.5, "train_accuracy": 0.875}
    assert progress_line(2, 60, 120, m, 250.4, 245.0, " test 90.0%", {"inner": 0, "hyper": 0}) == (
        "epoch 2/60 step 120 loss 0.5000 acc 87.5% test 90.0% img/s 250 ETA 4m05s")
    assert progress_line(2, 60, 120, m, 250.4, float("nan"), "", {"inner": 3, "hyper": 1}) == (
        "epoch 2/60 step 120 loss 0.5000 acc 87.5% skipped 3 inner, 1 hyper img/s 250 ETA ?")
