"""Long documents (head_tail, chunks with per-document aggregation) and imbalanced labels (class weights,
focal loss, the balanced sampler, the tuned binary threshold) in text classification."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FILLER, NEGATIVE, POSITIVE, write_csv, write_jsonl

import tunesmith
from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.metrics.labels import binary_metrics, tune_binary_threshold
from tunesmith.run import prepare
from tunesmith.tasks.base import Batch, get_task
from tunesmith.tokens import windows
from tunesmith.training.batching import balanced_order, batch_plan

CLS, SEP = 101, 102


def _single(n: int) -> tuple[list[int], list[int]]:
    """[CLS] 1..n [SEP] and its special-tokens mask."""
    return [CLS, *range(1, n + 1), SEP], [1] + [0] * n + [1]


# ---------------------------------------------------------------- windows and head_tail

@pytest.mark.parametrize("n,max_length,stride", [(40, 10, 3), (8, 10, 3), (9, 10, 3), (23, 12, 4), (100, 16, 0),
                                                (30, 10, 7)])
def test_windows_cover_every_token_with_the_given_overlap(n: int, max_length: int, stride: int) -> None:
    ids, special = _single(n)
    parts = windows(ids, special, None, max_length, stride)
    contents = [p[0][1:-1] for p in parts]
    assert all(p[0][0] == CLS and p[0][-1] == SEP and len(p[0]) <= max_length for p in parts)
    size = max_length - 2
    if n <= size:
        assert contents == [list(range(1, n + 1))] and parts[0][2] == n
        return
    step = size - min(stride, size // 2)  # the overlap is at most half a window
    m = 1 + -(-(n - size) // step)
    # window k starts at token k * step, the last one ends with the text; every window is full
    assert [c[0] for c in contents] == [1 + k * step for k in range(m - 1)] + [n - size + 1]
    assert all(c == list(range(c[0], c[0] + size)) for c in contents)
    for a, b in zip(contents[:-2], contents[1:-1]):
        assert len(set(a) & set(b)) == size - step
    assert len(set(contents[-2]) & set(contents[-1])) >= size - step
    # the tokens each window adds sum to the text: aggregation by them counts every token once
    assert [p[2] for p in parts] == [size] + [len(set(b) - set(a)) for a, b in zip(contents, contents[1:])]
    assert sum(p[2] for p in parts) == n


def test_windows_keep_the_second_text_of_a_pair_whole() -> None:
    ids = [CLS, *range(1, 21), SEP, 50, 51, 52, SEP]
    special = [1] + [0] * 20 + [1, 0, 0, 0, 1]
    types = [0] * 22 + [1] * 4
    parts = windows(ids, special, types, 12, 2)  # 6 fixed tokens, 6 of the first text per window, step 4
    assert [p[0] for p in parts] == [[CLS, *range(s + 1, s + 7), SEP, 50, 51, 52, SEP] for s in (0, 4, 8, 12, 14)]
    assert all(p[1] == [0] * (len(p[0]) - 4) + [1] * 4 for p in parts)
    # a second text that leaves the first under a quarter of the window: one cut window, not dozens
    ids = [CLS, *range(1, 41), SEP, *range(50, 60), SEP]
    special = [1] + [0] * 40 + [1] + [0] * 10 + [1]
    (only,) = windows(ids, special, None, 12, 2)
    assert len(only[0]) == 12 and only[0][0] == CLS and only[0][-1] == SEP


def _long_rows(n: int, seed: int) -> list[dict]:
    """Long documents: 16 filler words, then 30 words with a sentiment word every 6 (the first window of
    14 tokens, all that truncate keeps at max_length 16, holds no sentiment word)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.choices(FILLER, k=16)
        for _ in range(5):
            words += rng.choices(FILLER, k=5) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rows.append({"text": " ".join(words), "label": label})
    return rows


