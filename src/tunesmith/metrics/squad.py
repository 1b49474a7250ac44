"""SQuAD v1.1 / v2.0 metrics, as the official evaluation scripts compute them (no Hub-fetched metric script).

Answers are compared after the official normalisation (lowercase, punctuation and the articles a/an/the
removed, whitespace collapsed); a prediction scores the maximum over the question's reference answers;
a question without an answer (v2) is matched only by an empty prediction. Scores are on the 0-100 scale.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """The official normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_score(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised answers; an empty side scores 1 only against another empty side."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def references(golds: Sequence[str]) -> list[str]:
    """The references a prediction is scored against: answers that normalise to nothing are left out,
    and a question with none left is a no-answer question (its one reference is "")."""
    return [g for g in golds if normalize_answer(g)] or [""]


def best_scores(prediction: str, golds: Sequence[str]) -> tuple[int, float]:
    """(exact match, F1) of one prediction: the maximum over its references."""
    refs = references(golds)
    return max(exact_score(prediction, g) for g in refs), max(f1_score(prediction, g) for g in refs)


def _mean100(xs: list[float]) -> float:
    """Mean on the 0-100 scale; NaN (null in report.json) for an empty group, which has no score."""
    return 100.0 * sum(xs) / len(xs) if xs else math.nan


def squad_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]], version_2: bool) -> dict[str, Any]:
    """exact_match and f1 over all questions; for v2 also per group: questions with an answer (HasAns_*)
    and without one (NoAns_*), with their counts."""
    em, f1 = zip(*(best_scores(p, g) for p, g in zip(predictions, golds))) if predictions else ((), ())
    out: dict[str, Any] = {"exact_match": _mean100(list(em)), "f1": _mean100(list(f1)), "total": len(predictions)}
    if version_2:
        has = [references(g) != [""] for g in golds]
        for name, want in (("HasAns", True), ("NoAns", False)):
            idx = [k for k, h in enumerate(has) if h is want]
            out[f"{name}_exact"] = _mean100([em[k] for k in idx])
            out[f"{name}_f1"] = _mean100([f1[k] for k in idx])
            out[f"{name}_total"] = len(idx)
    return out


def best_threshold(null_diffs: Sequence[float], answer_scores: Sequence[float],
                   has_answer: Sequence[bool]) -> tuple[float, float]:
    """The no-answer threshold that maximises a score, and that score (0-100), as the official v2 script
    finds it: a question is answered "" when its null-score difference (null score minus best span score)
    is above the threshold. `answer_scores[k]` is question k's score (EM or F1) when it is answered with
    its best span; a no-answer question answered with a span scores 0, answered "" scores 1.

    Thresholds are tried at every question's difference (lowest first; the first best is kept); when
    answering nothing is best, the threshold is 1.0 below the lowest difference, so applying it gives
    exactly the reported score (the official script reports 0.0 there, which need not).
    """
    if not null_diffs:
        return 0.0, math.nan
    order = sorted(range(len(null_diffs)), key=lambda k: null_diffs[k])
    current = best = sum(not h for h in has_answer)  # everything answered ""
    thresh = null_diffs[order[0]] - 1.0
    for n, k in enumerate(order):
        current += answer_scores[k] if has_answer[k] else -1
        tied = n + 1 < len(order) and null_diffs[order[n + 1]] == null_diffs[k]
        if current > best and not tied:  # equal differences are answered together by any threshold
            best, thresh = current, null_diffs[k]
    return float(thresh), 100.0 * best / len(null_diffs)
