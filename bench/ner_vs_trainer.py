#!/usr/bin/env python
"""Hugging Face `Trainer` (the token-classification example's recipe) vs tunesmith on NER.

WNUT-17 (3 epochs, seeds 0-2) or CoNLL-2003 (1 epoch, seed 0): train on train, entity-level F1 on test.
Both sides in one process per seed, on the packaged all-MiniLM-L6-v2, the same sentences and the same
hyperparameters. See bench/README.md for how to run it and what the columns mean.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task_vs_trainer as tvt  # noqa: E402  (sets HF_HUB_OFFLINE before any Hugging Face import)

import datasets  # noqa: E402
import numpy as np  # noqa: E402
from seqeval.metrics import accuracy_score, classification_report  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    PreTrainedTokenizerBase,
    Trainer,
    set_seed,
)

cvt = tvt.cvt
METRICS = ["F1", "P", "R"]  # seqeval entity level, micro average, in points
UNIT = "sentences"


@dataclass(frozen=True)
class NerDataset:
    folder: str
    train: str
    validation: str
    test: str
    epochs: float
    seeds: str


# The issue's settings: batch 32, lr 5e-5 on both; the rest are TrainingArguments' defaults (no warmup, no
# weight decay), as run_ner.py runs without those flags. max_length 512 is run_ner.py's default
# (max_seq_length None: the tokenizer's model_max_length, 512 for MiniLM).
DATASETS = {
    "wnut17": NerDataset("wnut17", "train.conll", "dev.conll", "test.conll", epochs=3, seeds="0,1,2"),
    "conll2003": NerDataset("conll2003", "train.txt", "valid.txt", "test.txt", epochs=1, seeds="0"),
}
BATCH_SIZE = 32
LR = 5e-5
MAX_LENGTH = 512


# ---------------------------------------------------------------- data

@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    lines: list[str]  # as in the file, so the copies tunesmith reads hold exactly these sentences


def read_conll(path: Path) -> list[Sentence]:
    """CoNLL: one token per line, first column the token, last the tag; a blank (or whitespace-only)
    line ends a sentence; `-DOCSTART-` lines are skipped. WNUT-17's dev.conll ends in a line holding
    only a BOM: stripped, it is an empty line."""
    sentences: list[Sentence] = []
    current: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.replace("\ufeff", "")
        if line.strip() and len(line.split()) < 2:
            raise ValueError(f"{path}:{number}: expected a token and a tag, got {raw!r}")
        if line.strip() and not line.startswith("-DOCSTART-"):
            current.append(line)
        elif current:
            sentences.append(Sentence([c.split()[0] for c in current], [c.split()[-1] for c in current], current))
            current = []
    if current:
        sentences.append(Sentence([c.split()[0] for c in current], [c.split()[-1] for c in current], current))
    return sentences


def write_conll(sentences: list[Sentence], path: Path) -> None:
    path.write_text("".join("\n".join(s.lines) + "\n\n" for s in sentences), encoding="utf-8")


def label_list(train: list[Sentence]) -> list[str]:
    """run_ner.py's get_label_list: the sorted tags of the training file (labels that are not a ClassLabel)."""
    return sorted({tag for s in train for tag in s.tags})


# ---------------------------------------------------------------- the Trainer side (run_ner.py)

def tokenize_and_align(sentences: list[Sentence], tokenizer: PreTrainedTokenizerBase,
                       label_to_id: dict[str, int]) -> datasets.Dataset:
    """run_ner.py's tokenize_and_align_labels with its defaults (pad_to_max_length False, label_all_tokens
    False): the first sub-token of a word gets the word's label, other sub-tokens and special tokens -100.
    Source: huggingface/transformers examples/pytorch/token-classification/run_ner.py."""
    ds = datasets.Dataset.from_dict({"tokens": [s.tokens for s in sentences], "ner_tags": [s.tags for s in sentences]})

    def align(examples: dict[str, list]) -> Any:
        tokenized = tokenizer(examples["tokens"], padding=False, truncation=True, max_length=MAX_LENGTH,
                              is_split_into_words=True)
        labels = []
        for i, tags in enumerate(examples["ner_tags"]):
            previous, ids = None, []
            for word in tokenized.word_ids(batch_index=i):
                ids.append(-100 if word is None or word == previous else label_to_id[tags[word]])
                previous = word
            labels.append(ids)
        tokenized["labels"] = labels
        return tokenized

    return ds.map(align, batched=True, remove_columns=["tokens", "ner_tags"])


def seqeval_points(references: list[list[str]], predictions: list[list[str]]) -> dict[str, float]:
    """The `seqeval` metric run_ner.py loads (huggingface/evaluate metrics/seqeval/seqeval.py, defaults:
    scheme None, mode None, i.e. conlleval-style entity matching): overall = the micro average of
    classification_report; accuracy is token accuracy. In points."""
    with warnings.catch_warnings():  # zero_division="warn": a type never predicted scores 0, said loudly
        warnings.simplefilter("ignore")
        report = classification_report(references, predictions, output_dict=True, zero_division="warn")
    micro = report["micro avg"]
    return {"F1": 100 * float(micro["f1-score"]), "P": 100 * float(micro["precision"]),
            "R": 100 * float(micro["recall"]), "accuracy": 100 * float(accuracy_score(references, predictions))}


