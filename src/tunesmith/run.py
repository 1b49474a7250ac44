"""The recipe: config -> data -> tokens -> model -> the loop -> evaluation -> run folder.

Everything a run does reads top to bottom here; each stage lives in its own module.
"""
from __future__ import annotations

import resource
import shlex
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import rundir
from .config import RunConfig, load_config
from .console import printable, quiet_libraries
from .data.cache import cache_root, cached_preprocess, tokenizer_state
from .data.prepare import LoadedData, drop_examples, drop_rows, load_splits, make_missing_splits, sample_rows
from .data.report import build_report, print_report, prediction_rows
from .errors import ConfigError, DiskFull, TrainingInterrupted, TunesmithError
from .evaluation import inference
from .evaluation.report import collapse_warning, plot_learning_curves, summary_lines
from .lora import parameter_counts
from .io import LABEL_ISSUES_FILE, append_jsonl, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from .models import DEFAULT_MODEL, check_max_length, export_model, load_model, load_tokenizer, resolve_model_name
from .tasks.base import Task, get_task
from .types import Artifact, ModelFacts
from .training.checkpoint import CheckpointManager, load_weights
from .training.loop import Callback, Event, TrainingLoop
from .training.progress import ProgressReporter


@dataclass
class _Owned:
    """What a run has taken of its folder, so that train() gives it back however the run ends."""

    run_dir: Path | None = None
    claim: rundir.Claim | None = None
    ckpt: CheckpointManager | None = None
    started: bool = False
    main: bool = True

    def latest(self) -> tuple[Path | None, int | None]:
        try:
            latest = self.ckpt.latest() if self.ckpt else None
        except TunesmithError:
            latest = None
        return (latest[0], latest[1].step) if latest else (None, None)


@dataclass
class Prepared:
    cfg: RunConfig
    task: Task
    data: LoadedData
    tokenized: dict[str, Any]
    report: dict[str, Any]
    tokenizer: Any
    model_name: str


@dataclass
class Run:
    """A finished run: its folder, its report, and a predictor on its model."""

    dir: Path
    report: dict[str, Any]

    @property
    def summary(self) -> dict[str, Any]:
        return self.report["train"]

    def predictor(self) -> Any:
        from .serving.predictor import Predictor
        return Predictor.load(self.dir)


def ready_rows(cfg: RunConfig, task: Task, data: LoadedData, model_name: str) -> None:
    """The rows that train, validate and test, before tokens: the task fitted, absent splits made, samples
    drawn, likely label errors dropped (data.drop_label_issues)."""
    task.fit(data.splits)
    make_missing_splits(data, cfg.data, task.stratify_keys)
    sample_rows(data, cfg.data, task.stratify_keys)
    if cfg.data.drop_label_issues:
        from .label_issues import find_label_issues, issue_reason

        train = data.splits["train"]
        data.label_issues = find_label_issues(task, train, model_name, cfg.data.split_seed)
        row = {(f, ln): i for i, (f, ln) in enumerate(zip(train.file, train.line))}
        drop_rows(data, "train", {row[(x["file"], x["line"])]: issue_reason(x) for x in data.label_issues})


