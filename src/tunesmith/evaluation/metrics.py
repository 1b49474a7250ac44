"""Metrics from scikit-learn and scipy (no Hub-fetched metric scripts), one function per task family."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, mean_absolute_error,
                             mean_squared_error, precision_recall_fscore_support)

LOWER_IS_BETTER = {"loss", "mse", "mae", "rmse"}


def greater_is_better(metric: str) -> bool:
    return metric.removeprefix("eval_").removeprefix("validation_") not in LOWER_IS_BETTER


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict[str, dict]:
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=None if y_true.ndim > 1 else
                                                 list(range(len(names))), zero_division=0)
    return {n: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
            for k, n in enumerate(names)}


def classification_metrics(pred: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, Any]:
    labels = list(range(len(names)))
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, average="weighted", labels=labels, zero_division=0)),
        "per_class": _per_class(y, pred, names),
        "confusion_matrix": {"labels": names,
                             "matrix": confusion_matrix(y, pred, labels=labels).tolist()},
    }


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
