"""Few labelled rows: the contrastive (SetFit) method, data.train_per_class and the data report's advice.
(The contrastive method also runs the whole task contract grid: tests/test_task_contract.py.)"""
from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import sentiment_rows, write_csv

import tunesmith
from tunesmith.errors import ConfigError
from tunesmith.tasks.contrastive import draw_pairs


def test_each_round_pairs_every_row_with_one_row_of_its_label_and_one_of_another() -> None:
    labels = [0, 0, 1, 1, 2]  # row 4 is the only row of its class: it has no positive partner
    drawn = draw_pairs(labels, pairs=3, seed=0)
    assert len(drawn) == 3 * (4 * 2 + 1)
    for a, b, s in drawn:
        assert a != b and s == (1.0 if labels[a] == labels[b] else 0.0)
    per_row = Counter((a, s) for a, _, s in drawn)
    assert per_row == {**{(i, 1.0): 3 for i in range(4)}, **{(i, 0.0): 3 for i in range(5)}}
    assert [(a, s) for a, _, s in drawn[:9]] == [(0, 1.0), (0, 0.0), (1, 1.0), (1, 0.0), (2, 1.0), (2, 0.0),
                                                (3, 1.0), (3, 0.0), (4, 0.0)]  # round by round, row by row
    positives = {(a, b) for a, b, s in drawn if s == 1.0}
    assert positives <= {(0, 1), (1, 0), (2, 3), (3, 2)}
    assert draw_pairs(labels, 3, seed=0) == drawn and draw_pairs(labels, 3, seed=1) != drawn


def test_multi_label_rows_pair_with_a_row_sharing_a_label_and_one_sharing_none() -> None:
    labels = [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]]
    drawn = draw_pairs(labels, pairs=2, seed=0)
    pos = {a: {b for x, b, s in drawn if x == a and s == 1.0} for a in range(4)}
    neg = {a: {b for x, b, s in drawn if x == a and s == 0.0} for a in range(4)}
    assert all(pos[a] <= {0: {1}, 1: {0, 2}, 2: {1}, 3: set()}[a] for a in range(4))
    assert all(neg[a] <= {0: {2, 3}, 1: {3}, 2: {0, 3}, 3: {0, 1, 2}}[a] for a in range(4))
    assert not pos[3] and Counter(a for a, _, s in drawn if s == 0.0) == {0: 2, 1: 2, 2: 2, 3: 2}


def _few_shot_config(base_config: dict, tmp_path: Path, **task: Any) -> dict:
    cfg = copy.deepcopy(base_config)
    cfg["task"] = {"type": "text-classification", "method": "contrastive", "pairs": 10, **task}
    cfg["data"]["train"] = str(write_csv(tmp_path / "train.csv", sentiment_rows(16, seed=3)))
    cfg["data"]["validation"] = str(write_csv(tmp_path / "validation.csv", sentiment_rows(40, seed=4)))
    cfg["data"]["test"] = str(write_csv(tmp_path / "test.csv", sentiment_rows(40, seed=5)))
    cfg["train"].update(epochs=4, lr=5e-3)
    return cfg


def test_a_contrastive_run_exports_a_sentence_transformer_whose_head_is_a_logistic_regression(
        base_config: dict, tmp_path: Path) -> None:
    """The exported folder loads with sentence-transformers and embeds as the run's body; the head is
    scikit-learn's LogisticRegression fitted on those embeddings of the 16 training rows; tunesmith.load
    predicts its probabilities, and the run learned (pairs' loss down, test accuracy up from chance)."""
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    cfg = _few_shot_config(base_config, tmp_path)
    run = tunesmith.train(cfg)
    assert run.report["train"]["speed_paths"]["fast_bert"].startswith("off (task.method: contrastive")
    losses = [json.loads(x)["loss"] for x in (run.dir / "metrics.jsonl").read_text().splitlines()
              if '"train"' in x]
    assert len(losses) == 4 * 20 and sum(losses[-5:]) < 0.5 * sum(losses[:5])  # 16 rows x 10 x 2 pairs, batch 16
    train = [r for r in sentiment_rows(16, seed=3)]
    test = sentiment_rows(40, seed=5)
    body = SentenceTransformer(str(run.dir / "model"), device="cpu")
    x_train = body.encode([r["text"] for r in train], convert_to_numpy=True).astype(np.float64)
    x_test = body.encode([r["text"] for r in test], convert_to_numpy=True).astype(np.float64)
    predictor = tunesmith.load(run.dir)
    ours = predictor.model.embed(**predictor.task.collate(
        predictor.task.preprocess(predictor._table(predictor.records([r["text"] for r in test])),
                                  predictor.tokenizer).__getitems__(list(range(len(test))))).inputs)
    np.testing.assert_allclose(ours.detach().numpy(), x_test, rtol=0, atol=1e-5)
    reference = LogisticRegression().fit(x_train, [r["label"] for r in train])
    expected = reference.predict_proba(x_test)
    got = predictor.predict([r["text"] for r in test])
    k = list(reference.classes_)
    for p, e in zip(got, expected):
        assert [p["probs"][c] for c in k] == pytest.approx(list(e), abs=1e-4)
    state = json.loads((run.dir / "model" / "tunesmith.json").read_text())
    assert state["task"]["method"] == "contrastive" and "head.safetensors" in state["files"]
    # the pairs taught the body: the same regression on the untrained body's embeddings (sentence-transformers'
    # mean pooling of the tiny BERT, normalised) gets 0.55 of these 40 test rows right, the run 0.775
    plain = SentenceTransformer(base_config["model"]["name"], device="cpu")
    before = [plain.encode([r["text"] for r in rows], normalize_embeddings=True).astype(np.float64)
              for rows in (train, test)]
    untrained = LogisticRegression().fit(before[0], [r["label"] for r in train]).score(before[1],
                                                                                        [r["label"] for r in test])
    assert run.report["test"]["accuracy"] >= untrained + 0.15, (run.report["test"]["accuracy"], untrained)


