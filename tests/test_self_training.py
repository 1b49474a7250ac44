"""Self-training (train.self_training with data.unlabelled): pseudo-labels above the threshold only, rounds
that stop when validation stops improving, the run folder taking the best round, exact resume."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import sentiment_rows, write_csv
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.errors import ConfigError, DataError
from tunesmith.io import read_jsonl
from tunesmith.self_training import pseudo_labels
from tunesmith.tasks.base import get_task
from tunesmith.types import Table

THRESHOLD = 0.69  # the tiny model's pool probabilities after round 0 spread from about 0.52 to 0.70


def _fitted(task: dict, labels: list) -> Any:
    cfg = load_config({"task": task, "data": {"train": "unused.csv"}})
    t = get_task(cfg)
    t.fit({"train": Table({"text": [f"row {i}" for i in range(len(labels))], "label": labels},
                          ["f.csv"] * len(labels), list(range(2, len(labels) + 2)))})
    return t


def test_only_rows_whose_prediction_reaches_the_threshold_are_pseudo_labelled() -> None:
    task = _fitted({"type": "text-classification"}, ["a", "b", "c"])
    pool = Table({"text": ["x", "y", "z", "w"]}, ["pool.csv"] * 4, [2, 3, 4, 5])
    predictions = [{"label": "a", "score": 0.79, "probs": {"a": 0.79, "b": 0.2, "c": 0.01}},
                   {"label": "b", "score": 0.8, "probs": {"a": 0.1, "b": 0.8, "c": 0.1}},
                   {"label": "c", "score": 0.95, "probs": {"a": 0.02, "b": 0.03, "c": 0.95}},
                   {"label": "a", "score": 0.4, "probs": {"a": 0.4, "b": 0.35, "c": 0.25}}]
    assert pseudo_labels(task, predictions, pool, 0.8) == [
        {"file": "pool.csv", "line": 3, "input": {"text": "y"}, "label": {"label": "b"}, "confidence": 0.8},
        {"file": "pool.csv", "line": 4, "input": {"text": "z"}, "label": {"label": "c"}, "confidence": 0.95}]


def test_max_per_class_keeps_the_surest_rows_of_each_predicted_label_in_pool_order() -> None:
    task = _fitted({"type": "text-classification"}, ["a", "b"])
    pool = Table({"text": list("pqrstu")}, ["pool.csv"] * 6, [2, 3, 4, 5, 6, 7])
    scores = [("a", 0.9), ("a", 0.97), ("b", 0.6), ("a", 0.95), ("b", 0.7), ("a", 0.97)]
    predictions = [{"label": k, "score": p, "probs": {k: p, "b" if k == "a" else "a": 1 - p}} for k, p in scores]
    kept = pseudo_labels(task, predictions, pool, 0.0, max_per_class=2)
    assert [(r["line"], r["label"]["label"]) for r in kept] == [(3, "a"), (4, "b"), (6, "b"), (7, "a")]
    assert [r["line"] for r in pseudo_labels(task, predictions, pool, 0.65, max_per_class=2)] == [3, 6, 7]


def test_a_multi_label_row_is_as_sure_as_its_least_sure_label() -> None:
    task = _fitted({"type": "text-classification"}, [["a"], ["a", "b"], ["b"]])
    pool = Table({"text": ["x", "y"]}, ["pool.csv"] * 2, [2, 3])
    predictions = [{"labels": ["a"], "probs": {"a": 0.95, "b": 0.08}},  # sure of both: 0.92
                   {"labels": ["a", "b"], "probs": {"a": 0.99, "b": 0.7}}]  # b is only 0.7 sure
    kept = pseudo_labels(task, predictions, pool, 0.9)
    assert [(r["line"], r["label"], r["confidence"]) for r in kept] == [(2, {"label": ["a"]}, 0.92)]


def _files(folder: Path) -> dict[str, str]:
    pool = [{"id": i, "text": r["text"]} for i, r in enumerate(sentiment_rows(80, seed=7))]
    pool.append({"id": 80, "text": ""})  # dropped by data.on_missing
    return {"train": str(write_csv(folder / "train.csv", sentiment_rows(96, seed=3))),
            "validation": str(write_csv(folder / "validation.csv", sentiment_rows(40, seed=4))),
            "test": str(write_csv(folder / "test.csv", sentiment_rows(40, seed=5))),
            "unlabelled": str(write_csv(folder / "pool.csv", pool))}


def _config(tiny_model_dir: str, folder: Path, name: str) -> dict:
    return {"task": "text-classification", "model": {"name": tiny_model_dir, "max_length": 32},
            "data": {**_files(folder), "cache_dir": str(folder / "cache")},
            "train": {"epochs": 6, "batch_size": 16, "lr": 5e-3, "seed": 0, "precision": "fp32",
                      "self_training": {"rounds": 2, "threshold": THRESHOLD}},
            "eval": {"batch_size": 32, "explain_errors": 0}, "output_dir": str(folder / name)}


@pytest.fixture(scope="module")
def self_trained(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One self-training run through the CLI: (its config, its folder)."""
    folder = tmp_path_factory.mktemp("self_training")
    cfg = _config(tiny_model_dir, folder, "run")
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(folder / "config.yaml")])
    assert result.exit_code == 0, result.output
    return cfg, Path(cfg["output_dir"])