def _config(tiny_model_dir: str, tmp_path: Path, task: dict, **train: object) -> dict:
    files = {s: str(write_csv(tmp_path / f"{s}.csv", _long_rows(k, seed)))
             for s, k, seed in (("train", 96, 1), ("validation", 24, 2), ("test", 24, 3))}
    return {"task": {"type": "text-classification", **task}, "model": {"name": tiny_model_dir, "max_length": 16},
            "data": {**files, "cache_dir": str(tmp_path / "cache")},
            "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "seed": 0, "precision": "fp32", **train},
            "eval": {"batch_size": 8}, "output_dir": str(tmp_path / "run")}


def test_head_tail_keeps_exactly_the_configured_tokens(tiny_model_dir: str, tmp_path: Path) -> None:
    cfg = load_config(_config(tiny_model_dir, tmp_path, {"long_text": "head_tail", "head_tokens": 3}))
    p = prepare(cfg)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for k, text in enumerate(p.data.splits["train"]["text"][:5]):
        full = tok(text)["input_ids"]
        row = p.tokenized["train"][k]
        assert row["n_tokens"] == len(full) > 16
        assert row["input_ids"] == full[:1] + full[1:4] + full[-12:-1] + full[-1:]  # 3 head + 11 tail + 2 special


def test_chunks_make_windows_of_each_document_and_the_report_counts_them(tiny_model_dir: str, tmp_path: Path) -> None:
    cfg = load_config(_config(tiny_model_dir, tmp_path, {"long_text": "chunks", "stride": 4}))
    p = prepare(cfg)
    f = p.tokenized["train"]
    n_tokens = np.asarray(f["n_tokens"])
    example = np.asarray(f["example"])
    # 14 content tokens per window, 10 new ones after the first
    expected = 1 + np.ceil((n_tokens[np.unique(example, return_index=True)[1]] - 2 - 14) / 10).astype(int)
    assert np.bincount(example).tolist() == expected.tolist()
    assert f["labels"] == [p.data.splits["train"]["label"][e] for e in example]
    lens = p.report["token_lengths"]["train"]
    assert lens["windowed"] == 96 and lens["features"] == len(f)
    # max_chunks: only the first windows are trained on
    cfg2 = load_config(_config(tiny_model_dir, tmp_path, {"long_text": "chunks", "stride": 4, "max_chunks": 2}))
    p2 = prepare(cfg2)
    kept = p2.task.training_features(p2.tokenized["train"])
    assert np.bincount(np.asarray(kept["example"])).tolist() == np.minimum(expected, 2).tolist()


def _evaluator(aggregation: str, n: int = 2):
    cfg = load_config({"task": {"type": "text-classification", "long_text": "chunks", "aggregation": aggregation},
                       "data": {"train": "x.csv"}})
    task = get_task(cfg)
    task.problem_type, task.labels = "single_label", ["a", "b", "c"]
    from tunesmith.types import Table

    table = Table({"text": ["x"] * n}, ["f"] * n, list(range(n)))
    return task, task.evaluator(table)


@pytest.mark.parametrize("aggregation", ["mean", "max", "weighted_mean"])
def test_window_logits_give_one_prediction_per_document(aggregation: str) -> None:
    task, ev = _evaluator(aggregation)
    logits = torch.tensor([[1.0, 0.0, -1.0], [3.0, 2.0, 0.0], [0.0, 5.0, 1.0], [-2.0, 0.5, 4.0]])
    example, weight = np.array([0, 1, 0, 0]), np.array([10.0, 7.0, 10.0, 2.0])
    ev.add(Batch({}, {}, {"example": example[:2], "weight": weight[:2]}), logits[:2])  # windows arrive in any batch
    ev.add(Batch({}, {}, {"example": example[2:], "weight": weight[2:]}), logits[2:])
    doc0 = logits[[0, 2, 3]]
    expected0 = {"mean": doc0.mean(0), "max": doc0.max(0).values,
                 "weighted_mean": (doc0 * torch.tensor([10.0, 10.0, 2.0])[:, None]).sum(0) / 22}[aggregation]
    result = ev.result()
    assert len(result.predictions) == 2
    assert [result.predictions[0]["probs"][n] for n in "abc"] == pytest.approx(expected0.softmax(-1).tolist(), abs=1e-6)
    assert [result.predictions[1]["probs"][n] for n in "abc"] == pytest.approx(logits[1].softmax(-1).tolist(), abs=1e-6)


