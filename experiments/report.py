r"""The report of a sweep: paper tables, the noise-handling table and the accuracy vs
clean-val size plot, written to one directory.

  python -m experiments.report WORKDIR_ROOT [--out=docs/results/NAME]
  python -m experiments.report --from_csv=docs/results/NAME/results.csv --out=docs/results/NAME

``write_report(paths, out_dir)`` (also called by ``experiments.sweep`` at the end) writes

- ``results.md``: the paper's layout from ``experiments.results`` (rows = methods and
  their variants, columns = IR-NR, top-1 test error % of the final epoch, mean ± std over
  seeds, one table per remaining setting such as the clean-val size; with each row's host
  augmentation and cost), the validation-selected error, and the noise-handling table;
- ``results.csv``: the final-epoch cells of the paper tables;
- ``accuracy_vs_val_size.png``: final test accuracy against the number of clean
  validation examples, one line per row, one panel per IR-NR setting
  (``experiments.report_plot``; ``--from_csv=results.csv`` redraws it alone from a
  report's CSV, without the run directories).

Noise-handling table: one row per (method, IR-NR); the AUC of the learned loss weights
for clean against noisy train examples, the % of noisy labels whose learned soft label's
argmax is the clean label ("fixed"), the % of clean labels whose soft label kept its
argmax ("kept"), and the final accuracy on the minority classes (those shrunk by IR).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Sequence

import numpy as np
from absl import app, flags

from experiments import report_plot, results
from experiments.workdir import atomic_write

#: Noise-handling columns: (title, summary key, scale).
NOISE_COLUMNS = (
    ("weight AUC", "weight_auc_clean_vs_noisy", 1.0),
    ("% noisy fixed", "soft_label_noisy_fixed_fraction", 100.0),
    ("% clean kept", "soft_label_clean_kept_fraction", 100.0),
    ("minority acc %", "minority_accuracy_final", 100.0),
)


def _mean_std(values: Sequence[float], digits: int) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def noise_cells(runs: Sequence[dict[str, Any]]) -> dict[tuple, dict[tuple[str, str], dict[str, list[float]]]]:
    """{(dataset, model, settings): {(row, IR-NR): {summary key: [values over seeds]}}}."""
    out: dict[tuple, dict[tuple[str, str], dict[str, list[float]]]] = {}
    for run in runs:
        cfg, s = run["config"], run["summary"]
        key = (cfg["dataset"], cfg["model"], results.group_settings(cfg))
        cell = out.setdefault(key, {}).setdefault((results.row_key(cfg), results.column_name(cfg)), {})
        for _, name, scale in NOISE_COLUMNS:
            if s.get(name) is not None:
                cell.setdefault(name, []).append(scale * float(s[name]))
    return out


def noise_markdown(runs: Sequence[dict[str, Any]]) -> str:
    lines = []
    for (dataset, model, settings), cells in sorted(noise_cells(runs).items()):
        where = f" ({', '.join(settings)})" if settings else ""
        lines.append(f"### {dataset}, {model}{where}: noise handling (final epoch; mean ± std "
                     "over seeds)")
        lines.append("| method | IR-NR | " + " | ".join(t for t, _, _ in NOISE_COLUMNS) + " |")
        lines.append("|---|---|" + "---|" * len(NOISE_COLUMNS))
        order = sorted(cells, key=lambda rc: (results.row_order(rc[0]),
                                               results.column_order(rc[1])))
        for row, column in order:
            cell = cells[(row, column)]
            values = [_mean_std(cell.get(name, []), 3 if scale == 1.0 else 1)
                      for _, name, scale in NOISE_COLUMNS]
            lines.append(f"| {results.row_label(row)} | {column} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)


#: The science issue's targets for AutoDO λ^{A,W,S} in every cell (column of a table):
#: the best mean final-epoch test accuracy of these rows (every variant of each method),
#: soft labels fixing >= 25 % of the noisy labels while keeping >= 98 % of the clean ones,
#: and loss weights ranking clean above noisy with AUC >= 0.95. A row variant of the method
#: (``autodo_aws[train_on_val=True]``) is judged on the same targets in a nested bullet.
TARGET_METHOD = "autodo_aws"
TARGET_RIVALS = ("none", "randaugment", "autodo_fixed", "autodo_aw", "val_only",
                 "train_plus_val")
TARGET_FIXED, TARGET_KEPT, TARGET_AUC = 25.0, 98.0, 0.95


def target_lines(runs: Sequence[dict[str, Any]]) -> list[str]:
    """One markdown bullet per cell holding ``TARGET_METHOD``: each target "met" or
    "MISSED", with the numbers it was judged on (means over seeds); a row variant of the
    method is judged in a nested bullet under it."""
    noise = noise_cells(runs)
    lines = []
    for group, table in results.build_tables(runs, "final", accuracy=True).items():
        for column in table["columns"]:
            rows = {row: float(np.mean(cells[column])) for row, cells in table["rows"]
                    if column in cells}
            if TARGET_METHOD in rows:
                lines.append(_target_line(group + (column,), rows, noise))
    return lines


def _distinct(a: float, b: float) -> tuple[str, str]:
    """Two accuracies to one decimal, or to two when one decimal would show a tie that
    the comparison breaks (97.23 vs 97.17, not 97.2 vs 97.2)."""
    for digits in (1, 2):
        sa, sb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if sa != sb or a == b:
            return sa, sb
    return sa, sb


def _target_line(cell: tuple, rows: dict[str, float], noise: dict) -> str:
    """The bullet of one cell (dataset, model, settings, IR-NR); ``rows`` maps each row
    of the cell to its mean final accuracy %. ``TARGET_METHOD`` and each of its row
    variants (``autodo_aws[train_on_val=True]``) are judged on every target."""
    rivals = {r: a for r, a in rows.items() if r.partition("[")[0] in TARGET_RIVALS}
    ours = [r for r in rows if r.partition("[")[0] == TARGET_METHOD]   # main row first
    ours.sort(key=lambda r: r != TARGET_METHOD)
    others = {r: a for r, a in rows.items() if r not in rivals and r not in ours}
    where = ", ".join((cell[0], cell[1]) + cell[2] + (f"IR-NR {cell[3]}",))
    judged = {name: _verdicts(name, rows, rivals,
                              noise.get(cell[:3], {}).get((name, cell[3]), {}))
              for name in ours}
    verdicts = judged.pop(TARGET_METHOD)
    if others:
        top = max(others, key=others.get)
        verdicts.append(f"(not a target) best other row: {results.row_label(top)} "
                        f"{others[top]:.1f}")
    return "\n".join([f"- {where}: " + "; ".join(verdicts)] + [
        f"  - {results.row_label(name)}: " + "; ".join(v) for name, v in judged.items()])


def _verdicts(name: str, rows: dict[str, float], rivals: dict[str, float],
              stats: dict[str, list[float]]) -> list[str]:
    """The targets of row ``name`` (a variant of ``TARGET_METHOD``), each "met" or
    "MISSED" with its numbers; ``stats`` holds the row's noise metrics over seeds."""
    acc, out = rows[name], []
    if rivals:
        best = max(rivals, key=rivals.get)
        a, b = _distinct(acc, rivals[best])
        out.append(f"best of the baselines: {'met' if acc > rivals[best] else 'MISSED'}"
                   f" ({a} vs {results.row_label(best)} {b})")
    aw = "autodo_aw" + name[len(TARGET_METHOD):]   # λ^{A,W} with the same variant
    if aw in rows:
        a, b = _distinct(acc, rows[aw])
        out.append(f"beats λ^{{A,W}}: {'met' if acc > rows[aw] else 'MISSED'} ({a} vs {b})")
    fixed = stats.get("soft_label_noisy_fixed_fraction")
    kept = stats.get("soft_label_clean_kept_fraction")
    if fixed and kept:
        f, k = float(np.mean(fixed)), float(np.mean(kept))
        ok = f >= TARGET_FIXED and k >= TARGET_KEPT
        out.append(f"soft labels ≥ {TARGET_FIXED:g} % fixed, ≥ {TARGET_KEPT:g} % kept: "
                   f"{'met' if ok else 'MISSED'} ({f:.1f} %, {k:.1f} %)")
    auc = stats.get("weight_auc_clean_vs_noisy")
    if auc:
        a = float(np.mean(auc))
        out.append(f"weight AUC ≥ {TARGET_AUC:g}: {'met' if a >= TARGET_AUC else 'MISSED'}"
                   f" ({a:.3f})")
    return out


