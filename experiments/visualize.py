"""PNG plots of a finished run (matplotlib, Agg backend, no display needed).

  python -m experiments.visualize --workdir=workdirs/mnist5k_autodo_aws_ir10_nr0.2_s0

Writes into ``<workdir>/plots`` (or --out_dir):
- ``curves.png``: train loss and train/validation/test accuracy per epoch;
- ``weights.png``: histograms of the learned loss weights, clean vs noisy examples;
- ``soft_labels.png``: what the learned soft labels say for noisy and clean examples,
  and the clean-label vs soft-label-argmax matrix of the noisy examples;
- ``augmentation.png``: mean learned probability σ(p) and magnitude σ(m) of each
  augmentation op per (clean) class.
Plots whose table field the method did not learn are skipped.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from autodo_jax.losses import loss_weight  # noqa: E402
from experiments.workdir import load_final_table, read_metrics  # noqa: E402
from experiments.summary import weight_auc  # noqa: E402


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(workdir: str, path: str) -> str | None:
    recs = read_metrics(workdir, "epoch")
    if not recs:
        return None
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    ep = [r["epoch"] for r in recs]
    for key, label in (("train_loss", "train"), ("val_loss", "validation"), ("test_loss", "test")):
        ys = [r.get(key) for r in recs]
        if any(y is not None for y in ys):
            ax_l.plot(ep, [np.nan if y is None else y for y in ys], label=label)
    ax_l.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_l.legend()
    for key, label in (("train_accuracy", "train (given labels)"), ("val_accuracy", "validation"),
                       ("test_accuracy", "test")):
        ys = [r.get(key) for r in recs]
        if any(y is not None for y in ys):
            ax_a.plot(ep, [np.nan if y is None else y for y in ys], label=label)
    ax_a.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_a.legend()
    return _save(fig, path)


def _truth_note(t: dict) -> str:
    """Title suffix for user data, whose true label noise is unknown (final_table.npz
    ``clean_labels_known`` False): "clean"/"noisy" then mean before/after synthetic noise."""
    if bool(t.get("clean_labels_known", True)):
        return ""
    return "\n(user data: noisy = synthetic flips only; true label noise unknown)"


def plot_weights(t: dict, path: str) -> str | None:
    if "weight" not in t:
        return None
    w = np.asarray(loss_weight(t["weight"].reshape(-1)), np.float64)
    noisy = t["noisy"].astype(bool)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(w.min(), w.max() + 1e-9, 40)
    ax.hist(w[~noisy], bins=bins, alpha=0.6, label=f"clean ({(~noisy).sum()})", density=True)
    if noisy.any():
        ax.hist(w[noisy], bins=bins, alpha=0.6, label=f"noisy ({noisy.sum()})", density=True)
    auc = weight_auc(t["weight"], noisy)
    ax.set(xlabel="learned loss weight w(λ_W)", ylabel="density",
           title=f"loss weights (AUC clean vs noisy = {auc:.3f}){_truth_note(t)}")
    ax.legend()
    return _save(fig, path)


def plot_soft_labels(t: dict, path: str) -> str | None:
    if "soft" not in t:
        return None
    arg = t["soft"].argmax(-1)
    given, clean = t["given_labels"], t["clean_labels"]
    wrong = given != clean
    c = int(t["num_classes"])
    fig, (ax_b, ax_m) = plt.subplots(1, 2, figsize=(11, 4.5))
    groups = [("noisy", wrong), ("clean", ~wrong)]
    names = ["= clean label", "= given label", "other"]
    for gi, (name, mask) in enumerate(groups):
        n = max(int(mask.sum()), 1)
        if name == "noisy":
            fr = [np.sum(arg[mask] == clean[mask]) / n, np.sum(arg[mask] == given[mask]) / n]
        else:
            fr = [np.sum(arg[mask] == clean[mask]) / n, 0.0]
        fr.append(1.0 - sum(fr))
        bottom = 0.0
        for k, v in enumerate(fr):
            ax_b.bar(gi, v, bottom=bottom, color=f"C{k}", label=names[k] if gi == 0 else None)
            bottom += v
    ax_b.set_xticks([0, 1], [f"noisy ({wrong.sum()})", f"clean ({(~wrong).sum()})"])
    ax_b.set(ylabel="fraction", title=f"argmax of the learned soft label{_truth_note(t)}")
    ax_b.legend()
    m = np.zeros((c, c))
    np.add.at(m, (clean[wrong], arg[wrong]), 1)
    im = ax_m.imshow(m, cmap="viridis")
    fig.colorbar(im, ax=ax_m)
    ax_m.set(xlabel="soft-label argmax", ylabel="clean label", title="noisy examples")
    return _save(fig, path)


def plot_augmentation(t: dict, path: str) -> str | None:
    if "aug_p" not in t:
        return None
    p, m = _sigmoid(t["aug_p"]), _sigmoid(t["aug_m"])
    ops = [str(o) for o in t.get("op_names", np.arange(p.shape[-1]))]
    c = int(t["num_classes"])
    if p.shape[0] == 1:  # shared row
        rows_p, rows_m, ylabels = p, m, ["shared"]
    else:
        clean = t["clean_labels"]
        rows_p = np.stack([p[clean == k].mean(0) if (clean == k).any() else np.full(p.shape[1], np.nan)
                           for k in range(c)])
        rows_m = np.stack([m[clean == k].mean(0) if (clean == k).any() else np.full(m.shape[1], np.nan)
                           for k in range(c)])
        ylabels = [str(k) for k in range(c)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(ylabels) + 2.5))
    for ax, rows, title in ((axes[0], rows_p, "probability σ(p)"), (axes[1], rows_m, "magnitude σ(m)")):
        im = ax.imshow(rows, aspect="auto", cmap="magma")
        fig.colorbar(im, ax=ax)
        ax.set_xticks(range(len(ops)), ops, rotation=45, ha="right")
        ax.set_yticks(range(len(ylabels)), ylabels)
        ax.set(ylabel="clean class", title=f"mean learned {title}")
    return _save(fig, path)


def make_plots(workdir: str, out_dir: str | None = None) -> list[str]:
    """Writes every applicable plot of `workdir`; returns the written paths."""
    out_dir = out_dir or os.path.join(workdir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    written = [plot_curves(workdir, os.path.join(out_dir, "curves.png"))]
    try:
        t = load_final_table(workdir)
    except FileNotFoundError:
        t = None
    if t is not None:
        written += [plot_weights(t, os.path.join(out_dir, "weights.png")),
                    plot_soft_labels(t, os.path.join(out_dir, "soft_labels.png")),
                    plot_augmentation(t, os.path.join(out_dir, "augmentation.png"))]
    return [w for w in written if w]


def _define_flags() -> None:
    """Flags exist only when run as a program (importing this module defines none)."""
    flags.DEFINE_string("workdir", None, "Run directory to plot (or give it as the argument).")
    flags.DEFINE_string("out_dir", "", "Where to write the PNGs (default <workdir>/plots).")


def main(argv: Sequence[str]) -> None:
    fl = flags.FLAGS
    workdir = fl.workdir or (argv[1] if len(argv) > 1 else None)
    if not workdir or not os.path.isdir(workdir):
        print(f"error: --workdir (or the first argument) must be a run directory, "
              f"got {workdir!r}", file=sys.stderr)
        sys.exit(2)
    for path in make_plots(workdir, fl.out_dir or None):
        print(path)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