def test_chunks_train_evaluate_and_predict_per_document(tiny_model_dir: str, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir, tmp_path, {"long_text": "chunks", "stride": 4})
    run = tunesmith.train(cfg)
    rows = [json.loads(x) for x in (run.dir / "predictions" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 24  # one per document, never per window
    accuracy = np.mean([r["gold"] == r["prediction"]["label"] for r in rows])
    assert run.report["test"]["accuracy"] == pytest.approx(accuracy)
    # the sentiment words sit past the first window: reading every window learns them, truncating cannot
    # (the seeded CPU runs' values: reading every window gets all 24 documents right, truncation 13 of 24)
    assert run.report["test"]["accuracy"] == 1.0
    cfg_truncate = copy.deepcopy(cfg)
    cfg_truncate["task"]["long_text"], cfg_truncate["output_dir"] = "truncate", str(tmp_path / "truncate")
    assert tunesmith.train(cfg_truncate).report["test"]["accuracy"] == pytest.approx(13 / 24, abs=1e-12)
    # the saved model applies the same windows to documents of any length
    loaded = tunesmith.load(run.dir).predict([r["input"]["text"] for r in rows])
    for mine, theirs in zip(loaded, rows):
        assert mine["label"] == theirs["prediction"]["label"]
        assert mine["probs"]["pos"] == pytest.approx(theirs["prediction"]["probs"]["pos"], abs=1e-6)


# ---------------------------------------------------------------- losses

def _task(**options: object):
    cfg = load_config({"task": {"type": "text-classification", **options}, "data": {"train": "x.csv"}})
    task = get_task(cfg)
    task.problem_type, task.labels = "single_label", ["a", "b", "c"]
    return task


LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 2.5]])
Y = torch.tensor([0, 2, 1, 0])


def test_class_weights_scale_each_example_loss_by_its_class_weight() -> None:
    ce = -F.log_softmax(LOGITS, -1)[range(4), Y]
    task = _task(class_weights={"a": 2.0, "c": 0.5})
    task.class_weights = task._class_weights(_table([0, 0, 1, 2]))
    assert task.class_weights == [2.0, 1.0, 0.5]
    by_hand = 2.0 * ce[0] + 0.5 * ce[1] + 1.0 * ce[2] + 2.0 * ce[3]
    assert float(task._single_label_loss(LOGITS, Y)) == pytest.approx(float(by_hand), rel=1e-6)
    assert float(_task()._single_label_loss(LOGITS, Y)) == pytest.approx(float(ce.sum()), rel=1e-6)


def _table(labels: list[int]):
    from tunesmith.types import Table

    return Table({"label": labels}, ["f"] * len(labels), list(range(len(labels))))


def test_balanced_class_weights_follow_scikit_learn() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    labels = [0] * 6 + [1] * 3 + [2]
    task = _task(class_weights="balanced")
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels))
    assert task._class_weights(_table(labels)) == pytest.approx(expected.tolist())  # 10/18, 10/9, 10/3


def test_focal_loss_matches_its_formula_and_is_cross_entropy_at_gamma_0() -> None:
    p = F.softmax(LOGITS, -1)[range(4), Y]
    focal = _task(loss="focal", focal_gamma=2.0)
    assert float(focal._single_label_loss(LOGITS, Y)) == pytest.approx(float((-(1 - p) ** 2 * p.log()).sum()), rel=1e-6)
    assert float(_task(loss="focal", focal_gamma=0.0)._single_label_loss(LOGITS, Y)) == \
        pytest.approx(float(_task()._single_label_loss(LOGITS, Y)), rel=1e-6)


