"""Divergence, damaged model folders, prediction output that keeps the user's columns, model errors."""
from __future__ import annotations

import copy
import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import tunesmith
from conftest import sentiment_rows, write_csv, write_jsonl
from tunesmith.cli import app
from tunesmith.config import ModelConfig, load_config
from tunesmith.errors import ConfigError, ModelError
from tunesmith.serving.predictor import Predictor, safe_cell

ENV = {"COLUMNS": "400"}


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def clean_failure(result) -> str:
    """Exit code 2, one `error:` message, no traceback; the message on one line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    assert "error:" in result.output
    return " ".join(result.output.split())


def strict_json(text: str) -> object:
    """json.loads that refuses the NaN/Infinity tokens, as strict JSON readers do."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short training run shared by the prediction tests (each copies its model before damaging it)."""
    d = tmp_path_factory.mktemp("safety")
    data = write_csv(d / "sentiment.csv", sentiment_rows(120, seed=1))
    run = tunesmith.train({
        "task": "text-classification", "model": {"name": tiny_model_dir, "max_length": 32},
        "data": {"train": str(data), "cache_dir": str(d / "cache")},
        "train": {"max_steps": 3, "batch_size": 16, "lr": 5e-3, "seed": 0, "precision": "fp32"},
        "output_dir": str(d / "run")})
    return run.dir


@pytest.fixture
def model_copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir / "model", tmp_path / "model"))


# ---------------------------------------------------------------- item 4: divergence and NaN in JSON

