#!/usr/bin/env python
"""Hugging Face `Trainer` (the question-answering example's recipe) vs tunesmith on SQuAD v1.1.

Train 1 epoch on the 11,877-question train subset (windows of 384 tokens, stride 128), then EM/F1 on the
first 2,000 questions of the official dev set. Both sides in one process per seed, on the packaged
all-MiniLM-L6-v2 and the same hyperparameters. See bench/README.md for how to run it.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import string
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task_vs_trainer as tvt  # noqa: E402  (sets HF_HUB_OFFLINE before any Hugging Face import)

import datasets  # noqa: E402
import numpy as np  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Trainer,
    default_data_collator,
    set_seed,
)

cvt = tvt.cvt
METRICS = ["EM", "F1"]  # official SQuAD v1.1 scores, in points
UNIT = "windows"  # a training example is one 384-token window; a long context gives several

# run_qa.py's defaults (max_seq_length 384, doc_stride 128, pad_to_max_length True, n_best_size 20,
# max_answer_length 30) and the 1 epoch. The issue is silent on batch size and learning rate, so
# they are TrainingArguments' defaults (8, 5e-5), as are warmup (0) and weight decay (0).
MAX_LENGTH = 384
DOC_STRIDE = 128
N_BEST = 20
MAX_ANSWER_LENGTH = 30
EPOCHS = 1.0
DEV_QUESTIONS = 2000


# ---------------------------------------------------------------- data

def read_squad(path: Path) -> dict[str, Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def first_questions(squad: dict[str, Any], n: int | None) -> dict[str, Any]:
    """The SQuAD JSON cut to its first n questions in file order (articles and paragraphs left empty
    are dropped), so both sides read the same questions."""
    left = float("inf") if n is None else n
    articles = []
    for article in squad["data"]:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            qas = paragraph["qas"][: int(min(left, len(paragraph["qas"])))]
            left -= len(qas)
            if qas:
                paragraphs.append({**paragraph, "qas": qas})
        if paragraphs:
            articles.append({**article, "paragraphs": paragraphs})
    return {"version": squad.get("version", "1.1"), "data": articles}


def flatten(squad: dict[str, Any]) -> datasets.Dataset:
    """One row per question, as the Hub's `squad` loader builds it (huggingface/datasets
    datasets/squad/squad.py, after GH-2585: context not stripped, so answer_start stays valid)."""
    rows: dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article.get("title", ""))
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append({"text": [a["text"] for a in qa["answers"]],
                                        "answer_start": [a["answer_start"] for a in qa["answers"]]})
    return datasets.Dataset.from_dict(rows)


# ---------------------------------------------------------------- the Trainer side (run_qa.py + utils_qa.py)
# Ported from huggingface/transformers examples/pytorch/question-answering/run_qa.py (prepare_train_features,
# prepare_validation_features) and utils_qa.py (postprocess_qa_predictions), with the SQuAD v1.1 branches only.

def _windows(examples: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int) -> tuple[bool, Any, Any]:
    """The tokenization both of run_qa.py's prepare_*_features share: (pad_on_right, windows padded to
    max_length with offsets, window -> question index)."""
    pad_on_right = tokenizer.padding_side == "right"
    examples["question"] = [q.lstrip() for q in examples["question"]]
    tokenized = tokenizer(
        examples["question" if pad_on_right else "context"], examples["context" if pad_on_right else "question"],
        truncation="only_second" if pad_on_right else "only_first", max_length=max_length, stride=DOC_STRIDE,
        return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    return pad_on_right, tokenized, tokenized.pop("overflow_to_sample_mapping")


def prepare_train_features(examples: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Any:
    """Question + context windows (truncation only_second, stride, padded to max_length); the answer's
    start/end token, or the CLS token when the answer is not inside the window."""
    pad_on_right, tokenized, sample_mapping = _windows(examples, tokenizer, max_length)
    offset_mapping = tokenized.pop("offset_mapping")
    tokenized["start_positions"], tokenized["end_positions"] = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = tokenized.sequence_ids(i)
        answers = examples["answers"][sample_mapping[i]]
        if len(answers["answer_start"]) == 0:
            tokenized["start_positions"].append(cls_index)
            tokenized["end_positions"].append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start = 0
        while sequence_ids[token_start] != (1 if pad_on_right else 0):
            token_start += 1
        token_end = len(input_ids) - 1
        while sequence_ids[token_end] != (1 if pad_on_right else 0):
            token_end -= 1
        if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
            tokenized["start_positions"].append(cls_index)
            tokenized["end_positions"].append(cls_index)
        else:
            while token_start < len(offsets) and offsets[token_start][0] <= start_char:
                token_start += 1
            tokenized["start_positions"].append(token_start - 1)
            while offsets[token_end][1] >= end_char:
                token_end -= 1
            tokenized["end_positions"].append(token_end + 1)
    return tokenized


def prepare_validation_features(examples: dict[str, list], tokenizer: PreTrainedTokenizerBase,
                                max_length: int) -> Any:
    """The same windows, each with its question's id and offsets set to None outside the context."""
    pad_on_right, tokenized, sample_mapping = _windows(examples, tokenizer, max_length)
    tokenized["example_id"] = []
    context_index = 1 if pad_on_right else 0
    for i in range(len(tokenized["input_ids"])):
        sequence_ids = tokenized.sequence_ids(i)
        tokenized["example_id"].append(examples["id"][sample_mapping[i]])
        tokenized["offset_mapping"][i] = [o if sequence_ids[k] == context_index else None
                                          for k, o in enumerate(tokenized["offset_mapping"][i])]
    return tokenized