# ---------------------------------------------------------------- the balanced sampler

def test_balanced_sampler_draws_every_class_equally_each_epoch() -> None:
    classes = np.array([0] * 80 + [1] * 15 + [2] * 5)
    for epoch in range(3):
        order = balanced_order(classes, seed=0, epoch=epoch)
        assert len(order) == 99  # 3 x round(100 / 3)
        assert np.bincount(classes[order]).tolist() == [33, 33, 33]
        counts = np.bincount(order, minlength=100)
        assert counts[95:].min() >= 6 and counts[95:].max() <= 7  # the rarest class repeats evenly
        assert counts[:80].max() == 1  # the common class is drawn without repeats
    assert not np.array_equal(balanced_order(classes, 0, 0), balanced_order(classes, 0, 1))
    assert np.array_equal(balanced_order(classes, 0, 1), balanced_order(classes, 0, 1))  # seeded: resumable
    plan = batch_plan(np.ones(100, dtype=int), 8, 0, 0, 1, classes=classes)
    assert sorted(np.concatenate(plan).tolist()) == sorted(balanced_order(classes, 0, 0).tolist())


def _spam_rows(n: int, seed: int, rare: float = 0.15) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = "spam" if rng.random() < rare else "ham"
        words = rng.choices(FILLER, k=rng.randint(3, 8))
        if label == "spam" or rng.random() < 0.1:  # some ham shares the spam word: the threshold matters
            words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def _spam_config(tiny_model_dir: str, tmp_path: Path, task: dict | None = None, **train: object) -> dict:
    files = {s: str(write_csv(tmp_path / f"{s}.csv", _spam_rows(k, seed)))
             for s, k, seed in (("train", 160, 1), ("validation", 80, 2), ("test", 80, 3))}
    return {"task": {"type": "text-classification", **(task or {})},
            "model": {"name": tiny_model_dir, "max_length": 16},
            "data": {**files, "cache_dir": str(tmp_path / "cache")},
            "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "seed": 0, "precision": "fp32", **train},
            "eval": {"batch_size": 32}, "output_dir": str(tmp_path / "run")}


def test_balanced_sampler_run_trains_on_balanced_batches(tiny_model_dir: str, tmp_path: Path) -> None:
    seen: list[int] = []
    cfg = _spam_config(tiny_model_dir, tmp_path, {"sampler": "balanced"}, epochs=1)
    p = prepare(load_config(cfg))
    labels = np.asarray(p.tokenized["train"]["labels"])
    counts = np.bincount(labels)
    from tunesmith.tasks.classification import TextClassification

    original = TextClassification.collate

    def spy(self, features, pad_to_multiple_of=None):
        batch = original(self, features, pad_to_multiple_of)
        if "labels" in batch.targets:
            seen.extend(batch.targets["labels"].tolist())
        return batch

    TextClassification.collate = spy
    try:
        run = tunesmith.train(cfg)
    finally:
        TextClassification.collate = original
    quota = round(len(labels) / 2)
    # the one training epoch draws quota examples of each class; evaluation batches come after
    assert np.bincount(seen[:2 * quota]).tolist() == [quota, quota] and counts.min() < quota
    assert run.report["train"]["steps"] == -(-2 * quota // 16)


# ---------------------------------------------------------------- the binary threshold

def test_tuned_threshold_by_hand() -> None:
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.6])
    positive = np.array([False, True, False, True, True])
    assert tune_binary_threshold(p, positive, "f1") == pytest.approx(0.375)  # between 0.35 and 0.4: F1 = 1
    assert tune_binary_threshold(np.array([0.6, 0.9]), np.array([False, True]), "accuracy") == pytest.approx(0.75)
    # 0.5 and 0.55 both separate these perfectly: ties go to the candidate nearest 0.5
    assert tune_binary_threshold(np.array([0.2, 0.9]), np.array([False, True]), "accuracy") == 0.5
    m = binary_metrics(p, positive, 0.5, "spam")
    from sklearn.metrics import average_precision_score, f1_score

    assert m["f1"] == pytest.approx(f1_score(positive, p >= 0.5)) and m["recall"] == pytest.approx(2 / 3)
    assert m["average_precision"] == pytest.approx(average_precision_score(positive, p))


