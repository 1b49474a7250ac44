"""The `tunesmith` command, driven through Typer's CliRunner (and once as a real subprocess).

One training run is shared by the train/evaluate/predict/export tests (module-scoped fixture).
"""
from __future__ import annotations

import csv
import os
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import sentiment_rows, write_csv
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.errors import DataError

ENV = {"COLUMNS": "400"}  # rich wraps at the terminal width; keep messages on one line


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def one_line(text: str) -> str:
    return " ".join(text.split())


def assert_clean_failure(result, code: int = 2) -> str:
    """A user error: the given exit code, an `error:` line, and no traceback."""
    out = result.output
    assert result.exit_code == code, out
    assert "Traceback" not in out, out
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error:" in out
    return one_line(out)


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def config_file(workdir: Path, tiny_model_dir: str) -> Path:
    """A config with a data path relative to the config's folder."""
    (workdir / "data").mkdir(exist_ok=True)
    write_csv(workdir / "data" / "train.csv", sentiment_rows(200, seed=21))
    return write_config(
        workdir / "cfg.yaml",
        task="text-classification",
        model={"name": tiny_model_dir, "max_length": 32},
        data={"train": "data/train.csv", "cache_dir": str(workdir / "cache")},
        train={"epochs": 3, "batch_size": 16, "lr": 3e-3, "warmup_ratio": 0.1, "seed": 0, "log_every": 1,
               "precision": "fp32"},
        eval={"batch_size": 32},
        output_dir=str(workdir / "unused"),
    )


@pytest.fixture(scope="module")
def trained(workdir: Path, config_file: Path):
    """The one training run of this module: `tunesmith train CONFIG --set ...`."""
    run_dir = workdir / "run"
    result = invoke("train", config_file, "--set", "train.epochs=1", "--set", f"output_dir={run_dir}",
                    "--set", "train.eval_every=6")
    assert result.exit_code == 0, result.output
    return run_dir, result


@pytest.fixture(scope="module")
def new_texts(workdir: Path) -> Path:
    """An unlabelled file to predict, and a labelled one to evaluate."""
    rows = sentiment_rows(13, seed=99)
    write_csv(workdir / "labelled.csv", rows)
    return write_csv(workdir / "to_predict.csv", [{"id": f"r{i}", "text": r["text"]} for i, r in enumerate(rows)])


# ---------------------------------------------------------------- help

