"""Summary metrics of a finished run (pure NumPy).

- accuracies: per class, minority classes (labels >= C/2, the classes shrunk by IR);
- model selection over the per-epoch history: final epoch, validation-selected, and
  best-on-test (the protocol of the paper's tables: best test accuracy over epochs);
- where the truth is known: AUC of the learned loss weights for clean vs noisy examples,
  and the fraction of noisy examples whose soft label's argmax is the clean label.
"""
from __future__ import annotations

import json
from typing import AbstractSet, Any, Mapping, Sequence

import numpy as np


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2.

    Args:
      scores: (n,) real scores.
      positive: (n,) bool labels.

    Returns:
      AUC in [0, 1], or nan when either class is empty.
    """
    scores = np.asarray(scores, np.float64).ravel()
    positive = np.asarray(positive, bool).ravel()
    if scores.shape != positive.shape:
        raise ValueError(f"scores {scores.shape} and positive {positive.shape} differ in shape")
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # average ranks (1-based) over runs of tied scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + 1 + e)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def per_class_accuracy(correct: np.ndarray, count: np.ndarray) -> np.ndarray:
    """(C,) accuracy of each class from per-class counts (nan for a class without examples).

    Args:
      correct: (C,) correctly classified examples of each (true) class.
      count: (C,) examples of each class.
    """
    correct, count = np.asarray(correct, np.float64), np.asarray(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, correct / np.maximum(count, 1), np.nan)


def minority_accuracy(correct: np.ndarray, count: np.ndarray) -> float:
    """Accuracy over the examples of classes C/2..C-1 (those shrunk by the imbalance),
    from (C,) per-class counts as for :func:`per_class_accuracy`."""
    c = len(count)
    n = int(np.sum(np.asarray(count)[c // 2:]))
    return float(np.sum(np.asarray(correct)[c // 2:]) / n) if n else float("nan")


def select(history: Sequence[Mapping[str, Any]], *, has_val: bool = True) -> dict[str, Any]:
    """Picks the reported epochs from a per-epoch evaluation history.

    Args:
      history: records with "epoch", "test_accuracy" and (if has_val) "val_accuracy".
      has_val: False when no held-out validation exists (e.g. train_plus_val).

    Returns:
      {"final": rec, "val_selected": rec | None, "best_on_test": rec}; ties go to the
      later epoch.
    """
    if not history:
        raise ValueError("history is empty: no evaluation was recorded")
    final = history[-1]

    def best(key):
        return max(reversed(history), key=lambda r: r[key])  # reversed: later wins ties

    return {"final": final,
            "val_selected": best("val_accuracy") if has_val else None,
            "best_on_test": best("test_accuracy")}


def weight_auc(lambda_w: np.ndarray, noisy: np.ndarray) -> float:
    """AUC of the learned loss weights for clean (positive) vs noisy rows.

    The weight ``autodo_jax.losses.loss_weight(λ_W)`` is strictly increasing in λ_W and
    the AUC depends only on the order of the scores, so it is computed on λ_W itself.
    """
    return auc(np.asarray(lambda_w, np.float64).reshape(-1), ~np.asarray(noisy, bool))


def appended_rows_weights(weights: np.ndarray, num_train: int) -> dict[str, float]:
    """Mean learned loss weight of the first ``num_train`` rows (the train split) and of
    the rows after them (the clean validation examples that ``--train_on_val`` appends):
    how much the run learned to trust the clean split; {} when no rows are appended.

    Args:
      weights: (R,) loss weights ``w = loss_weight(λ_W)`` of every table row.
      num_train: N <= R, the train rows.
    """
    weights = np.asarray(weights, np.float64).reshape(-1)
    if weights.size <= num_train:
        return {}
    return {"weight_mean_train_rows": float(weights[:num_train].mean()),
            "weight_mean_val_rows": float(weights[num_train:].mean())}


def soft_label_stats(soft_logits: np.ndarray, given: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """How the learned soft labels relate to the truth.

    Args:
      soft_logits: (N, C) learned soft-label logits.
      given: (N,) training labels (possibly noisy).
      clean: (N,) true labels.

    Returns:
      noisy_fixed: fraction of noisy rows (given != clean) whose argmax is the clean label;
      noisy_kept: fraction of noisy rows whose argmax is still the wrong given label;
      clean_kept: fraction of clean rows whose argmax is still their label.
    """
    arg = np.asarray(soft_logits).argmax(-1)
    given, clean = np.asarray(given), np.asarray(clean)
    wrong = given != clean

    def frac(mask, hit):
        return float(np.mean(hit[mask])) if mask.any() else float("nan")

    return {"noisy_fixed": frac(wrong, arg == clean),
            "noisy_kept": frac(wrong, arg == given),
            "clean_kept": frac(~wrong, arg == given)}


def _eval_view(rec: Mapping[str, Any] | None, num_classes: int) -> dict[str, Any] | None:
    if rec is None:
        return None
    per_class = rec.get("test_per_class")
    out = {"epoch": rec["epoch"], "test_accuracy": rec["test_accuracy"]}
    if "val_accuracy" in rec:
        out["val_accuracy"] = rec["val_accuracy"]
    if per_class is not None:
        out["test_per_class"] = per_class
        minority = rec.get("test_minority_accuracy")
        out["test_minority_accuracy"] = minority
    return out


def build_summary(*, history: Sequence[Mapping[str, Any]], num_classes: int, has_val: bool,
                  table: Mapping[str, np.ndarray] | None, given: np.ndarray | None,
                  clean: np.ndarray | None, table_fields: AbstractSet[str], wall_time_s: float,
                  train_images: int, hyper_images: int, extra: Mapping[str, Any] = ()) -> dict[str, Any]:
    """The content of summary.json (plain JSON types, nan as None)."""
    chosen = select(history, has_val=has_val)
    out: dict[str, Any] = {
        "test_accuracy_final": chosen["final"]["test_accuracy"],
        "test_accuracy_val_selected": (chosen["val_selected"] or {}).get("test_accuracy"),
        "test_accuracy_best_on_test_paper_protocol": chosen["best_on_test"]["test_accuracy"],
        "minority_accuracy_final": chosen["final"].get("test_minority_accuracy"),
        "per_class_accuracy_final": chosen["final"].get("test_per_class"),
        "selected_epochs": {k: _eval_view(v, num_classes) for k, v in chosen.items()},
    }
    if table is not None and given is not None and clean is not None:
        noisy = np.asarray(given) != np.asarray(clean)
        out["num_noisy_train"] = int(noisy.sum())
        if "weight" in table_fields and "weight" in table:
            out["weight_auc_clean_vs_noisy"] = weight_auc(table["weight"], noisy)
        if "soft" in table_fields and "soft" in table:
            stats = soft_label_stats(table["soft"], given, clean)
            out["soft_label_noisy_fixed_fraction"] = stats["noisy_fixed"]
            out["soft_label_noisy_kept_fraction"] = stats["noisy_kept"]
            out["soft_label_clean_kept_fraction"] = stats["clean_kept"]
    out["wall_time_s"] = wall_time_s
    out["train_images"] = int(train_images)
    out["hyper_images"] = int(hyper_images)
    out["images_per_s"] = (train_images + hyper_images) / wall_time_s if wall_time_s > 0 else None
    # cost: train images per wall second (comparable across methods of one budget) and the
    # seconds spent inside the train and hyper passes (no setup or evaluation)
    out["train_images_per_s"] = train_images / wall_time_s if wall_time_s > 0 else None
    out["pass_time_s"] = float(sum(r.get("train_time_s", 0.0) + r.get("hyper_time_s", 0.0)
                                   for r in history))
    out.update(dict(extra))
    return _json_clean(out)


def _json_clean(x):
    if isinstance(x, dict):
        return {k: _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _json_clean(x.tolist())
    return x


def first_rows(table: dict[str, np.ndarray], num_rows: int) -> dict[str, np.ndarray]:
    """The first ``num_rows`` rows of every per-example field (a shared row stays whole)."""
    return {k: v if v.shape[0] == 1 else v[:num_rows] for k, v in table.items()}


def print_summary(summary: dict[str, Any]) -> None:
    """Prints the summary without the long per-class and per-epoch parts, then its path."""
    short = {k: v for k, v in summary.items()
             if k not in ("selected_epochs", "per_class_accuracy_final", "class_names",
                           "mwn_weight_curve")}
    print(json.dumps(short, indent=2))
