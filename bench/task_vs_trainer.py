"""What the NER and QA benchmarks share: machine facts, the common hyperparameters, one process per
seed, the tunesmith side, and the results tables.

Not a benchmark itself. The measurement pieces (step clock, batch-size counter, peak RSS, memory
release, steady-state throughput) come from classification_vs_trainer.py, so every benchmark in
bench/ measures with one clock and one formula.
"""
from __future__ import annotations

import os

# Before any Hugging Face import: the benchmark must never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from rich.markup import escape
from rich.table import Table
from transformers import Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classification_vs_trainer as cvt  # noqa: E402  (measurement helpers, model path, tunesmith import)

REPO_ROOT = cvt.REPO_ROOT
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared/data"
SIDES = ("trainer", "tunesmith")
# tunesmith evaluates (and checkpoints) at the end only, so that, like the example's Trainer (which never
# evaluates during training), it tests the last weights, not the best epoch's; and so that no evaluation
# falls between two timed steps. The loop always evaluates after the last step.
EVAL_ONLY_AT_END = 10**9
console = cvt.console


@dataclass(frozen=True)
class Hyper:
    """The hyperparameters both sides use. Defaults are TrainingArguments' (what the examples run with
    when a flag is not given); each benchmark sets the ones its issue states."""

    batch_size: int = 8
    eval_batch_size: int = 8
    lr: float = 5e-5
    epochs: float = 3.0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512
    max_steps: int | None = None
    scheduler: str = "linear"
    device: str = "cpu"  # where the Trainer side runs (tunesmith runs on CUDA whenever it is available)
    trainer_bf16: bool = False  # TrainingArguments(bf16=True): the Trainer side under bf16 autocast
    group_by_length: bool = False  # the Trainer side's train_sampling_strategy="group_by_length"


@dataclass
class SideResult:
    side: str
    seed: int
    samples_per_s: float | None = None
    wall_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # in points (0-100)
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    start_rss_mb: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- machine and settings

def machine_facts() -> dict[str, Any]:
    """What the throughput depends on besides the code; printed in the header and kept in the JSON."""
    cpu_model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not cpu_model:
                cpu_model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: the flags stay unknown
        pass
    cpu_model = cpu_model or platform.processor() or "unknown"
    return {
        "cpu_model": cpu_model, "avx512_bf16": "avx512_bf16" in flags if flags else None,
        "amx_bf16": "amx_bf16" in flags if flags else None, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
    }


def print_header(title: str, facts: dict[str, Any], hyper: Hyper, precision: str, lines: list[str],
                 overrides: list[str] | None = None) -> None:
    console.print(f"[bold]{escape(title)}[/bold]")
    console.print(f"machine: {escape(facts['cpu_model'])}, {facts['cpu_count']} CPUs, avx512_bf16 "
                  f"{facts['avx512_bf16']}, torch threads {facts['torch_threads']}, torch {facts['torch']}, "
                  f"transformers {facts['transformers']}, Python {facts['python']}")
    steps = f"max_steps {hyper.max_steps}" if hyper.max_steps else f"epochs {hyper.epochs:g}"
    console.print(f"both sides: batch {hyper.batch_size}, lr {hyper.lr:g}, {steps}, {hyper.scheduler} schedule, "
                  f"warmup ratio {hyper.warmup_ratio:g}, weight decay {hyper.weight_decay:g}, max grad norm "
                  f"{hyper.max_grad_norm:g}, max_length {hyper.max_length}, eval batch {hyper.eval_batch_size}; "
                  f"Trainer on {hyper.device} in {'bf16' if hyper.trainer_bf16 else 'fp32'}"
                  f"{', group_by_length' if hyper.group_by_length else ''}, tunesmith {precision} on "
                  f"{'cuda' if facts['cuda_available'] else 'cpu'}")
    if overrides:
        console.print(f"tunesmith overrides: {escape(', '.join(overrides))}")
    for line in lines:
        console.print(escape(line))