def test_lr_1e3_stops_with_a_divergence_error_and_exports_nothing(base_config: dict, tmp_path: Path) -> None:
    cfg = copy.deepcopy(base_config)
    cfg["train"]["lr"] = 1e3
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    msg = clean_failure(invoke("train", path))
    assert ("training diverged: the loss or gradient norm was NaN or infinite for 3 steps in a row "
            "(steps 12-14, learning rate 870 at step 14); no model was exported. Lower train.lr (it is 1000), "
            "keep train.max_grad_norm on (it is 1)") in msg
    run = Path(cfg["output_dir"])
    assert not (run / "model").exists() and not (run / "report.json").exists()
    rows = [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"][11:] == [(12, None), (13, None), (14, None)]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [(r["step"], r["loss"], r["is_best"]) for r in evals] == [(12, None, False)]


def test_a_nonfinite_step_is_skipped_and_counted(base_config: dict, tmp_path: Path, monkeypatch) -> None:
    from tunesmith.tasks.classification import TextClassification

    real_forward = TextClassification.forward
    seen: list[torch.Tensor] = []

    def forward(self, model, batch, mode):  # the second training step's loss is NaN
        if mode != "train":
            return real_forward(self, model, batch, mode)
        seen.append(model.classifier.weight.detach().clone())
        loss, out = real_forward(self, model, batch, mode)
        return (loss * float("nan") if len(seen) == 2 else loss), out

    monkeypatch.setattr(TextClassification, "forward", forward)
    cfg = copy.deepcopy(base_config)
    cfg["train"].update(max_steps=4, warmup_ratio=0.0)
    run = tunesmith.train(cfg)
    assert len(seen) == 4
    assert not torch.equal(seen[0], seen[1])  # step 1 updated the weights
    assert torch.equal(seen[1], seen[2])      # the NaN step 2 did not
    assert torch.isfinite(seen[3]).all()
    assert run.summary["nonfinite_steps"] == 1 and run.summary["steps"] == 4
    rows = [strict_json(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] is None for r in rows if r["kind"] == "train"] == [False, True, False, False]
    assert (run.dir / "model" / "model.safetensors").is_file()


def test_an_evaluation_with_a_nonfinite_metric_or_loss_is_never_best() -> None:
    """Through the loop's own constructor, on the two-parameter model and task of test_loop_mechanics:
    four steps, an evaluation after each, whose results are NaN loss, infinite accuracy, 0.6, NaN accuracy."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from test_loop_mechanics import Line, WeightedSquaredError, rows
    from tunesmith.config import TrainConfig
    from tunesmith.training.loop import TrainingLoop

    results = iter([{"loss": math.nan, "accuracy": 0.9}, {"loss": 0.5, "accuracy": math.inf},
                    {"loss": 0.5, "accuracy": 0.6}, {"loss": 0.4, "accuracy": math.nan}])
    saved, evals = [], []

    class Checkpoints:
        def save(self, model, optimizer, scheduler, state, is_best):
            saved.append((state.step, is_best))
            return Path(f"step-{state.step}")

    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision="no", cpu=True)
    cfg = TrainConfig(max_steps=4, eval_every=1, batch_size=5, lr=0.1, max_grad_norm=None)
    loop = TrainingLoop(model=Line(), task=WeightedSquaredError(), train_data=rows(), lengths=np.ones(5, np.int64),
                        cfg=cfg, accelerator=accelerator, evaluate=lambda model: (next(results), {}),
                        metric="accuracy", higher_is_better=True, checkpoints=Checkpoints(),
                        callbacks=[lambda e: evals.append(e.data["is_best"]) if e.kind == "eval" else None])
    state = loop.run()
    assert saved == [(1, False), (2, False), (3, True), (4, False)]
    assert evals == [False, False, True, False]
    assert (state.best_step, state.best_metric, state.bad_evals) == (3, 0.6, 1)


def test_json_files_hold_null_for_nonfinite_numbers(tmp_path: Path) -> None:
    from tunesmith.io import append_jsonl, atomic_write_json, atomic_write_jsonl

    obj = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": {"d": (math.nan, 2)}}
    atomic_write_json(tmp_path / "x.json", obj)
    assert (tmp_path / "x.json").read_text() == \
        '{\n  "a": null,\n  "b": [\n    null,\n    null,\n    1.5\n  ],\n  "c": {\n    "d": [\n      null,\n      2\n' \
        '    ]\n  }\n}\n'
    atomic_write_jsonl(tmp_path / "x.jsonl", [obj])
    append_jsonl(tmp_path / "x.jsonl", {"loss": math.nan})
    assert (tmp_path / "x.jsonl").read_text() == \
        '{"a": null, "b": [null, null, 1.5], "c": {"d": [null, 2]}}\n{"loss": null}\n'


def test_predictions_of_nan_weights_are_valid_json(run_dir: Path, model_copy: Path, tmp_path: Path) -> None:
    predictor = Predictor.load(model_copy)
    with torch.no_grad():
        predictor.model.classifier.weight.fill_(math.nan)
    out = tmp_path / "p.jsonl"
    predictor.predict_file(write_csv(tmp_path / "in.csv", [{"text": "good"}]), out)
    row = strict_json(out.read_text())
    assert row["tunesmith"] == {"line": 2, "prediction": {"label": "neg", "score": None,
                                                          "probs": {"neg": None, "pos": None}}}


# ---------------------------------------------------------------- item 6 and 18: damaged model folders

def test_the_export_records_the_hash_of_every_file(run_dir: Path) -> None:
    from tunesmith.io import sha256_file

    model = run_dir / "model"
    files = json.loads((model / "tunesmith.json").read_text())["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert files == {f.name: sha256_file(f) for f in model.iterdir() if f.name != "tunesmith.json"}


def test_a_missing_tokenizer_json_is_an_error(model_copy: Path) -> None:
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelError) as e:
        Predictor.load(model_copy)
    assert str(e.value) == (f"the model folder {model_copy} is incomplete: tokenizer.json is missing; "
                            "copy the whole model folder again from the run")


@pytest.mark.parametrize("damage", ["truncated weights", "missing weights", "missing config.json",
                                    "corrupt tunesmith.json"])
def test_a_damaged_model_folder_fails_cleanly_in_predict(model_copy: Path, tmp_path: Path, damage: str) -> None:
    weights, state = model_copy / "model.safetensors", model_copy / "tunesmith.json"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "missing weights":
        weights.unlink()
    elif damage == "missing config.json":
        (model_copy / "config.json").unlink()
    else:
        state.write_text(state.read_text()[:50])
    data = write_csv(tmp_path / "in.csv", [{"text": "good"}])
    msg = clean_failure(invoke("predict", model_copy, data, "-o", tmp_path / "out.jsonl"))
    if damage == "truncated weights":
        assert f"error: {weights} has changed since training (its sha256 is not the one recorded in " in msg
    elif damage == "missing weights":
        assert f"error: the model folder {model_copy} is incomplete: model.safetensors is missing" in msg
    elif damage == "missing config.json":
        assert f"error: the model folder {model_copy} is incomplete: config.json is missing" in msg
    else:
        assert f"error: {state} is damaged and cannot be read (JSONDecodeError: " in msg
    assert not (tmp_path / "out.jsonl").exists()


def test_an_unwritable_output_path_fails_before_predicting(run_dir: Path, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "in.csv", [{"text": "good"}])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    msg = clean_failure(invoke("predict", run_dir, data, "-o", blocker / "out.jsonl"))
    assert f"error: cannot write predictions to {blocker / 'out.jsonl'}: {blocker} is a file, not a folder" in msg
    msg = clean_failure(invoke("predict", run_dir, data, "-o", tmp_path))
    assert f"error: cannot write predictions to {tmp_path}: it is a folder" in msg


# ---------------------------------------------------------------- item 20: prediction output

def test_jsonl_output_keeps_every_input_key(run_dir: Path, tmp_path: Path) -> None:
    rows = [{"text": "good", "prediction": "mine", "line": 7, "tunesmith": {"x": 1}},
            {"text": "bad", "prediction": "also mine", "line": 8, "tunesmith": None}]
    out = tmp_path / "p.jsonl"
    assert tunesmith.load(run_dir).predict_file(write_jsonl(tmp_path / "in.jsonl", rows), out) == 2
    got = [json.loads(x) for x in out.read_text().splitlines()]
    for before, after, line in zip(rows, got, (1, 2)):
        assert list(after) == ["text", "prediction", "line", "tunesmith", "tunesmith_1"]
        assert {k: after[k] for k in before} == before
        assert after["tunesmith_1"]["line"] == line and set(after["tunesmith_1"]) == {"line", "prediction"}
        assert set(after["tunesmith_1"]["prediction"]) == {"label", "score", "probs"}


def test_csv_output_takes_the_union_of_keys_and_never_overwrites(run_dir: Path, tmp_path: Path) -> None:
    rows = [{"text": "good", "pred_label": "gold"},
            {"text": "bad", "pred_label": "x", "input_line": "=HYPERLINK(1)", "note": ["a"]}]
    out = tmp_path / "p.csv"
    tunesmith.load(run_dir).predict_file(write_jsonl(tmp_path / "in.jsonl", rows), out)
    got = list(csv.reader(out.open(encoding="utf-8")))
    assert got[0] == ["text", "pred_label", "input_line", "note", "input_line_1", "pred_label_1", "pred_score",
                      "pred_probs.neg", "pred_probs.pos"]
    assert got[1][:5] == ["good", "gold", "", "", "1"]
    assert got[2][:5] == ["bad", "x", "'=HYPERLINK(1)", '["a"]', "2"]
    assert all(r[5] in ("neg", "pos") and float(r[6]) == max(float(r[7]), float(r[8])) for r in got[1:])


@pytest.mark.parametrize("value, cell", [("=1+2", "'=1+2"), ("+cmd", "'+cmd"), ("-x", "'-x"), ("@SUM(A1)", "'@SUM(A1)"),
                                         ("\tx", "'\tx"), ("\rx", "'\rx"), ("-3", "-3"), ("+1.5e-3", "+1.5e-3"),
                                         ("a=b", "a=b"), (-3.5, -3.5), ({"k": 1}, '{"k": 1}')])
def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(value: object, cell: object) -> None:
    assert safe_cell(value) == cell


def test_label_names_reach_the_terminal_escaped() -> None:
    from tunesmith.evaluation.report import summary_lines

    pc = {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    lines = summary_lines({"test": {"accuracy": 1.0, "per_class": {"\x1b[2Jevil": pc}}})
    assert lines[1] == "             \\x1b[2Jevil: precision=1.000 recall=1.000 f1=1.000 support=1"


# ---------------------------------------------------------------- item 15: max_length over the model's limit

def test_max_length_above_the_position_limit_is_a_config_error(base_config: dict, tiny_model_dir: str) -> None:
    cfg = copy.deepcopy(base_config)
    cfg["model"]["max_length"] = 200
    with pytest.raises(ConfigError) as e:
        tunesmith.train(cfg)
    assert str(e.value) == (f"model.max_length 200 is more than model '{tiny_model_dir}' accepts: 128 tokens "
                            "(max_position_embeddings 128); set model.max_length to 128 or less")
    assert not Path(cfg["output_dir"]).exists()


def test_position_limit_of_roberta_like_models_and_tokenizers(tmp_path: Path) -> None:
    from transformers import RobertaConfig

    from tunesmith.models import max_tokens

    RobertaConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                  max_position_embeddings=130, pad_token_id=1).save_pretrained(tmp_path)

    class Tok:
        model_max_length = int(1e30)  # transformers' "not set"

    assert max_tokens(str(tmp_path), ModelConfig(), Tok()) == (128, "max_position_embeddings 130 minus the "
                                                                   "padding offset 2")
    Tok.model_max_length = 100
    assert max_tokens(str(tmp_path), ModelConfig(), Tok()) == (100, "the tokenizer's model_max_length 100")


# ---------------------------------------------------------------- item 16: many labels

def test_more_than_50_labels_report_the_top_confusions(tmp_path: Path) -> None:
    from tunesmith.metrics.labels import classification_metrics, top_confusions
    from tunesmith.tasks.classification import plot_top_confusions

    names = [f"c{k:04d}" for k in range(1200)]
    y = np.repeat(np.arange(1200), 3)
    pred = y.copy()
    pred[y == 5] = 7          # 3 x (c0005 -> c0007)
    pred[[30, 31]] = 3        # 2 x (c0010 -> c0003)
    pred[6] = 4               # 1 x (c0002 -> c0004)
    pred[3] = 0               # 1 x (c0001 -> c0000)
    out = classification_metrics(pred, y, names)
    assert "confusion_matrix" not in out and len(out["per_class"]) == 1200
    assert out["top_confusions"] == [{"true": "c0005", "predicted": "c0007", "count": 3},
                                     {"true": "c0010", "predicted": "c0003", "count": 2},
                                     {"true": "c0001", "predicted": "c0000", "count": 1},
                                     {"true": "c0002", "predicted": "c0004", "count": 1}]
    assert top_confusions(pred, y, names, k=3) == out["top_confusions"][:3]
    assert out["accuracy"] == (3600 - 7) / 3600
    plot_top_confusions(out["top_confusions"], tmp_path / "top.png")
    assert (tmp_path / "top.png").read_bytes()[:4] == b"\x89PNG"
    # up to 50 labels the whole matrix is kept
    small = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), [f"c{k}" for k in range(50)])
    assert small["confusion_matrix"]["matrix"][0][:2] == [1, 1] and "top_confusions" not in small


def test_a_failing_plot_is_a_warning_not_a_failed_run(base_config: dict, monkeypatch) -> None:
    import tunesmith.run

    def boom(*args: object) -> None:
        raise MemoryError("simulated")

    import tunesmith.tasks.classification

    monkeypatch.setattr(tunesmith.tasks.classification, "plot_confusion_matrix", boom)
    cfg = copy.deepcopy(base_config)
    cfg["train"]["max_steps"] = 2
    run = tunesmith.train(cfg)
    assert (run.dir / "model" / "model.safetensors").is_file()
    report = json.loads((run.dir / "report.json").read_text())
    assert report["warnings"] == ["plots/confusion_matrix.png was not written: MemoryError: simulated"]
    assert (run.dir / "plots" / "learning_curves.png").is_file() and (run.dir / "confusion_matrix.json").is_file()


# ---------------------------------------------------------------- item 19: folder or Hub name

@pytest.mark.parametrize("name", ["ABS", "./no-such-model", "~/no-such-model-here", "a/b/c", "a\\b"])
def test_a_missing_local_folder_is_reported_as_such(base_config: dict, tmp_path: Path, name: str,
                                                     monkeypatch) -> None:
    from tunesmith.run import prepare

    monkeypatch.chdir(tmp_path)
    name = str(tmp_path / "nope") if name == "ABS" else name
    cfg = load_config(base_config, {"model.name": name})
    with pytest.raises(ModelError) as e:
        prepare(cfg)
    assert str(e.value).startswith(f"model folder not found: '{name}'")
    assert str(e.value).endswith("; check model.name (a local folder, or a Hub name such as org/name)")


def test_a_missing_hub_name_says_no_local_folder_exists_either(base_config: dict) -> None:
    from tunesmith.run import prepare

    with pytest.raises(ModelError) as e:
        prepare(load_config(base_config, {"model.name": "no-such-org/no-such-model"}))
    assert "cannot load model 'no-such-org/no-such-model' (a Hub name)" in str(e.value)
    assert str(e.value).endswith("The Hub is unreachable (HF_HUB_OFFLINE=1) and no local folder of that name "
                                 "exists: use a local folder or a model already in the cache.")


# ---------------------------------------------------------------- item 23: overrides from Python, portable model

def test_overrides_from_python_as_a_dict_or_list(base_config: dict) -> None:
    cfg = load_config(base_config, {"train.lr": 3e-5, "model": {"dropout": 0.2, "max_length": 16}})
    assert (cfg.train.lr, cfg.model.dropout, cfg.model.max_length, cfg.train.epochs) == (3e-5, 0.2, 16, 5)
    assert load_config(base_config, ["train.lr=3e-5"]).train.lr == 3e-5


def test_a_string_of_overrides_is_refused_clearly(base_config: dict) -> None:
    with pytest.raises(ConfigError) as e:
        tunesmith.train(base_config, "train.lr=1e-3")
    assert str(e.value) == ('overrides must be a list of "key=value" strings or a dict such as {"train.lr": 3e-5}, '
                            "not str 'train.lr=1e-3'")
    assert not Path(base_config["output_dir"]).exists()


def test_override_messages_say_override_in_python_and_set_on_the_cli(base_config: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(base_config, ["train.lr"])
    assert str(e.value) == ("override expects key=value, got 'train.lr' (for example \"train.lr=3e-5\" or "
                            "{\"train.lr\": 3e-5})")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(base_config))
    msg = clean_failure(invoke("check-data", path, "--set", "train.lr"))
    assert "error: --set expects key=value, got 'train.lr' (for example --set train.lr=3e-5)" in msg


def test_the_exported_model_holds_no_paths_of_the_training_machine(run_dir: Path, tiny_model_dir: str) -> None:
    text = (run_dir / "model" / "tunesmith.json").read_text()
    assert str(run_dir.parent) not in text and tiny_model_dir not in text
    cfg = json.loads(text)["config"]
    assert cfg["data"]["train"] == "sentiment.csv" and cfg["data"]["cache_dir"] is None
    assert cfg["model"]["name"] == Path(tiny_model_dir).name and "output_dir" not in cfg


# ---------------------------------------------------------------- issue 22 item 1: no code from a model folder

EVIL_MODULE = '''\
from pathlib import Path

from transformers import BertConfig, BertForSequenceClassification

Path({marker!r}).write_text("the model folder's code ran")


class EvilConfig(BertConfig):
    model_type = "evil"


class EvilModel(BertForSequenceClassification):
    config_class = EvilConfig
'''


@pytest.fixture
def evil_run(run_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the module's run whose model/ holds evil.py, named by config.json's `model_type` and
    `auto_map` (the issue's reproduction), with the manifest's hashes updated to match; and the marker
    file that evil.py writes when it is imported."""
    from tunesmith.io import sha256_file

    run, marker = Path(shutil.copytree(run_dir, tmp_path / "evil-run")), tmp_path / "marker"
    model = run / "model"
    (model / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig",
                                               "AutoModelForSequenceClassification": "evil.EvilModel"})
    (model / "config.json").write_text(json.dumps(config))
    state = json.loads((model / "tunesmith.json").read_text())
    state["files"].update({n: sha256_file(model / n) for n in ("evil.py", "config.json")})
    (model / "tunesmith.json").write_text(json.dumps(state))
    return run, marker


