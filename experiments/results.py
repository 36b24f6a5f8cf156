"""Mean ± std tables over finished runs, in the paper's layout.

Reads every run directory (one holding ``summary.json`` and ``config.json``) found under
the given paths and groups runs by every setting that changes results
(``experiments.config.result_key``): one table per (dataset, model, other settings), one
row per method, one column per exact "IR-NR" (e.g. ``10-0.05``); only the seed varies
inside a cell, whose value is the mean ± sample std over seeds (and the number of runs).
Settings missing from an older ``config.json`` take today's default. A table's title lists
the settings that differ from the defaults. A method run with non-default ``ROW_FIELDS``
(``--host_policy``, ``--init_warp``) is its own row of the same table. By default the
cell is the top-1 test *error*
in % like the paper; ``--accuracy`` prints accuracy instead.

  python -m experiments.results workdirs/ --metric=final --csv=results.csv

Metrics: ``final`` (last epoch), ``val_selected`` (epoch of the best validation
accuracy), ``best_on_test`` (best test accuracy over epochs: the paper's protocol),
``minority`` (final accuracy on classes C/2..C-1), ``weight_auc``, ``soft_fixed``.

Every row also states what the method costs and which host augmentation it had: "host"
(the host policy of its runs), "wall s" (mean wall time of its runs, setup, compilation
and evaluation included), "× none" (wall seconds per train image relative to the
``none`` row of the same table). Cost is only comparable between runs of one machine
under the same load. The CSV gives the cost per cell.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from typing import Any, Iterable, Sequence

import numpy as np
from absl import app, flags

from experiments import config as cfg_lib, methods
from experiments.workdir import CONFIG_FILE, SUMMARY_FILE, atomic_write, read_json

METRIC_KEYS = {
    "final": "test_accuracy_final",
    "val_selected": "test_accuracy_val_selected",
    "best_on_test": "test_accuracy_best_on_test_paper_protocol",
    "minority": "minority_accuracy_final",
    "weight_auc": "weight_auc_clean_vs_noisy",
    "soft_fixed": "soft_label_noisy_fixed_fraction",
}
#: Metrics that are accuracies (shown as error % unless --accuracy).
ACCURACY_METRICS = ("final", "val_selected", "best_on_test", "minority")


def find_runs(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Every run under `paths`: ``{"dir", "config", "summary"}``, sorted by directory."""
    dirs = set()
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file or directory: {path}")
        for root, _, files in os.walk(path):
            if SUMMARY_FILE in files and CONFIG_FILE in files:
                dirs.add(root)
    return [{"dir": d, "config": read_json(os.path.join(d, CONFIG_FILE)),
             "summary": read_json(os.path.join(d, SUMMARY_FILE))} for d in sorted(dirs)]


#: Result fields that place a run inside a table (row, column, averaged over) rather than
#: selecting the table.
_CELL_FIELDS = ("dataset", "model", "method", "imbalance_ratio", "noise_ratio", "seed")
#: Settings that make a *row variant* of a method (e.g. val_only with the augmentation
#: AutoDO starts from) instead of another table.
ROW_FIELDS = ("host_policy", "init_warp", "train_on_val")


def row_key(config: dict[str, Any]) -> str:
    """The table row of a run: its method, plus ``[name=value, ...]`` for the row fields
    (``ROW_FIELDS``) that differ from the defaults (``"val_only[host_policy=color_subset,
    init_warp=True]"``)."""
    defaults = cfg_lib.Config()
    variant = [f"{name}={config[name]}" for name in ROW_FIELDS
               if name in config and config[name] != getattr(defaults, name)]
    return config["method"] + (f"[{', '.join(variant)}]" if variant else "")


def row_label(key: str) -> str:
    """Display name of a row key: the method's label (``methods.Method.label``; an
    unknown method keeps its name), plus its variant."""
    method, _, variant = key.partition("[")
    known = methods.METHODS.get(method)
    label = known.label if known else method
    return f"{label} [{variant}" if variant else label


def row_order(key: str) -> tuple[int, str]:
    order = {m: i for i, m in enumerate(methods.METHODS)}
    method = key.partition("[")[0]
    return order.get(method, len(order)), key