#: File name of the plot (experiments.report_plot).
PLOT_FILE = "accuracy_vs_val_size.png"


def _val_size(run: dict[str, Any]) -> int | None:
    n = run["summary"].get("num_val") or run["config"].get("val_size")
    return int(n) if n else None


def accuracy_by_val_size(runs: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, dict[int, list[float]]]]]:
    """{(dataset, model, settings except val_size): {IR-NR: {row: {val size: [final test
    accuracy % over seeds]}}}}."""
    out: dict = {}
    for run in runs:
        cfg, n = run["config"], _val_size(run)
        acc = run["summary"].get("test_accuracy_final")
        if n is None or acc is None:
            continue
        settings = tuple(x for x in results.group_settings(cfg) if not x.startswith("val_size="))
        (out.setdefault((cfg["dataset"], cfg["model"], settings), {})
            .setdefault(results.column_name(cfg), {}).setdefault(results.row_key(cfg), {})
            .setdefault(n, []).append(100.0 * float(acc)))
    return out


def report_markdown(runs: Sequence[dict[str, Any]]) -> str:
    """The text of results.md."""
    parts = ["# Results", "",
             f"{len(runs)} finished runs. Top-1 test error % at the final epoch (the paper "
             "reports best-on-test); mean ± std over seeds (number of runs).", "",
             "## Final epoch", "",
             results.to_markdown(results.build_tables(runs, "final"), "final", False),
             "## Validation-selected epoch", "",
             results.to_markdown(results.build_tables(runs, "val_selected"), "val_selected", False),
             "## Noise handling", "", noise_markdown(runs)]
    targets = target_lines(runs)
    if targets:
        parts += ["## Targets", "",
                  f"{results.row_label(TARGET_METHOD)} against the science issue's targets, per "
                  "cell (mean final-epoch test accuracy % over seeds):", "", *targets, ""]
    return "\n".join(parts)