def test_round_one_trains_on_the_labelled_rows_and_the_teachers_sure_pool_rows(self_trained: tuple) -> None:
    cfg, run_dir = self_trained
    teacher = tunesmith.load(run_dir / "rounds/round-0")
    pool = list(csv.DictReader(open(cfg["data"]["unlabelled"], encoding="utf-8")))[:80]
    predicted = teacher.predict([r["text"] for r in pool])
    expected = [{"file": cfg["data"]["unlabelled"], "line": i + 2, "input": {"text": r["text"]},
                 "label": {"label": p["label"]}, "confidence": round(p["score"], 6)}
                for i, (r, p) in enumerate(zip(pool, predicted)) if p["score"] >= THRESHOLD]
    assert read_jsonl(run_dir / "pseudo_labels/round-1.jsonl") == expected
    assert 0 < len(expected) < 80  # the threshold kept some rows and left others
    for folder in ("rounds/round-0", "rounds/round-1", "."):  # each round's labels are the file's names
        assert json.loads((run_dir / folder / "label_map.json").read_text())["labels"] == ["neg", "pos"]
    data = json.loads((run_dir / "rounds/round-1/data_report.json").read_text())
    assert data["splits"]["train"]["rows"] == 96 + len(expected)
    assert f"96 labelled training rows and {len(expected)} pseudo-labelled pool rows" in " ".join(data["notes"])
    dropped = read_jsonl(run_dir / "dropped_rows.jsonl")
    assert [(d["split"], d["line"]) for d in dropped] == [("unlabelled", 82)]


def test_the_rounds_stop_at_the_first_student_that_does_not_improve_and_the_run_is_the_best_round(
        self_trained: tuple) -> None:
    cfg, run_dir = self_trained
    report = json.loads((run_dir / "report.json").read_text())
    st = report["self_training"]
    values = [r["validation_accuracy"] for r in st["rounds"]]
    best = st["best_round"]
    assert all(values[i] < values[i + 1] for i in range(best))  # each round up to the best improved
    assert values[best] == max(values)
    if len(values) < 3:  # stopped early: the last round did not improve on the best
        assert best == len(values) - 2 and values[-1] <= values[best]
        assert st["stopped"] == (f"round {len(values) - 1}'s validation accuracy ({values[-1]}) did not improve "
                                 f"on round {best}'s ({values[best]})")
    best_report = json.loads((run_dir / f"rounds/round-{best}/report.json").read_text())
    assert report["test"] == best_report["test"]
    assert st["rounds"][best]["test"] == {k: v for k, v in report["test"].items() if isinstance(v, (int, float))}
    texts = [r["text"] for r in sentiment_rows(12, seed=9)]
    assert tunesmith.load(run_dir).predict(texts) == tunesmith.load(run_dir / f"rounds/round-{best}").predict(texts)
    page = (run_dir / "report.html").read_text()
    assert "<h3>Self-training (threshold 0.69)</h3>" in page and f"{best} (this model)" in page
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["self_training"] == {
        "rounds": 2, "threshold": THRESHOLD, "max_per_class": None}