def test_tuned_threshold_is_saved_and_applied_at_predict(tiny_model_dir: str, tmp_path: Path) -> None:
    cfg = _spam_config(tiny_model_dir, tmp_path, {"threshold": "tune"})
    run = tunesmith.train(cfg)
    val = run.report["validation"]
    assert val["positive_label"] == "spam"
    state = json.loads((run.dir / "model" / "tunesmith.json").read_text())["task"]
    predictor = tunesmith.load(run.dir)
    t = predictor.task.threshold
    assert t == pytest.approx(val["threshold"]) and t != 0.5
    assert state["threshold"] == t and state["positive"] == 1
    # the saved threshold reproduces the validation F1 from the saved model's probabilities
    rows = _spam_rows(80, 2)
    out = predictor.predict([r["text"] for r in rows])
    gold = np.array([r["label"] == "spam" for r in rows])
    probs = np.array([o["probs"]["spam"] for o in out])
    assert [o["label"] for o in out] == ["spam" if q >= t else "ham" for q in probs]
    from sklearn.metrics import f1_score

    assert f1_score(gold, probs >= t) == pytest.approx(val["f1"])
    assert tune_binary_threshold(probs, gold, "f1") == pytest.approx(t, abs=1e-6)
    assert (run.dir / "plots" / "precision_recall.png").exists()


# ---------------------------------------------------------------- config

def test_old_truncation_keys_still_work_and_map_to_long_text() -> None:
    from tunesmith.tasks.classification import ClassificationOptions

    for raw, expected in (({"model": {"truncation": "head_tail"}}, "head_tail"),
                          ({"task": {"type": "text-classification", "truncation": "head"}}, "truncate")):
        cfg = load_config({"task": "text-classification", "data": {"train": "x.csv"}, **raw})
        assert ClassificationOptions.model_validate(cfg.task.options).long_text == expected
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="old name of task.long_text"):
        ClassificationOptions.model_validate({"truncation": "head", "long_text": "chunks"})


def test_label_options_are_refused_where_they_do_nothing(tiny_model_dir: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"task": "token-classification", "data": {"train": "x.jsonl"},
                     "train": {"class_weights": "balanced"}})
    assert "  - unknown key 'train.class_weights': it is task.class_weights of the text-classification task now " \
           "(this config's task is token-classification)" in str(err.value).splitlines()
    cfg = _spam_config(tiny_model_dir, tmp_path, {"class_weights": {"spma": 3.0}})
    with pytest.raises(ConfigError, match="Did you mean 'spam'"):
        prepare(load_config(cfg))
    rows = [{"text": f"{w} {x}", "label": [w] if i % 2 else [w, "b"]} for i, (w, x) in
            enumerate(zip(["a"] * 20, FILLER))]
    ml = copy.deepcopy(cfg)
    ml["task"]["class_weights"] = "none"
    ml["task"]["loss"] = "focal"
    for s in ("train", "validation", "test"):
        ml["data"][s] = str(write_jsonl(tmp_path / f"ml-{s}.jsonl", rows))
    with pytest.raises(ConfigError, match="task.loss: 'focal' needs single-label classification"):
        prepare(load_config(ml))


def test_report_recommends_a_long_text_strategy_beyond_ten_percent(tiny_model_dir: str, tmp_path: Path) -> None:
    p = prepare(load_config(_config(tiny_model_dir, tmp_path, {})))
    assert any("consider task.long_text: chunks" in w for w in p.report["warnings"])
    assert p.report["token_lengths"]["train"]["truncated_pct"] == 100.0


