"""The contract every registered task meets, on a tiny random BERT and the task's own fixture.

A task gets these checks by being registered: its fixture folder tests/contract/<task name>/ holds
train/validation/test files, a config.yaml with what differs from the base config below (model.name
`tiny:<kind>` picks a tiny random model of conftest.build_tiny_model; the default is the tiny BERT), and a
bad file with bad.yaml naming the error it must give. A registered task without a folder fails here.

Each task runs twice over: full fine-tuning, and LoRA (METHODS below), with the same checks.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
import yaml
from conftest import train_losses
from safetensors.torch import load_file

import tunesmith
from tunesmith.errors import DataError
from tunesmith.tasks.base import task_class, task_names
from tunesmith.training.loop import Control

CONTRACT = Path(__file__).parent / "contract"
EXPECTED_LOSSES = CONTRACT / "expected_losses.json"  # each task's first 10 training losses (see below)
STEPS, STOP_AT = 60, 25  # STOP_AT falls mid-epoch in every fixture (checked below)
SHORT = 5  # steps of the runs that check one property (accumulation, padding-free)
DROPOUT = 0.1
LORA_LR = 1e-2
BF16_STEPS = 6  # the bf16 runs check evaluation, not learning: a few steps move the weights off their init
# What each training method changes in a fixture's config. LoRA adapts every linear layer (the tiny models are
# random: adapters on query/value alone barely move a random body in 60 steps) at a LoRA-sized learning rate.
METHODS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {},
    "lora": {"model": {"lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}},
             "train": {"lr": LORA_LR}},
}


def task_methods(task: str) -> list[str]:
    """The other values of a task's `method` option (text classification's contrastive few-shot recipe):
    each runs the whole grid too, with `task.method` set."""
    option = task_class(task).Options.model_fields.get("method")
    return [] if option is None else [m for m in get_args(option.annotation) if m != option.default]


GRID = [(task, method) for task in task_names() for method in [*METHODS, *task_methods(task)]]
# The mean loss of the last 5 steps is below this share of the first 5's. Rank-8 adapters on a random tiny body
# learn slower than full training (measured over 60 steps: 0.50 to 0.89 of the first loss, translation the
# slowest); the first ten losses of every run are pinned exactly below, so these bounds only say "it learns".
# A task method's own loss (contrastive: pairs' squared cosine error) is held to full training's bound.
LOWERS = {"full": 0.5, "lora": 0.9}


def _method(method: str) -> dict[str, dict[str, Any]]:
    return METHODS[method] if method in METHODS else {"task": {"method": method}}


def _fixture_file(folder: Path, stem: str) -> Path:
    found = sorted(f for f in folder.glob(f"{stem}.*") if f.suffix != ".yaml")
    assert len(found) == 1, f"{folder} needs exactly one {stem}.* file, found {found}"
    return found[0]


def _with_dropout(folder: str, rate: float) -> str:
    """A copy of a tiny model (beside it) whose dropout probabilities are `rate`: every tiny model is built
    without dropout, and resume must be exact with it on (the RNG state is part of a checkpoint)."""
    out = Path(f"{folder}-dropout{rate}")
    if not out.exists():
        tmp = Path(f"{out}.tmp")
        shutil.copytree(folder, tmp)
        config = json.loads((tmp / "config.json").read_text())
        for key, value in config.items():
            if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
                config[key] = rate
        (tmp / "config.json").write_text(json.dumps(config))
        tmp.rename(out)
    return str(out)


def _config(task: str, tiny_models: Any, tmp_path: Path, name: str, dropout: float = DROPOUT,
            method: str = "full") -> dict:
    """The fixture's config trained by `method` (a key of METHODS); its model.name may be `tiny:<kind>`, a
    tiny random model from conftest, here with `dropout` on."""
    folder = CONTRACT / task
    assert folder.is_dir(), f"registered task '{task}' has no contract fixture folder {folder}"
    cfg: dict[str, Any] = {
        "model": {"name": "tiny:bert"},
        "data": {split: str(_fixture_file(folder, split)) for split in ("train", "validation", "test")},
        "train": {"max_steps": STEPS, "batch_size": 16, "lr": 3e-3, "warmup_ratio": 0.1, "seed": 0,
                  "eval_every": 12, "precision": "fp32"},
        "eval": {"batch_size": 8, "explain_errors": 0},  # report.html's shading: tests/test_report.py
    }
    for changes in (yaml.safe_load((folder / "config.yaml").read_text()), _method(method)):
        for section, values in changes.items():
            cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    cfg["model"]["name"] = tiny_models(cfg["model"]["name"].removeprefix("tiny:"))
    if dropout:
        cfg["model"]["name"] = _with_dropout(cfg["model"]["name"], dropout)
    cfg["data"]["cache_dir"] = str(tmp_path / "cache")
    cfg["output_dir"] = str(tmp_path / name)
    return cfg


def _same(a: Any, b: Any, path: str = "") -> None:
    """Equal records: numbers to 1e-6 (relative for large ones: a perplexity is exp of a loss), everything
    else exactly."""
    if isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), \
            f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _grid_id(case: tuple[str, str]) -> str:
    return "-".join(case)


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """A checkpoint's trained weights: the whole model, or under LoRA the adapters and the head."""
    ckpt = run_dir / "checkpoints" / f"step-{step}"
    return load_file(next(ckpt / f for f in ("model.safetensors", "adapter_model.safetensors")
                          if (ckpt / f).exists()))