def training_arguments(output_dir: str, seed: int, hyper: Hyper, cls: type = TrainingArguments,
                       **extra: Any) -> TrainingArguments:
    """TrainingArguments (or `cls`, e.g. Seq2SeqTrainingArguments, with `extra`) as the examples build them
    from their command line, plus what a benchmark must change: no checkpoints (saving every 500 steps would
    land inside the timed steps), no reporting integrations, the device and precision of `hyper` (CPU and fp32
    unless set). transformers 5 reads a float warmup_steps below 1 as the old warmup_ratio."""
    return cls(
        output_dir=output_dir,
        per_device_train_batch_size=hyper.batch_size,
        per_device_eval_batch_size=hyper.eval_batch_size,
        learning_rate=hyper.lr,
        warmup_steps=hyper.warmup_ratio,
        weight_decay=hyper.weight_decay,
        max_grad_norm=hyper.max_grad_norm,
        num_train_epochs=hyper.epochs,
        max_steps=hyper.max_steps or -1,
        lr_scheduler_type=hyper.scheduler,
        seed=seed,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        dataloader_num_workers=0,
        use_cpu=hyper.device == "cpu",
        bf16=hyper.trainer_bf16,
        train_sampling_strategy="group_by_length" if hyper.group_by_length else "random",
        **extra,
    )


# ---------------------------------------------------------------- the two sides

def train_timed(trainer: Trainer, collator: cvt.CountingCollator, timer: cvt.StepTimer, skip_steps: int,
                result: SideResult) -> None:
    """trainer.train() with the classification benchmark's clock: steady samples/s after `skip_steps`."""
    start = time.perf_counter()
    trainer.train()
    result.wall_s = time.perf_counter() - start
    sizes = collator.sizes[: len(timer.step_end)]
    result.samples_per_s = cvt.steady_throughput(timer.step_end, sizes, skip_steps)
    result.extra.update(steps=len(timer.step_end), train_samples=sum(sizes))
    collator.sizes.clear()  # later batches are evaluation batches


def run_tunesmith(config: dict[str, Any], seed: int, skip_steps: int,
                  metrics_from: Callable[[dict[str, Any]], dict[str, float]],
                  overrides: list[str] | None = None) -> SideResult:
    """`tunesmith.train(config, overrides)` timed with the same step clock as the Trainer side; its own
    figures go to `extra`. `metrics_from` maps report["test"] to points."""
    result = SideResult("tunesmith", seed)
    tunesmith = cvt.import_tunesmith()
    timer = cvt.TunesmithStepTimer()
    start = time.perf_counter()
    run = tunesmith.train(config, overrides=overrides or [], callbacks=[timer])
    call_s = time.perf_counter() - start
    summary = dict(run.summary)
    result.samples_per_s = cvt.steady_throughput(timer.step_end, timer.sizes, skip_steps)
    result.wall_s = float(summary["train_runtime_s"])
    result.metrics = metrics_from(run.report["test"])
    result.extra = {"steps": len(timer.step_end), "train_samples": sum(timer.sizes),
                    "self_reported_samples_per_s": float(summary["train_samples_per_second"]),
                    "call_s": call_s, "overrides": overrides or [], "report_test": run.report["test"],
                    "summary": summary}
    return result


def run_side(side: str, seed: int, fn: Callable[[], SideResult]) -> SideResult:
    """One side with its peak RSS. A tunesmith failure is reported, not raised: until its task interface
    lands the Trainer side must still run."""
    cvt.release_memory()
    console.print(f"[bold]seed {seed}: {side}[/bold]")
    try:
        with cvt.PeakRSS() as mem:
            result = fn()
    except Exception as e:  # noqa: BLE001 - reported in the table and the JSON
        if side == "trainer":
            raise
        result = SideResult(side, seed, error=f"{type(e).__name__}: {e}")
        console.print(f"[red]{side} failed: {escape(result.error)}[/red]")
        return result
    result.peak_rss_mb, result.start_rss_mb, result.peak_gpu_mb = mem.peak_mb, mem.start_mb, mem.peak_gpu_mb
    return result


# ---------------------------------------------------------------- seeds: one process each

def tunesmith_train_section(hyper: Hyper, seed: int, precision: str) -> dict[str, Any]:
    """tunesmith's `train:` section with the hyperparameters the Trainer side uses; evaluation at the end only."""
    train_cfg: dict[str, Any] = {
        "epochs": hyper.epochs, "batch_size": hyper.batch_size, "lr": hyper.lr,
        "warmup_ratio": hyper.warmup_ratio, "weight_decay": hyper.weight_decay,
        "max_grad_norm": hyper.max_grad_norm, "scheduler": hyper.scheduler, "seed": seed,
        "precision": precision, "eval_every": EVAL_ONLY_AT_END}
    if hyper.max_steps:
        train_cfg["max_steps"] = hyper.max_steps
    return train_cfg


