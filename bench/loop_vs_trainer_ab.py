#!/usr/bin/env python
"""Is tunesmith's loop the Trainer's loop? An exact A/B with the randomness taken out.

Both train the packaged MiniLM on the same SST-2 rows with the same seed (so the same batch order:
tunesmith shuffles as the Trainer's seeded sampler does), with dropout off and the same head, so
any difference in per-step loss or final weights is a difference in the loops themselves
(optimizer, schedule, clipping, loss normalisation, forward), not in luck. The accuracy gap seen
in classification_vs_trainer.py is then either explained here or is seed noise.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    set_seed,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classification_vs_trainer as cvt  # noqa: E402  (shared data, hyperparameters and tunesmith import)


class LossLog(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def run_trainer(train: cvt.Split, dev: cvt.Split, seed: int, tmp: str) -> tuple[list[float], float, dict]:
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(cvt.model_path())
    model = AutoModelForSequenceClassification.from_pretrained(
        cvt.model_path(), num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args = cvt.training_arguments(tmp, seed, group_by_length=False)
    args.logging_steps = 1
    log = LossLog()
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer),
                      train_dataset=cvt.tokenize(train, tokenizer, False), processing_class=tokenizer,
                      callbacks=[log])
    trainer.train()
    pred = trainer.predict(cvt.tokenize(dev, tokenizer, False))
    acc = float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())
    return log.losses, acc, {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_tunesmith(train: cvt.Split, dev: cvt.Split, seed: int, tmp: Path) -> tuple[list[float], float, dict]:
    tunesmith = cvt.import_tunesmith()
    train_path, dev_path = tmp / "train.tsv", tmp / "dev.tsv"
    cvt.write_tsv(train, train_path)
    cvt.write_tsv(dev, dev_path)
    losses: list[float] = []

    def on_event(event: Any) -> None:
        if event.kind == "step":
            losses.append(float(event.data["loss"]))

    config = {
        "task": "text-classification",
        "model": {"name": None, "max_length": cvt.MAX_LENGTH, "dropout": 0.0},
        "data": {"train": str(train_path), "validation": str(dev_path), "test": str(dev_path),
                 "text_column": "sentence", "label_column": "label", "cache_dir": str(tmp / "cache")},
        "train": {"epochs": cvt.EPOCHS, "batch_size": cvt.BATCH_SIZE, "lr": cvt.LR, "warmup_ratio": cvt.WARMUP_RATIO,
                  "weight_decay": cvt.WEIGHT_DECAY, "seed": seed, "precision": "fp32", "eval_every": "epoch",
                  "batching": "random"},
        "eval": {"batch_size": cvt.EVAL_BATCH_SIZE},
        "output_dir": str(tmp / "run"),
    }
    run = tunesmith.train(config, callbacks=[on_event])
    model = AutoModelForSequenceClassification.from_pretrained(str(run.dir / "model"))
    return losses, float(run.report["test"]["accuracy"]), {k: v.detach().clone() for k, v in model.state_dict().items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=cvt.DEFAULT_DATA_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-rows", type=int, default=8000)
    p.add_argument("--limit", type=int, default=2048, help="train rows used (default: %(default)s)")
    args = p.parse_args()
    transformers.logging.set_verbosity_error()
    train = cvt.sample(cvt.read_tsv(args.data_dir / "train.tsv"), args.train_rows).head(args.limit)
    dev = cvt.read_tsv(args.data_dir / "dev.tsv")
    with tempfile.TemporaryDirectory() as tmp:
        t_losses, t_acc, t_state = run_trainer(train, dev, args.seed, tmp)
        s_losses, s_acc, s_state = run_tunesmith(train, dev, args.seed, Path(tmp))
    n = min(len(t_losses), len(s_losses))
    diffs = np.abs(np.array(t_losses[:n]) - np.array(s_losses[:n]))
    print(f"steps: trainer {len(t_losses)}, tunesmith {len(s_losses)}")
    for i in [0, 1, 2, n // 4, n // 2, n - 1]:
        print(f"  step {i + 1:4d}: trainer loss {t_losses[i]:.6f}  tunesmith loss {s_losses[i]:.6f}")
    print(f"max |loss difference| over {n} steps: {diffs.max():.2e} (first step {diffs[0]:.2e})")
    worst = max(((k, float((t_state[k] - s_state[k]).abs().max())) for k in t_state if k in s_state),
                key=lambda kv: kv[1])
    print(f"largest final weight difference: {worst[1]:.2e} in {worst[0]}")
    print(f"dev accuracy: trainer {t_acc * 100:.2f}, tunesmith {s_acc * 100:.2f}")


if __name__ == "__main__":
    main()