def test_an_interrupted_self_training_run_resumes_to_the_same_result(self_trained: tuple, tiny_model_dir: str,
                                                                     tmp_path: Path) -> None:
    """Stopped in round 1's third step, then resumed: the same pseudo-labels and the same models."""
    cfg, run_dir = self_trained
    cfg = {**cfg, "output_dir": str(tmp_path / "resumed")}
    ended = []

    def stop_in_round_one(event: Any) -> None:
        ended.extend([1] if event.kind == "end" else [])
        if ended and event.kind == "step" and event.state.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tunesmith.train(cfg, callbacks=[stop_in_round_one])
    assert not (tmp_path / "resumed/rounds/round-1/report.json").exists()
    resumed = tunesmith.train(cfg, resume=True)
    assert resumed.report["self_training"] == json.loads((run_dir / "report.json").read_text())["self_training"]
    assert read_jsonl(tmp_path / "resumed/pseudo_labels/round-1.jsonl") == read_jsonl(
        run_dir / "pseudo_labels/round-1.jsonl")
    with pytest.raises(ConfigError, match="--resume of a self-training run with another config: "
                                          r"train.self_training.threshold: 0.69 -> 0.8"):
        tunesmith.train(cfg, {"train.self_training.threshold": 0.8}, resume=True, allow_config_change=True)


def test_no_row_above_the_threshold_ends_the_run_with_the_teacher_and_says_how_sure_it_was(
        tiny_model_dir: str, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir, tmp_path, "run")
    cfg["train"].update(epochs=2, self_training={"rounds": 2, "threshold": 1.0})
    run = tunesmith.train(cfg)
    st = run.report["self_training"]
    assert [r["round"] for r in st["rounds"]] == [0] and st["best_round"] == 0
    teacher = tunesmith.load(run.dir / "rounds/round-0")
    texts = [r["text"] for r in list(csv.DictReader(open(cfg["data"]["unlabelled"], encoding="utf-8")))[:80]]
    surest = max(p["score"] for p in teacher.predict(texts))
    assert surest < 1.0 and st["stopped"].startswith(
        f"no pool row reached the threshold 1.0 with round 0's model (the surest was {surest:.3f}), so round 1 "
        "would train on round 0's rows again: lower train.self_training.threshold")
    assert not (run.dir / "pseudo_labels").exists() and not (run.dir / "rounds/round-1").exists()
    assert run.report["test"] == json.loads((run.dir / "rounds/round-0/report.json").read_text())["test"]


def test_self_training_needs_a_pool_a_task_with_confidences_and_the_training_columns(
        tiny_model_dir: str, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir, tmp_path, "run")
    with pytest.raises(ConfigError, match="train.self_training learns from the rows of data.unlabelled: set both"):
        tunesmith.train({**cfg, "data": {**cfg["data"], "unlabelled": None}})
    numbers = write_csv(tmp_path / "numbers.csv", [{"text": f"row {i}", "label": i / 10} for i in range(40)])
    with pytest.raises(ConfigError, match="train.self_training: a regression predicts a number"):
        tunesmith.train({**cfg, "task": {"type": "text-classification", "problem_type": "regression"},
                         "data": {**cfg["data"], "train": str(numbers), "validation": None, "test": None}})
    other = write_csv(tmp_path / "other.csv", [{"sentence": "a good one"}])
    with pytest.raises(DataError) as e:
        tunesmith.train({**cfg, "data": {**cfg["data"], "unlabelled": str(other)}})
    assert "other.csv" in str(e.value) and "'text'" in str(e.value)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    checked = CliRunner().invoke(app, ["check-data", str(tmp_path / "config.yaml")])
    assert checked.exit_code == 0 and "data.unlabelled: 80 rows for train.self_training" in checked.output
    assert "1 rows dropped" in checked.output or "1 row dropped" in checked.output, checked.output
    with pytest.raises(ConfigError, match="a search cannot run train.self_training trials"):
        tunesmith.search({**cfg, "search": {"method": "random", "trials": 2,
                                            "space": {"train.lr": {"choice": [1e-3, 5e-3]}}}})
    assert not (tmp_path / "run").exists()
