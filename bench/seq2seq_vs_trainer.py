#!/usr/bin/env python
"""Hugging Face `Seq2SeqTrainer` (the translation and summarization examples' recipe) vs tunesmith.

Multi30k en->de (train on train, sacreBLEU on test2016, greedy) or DialogSum (ROUGE-L on the first 200
validation dialogues), both on an encoder-decoder warm-started from the packaged all-MiniLM-L6-v2 (encoder
and decoder; `EncoderDecoderModel.from_encoder_decoder_pretrained`), the same examples and hyperparameters,
in one process per seed. See bench/README.md for how to run it and what the columns mean.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task_vs_trainer as tvt  # noqa: E402  (sets HF_HUB_OFFLINE before any Hugging Face import)

import datasets  # noqa: E402
import numpy as np  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EncoderDecoderModel,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

cvt = tvt.cvt
UNIT = "examples"


@dataclass(frozen=True)
class Corpus:
    metrics: tuple[str, ...]
    epochs: float
    batch_size: int
    lr: float
    max_source: int
    max_target: int
    eval_limit: int | None


CORPORA = {
    # run_translation.py defaults (lr 5e-5, batch 8, max_source_length 1024 -> the model's 512,
    # max_target_length 128), one epoch
    "multi30k": Corpus(("BLEU", "chrF"), 1.0, 16, 5e-5, 128, 128, None),
    # run_summarization.py defaults (max_source_length 1024 -> 512, max_target_length 128), one epoch
    "dialogsum": Corpus(("ROUGE-L", "ROUGE-1", "ROUGE-2"), 1.0, 8, 5e-5, 512, 128, 200),
}


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().rstrip("\n").split("\n")


def load(name: str, root: Path, limit: int | None, eval_limit: int | None) -> dict[str, list[dict]]:
    """{split: [{source, target (str or list)}]}: Multi30k train/val/test2016 en->de; DialogSum train/dev
    (one summary each; dev's first `eval_limit` dialogues are the test split, as the issue scores them)."""
    if name == "multi30k":
        folder = root / "multi30k"
        pair = lambda stem: [{"source": s, "target": t} for s, t in zip(  # noqa: E731
            read_lines(folder / f"{stem}.en.gz"), read_lines(folder / f"{stem}.de.gz"))]
        splits = {"train": pair("train"), "validation": pair("val"), "test": pair("test_2016_flickr")}
    else:
        folder = root / "dialogsum"
        rows = lambda f: [json.loads(x) for x in f.read().splitlines() if x.strip()]  # noqa: E731
        with gzip.open(folder / "train.jsonl.gz", "rt", encoding="utf-8") as f:
            train = rows(f)
        with open(folder / "dev.jsonl", encoding="utf-8") as f:
            dev = rows(f)
        as_pair = lambda r: {"source": r["dialogue"], "target": r["summary"]}  # noqa: E731
        splits = {"train": [as_pair(r) for r in train], "validation": [as_pair(r) for r in dev[200:400]],
                  "test": [as_pair(r) for r in dev]}
    splits["train"] = splits["train"][:limit]
    if eval_limit:
        splits["test"] = splits["test"][:eval_limit]
        splits["validation"] = splits["validation"][:eval_limit]
    return splits


def warm_started(tokenizer: Any) -> EncoderDecoderModel:
    """MiniLM2MiniLM with the special tokens the BERT2BERT recipe sets (tunesmith's load_model sets the same)."""
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(cvt.model_path(), cvt.model_path())
    for c in (model.config, model.generation_config):
        c.decoder_start_token_id, c.eos_token_id, c.pad_token_id = (tokenizer.cls_token_id, tokenizer.sep_token_id,
                                                                     tokenizer.pad_token_id)
    model.config.vocab_size = model.config.decoder.vocab_size
    return model


def score(name: str, hyps: list[str], refs: list[str]) -> dict[str, float]:
    """The same metric functions as tunesmith's (sacreBLEU; rouge-score with stemming, in points)."""
    tunesmith = cvt.import_tunesmith()  # noqa: F841  (puts src/ on the path when not installed)
    from tunesmith.metrics.generation import bleu_chrf, rouge

    if name == "multi30k":
        m = bleu_chrf(hyps, [[r] for r in refs])
        return {"BLEU": m["bleu"], "chrF": m["chrf"]}
    m = rouge(hyps, [[r] for r in refs])
    return {"ROUGE-L": m["rougeL"], "ROUGE-1": m["rouge1"], "ROUGE-2": m["rouge2"]}


# ---------------------------------------------------------------- the Trainer side

def run_trainer(name: str, data: dict[str, list[dict]], corpus: Corpus, seed: int, hyper: tvt.Hyper,
                skip_steps: int) -> tvt.SideResult:
    result = tvt.SideResult("trainer", seed)
    with tempfile.TemporaryDirectory(prefix="bench-s2s-trainer-") as tmp:
        set_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(cvt.model_path())
        model = warm_started(tokenizer)

        def encode(rows: list[dict]) -> datasets.Dataset:  # run_translation.py's preprocess_function
            enc = tokenizer([r["source"] for r in rows], max_length=corpus.max_source, truncation=True)
            enc["labels"] = tokenizer(text_target=[r["target"] for r in rows], max_length=corpus.max_target,
                                      truncation=True)["input_ids"]
            return datasets.Dataset.from_dict(dict(enc))

        collator = cvt.CountingCollator(DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100))
        timer = cvt.StepTimer()
        args = tvt.training_arguments(tmp, seed, hyper, Seq2SeqTrainingArguments, predict_with_generate=True,
                                      generation_max_length=corpus.max_target, generation_num_beams=1)
        trainer = Seq2SeqTrainer(model=model, args=args, data_collator=collator, train_dataset=encode(data["train"]),
                                 processing_class=tokenizer, callbacks=[timer])
        tvt.train_timed(trainer, collator, timer, skip_steps, result)
        start = time.perf_counter()
        pred = trainer.predict(encode(data["test"]), max_new_tokens=corpus.max_target, num_beams=1)
        result.extra["predict_s"] = time.perf_counter() - start
        ids = np.where(pred.predictions != -100, pred.predictions, tokenizer.pad_token_id)
        hyps = [h.strip() for h in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        result.metrics = score(name, hyps, [r["target"] for r in data["test"]])
        special = set(tokenizer.all_special_ids)
        result.extra["gen_len"] = float(np.mean([sum(x not in special for x in row) for row in ids.tolist()]))
        result.extra["hypotheses"] = hyps
    return result


# ---------------------------------------------------------------- the tunesmith side

def run_tunesmith(name: str, data: dict[str, list[dict]], corpus: Corpus, seed: int, hyper: tvt.Hyper,
                  precision: str, skip_steps: int, overrides: list[str]) -> tvt.SideResult:
    cvt.import_tunesmith()
    from tunesmith.tasks.seq2seq import Summarization, Translation

    task = Translation if name == "multi30k" else Summarization
    with tempfile.TemporaryDirectory(prefix="bench-s2s-tunesmith-") as tmp:
        paths = tvt.write_splits(data, Path(tmp))
        config = {
            "task": {"type": task.name,
                     "max_target_length": corpus.max_target, "max_new_tokens": corpus.max_target},
            "model": {"name": None, "max_length": corpus.max_source},
            "data": {**{k: str(v) for k, v in paths.items()}, "cache_dir": str(Path(tmp) / "cache")},
            "train": tvt.tunesmith_train_section(hyper, seed, precision),
            "eval": {"batch_size": hyper.eval_batch_size, "metric": "loss"},  # generation only for the test
            "output_dir": str(Path(tmp) / "run"),
        }
        result = tvt.run_tunesmith(config, seed, skip_steps, lambda t: {
            "BLEU": t["bleu"], "chrF": t["chrf"]} if name == "multi30k" else {
            "ROUGE-L": t["rougeL"], "ROUGE-1": t["rouge1"], "ROUGE-2": t["rouge2"]}, overrides)
        rows = (Path(tmp) / "run" / "predictions" / "test.jsonl").read_text(encoding="utf-8").splitlines()
        result.extra["gen_len"] = result.extra["report_test"]["gen_len"]
        result.extra["hypotheses"] = [json.loads(r)["prediction"][task.record_key] for r in rows]
        return result


# ---------------------------------------------------------------- paired comparison

def paired_bootstrap(name: str, references: list[str], base: list[str], other: list[str],
                     samples: int = 1000, seed: int = 0) -> dict[str, float]:
    """`other` minus `base` on the main metric (ROUGE-L or BLEU) of the same test examples, with a 95%
    paired-bootstrap interval: both hypothesis lists are resampled with the same indices, so the interval
    is that of the difference on this test set (one training seed; seed-to-seed spread is not in it)."""
    metric = CORPORA[name].metrics[0]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(references), size=(samples, len(references)))
    if name == "dialogsum":  # ROUGE is a mean of per-example scores: score each example once
        per = np.array([[score(name, [h], [r])[metric] for h in (b, o)]
                        for r, b, o in zip(references, base, other)])
        diffs = per[draws, 1].mean(1) - per[draws, 0].mean(1)
        delta = float(per[:, 1].mean() - per[:, 0].mean())
    else:  # BLEU is a corpus statistic: rescore each resample
        def pick(rows: list[str], idx: np.ndarray) -> list[str]:
            return [rows[i] for i in idx]
        diffs = np.array([score(name, pick(other, d), pick(references, d))[metric]
                          - score(name, pick(base, d), pick(references, d))[metric] for d in draws])
        delta = score(name, other, references)[metric] - score(name, base, references)[metric]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"metric": metric, "delta": delta, "low": float(low), "high": float(high),
            "share_above_minus_0_5": float((diffs >= -0.5).mean())}