def check_common_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.skip_steps < 1:
        p.error("--skip-steps must be at least 1: the end of step skip_steps starts the steady clock")


def quiet_libraries() -> None:
    """No progress bars or info logs from transformers and datasets in the benchmark's output."""
    import datasets

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def add_variant_args(p: argparse.ArgumentParser, runs: list[str], epochs: float, out_name: str) -> None:
    """The arguments of a benchmark that compares tunesmith option sets on one data set (long_text.py,
    imbalance.py): no Trainer side, the same hyperparameters in every run."""
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                   help="folder holding the shared data sets (default: %(default)s)")
    p.add_argument("--runs", default=",".join(runs), help=f"comma-separated, of: {'; '.join(runs)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=epochs)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--limit", type=int, default=None, help="first N rows of each split (smoke runs)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results" / out_name)


def write_splits(splits: dict[str, list[dict[str, Any]]], folder: Path) -> dict[str, Path]:
    """Each split as a JSONL file in `folder`: {split: path}."""
    paths = {}
    for split, rows in splits.items():
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return paths


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--side", choices=["trainer", "tunesmith", "both"], default="both")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                   help="folder holding the shared data sets (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="first N training examples only (smoke tests)")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="first N test sentences / dev questions (default: all for NER, 2,000 for SQuAD)")
    p.add_argument("--max-steps", type=int, default=None, help="stop both sides after N steps (smoke tests)")
    p.add_argument("--skip-steps", type=int, default=10,
                   help="optimizer steps excluded from steady throughput as warmup (default: %(default)s)")
    p.add_argument("--precision", default="fp32",
                   help="tunesmith train.precision (default fp32, what the Trainer side runs; auto picks bf16 "
                        "on CPUs with avx512_bf16)")
    p.add_argument("--tunesmith-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra tunesmith override, e.g. train.batching=bucket (repeatable; printed in the header)")


def add_device_args(p: argparse.ArgumentParser) -> None:
    """The Trainer side's device, precision and sampling, for benchmarks whose Trainer side runs on a GPU
    (sft_vs_trainer.py; bench/gpu_check.py drives it). Pass `device_settings(args)` on to Hyper."""
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the Trainer side runs (tunesmith runs on CUDA whenever it is available)")
    p.add_argument("--trainer-precision", choices=["fp32", "bf16"], default="fp32",
                   help="the Trainer side's precision (bf16: TrainingArguments(bf16=True), autocast)")
    p.add_argument("--trainer-group-by-length", action="store_true",
                   help="the Trainer side samples batches of similar length (train_sampling_strategy)")


def device_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Hyper's fields from the device options of add_common_args."""
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch sees no CUDA GPU")
    return {"device": args.device, "trainer_bf16": args.trainer_precision == "bf16",
            "group_by_length": args.trainer_group_by_length}


def sides_of(choice: str) -> list[str]:
    return list(SIDES) if choice == "both" else [choice]


def run_seeds(argv: list[str], seeds: list[int], out: Path,
              run_one: Callable[[int], list[SideResult]]) -> list[SideResult]:
    """Each seed in a fresh process when there are several (argparse keeps the last --seeds/--out given),
    so every seed starts from the same allocator, thread-pool and cache state; one seed runs here."""
    if len(seeds) == 1:
        return run_one(seeds[0])
    results: list[SideResult] = []
    for seed in seeds:
        part = out.with_name(f"{out.stem}.seed{seed}.json")
        cmd = [sys.executable, sys.argv[0], *argv, "--seeds", str(seed), "--out", str(part)]
        subprocess.run(cmd, check=True)
        results.extend(SideResult(**r) for r in json.loads(part.read_text(encoding="utf-8"))["runs"])
    return results


# ---------------------------------------------------------------- reporting

def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def columns(metric_names: list[str], unit: str) -> list[str]:
    return ["side", f"{unit}/s (steady)", "wall s", *metric_names, "peak MB"]


def values(r: SideResult, metric_names: list[str]) -> list[float | None]:
    return [r.samples_per_s, r.wall_s, *(r.metrics.get(m) for m in metric_names), r.peak_rss_mb]


def print_seed_table(seed: int, results: list[SideResult], metric_names: list[str], unit: str) -> None:
    table = Table(*columns(metric_names, unit), title=f"seed {seed}")
    for r in results:
        if r.error:
            first_line = escape(r.error.splitlines()[0][:80])
            table.add_row(r.side, f"[red]failed: {first_line}[/red]", *[""] * (len(metric_names) + 2))
        else:
            digits = [1, 1, *[2] * len(metric_names), 1]  # metrics in points to 2 decimals
            table.add_row(r.side, *(fmt(v, d) for v, d in zip(values(r, metric_names), digits)))
    console.print(table)


