"""Entity-level NER metrics with seqeval: an entity counts only when its type and every word of it are right.

Token-level scores flatter a tagger (most words are "O"; transformers #14043), so precision, recall and
F1 are over whole entities; accuracy is the word-level share of right tags, for reference.
"""
from __future__ import annotations

from typing import Any


def seqeval_metrics(y_true: list[list[str]], y_pred: list[list[str]], mode: str = "default") -> dict[str, Any]:
    """precision, recall, f1 (micro over entities, 0-1), accuracy (words) and a per_type table.

    `mode` "default" is seqeval's conlleval-compatible reading (an I- after O starts an entity);
    "strict" reads the tags as IOB2, so such an entity does not count.
    """
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    kw: dict[str, Any] = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0, **kw)
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])}
                for k, v in report.items() if not k.endswith(" avg")}
    words = sum(len(t) for t in y_true)
    right = sum(a == b for t, p in zip(y_true, y_pred) for a, b in zip(t, p))
    return {"precision": float(precision_score(y_true, y_pred, zero_division=0, **kw)),
            "recall": float(recall_score(y_true, y_pred, zero_division=0, **kw)),
            "f1": float(f1_score(y_true, y_pred, zero_division=0, **kw)),
            "accuracy": right / words if words else 0.0,
            "per_type": per_type}