def test_evaluators_of_several_processes_merge_into_the_single_process_result() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0], [3.0, 2.0, 0.0], [0.0, 5.0, 1.0], [-2.0, 0.5, 4.0], [1.0, 1.0, 1.0]])
    example, weight = np.array([0, 1, 0, 2, 1]), np.array([6.0, 6.0, 2.0, 3.0, 1.0])
    for aggregation in ("mean", "max", "weighted_mean"):
        _, whole = _evaluator(aggregation, 3)
        whole.add(Batch({}, {}, {"example": example, "weight": weight}), logits)
        _, a = _evaluator(aggregation, 3)
        _, b = _evaluator(aggregation, 3)
        a.add(Batch({}, {}, {"example": example[::2], "weight": weight[::2]}), logits[::2])
        b.add(Batch({}, {}, {"example": example[1::2], "weight": weight[1::2]}), logits[1::2])
        a.merge(b.state())
        np.testing.assert_array_equal(a.logits(), whole.logits())


def _binary_task(state: dict | None = None, **options: object):
    cfg = load_config({"task": {"type": "text-classification", **options}, "data": {"train": "x.csv"}})
    return get_task(cfg, state)


def test_a_binary_model_saved_before_positive_classes_still_evaluates() -> None:
    task = _binary_task({"problem_type": "single_label", "labels": ["neg", "pos"], "threshold": 0.5})
    assert task.positive == 1
    from tunesmith.types import Table

    ev = task.evaluator(Table({"text": ["x", "y"], "label": [0, 1]}, ["f", "f"], [1, 2]))
    ev.add(Batch({}, {}, {"example": np.array([0, 1])}), torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    m = ev.result().metrics
    assert m["positive_label"] == "pos" and m["f1"] == 1.0 and m["accuracy"] == 1.0


def test_a_fixed_threshold_decides_and_a_one_class_split_has_no_average_precision() -> None:
    task = _binary_task({"problem_type": "single_label", "labels": ["ham", "spam"], "positive": 1}, threshold=0.9)
    assert task.threshold == 0.9
    probs = np.array([[0.2, 0.8], [0.05, 0.95], [0.9, 0.1]])
    assert task.decide(probs).tolist() == [0, 1, 0]  # 0.8 is the more probable class, but under 0.9
    m = binary_metrics(np.array([0.8, 0.95]), np.array([True, True]), 0.9, "spam")
    assert m["average_precision"] is None and "pr_curve" not in m and m["recall"] == 0.5


def test_labels_written_as_numbers_in_the_config_name_their_classes(tiny_model_dir: str, tmp_path: Path) -> None:
    rows = [{"text": r["text"], "label": int(r["label"] == "spam")} for r in _spam_rows(60, 4)]
    cfg = _spam_config(tiny_model_dir, tmp_path, {"positive_label": 0, "class_weights": {1: 3.0}})
    for s in ("train", "validation", "test"):
        cfg["data"][s] = str(write_jsonl(tmp_path / f"num-{s}.jsonl", rows))
    p = prepare(load_config(cfg))
    assert p.task.labels == ["0", "1"] and p.task.positive == 0 and p.task.class_weights == [1.0, 3.0]


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy"])
def test_threshold_metric_picks_the_threshold_that_maximises_it(metric: str) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    positive = rng.random(200) < 0.2
    p = np.clip(0.3 * positive + rng.normal(0.35, 0.15, 200), 0, 1)
    t = tune_binary_threshold(p, positive, metric)
    score = {"macro_f1": lambda q: f1_score(positive, q, average="macro"),
             "accuracy": lambda q: accuracy_score(positive, q)}[metric]
    best = max(score(p >= c) for c in np.unique(np.concatenate([p, [1.01]])))
    assert score(p >= t) == pytest.approx(best)