@quiet_libraries()
def prepare(cfg: RunConfig, data: LoadedData | None = None) -> Prepared:
    """Data and tokens, checked: everything `check-data` shows and `train` needs before the model.

    `data`: `load_splits(cfg.data)` already read by the caller (the CLI checks files and columns
    before it imports the training stack), so the files are not read twice.
    """
    task = get_task(cfg)
    data = data if data is not None else load_splits(cfg.data, task.roles())
    model_name = resolve_model_name(cfg.model, cfg.data.cache_dir)
    ready_rows(cfg, task, data, model_name)
    pool = None
    if cfg.data.unlabelled:  # what check-data shows of it (a self-training run reads it in train_rounds)
        from .self_training import read_pool

        pool = read_pool(cfg, task, data)
    tokenizer = load_tokenizer(model_name, cfg.model)
    check_max_length(model_name, cfg.model, tokenizer)
    tokenized, hits, rebuilt, tok_key = {}, {}, [], tokenizer_state(tokenizer)
    for split, table in data.splits.items():
        tokenized[split], hits[split], why = cached_preprocess(task, table, tokenizer, cfg.data.cache_dir, tok_key)
        rebuilt += [why] if why else []
        # examples with nothing to train on are dropped and listed
        tokenized[split] = drop_examples(data, split, tokenized[split], task.untrainable(tokenized[split]))
    report = build_report(data, task, tokenized, cfg.model.max_length, cfg.data.on_missing)
    report["tokenization_cache_hits"] = hits
    report["warnings"] += rebuilt
    report["notes"] += data.notes
    if pool is not None:
        report["notes"].append(f"data.unlabelled: {len(pool)} rows for train.self_training to pseudo-label")
    if data.label_issues is not None:
        from .label_issues import METHOD

        report["notes"].append(f"data.drop_label_issues: {len(data.label_issues)} training rows dropped as likely "
                               f"mislabelled (label_issues.jsonl; {METHOD})")
    return Prepared(cfg, task, data, tokenized, report, tokenizer, model_name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 where the hardware runs it natively, else fp32 (emulated bf16 is slower, not faster)."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on this machine")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def _write_run_files(run_dir: Path, p: Prepared) -> None:
    atomic_write_text(run_dir / "config.yaml", p.cfg.to_yaml())
    atomic_write_json(run_dir / "data_report.json", p.report)
    atomic_write_jsonl(run_dir / "dropped_rows.jsonl", p.data.dropped)
    if p.data.label_issues is not None:
        atomic_write_jsonl(run_dir / LABEL_ISSUES_FILE, p.data.label_issues)
    summary = p.task.summary()
    atomic_write_json(run_dir / "label_map.json", {"task": p.task.name, **summary, **(
        {"id2label": dict(enumerate(summary["labels"]))} if "labels" in summary else {})})


def _metrics_logger(path: Path, every: int, accelerator: Any) -> Callback:
    """Append step and eval records to metrics.jsonl (and TensorBoard when installed)."""
    writer = None
    if accelerator.is_main_process:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(path.parent / "tensorboard"))
        except ImportError:
            writer = None

    def log(event: Event) -> None:
        if not accelerator.is_main_process:
            return None
        s = event.state
        if event.kind == "end" and writer is not None:
            writer.close()
        if event.kind == "step" and (s.step % every == 0 or s.step == event.data["total_steps"]):
            row = {"kind": "train", "step": s.step, "epoch": s.epoch, "loss": event.data["loss"],
                   "lr": event.data["lr"], "grad_norm": event.data["grad_norm"],
                   "samples_per_second": event.data["samples"] / max(event.data["seconds"], 1e-9)}
        elif event.kind == "eval":
            for name, value in event.data.get("logs", {}).items():  # the task's eval_logs, one file each
                append_jsonl(path.parent / f"{name}.jsonl", {"step": s.step, name: value})
            scalars = {k: v for k, v in event.data["metrics"].items() if isinstance(v, (int, float))}
            row = {"kind": "eval", "step": s.step, "epoch": s.epoch, **scalars, "is_best": event.data["is_best"]}
        else:
            return None
        append_jsonl(path, row)
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    writer.add_scalar(f"{row['kind']}/{k}", v, s.step)
        return None

    return log


