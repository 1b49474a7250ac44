"""Label errors: the training rows whose given label the rest of the data disagrees with (confident learning).

Each row is scored by a model that did not see it: the rows are embedded once by a sentence-embedding model
(the run's model through sentence-transformers: its own pooling for a sentence-transformers folder such as the
embedded default, mean pooling otherwise), and a logistic regression on those embeddings gives each row its
class probabilities out of fold (FOLDS stratified folds, seeded). Training FOLDS copies of the Transformer
instead would take FOLDS runs; a regression on frozen embeddings takes seconds and, on rows this noisy, ranks
the flipped labels well (bench/label_issues.py measures it). cleanlab's `find_label_issues` (confident
learning, Northcutt et al. 2021) then picks the rows whose given label is unlikely by per-class thresholds,
ranked by the probability of the given label, lowest first.

Works for every task whose rows have one class each (`Task.stratify_keys`), read through the task's
declaration: its string input roles are the text, its gold value the given label.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .embeddings import embed, row_texts
from .errors import ConfigError
from .io import LABEL_ISSUES_FILE
from .types import Table

if TYPE_CHECKING:
    from .tasks.base import Task

FOLDS = 5
CS = (0.1, 1.0, 10.0, 100.0)  # the regression's inverse regularisation strengths tried
METHOD = (f"out-of-fold probabilities of a logistic regression on frozen sentence embeddings ({FOLDS} stratified "
          "folds, C by cross-validated log loss), then cleanlab.filter.find_label_issues (confident learning), "
          "ranked by self-confidence")


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Each row's class probabilities from a logistic regression fitted on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score

    folds = min(FOLDS, int(np.bincount(y).min()))
    if folds < 2:
        raise ConfigError("finding label errors needs at least 2 rows of every class (each row is scored by a "
                          "model fitted on the others)")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    # confident learning needs calibrated confidence: scikit-learn's default C=1 on unit-length embeddings
    # is so regularised that every probability is near uniform (a tiny BERT's: 0.56 on average where the
    # classes separate perfectly), so C is the one of CS with the best cross-validated log loss
    scores = {c: cross_val_score(LogisticRegression(C=c, max_iter=1000), x, y, cv=cv, scoring="neg_log_loss").mean()
              for c in CS}
    best = max(CS, key=lambda c: (scores[c], -c))
    return cross_val_predict(LogisticRegression(C=best, max_iter=1000), x, y, method="predict_proba", cv=cv)


def find_label_issues(task: "Task", table: Table, model_name: str, seed: int, split: str = "train") -> list[dict]:
    """The rows of `table` most likely mislabelled, most likely first: {split, file, line, input, given,
    suggested, given_probability, suggested_probability}."""
    from cleanlab.filter import find_label_issues as confident_learning

    keys = task.stratify_keys(table)
    if keys is None:
        raise ConfigError(f"finding label errors needs rows of one class each; the {task.name} task's rows "
                          "have none (multi-label, regression, spans)")
    gold = [task.gold(table, i) for i in range(len(table))]
    names = sorted({str(g) for g in gold})
    y = np.asarray([names.index(str(g)) for g in gold])
    probs = out_of_fold_probabilities(embed(row_texts(task, table), model_name), y, seed)
    ranked = confident_learning(labels=y, pred_probs=probs, return_indices_ranked_by="self_confidence")
    inputs = [r.name for r in task.roles() if not r.target and r.name in table.columns]
    out = []
    for i in ranked:
        k = int(np.argmax(probs[i]))
        out.append({"split": split, "file": table.file[i], "line": table.line[i],
                    "input": {r: table.columns[r][i] for r in inputs}, "given": gold[i], "suggested": names[k],
                    "given_probability": round(float(probs[i, y[i]]), 4),
                    "suggested_probability": round(float(probs[i, k]), 4)})
    return out


def issue_reason(issue: dict) -> str:
    """How a dropped row's entry in dropped_rows.jsonl says why (data.drop_label_issues)."""
    return (f"label issue: given {issue['given']!r} (probability {issue['given_probability']}), the data "
            f"suggests {issue['suggested']!r} ({issue['suggested_probability']})")


def check_labels(config: Any, overrides: list[str] | dict | None = None,
                 output: str | Path | None = None) -> list[dict]:
    """Find the training split's label errors for a config (its data read and split as `train` would) and
    write them to `output` (default label_issues.jsonl in the current folder) as JSON lines."""
    from .config import load_config
    from .data.prepare import load_splits, make_missing_splits, sample_rows
    from .io import atomic_write_jsonl
    from .models import resolve_model_name
    from .tasks.base import get_task

    cfg = load_config(config, overrides)
    task = get_task(cfg)
    data = load_splits(cfg.data, task.roles())
    task.fit(data.splits)
    make_missing_splits(data, cfg.data, task.stratify_keys)
    sample_rows(data, cfg.data, task.stratify_keys)
    issues = find_label_issues(task, data.splits["train"], resolve_model_name(cfg.model, cfg.data.cache_dir),
                               cfg.data.split_seed)
    atomic_write_jsonl(Path(output or LABEL_ISSUES_FILE), issues)
    return issues
