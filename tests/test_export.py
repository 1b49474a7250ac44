"""`tunesmith export --format onnx`: the exported model gives PyTorch's outputs, predicts through the same
Predictor, and serves with `--backend onnx`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_task_contract import _same
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import app
from tunesmith.errors import ConfigError, ModelError
from tunesmith.export import export_onnx
from tunesmith.serving.predictor import Predictor
from tunesmith.serving.server import ServeOptions, create_app


def _inputs(run_dir: Path) -> list[dict]:
    return [json.loads(x)["input"] for x in (run_dir / "predictions" / "test.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def exported(contract_run: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """task -> a copy of the task's contract run with an ONNX export (int8 too) beside it."""
    done: dict[str, tuple[Path, dict]] = {}

    def get(task: str) -> tuple[Path, dict]:
        if task not in done:
            run_dir = tmp_path_factory.mktemp(f"onnx-{task}") / "run"
            shutil.copytree(contract_run(task), run_dir)
            done[task] = run_dir, export_onnx(run_dir, quantize="int8")
        return done[task]
    return get


@pytest.mark.parametrize("task", ["text-classification", "token-classification", "question-answering"])
def test_the_onnx_model_predicts_what_pytorch_predicts(task: str, exported: Any) -> None:
    run_dir, manifest = exported(task)
    check = manifest["check"]["model.onnx"]
    assert check["max_abs_difference"] < 1e-4 and check["predictions_differing"] == 0
    assert check["test_inputs"] == len(_inputs(run_dir))
    assert set(manifest["files"]) == {"model.onnx", "model.int8.onnx"}
    inputs = _inputs(run_dir)
    torch_preds = tunesmith.load(run_dir).predict(inputs)
    onnx_preds = Predictor.load(run_dir, backend="onnx").predict(inputs)
    _same(onnx_preds, torch_preds, task)  # fp32 both: decisions equal, probabilities to 1e-6
    # int8: the manifest counts the test predictions that differ in a decision, and the backend gives that count
    from tunesmith.export import _decisions

    int8 = Predictor.load(run_dir, backend="onnx-int8").predict(inputs)
    differing = sum(_decisions(a) != _decisions(b) for a, b in zip(torch_preds, int8))
    assert manifest["check"]["model.int8.onnx"]["predictions_differing"] == differing


def test_the_onnx_backend_serves_and_refuses_what_it_cannot_do(exported: Any) -> None:
    run_dir, _ = exported("text-classification")
    inputs = _inputs(run_dir)
    expected = Predictor.load(run_dir, backend="onnx").predict(inputs)
    with TestClient(create_app(ServeOptions(run_dir=str(run_dir), backend="onnx"))) as client:
        client.app.state.loader.join()
        r = client.post("/predict", json={"inputs": inputs})
        assert r.status_code == 200
        _same(r.json(), expected)
        meta = client.get("/metadata").json()
        assert meta["backend"] == "onnx" and meta["explains"] is False
        r = client.post("/explain", json={"inputs": inputs[0]})
        assert r.status_code == 409 and "--backend pytorch" in r.json()["detail"]
    with pytest.raises(ConfigError, match="explanations need gradients"):
        Predictor.load(run_dir, backend="onnx").explain(inputs[0])
    (run_dir / "onnx" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="has changed since export"):
        Predictor.load(run_dir, backend="onnx")


def test_export_refuses_a_generating_task_and_a_run_without_export(contract_run: Any) -> None:
    result = CliRunner().invoke(app, ["export", str(contract_run("text-generation"))])
    assert result.exit_code == 2
    assert ("the text-generation task has no ONNX export; these tasks have: question-answering, "
            "text-classification, token-classification") in " ".join(result.output.split())
    with pytest.raises(ConfigError, match="has no ONNX export"):
        Predictor.load(contract_run("text-classification"), backend="onnx")


def test_a_run_with_one_test_row_exports_a_model_for_any_batch(contract_run: Any, tmp_path: Path) -> None:
    """The traced example has at least two rows: torch.export fixes a dimension it sees as 1."""
    run_dir = tmp_path / "run"
    shutil.copytree(contract_run("text-classification"), run_dir)
    rows = (run_dir / "predictions" / "test.jsonl").read_text().splitlines()
    (run_dir / "predictions" / "test.jsonl").write_text(rows[0] + "\n")
    manifest = export_onnx(run_dir)
    assert manifest["check"]["model.onnx"]["test_inputs"] == 1
    assert manifest["check"]["model.onnx"]["predictions_differing"] == 0
    texts = [json.loads(r)["input"] for r in rows[:3]]
    _same(Predictor.load(run_dir, backend="onnx").predict(texts), tunesmith.load(run_dir).predict(texts))