@pytest.mark.parametrize(("option", "value"), [("sampler", "balanced"), ("class_weights", "balanced"),
                                               ("long_text", "chunks"), ("loss", "focal")])
def test_options_that_do_not_apply_to_the_pairs_are_refused(base_config: dict, tmp_path: Path, option: str,
                                                            value: str) -> None:
    with pytest.raises(ConfigError, match=f"task.{option}: {value} does not apply to task.method: contrastive"):
        tunesmith.train(_few_shot_config(base_config, tmp_path, **{option: value}))


def test_train_per_class_keeps_a_seeded_sample_of_each_class_and_says_so(base_config: dict, tmp_path: Path) -> None:
    from tunesmith.run import prepare
    from tunesmith.config import load_config

    rows = [{"text": f"good {i}", "label": "pos"} for i in range(10)] + \
        [{"text": f"bad {i}", "label": "neg"} for i in range(5)] + [{"text": "so so", "label": "meh"}] * 2
    cfg = copy.deepcopy(base_config)
    cfg["data"].update(train=str(write_csv(tmp_path / "train.csv", rows)), train_per_class=4,
                       validation=str(write_csv(tmp_path / "v.csv", rows[:6])),
                       test=str(write_csv(tmp_path / "t.csv", rows[:6])))
    p = prepare(load_config(cfg))
    kept = p.data.splits["train"]
    assert Counter(p.task.labels[k] for k in kept["label"]) == {"pos": 4, "neg": 4, "meh": 2}
    assert kept.line == sorted(kept.line)  # in file order
    assert p.data.sampled["train"] == "4 rows per class: 10 of 17 rows, seed 42; 1 classes have fewer and keep all"
    again = prepare(load_config(cfg)).data.splits["train"]
    assert again.line == kept.line
    advice = [w for w in p.report["warnings"] if "fewer than 8 training rows" in w]
    assert advice == ["3 classes have fewer than 8 training rows: 'meh' (2), 'neg' (4), 'pos' (4); fine-tuning a "
                      "classifier on so few is often close to chance: task.method: contrastive (few-shot, learns "
                      "from pairs of rows) does much better there"]
    cfg["task"] = {"type": "text-classification", "problem_type": "multi_label"}
    with pytest.raises(ConfigError, match="data.train_per_class samples N rows of each class"):
        prepare(load_config(cfg))


def test_multi_label_contrastive_heads_are_one_regression_per_label(base_config: dict, tmp_path: Path) -> None:
    """Multi-label pairs share a label (or none); the head is scikit-learn's one-vs-rest regressions on the
    exported body's embeddings, a sigmoid per label."""
    import random

    from conftest import TOPICS
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    rng = random.Random(0)

    def rows(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            topics = sorted(rng.sample(list(TOPICS), rng.randint(1, 2)))
            out.append({"text": " ".join(w for t in topics for w in rng.choices(TOPICS[t], k=2)),
                        "label": "|".join(topics)})
        return out

    train, test = rows(24), rows(20)
    cfg = copy.deepcopy(base_config)
    cfg["task"] = {"type": "text-classification", "method": "contrastive", "pairs": 5, "label_separator": "|"}
    cfg["data"].update(train=str(write_csv(tmp_path / "train.csv", train)),
                       validation=str(write_csv(tmp_path / "v.csv", test)),
                       test=str(write_csv(tmp_path / "t.csv", test)))
    run = tunesmith.train(cfg)
    predictor = tunesmith.load(run.dir)
    labels = predictor.task.labels
    body = SentenceTransformer(str(run.dir / "model"), device="cpu")
    y = np.asarray([[int(name in r["label"].split("|")) for name in labels] for r in train])
    reference = OneVsRestClassifier(LogisticRegression()).fit(body.encode([r["text"] for r in train]).astype(
        np.float64), y)
    expected = reference.predict_proba(body.encode([r["text"] for r in test]).astype(np.float64))
    for got, e in zip(predictor.predict([r["text"] for r in test]), expected):
        assert [got["probs"][name] for name in labels] == pytest.approx(list(e), abs=1e-4)