def run_trainer(train: list[Sentence], test: list[Sentence], labels: list[str], seed: int, hyper: tvt.Hyper,
                skip_steps: int) -> tvt.SideResult:
    result = tvt.SideResult("trainer", seed)
    label_to_id = {label: i for i, label in enumerate(labels)}
    with tempfile.TemporaryDirectory(prefix="bench-ner-trainer-") as tmp:
        set_seed(seed)  # before loading, so the new head's init depends on the seed (as run_ner.py)
        tokenizer = AutoTokenizer.from_pretrained(cvt.model_path())
        # run_ner.py also passes finetuning_task="ner", which transformers 5 rejects; it changes nothing here
        model = AutoModelForTokenClassification.from_pretrained(
            cvt.model_path(), num_labels=len(labels), label2id=label_to_id, id2label=dict(enumerate(labels)))
        collator = cvt.CountingCollator(DataCollatorForTokenClassification(tokenizer))
        timer = cvt.StepTimer()
        trainer = Trainer(model=model, args=tvt.training_arguments(tmp, seed, hyper), data_collator=collator,
                          train_dataset=tokenize_and_align(train, tokenizer, label_to_id),
                          processing_class=tokenizer, callbacks=[timer])
        tvt.train_timed(trainer, collator, timer, skip_steps, result)
        # run_ner.py's do_predict + compute_metrics: argmax, keep positions whose label is not -100
        start = time.perf_counter()
        pred = trainer.predict(tokenize_and_align(test, tokenizer, label_to_id))
        result.extra["predict_s"] = time.perf_counter() - start
        argmax = np.argmax(pred.predictions, axis=2)
        keep = [[(p, gold) for p, gold in zip(row, gold_row) if gold != -100]
                for row, gold_row in zip(argmax, pred.label_ids)]
        result.metrics = seqeval_points([[labels[g] for _, g in k] for k in keep], [[labels[p] for p, _ in k]
                                                                                     for k in keep])
    return result


# ---------------------------------------------------------------- the tunesmith side

def run_tunesmith(train: list[Sentence], validation: list[Sentence], test: list[Sentence], seed: int,
                  hyper: tvt.Hyper, precision: str, skip_steps: int, overrides: list[str]) -> tvt.SideResult:
    """The task interface in progress: task token-classification, data.format conll (last column the
    tag), report["test"] precision/recall/f1/accuracy as seqeval fractions. It reads copies of exactly
    the sentences the Trainer side uses."""
    with tempfile.TemporaryDirectory(prefix="bench-ner-tunesmith-") as tmp:
        paths = {split: Path(tmp) / f"{split}.conll" for split in ("train", "validation", "test")}
        for split, sentences in zip(paths, (train, validation, test)):
            write_conll(sentences, paths[split])
        config = {
            "task": {"type": "token-classification"},
            "model": {"name": None, "max_length": hyper.max_length},
            "data": {**{k: str(v) for k, v in paths.items()}, "format": "conll",
                     "cache_dir": str(Path(tmp) / "cache")},  # tokenized afresh, ~/.cache untouched
            "train": tvt.tunesmith_train_section(hyper, seed, precision),
            "eval": {"batch_size": hyper.eval_batch_size},
            "output_dir": str(Path(tmp) / "run"),
        }
        return tvt.run_tunesmith(config, seed, skip_steps, lambda test_report: {
            "F1": 100 * test_report["f1"], "P": 100 * test_report["precision"], "R": 100 * test_report["recall"],
            "accuracy": 100 * test_report["accuracy"]}, overrides)


# ---------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="wnut17")
    p.add_argument("--seeds", default=None, help="comma-separated run seeds (default: wnut17 0,1,2; conll2003 0)")
    p.add_argument("--epochs", type=float, default=None, help="default: wnut17 3, conll2003 1")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (default: bench/results/ner_vs_trainer_<dataset>.json)")
    tvt.add_common_args(p)
    args = p.parse_args(argv)
    ds = DATASETS[args.dataset]
    args.seeds = [int(s) for s in (args.seeds or ds.seeds).split(",") if s.strip()]
    args.epochs = ds.epochs if args.epochs is None else args.epochs
    args.out = args.out or tvt.REPO_ROOT / f"bench/results/ner_vs_trainer_{args.dataset}.json"
    tvt.check_common_args(p, args)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    tvt.quiet_libraries()

    ds = DATASETS[args.dataset]
    folder = args.data_root / ds.folder
    full_train = read_conll(folder / ds.train)
    labels = label_list(full_train)  # from the whole file, so a --limit slice keeps every label the test uses
    train = full_train[: args.limit]
    validation = read_conll(folder / ds.validation)[: args.eval_limit]
    test = read_conll(folder / ds.test)[: args.eval_limit]
    hyper = tvt.Hyper(batch_size=BATCH_SIZE, lr=LR, epochs=args.epochs, max_length=MAX_LENGTH,
                      max_steps=args.max_steps)
    facts = tvt.machine_facts()
    meta = {"argv": sys.argv, "dataset": args.dataset, "train_sentences": len(train),
            "validation_sentences": len(validation), "test_sentences": len(test), "labels": labels,
            "machine": facts, "hyperparameters": asdict(hyper) | {"skip_steps": args.skip_steps},
            "tunesmith_precision": args.precision, "tunesmith_overrides": args.tunesmith_set, "throughput_unit": UNIT}
    tvt.print_header(
        f"NER {args.dataset}: Trainer (run_ner.py recipe) vs tunesmith", facts, hyper, args.precision,
        [f"data {folder}: train {len(train)} sentences, test {len(test)} (tunesmith also evaluates validation, "
         f"{len(validation)}), {len(labels)} labels; metrics: seqeval entity level, micro, default mode, points",
         f"throughput unit: training {UNIT} per second, steady state after step {args.skip_steps}"],
        args.tunesmith_set)

    tvt.run_both(argv, args, meta, METRICS, UNIT,
                 lambda seed: run_trainer(train, test, labels, seed, hyper, args.skip_steps),
                 lambda seed: run_tunesmith(train, validation, test, seed, hyper, args.precision, args.skip_steps,
                                               args.tunesmith_set))

if __name__ == "__main__":
    main()
