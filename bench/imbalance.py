#!/usr/bin/env python
"""Imbalanced labels on SMS spam (13% spam) with the embedded MiniLM: plain cross-entropy vs balanced
class weights vs focal loss vs the balanced sampler vs a decision threshold tuned on validation.

The messages are deduplicated by text (the first of each kept) and split 70/15/15, seeded and
stratified (scikit-learn, seed 0), so no message is in two splits. Every run has the same
hyperparameters (2 epochs, batch 16, lr 5e-5, max_length 64, seed 0), evaluates each epoch and keeps
the checkpoint with the best validation spam F1 (eval.metric f1). Reported: spam-class F1, precision and
recall on test, and the threshold used. See bench/README.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task_vs_trainer as tvt  # noqa: E402  (sets HF_HUB_OFFLINE before any Hugging Face import)

RUNS = {  # name -> task options
    "plain": {},
    "class_weights=balanced": {"class_weights": "balanced"},
    "loss=focal (gamma 2)": {"loss": "focal", "focal_gamma": 2.0},
    "sampler=balanced": {"sampler": "balanced"},
    "threshold=tune": {"threshold": "tune"},
}


def load_sms(root: Path, seed: int) -> dict[str, list[dict[str, str]]]:
    """Deduplicated messages, split 70/15/15 stratified by label."""
    from sklearn.model_selection import train_test_split

    with open(root / "sms_spam" / "SMSSpamCollection.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    seen, unique = set(), []
    for r in rows:
        if r["text"] not in seen:
            seen.add(r["text"])
            unique.append({"text": r["text"], "label": r["label"]})
    train, rest = train_test_split(unique, test_size=0.3, random_state=seed, stratify=[r["label"] for r in unique])
    validation, test = train_test_split(rest, test_size=0.5, random_state=seed, stratify=[r["label"] for r in rest])
    return {"train": train, "validation": validation, "test": test}


def one_run(k: int, name: str, files: dict[str, Path], tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    import tunesmith

    options = RUNS[name]
    config = {
        "task": {"type": "text-classification", "positive_label": "spam", **options},
        "model": {"max_length": 64},
        "data": {**{k: str(v) for k, v in files.items()}, "cache_dir": str(tmp / "cache")},
        "train": {"epochs": args.epochs, "batch_size": 16, "lr": 5e-5, "warmup_ratio": 0.06, "weight_decay": 0.01,
                  "seed": args.seed, "precision": args.precision},
        "eval": {"batch_size": 64, "metric": "f1"},
        "output_dir": str(tmp / f"run-{k}"),
    }
    run = tunesmith.train(config)
    test = run.report["test"]
    return {"run": name, "spam_f1": 100 * test["f1"], "spam_precision": 100 * test["precision"],
            "spam_recall": 100 * test["recall"], "accuracy": 100 * test["accuracy"],
            "average_precision": 100 * test["average_precision"], "threshold": test["threshold"],
            "validation_spam_f1": 100 * run.report["validation"]["f1"],
            "train_s": run.report["train"]["train_runtime_s"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tvt.add_variant_args(p, list(RUNS), 2.0, "imbalance.json")
    args = p.parse_args(argv)
    tvt.quiet_libraries()
    splits = {k: v[:args.limit] for k, v in load_sms(args.data_root, args.seed).items()}
    facts = tvt.machine_facts()
    counts = {k: f"{len(v)} ({sum(r['label'] == 'spam' for r in v)} spam)" for k, v in splits.items()}
    tvt.console.print(f"SMS spam, deduplicated: {counts}; {facts['cpu_model']}, torch threads "
                      f"{facts['torch_threads']}, precision {args.precision}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-imbalance-") as tmp:
        files = tvt.write_splits(splits, Path(tmp))
        for k, name in enumerate(args.runs.split(",")):
            results.append(one_run(k, name, files, Path(tmp), args))
            tvt.console.print(results[-1])
    plain = next((r for r in results if r["run"] == "plain"), None)
    table = ["| run | spam F1 | vs plain | spam precision | spam recall | AP | accuracy | threshold |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        diff = f"{r['spam_f1'] - plain['spam_f1']:+.2f}" if plain else "-"
        table.append(f"| {r['run']} | {r['spam_f1']:.2f} | {diff} | {r['spam_precision']:.2f} | {r['spam_recall']:.2f} "
                     f"| {r['average_precision']:.2f} | {r['accuracy']:.2f} | {r['threshold']:.3g} |")
    tvt.console.print("\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"argv": sys.argv, "machine": facts, "splits": counts, "results": results},
                                   indent=2))


if __name__ == "__main__":
    main()