@pytest.fixture(scope="module", params=GRID, ids=_grid_id)
def trained(request: pytest.FixtureRequest, tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(task, method, config, run, tmp): the fixture's whole run, trained by `method`."""
    task, method = request.param
    tmp = tmp_path_factory.mktemp(f"{task}-{method}")
    cfg = _config(task, tiny_models, tmp, "whole", method=method)
    return task, method, cfg, tunesmith.train(cfg), tmp


def test_training_lowers_the_loss(trained: tuple) -> None:
    task, method, cfg, run, _ = trained
    losses = train_losses(run.dir)
    assert len(losses) == STEPS
    assert bool(run.summary["lora"]) == (method == "lora")
    if method == "lora":  # adapters and the head train, the body stays frozen
        counts = run.summary["parameters"]
        assert 0 < counts["trainable"] < counts["total"] / 2, counts
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < LOWERS.get(method, LOWERS["full"]) * first, (
        f"{task} ({method}): mean loss of the first 5 steps {first:.4f}, of the last 5 {last:.4f}")
    assert run.report["task"] == task and set(run.report["test"]) >= set(tunesmith.load(run.dir).task.metrics)


def test_saved_model_predicts_what_the_run_reported(trained: tuple) -> None:
    task, method, cfg, run, _ = trained
    rows = [json.loads(x) for x in (run.dir / "predictions" / "test.jsonl").read_text().splitlines()]
    assert rows and all(list(r) == ["file", "line", "input", "gold", "prediction"] for r in rows)
    predictor = tunesmith.load(run.dir)
    schema = predictor.task.prediction_schema()  # the record the task declares, checked strictly
    for r in predictor.predict([r["input"] for r in rows]):
        schema.model_validate(r)
    for batch_size in (1, 5):  # the run evaluated at 8: a prediction does not depend on its batch
        again = predictor.predict([r["input"] for r in rows], batch_size=batch_size)
        _same(again, [r["prediction"] for r in rows], f"{task} (batch size {batch_size})")


def test_evaluate_gives_the_reports_test_metrics(trained: tuple) -> None:
    task, method, cfg, run, _ = trained
    metrics = tunesmith.load(run.dir / "model").evaluate(cfg["data"]["test"])
    for name in tunesmith.load(run.dir).task.metrics:
        _same(metrics[name], run.report["test"][name], f"{task}.{name}")
    _same(metrics["loss"], run.report["test"]["loss"], f"{task}.loss")


@pytest.fixture(scope="module", params=task_names())
def trained_bf16(request: pytest.FixtureRequest, tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A short run trained under bf16 autocast (emulated, slowly, on CPUs without native bf16)."""
    task = request.param
    cfg = _config(task, tiny_models, tmp_path_factory.mktemp(f"{task}-bf16"), "bf16")
    cfg["train"].update(max_steps=BF16_STEPS, eval_every=BF16_STEPS, precision="bf16")
    return task, cfg, tunesmith.train(cfg)


def test_a_bf16_runs_report_is_what_evaluate_and_predict_give_at_another_batch_size(trained_bf16: tuple) -> None:
    """Evaluation runs in fp32 on every path: the bf16 run's test predictions and metrics come back from
    the saved model at batch size 3 (the run evaluated at 8) to float rounding, labels and texts exactly."""
    task, cfg, run = trained_bf16
    rows = [json.loads(x) for x in (run.dir / "predictions" / "test.jsonl").read_text().splitlines()]
    predictor = tunesmith.load(run.dir)
    _same(predictor.predict([r["input"] for r in rows], batch_size=3), [r["prediction"] for r in rows], task)
    metrics = predictor.evaluate(cfg["data"]["test"], batch_size=3)
    for name in [*predictor.task.metrics, "loss"]:
        _same(metrics[name], run.report["test"][name], f"{task}.{name}")
    assert run.report["train"]["precision"] == "bf16" and run.report["inference"]["precision"] == "fp32"


def test_a_collapsed_generation_is_warned_in_the_report_and_the_summary(tiny_models: Any, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """The tiny T5 trained 10 steps at lr 0.05 writes the same summary for every dialogue: its scores alone
    would not say so. (Outputs that are not mostly one text: tests/test_tasks.py.)"""
    cfg = _config("summarization", tiny_models, tmp_path, "collapsed", dropout=0)
    cfg["train"].update(max_steps=10, eval_every=10, lr=5e-2)
    run = tunesmith.train(cfg)
    outputs = [json.loads(x)["prediction"]["summary_text"]
               for x in (run.dir / "predictions" / "test.jsonl").read_text().splitlines()]
    (top, n), = Counter(outputs).most_common(1)
    assert len(outputs) == 24 and n > 12  # collapsed: most summaries are one text (24 of 24 on transformers 5)
    advice = "the model's generation has collapsed; train longer, or check train.lr and the training targets"
    same = f"{n} of 24 generated outputs are the same text ({json.dumps(top)}): {advice}"
    warnings = json.loads((run.dir / "report.json").read_text())["warnings"]
    assert warnings[1:] == [f"test: {same}"] and len(warnings) == 2
    # validation's outputs are not kept in the run folder; its warning has the same form
    assert re.fullmatch(rf"validation: (1[3-9]|2[0-4]) of 24 generated outputs are the same text \(.+\): "
                        rf"{re.escape(advice)}", warnings[0]), warnings[0]
    assert f"warning: test: {same}" in " ".join(capsys.readouterr().out.split())


def test_resume_after_an_interruption_equals_the_uninterrupted_run(trained: tuple, tiny_models: Any) -> None:
    task, method, _, whole, tmp = trained
    cfg = _config(task, tiny_models, tmp, "stopped", method=method)
    tunesmith.train(cfg, callbacks=[lambda e: Control(stop=True) if e.kind == "step" and e.state.step == STOP_AT
                                    else None])
    state = json.loads((Path(cfg["output_dir"]) / "checkpoints" / f"step-{STOP_AT}" / "loop_state.json").read_text())
    assert state["batch_in_epoch"] > 0, "the interruption should fall mid-epoch"
    resumed = tunesmith.train(cfg, resume=True)
    assert train_losses(resumed.dir) == train_losses(whole.dir)
    # the same final weights (the reports may differ: the interruption's own evaluation can become the best)
    a, b = _weights(whole.dir, STEPS), _weights(resumed.dir, STEPS)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("task", task_names())
def test_a_bad_row_gives_the_tasks_clear_error(task: str, tiny_models: Any, tmp_path: Path) -> None:
    folder = CONTRACT / task
    expected = yaml.safe_load((folder / "bad.yaml").read_text())
    cfg = _config(task, tiny_models, tmp_path, "bad")
    cfg["data"]["train"] = str(_fixture_file(folder, "bad"))
    with pytest.raises(DataError) as err:
        tunesmith.train(copy.deepcopy(cfg))
    assert expected["message"] in str(err.value)
    assert err.value.file == cfg["data"]["train"] and err.value.line == expected["line"]
    assert err.value.column == expected.get("column")
    assert not Path(cfg["output_dir"]).exists()  # a run refused for its data leaves no folder


def test_the_first_ten_losses_are_the_stored_ones(trained: tuple) -> None:
    """Each task's first 10 training losses on its fixture (dropout on), stored in expected_losses.json
    (LoRA's under "<task>+lora"): a change that shifts any task's numbers fails here. Rewrite the file
    (TUNESMITH_STORE_LOSSES=1) only for a change that means to, and say why in its commit."""
    task, method, _, run, _ = trained
    losses = train_losses(run.dir)[:10]
    task = task if method == "full" else f"{task}+{method}"
    stored = json.loads(EXPECTED_LOSSES.read_text()) if EXPECTED_LOSSES.exists() else {}
    if os.environ.get("TUNESMITH_STORE_LOSSES") == "1":
        stored[task] = losses
        EXPECTED_LOSSES.write_text(json.dumps(dict(sorted(stored.items())), indent=1) + "\n")
    assert task in stored, f"{EXPECTED_LOSSES} has no losses for {task}: run with TUNESMITH_STORE_LOSSES=1"
    assert len(stored[task]) == 10
    for k, (a, b) in enumerate(zip(losses, stored[task])):
        assert math.isclose(a, b, rel_tol=0, abs_tol=1e-5), f"{task} step {k + 1}: loss {a} != stored {b}"


def _short(task: str, tiny_models: Any, tmp: Path, name: str, method: str = "full", **train: Any) -> dict:
    """A SHORT-step run's config without dropout (runs compared step by step must draw no random masks)."""
    cfg = _config(task, tiny_models, tmp, name, dropout=0, method=method)
    if method == "lora":
        cfg["model"]["lora"]["dropout"] = 0.0
    cfg["train"].update(max_steps=SHORT, eval_every=SHORT, **train)
    return cfg


@pytest.mark.parametrize(("task", "method"), GRID, ids=_grid_id)
def test_gradient_accumulation_equals_the_full_batch(task: str, method: str, tiny_models: Any,
                                                     tmp_path: Path) -> None:
    """Two batches of 8 accumulated give the step one batch of 16 gives: the same losses, step by step."""
    full = _short(task, tiny_models, tmp_path, "full", method)
    full["train"].pop("batch_tokens", None)  # a token budget does not halve into two equal halves
    half = copy.deepcopy(full)
    half["output_dir"] = str(tmp_path / "half")
    half["train"].update(batch_size=8, grad_accum=2)
    a, b = train_losses(tunesmith.train(full).dir), train_losses(tunesmith.train(half).dir)
    assert len(a) == len(b) == SHORT
    for k, (x, y) in enumerate(zip(a, b)):
        assert math.isclose(x, y, rel_tol=0, abs_tol=1e-6), f"{task} step {k + 1}: {x} (16) != {y} (8 x 2)"


def test_padding_free_where_claimed_equals_the_padded_run(trained: tuple, tiny_models: Any) -> None:
    """Where `model.padding_free: auto` switched the padding-free path on, the padded run (off) gives the
    same losses step by step; where it is off, the report says why."""
    task, method, _, whole, tmp = trained
    path = whole.report["train"]["speed_paths"].get("padding_free")
    if path is None or not path.startswith("on"):
        assert path is None or path.startswith("off"), path
        return
    on = _short(task, tiny_models, tmp, "pf-on", method)
    off = copy.deepcopy(on)
    off["output_dir"] = str(tmp / "pf-off")
    off["model"]["padding_free"] = "off"
    a, b = tunesmith.train(on), tunesmith.train(off)
    assert b.report["train"]["speed_paths"]["padding_free"].startswith("off")
    for k, (x, y) in enumerate(zip(train_losses(a.dir), train_losses(b.dir))):
        assert math.isclose(x, y, rel_tol=0, abs_tol=1e-5), f"{task} step {k + 1}: {x} (padding-free) != {y}"
