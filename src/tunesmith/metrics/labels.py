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


MACRO_OVER = "labels present in the gold labels"


def present_labels(y: np.ndarray) -> list[int]:
    """The labels macro averages run over: those the gold labels hold (a multi-label column with a positive).

    A label with no gold example has no recall; averaged in as F1 0 it made a 20-row file's macro-F1 of a
    77-label model 5/77. Not scikit-learn's default (labels in the gold OR the predictions): a label that is
    only predicted is an error already counted in the recall of the true labels.
    """
    y = np.asarray(y)
    return (np.flatnonzero(y.sum(axis=0) > 0) if y.ndim > 1 else np.unique(y)).astype(int).tolist()


def macro_labels(y: np.ndarray, n: int) -> tuple[list[int], dict[str, Any]]:
    """The labels of the macro averages, and what report.json and the console say about them (every
    label when the gold labels hold none: a multi-label file without a positive, whose F1 is then 0)."""
    present = present_labels(y)
    over = MACRO_OVER if present else "every label (the gold labels hold none)"
    present = present or list(range(n))
    return present, {"metric": "macro_f1", "labels": len(present), "of": n, "over": over}


def classification_metrics(pred: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Scalars, per-class scores, and the confusion matrix (its most frequent cells for many labels).
    Macro-F1 averages over the labels present in `y` (`present_labels`); per-class scores list every label."""
    labels, (present, about) = list(range(len(names))), macro_labels(y, len(names))
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=present, zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, average="weighted", labels=labels, zero_division=0)),
        "macro_average": about,
        "per_class": _per_class(y, pred, names),
    }
    if len(names) <= FULL_CONFUSION_MAX:
        out["confusion_matrix"] = {"labels": names, "matrix": confusion_matrix(y, pred, labels=labels).tolist()}
    else:
        out["top_confusions"] = top_confusions(pred, y, names)
    return out


def multilabel_metrics(pred: np.ndarray, y: np.ndarray, names: list[str], threshold: float) -> dict[str, Any]:
    y, pred = y.astype(int), pred.astype(int)
    present, about = macro_labels(y, len(names))
    return {
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=present, zero_division=0)),
        "subset_accuracy": float(accuracy_score(y, pred)),
        "threshold": float(threshold),
        "macro_average": about,
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


def tune_threshold(scores: np.ndarray, y: np.ndarray, metric: str = "f1") -> float:
    """The multi-label decision threshold (one for all labels, on a 0.05 grid) that maximises micro-F1
    (metric "f1"), macro-F1 or subset accuracy on validation."""
    y = y.astype(int)
    present = macro_labels(y, y.shape[1])[0]
    score = {"f1": lambda p: f1_score(y, p, average="micro", zero_division=0),
             "macro_f1": lambda p: f1_score(y, p, average="macro", labels=present, zero_division=0),
             "accuracy": lambda p: accuracy_score(y, p)}[metric]
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    values = [score((scores >= t).astype(int)) for t in grid]
    return float(grid[int(np.argmax(values))])


def _binary_counts(p: np.ndarray, positive: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """(tp, fp, fn, tn) for every threshold (predict positive when p >= threshold), in O(n log n)."""
    order = np.argsort(-p, kind="stable")
    ps, pos = p[order], positive[order].astype(np.int64)
    cum_pos = np.concatenate([[0], np.cumsum(pos)])
    # number of scores >= t: the insertion point of t in the descending scores
    k = np.searchsorted(-ps, -thresholds, side="right")
    tp = cum_pos[k]
    fp = k - tp
    fn = pos.sum() - tp
    tn = len(p) - k - fn
    return tp, fp, fn, tn


def _binary_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray, metric: str) -> np.ndarray:
    """`metric` (the positive class's F1, macro-F1 or accuracy) at every threshold's counts; an empty
    class's F1 is 0, as scikit-learn's zero_division=0 gives."""
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_pos = np.nan_to_num(2 * tp / (2 * tp + fp + fn))
        if metric == "f1":
            return f1_pos
        if metric == "accuracy":
            return (tp + tn) / (tp + fp + fn + tn)
        f1_neg = np.nan_to_num(2 * tn / (2 * tn + fn + fp))
        return (f1_pos + f1_neg) / 2


def tune_binary_threshold(p: np.ndarray, positive: np.ndarray, metric: str = "f1") -> float:
    """The threshold on the positive class's probability that maximises `metric` (the positive class's F1,
    macro-F1 or accuracy) on validation. Candidates are 0.5 and the midpoints between consecutive distinct
    probabilities, and the two ends (everything positive, nothing positive), so each reachable split of
    the examples is tried once and the threshold sits between the examples it separates; ties go to the
    candidate nearest 0.5 (the untuned decision)."""
    u = np.unique(p.astype(np.float64))
    candidates = np.unique(np.concatenate([[0.5, u[0], np.nextafter(u[-1], np.inf)], (u[1:] + u[:-1]) / 2]))
    values = _binary_scores(*_binary_counts(p.astype(np.float64), positive, candidates), metric)
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


PR_CURVE_POINTS = 200  # points of the precision-recall curve kept in report.json


def binary_metrics(p: np.ndarray, positive: np.ndarray, threshold: float, name: str) -> dict[str, Any]:
    """The positive class's precision, recall and F1 at the threshold, average precision, and the
    precision-recall curve (at most PR_CURVE_POINTS points) for the report's plot."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    pred = p >= threshold
    prec, rec, f1, _ = precision_recall_fscore_support(positive, pred, average="binary", zero_division=0)
    out: dict[str, Any] = {"f1": float(f1), "precision": float(prec), "recall": float(rec),
                           "average_precision": None, "threshold": float(threshold), "positive_label": name}
    if positive.any() and not positive.all() and np.isfinite(p).all():  # a diverged model's NaN has no curve
        out["average_precision"] = float(average_precision_score(positive, p))
        cp, cr, _ = precision_recall_curve(positive, p)
        keep = np.unique(np.linspace(0, len(cp) - 1, min(len(cp), PR_CURVE_POINTS)).round().astype(int))
        out["pr_curve"] = {"precision": [round(float(x), 5) for x in cp[keep]],
                           "recall": [round(float(x), 5) for x in cr[keep]]}
    return out