def write_report(paths: Iterable[str], out_dir: str) -> list[str]:
    """Writes results.md, results.csv and accuracy_vs_val_size.png for the finished runs
    found under ``paths``; returns the paths written."""
    runs = results.find_runs([p for p in paths if os.path.exists(p)])
    if not runs:
        raise FileNotFoundError(f"no finished run under {list(paths)}")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, text in (("results.md", report_markdown(runs)),
                       ("results.csv", results.to_csv(results.build_tables(runs, "final"), "final"))):
        path = os.path.join(out_dir, name)
        atomic_write(path, text)
        written.append(path)
    png = report_plot.plot_accuracy_vs_val_size(report_plot.mean_std(accuracy_by_val_size(runs)),
                                                os.path.join(out_dir, PLOT_FILE))
    if png:
        written.append(png)
    return written


def main(argv: Sequence[str]) -> None:
    if flags.FLAGS.from_csv:   # only the plot, from a report's results.csv (no run dirs)
        if len(argv) > 1 or not os.path.isfile(flags.FLAGS.from_csv):
            sys.stderr.write(f"error: --from_csv={flags.FLAGS.from_csv}: needs an existing "
                             "results.csv and no WORKDIR_ROOT arguments\n")
            sys.exit(2)
        os.makedirs(flags.FLAGS.out, exist_ok=True)
        png = report_plot.plot_accuracy_vs_val_size(
            report_plot.points_from_csv(flags.FLAGS.from_csv),
            os.path.join(flags.FLAGS.out, PLOT_FILE))
        if png is None:
            sys.stderr.write(f"error: --from_csv={flags.FLAGS.from_csv}: no final-epoch cell "
                             "with a val_size setting\n")
            sys.exit(1)
        print(png)
        return
    if len(argv) < 2:
        sys.stderr.write("usage: python -m experiments.report WORKDIR_ROOT... --out=DIR "
                         "(or --from_csv=results.csv --out=DIR for the plot alone)\n")
        sys.exit(2)
    try:
        written = write_report(argv[1:], flags.FLAGS.out)
    except FileNotFoundError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(1)
    print("\n".join(written))


if __name__ == "__main__":
    flags.DEFINE_string("out", "docs/results/report", "Directory of the report.")
    flags.DEFINE_string("from_csv", "", "Only redraw accuracy_vs_val_size.png from this "
                        "results.csv (a report's; no run directories needed).")
    app.run(main)