def column_name(config: dict[str, Any]) -> str:
    """The exact column name "IR-NR" (shortest round-trip repr: 0.05 stays 0.05)."""
    ir = float(config["imbalance_ratio"])
    return f"{int(ir) if ir.is_integer() else repr(ir)}-{float(config['noise_ratio'])!r}"


def column_order(column: str) -> tuple[float, float]:
    ir, nr = column.split("-", 1)
    return float(nr), float(ir)


def group_settings(config: dict[str, Any]) -> tuple[str, ...]:
    """The result-changing settings of a run other than dataset, model, method, IR, NR and
    seed that differ from the defaults, as sorted ``"name=value"`` strings. Runs with equal
    (dataset, model, group_settings) share a table; a missing field takes its default, an
    unknown one (from another version) counts as a setting."""
    defaults = cfg_lib.result_key(cfg_lib.Config())
    saved = {k: v for k, v in config.items() if k not in cfg_lib.NON_RESULT_FIELDS}
    out = []
    for name in sorted(set(defaults) | set(saved)):
        if name in _CELL_FIELDS or name in ROW_FIELDS:
            continue
        value = saved.get(name, defaults.get(name))
        if name not in defaults or value != defaults[name]:
            out.append(f"{name}={value}")
    return tuple(out)


def _cell_value(summary: dict[str, Any], metric: str, accuracy: bool) -> float | None:
    v = summary.get(METRIC_KEYS[metric])
    if v is None:
        return None
    v = float(v)
    if metric in ACCURACY_METRICS:
        return 100.0 * v if accuracy else 100.0 * (1.0 - v)
    return v


def build_tables(runs: Sequence[dict[str, Any]], metric: str = "final",
                 accuracy: bool = False) -> dict[tuple[str, str], dict[str, Any]]:
    """Groups runs into tables.

    Returns:
      {(dataset, model, settings): {"columns": [IR-NR...], "rows": [(row, {column:
      values})], "cost": ...}} where settings is ``group_settings(config)`` (``()`` for
      the defaults), row is ``row_key(config)`` (the method, or a variant of it such as
      ``val_only[host_policy=color_subset, init_warp=True]``) and values is the list of
      per-run numbers (one per seed) of that cell.
    """
    if metric not in METRIC_KEYS:
        raise ValueError(f"metric must be one of {sorted(METRIC_KEYS)}, got {metric!r}")
    groups: dict[tuple[str, str, tuple[str, ...]], dict[str, dict[str, list[float]]]] = {}
    costs: dict[tuple[str, str, tuple[str, ...]], dict[str, dict[str, list]]] = {}
    for run in runs:
        cfg = run["config"]
        v = _cell_value(run["summary"], metric, accuracy)
        if v is None:
            continue
        key = (cfg["dataset"], cfg["model"], group_settings(cfg))
        column = column_name(cfg)
        row = row_key(cfg)
        groups.setdefault(key, {}).setdefault(row, {}).setdefault(column, []).append(v)
        costs.setdefault(key, {}).setdefault(row, {}).setdefault(column, []).append(
            run_cost(run))
    out = {}
    for key, cells in sorted(groups.items()):
        columns = sorted({c for row in cells.values() for c in row}, key=column_order)
        rows = sorted(cells.items(), key=lambda kv: row_order(kv[0]))
        out[key] = {"columns": columns, "rows": rows, "cost": costs[key]}
    return out


def run_cost(run: dict[str, Any]) -> dict[str, Any]:
    """A run's cost from its summary: ``{"wall_s", "s_per_image" (wall seconds per train
    image), "host"}`` (None where the summary predates the field)."""
    s, cfg = run["summary"], run["config"]
    wall, images = s.get("wall_time_s"), s.get("train_images")
    host = s.get("host_policy")
    if not host and cfg["method"] in methods.METHODS:   # a summary older than the field
        host = methods.METHODS[cfg["method"]].run_host_policy(
            cfg.get("host_policy", "auto"), cfg.get("colour_policy", True))
    return {"wall_s": wall, "s_per_image": wall / images if wall and images else None,
            "host": host}