def postprocess_qa_predictions(examples: datasets.Dataset, features: datasets.Dataset,
                               predictions: tuple[np.ndarray, np.ndarray]) -> dict[str, str]:
    """utils_qa.py with version_2_with_negative False: over each question's windows, the best-scoring
    (start logit + end logit) span among the n_best starts x n_best ends that lies in the context, ends
    after it starts and is at most max_answer_length tokens long."""
    all_start_logits, all_end_logits = predictions
    if len(all_start_logits) != len(features):
        raise ValueError(f"Got {len(all_start_logits)} predictions and {len(features)} features.")
    example_index = {k: i for i, k in enumerate(examples["id"])}
    features_per_example = collections.defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        features_per_example[example_index[example_id]].append(i)
    offset_mappings = features["offset_mapping"]
    answers: dict[str, str] = {}
    for index, example in enumerate(examples):
        prelim = []
        for feature_index in features_per_example[index]:
            start_logits, end_logits = all_start_logits[feature_index], all_end_logits[feature_index]
            offsets = offset_mappings[feature_index]
            start_indexes = np.argsort(start_logits)[-1: -N_BEST - 1: -1].tolist()
            end_indexes = np.argsort(end_logits)[-1: -N_BEST - 1: -1].tolist()
            for start in start_indexes:
                for end in end_indexes:
                    if (start >= len(offsets) or end >= len(offsets) or offsets[start] is None
                            or len(offsets[start]) < 2 or offsets[end] is None or len(offsets[end]) < 2):
                        continue
                    if end < start or end - start + 1 > MAX_ANSWER_LENGTH:
                        continue
                    prelim.append({"offsets": (offsets[start][0], offsets[end][1]),
                                   "score": start_logits[start] + end_logits[end]})
        best = sorted(prelim, key=lambda x: x["score"], reverse=True)[:N_BEST]
        texts = [example["context"][p["offsets"][0]: p["offsets"][1]] for p in best]
        # utils_qa.py's fallback when there is no prediction, or only an empty one
        answers[example["id"]] = "empty" if not texts or (len(texts) == 1 and texts[0] == "") else texts[0]
    return answers


# The official SQuAD v1.1 evaluation (the `squad` metric run_qa.py loads: huggingface/evaluate
# metrics/squad/compute_score.py, "Official evaluation script for v1.1 of the SQuAD dataset").

PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (in the official order)."""
    s = "".join(ch for ch in s.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def f1_score(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    num_same = sum((collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(prediction_tokens), num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_points(examples: datasets.Dataset, answers: dict[str, str]) -> dict[str, float]:
    """EM and F1, each the max over a question's reference answers, averaged over all questions."""
    em = f1 = 0.0
    for example in examples:
        prediction, truths = answers.get(example["id"]), example["answers"]["text"]
        if prediction is None:  # unanswered: scores 0, as in the official script
            continue
        em += max(float(normalize_answer(prediction) == normalize_answer(t)) for t in truths)
        f1 += max(f1_score(prediction, t) for t in truths)
    return {"EM": 100 * em / len(examples), "F1": 100 * f1 / len(examples)}


def run_trainer(train: datasets.Dataset, dev: datasets.Dataset, seed: int, hyper: tvt.Hyper,
                skip_steps: int) -> tvt.SideResult:
    result = tvt.SideResult("trainer", seed)
    with tempfile.TemporaryDirectory(prefix="bench-qa-trainer-") as tmp:
        set_seed(seed)  # before loading, so the new head's init depends on the seed (as run_qa.py)
        tokenizer = AutoTokenizer.from_pretrained(cvt.model_path())
        model = AutoModelForQuestionAnswering.from_pretrained(cvt.model_path())
        max_length = min(hyper.max_length, tokenizer.model_max_length)
        train_features = train.map(prepare_train_features, batched=True, remove_columns=train.column_names,
                                   fn_kwargs={"tokenizer": tokenizer, "max_length": max_length})
        collator = cvt.CountingCollator(default_data_collator)  # pad_to_max_length: windows are already padded
        timer = cvt.StepTimer()
        trainer = Trainer(model=model, args=tvt.training_arguments(tmp, seed, hyper), data_collator=collator,
                          train_dataset=train_features, processing_class=tokenizer, callbacks=[timer])
        tvt.train_timed(trainer, collator, timer, skip_steps, result)
        result.extra["train_questions"] = len(train)
        # trainer_qa.py's predict: the Trainer drops example_id/offset_mapping, then post-processing
        start = time.perf_counter()
        dev_features = dev.map(prepare_validation_features, batched=True, remove_columns=dev.column_names,
                               fn_kwargs={"tokenizer": tokenizer, "max_length": max_length})
        pred = trainer.predict(dev_features)
        answers = postprocess_qa_predictions(dev, dev_features, pred.predictions)
        result.metrics = squad_points(dev, answers)
        result.extra.update(predict_s=time.perf_counter() - start, dev_windows=len(dev_features))
    return result


