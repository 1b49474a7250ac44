"""Label errors: out-of-fold probabilities and confident learning rank planted errors first; the CLI lists
them; data.drop_label_issues trains without them and says which it dropped."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
from conftest import FILLER, TOPICS, write_csv
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import app
from tunesmith.errors import ConfigError

FLIPPED = {5: "politics", 17: "sports", 44: "sports", 58: "tech", 91: "sports", 103: "tech"}  # each a wrong topic


def topic_rows() -> list[dict]:
    """240 rows, 80 per topic, each mostly its topic's words; the rows in FLIPPED carry a wrong label."""
    rng = random.Random(0)
    rows = []
    for i in range(240):
        topic = list(TOPICS)[i % 3]
        words = rng.choices(TOPICS[topic], k=rng.randint(3, 6)) + rng.choices(FILLER, k=rng.randint(0, 2))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": FLIPPED.get(i, topic)})
    return rows


@pytest.fixture
def noisy_config(base_config: dict, tmp_path: Path) -> dict:
    cfg = copy.deepcopy(base_config)
    rows = topic_rows()
    cfg["data"].update(train=str(write_csv(tmp_path / "train.csv", rows)),
                       validation=str(write_csv(tmp_path / "validation.csv", rows[:30])),
                       test=str(write_csv(tmp_path / "test.csv", rows[:30])))
    return cfg


def test_the_planted_label_errors_are_ranked_first(noisy_config: dict, tmp_path: Path) -> None:
    issues = tunesmith.check_labels(noisy_config, output=tmp_path / "issues.jsonl")
    lines = {i + 2: i for i in FLIPPED}  # line 1 is the header
    assert {x["line"] for x in issues[:len(FLIPPED)]} == set(lines)
    for x in issues[:len(FLIPPED)]:
        i = lines[x["line"]]
        assert x["given"] == FLIPPED[i] and x["suggested"] == list(TOPICS)[i % 3]
        assert x["input"] == {"text": topic_rows()[i]["text"]} and x["file"].endswith("train.csv")
        assert x["given_probability"] < x["suggested_probability"]
    probs = [x["given_probability"] for x in issues]
    assert probs == sorted(probs)  # ranked by the given label's probability, lowest first
    assert [json.loads(x) for x in (tmp_path / "issues.jsonl").read_text().splitlines()] == issues


def test_the_cli_prints_them_and_training_drops_them_listing_each(noisy_config: dict, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["check-labels", "-", "-o", str(tmp_path / "cli.jsonl")],
                                input=json.dumps(noisy_config))
    if result.exit_code == 2:  # a config read from stdin is not supported: write it
        cfg_file = tmp_path / "cfg.yaml"
        cfg_file.write_text(json.dumps(noisy_config))
        result = CliRunner().invoke(app, ["check-labels", str(cfg_file), "-o", str(tmp_path / "cli.jsonl")])
    assert result.exit_code == 0, result.output
    assert "likely label errors" in result.output
    found = [json.loads(x) for x in (tmp_path / "cli.jsonl").read_text().splitlines()]
    cfg = copy.deepcopy(noisy_config)
    cfg["data"]["drop_label_issues"] = True
    run = tunesmith.train(cfg)
    saved = [json.loads(x) for x in (run.dir / "label_issues.jsonl").read_text().splitlines()]
    assert saved == found
    dropped = [json.loads(x) for x in (run.dir / "dropped_rows.jsonl").read_text().splitlines()]
    assert sorted(d["line"] for d in dropped) == sorted(x["line"] for x in found)
    assert all(d["reason"].startswith("label issue: given ") for d in dropped)
    report = json.loads((run.dir / "data_report.json").read_text())
    assert report["splits"]["train"]["rows"] == 240 - len(found)
    assert f"<h3>Likely label errors (train): {len(found)}, dropped</h3>" in (run.dir / "report.html").read_text()


def test_a_task_without_one_class_per_row_is_refused(noisy_config: dict, tmp_path: Path) -> None:
    noisy_config["task"] = {"type": "text-classification", "problem_type": "multi_label"}
    with pytest.raises(ConfigError, match="finding label errors needs rows of one class each"):
        tunesmith.check_labels(noisy_config, output=tmp_path / "x.jsonl")
