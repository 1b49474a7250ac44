"""Save -> load gives identical predictions, for every problem type, and the Python API works."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest

import tunesmith
from conftest import FILLER, TOPICS, sentiment_rows, write_jsonl


def _run(base: dict, tmp_path: Path, name: str, **changes: object) -> tunesmith.run.Run:
    cfg = copy.deepcopy(base)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    cfg["output_dir"] = str(tmp_path / name)
    return tunesmith.train(cfg)


def test_saved_model_predicts_exactly_what_the_trained_model_did(base_config: dict, tmp_path: Path) -> None:
    run = _run(base_config, tmp_path, "single", train__epochs=2)
    rows = [json.loads(line) for line in (run.dir / "predictions" / "test.jsonl").read_text().splitlines()]
    loaded = tunesmith.load(run.dir).predict([r["input"]["text"] for r in rows])
    assert [p["label"] for p in loaded] == [r["prediction"]["label"] for r in rows]
    for mine, theirs in zip(loaded, rows):
        for label, p in mine["probs"].items():
            assert p == pytest.approx(theirs["prediction"]["probs"][label], abs=1e-6)
    # evaluating the saved model on its own test rows reproduces the run's test metrics
    test_file = write_jsonl(tmp_path / "test.jsonl", [{"text": r["input"]["text"], "label": r["gold"]} for r in rows])
    metrics = tunesmith.load(run.dir / "model").evaluate(test_file)
    assert metrics["accuracy"] == pytest.approx(run.report["test"]["accuracy"])
    assert metrics["loss"] == pytest.approx(run.report["test"]["loss"], abs=1e-5)


def test_predict_keeps_input_order_and_handles_pairs_of_lengths(base_config: dict, tmp_path: Path) -> None:
    run = _run(base_config, tmp_path, "order", train__max_steps=3)
    predictor = run.predictor()
    texts = ["good", "the movie was really very bad and the food was quite awful " * 3, "happy day"]
    one_by_one = [predictor.predict([t])[0] for t in texts]
    batched = predictor.predict(texts, batch_size=2)
    for a, b in zip(one_by_one, batched):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
    # one string (or one record) in, one record out
    assert predictor.predict(texts[2]) == predictor.predict({"text": texts[2]}) == batched[2]


def _multilabel_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topics = rng.sample(sorted(TOPICS), rng.randint(1, 2))
        words = rng.choices(FILLER, k=4) + [rng.choice(TOPICS[t]) for t in topics]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": topics})
    return rows


def test_multi_label_end_to_end(base_config: dict, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "topics.jsonl", _multilabel_rows(400, 3))
    cfg = copy.deepcopy(base_config)
    cfg["data"]["train"] = str(data)
    cfg["train"].update(epochs=25, lr=1e-3)
    cfg["output_dir"] = str(tmp_path / "multi")
    run = tunesmith.train(cfg)
    test = run.report["test"]
    assert {"micro_f1", "macro_f1", "subset_accuracy", "threshold"} <= set(test)
    assert test["threshold"] == run.report["validation"]["threshold"]  # tuned on validation, used on test
    # the reported micro-F1 is scikit-learn's on the run's own predictions at the tuned threshold; and the topic
    # words are learnable: every label of every test row right (the seeded CPU run's value, 1.0)
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer
    rows = [json.loads(x) for x in (run.dir / "predictions" / "test.jsonl").read_text().splitlines()]
    binarize = MultiLabelBinarizer(classes=sorted(TOPICS)).fit([])
    assert test["micro_f1"] == pytest.approx(f1_score(binarize.transform([r["gold"] for r in rows]), binarize.transform(
        [r["prediction"]["labels"] for r in rows]), average="micro"), abs=1e-12)
    assert test["micro_f1"] == 1.0
    pred = tunesmith.load(run.dir).predict(["the team scored a goal", "vote on the new law"])
    assert all(set(p["probs"]) == set(TOPICS) for p in pred)
    assert "sports" in pred[0]["labels"] and "politics" in pred[1]["labels"]


def test_regression_end_to_end(base_config: dict, tmp_path: Path) -> None:
    rows = [{"text": r["text"], "label": 1.0 if r["label"] == "pos" else -1.0} for r in sentiment_rows(240, 5)]
    cfg = copy.deepcopy(base_config)
    cfg["data"]["train"] = str(write_jsonl(tmp_path / "scores.jsonl", rows))
    cfg["task"] = {"type": "text-classification", "problem_type": "regression"}
    cfg["output_dir"] = str(tmp_path / "reg")
    run = tunesmith.train(cfg)
    test = run.report["test"]
    assert {"mse", "mae", "pearson", "spearman"} <= set(test)
    assert run.summary["metric"] == "mse"
    # scipy's and numpy's values on the run's own predictions; then the seeded CPU run's values
    # (pearson 0.9999998865516484, mse 0.0039280072928236836)
    from scipy.stats import pearsonr
    rows = [json.loads(x) for x in (run.dir / "predictions" / "test.jsonl").read_text().splitlines()]
    gold, predicted = np.array([r["gold"] for r in rows]), np.array([r["prediction"]["value"] for r in rows])
    assert test["pearson"] == pytest.approx(pearsonr(gold, predicted)[0], abs=1e-6)
    assert test["mse"] == pytest.approx(np.mean((gold - predicted) ** 2), rel=1e-5)
    assert test["pearson"] == pytest.approx(0.9999998865516484, abs=1e-6)
    assert test["mse"] == pytest.approx(0.0039280072928236836, rel=1e-4)
    values = [p["value"] for p in tunesmith.load(run.dir).predict(["good good great", "bad awful terrible"])]
    assert values[0] > values[1]


def test_sentence_pairs_end_to_end(base_config: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for r in sentiment_rows(200, 9):
        same = bool(rng.integers(0, 2))
        other = r["label"] if same else ("neg" if r["label"] == "pos" else "pos")
        partner = next(x for x in sentiment_rows(20, int(rng.integers(1e6))) if x["label"] == other)
        rows.append({"a": r["text"], "b": partner["text"], "label": "same" if same else "different"})
    cfg = copy.deepcopy(base_config)
    cfg["data"].update(train=str(write_jsonl(tmp_path / "pairs.jsonl", rows)), text_column="a",
                       text_pair_column="b")
    cfg["train"]["max_steps"] = 4
    cfg["output_dir"] = str(tmp_path / "pairs")
    run = tunesmith.train(cfg)
    saved = [json.loads(line) for line in (run.dir / "predictions" / "test.jsonl").read_text().splitlines()]
    assert all(list(r["input"]) == ["text", "text_pair"] for r in saved)
    again = tunesmith.load(run.dir).predict([r["input"]["text"] for r in saved],
                                            [r["input"]["text_pair"] for r in saved])
    records = tunesmith.load(run.dir).predict([r["input"] for r in saved])
    for mine, theirs, rec in zip(again, saved, records):
        assert mine["probs"]["same"] == pytest.approx(theirs["prediction"]["probs"]["same"], abs=1e-6)
        assert rec == mine


def test_load_imports_neither_the_training_loop_nor_matplotlib(base_config: dict, tmp_path: Path) -> None:
    """A notebook user's `tunesmith.load()` costs what prediction needs and leaves their plotting alone."""
    import subprocess
    import sys

    run = _run(base_config, tmp_path, "light", train__max_steps=2)
    code = ("import sys, tunesmith; p = tunesmith.load(sys.argv[1]); p.predict('good'); "
            "print(sorted(m for m in sys.modules if m in ('matplotlib', 'tunesmith.training.loop', 'tunesmith.run')))")
    out = subprocess.run([sys.executable, "-c", code, str(run.dir)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- predict from the command line, by task

CONTRACT = Path(__file__).parent / "contract"


def _invoke(*args: object):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})


