r"""The report's plot: final test accuracy against the number of clean validation examples.

One panel per IR-NR setting (one figure row per table group), one line per table row. Every
row has its own marker; the line style tells the family (AutoDO solid, baselines without
clean data dashed, baselines that train on the clean split dotted, the look-ahead
competitors dash-dotted); the colour tells the method (a variant of a method, such as
``--train_on_val``, takes a lighter shade of its colour and hollow markers). The row of
the paper's protocol (λ^{A,W,S}, the main job) is drawn black and thick. The legend names
each row in words and by its flags.

The points come from finished runs (``mean_std(report.accuracy_by_val_size(runs))``) or,
without the run directories, from the ``results.csv`` a report wrote
(``points_from_csv``):

  python -m experiments.report --from_csv=docs/results/mnist5k_grid/results.csv \
      --out=docs/results/mnist5k_grid
"""
from __future__ import annotations

import csv
from typing import Any, Mapping

import numpy as np

from experiments import methods, results
from experiments.workdir import atomic_write

#: {(dataset, model, settings): {IR-NR: {row key: {clean-val size: (mean %, std %)}}}}.
Points = dict

#: The paper's protocol: the row drawn black and thick.
PAPER_ROW = "autodo_aws"

#: Line style of each family of methods (``methods.Method.family``).
FAMILY_STYLES = {"autodo": "-", "clean": ":", "lookahead": "-.", "plain": "--"}
_MARKERS = "osD^vP*X<>hpdH8"


def family(method: str) -> str:
    """The family of the method called ``method`` (``methods.Method.family``; "plain" for
    a name the registry does not know)."""
    known = methods.METHODS.get(method)
    return known.family if known else "plain"


def parse_row(key: str) -> tuple[str, dict[str, str]]:
    """``"val_only[host_policy=color_subset, init_warp=True]"`` -> ``("val_only",
    {"host_policy": "color_subset", "init_warp": "True"})``."""
    method, _, variant = key.partition("[")
    pairs = [p.split("=", 1) for p in variant.rstrip("]").split(", ") if "=" in p]
    return method, {k: v for k, v in pairs}


def row_words(key: str) -> str:
    """A row's legend entry: the method and its variant in words, then the flags."""
    method, variant = parse_row(key)
    known = methods.METHODS.get(method)
    words = known.words if known else method
    if method == PAPER_ROW and variant:
        words = r"$\lambda^{A,W,S}$"
    flags = [f"--method={method}"]
    host, warp = variant.get("host_policy"), variant.get("init_warp") == "True"
    if host == "color_subset" and warp:
        words += " + AutoDO's starting augmentation"
    elif host:
        words += f" + host augmentation {host}"
    elif warp:
        words += " + AutoDO's initial warp"
    if host:
        flags.append(f"--host_policy={host}")
    if warp:
        flags.append("--init_warp")
    if variant.get("train_on_val") == "True":
        words += " + training on the clean split too"
        flags.append("--train_on_val")
    return f"{words} ({' '.join(flags)})"


def row_styles(keys: list[str]) -> dict[str, dict[str, Any]]:
    """Matplotlib styles of the rows ``keys`` (in legend order): a marker of its own each,
    the family's line style, the method's colour (light and hollow for a variant); the
    paper's row black and thick."""
    import matplotlib  # noqa: PLC0415  (only when plotting)
    palette = matplotlib.colormaps["tab20"].colors
    hues: dict[str, int] = {}
    styles = {}
    for i, key in enumerate(keys):
        method, variant = parse_row(key)
        hue = palette[2 * (hues.setdefault(method, len(hues)) % 10)]
        style = dict(marker=_MARKERS[i % len(_MARKERS)], linestyle=FAMILY_STYLES[family(method)],
                     color=hue, linewidth=1.4, markersize=7, zorder=2)
        if variant:   # lighter (not for the paper's method, whose own row is black) and hollow
            light = hue if method == PAPER_ROW else tuple(0.55 * c + 0.45 for c in hue)
            style.update(color=light, markerfacecolor="white", markeredgewidth=1.6,
                         linewidth=1.8)
        if key == PAPER_ROW:
            style.update(color="black", linewidth=3.2, markersize=10, zorder=5)
        styles[key] = style
    return styles


