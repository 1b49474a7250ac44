"""What to label next: a pool's rows by the run's uncertainty (margin, entropy) and by diversity (one per
k-means cluster of the pool's embeddings), written for an annotation tool with the label column empty."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import sentiment_rows, write_csv
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import app
from tunesmith.serving.suggest import choose, suggest, uncertainty


def test_margin_and_entropy_by_hand() -> None:
    records = [{"label": "a", "probs": {"a": 0.9, "b": 0.05, "c": 0.05}},
               {"label": "a", "probs": {"a": 0.4, "b": 0.35, "c": 0.25}},
               {"label": "b", "probs": {"a": 0.2, "b": 0.5, "c": 0.3}}]
    np.testing.assert_allclose(uncertainty(records, "margin"), [1 - 0.85, 1 - 0.05, 1 - 0.2])
    entropy = [-sum(p * np.log(p) for p in r["probs"].values()) for r in records]
    np.testing.assert_allclose(uncertainty(records, "entropy"), entropy)
    assert choose(uncertainty(records, "margin"), 2) == [1, 2]
    multi = [{"labels": ["x"], "probs": {"x": 0.9, "y": 0.45}}, {"labels": [], "probs": {"x": 0.1, "y": 0.2}}]
    np.testing.assert_allclose(uncertainty(multi, "margin"), [1 - 2 * 0.05, 1 - 2 * 0.3])
    # one per cluster: the most uncertain of each, most uncertain first; ties keep the earlier row
    assert choose(np.array([0.1, 0.9, 0.5, 0.7, 0.9]), 2, clusters=np.array([0, 0, 1, 1, 0])) == [1, 3]


def _pool(tmp_path: Path) -> Path:
    rows = [{"id": k, "text": r["text"]} for k, r in enumerate(sentiment_rows(30, seed=11))]
    return write_csv(tmp_path / "pool.csv", rows)


def test_the_pool_is_ranked_by_the_runs_own_probabilities(contract_run: Any, tmp_path: Path) -> None:
    predictor = tunesmith.load(contract_run("text-classification"))
    pool = _pool(tmp_path)
    texts = [r["text"] for r in csv.DictReader(open(pool, encoding="utf-8"))]
    probs = [sorted(p["probs"].values(), reverse=True) for p in predictor.predict(texts)]
    margin = [1 - (p[0] - p[1]) for p in probs]
    expected = sorted(range(len(texts)), key=lambda i: (-margin[i], i))[:5]
    picked = suggest(predictor, pool, 5, "margin")
    assert [s["line"] - 2 for s in picked] == expected  # line 1 is the header
    assert [s["row"]["text"] for s in picked] == [texts[i] for i in expected]
    assert [s["score"] for s in picked] == pytest.approx([margin[i] for i in expected], abs=1e-6)


def test_diverse_takes_the_most_uncertain_row_of_each_kmeans_cluster(contract_run: Any, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sklearn.cluster import KMeans

    run_dir = contract_run("text-classification")
    predictor = tunesmith.load(run_dir)
    pool = _pool(tmp_path)
    texts = [r["text"] for r in csv.DictReader(open(pool, encoding="utf-8"))]
    x = SentenceTransformer(str(run_dir / "model"), device="cpu").encode(texts, normalize_embeddings=True)
    clusters = KMeans(n_clusters=4, n_init=4, random_state=0).fit_predict(x.astype(np.float64))
    picked = suggest(predictor, pool, 4, "diverse")
    assert sorted(clusters[s["line"] - 2] for s in picked) == [0, 1, 2, 3]
    margin = uncertainty(predictor.predict(texts), "margin")
    for s in picked:
        same = [i for i in range(len(texts)) if clusters[i] == clusters[s["line"] - 2]]
        assert s["line"] - 2 == max(same, key=lambda i: (margin[i], -i))


def test_the_cli_writes_rows_for_an_annotation_tool(contract_run: Any, tmp_path: Path) -> None:
    out = tmp_path / "to_label.csv"
    result = CliRunner().invoke(app, ["suggest", str(contract_run("text-classification")), "--pool",
                                      str(_pool(tmp_path)), "-n", "3", "-o", str(out), "--strategy", "entropy"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert len(rows) == 3 and list(rows[0])[:3] == ["id", "text", "label"]
    assert all(r["label"] == "" for r in rows) and [r["tunesmith_rank"] for r in rows] == ["1", "2", "3"]
    bad = CliRunner().invoke(app, ["suggest", str(contract_run("text-classification")), "--pool",
                                   str(_pool(tmp_path)), "--strategy", "random"])
    assert bad.exit_code != 0 and "unknown strategy 'random'; choose one of margin, entropy, diverse" in bad.output
