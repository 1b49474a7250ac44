"""The ONNX Runtime backend: an exported model (`tunesmith export --format onnx`) in place of the PyTorch
module under the same Predictor, so `predict`, `evaluate` and `serve --backend onnx` keep one path.

`OnnxModel` answers the calls a task's `forward` makes (`model(**inputs).logits`, `out["start_logits"]`)
with torch tensors from an `onnxruntime.InferenceSession`; nothing else of a model is there, so
explanations (which need gradients) ask for the PyTorch backend.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelError
from ..io import sha256_file

ONNX_DIR = "onnx"
MANIFEST = "onnx.json"


class _Outputs(dict):
    """What a transformers model returns, as far as tasks read it: outputs by attribute or by key."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class OnnxModel:
    """An ONNX Runtime session called like the model it was exported from (CPU execution)."""

    backend = "onnx"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, **inputs: torch.Tensor) -> _Outputs:
        feed = {k: v.detach().cpu().numpy() for k, v in inputs.items() if k in self.input_names}
        missing = [k for k in self.input_names if k not in feed]
        if missing:
            raise ModelError(f"the ONNX model {self.path} needs inputs {missing} that the task did not give")
        return _Outputs(zip(self.output_names, (torch.from_numpy(o) for o in self.session.run(None, feed))))

    def to(self, device: Any) -> "OnnxModel":
        if torch.device(device).type != "cpu":
            raise ConfigError("the ONNX backend runs on the CPU (onnxruntime's CPU execution provider); "
                              "use --backend pytorch for a GPU")
        return self

    def eval(self) -> "OnnxModel":
        return self

    def parameters(self) -> Any:
        raise ConfigError("explanations need gradients: use the PyTorch backend (the run folder's model/)")


def onnx_file(run_dir: Path, quantized: bool = False) -> Path:
    """The exported file of a run (model.onnx, or model.int8.onnx), checked against the export's manifest."""
    folder = Path(run_dir) / ONNX_DIR
    manifest = folder / MANIFEST
    if not manifest.exists():
        raise ConfigError(f"{run_dir} has no ONNX export ({folder / MANIFEST} is missing); run "
                          f"`tunesmith export {run_dir} --format onnx` first")
    files = json.loads(manifest.read_text())["files"]
    name = "model.int8.onnx" if quantized else "model.onnx"
    if name not in files:
        raise ConfigError(f"{folder} has no {name}; export with --quantize int8 to make it")
    if sha256_file(folder / name) != files[name]:
        raise ModelError(f"{folder / name} has changed since export (its sha256 is not the one in {MANIFEST}); "
                         "export again")
    return folder / name