def summarize(results: list[SideResult], metric_names: list[str]) -> dict[str, dict[str, Any]]:
    """Mean and per-seed values of each figure, per side, over the runs that succeeded."""
    keys = ["samples_per_s", "wall_s", *metric_names, "peak_rss_mb"]
    summary: dict[str, dict[str, Any]] = {}
    for side in SIDES:
        ok = [r for r in results if r.side == side and r.error is None]
        if ok:
            per_key = zip(*(values(r, metric_names) for r in ok))
            summary[side] = {k: {"mean": cvt.mean(list(v)), "per_seed": list(v)} for k, v in zip(keys, per_key)}
            summary[side]["seeds"] = [r.seed for r in ok]
    return summary


def tunesmith_ratios(summary: dict[str, dict[str, Any]], metric_names: list[str]) -> dict[str, float]:
    """tunesmith's mean throughput over the Trainer's, and its metric differences in points."""
    ts, hf = summary.get("tunesmith"), summary.get("trainer")
    if ts is None or hf is None:
        return {}
    ratios: dict[str, float] = {}
    if ts["samples_per_s"]["mean"] is not None and hf["samples_per_s"]["mean"]:
        ratios["throughput_vs_trainer"] = ts["samples_per_s"]["mean"] / hf["samples_per_s"]["mean"]
    for m in metric_names:
        if ts[m]["mean"] is not None and hf[m]["mean"] is not None:
            ratios[f"{m}_points_vs_trainer"] = ts[m]["mean"] - hf[m]["mean"]
    return ratios


def print_summary(summary: dict[str, dict[str, Any]], ratios: dict[str, float], metric_names: list[str],
                  unit: str) -> None:
    table = Table(*columns(metric_names, unit), title="over seeds: mean, then per seed")
    keys = ["samples_per_s", "wall_s", *metric_names, "peak_rss_mb"]
    for side, figures in summary.items():
        seeds = figures["seeds"]
        rows = [(f"[bold]{side}[/bold]", None)] + ([(f"  seed {s}", i) for i, s in enumerate(seeds)]
                                                   if len(seeds) > 1 else [])
        for label, which in rows:
            cells = [figures[k]["mean"] if which is None else figures[k]["per_seed"][which] for k in keys]
            table.add_row(label, *(fmt(v, 2 if k in metric_names else 1) for k, v in zip(keys, cells)))
    console.print(table)
    for key, value in ratios.items():
        shown = f"{value:.2f}x ({unit}/s)" if key.startswith("throughput") else f"{value:+.2f} points"
        console.print(f"tunesmith {key}: {shown}")


def write_results(out: Path, meta: dict[str, Any], results: list[SideResult], summary: dict[str, Any],
                  ratios: dict[str, float]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "runs": [asdict(r) for r in results], "summary": summary, "tunesmith_ratios": ratios}
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"raw results: {out}")


def run_both(argv: list[str], args: Any, meta: dict[str, Any], metric_names: list[str], unit: str,
             trainer: Callable[[int], Any], tunesmith: Callable[[int], Any]) -> None:
    """Each seed: the chosen sides (`trainer(seed)` / `tunesmith(seed)`) through `run_side`, a table per
    seed, then `finish` (one process per seed, summary, JSON)."""
    def run_one(seed: int) -> list[SideResult]:
        results = [run_side(side, seed, lambda: (trainer if side == "trainer" else tunesmith)(seed))
                   for side in sides_of(args.side)]
        print_seed_table(seed, results, metric_names, unit)
        return results

    finish(argv, args, meta, metric_names, unit, run_one)


def finish(argv: list[str], args: argparse.Namespace, meta: dict[str, Any], metric_names: list[str], unit: str,
           run_one: Callable[[int], list[SideResult]]) -> None:
    """Run every seed, then print and write the summary (a child process of run_seeds writes its part)."""
    results = run_seeds(argv, args.seeds, args.out, run_one)
    summary = summarize(results, metric_names)
    ratios = tunesmith_ratios(summary, metric_names)
    print_summary(summary, ratios, metric_names, unit)
    write_results(args.out, meta, results, summary, ratios)
