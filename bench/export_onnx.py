#!/usr/bin/env python
"""PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 (dynamic quantization) on the CPU, for the SST-2
classifier of serve_bench.py: dev accuracy, predictions that differ from PyTorch's, and latency per sentence
at batch size 1 (the first --single sentences one at a time) and 32 (the whole dev split).

Every backend runs through the same `Predictor` (`Predictor.load(run, backend=...)`), so what differs is the
model runtime alone. `tunesmith export RUN --format onnx --quantize int8` is run first when RUN has no export.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import DEFAULT_DATA_ROOT, REPO_ROOT, make_run  # noqa: E402


def dev(data_root: Path) -> tuple[list[str], list[str]]:
    import csv

    with open(data_root / "sst2" / "dev.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [r["sentence"] for r in rows], [r["label"] for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--run", type=Path, default=None)
    p.add_argument("--single", type=int, default=200, help="sentences timed one at a time (default %(default)s)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/export_onnx.json")
    args = p.parse_args()
    from tunesmith.export import export_onnx
    from tunesmith.serving.predictor import Predictor

    run_dir = args.run or make_run(args.data_root, REPO_ROOT / "bench/results/serve-sst2")
    manifest = export_onnx(run_dir, quantize="int8") if not (run_dir / "onnx" / "model.int8.onnx").exists() \
        else json.loads((run_dir / "onnx" / "onnx.json").read_text())
    texts, gold = dev(args.data_root)
    rows, reference = [], None
    for backend in ("pytorch", "onnx", "onnx-int8"):
        predictor = Predictor.load(run_dir, "cpu", backend)
        predictor.predict(texts[:32], batch_size=32)  # warm-up
        t0 = time.perf_counter()
        for t in texts[:args.single]:
            predictor.predict(t, batch_size=1)
        single_ms = 1000 * (time.perf_counter() - t0) / args.single
        t0 = time.perf_counter()
        preds = predictor.predict(texts, batch_size=32)
        batch_ms = 1000 * (time.perf_counter() - t0) / len(texts)
        labels = [r["label"] for r in preds]
        reference = reference or labels
        weights = run_dir / "onnx" / "model.int8.onnx" if backend == "onnx-int8" else \
            run_dir / "onnx" / "model.onnx" if backend == "onnx" else run_dir / "model" / "model.safetensors"
        accuracy = 100 * sum(a == b for a, b in zip(labels, gold)) / len(gold)
        rows.append({"backend": backend, "dev_accuracy": round(accuracy, 2),
                     "differ_from_pytorch": sum(a != b for a, b in zip(labels, reference)),
                     "ms_per_sentence_batch1": round(single_ms, 2), "ms_per_sentence_batch32": round(batch_ms, 2),
                     "file_mb": round(weights.stat().st_size / 2**20, 1)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()},
           "export_check": manifest["check"], "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
