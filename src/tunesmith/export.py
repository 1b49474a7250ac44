"""`tunesmith export RUN_DIR --format onnx [--quantize int8]`: the run's model as ONNX for ONNX Runtime.

The model is traced by PyTorch's own exporter (`torch.onnx.export(..., dynamo=True)`, batch and sequence
length dynamic) with the outputs the task's `forward` reads (`Task.onnx_outputs`), on the stock forward (no
speed path). `--quantize int8` adds ONNX Runtime's dynamic int8 quantization of the weights. optimum-onnx
would do the same export, but its release pins transformers below 4.58, and tunesmith runs on 5.

Export checks itself: the run's test inputs go through PyTorch and each ONNX file, and onnx/onnx.json
records the largest difference of any output (at real tokens) and how many prediction records differ in
anything but a probability (a label, a tag, an answer), beside each file's sha256.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, ModelError
from .io import atomic_dir, hash_files, json_text, read_jsonl
from .serving.inputs import read_run_state
from .serving.onnx_backend import MANIFEST, ONNX_DIR, OnnxModel
from .serving.predictor import Predictor
from .tasks.base import task_class, task_names

OPSET = 18
CHECK_BATCH = 16


def _decisions(record: Any) -> Any:
    """A prediction record without its floating-point fields: what a user acts on."""
    if isinstance(record, dict):
        return {k: _decisions(v) for k, v in record.items() if not isinstance(v, float)}
    if isinstance(record, list):
        return [_decisions(v) for v in record]
    return record


def _test_inputs(run_dir: Path) -> list[dict]:
    rows_file = run_dir / "predictions" / "test.jsonl"
    if not rows_file.exists():
        raise ConfigError(f"{run_dir} has no predictions/test.jsonl: export checks the model on the run's test inputs")
    return [r["input"] for r in read_jsonl(rows_file)]


def _batches(predictor: Predictor, records: list[dict]) -> list[dict[str, torch.Tensor]]:
    """The records as the task feeds them to the model, CHECK_BATCH features at a time."""
    features = predictor.task.preprocess(predictor._table(records), predictor.tokenizer)
    return [predictor.task.collate(features.__getitems__(list(range(i, min(i + CHECK_BATCH, len(features)))))).inputs
            for i in range(0, len(features), CHECK_BATCH)]


def _max_difference(reference: Any, exported: OnnxModel, batches: list[dict], names: tuple[str, ...]) -> float:
    worst = 0.0
    with torch.no_grad():
        for inputs in batches:
            a, b = reference(**inputs), exported(**inputs)
            real = inputs["attention_mask"].bool()
            for name in names:
                x, y = a[name].float(), b[name].float()
                if x.dim() >= 2 and x.shape[:2] == real.shape:  # per token: the padded positions mean nothing
                    x, y = x[real], y[real]
                worst = max(worst, float((x - y).abs().max()))
    return worst


def export_onnx(run_dir: str | Path, quantize: str | None = None) -> dict[str, Any]:
    """Write run_dir/onnx/ (model.onnx, with --quantize int8 also model.int8.onnx, and onnx.json) and return
    the manifest."""
    run_dir = Path(run_dir)
    state = read_run_state(run_dir)
    task = state.task
    if not task.onnx_outputs:
        those = ", ".join(n for n in task_names() if task_class(n).onnx_outputs)
        raise ConfigError(f"the {task.name} task has no ONNX export; these tasks have: {those}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {quantize!r}: the one quantization is int8")
    records = _test_inputs(run_dir)
    predictor = Predictor.load(run_dir, "cpu")
    from .fast_bert import restore_stock

    restore_stock(predictor.model)
    batches = _batches(predictor, records)
    # torch.export specializes a dimension it sees as 1: the traced example has at least two rows
    example = {k: v if v.shape[0] > 1 else torch.cat([v, v]) for k, v in batches[0].items()}
    from torch.export import Dim

    batch, sequence = Dim("batch"), Dim("sequence")
    names = list(example)
    with atomic_dir(run_dir / ONNX_DIR) as tmp:
        try:
            program = torch.onnx.export(predictor.model, (), kwargs=dict(example), input_names=names,
                                        output_names=list(task.onnx_outputs), opset_version=OPSET, dynamo=True,
                                        dynamic_shapes={k: {0: batch, 1: sequence} for k in names}, verbose=False)
            program.save(str(tmp / "model.onnx"))
            files = {"model.onnx": tmp / "model.onnx"}
            if quantize:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model.int8.onnx"), weight_type=QuantType.QInt8)
                files["model.int8.onnx"] = tmp / "model.int8.onnx"
        except Exception as e:  # the exporter's own failure, said as one error (nothing is written)
            raise ModelError(f"ONNX export of {run_dir / 'model'} failed: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None
        expected = [_decisions(r) for r in predictor.predict(records)]
        checks = {}
        for name, path in files.items():
            exported = OnnxModel(path)
            onnx_predictor = Predictor(exported, predictor.tokenizer, predictor.task, predictor.cfg,
                                       torch.device("cpu"))
            got = [_decisions(r) for r in onnx_predictor.predict(records)]
            checks[name] = {"max_abs_difference": _max_difference(predictor.model, exported, batches,
                                                                  task.onnx_outputs),
                            "test_inputs": len(records),
                            "predictions_differing": int(sum(a != b for a, b in zip(expected, got)))}
        import onnxruntime

        manifest = {"format": "onnx", "opset": OPSET, "inputs": names, "outputs": list(task.onnx_outputs),
                    "exporter": f"torch.onnx (dynamo) {torch.__version__}", "onnxruntime": onnxruntime.__version__,
                    "quantization": "dynamic int8 weights (onnxruntime.quantization.quantize_dynamic)"
                    if quantize else None,
                    "check": checks, "files": hash_files(tmp)}
        (tmp / MANIFEST).write_text(json_text(manifest, indent=2))
    return manifest


def summary_lines(manifest: dict) -> list[str]:
    """What `tunesmith export` prints: each file's check against PyTorch."""
    return [f"{name}: largest output difference from PyTorch {c['max_abs_difference']:.3g}; "
            f"{c['predictions_differing']} of {c['test_inputs']} test predictions differ"
            for name, c in manifest["check"].items()]