def auto_map_refusal(model: Path) -> str:
    return (f"{model / 'config.json'} has an 'auto_map' key: it names Python code in the model folder for "
            "transformers to import, and tunesmith never runs code from a model folder; use a model folder "
            "without auto_map (and without the modules it names)")


def test_predict_on_the_cli_refuses_a_model_folder_with_auto_map_even_given_yes(evil_run: tuple[Path, Path],
                                                                              tmp_path: Path) -> None:
    run, marker = evil_run
    result = CliRunner().invoke(app, ["predict", str(run), "--text", "good movie"], input="y\n" * 5, env=ENV)
    assert not marker.exists()
    assert clean_failure(result) == f"error: {auto_map_refusal(run / 'model')}"


def test_evaluate_on_the_cli_refuses_a_model_folder_with_auto_map(evil_run: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    run, marker = evil_run
    data = write_csv(tmp_path / "eval.csv", sentiment_rows(8, seed=2))
    result = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(data)], input="y\n" * 5, env=ENV)
    assert not marker.exists()
    assert clean_failure(result) == f"error: {auto_map_refusal(run / 'model')}"


@pytest.mark.parametrize("where", ["run folder", "model folder"])
def test_load_refuses_a_model_folder_with_auto_map(evil_run: tuple[Path, Path], where: str) -> None:
    run, marker = evil_run
    with pytest.raises(ModelError) as e:
        tunesmith.load(run if where == "run folder" else run / "model")
    assert not marker.exists()
    assert str(e.value) == auto_map_refusal(run / "model")


