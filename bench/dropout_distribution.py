#!/usr/bin/env python
"""Does the fast BERT path drop out like the stock model? Compare the two in training mode.

Both models (the packaged MiniLM with one seeded head) run the same SST-2 batch many times with
dropout on. Equal dropout placement and rates give equal distributions of logits and gradients, so
the differences of their means should be sampling noise (mean |z| about 1.13 for two samples) and
the ratios of their standard deviations about 1.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import copy
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classification_vs_trainer as cvt  # noqa: E402


def draws(model: torch.nn.Module, batch: dict, labels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n training-mode forward/backward passes: stacked logits and classifier-weight gradients."""
    model.train()
    logits, grads = [], []
    for _ in range(n):
        model.zero_grad(set_to_none=True)
        out = model(**batch).logits
        torch.nn.functional.cross_entropy(out, labels).backward()
        logits.append(out.detach())
        grads.append(model.classifier.weight.grad.detach().clone())
    return torch.stack(logits), torch.stack(grads)


def compare(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt() + 1e-12
    z = ((a.mean(0) - b.mean(0)) / se).abs().mean()
    ratio = (b.std(0) / (a.std(0) + 1e-12)).mean()
    print(f"{name}: mean |z| of the difference of means {z:.2f} (0.80 expected when equal), "
          f"std ratio fast/stock {ratio:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=cvt.DEFAULT_DATA_DIR)
    p.add_argument("--draws", type=int, default=300)
    args = p.parse_args()
    from tunesmith.fast_bert import speed_up_bert_classifier

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(cvt.model_path())
    stock = AutoModelForSequenceClassification.from_pretrained(cvt.model_path(), num_labels=2)
    fast = copy.deepcopy(stock)
    assert speed_up_bert_classifier(fast)
    train = cvt.sample(cvt.read_tsv(args.data_dir / "train.tsv"), 8000)
    batch = dict(tokenizer(train.sentences[:32], padding=True, return_tensors="pt"))
    labels = torch.tensor(train.labels[:32])
    stock_logits, stock_grads = draws(stock, batch, labels, args.draws)
    fast_logits, fast_grads = draws(fast, batch, labels, args.draws)
    compare("logits", stock_logits, fast_logits)
    compare("classifier gradient", stock_grads, fast_grads)


if __name__ == "__main__":
    main()