def mean_std(by_size: Mapping[tuple, Mapping[str, Mapping[str, Mapping[int, list[float]]]]]) -> Points:
    """Points from ``report.accuracy_by_val_size`` (values over seeds): mean and sample
    std (0 for one seed)."""
    return {group: {column: {row: {n: (float(np.mean(v)),
                                       float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
                                   for n, v in sizes.items()}
                             for row, sizes in rows.items()}
                    for column, rows in columns.items()}
            for group, columns in by_size.items()}


def points_from_csv(path: str) -> Points:
    """Points from a report's ``results.csv`` (final-epoch top-1 test error %, one line per
    cell; the clean-val size is its ``val_size=`` setting): accuracy = 100 - error."""
    out: Points = {}
    with open(path, newline="") as f:
        for line in csv.DictReader(f):
            settings = [s for s in line["settings"].split(";") if s]
            sizes = [int(s.split("=", 1)[1]) for s in settings if s.startswith("val_size=")]
            if line["metric"] != "final" or not sizes:
                continue
            group = (line["dataset"], line["model"],
                     tuple(s for s in settings if not s.startswith("val_size=")))
            std = float(line["std"]) if line["std"] not in ("", "nan") else 0.0
            (out.setdefault(group, {}).setdefault(line["setting"], {})
                .setdefault(line["method"], {}))[sizes[0]] = (100.0 - float(line["mean"]), std)
    return out


def plot_accuracy_vs_val_size(points: Points, path: str) -> str | None:
    """Writes the PNG (atomically) and returns ``path``; None when there are no points."""
    if not points:
        return None
    import matplotlib  # noqa: PLC0415  (only when plotting)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import matplotlib.ticker  # noqa: PLC0415

    groups = sorted(points)
    ncols = max(len(points[g]) for g in groups)
    keys = sorted({r for g in groups for rows in points[g].values() for r in rows},
                  key=results.row_order)
    styles = row_styles(keys)
    fig, axes = plt.subplots(len(groups), ncols, figsize=(5.2 * ncols, 4.4 * len(groups)),
                             squeeze=False)
    for gi, group in enumerate(groups):
        columns = sorted(points[group], key=results.column_order)
        for ci in range(ncols):
            ax = axes[gi][ci]
            if ci >= len(columns):
                ax.axis("off")
                continue
            rows = points[group][columns[ci]]
            for i, key in enumerate(keys):
                if key not in rows:
                    continue
                sizes = sorted(rows[key])
                dodge = 1.0 + 0.012 * (i - (len(keys) - 1) / 2)   # error bars side by side
                ax.errorbar([n * dodge for n in sizes], [rows[key][n][0] for n in sizes],
                            yerr=[rows[key][n][1] for n in sizes], capsize=2.5,
                            label=row_words(key), **styles[key])
            sizes = sorted({n for r in rows.values() for n in r})
            ax.set_xscale("log")
            ax.set_xticks(sizes)
            ax.set_xticklabels([str(n) for n in sizes])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("clean validation examples")
            ax.set_ylabel("final test accuracy % (mean ± std over seeds)")
            title = f"imbalance ratio {columns[ci].split('-')[0]}, noise ratio " \
                    f"{columns[ci].split('-', 1)[1]} (IR-NR {columns[ci]})"
            if group[2]:
                title += "\n" + ", ".join(group[2])
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=2, fontsize=8.5,
               bbox_to_anchor=(0.5, 0.0), frameon=False,
               title="marker: one per row;  line: solid = AutoDO, dashed = no clean data used, "
                     "dotted = trains on the clean split, dash-dot = look-ahead on clean "
                     "batches;  hollow marker: a variant of the method (lighter colour)",
               title_fontsize=8.5)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=130, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path