def _say(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # soft_wrap: paths and commands stay on one line, so they can be copied
    Console(stderr=True, soft_wrap=True).print(f"[yellow]note:[/yellow] {escape(printable(message))}")


def _on_main(accelerator: Any, fn: Callable[[], Any]) -> Any:
    """fn() on the main process only; its error is raised on every process (the others would wait forever)."""
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = fn()
        except TunesmithError as e:
            error = e
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([str(error) if error else None])[0]
        if message and error is None:
            raise ConfigError(message)
    if error is not None:
        raise error
    return result


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@quiet_libraries()
def train(config: str | Path | dict | RunConfig, overrides: list[str] | dict | None = None, *, resume: bool = False,
          overwrite: bool = False, allow_config_change: bool = False,
          callbacks: list[Callback] | None = None, data: LoadedData | None = None,
          config_file: str | Path | None = None, checked: dict | None = None) -> Run:
    """Run the whole pipeline and return the finished Run (its folder is `config.output_dir`).

    output_dir must be empty (or absent) unless `resume` continues the run in it (a config that changes
    its results also needs `allow_config_change`) or `overwrite` deletes what it holds. One run at a
    time holds the folder's lock; a run that fails before training starts leaves no folder behind.
    Ctrl-C after training started raises TrainingInterrupted, which says where to resume from; a full
    disk raises DiskFull, which says what could not be written and the run's last complete checkpoint.
    `data`: the config's `load_splits(cfg.data)`, when the caller has read it already (see `prepare`).
    `config_file`: the YAML file a RunConfig came from (protected from --overwrite like the data).
    `checked`: what `rundir.check` returned for this config, when the caller ran the folder check already
    (the CLI does, before the training stack's slow import), so it runs once.
    A run a search's pruner stopped returns with report status "pruned" (no test, no model).
    With train.self_training, each round is such a run in rounds/ (`self_training.train_rounds`).
    """
    cfg = load_config(config, overrides)
    if config_file is None and isinstance(config, (str, Path)):
        config_file = Path(config)
    if cfg.train.self_training is not None:  # rounds of runs, each one the call below
        from .self_training import train_rounds

        return train_rounds(cfg, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change,
                            config_file=config_file, data=data, checked=checked, callbacks=callbacks)
    owned = _Owned()
    try:
        return _train(cfg, None, resume=resume, overwrite=overwrite,
                      allow_config_change=allow_config_change, callbacks=callbacks, data=data,
                      config_file=config_file, owned=owned, checked=checked)
    except KeyboardInterrupt as e:
        if owned.started and not isinstance(e, TrainingInterrupted):
            raise TrainingInterrupted(owned.run_dir, *owned.latest(), owned.main) from e
        raise
    except DiskFull as e:
        # the folder is kept once training started, or when it held the run to resume already
        flag = "--resume" if resume or owned.started else None
        source = config_file or (config if isinstance(config, (str, Path)) else None)
        command = (shlex.join(["tunesmith", "train", str(source), *([flag] if flag else [])])
                   if source is not None and not overrides else
                   "the same train() call" + (" with resume=True" if flag else ""))
        raise e.in_run(*owned.latest(), flag, command)
    finally:
        if owned.claim is not None:
            (owned.claim.release if owned.started else owned.claim.abandon)()


@dataclass
class _Setup:
    """What every stage shares: the config, where the run lives, the accelerator and the precision."""

    cfg: RunConfig
    run_dir: Path
    accelerator: Any
    precision: str
    owner: dict[str, Any]
    changes: dict[str, tuple[Any, Any]]


def _train(config: str | Path | dict | RunConfig, overrides: list[str] | dict | None, *, resume: bool,
           overwrite: bool, allow_config_change: bool, callbacks: list[Callback] | None, data: LoadedData | None,
           config_file: str | Path | None, owned: _Owned, checked: dict | None) -> Run:
    """The stages, in order: setup -> data -> model -> claim folder -> fit -> final evaluation -> export."""
    from accelerate.utils import set_seed

    s = _setup(config, overrides, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change,
               config_file=config_file, owned=owned, checked=checked)
    p = _data(s, data)
    set_seed(s.cfg.train.seed)  # the new head's initialisation does not depend on data loading
    model, facts = load_model(p.task, p.model_name, s.cfg.model)
    latest = _claim_folder(s, p, owned, resume)
    loop = _fit(s, p, model, owned, latest, callbacks)
    final_model = s.accelerator.unwrap_model(loop.model)
    if loop.pruned:  # a search's pruner: the folder says so, and holds no model
        report = {"status": "pruned", "task": p.task.name, "reason": loop.pruned,
                  "train": _train_summary(loop.state, s, final_model, facts, loop.metric)}
        if s.accelerator.is_main_process:
            atomic_write_json(s.run_dir / "report.json", report)
            shutil.rmtree(s.run_dir / "checkpoints", ignore_errors=True)
        return Run(s.run_dir, report)
    report, test = _final_evaluation(s, p, loop, final_model, facts, owned.ckpt)
    if s.accelerator.is_main_process:
        _finish_run_folder(s.run_dir, p, report, test, final_model, loop.metric)
    s.accelerator.wait_for_everyone()
    return Run(s.run_dir, report)


def _setup(config: str | Path | dict | RunConfig, overrides: list[str] | dict | None, *, resume: bool,
           overwrite: bool, allow_config_change: bool, config_file: str | Path | None, owned: _Owned,
           checked: dict | None) -> _Setup:
    """The config, the folder check (read-only: a refused run costs seconds and writes nothing; skipped when
    the caller made it already), the accelerator for this run's precision, the seed."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from torch import distributed as dist

    cfg = load_config(config, overrides)
    run_dir = Path(cfg.output_dir).expanduser().resolve()
    if config_file is None and isinstance(config, (str, Path)):
        config_file = Path(config)
    owner = dict(resume=resume, overwrite=overwrite, allow_config_change=allow_config_change, config_file=config_file)
    changes = checked if checked is not None else rundir.check(run_dir, cfg, **owner)
    # cpu=True on machines without CUDA lets a multi-process launch use gloo (MULTI_CPU)
    use_cpu = not torch.cuda.is_available()
    precision = resolve_precision(cfg.train.precision, torch.device("cpu" if use_cpu else "cuda"))
    # Accelerate keeps one precision and device per process and refuses another: an earlier run in this
    # process (a notebook, a search trial, a Trainer) must not fix this one's. A launched process group stays.
    AcceleratorState._reset_state(reset_partial_state=not (dist.is_available() and dist.is_initialized()))
    accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision, cpu=use_cpu)
    owned.main = accelerator.is_main_process
    # known from the start, so that a full disk at any stage names the checkpoint the folder holds
    owned.run_dir = run_dir
    owned.ckpt = CheckpointManager(run_dir / "checkpoints", cfg.train.keep_checkpoints, accelerator)
    set_seed(cfg.train.seed)
    return _Setup(cfg, run_dir, accelerator, precision, owner, changes)


def _data(s: _Setup, data: LoadedData | None) -> Prepared:
    """Data and tokens (one process tokenizes and fills the cache, the others read it), and the metric."""
    if s.accelerator.is_main_process:  # temps of killed runs in the shared cache (live writers' are kept)
        rundir.remove_dead_temps(cache_root(s.cfg.data.cache_dir) / "tokenized")
    with s.accelerator.main_process_first():
        p = prepare(s.cfg, data)
    p.task.selected_metric(s.cfg.eval.metric)  # an unknown metric is refused before the model loads
    return p


def _claim_folder(s: _Setup, p: Prepared, owned: _Owned, resume: bool) -> tuple[Path, Any] | None:
    """Take the folder (only now, when config, data and model are known to work) and write what is known
    before training; returns the checkpoint a resume continues from."""
    owned.claim = _on_main(s.accelerator, lambda: rundir.claim(s.run_dir, s.cfg, say=_say, **s.owner))
    latest = owned.ckpt.latest() if resume else None
    if s.accelerator.is_main_process:
        _write_run_files(s.run_dir, p)
        if s.changes:
            _say(f"resuming with config changes: {rundir.describe_changes(s.changes)}")
            append_jsonl(s.run_dir / rundir.CHANGES_FILE, {"resumed_from_step": latest[1].step if latest else 0,
                                                           "changes": {k: list(v) for k, v in s.changes.items()}})
        print_report(p.report, dropped_rows_file=s.run_dir / "dropped_rows.jsonl")
        for log in (s.run_dir / "metrics.jsonl", *(s.run_dir / f"{name}.jsonl" for name in p.task.eval_logs)):
            if latest and log.exists():  # forget log lines written after the checkpoint we resume from
                atomic_write_jsonl(log, [r for r in read_jsonl(log) if r["step"] <= latest[1].step])
            elif not latest:
                log.unlink(missing_ok=True)
    return latest


def _fit(s: _Setup, p: Prepared, model: torch.nn.Module, owned: _Owned, latest: tuple[Path, Any] | None,
         callbacks: list[Callback] | None) -> TrainingLoop:
    """The loop, from step 1 or from the checkpoint it resumes; evaluations during training validate
    (generating only when the selected metric needs it)."""
    cfg, task, accelerator = s.cfg, p.task, s.accelerator
    metric, higher = task.selected_metric(cfg.eval.metric)
    # generating the validation split is slow: skipped while training when the loss picks the best
    predict = not task.generates or metric not in ("loss", *task.loss_metrics)

    def evaluate(model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        # decision thresholds are fitted at every evaluation, so the best checkpoint is chosen on the scores
        # that its own threshold gives (tuned F1 can pick a checkpoint that F1 at 0.5 scores 0)
        result, loss = _infer(s, p, model, "validation", tune=True, predict=predict)
        return {"loss": loss, **result.metrics}, result.logs

    progress = ProgressReporter(enabled=accelerator.is_main_process)
    train_data = task.training_features(p.tokenized["train"])
    loop = TrainingLoop(model=model, task=task, train_data=train_data, lengths=np.asarray(train_data["length"]),
                        cfg=cfg.train, classes=task.sampling_classes(train_data), accelerator=accelerator,
                        evaluate=evaluate, metric=metric, higher_is_better=higher, checkpoints=owned.ckpt,
                        callbacks=[_metrics_logger(s.run_dir / "metrics.jsonl", cfg.train.log_every, accelerator),
                                   progress, *(callbacks or [])],
                        pad_to_multiple_of=8 if accelerator.device.type == "cuda" else None)
    if latest and accelerator.is_main_process:
        _say(f"resuming from {latest[0]}: the run had finished all {loop.total_steps} steps; testing and "
             "exporting its best checkpoint again" if latest[1].step >= loop.total_steps else
             f"resuming from {latest[0]}: step {latest[1].step} of {loop.total_steps} done, "
             f"continuing with step {latest[1].step + 1}")
    owned.started = True
    try:
        loop.run(resume=latest is not None)  # a folder started again (no checkpoint) runs from step 1
    finally:
        progress.stop()
    return loop


def _infer(s: _Setup, p: Prepared, model: torch.nn.Module, split: str, tune: bool = False,
           predict: bool = True) -> tuple[Any, float | None]:
    return inference.evaluate_split(model, p.task, p.data.splits[split], p.tokenized[split], s.cfg.eval.batch_size,
                                    s.accelerator.device, accelerator=s.accelerator, tune=tune, predict=predict)


def _final_evaluation(s: _Setup, p: Prepared, loop: TrainingLoop, model: torch.nn.Module, facts: ModelFacts,
                      ckpt: CheckpointManager) -> tuple[dict[str, Any], Any]:
    """The best checkpoint, not the last step, is what gets tested (and exported): validation with its own
    thresholds, then test. Returns report.json's content and the test result."""
    best = ckpt.index()["best"]
    if best:
        load_weights(model, ckpt.path(best))
    started = time.perf_counter()
    val, val_loss = _infer(s, p, model, "validation", tune=True)
    seconds = time.perf_counter() - started
    test, test_loss = _infer(s, p, model, "test")
    n_val = len(p.data.splits["validation"])
    report = {
        "task": p.task.name,
        "status": "completed",
        "validation": {"loss": val_loss, **val.metrics},
        "test": {"loss": test_loss, **test.metrics},
        "train": _train_summary(loop.state, s, model, facts, loop.metric),
        # the final validation pass, batched as eval.batch_size (generation included where the task generates);
        # every evaluation runs in fp32 whatever train.precision is (see evaluation/inference.py)
        "inference": {"split": "validation", "examples": n_val, "batch_size": s.cfg.eval.batch_size,
                      "precision": inference.PRECISION, "device": str(s.accelerator.device),
                      "seconds": round(seconds, 3),
                      "ms_per_example": round(1000 * seconds / max(n_val, 1), 3)},
        "model": s.cfg.model.name or f"{DEFAULT_MODEL} (embedded: {p.model_name})",
    }
    collapsed = [w for split, r in (("validation", val), ("test", test)) if p.task.generates
                 for w in [collapse_warning(split, r.predictions)] if w]
    if collapsed:
        report["warnings"] = collapsed
    return report, test


def _train_summary(state: Any, s: _Setup, model: torch.nn.Module, facts: ModelFacts, metric: str) -> dict[str, Any]:
    """report.json's train section: what the loop did and on what."""
    accelerator = s.accelerator
    return {"steps": state.step, "epochs_completed": state.epoch, "samples": state.samples,
            "train_runtime_s": round(state.train_seconds, 3),
            "train_samples_per_second": state.samples_per_second,
            "throughput_over": "steps after the first 10 (steady state)" if state.steady_seconds
            else "all steps (the run was too short for a steady-state figure)",
            "best_step": state.best_step, "metric": metric, "best_metric": state.best_metric,
            "nonfinite_steps": state.nonfinite_steps,
            "precision": s.precision, "processes": accelerator.num_processes,
            "device": str(accelerator.device),
            # what the task's load_model switched on (model.padding_free, the fast BERT forward)
            "speed_paths": dict(facts.speed_paths),
            "peak_rss_mb": round(_peak_rss_mb(), 1),  # the process's peak, whatever else it ran
            **({"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
               if accelerator.device.type == "cuda" else {}),
            "parameters": parameter_counts(model),
            "lora": facts.lora,
            "loop_state": asdict(state)}


def _finish_run_folder(run_dir: Path, p: Prepared, report: dict, test: Any, model: torch.nn.Module,
                       metric: str) -> None:
    """The model and report first; plots are optional extras whose failure is only a warning in the report."""
    from rich.console import Console
    from rich.markup import escape

    from .evaluation.card import model_card

    export_model(model, p.tokenizer, p.task, p.cfg, run_dir / "model",
                 model_card(p.task, p.cfg, report, p.report, report["model"]))
    atomic_write_jsonl(run_dir / "predictions" / "test.jsonl",
                       prediction_rows(p.task, p.data.splits["test"], test.predictions))
    atomic_write_json(run_dir / "report.json", report)

    extras = [Artifact("plots/learning_curves.png", lambda path: plot_learning_curves(
        read_jsonl(run_dir / "metrics.jsonl"), metric, path)), *p.task.report_artifacts(report["test"])]
    console = Console()
    unwritten = []
    for extra in extras:
        try:
            extra.write(run_dir / extra.name)
        except Exception as e:  # noqa: BLE001 - an optional artefact never fails a finished run
            unwritten.append(f"{extra.name} was not written: {type(e).__name__}: {e}")
    if unwritten:
        report["warnings"] = [*report.get("warnings", []), *unwritten]
        atomic_write_json(run_dir / "report.json", report)
    try:  # the page last: it shows every warning, and shades the worst errors by the exported model's explanations
        from .evaluation.html import write_report
        from .serving.predictor import Predictor

        shaded = p.cfg.eval.explain_errors if p.task.explains else 0
        write_report(run_dir, Predictor.load(run_dir, report["train"]["device"]) if shaded else None, shaded)
    except Exception as e:  # noqa: BLE001 - as the plots: an optional artefact never fails a finished run
        report["warnings"] = [*report.get("warnings", []), f"report.html was not written: {type(e).__name__}: {e}"]
        atomic_write_json(run_dir / "report.json", report)
    console.print(f"[bold]run folder:[/bold] {escape(printable(run_dir))}")
    for line in summary_lines(report):
        console.print(escape(line))
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {escape(printable(w))}")
    return None
