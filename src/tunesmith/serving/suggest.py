"""What to label next: the rows of an unlabelled pool that a run's model is least sure of (active learning).

Strategies, each over the class probabilities of the run's predictions (any task whose prediction records
carry `probs`):

- `margin`: the smallest gap between the two most probable classes first (multi-label: the label whose
  probability is nearest 0.5);
- `entropy`: the largest entropy of the probabilities first (multi-label: the sum of the labels' binary
  entropies);
- `diverse`: the pool's sentence embeddings (the run's model through sentence-transformers) in n k-means
  clusters (seeded), and from each cluster its row of the smallest margin, so the n rows are not n
  near-copies of one confusing sentence; most uncertain first.

The output is the pool's rows as they were, with the label column empty (for an annotation tool to fill;
CSV, TSV or JSONL by extension) and three columns of tunesmith's: rank, score (the uncertainty) and the
predicted label.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..io import atomic_writer
from .inputs import PredictInput

if TYPE_CHECKING:
    from .predictor import Predictor

STRATEGIES = ("margin", "entropy", "diverse")


def uncertainty(records: list[dict], strategy: str) -> np.ndarray:
    """How unsure each prediction is (higher: more worth labelling), from its `probs`."""
    if not records or "probs" not in records[0]:
        raise ConfigError("suggest ranks rows by their predicted class probabilities; this task's predictions "
                          "carry none")
    p = np.asarray([list(r["probs"].values()) for r in records], dtype=np.float64)
    multi = "labels" in records[0]  # independent probabilities, one per label
    if strategy == "entropy":
        q = np.clip(p, 1e-12, 1.0)
        if multi:
            r = np.clip(1 - p, 1e-12, 1.0)
            return -(p * np.log(q) + (1 - p) * np.log(r)).sum(1)
        return -(p * np.log(q)).sum(1)
    if multi:
        return 1.0 - 2.0 * np.abs(p - 0.5).min(1)
    top = np.sort(p, axis=1)[:, ::-1]
    return 1.0 - (top[:, 0] - (top[:, 1] if p.shape[1] > 1 else 0.0))


def choose(scores: np.ndarray, n: int, clusters: np.ndarray | None = None) -> list[int]:
    """The n rows to label, most uncertain first; with `clusters`, the most uncertain row of each cluster
    (ties: the earlier row)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if clusters is None:
        return order[:n]
    picked, seen = [], set()
    for i in order:
        if clusters[i] not in seen:
            seen.add(clusters[i])
            picked.append(i)
    return picked[:n]


def suggest(predictor: "Predictor", pool: str | Path, n: int, strategy: str = "margin",
            seed: int = 0) -> list[dict[str, Any]]:
    """The n rows of `pool` worth labelling next: {"line", "row" (as read), "score", "predicted"}."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    source = PredictInput(pool, predictor.cfg, predictor.inputs)
    read = [x for chunk in source.chunks() for x in chunk]
    if not read:
        raise ConfigError(f"{pool} has no rows to suggest from")
    lines, rows = [ln for ln, _ in read], [r for _, r in read]
    table = predictor._table(rows, str(source.path), lines, source.columns)
    preds = predictor.predict_table(table, None)
    scores = uncertainty(preds, "margin" if strategy == "diverse" else strategy)
    clusters = None
    if strategy == "diverse" and n < len(rows):
        from sklearn.cluster import KMeans

        from ..embeddings import embed, row_texts

        x = embed(row_texts(predictor.task, table), str(predictor.model_dir))
        clusters = KMeans(n_clusters=n, n_init=4, random_state=seed).fit_predict(x)
    picked = choose(scores, n, clusters)
    return [{"line": lines[i], "row": rows[i], "score": round(float(scores[i]), 6),
             "predicted": preds[i].get("label", preds[i].get("labels"))} for i in picked]


def write_suggestions(path: str | Path, suggestions: list[dict[str, Any]], label_column: str) -> None:
    """The rows for annotation: as read, the label column empty, then tunesmith's rank, score and prediction."""
    path = Path(path)
    keys: list[str] = []
    for s in suggestions:
        keys += [k for k in s["row"] if k not in keys]
    label = label_column
    out = [{**{k: s["row"].get(k) for k in keys}, label: "", "tunesmith_rank": k + 1,
            "tunesmith_uncertainty": s["score"], "tunesmith_predicted": s["predicted"]}
           for k, s in enumerate(suggestions)]
    with atomic_writer(path) as f:
        if path.suffix.lower() in (".csv", ".tsv"):
            from .predictor import safe_cell

            w = csv.DictWriter(f, fieldnames=list(out[0]) if out else [*keys, label],
                               delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            w.writeheader()
            w.writerows({k: safe_cell(v) for k, v in r.items()} for r in out)
        else:
            for r in out:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
