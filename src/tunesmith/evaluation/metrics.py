"""Metrics from scikit-learn and scipy (no Hub-fetched metric scripts), one function per task family."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, mean_absolute_error,
                             mean_squared_error, precision_recall_fscore_support)

def _per_class(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict[str, dict]:
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=None if y_true.ndim > 1 else
                                                 list(range(len(names))), zero_division=0)
    return {n: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
            for k, n in enumerate(names)}


FULL_CONFUSION_MAX = 50  # labels up to which the whole confusion matrix is reported and drawn
TOP_CONFUSIONS = 50  # (true, predicted) pairs reported above that


def top_confusions(pred: np.ndarray, y: np.ndarray, names: list[str], k: int = TOP_CONFUSIONS) -> list[dict]:
    """The k most frequent errors as (true, predicted, count), most frequent first, ties by label order.

    Counted from the error pairs alone: a dense matrix grows with the square of the label count
    (1,200 labels: 1.4 million cells, hundreds of MB as indented JSON).
    """
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    wrong = y != pred
    codes, counts = np.unique(y[wrong] * len(names) + pred[wrong], return_counts=True)
    order = np.lexsort((codes, -counts))[:k]  # np.unique sorts codes, so ties keep (true, predicted) order
    return [{"true": names[int(c) // len(names)], "predicted": names[int(c) % len(names)], "count": int(n)}
            for c, n in zip(codes[order], counts[order])]


def classification_metrics(pred: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Scalars, per-class scores, and the confusion matrix (its most frequent cells for many labels)."""
    labels = list(range(len(names)))
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, average="weighted", labels=labels, zero_division=0)),
        "per_class": _per_class(y, pred, names),
    }
    if len(names) <= FULL_CONFUSION_MAX:
        out["confusion_matrix"] = {"labels": names, "matrix": confusion_matrix(y, pred, labels=labels).tolist()}
    else:
        out["top_confusions"] = top_confusions(pred, y, names)
    return out


def multilabel_metrics(pred: np.ndarray, y: np.ndarray, names: list[str], threshold: float) -> dict[str, Any]:
    y, pred = y.astype(int), pred.astype(int)
    return {
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(y, pred)),
        "threshold": float(threshold),
        "per_class": _per_class(y, pred, names),
    }


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from scipy.stats import pearsonr, spearmanr

    pred, y = np.asarray(pred, dtype=float), np.asarray(y, dtype=float)
    constant = np.ptp(pred) == 0 or np.ptp(y) == 0  # correlation is undefined, not zero
    return {
        "mse": float(mean_squared_error(y, pred)),
        "mae": float(mean_absolute_error(y, pred)),
        "pearson": None if constant else float(pearsonr(pred, y)[0]),
        "spearman": None if constant else float(spearmanr(pred, y)[0]),
    }


def tune_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The multi-label decision threshold that maximises micro-F1 on validation."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    f1s = [f1_score(y.astype(int), (scores >= t).astype(int), average="micro", zero_division=0) for t in grid]
    return float(grid[int(np.argmax(f1s))])