def compare(name: str, base_file: Path, other_file: Path) -> None:
    """Print the paired bootstrap of two result files' runs of one seed (base: the Trainer run of the
    first file; other: the tunesmith run of the second, or of the same file)."""
    def run_of(path: Path, side: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if not path.is_file():
            raise SystemExit(f"{path}: no such results file")
        payload = json.loads(path.read_text(encoding="utf-8"))
        runs = [r for r in payload["runs"] if r["side"] == side and "hypotheses" in r["extra"]]
        if not runs:
            raise SystemExit(f"{path}: no {side} run with hypotheses (run it with this version of the script)")
        return payload["meta"], runs[0]

    meta, base = run_of(base_file, "trainer")
    _, other = run_of(other_file, "tunesmith")
    refs = meta["test_references"]
    r = paired_bootstrap(name, refs, base["extra"]["hypotheses"], other["extra"]["hypotheses"])
    tvt.console.print(
        f"{r['metric']}: tunesmith (seed {other['seed']}) - Trainer (seed {base['seed']}) = {r['delta']:+.2f}, "
        f"95% paired bootstrap [{r['low']:+.2f}, {r['high']:+.2f}] over {len(refs)} test examples; "
        f"{100 * r['share_above_minus_0_5']:.0f}% of resamples at or above -0.5; generated length "
        f"{base['extra'].get('gen_len', float('nan')):.1f} vs {other['extra'].get('gen_len', float('nan')):.1f} tokens")


# ---------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(CORPORA), default="multi30k")
    p.add_argument("--seeds", default="0", help="comma-separated run seeds (default: %(default)s)")
    p.add_argument("--epochs", type=float, default=None, help="default: 1")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (default: bench/results/seq2seq_vs_trainer_<dataset>.json)")
    p.add_argument("--compare", type=Path, nargs=2, metavar=("TRAINER_JSON", "TUNESMITH_JSON"),
                   help="no training: the paired bootstrap of the Trainer run in the first results file "
                        "against the tunesmith run in the second (the same file twice for a --side both run)")
    tvt.add_common_args(p)
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.out = args.out or tvt.REPO_ROOT / f"bench/results/seq2seq_vs_trainer_{args.dataset}.json"
    tvt.check_common_args(p, args)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    tvt.quiet_libraries()
    if args.compare:
        compare(args.dataset, *args.compare)
        return
    corpus = CORPORA[args.dataset]
    data = load(args.dataset, args.data_root, args.limit, args.eval_limit or corpus.eval_limit)
    hyper = tvt.Hyper(batch_size=corpus.batch_size, eval_batch_size=32, lr=corpus.lr,
                      epochs=args.epochs or corpus.epochs, max_length=corpus.max_source, max_steps=args.max_steps)
    facts = tvt.machine_facts()
    meta = {"argv": sys.argv, "dataset": args.dataset, **{f"{k}_examples": len(v) for k, v in data.items()},
            "machine": facts, "hyperparameters": asdict(hyper) | {"skip_steps": args.skip_steps,
                                                                  "max_target_length": corpus.max_target},
            "tunesmith_precision": args.precision, "tunesmith_overrides": args.tunesmith_set, "throughput_unit": UNIT,
            "test_references": [r["target"] for r in data["test"]]}
    tvt.print_header(
        f"seq2seq {args.dataset}: Seq2SeqTrainer (example recipe) vs tunesmith, MiniLM2MiniLM", facts, hyper,
        args.precision,
        [f"train {len(data['train'])}, test {len(data['test'])} (greedy, max {corpus.max_target} new tokens); "
         f"metrics: {', '.join(corpus.metrics)} in points",
         f"throughput unit: training {UNIT} per second, steady state after step {args.skip_steps}"],
        args.tunesmith_set)
    tvt.run_both(argv, args, meta, list(corpus.metrics), UNIT,
                 lambda seed: run_trainer(args.dataset, data, corpus, seed, hyper, args.skip_steps),
                 lambda seed: run_tunesmith(args.dataset, data, corpus, seed, hyper, args.precision,
                                            args.skip_steps, args.tunesmith_set))


if __name__ == "__main__":
    main()
