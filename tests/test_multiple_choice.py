"""The multiple-choice task from the command line, on its contract fixture (tests/contract/multiple-choice):
train, predict a file, evaluate; and the label and ending forms the task reads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import write_jsonl
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import app
from tunesmith.errors import DataError

FIXTURE = Path(__file__).parent / "contract" / "multiple-choice"


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: str) -> Path:
    tmp = tmp_path_factory.mktemp("mc-cli")
    cfg = {"task": {"type": "multiple-choice"}, "model": {"name": tiny_model_dir, "max_length": 32},
           "data": {**{s: str(FIXTURE / f"{s}.jsonl") for s in ("train", "validation", "test")},
                    "cache_dir": str(tmp / "cache")},
           "train": {"max_steps": 30, "batch_size": 16, "lr": 3e-3, "seed": 0, "eval_every": 15, "precision": "fp32"},
           "output_dir": str(tmp / "run")}
    (tmp / "mc.yaml").write_text(yaml.safe_dump(cfg))
    result = invoke("train", tmp / "mc.yaml")
    assert result.exit_code == 0, result.output
    return tmp / "run"


def test_cli_train_then_predict_a_file_gives_the_runs_test_predictions(cli_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.jsonl"
    result = invoke("predict", cli_run, FIXTURE / "test.jsonl", "-o", out)
    assert result.exit_code == 0, result.output
    predicted = [json.loads(x)["tunesmith"]["prediction"] for x in out.read_text().splitlines()]
    tested = [json.loads(x) for x in (cli_run / "predictions" / "test.jsonl").read_text().splitlines()]
    assert len(predicted) == len(tested) == 24
    for p, t in zip(predicted, tested):
        assert list(p) == ["choice", "score", "probs"] and len(p["probs"]) == len(t["input"]["endings"])
        assert p["choice"] == t["prediction"]["choice"] == int(np.argmax(p["probs"]))
        assert p["score"] == pytest.approx(t["prediction"]["score"], abs=1e-6) == p["probs"][p["choice"]]
        assert sum(p["probs"]) == pytest.approx(1.0, abs=1e-6)
    # the reported accuracy is the share of test rows whose choice is the gold index
    report = json.loads((cli_run / "report.json").read_text())
    assert report["test"]["accuracy"] == sum(t["prediction"]["choice"] == t["gold"] for t in tested) / 24


def test_cli_evaluate_gives_the_reports_test_accuracy(cli_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    result = invoke("evaluate", cli_run, "--data", FIXTURE / "test.jsonl", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((cli_run / "report.json").read_text())
    metrics = json.loads(out.read_text())
    assert metrics["accuracy"] == report["test"]["accuracy"]
    assert metrics["loss"] == pytest.approx(report["test"]["loss"], abs=1e-6)


def test_a_label_may_be_the_endings_text_or_an_index_in_digits(cli_run: Path, tmp_path: Path) -> None:
    """SWAG CSVs give "2"; some datasets give the correct ending itself: both name the same ending."""
    rows = [json.loads(x) for x in (FIXTURE / "test.jsonl").read_text().splitlines()]
    as_text = [{**r, "label": r["endings"][r["label"]]} for r in rows]
    as_digits = [{**r, "label": str(r["label"])} for r in rows]
    predictor = tunesmith.load(cli_run)
    base = predictor.evaluate(str(FIXTURE / "test.jsonl"))
    for variant in (as_text, as_digits):
        got = predictor.evaluate(str(write_jsonl(tmp_path / "v.jsonl", variant)))
        assert got["accuracy"] == base["accuracy"] and got["loss"] == pytest.approx(base["loss"], abs=1e-9)


def test_a_row_with_one_ending_or_an_unknown_ending_text_is_an_error_naming_the_row(cli_run: Path,
                                                                                   tmp_path: Path) -> None:
    predictor = tunesmith.load(cli_run)
    one = [{"context": "the food was good", "endings": ["we felt happy", "it was a goal"], "label": 0},
           {"context": "the show was bad", "endings": ["we felt sad"], "label": 0}]
    with pytest.raises(DataError) as err:
        predictor.evaluate(str(write_jsonl(tmp_path / "one.jsonl", one)))
    assert "the row has 1 ending(s); a choice needs at least 2" in str(err.value)
    assert (err.value.line, err.value.column) == (2, "endings")
    unknown = [{"context": "the food was good", "endings": ["we felt happy", "it was a goal"], "label": "we felt sad"}]
    with pytest.raises(DataError) as err:
        predictor.evaluate(str(write_jsonl(tmp_path / "unknown.jsonl", unknown)))
    assert "label 'we felt sad' is none of the row's endings" in str(err.value)
    assert (err.value.line, err.value.column) == (1, "label")


def test_a_rows_probabilities_do_not_depend_on_the_other_rows_ending_counts(cli_run: Path) -> None:
    """A row with 2 endings batched with one of 4 (its missing places masked) scores as it does alone."""
    predictor = tunesmith.load(cli_run)
    short = {"context": "the food was great", "endings": ["we felt happy", "it was a goal"]}
    long = {"context": "the show was bad", "endings": ["a vote", "we felt sad", "the app", "we felt lovely"]}
    alone = predictor.predict([short])[0]
    together = predictor.predict([short, long], batch_size=2)[0]
    assert len(together["probs"]) == 2 and together["choice"] == alone["choice"]
    assert together["probs"] == pytest.approx(alone["probs"], abs=1e-6)