def _clean_failure(result) -> str:
    """Exit code 2, an `error:` line, no traceback; the message on one line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    assert "error:" in result.output
    return " ".join(result.output.split())


def _tiny_run(tiny_model_dir: str, folder: Path, task: dict, data: dict, max_length: int) -> Path:
    cfg = {"task": task, "model": {"name": tiny_model_dir, "max_length": max_length},
           "data": {**data, "cache_dir": str(folder / "cache")},
           "train": {"max_steps": 2, "batch_size": 16, "eval_every": 2, "seed": 0, "precision": "fp32"},
           "eval": {"batch_size": 8}, "output_dir": str(folder / "run")}
    return tunesmith.train(cfg).dir


@pytest.fixture(scope="module")
def ner_conll_run(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token-classification run trained on CoNLL files (`data.format: conll`)."""
    folder = tmp_path_factory.mktemp("ner-conll")
    data = {"format": "conll"}
    for split in ("train", "validation", "test"):
        rows = [json.loads(x) for x in (CONTRACT / "token-classification" / f"{split}.jsonl").read_text().splitlines()]
        f = folder / f"{split}.conll"
        f.write_text("".join("".join(f"{w} {t}\n" for w, t in zip(r["tokens"], r["tags"])) + "\n" for r in rows))
        data[split] = str(f)
    return _tiny_run(tiny_model_dir, folder, {"type": "token-classification", "stride": 4}, data, 16)


