#!/usr/bin/env python
"""Long texts on IMDB (5,000 train / 5,000 test reviews) with the embedded MiniLM: task.long_text
truncate, head_tail and chunks at max_length 128, and truncate at 512 as the reference.

Every run has the same hyperparameters (1 epoch, batch 16, lr 5e-5, warmup 6%, weight decay 0.01,
seed 0, fp32 unless --precision) and evaluates once, at the end; tunesmith holds out a seeded,
stratified 5% of train as validation (data.validation_ratio), the same rows for every run. For each:
test accuracy (the run's report), train time (the loop's runtime) and predict time (`tunesmith.load`
on the run folder, then `predict` over the first --predict-n test reviews: the strategy applied to raw
text). See bench/README.md.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task_vs_trainer as tvt  # noqa: E402  (sets HF_HUB_OFFLINE before any Hugging Face import)

RUNS = {  # name -> (max_length, task options)
    "truncate-128": (128, {"long_text": "truncate"}),
    "head_tail-128": (128, {"long_text": "head_tail"}),
    "chunks-128": (128, {"long_text": "chunks", "stride": 64}),
    "truncate-512": (512, {"long_text": "truncate"}),
}


def read(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [{"text": r["text"], "label": "pos" if r["label"] == 1 else "neg"} for r in map(json.loads, f)]


def one_run(name: str, files: dict[str, Path], tmp: Path, args: argparse.Namespace,
            test_rows: list[dict[str, Any]]) -> dict[str, Any]:
    import tunesmith

    max_length, options = RUNS[name]
    config = {
        "task": {"type": "text-classification", **options},
        "model": {"max_length": max_length},
        "data": {"train": str(files["train"]), "test": str(files["test"]), "validation_ratio": 0.05,
                 "cache_dir": str(tmp / "cache")},
        "train": {"epochs": args.epochs, "batch_size": 16, "lr": 5e-5, "warmup_ratio": 0.06, "weight_decay": 0.01,
                  "seed": args.seed, "precision": args.precision, "eval_every": tvt.EVAL_ONLY_AT_END},
        "eval": {"batch_size": 32},
        "output_dir": str(tmp / name),
    }
    run = tunesmith.train(config)
    predictor = tunesmith.load(run.dir)
    texts = [r["text"] for r in test_rows[:args.predict_n]]
    start = time.perf_counter()
    predicted = predictor.predict(texts)
    predict_s = time.perf_counter() - start
    agree = sum(p["label"] == r["label"] for p, r in zip(predicted, test_rows)) / len(texts)
    t = run.report["train"]
    lens = json.loads((run.dir / "data_report.json").read_text())["token_lengths"]["train"]
    return {"run": name, "max_length": max_length, **options,
            "test_accuracy": 100 * run.report["test"]["accuracy"], "train_s": t["train_runtime_s"],
            "train_features": lens.get("features"),
            "predict_s": predict_s, "predict_ms_per_review": 1000 * predict_s / len(texts),
            "predict_accuracy_check": 100 * agree, "steps": t["steps"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tvt.add_variant_args(p, list(RUNS), 1.0, "long_text.json")
    p.add_argument("--predict-n", type=int, default=1000, help="test reviews timed through tunesmith.load().predict")
    args = p.parse_args(argv)
    tvt.quiet_libraries()
    root = args.data_root / "imdb"
    rows = {s: read(root / f"{s}_5k.jsonl.gz")[:args.limit] for s in ("train", "test")}
    facts = tvt.machine_facts()
    tvt.console.print(f"IMDB: train {len(rows['train'])}, test {len(rows['test'])}; runs {args.runs}; "
                      f"{facts['cpu_model']}, torch threads {facts['torch_threads']}, precision {args.precision}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-long-") as tmp:
        files = tvt.write_splits(rows, Path(tmp))
        for name in args.runs.split(","):
            results.append(one_run(name, files, Path(tmp), args, rows["test"]))
            tvt.console.print(results[-1])
    ref = next((r for r in results if r["run"] == "truncate-512"), None)
    base = next((r for r in results if r["run"] == "truncate-128"), None)
    table = ["| run | test accuracy | vs truncate 128 | vs truncate 512 | train s | train windows "
             "| predict ms/review |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        d128 = f"{r['test_accuracy'] - base['test_accuracy']:+.2f}" if base else "-"
        d512 = f"{r['test_accuracy'] - ref['test_accuracy']:+.2f}" if ref else "-"
        table.append(f"| {r['run']} | {r['test_accuracy']:.2f} | {d128} | {d512} | {r['train_s']:.0f} | "
                     f"{r['train_features'] or '-'} | {r['predict_ms_per_review']:.1f} |")
    tvt.console.print("\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"argv": sys.argv, "machine": facts, "results": results}, indent=2))


if __name__ == "__main__":
    main()