def row_cost(cost: dict[str, list[dict[str, Any]]], baseline: dict | None) -> dict[str, Any]:
    """Cost of a table row over all its runs: ``{"host", "wall_s", "relative"}``; relative
    is its mean seconds per train image over that of ``baseline`` (the ``none`` row's cost
    dict), None when either is unknown."""
    def mean(c, name):
        vals = [r[name] for runs in (c or {}).values() for r in runs if r[name] is not None]
        return float(np.mean(vals)) if vals else None

    hosts = sorted({str(r["host"]) for runs in cost.values() for r in runs if r["host"]})
    per_image, base = mean(cost, "s_per_image"), mean(baseline, "s_per_image")
    return {"host": "/".join(hosts) or None, "wall_s": mean(cost, "wall_s"),
            "relative": per_image / base if per_image and base else None}


def format_cell(values: Sequence[float] | None, digits: int = 1) -> str:
    if not values:
        return "–"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f} (1)"
    std = float(np.std(values, ddof=1))
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({len(values)})"


def to_markdown(tables, metric: str, accuracy: bool) -> str:
    what = (("accuracy %" if accuracy else "error %") if metric in ACCURACY_METRICS else metric)
    digits = 1 if metric in ACCURACY_METRICS else 3
    lines = []
    for (dataset, model, settings), t in tables.items():
        where = f" ({', '.join(settings)})" if settings else ""
        lines.append(f"### {dataset}, {model}{where}: top-1 test {what} ({metric}); "
                     "columns IR-NR; mean ± std (runs); cost over the row's runs")
        lines.append("| method | " + " | ".join(t["columns"]) + " | host | wall s | × none |")
        lines.append("|---|" + "---|" * (len(t["columns"]) + 3))
        for method, cells in t["rows"]:
            label = row_label(method)
            cost = row_cost(t["cost"][method], t["cost"].get("none"))
            extra = [cost["host"] or "–",
                     "–" if cost["wall_s"] is None else f"{cost['wall_s']:.0f}",
                     "–" if cost["relative"] is None else f"{cost['relative']:.2f}"]
            lines.append(f"| {label} | " + " | ".join(
                [format_cell(cells.get(c), digits) for c in t["columns"]] + extra) + " |")
        lines.append("")
    return "\n".join(lines)


def to_csv(tables, metric: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "model", "settings", "metric", "method", "setting", "mean", "std",
                "runs", "host", "wall_s_mean", "relative_cost_per_image"])
    for (dataset, model, settings), t in tables.items():
        for method, cells in t["rows"]:
            for c in t["columns"]:
                vals = cells.get(c)
                if not vals:
                    continue
                std = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
                cost = row_cost({c: t["cost"][method][c]},
                                {c: t["cost"].get("none", {}).get(c, [])})
                w.writerow([dataset, model, ";".join(settings), metric, method, c,
                            f"{np.mean(vals):.4f}", f"{std:.4f}", len(vals),
                            cost["host"] or "",
                            "" if cost["wall_s"] is None else f"{cost['wall_s']:.1f}",
                            "" if cost["relative"] is None else f"{cost['relative']:.3f}"])
    return buf.getvalue()


def _define_flags() -> None:
    """Flags exist only when run as a program (importing this module defines none)."""
    flags.DEFINE_enum("metric", "final", list(METRIC_KEYS), "Which number each cell shows.")
    flags.DEFINE_bool("accuracy", False, "Show accuracy % instead of error % (the paper's).")
    flags.DEFINE_string("csv", "", "Also write the table as CSV to this path.")
    flags.DEFINE_string("markdown", "", "Also write the Markdown table to this path.")


def main(argv: Sequence[str]) -> None:
    FLAGS = flags.FLAGS  # noqa: N806
    paths = argv[1:] or ["workdirs"]
    try:
        runs = find_runs(paths)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if not runs:
        print(f"error: no finished run (summary.json + config.json) under {paths}", file=sys.stderr)
        sys.exit(1)
    tables = build_tables(runs, FLAGS.metric, FLAGS.accuracy)
    md = to_markdown(tables, FLAGS.metric, FLAGS.accuracy)
    print(md)
    text = to_csv(tables, FLAGS.metric)
    print(text)
    for path, content in ((FLAGS.markdown, md), (FLAGS.csv, text)):
        if path:
            atomic_write(path, content)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
