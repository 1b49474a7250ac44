"""The `tunesmith` command: train, check-data, evaluate, predict, init."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .console import printable
from .errors import TunesmithError

if TYPE_CHECKING:
    from .run import TrainingInterrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pretrained Transformer models on your own NLP task.")
console = Console(stderr=True)

SET_HELP = "Override any config key, e.g. --set train.lr=3e-5 (repeatable)."


def _quiet_libraries() -> None:
    """Our own report says what matters; keep transformers' load chatter and shard bars out of it."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _fail(e: Exception) -> None:
    console.print(f"[bold red]error:[/bold red] {escape(str(e))}")
    raise typer.Exit(2)


@app.command()
def train(config: Path = typer.Argument(..., help="YAML config (sections task/model/data/train/eval/output_dir)."),
          set_: list[str] = typer.Option([], "--set", help=SET_HELP),
          resume: bool = typer.Option(False, "--resume",
                                      help="Continue from the run folder's last checkpoint."),
          overwrite: bool = typer.Option(False, "--overwrite",
                                         help="Delete everything in output_dir first (each entry is listed)."),
          allow_config_change: bool = typer.Option(
              False, "--allow-config-change",
              help="With --resume: continue with config values that change the run's results "
                   "(recorded in config_changes.jsonl).")) -> None:
    """Run the whole pipeline: data checks, tokenization, fine-tuning, test evaluation, run folder.

    On several GPUs or machines, launch the same command through Accelerate; batch_size stays the
    global batch (split across processes), so results match a one-process run:

      accelerate launch --num_processes 4 -m tunesmith train cfg.yaml

      accelerate launch --num_machines 2 --machine_rank 0 --main_process_ip HOST --main_process_port 29500 \\
        --num_processes 16 -m tunesmith train cfg.yaml   (run on each machine with its own --machine_rank;
        output_dir must be on storage every machine can see)
    """
    _quiet_libraries()
    from .run import TrainingInterrupted
    from .run import train as run_train

    try:
        run_train(config, set_, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change)
    except TunesmithError as e:
        _fail(e)
    except TrainingInterrupted as e:
        if e.main:
            _interrupted(e, config, set_)
        raise typer.Exit(130)
    except KeyboardInterrupt:
        console.print("interrupted before training started: there is nothing to resume")
        raise typer.Exit(130)


def _interrupted(e: TrainingInterrupted, config: Path, set_: list[str]) -> None:
    """Say where the run can continue from, as the user's own command plus --resume."""
    again = ["tunesmith", "train", str(config), *[a for s in set_ for a in ("--set", s)]]
    if e.checkpoint is None:
        console.print(escape(printable(f"interrupted before the first checkpoint of {e.run_dir}; to start "
                                       f"again: {shlex.join(again + ['--overwrite'])}")), soft_wrap=True)
        return
    console.print(escape(printable(f"interrupted; the last complete checkpoint is {e.checkpoint} (step {e.step}). "
                                   f"To continue from it: {shlex.join(again + ['--resume'])}")), soft_wrap=True)


@app.command("check-data")
def check_data(config: Path = typer.Argument(..., help="YAML config."),
               set_: list[str] = typer.Option([], "--set", help=SET_HELP),
               report: Optional[Path] = typer.Option(None, "--report",
                                                     help="Also write the report as JSON here.")) -> None:
    """Load, clean, split and tokenize the data and print the data report, without training."""
    _quiet_libraries()
    from .config import load_config
    from .data.report import print_report
    from .io import atomic_write_json, atomic_write_jsonl
    from .run import prepare

    try:
        p = prepare(load_config(config, set_))
    except TunesmithError as e:
        _fail(e)
    print_report(p.report, Console())
    if report:
        atomic_write_json(report, p.report)
        if p.data.dropped:
            atomic_write_jsonl(report.with_name("dropped_rows.jsonl"), p.data.dropped)


@app.command()
def evaluate(run_dir: Path = typer.Argument(..., help="A finished run folder."),
             data: Optional[Path] = typer.Option(None, "--data",
                                                 help="A labelled file; default: the run's test report."),
             output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                   help="Write the metrics as JSON here.")) -> None:
    """Metrics of a run's model on a labelled file (same columns as in training)."""
    _quiet_libraries()
    from .evaluation.report import summary_lines
    from .io import atomic_write_json
    from .serving.predictor import Predictor

    try:
        if data is None:
            report_path = run_dir / "report.json"
            if not report_path.exists():
                raise TunesmithError(f"{run_dir} has no report.json; pass --data FILE")
            metrics = json.loads(report_path.read_text())["test"]
        else:
            metrics = Predictor.load(run_dir).evaluate(data)
    except TunesmithError as e:
        _fail(e)
    for line in summary_lines({"test": metrics}):
        Console().print(line)
    if output:
        atomic_write_json(output, metrics)


@app.command()
def predict(run_dir: Path = typer.Argument(..., help="A finished run folder."),
            input: Path = typer.Argument(..., help="CSV/TSV/JSON/JSONL/Parquet with the training text column(s)."),
            output: Path = typer.Option(..., "-o", "--output", help="Output .jsonl (or .csv/.tsv)."),
            batch_size: Optional[int] = typer.Option(None, help="Default: the run's eval.batch_size.")) -> None:
    """Predict every row of a file: labels and probabilities per label."""
    _quiet_libraries()
    from .serving.predictor import Predictor

    try:
        n = Predictor.load(run_dir).predict_file(input, output, batch_size)
    except TunesmithError as e:
        _fail(e)
    console.print(f"wrote {n} predictions to {escape(str(output))}")


@app.command()
def init(data: Path = typer.Option(..., "--data", help="A training data file to inspect."),
         output: Path = typer.Option(Path("tunesmith.yaml"), "-o", "--output", help="Where to write the config."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing config.")) -> None:
    """Write a starter config for a data file, guessing the text and label columns (and saying so)."""
    from .init import guess_config
    from .io import atomic_write_text

    if output.exists() and not force:
        _fail(TunesmithError(f"{output} exists; pass --force to overwrite it"))
    try:
        text, notes = guess_config(data, output)
    except TunesmithError as e:
        _fail(e)
    atomic_write_text(output, text)
    for n in notes:
        console.print(f"- {escape(n)}")
    console.print(escape(f"wrote {output}; check it, then run: tunesmith train {output}"))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
