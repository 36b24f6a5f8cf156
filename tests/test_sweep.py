"""experiments.sweep (grids, resume after a kill) and experiments.report (tables and plot
from workdirs, the plot again from the report's CSV)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import config as cfg_lib, report, report_plot, results, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ grids

def test_public_grid_has_every_cell_once():
    runs = sweep.grid(sweep.PRESETS["mnist5k_grid"], "root")
    preset = sweep.PRESETS["mnist5k_grid"]
    assert len(runs) == 3 * 2 * 3 * len(preset.methods)
    assert len({r.workdir for r in runs}) == len(runs)  # every run has its own workdir
    assert [r.config.seed for r in runs[:len(runs) // 3]] == [0] * (len(runs) // 3)  # seed-major
    variants = {results.row_key(r.config.to_dict()) for r in runs}
    assert "val_only[host_policy=color_subset, init_warp=True]" in variants
    assert "autodo_aws[train_on_val=True]" in variants
    assert {"none", "randaugment", "autodo_fixed", "autodo_aw", "autodo_aws", "val_only",
            "train_plus_val", "trivialaugment", "l2rw", "mwn"} <= variants
    assert {r.config.val_size for r in runs} == {100, 500}


def test_grid_filters_and_bad_input():
    preset = sweep.PRESETS["mnist5k_grid"]
    runs = sweep.grid(preset, "root", methods=["autodo_aws", "none"], settings=["10-0.2"],
                      val_sizes=[500], seeds=[0], overrides={"epochs": 20})
    assert [r.config.method for r in runs] == ["none", "autodo_aws", "autodo_aws"]
    assert [r.config.train_on_val for r in runs] == [False, False, True]  # both variants
    assert all(r.config.epochs == 20 and r.config.imbalance_ratio == 10 for r in runs)
    assert "--epochs=20" in runs[0].flags() and runs[0].flags()[-1].startswith("--workdir=root/")
    with pytest.raises(ValueError, match="--settings"):
        sweep.grid(preset, "root", settings=["7-0.3"])
    with pytest.raises(ValueError, match="--methods"):
        sweep.grid(preset, "root", methods=["bogus"])
    with pytest.raises(ValueError, match="--learning_rate"):
        sweep.grid(preset, "root", overrides={"learning_rate": -1.0})
    assert sweep._overrides(["epochs=3", "init_warp=true"]) == {"epochs": 3, "init_warp": True}
    with pytest.raises(ValueError, match="--set=bogus"):
        sweep._overrides(["bogus=1"])


# ------------------------------------------------------------------ report on fake workdirs

def _fake_run(root, name, summary, **config):
    d = os.path.join(root, name)
    os.makedirs(d)
    cfg = cfg_lib.Config(**config).to_dict()
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    summary = {"wall_time_s": 10.0, "train_images": 100, "host_policy": "none", **summary}
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(summary, f)


def test_report_on_fake_workdirs_gives_the_expected_cells(tmp_path):
    root = str(tmp_path / "runs")
    for seed, acc in ((0, 0.80), (1, 0.90)):
        for val in (100, 500):
            _fake_run(root, f"none_{val}_{seed}", {"test_accuracy_final": acc + val / 10000,
                                                    "num_val": val,
                                                    "minority_accuracy_final": 0.5},
                      method="none", seed=seed, val_size=val)
            _fake_run(root, f"aws_{val}_{seed}",
                      {"test_accuracy_final": 0.95 + 0.01 * seed, "num_val": val,
                       "minority_accuracy_final": 0.9, "weight_auc_clean_vs_noisy": 0.9 + 0.02 * seed,
                       "soft_label_noisy_fixed_fraction": 0.3,
                       "soft_label_clean_kept_fraction": 0.99},
                      method="autodo_aws", seed=seed, val_size=val)
        _fake_run(root, f"aws_tv_{seed}", {"test_accuracy_final": 0.85, "num_val": 100,
                                            "weight_auc_clean_vs_noisy": 0.96,
                                            "soft_label_noisy_fixed_fraction": 0.5,
                                            "soft_label_clean_kept_fraction": 0.97},
                  method="autodo_aws", seed=seed, val_size=100, train_on_val=True)
        _fake_run(root, f"aw_tv_{seed}", {"test_accuracy_final": 0.83, "num_val": 100},
                  method="autodo_aw", seed=seed, val_size=100, train_on_val=True)
        _fake_run(root, f"vo_{seed}", {"test_accuracy_final": 0.7, "num_val": 100},
                  method="val_only", seed=seed, val_size=100)
        _fake_run(root, f"voaug_{seed}", {"test_accuracy_final": 0.75, "num_val": 100},
                  method="val_only", seed=seed, val_size=100, host_policy="color_subset",
                  init_warp=True)
    runs = results.find_runs([root])
    tables = results.build_tables(runs, "final")
    # one table per clean-val size; the +aug variant is a row of the same table
    assert sorted(k[2] for k in tables) == [("val_size=100",), ("val_size=500",)]
    t100 = tables[("mnist5k", "small_cnn", ("val_size=100",))]
    rows = dict(t100["rows"])
    assert list(rows) == ["none", "autodo_aw[train_on_val=True]", "autodo_aws",
                          "autodo_aws[train_on_val=True]", "val_only",
                          "val_only[host_policy=color_subset, init_warp=True]"]
    assert t100["columns"] == ["10-0.2"]
    assert results.format_cell(rows["none"]["10-0.2"]) == "14.0 ± 7.1 (2)"  # error % of 81, 91
    assert results.format_cell(rows["autodo_aws"]["10-0.2"]) == "4.5 ± 0.7 (2)"
    assert results.format_cell(rows["val_only[host_policy=color_subset, init_warp=True]"]["10-0.2"]) == "25.0 ± 0.0 (2)"
    md = report.noise_markdown(runs)
    assert "| λ^{A,W,S} | 10-0.2 | 0.910 ± 0.014 | 30.0 ± 0.0 | 99.0 ± 0.0 | 90.0 ± 0.0 |" in md
    assert "| Baseline | 10-0.2 | – | – | – | 50.0 ± 0.0 |" in md
    by_size = report.accuracy_by_val_size(runs)[("mnist5k", "small_cnn", ())]["10-0.2"]
    assert sorted(by_size["none"]) == [100, 500]
    assert by_size["none"][100] == pytest.approx([81.0, 91.0])
    assert by_size["none"][500] == pytest.approx([85.0, 95.0])
    assert set(by_size) == {"none", "autodo_aws", "autodo_aws[train_on_val=True]", "val_only",
                            "autodo_aw[train_on_val=True]",
                            "val_only[host_policy=color_subset, init_warp=True]"}
    targets = report.target_lines(runs)
    assert targets == [
        "- mnist5k, small_cnn, val_size=100, IR-NR 10-0.2: best of the baselines: met (95.5 vs "
        "Baseline 86.0); soft labels ≥ 25 % fixed, ≥ 98 % kept: met (30.0 %, 99.0 %); weight "
        "AUC ≥ 0.95: MISSED (0.910)\n  - λ^{A,W,S} [train_on_val=True]: best of the baselines: "
        "MISSED (85.0 vs Baseline 86.0); beats λ^{A,W}: met (85.0 vs 83.0); soft labels ≥ 25 % "
        "fixed, ≥ 98 % kept: MISSED (50.0 %, 97.0 %); weight AUC ≥ 0.95: met (0.960)",
        "- mnist5k, small_cnn, val_size=500, IR-NR 10-0.2: best of the baselines: met (95.5 vs "
        "Baseline 90.0); soft labels ≥ 25 % fixed, ≥ 98 % kept: met (30.0 %, 99.0 %); weight "
        "AUC ≥ 0.95: MISSED (0.910)"]
    # a comparison that one decimal would show as a tie gets two
    assert report._distinct(97.23, 97.17) == ("97.23", "97.17")
    assert report._distinct(97.2, 97.2) == ("97.2", "97.2")
    assert report._distinct(95.5, 86.0) == ("95.5", "86.0")
    out = str(tmp_path / "report")
    written = report.write_report([root], out)
    assert sorted(os.path.basename(p) for p in written) == [
        "accuracy_vs_val_size.png", "results.csv", "results.md"]
    text = open(os.path.join(out, "results.md")).read()
    assert "Val only [host_policy=color_subset, init_warp=True]" in text
    assert "## Targets" in text and targets[0] in text
    assert os.path.getsize(os.path.join(out, "accuracy_vs_val_size.png")) > 10_000


def test_plot_rows_are_told_apart_and_named_in_words():
    keys = sorted({row for _, _, row in _GRID_ROWS}, key=results.row_order)
    styles = report_plot.row_styles(keys)
    looks = {(st["marker"], st["linestyle"], st["color"], st.get("markerfacecolor")) for st in styles.values()}
    assert len({st["marker"] for st in styles.values()}) == len(keys) == len(looks) == 14
    assert styles["autodo_aws"]["color"] == "black"   # the paper's protocol, emphasised
    assert styles["autodo_aws"]["linewidth"] > max(st["linewidth"] for k, st in styles.items()
                                                   if k != "autodo_aws")
    assert {styles[k]["linestyle"] for k in ("none", "randaugment", "trivialaugment")} == {"--"}
    assert styles["val_only[host_policy=color_subset, init_warp=True]"]["markerfacecolor"] == "white"
    assert report_plot.row_words("val_only[host_policy=color_subset, init_warp=True]") == (
        "Val only: the clean split alone + AutoDO's starting augmentation (--method=val_only "
        "--host_policy=color_subset --init_warp)")
    assert report_plot.row_words("autodo_aws[train_on_val=True]") == (
        r"$\lambda^{A,W,S}$ + training on the clean split too (--method=autodo_aws "
        "--train_on_val)")
    assert report_plot.row_words("mwn") == "MW-Net: Meta-Weight-Net (--method=mwn)"


#: The rows of the public grid (experiments.sweep's mnist5k_grid) as (method, changes, key).
_GRID_ROWS = [(m, {}, m) for m in ("none", "randaugment", "trivialaugment", "mwn", "l2rw",
                                   "val_only", "train_plus_val", "autodo_fixed", "autodo_aw",
                                   "autodo_aws")] + [
    ("val_only", dict(host_policy="color_subset", init_warp=True),
     "val_only[host_policy=color_subset, init_warp=True]"),
    ("train_plus_val", dict(host_policy="color_subset", init_warp=True),
     "train_plus_val[host_policy=color_subset, init_warp=True]"),
    ("autodo_aw", dict(train_on_val=True), "autodo_aw[train_on_val=True]"),
    ("autodo_aws", dict(train_on_val=True), "autodo_aws[train_on_val=True]")]


def test_the_plot_is_redrawn_from_the_reports_csv(tmp_path):
    """--from_csv draws the same points as the runs gave (accuracy = 100 - the CSV's error)
    without the run directories."""
    root = str(tmp_path / "runs")
    for i, (method, changes, key) in enumerate(_GRID_ROWS):
        for seed in (0, 1):
            for val in (100, 500):
                _fake_run(root, f"{key}_{val}_{seed}", {"test_accuracy_final": 0.5 + 0.03 * i
                                                        + 0.01 * seed + val / 1e5, "num_val": val},
                          method=method, seed=seed, val_size=val, **changes)
    runs = results.find_runs([root])
    out = tmp_path / "report"
    report.write_report([root], str(out))
    from_runs = report_plot.mean_std(report.accuracy_by_val_size(runs))
    from_csv = report_plot.points_from_csv(str(out / "results.csv"))
    assert from_csv.keys() == from_runs.keys() == {("mnist5k", "small_cnn", ())}
    for column, rows in from_runs[("mnist5k", "small_cnn", ())].items():
        assert rows.keys() == from_csv[("mnist5k", "small_cnn", ())][column].keys()
        for row, sizes in rows.items():
            for n, (mean, std) in sizes.items():
                assert from_csv[("mnist5k", "small_cnn", ())][column][row][n] == pytest.approx(
                    (mean, std), abs=1e-3)
    os.remove(out / "accuracy_vs_val_size.png")
    p = subprocess.run([sys.executable, "-m", "experiments.report",
                        f"--from_csv={out / 'results.csv'}", f"--out={out}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(out / "accuracy_vs_val_size.png")
    assert os.path.getsize(out / "accuracy_vs_val_size.png") > 10_000


# ------------------------------------------------------------------ resume after a kill

def _sweep_cmd(root, res):
    return [sys.executable, "-m", "experiments.sweep", "--preset=tiny", "--workers=1",
            f"--root={root}", f"--results_dir={res}"]


@pytest.mark.slow
def test_sweep_resumes_after_a_kill_and_repeats_no_finished_run(tmp_path):
    root, res = str(tmp_path / "runs"), str(tmp_path / "report")
    runs = sweep.grid(sweep.PRESETS["tiny"], root)
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(_sweep_cmd(root, res), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 900
    while not runs[0].finished() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert runs[0].finished(), proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGTERM)  # the sweep stops its running child and exits
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:]
    assert not all(r.finished() for r in runs)  # the kill interrupted the grid
    first = os.path.join(runs[0].workdir, "summary.json")
    stamp = os.stat(first).st_mtime_ns
    again = subprocess.run(_sweep_cmd(root, res), cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=1800)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "3 runs: 1 finished (skipped)" in again.stdout or "2 finished (skipped)" in again.stdout
    assert os.stat(first).st_mtime_ns == stamp  # not repeated
    log = open(os.path.join(root, "logs", runs[0].name + ".log")).read()
    assert log.count("$ ") == 1  # started once
    assert all(r.finished() for r in runs)
    assert os.path.exists(os.path.join(res, "results.md"))
    assert os.path.exists(os.path.join(res, "accuracy_vs_val_size.png"))