@pytest.fixture(scope="module")
def qa_run(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("qa")
    data = {s: str(CONTRACT / "question-answering" / f"{s}.jsonl") for s in ("train", "validation", "test")}
    return _tiny_run(tiny_model_dir, folder, {"type": "question-answering", "doc_stride": 8}, data, 32)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_a_run_trained_on_conll_predicts_each_input_by_its_own_extension(ner_conll_run: Path, tmp_path: Path) -> None:
    """data.format: conll is the training files' format, not the format of every file given to predict."""
    texts = ["the team scored a goal", "vote on the new law today"]
    expected = tunesmith.load(ner_conll_run).predict(texts)
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"text": t} for t in texts])
    (tmp_path / "raw.csv").write_text("text\n" + "".join(f"{t}\n" for t in texts), encoding="utf-8")
    (tmp_path / "raw.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (tmp_path / "raw.data").write_text(raw.read_text(encoding="utf-8"), encoding="utf-8")
    for name, extra in (("raw.jsonl", []), ("raw.csv", []), ("raw.txt", []), ("raw.data", ["--format", "jsonl"])):
        out = tmp_path / f"{name}.out.jsonl"
        result = _invoke("predict", ner_conll_run, tmp_path / name, "-o", out, *extra)
        assert result.exit_code == 0, (name, result.output)
        rows = _jsonl(out)
        assert [r["text"] for r in rows] == texts, name
        assert [r["tunesmith"]["prediction"] for r in rows] == expected, name
    # a .conll file is read as tokens (one column: no tags), whatever the run trained on
    (tmp_path / "tokens.conll").write_text("the\nteam\n\nvote\nlaw\n", encoding="utf-8")
    out = tmp_path / "tokens.out.jsonl"
    assert _invoke("predict", ner_conll_run, tmp_path / "tokens.conll", "-o", out).exit_code == 0
    rows = _jsonl(out)
    assert [(r["tokens"], r["tunesmith"]["line"]) for r in rows] == [(["the", "team"], 1), (["vote", "law"], 4)]
    assert [r["tunesmith"]["prediction"] for r in rows] == tunesmith.load(ner_conll_run).predict(
        [{"tokens": ["the", "team"]}, {"tokens": ["vote", "law"]}])


def test_question_answering_from_the_command_line_takes_each_role_by_field(qa_run: Path) -> None:
    msg = _clean_failure(_invoke("predict", qa_run, "--text", "how was the show"))
    assert ("this task reads question, context (optional: id): one --text cannot fill them. Give each with "
            "--field ROLE=VALUE (--field question='...' --field context='...')") in msg
    msg = _clean_failure(_invoke("predict", qa_run, "--field", "question=how was the show"))
    assert "context is missing: this task reads question, context (optional: id); add --field context='...'" in msg
    record = {"question": "how was the show", "context": "the show was good and the food was bad"}
    result = _invoke("predict", qa_run, "--field", f"question={record['question']}",
                     "--field", f"context={record['context']}")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == tunesmith.load(qa_run).predict(record)


def test_a_txt_file_is_refused_by_name_for_a_task_that_reads_several_texts(qa_run: Path, tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("how was the show\n", encoding="utf-8")
    msg = _clean_failure(_invoke("predict", qa_run, tmp_path / "q.txt", "-o", tmp_path / "o.jsonl"))
    assert (f"file {tmp_path / 'q.txt'}: a .txt file holds one text per line, but this task reads question, "
            "context (optional: id) -> predict a .jsonl or .csv file with a column for each of them") in msg