def test_help_as_a_real_subprocess():
    out = subprocess.run([sys.executable, "-m", "tunesmith", "--help"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    for cmd in ("train", "check-data", "evaluate", "predict", "init"):
        assert cmd in out.stdout


def test_no_arguments_shows_help():
    result = invoke()
    assert "check-data" in result.output and "predict" in result.output


# ---------------------------------------------------------------- init

def test_init_guesses_columns_by_name_and_writes_a_valid_config(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = write_csv(data_dir / "reviews.csv", [{"id": str(i), "review": r["text"], "sentiment": r["label"]}
                                                for i, r in enumerate(sentiment_rows(50, seed=2))])
    out = tmp_path / "configs" / "mine.yaml"
    out.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    result = invoke("init", "--data", "data/reviews.csv", "-o", out)
    assert result.exit_code == 0, result.output
    text = one_line(result.output)
    assert "text column: 'review' (its name)" in text
    assert "label column: 'sentiment' (its name)" in text
    assert f"wrote {out}" in text
    # the config validates, and its relative data path points at the file from the config's folder
    monkeypatch.chdir(data_dir)
    cfg = load_config(out)
    assert cfg.data.text_column == "review" and cfg.data.label_column == "sentiment"
    assert Path(cfg.data.train) == data.resolve()
    assert out.read_text().startswith("# Written by `tunesmith init`")


def test_init_guesses_columns_by_content(tmp_path):
    rows = [{"code": str(i % 3), "body_txt": r["text"] + " and a longer tail to read"}
            for i, r in enumerate(sentiment_rows(40, seed=3))]
    data = write_csv(tmp_path / "odd.csv", rows)
    out = tmp_path / "odd.yaml"
    result = invoke("init", "--data", data, "-o", out)
    assert result.exit_code == 0, result.output
    text = one_line(result.output)
    assert "text column: 'body_txt' (the column with the longest values)" in text
    assert "label column: 'code' (the column with the fewest distinct values)" in text
    cfg = load_config(out)
    assert (cfg.data.text_column, cfg.data.label_column) == ("body_txt", "code")


def test_init_detects_regression(tmp_path):
    data = write_csv(tmp_path / "scores.csv", [{"text": r["text"], "score": f"{i / 7:.3f}"}
                                               for i, r in enumerate(sentiment_rows(30, seed=4))])
    out = tmp_path / "s.yaml"
    result = invoke("init", "--data", data, "-o", out)
    assert result.exit_code == 0, result.output
    assert "problem type: regression" in one_line(result.output)
    assert load_config(out).task.options["problem_type"] == "regression"


def test_init_config_passes_check_data(tmp_path, tiny_model_dir):
    data = write_csv(tmp_path / "train.csv", sentiment_rows(60, seed=5))
    out = tmp_path / "tunesmith.yaml"
    assert invoke("init", "--data", data, "-o", out).exit_code == 0
    result = invoke("check-data", out, "--set", f"model.name={tiny_model_dir}",
                    "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert result.exit_code == 0, result.output
    assert "Data report (text-classification, single_label, 2 labels)" in result.output


def test_init_does_not_overwrite_without_force(tmp_path):
    data = write_csv(tmp_path / "train.csv", sentiment_rows(20, seed=5))
    out = tmp_path / "c.yaml"
    out.write_text("keep: me\n")
    msg = assert_clean_failure(invoke("init", "--data", data, "-o", out))
    assert "--force" in msg
    assert out.read_text() == "keep: me\n"
    assert invoke("init", "--data", data, "-o", out, "--force").exit_code == 0
    assert load_config(out).data.text_column == "text"


def test_init_on_bad_data_fails_cleanly(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,label\ncaf\xe9,pos\n")
    msg = assert_clean_failure(invoke("init", "--data", bad, "-o", tmp_path / "x.yaml"))
    assert str(bad) in msg and "line 2" in msg
    assert not (tmp_path / "x.yaml").exists()


# ---------------------------------------------------------------- check-data

def test_check_data_prints_the_report(config_file, tmp_path):
    report = tmp_path / "report.json"
    result = invoke("check-data", config_file, "--report", report)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Data report (text-classification, single_label, 2 labels)" in out
    for split in ("train", "validation", "test"):
        assert split in out
    assert "missing values: policy=drop, dropped rows=0" in out
    saved = json.loads(report.read_text())
    assert {s: v["rows"] for s, v in saved["splits"].items()} == {"train": 160, "test": 20, "validation": 20}
    assert saved["labels"] == ["neg", "pos"]


def test_check_data_config_error_exits_2_with_did_you_mean(tmp_path):
    cfg = write_config(tmp_path / "typo.yaml", data={"train": "x.csv"}, trian={"epochs": 1})
    msg = assert_clean_failure(invoke("check-data", cfg))
    assert "unknown key 'trian'" in msg and "did you mean 'train'?" in msg
    assert str(cfg) in msg


def test_set_typo_exits_2_with_did_you_mean(config_file):
    msg = assert_clean_failure(invoke("check-data", config_file, "--set", "train.lrr=1e-4"))
    assert "unknown key 'train.lrr'" in msg and "did you mean 'train.lr'?" in msg


def test_train_config_error_exits_2_without_training(tmp_path):
    cfg = write_config(tmp_path / "typo.yaml", data={"train": "x.csv"}, model={"max_lenght": 64},
                       output_dir=str(tmp_path / "out"))
    msg = assert_clean_failure(invoke("train", cfg))
    assert "did you mean 'model.max_length'?" in msg
    assert not (tmp_path / "out").exists()


def test_data_error_exits_2_naming_file_and_column(workdir, config_file):
    msg = assert_clean_failure(invoke("check-data", config_file, "--set", "data.text_column=txt"))
    assert str(workdir / "data" / "train.csv") in msg
    assert "column 'txt'" in msg and "did you mean 'text'?" in msg


def test_missing_config_file_exits_2(tmp_path):
    msg = assert_clean_failure(invoke("check-data", tmp_path / "nope.yaml"))
    assert "config file not found" in msg


def test_error_message_keeps_square_brackets(tmp_path):
    data = write_csv(tmp_path / "train[v2].csv", sentiment_rows(20, seed=1))
    cfg = write_config(tmp_path / "c.yaml", data={"train": str(data), "text_column": "txt"})
    msg = assert_clean_failure(invoke("check-data", cfg))
    assert "train[v2].csv" in msg


def test_set_value_with_yaml_indicator_fails_cleanly(config_file):
    msg = assert_clean_failure(invoke("check-data", config_file, "--set", "data.text_column=@text"))
    assert "@text" in msg


# ---------------------------------------------------------------- train: the run folder

def test_train_produces_the_run_folder(trained):
    run_dir, result = trained
    for rel in ("config.yaml", "label_map.json", "data_report.json", "metrics.jsonl", "report.json",
                "dropped_rows.jsonl", "predictions/test.jsonl", "plots/learning_curves.png",
                "plots/confusion_matrix.png", "model/tunesmith.json", "model/config.json"):
        assert (run_dir / rel).is_file(), rel
    assert any((run_dir / "model").glob("*.safetensors"))
    assert (run_dir / "plots" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "run folder:" in one_line(result.output)


def test_train_run_folder_contents(trained, workdir):
    run_dir, _ = trained
    cfg = load_config(run_dir / "config.yaml")  # the saved config is itself a valid config
    assert cfg.train.epochs == 1 and cfg.train.eval_every == 6          # the --set overrides
    assert Path(cfg.output_dir) == run_dir
    assert Path(cfg.data.train) == (workdir / "data" / "train.csv").resolve()  # relative path resolved
    train_counts = json.loads((run_dir / "data_report.json").read_text())["label_distribution"]["train"]
    assert json.loads((run_dir / "label_map.json").read_text()) == {
        "task": "text-classification", "problem_type": "single_label", "labels": ["neg", "pos"],
        # binary: the class whose F1 and threshold are reported is the rarer one in train
        "positive_label": "neg" if train_counts["neg"] < train_counts["pos"] else "pos",
        "id2label": {"0": "neg", "1": "pos"}}
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {m["kind"] for m in metrics} == {"train", "eval"}
    assert [m["step"] for m in metrics if m["kind"] == "eval"][:1] == [6]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["train"]["steps"] == 10  # 160 rows / batch 16, one epoch
    preds = [json.loads(x) for x in (run_dir / "predictions" / "test.jsonl").read_text().splitlines()]
    # the reported accuracy is scikit-learn's on the run's own predictions; one seeded epoch of the tiny model
    # gives 0.5 (10 of the 20 test rows; the deterministic CPU run's value)
    from sklearn.metrics import accuracy_score
    assert report["test"]["accuracy"] == accuracy_score([p["gold"] for p in preds],
                                                        [p["prediction"]["label"] for p in preds])
    assert report["test"]["accuracy"] == pytest.approx(0.5, abs=1e-12)
    assert len(preds) == json.loads((run_dir / "data_report.json").read_text())["splits"]["test"]["rows"] == 20
    for p in preds:
        assert list(p) == ["file", "line", "input", "gold", "prediction"]
        assert p["gold"] in ("neg", "pos") and p["prediction"]["label"] in ("neg", "pos")
        assert set(p["prediction"]["probs"]) == {"neg", "pos"}
        assert sum(p["prediction"]["probs"].values()) == pytest.approx(1, abs=1e-5)
        assert p["file"] == cfg.data.train and isinstance(p["line"], int) and list(p["input"]) == ["text"]
    state = json.loads((run_dir / "model" / "tunesmith.json").read_text())
    assert state["task"]["labels"] == ["neg", "pos"]


def test_train_again_without_resume_exits_2(trained, config_file):
    run_dir, _ = trained
    before = (run_dir / "report.json").read_bytes()
    msg = assert_clean_failure(invoke("train", config_file, "--set", f"output_dir={run_dir}",
                                      "--set", "train.epochs=1"))
    assert "--resume" in msg and str(run_dir) in msg
    assert (run_dir / "report.json").read_bytes() == before


def test_exported_model_loads_in_a_transformers_pipeline(trained, new_texts):
    import transformers

    from tunesmith.serving.predictor import Predictor

    run_dir, _ = trained
    pipe = transformers.pipeline("text-classification", model=str(run_dir / "model"), device="cpu")
    assert pipe.model.config.id2label == {0: "neg", 1: "pos"}
    assert pipe.model.config.label2id == {"neg": 0, "pos": 1}
    texts = ["a good movie", "the food was awful"]
    out = pipe(texts, top_k=None)
    ours = Predictor.load(run_dir, device="cpu").predict(texts)
    for theirs, mine in zip(out, ours):
        scores = {d["label"]: d["score"] for d in theirs}
        assert set(scores) == {"neg", "pos"}
        for label in ("neg", "pos"):
            assert scores[label] == pytest.approx(mine["probs"][label], abs=1e-4)


# ---------------------------------------------------------------- evaluate and predict

def test_evaluate_on_a_file(trained, new_texts, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "metrics.json"
    result = invoke("evaluate", run_dir, "--data", new_texts.with_name("labelled.csv"), "-o", out)
    assert result.exit_code == 0, result.output
    assert f"{new_texts.with_name('labelled.csv')}: rows=13" in one_line(result.output) and "accuracy=" in result.output
    metrics = json.loads(out.read_text())
    assert metrics["rows"] == 13 and metrics["dropped_rows"] == 0
    # scikit-learn's accuracy and confusion matrix of the model's own predictions on the file's rows
    from sklearn.metrics import accuracy_score, confusion_matrix

    from tunesmith.serving.predictor import Predictor
    rows = list(csv.DictReader(new_texts.with_name("labelled.csv").open(encoding="utf-8")))
    gold = [r["label"] for r in rows]
    predicted = [p["label"] for p in Predictor.load(run_dir, device="cpu").predict([r["text"] for r in rows])]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(gold, predicted), abs=1e-12)
    assert metrics["confusion_matrix"] == {"labels": ["neg", "pos"],
                                           "matrix": confusion_matrix(gold, predicted, labels=["neg", "pos"]).tolist()}
    # the deterministic CPU run's value: the one-epoch model calls all 13 rows neg, 7 of which are
    assert metrics["accuracy"] == pytest.approx(7 / 13, abs=1e-12)


def test_evaluate_a_file_holding_some_labels_averages_macro_f1_over_those(trained, tmp_path):
    """Only `neg` rows: macro-F1 is the F1 of `neg` alone (scikit-learn with labels=['neg']), not the mean
    with an unsupported `pos` at 0; the printed block is titled with the file and says what it averaged."""
    from sklearn.metrics import f1_score

    import tunesmith

    run_dir, _ = trained
    rows = [r for r in sentiment_rows(40, seed=7) if r["label"] == "neg"][:9]
    f = write_csv(tmp_path / "neg_only.csv", rows)
    result = invoke("evaluate", run_dir, "--data", f, "-o", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    pred = [p["label"] for p in tunesmith.load(run_dir).predict([r["text"] for r in rows])]
    gold = [r["label"] for r in rows]
    metrics = json.loads((tmp_path / "m.json").read_text())
    expected = f1_score(gold, pred, average="macro", labels=["neg"])
    assert expected != f1_score(gold, pred, average="macro", labels=["neg", "pos"])  # the file tells them apart
    assert metrics["macro_f1"] == expected and metrics["rows"] == len(rows) == 9
    assert metrics["macro_average"] == {"metric": "macro_f1", "labels": 1, "of": 2,
                                    "over": "labels present in the gold labels"}
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{f}: rows=9, dropped_rows=0, loss=") and f"macro_f1={expected:.4f}" in lines[0]
    assert lines[1] == "    macro_f1 over 1 of 2 labels (labels present in the gold labels)"
    assert metrics["inference"] == {"precision": "fp32", "batch_size": 32}


def test_evaluate_without_data_shows_the_run_test_report(trained):
    run_dir, _ = trained
    result = invoke("evaluate", run_dir)
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "report.json").read_text())
    assert f"accuracy={report['test']['accuracy']:.4f}" in result.output


def test_evaluate_unknown_label_fails_cleanly(trained, tmp_path):
    run_dir, _ = trained
    f = write_csv(tmp_path / "odd.csv", [{"text": "good", "label": "pos"}, {"text": "meh", "label": "meh"}])
    msg = assert_clean_failure(invoke("evaluate", run_dir, "--data", f))
    assert str(f) in msg and "line 3" in msg and "known labels: neg, pos" in msg


def test_evaluate_a_folder_that_is_not_a_run(tmp_path):
    write_csv(tmp_path / "x.csv", sentiment_rows(4, seed=0))  # a missing file would be reported first
    msg = assert_clean_failure(invoke("evaluate", tmp_path, "--data", tmp_path / "x.csv"))
    assert "not a tunesmith run folder" in msg


def test_predict_to_jsonl(trained, new_texts, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "preds.jsonl"
    result = invoke("predict", run_dir, new_texts, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"wrote 13 predictions to {out}" in one_line(result.output)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    inputs = list(csv.DictReader(new_texts.open()))
    assert len(rows) == len(inputs) == 13
    for row, inp, line in zip(rows, inputs, range(2, 15)):
        assert list(row) == ["id", "text", "tunesmith"]
        assert row["id"] == inp["id"] and row["text"] == inp["text"] and row["tunesmith"]["line"] == line
        assert list(row["tunesmith"]) == ["line", "prediction"]
        pred = row["tunesmith"]["prediction"]
        assert pred["label"] in ("neg", "pos")
        assert set(pred["probs"]) == {"neg", "pos"}
        assert sum(pred["probs"].values()) == pytest.approx(1, abs=1e-5)
        assert pred["score"] == pytest.approx(pred["probs"][pred["label"]])


def test_predict_to_csv_matches_jsonl(trained, new_texts, tmp_path):
    run_dir, _ = trained
    assert invoke("predict", run_dir, new_texts, "-o", tmp_path / "p.jsonl").exit_code == 0
    result = invoke("predict", run_dir, new_texts, "-o", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open(encoding="utf-8")))
    ref = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 13
    assert list(rows[0]) == ["id", "text", "input_line", "pred_label", "pred_score", "pred_probs.neg",
                             "pred_probs.pos"]
    for row, r in zip(rows, ref):
        pred = r["tunesmith"]["prediction"]
        assert row["id"] == r["id"] and row["pred_label"] == pred["label"]
        assert int(row["input_line"]) == r["tunesmith"]["line"]
        probs = {k.removeprefix("pred_probs."): float(v) for k, v in row.items() if k.startswith("pred_probs.")}
        assert probs == pytest.approx(pred["probs"], abs=1e-6)


def test_predict_to_csv_keeps_an_input_label_column(trained, new_texts, tmp_path):
    run_dir, _ = trained
    labelled = new_texts.with_name("labelled.csv")
    gold = [r["label"] for r in csv.DictReader(labelled.open())]
    assert invoke("predict", run_dir, labelled, "-o", tmp_path / "p.csv").exit_code == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open(encoding="utf-8")))
    assert [r["label"] for r in rows] == gold  # the input's own column, as in the JSONL output
    assert list(rows[0]) == ["text", "label", "input_line", "pred_label", "pred_score", "pred_probs.neg",
                             "pred_probs.pos"]


def test_predict_input_without_the_text_column(trained, tmp_path):
    run_dir, _ = trained
    f = write_csv(tmp_path / "wrong.csv", [{"sentence": "good"}])
    msg = assert_clean_failure(invoke("predict", run_dir, f, "-o", tmp_path / "o.jsonl"))
    assert str(f) in msg and "column 'text'" in msg
    assert not (tmp_path / "o.jsonl").exists()


def test_predict_wrong_column_is_reported_before_the_model_loads(trained, tmp_path, monkeypatch):
    """The advice names what predict takes (--column), and the model (seconds to load) is not loaded first."""
    from tunesmith.serving.predictor import Predictor

    run_dir, _ = trained
    f = write_csv(tmp_path / "wrong.csv", [{"id": "a", "sentence": "good"}, {"id": "b", "sentence": "awful"}])
    real_load = Predictor.load
    monkeypatch.setattr(Predictor, "load", classmethod(lambda cls, *a, **k: pytest.fail("the model was loaded")))
    msg = assert_clean_failure(invoke("predict", run_dir, f, "-o", tmp_path / "o.jsonl"))
    assert msg == (f"error: file {f}, column 'text': no column for role text: this task reads text (optional: "
                   "text_pair), the file has columns: id, sentence -> name the column to read it from: "
                   "--column text=sentence")
    msg = assert_clean_failure(invoke("predict", run_dir, f, "-o", tmp_path / "o.jsonl", "--column", "txt=sentence"))
    assert msg == ("error: --column txt=...: this task has no input role 'txt'. Did you mean 'text'? It reads text "
                   "(optional: text_pair)")
    monkeypatch.setattr(Predictor, "load", real_load)
    result = invoke("predict", run_dir, f, "-o", tmp_path / "o.jsonl", "--column", "text=sentence")
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    expected = Predictor.load(run_dir).predict(["good", "awful"])
    assert [r["tunesmith"]["prediction"] for r in rows] == expected
    assert [{k: r[k] for k in ("id", "sentence")} for r in rows] == [{"id": "a", "sentence": "good"},
                                                                    {"id": "b", "sentence": "awful"}]


def test_predict_a_txt_file_of_one_text_per_line(trained, tmp_path):
    from tunesmith.serving.predictor import Predictor

    run_dir, _ = trained
    f = tmp_path / "texts.txt"
    f.write_text("a good movie\n\n   \nthe food was awful\r\nhappy day", encoding="utf-8")
    result = invoke("predict", run_dir, f, "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 0, result.output
    assert f"wrote 3 predictions to {tmp_path / 'o.jsonl'}" in one_line(result.output)
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    texts = ["a good movie", "the food was awful", "happy day"]
    assert [(r["text"], r["tunesmith"]["line"]) for r in rows] == list(zip(texts, [1, 4, 5]))  # blank lines skipped
    assert [r["tunesmith"]["prediction"] for r in rows] == Predictor.load(run_dir).predict(texts)
    help_text = one_line(invoke("predict", "--help").output)
    assert ".txt (one text per line, for tasks that read one text)" in help_text


def test_an_unexpected_predict_error_is_one_message_and_exit_code_2(trained, monkeypatch):
    from tunesmith.serving.predictor import Predictor

    def broken(self, *args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(Predictor, "predict", broken)
    msg = assert_clean_failure(invoke("predict", trained[0], "--text", "good"))
    assert msg == ("error: predict failed (TypeError: unsupported operand); this is a bug in tunesmith, please report "
                   "it with the command you ran")


def test_readme_names_the_csv_columns_predict_writes(trained, new_texts, tmp_path):
    run_dir, _ = trained
    assert invoke("predict", run_dir, new_texts, "-o", tmp_path / "p.csv").exit_code == 0
    header = (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[2:] == ["input_line", "pred_label", "pred_score", "pred_probs.neg", "pred_probs.pos"]
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `.csv`, `.tsv` |"))
    assert "`input_line`, `pred_label`, `pred_score`, one `pred_probs.<label>` per label" in row
    assert "pred_prob:" not in readme


def test_an_unknown_key_given_with_set_is_reported_as_from_set(config_file):
    msg = assert_clean_failure(invoke("train", config_file, "--set", "train.lrr=0.1"))
    assert msg.startswith("error: invalid configuration: - unknown key 'train.lrr'. did you mean 'train.lr'?")
    assert msg.endswith("(given by --set train.lrr=0.1)")
    assert str(config_file) not in msg


def test_predict_file_streams_in_chunks(trained, new_texts, tmp_path, monkeypatch):
    """Records are read a chunk at a time: none past the first chunk before that chunk is written."""
    from tunesmith.serving import inputs
    from tunesmith.serving.predictor import Predictor

    run_dir, _ = trained
    predictor = Predictor.load(run_dir)
    whole = tmp_path / "whole.csv"
    assert predictor.predict_file(new_texts, whole) == 13
    real = inputs.iter_records
    reads = []

    def guarded(*args, **kwargs):
        for k, record in enumerate(real(*args, **kwargs), start=1):
            written = [t.stat().st_size for t in tmp_path.glob(".chunked.csv.*.tmp")]
            if k > 4 and not any(written):
                raise AssertionError(f"record {k} read before the first chunk of 4 was written")
            reads.append((k, bool(written)))
            yield record

    monkeypatch.setattr(inputs, "iter_records", guarded)
    assert predictor.predict_file(new_texts, tmp_path / "chunked.csv", chunk_rows=4) == 13
    assert reads == [(k, k > 4) for k in range(1, 14)]
    chunked = list(csv.DictReader((tmp_path / "chunked.csv").open(encoding="utf-8")))
    expected = list(csv.DictReader(whole.open(encoding="utf-8")))
    assert [r["pred_label"] for r in chunked] == [r["pred_label"] for r in expected]
    for a, b in zip(chunked, expected):
        assert float(a["pred_probs.pos"]) == pytest.approx(float(b["pred_probs.pos"]), abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked.csv", "whole.csv"]


def test_a_bad_row_in_a_later_chunk_leaves_no_output(trained, tmp_path):
    from tunesmith.serving.predictor import Predictor

    run_dir, _ = trained
    rows = [{"id": k, "text": t} for k, t in enumerate(["good", "bad", "great", "awful", "happy", "sad"])]
    rows[4]["text"] = " "
    f = write_csv(tmp_path / "in.csv", rows)
    with pytest.raises(DataError) as e:
        Predictor.load(run_dir).predict_file(f, tmp_path / "out.jsonl", chunk_rows=2)
    assert str(e.value) == (f"file {f}, line 6, column 'text': empty text: nothing to predict\n"
                            "  -> remove the row or fill it in")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # no output, no temp file


def test_csv_output_of_jsonl_rows_has_every_key_of_every_row(trained, tmp_path):
    """JSON rows may differ in keys: CSV output's header has each, in first-seen order, read in chunks."""
    from tunesmith.serving.predictor import Predictor

    run_dir, _ = trained
    f = tmp_path / "in.jsonl"
    f.write_text('{"text": "good"}\n{"text": "bad", "note": "=1+1"}\n\n{"id": 7, "text": "great"}\n', encoding="utf-8")
    assert Predictor.load(run_dir).predict_file(f, tmp_path / "o.csv", chunk_rows=1) == 3
    rows = list(csv.reader((tmp_path / "o.csv").open(encoding="utf-8")))
    assert rows[0][:4] == ["text", "note", "id", "input_line"]
    assert [r[:4] for r in rows[1:]] == [["good", "", "", "1"], ["bad", "'=1+1", "", "2"], ["great", "", "7", "4"]]


def test_init_escapes_control_characters_from_the_file(tmp_path):
    f = tmp_path / "esc.csv"
    f.write_text("te\x1b[31mxt,lab\x1b]0;pwned\x07el\nsome long review text here,pos\nanother one,neg\n")
    result = invoke("init", "--data", f, "-o", tmp_path / "cfg.yaml")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "text column: 'te\\x1b[31mxt'" in result.output


def test_init_counts_labels_over_the_whole_file(tmp_path):
    # sorted by label: the first 2000 rows hold 2 of the 5 labels
    rows = sorted(({"text": f"{r['text']} number {i}", "label": f"l{i % 5}"}
                   for i, r in enumerate(sentiment_rows(5000, seed=6))), key=lambda r: r["label"])
    data = write_csv(tmp_path / "sorted.csv", rows)
    result = invoke("init", "--data", data, "-o", tmp_path / "c.yaml")
    assert result.exit_code == 0, result.output
    assert "problem type: auto (5 distinct label values in 5000 rows)" in one_line(result.output)


def test_init_on_a_conll_tsv_writes_a_token_classification_config(tmp_path, tiny_model_dir):
    data = tmp_path / "bc5cdr.tsv"
    data.write_text("Selegiline\tB-Chemical\ninduced\tO\nhypotension\tB-Disease\n\n"
                    "Famotidine\tB-Chemical\nis\tO\nsafe\tO\n\n", encoding="utf-8")
    out = tmp_path / "ner.yaml"
    result = invoke("init", "--data", data, "-o", out)
    assert result.exit_code == 0, result.output
    text = one_line(result.output)
    assert "format: CoNLL (a token and its tag per line, blank lines between sentences), not a table with a " \
           "header" in text
    assert "token classification: 2 sentences, 3 distinct tags in the last column (B-Chemical, B-Disease, O)" in text
    assert "header" not in text.split("not a table with a header")[1]
    cfg = load_config(out)
    assert (cfg.task.type, cfg.data.format, cfg.data.train) == ("token-classification", "conll", str(data))
    # the same file trained without data.format: the error says what the file looks like
    bad = {**cfg.model_dump(), "data": {**cfg.data.model_dump(), "format": "auto"}}
    from tunesmith.data.prepare import load_splits
    from tunesmith.errors import DataError
    from tunesmith.tasks.base import get_task

    cfg = load_config(bad)
    task = get_task(cfg)
    with pytest.raises(DataError) as e:
        task.fit(load_splits(cfg.data, task.roles()).splits)
    assert str(e.value) == (f"file {data}: token classification reads tokens (with tags) or text (with entities: "
                            "entities, label or spans); columns found: none named text, tokens, tags, ner_tags, "
                            "entities, label, spans\n  -> the file looks like CoNLL (a token and its tag per line, "
                            "blank lines between sentences), read as a table whose first line is its header: set "
                            "data.format: conll")