def test_train_refuses_a_base_model_folder_with_auto_map(evil_run: tuple[Path, Path], base_config: dict) -> None:
    run, marker = evil_run
    cfg = copy.deepcopy(base_config)
    cfg["model"]["name"] = str(run / "model")
    with pytest.raises(ModelError) as e:
        tunesmith.train(cfg)
    assert not marker.exists()
    assert str(e.value) == auto_map_refusal(run / "model")
    assert not Path(cfg["output_dir"]).exists()


def test_a_search_trial_refuses_a_base_model_folder_with_auto_map(evil_run: tuple[Path, Path], base_config: dict,
                                                                  tmp_path: Path) -> None:
    run, marker = evil_run
    cfg = copy.deepcopy(base_config)
    cfg["model"]["name"] = str(run / "model")
    cfg["output_dir"] = str(tmp_path / "study")
    cfg["search"] = {"method": "grid", "space": {"train.lr": {"choice": [5e-3]}}}
    result = tunesmith.search(cfg)
    assert not marker.exists()
    [row] = result.summary["leaderboard"]
    assert (row["state"], row["reason"]) == ("failed", f"ModelError: {auto_map_refusal(run / 'model')}")


def test_a_tokenizer_config_with_auto_map_is_refused_too(model_copy: Path) -> None:
    config = json.loads((model_copy / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (model_copy / "tokenizer_config.json").write_text(json.dumps(config))
    from tunesmith.models import check_no_remote_code

    with pytest.raises(ModelError) as e:
        check_no_remote_code(model_copy)
    assert str(e.value) == auto_map_refusal(model_copy).replace("config.json", "tokenizer_config.json")


def test_remote_code_that_transformers_refuses_is_a_clear_error(evil_run: tuple[Path, Path]) -> None:
    """A Hub repo with custom code cannot be checked before download: transformers' refusal under
    trust_remote_code=False becomes an error that says what to do (a local folder stands in for it)."""
    from tunesmith.models import max_tokens

    run, marker = evil_run
    with pytest.raises(ModelError) as e:  # its first load of the config, past resolve_model_name's check
        max_tokens(str(run / "model"), ModelConfig(name="org/custom-code"), tokenizer=None)
    assert not marker.exists()
    assert str(e.value) == (f"cannot load model '{run / 'model'}': it ships Python code of its own (its config "
                            "has an auto_map), which tunesmith runs only for a Hub repo you trust and name with "
                            "model.trust_remote_code: true; use a model without custom code")


@pytest.mark.parametrize("manifest", ["files: null", "no files key"])
def test_a_manifest_without_file_hashes_is_refused(model_copy: Path, manifest: str) -> None:
    state_path = model_copy / "tunesmith.json"
    state = json.loads(state_path.read_text())
    if manifest == "files: null":
        state["files"] = None
    else:
        del state["files"]
    state_path.write_text(json.dumps(state))
    with pytest.raises(ModelError) as e:
        Predictor.load(model_copy)
    assert str(e.value) == (f"{state_path} records no file hashes (its 'files' key is missing or null): "
                            "tunesmith loads only a model folder whose every file it can check; copy the model "
                            "folder again from the run, or train again")


# ---------------------------------------------------------------- issue 22 item 12: model.dropout per architecture

@pytest.mark.parametrize("kind, expected", [
    ("bert", {"hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.2, "classifier_dropout": 0.2}),
    ("gpt2", {"resid_pdrop": 0.2, "embd_pdrop": 0.2, "attn_pdrop": 0.2, "summary_first_dropout": 0.2}),
    ("llama", {"attention_dropout": 0.2}),
    ("t5", {"dropout_rate": 0.2, "classifier_dropout": 0.2}),
    ("bart", {"dropout": 0.2, "attention_dropout": 0.2, "activation_dropout": 0.2, "classifier_dropout": 0.2,
              "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0}),
])
def test_model_dropout_sets_each_architectures_own_keys(tiny_models, kind: str, expected: dict) -> None:
    from tunesmith.models import load_model
    from tunesmith.tasks.base import get_task

    folder = tiny_models(kind)
    cfg = load_config({"model": {"name": folder, "dropout": 0.2}, "data": {"train": "x.csv"}})
    task = get_task(cfg, {"problem_type": "single_label", "labels": ["neg", "pos"]})
    model, _ = load_model(task, folder, cfg.model)
    assert {k: v for k, v in model.config.to_dict().items() if "drop" in k} == expected
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == ({0.2} if kind != "llama" else set())  # Llama's only dropout is attention's, a float
    if kind == "llama":
        assert {layer.self_attn.attention_dropout for layer in model.model.layers} == {0.2}


def test_model_dropout_of_a_warm_started_decoder_uses_the_decoders_keys(tiny_models) -> None:
    """A BERT encoder with a GPT-2 decoder (task.decoder): each side gets its own architecture's keys."""
    from tunesmith.models import load_model
    from tunesmith.tasks.base import get_task

    cfg = load_config({"task": {"type": "summarization", "decoder": tiny_models("gpt2")},
                       "model": {"name": tiny_models("bert"), "dropout": 0.2}, "data": {"train": "x.jsonl"}})
    model, _ = load_model(get_task(cfg), cfg.model.name, cfg.model)
    drops = {side: {k: v for k, v in getattr(model.config, side).to_dict().items() if "drop" in k}
             for side in ("encoder", "decoder")}
    assert drops == {"encoder": {"hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.2,
                                 "classifier_dropout": 0.2},
                     "decoder": {"resid_pdrop": 0.2, "embd_pdrop": 0.2, "attn_pdrop": 0.2,
                                 "summary_first_dropout": 0.2}}


def test_model_dropout_on_a_model_without_dropout_keys_is_refused_by_name(tmp_path: Path) -> None:
    from transformers import Ernie4_5Config

    from tunesmith.models import load_model
    from tunesmith.tasks.base import get_task

    Ernie4_5Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=4, num_key_value_heads=2).save_pretrained(tmp_path / "ernie")
    cfg = load_config({"model": {"name": str(tmp_path / "ernie"), "dropout": 0.2}, "data": {"train": "x.csv"}})
    task = get_task(cfg, {"problem_type": "single_label", "labels": ["neg", "pos"]})
    with pytest.raises(ConfigError) as e:
        load_model(task, cfg.model.name, cfg.model)
    assert str(e.value) == (
        f"model.dropout: ernie4_5 models ('{tmp_path / 'ernie'}') have none of the dropout settings tunesmith "
        "knows (hidden_dropout_prob, attention_probs_dropout_prob, classifier_dropout, classifier_dropout_prob, "
        "resid_pdrop, embd_pdrop, attn_pdrop, summary_first_dropout, dropout, attention_dropout, "
        "activation_dropout, dropout_rate, seq_classif_dropout, qa_dropout, hidden_dropout, resid_dropout, "
        "embed_dropout, embedding_dropout, mlp_dropout, pooler_dropout); remove model.dropout to train with the "
        "model's own dropout")