# ---------------------------------------------------------------- the tunesmith side

def run_tunesmith(train: dict[str, Any], dev: dict[str, Any], seed: int, hyper: tvt.Hyper, precision: str,
                  skip_steps: int, overrides: list[str]) -> tvt.SideResult:
    """The task interface in progress: task question-answering, SQuAD JSON files, report["test"]
    exact_match/f1 already in points. It reads copies of exactly the questions the Trainer side uses."""
    with tempfile.TemporaryDirectory(prefix="bench-qa-tunesmith-") as tmp:
        train_path, dev_path = Path(tmp) / "train.json", Path(tmp) / "dev.json"
        train_path.write_text(json.dumps(train), encoding="utf-8")
        dev_path.write_text(json.dumps(dev), encoding="utf-8")
        config = {
            "task": {"type": "question-answering", "doc_stride": DOC_STRIDE, "n_best": N_BEST,
                     "max_answer_length": MAX_ANSWER_LENGTH},
            "model": {"name": None, "max_length": hyper.max_length},
            # validation is test: tunesmith warns that they overlap, which is expected here
            "data": {"train": str(train_path), "validation": str(dev_path), "test": str(dev_path),
                     "cache_dir": str(Path(tmp) / "cache")},  # tokenized afresh, ~/.cache untouched
            "train": tvt.tunesmith_train_section(hyper, seed, precision),
            "eval": {"batch_size": hyper.eval_batch_size},
            "output_dir": str(Path(tmp) / "run"),
        }
        return tvt.run_tunesmith(config, seed, skip_steps, lambda test_report: {
            "EM": float(test_report["exact_match"]), "F1": float(test_report["f1"])}, overrides)


# ---------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0", help="comma-separated run seeds (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="both sides (default: %(default)s, TrainingArguments')")
    p.add_argument("--lr", type=float, default=5e-5, help="both sides (default: %(default)s, TrainingArguments')")
    p.add_argument("--epochs", type=float, default=EPOCHS)
    p.add_argument("--out", type=Path, default=tvt.REPO_ROOT / "bench/results/qa_vs_trainer.json")
    tvt.add_common_args(p)
    p.set_defaults(eval_limit=DEV_QUESTIONS)
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    tvt.check_common_args(p, args)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    tvt.quiet_libraries()

    folder = args.data_root / "squad_v1.1"
    train_json = first_questions(read_squad(folder / "train_subset_11877q.json.gz"), args.limit)
    dev_json = first_questions(read_squad(folder / "dev-v1.1.json.gz"), args.eval_limit)
    train, dev = flatten(train_json), flatten(dev_json)
    hyper = tvt.Hyper(batch_size=args.batch_size, lr=args.lr, epochs=args.epochs, max_length=MAX_LENGTH,
                      max_steps=args.max_steps)
    facts = tvt.machine_facts()
    meta = {"argv": sys.argv, "train_questions": len(train), "dev_questions": len(dev), "machine": facts,
            "hyperparameters": asdict(hyper) | {"doc_stride": DOC_STRIDE, "n_best": N_BEST,
                                                "max_answer_length": MAX_ANSWER_LENGTH,
                                                "skip_steps": args.skip_steps},
            "tunesmith_precision": args.precision, "tunesmith_overrides": args.tunesmith_set, "throughput_unit": UNIT}
    tvt.print_header(
        "SQuAD v1.1: Trainer (run_qa.py recipe, windows padded to max_length) vs tunesmith", facts, hyper,
        args.precision,
        [f"data {folder}: train {len(train)} questions, dev the first {len(dev)} questions; doc_stride "
         f"{DOC_STRIDE}, n_best {N_BEST}, max_answer_length {MAX_ANSWER_LENGTH}; metrics: official v1.1 EM/F1",
         f"throughput unit: training {UNIT} (model inputs) per second, steady state after step {args.skip_steps}"],
        args.tunesmith_set)

    tvt.run_both(argv, args, meta, METRICS, UNIT,
                 lambda seed: run_trainer(train, dev, seed, hyper, args.skip_steps),
                 lambda seed: run_tunesmith(train_json, dev_json, seed, hyper, args.precision, args.skip_steps,
                                               args.tunesmith_set))

if __name__ == "__main__":
    main()
