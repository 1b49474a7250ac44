"""The `tunesmith` command: train, search, check-data, evaluate, predict, report, export, serve, init."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .console import printable
from .data.readers import require_file
from .errors import ConfigError, DiskFull, TrainingInterrupted, TunesmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pretrained Transformer models on your own NLP task.")
console = Console(stderr=True)

SET_HELP = "Override any config key, e.g. --set train.lr=3e-5 (repeatable)."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunesmith {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                          help="Print the version and exit.")) -> None:
    pass


def _check_exists(run_dir: Path, file: Optional[Path] = None) -> None:
    """Say that a path is missing before importing the model stack, which takes seconds on a busy machine."""
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    if file is not None:
        require_file(file, hint="check the input file's path")


def _fail(e: Exception) -> None:
    console.print(f"[bold red]error:[/bold red] {escape(printable(e, keep_newlines=True))}", soft_wrap=True)
    raise typer.Exit(2)


class _TrainCommand(typer.core.TyperCommand):
    """`train --help` ends with the config's sections, read from the schema when the help is shown."""

    def format_help(self, ctx: typer.Context, formatter: object) -> None:
        from .config import config_sections

        if "Config sections" not in (self.help or ""):
            self.help = f"{self.help}\n\nConfig sections (every key: README's config reference):\n\n{config_sections()}"
        super().format_help(ctx, formatter)


@app.command(cls=_TrainCommand)
def train(config: Path = typer.Argument(..., help="YAML config (its sections are listed below)."),
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

    On several GPUs, CPU processes or machines, run the same command through
    `accelerate launch --multi_gpu` (without --multi_gpu a CPU machine gets
    one process). batch_size stays the global batch, split across processes,
    so results match a one-process run; the summary says how many ran.

      # 4 GPUs
      accelerate launch --multi_gpu --num_processes 4 \\
        -m tunesmith train cfg.yaml

      # 2 CPU processes (gloo)
      accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no -m tunesmith train cfg.yaml

      # 2 machines: run on each with its own --machine_rank; output_dir
      # must be on storage that every machine can see
      accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 \\
        --main_process_ip HOST --main_process_port 29500 \\
        --num_processes 16 -m tunesmith train cfg.yaml
    """
    from .config import load_config
    from .data.prepare import load_splits
    from .rundir import check
    from .tasks.base import get_task

    try:
        cfg = load_config(config, set_, flag="--set")
        # typos, a folder that may not be written, missing files and columns are reported now, not after
        # the training stack's slow import; Hub datasets are read in the run, where the main process
        # downloads first
        changes = check(Path(cfg.output_dir).expanduser().resolve(), cfg, resume=resume, overwrite=overwrite,
                        allow_config_change=allow_config_change, config_file=config)
        data = None if cfg.data.hub_dataset else load_splits(cfg.data, get_task(cfg).roles())
        from .run import train as run_train

        run_train(cfg, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change, data=data,
                  config_file=config, checked=changes)
    except DiskFull as e:
        _fail(e.with_command(_command(config, set_, e.flag)))
    except TunesmithError as e:
        _fail(e)
    except TrainingInterrupted as e:
        if e.main:
            _interrupted(e, config, set_)
        raise typer.Exit(130)
    except KeyboardInterrupt:
        _say("interrupted before training started" + (
            f"; the run folder still holds its checkpoints. To continue: {_command(config, set_, '--resume')}"
            if resume else ""))
        raise typer.Exit(130)


@app.command()
def search(config: Path = typer.Argument(..., help="YAML config with a search section."),
           set_: list[str] = typer.Option([], "--set", help=SET_HELP),
           join: bool = typer.Option(False, "--join",
                                     help="Add this process as a worker to a study started elsewhere (shared "
                                          "search.storage, e.g. PostgreSQL)."),
           final: bool = typer.Option(False, "--final",
                                      help="Then retrain the best config in the study's final/ folder and test it."),
           workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                                 help="Local worker processes (default: search.workers)."),
           worker_index: int = typer.Option(0, "--worker-index", hidden=True)) -> None:
    """Search hyperparameters (grid, random, bayes) over any config keys; each trial is a run folder.

    Writes trials/NNNN/, leaderboard.csv/.json, best_config.yaml and plots/ in output_dir. Run the same
    command again to resume an interrupted study; on more machines, `--join` adds workers to it.
    """
    from .hpsearch import run_search

    try:
        result = run_search(config, set_, join=join, final=final, workers=workers, worker_index=worker_index,
                            flag="--set")
    except TunesmithError as e:
        _fail(e)
    except KeyboardInterrupt:
        _say("interrupted; the study keeps its finished trials. To continue: "
             + shlex.join(["tunesmith", "search", str(config), *[a for s in set_ for a in ("--set", s)]]))
        raise typer.Exit(130)
    if not join:
        best = result.best
        _say(f"study folder: {result.dir}" + (f"; best trial {best['trial']}, config: {result.dir / 'best_config.yaml'}"
                                              if best else "; no trial completed"))
        if result.problems:
            for problem in result.problems:
                console.print(f"[bold red]error:[/bold red] {escape(printable(problem, keep_newlines=True))}",
                              soft_wrap=True)
            raise typer.Exit(1)


def _command(config: Path, set_: list[str], flag: Optional[str]) -> str:
    """The user's own train command (with one more flag, if given), quoted for a shell."""
    return shlex.join(["tunesmith", "train", str(config), *[a for s in set_ for a in ("--set", s)],
                       *([flag] if flag else [])])


def _say(message: str) -> None:
    """One line a user may copy (paths, commands): never wrapped, control characters escaped."""
    console.print(escape(printable(message)), soft_wrap=True)


def _interrupted(e: TrainingInterrupted, config: Path, set_: list[str]) -> None:
    """Say where the run can continue from, as the user's own command plus --resume."""
    if e.checkpoint is None:  # the folder holds only what the run wrote: train starts it again
        _say(f"interrupted before the first checkpoint of {e.run_dir}; to start again: "
             f"{_command(config, set_, None)}")
        return
    _say(f"interrupted; the last complete checkpoint is {e.checkpoint} (step {e.step}). "
         f"To continue from it: {_command(config, set_, '--resume')}")


@app.command("check-data")
def check_data(config: Path = typer.Argument(..., help="YAML config."),
               set_: list[str] = typer.Option([], "--set", help=SET_HELP),
               report: Optional[Path] = typer.Option(None, "--report",
                                                     help="Also write the report as JSON here.")) -> None:
    """Load, clean, split and tokenize the data and print the data report, without training."""
    from .config import load_config
    from .data.prepare import load_splits
    from .data.report import print_report
    from .tasks.base import get_task
    from .io import atomic_write_json, atomic_write_jsonl

    try:
        cfg = load_config(config, set_, flag="--set")
        # mistakes in the config or the files show before the slow imports
        data = load_splits(cfg.data, get_task(cfg).roles())
        from .run import prepare

        p = prepare(cfg, data)
    except TunesmithError as e:
        _fail(e)
    dropped = report.with_name("dropped_rows.jsonl") if report else None
    if report:
        atomic_write_json(report, p.report)
        if p.data.dropped:
            atomic_write_jsonl(dropped, p.data.dropped)
    print_report(p.report, Console(), dropped_rows_file=dropped)
    if p.data.dropped and not report:
        Console().print("the dropped rows were not saved: pass --report FILE to write them to "
                        "dropped_rows.jsonl beside FILE", soft_wrap=True)


@app.command("check-labels")
def check_labels(config: Path = typer.Argument(..., help="YAML config (its data as train would read it)."),
                 set_: list[str] = typer.Option([], "--set", help=SET_HELP),
                 output: Path = typer.Option(Path("label_issues.jsonl"), "-o", "--output",
                                             help="Where to write the label issues (JSON lines)."),
                 show: int = typer.Option(20, "--show", help="How many to print.")) -> None:
    """Find the training rows most likely mislabelled: out-of-fold probabilities of a logistic regression on
    frozen sentence embeddings of the config's model, then confident learning (cleanlab). Writes each
    with its file, line, text, given label, suggested label and probabilities; `data.drop_label_issues:
    true` trains without them."""
    from rich.table import Table

    from .label_issues import check_labels as find

    try:
        issues = find(config, set_, output)
    except TunesmithError as e:
        _fail(e)
    table = Table(title=f"{len(issues)} likely label errors (most likely first)")
    for c in ("file:line", "text", "given", "p(given)", "suggested", "p(suggested)"):
        table.add_column(c, overflow="fold")
    for x in issues[:show]:
        text = " | ".join(str(v) for v in x["input"].values())
        table.add_row(escape(printable(f"{Path(x['file']).name}:{x['line']}")), escape(printable(text[:120])),
                      escape(printable(str(x["given"]))), f"{x['given_probability']:.3f}",
                      escape(printable(str(x["suggested"]))), f"{x['suggested_probability']:.3f}")
    console.print(table)
    console.print(f"wrote {escape(printable(output))}")


@app.command()
def suggest(run_dir: Path = typer.Argument(..., help="A finished run folder (a task whose predictions have probs)."),
            pool: Path = typer.Option(..., "--pool", help="Unlabelled rows (any format predict reads)."),
            n: int = typer.Option(100, "-n", min=1, help="How many rows to suggest."),
            output: Path = typer.Option(Path("to_label.csv"), "-o", "--output",
                                        help="The rows to label: .csv, .tsv or .jsonl, the label column empty."),
            strategy: str = typer.Option("margin", "--strategy",
                                         help="margin | entropy | diverse (the most uncertain row of each of n "
                                              "k-means clusters of the pool's embeddings). margin did best in "
                                              "bench/active_learning.py."),
            seed: int = typer.Option(0, "--seed", help="The clusters' seed (diverse).")) -> None:
    """The rows of an unlabelled pool worth labelling next, most uncertain first, for an annotation tool."""
    from .serving.predictor import Predictor
    from .serving.suggest import suggest as pick
    from .serving.suggest import write_suggestions

    try:
        _check_exists(run_dir)
        require_file(pool, "check the path given to --pool")
        predictor = Predictor.load(run_dir)
        picked = pick(predictor, pool, n, strategy, seed)
        cfg = predictor.cfg.data
        write_suggestions(output, picked, cfg.columns.get("label", cfg.label_column))
    except TunesmithError as e:
        _fail(e)
    console.print(f"wrote {len(picked)} rows to label to {escape(printable(output))} ({strategy})")


@app.command()
def evaluate(run_dir: Path = typer.Argument(..., help="A finished run folder."),
             data: Optional[Path] = typer.Option(None, "--data",
                                                 help="A labelled file; default: the run's test report."),
             output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                   help="Write the metrics as JSON here.")) -> None:
    """Metrics of a run's model on a labelled file (same columns as in training), computed in fp32 as the
    run's own test report was; macro-F1 averages over the labels present in the file's gold labels."""
    from .io import atomic_write_json

    try:
        _check_exists(run_dir, data)
        if data is None:
            report_path = run_dir / "report.json"
            if not report_path.exists():
                raise TunesmithError(f"{run_dir} has no report.json; pass --data FILE")
            metrics = json.loads(report_path.read_text())["test"]
        else:
            from .serving.predictor import Predictor

            metrics = Predictor.load(run_dir).evaluate(data)
    except TunesmithError as e:
        _fail(e)
    from .evaluation.report import metric_lines

    rest_in = str(output) if output else "report.json" if data is None else "write them all with -o FILE"
    for line in metric_lines("test" if data is None else str(data), metrics, rest_in):
        Console().print(escape(line), soft_wrap=True)
    if output:
        atomic_write_json(output, metrics)


@app.command()
def predict(run_dir: Path = typer.Argument(..., help="A finished run folder."),
            input: Optional[Path] = typer.Argument(None, help="A file to predict, read by its own extension: .txt "
                                                   "(one text per line, for tasks that read one text), .jsonl/.json, "
                                                   ".csv/.tsv, .parquet (a column per role), .conll (tokens)."),
            output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output .jsonl (or .csv/.tsv); "
                                                  "needed with an input file."),
            text: Optional[str] = typer.Option(None, "--text", help="Predict one text (a prompt for text "
                                               "generation) and print the record as JSON."),
            field: list[str] = typer.Option([], "--field", metavar="ROLE=VALUE",
                                            help="Predict one record given role by role (repeatable), e.g. "
                                                 "--field question='...' --field context='...'; with --text, "
                                                 "the other roles (--field text_pair='...')."),
            column: list[str] = typer.Option([], "--column", metavar="ROLE=COLUMN",
                                             help="Read a role from this column of the input file (repeatable); "
                                                  "default: the column training read, else the role's name."),
            format: Optional[str] = typer.Option(None, "--format",
                                                 help="Read the input as txt, jsonl, json, csv, tsv, parquet or "
                                                      "conll whatever its extension."),
            batch_size: Optional[int] = typer.Option(None, help="Default: the run's eval.batch_size."),
            set_: list[str] = typer.Option([], "--set", metavar="task.OPTION=VALUE",
                                           help="A decoding option of a task that generates, over the run's own "
                                                "(repeatable); an option the task lacks is refused with the list "
                                                "of its decoding options (README: each task's)."),
            explain: bool = typer.Option(False, "--explain",
                                         help="With --text / --field: print the prediction with its token "
                                              "attributions (integrated gradients, per word)."),
            target: Optional[str] = typer.Option(None, "--target",
                                                 help="With --explain: the label to explain (default: the "
                                                      "predicted one)."),
            steps: Optional[int] = typer.Option(None, "--steps", min=1,
                                                help="With --explain: integration steps (default 50).")) -> None:
    """Predict every row of a file (or one --text / --field record): the input row unchanged plus the prediction.

    A .txt file holds one text per line (blank lines are skipped; each record keeps its line number) and
    works for every task that reads one text. JSONL output adds one key, `tunesmith` ({line, prediction});
    CSV/TSV adds `input_line` and a `pred_*` column per key of the prediction record (a record {label, score,
    probs} gives `pred_label`, `pred_score` and one `pred_probs.<label>` per label). A name the input already
    uses gets a suffix (`tunesmith_1`); cells that a spreadsheet would run as a formula get a leading '.
    Generative tasks take their decoding options (`--set task.OPTION=VALUE`); the others refuse them. Files
    of any length are read, predicted and written in chunks; the output appears only once every row is
    written.
    """
    from .serving.inputs import (PredictInput, check_writable, command_line_record, decoding_options, input_roles,
                                 no_explanations, read_run_state, split_assignment)

    try:
        one = text is not None or bool(field)
        if (input is None) == (not one):
            raise ConfigError("give an input file (with -o), or --text / --field, not both and not neither")
        if input is not None and output is None:
            raise ConfigError("an input file needs -o/--output: where to write the predictions")
        if one and (column or format):
            raise ConfigError("--column and --format are for an input file, not --text / --field")
        if (explain or target or steps) and not one:
            raise ConfigError("--explain (and --target, --steps) explain one record: give --text / --field")
        if (target or steps) and not explain:
            raise ConfigError("--target and --steps are options of --explain")
        _check_exists(run_dir, input)
        # the task, the roles and the file's columns are checked before the model loads (seconds)
        state = read_run_state(run_dir)
        inputs = input_roles(state.task)
        decoding = decoding_options(state.task, set_)  # checked before the model loads
        if explain and not state.task.explains:
            raise no_explanations(state.task)
        if one:
            record = command_line_record(inputs, text, field)
        else:
            columns = dict(split_assignment(c, "--column", "COLUMN") for c in column)
            source = PredictInput(input, state.cfg, inputs, format, columns)
            check_writable(output)
        from .serving.predictor import Predictor

        predictor = Predictor.load(run_dir)
        predictor.set_decoding(**decoding)
        if one:
            out = predictor.explain(record, target, steps) if explain else predictor.predict(record)
            typer.echo(json.dumps(out, ensure_ascii=False))
            return
        n = predictor.predict_file(source, output, batch_size)
    except TunesmithError as e:
        _fail(e)
    except KeyboardInterrupt:
        _say("interrupted" + (f"; {output} was not written (it appears only once every row is predicted)"
                              if output else ""))
        raise typer.Exit(130)
    except Exception as e:  # a bug, not a user error: still one message and exit code 2, never a traceback
        _fail(TunesmithError(f"predict failed ({type(e).__name__}: {printable(str(e))}); this is a bug in "
                             "tunesmith, please report it with the command you ran"))
    console.print(f"wrote {n} predictions to {escape(printable(output))}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A finished run folder, or a search study's folder."),
           explain: bool = typer.Option(True, "--explain/--no-explain",
                                        help="Shade the worst errors by their explanations (loads the model).")
           ) -> None:
    """Write the run's report.html again (a self-contained page: what was trained, the data, learning curves,
    metrics, the worst errors, the first eval.explain_errors of them shaded by their explanations); for a
    search study's folder, its leaderboard.html."""
    from .evaluation.html import write_leaderboard, write_report

    try:
        _check_exists(run_dir)
        if (run_dir / "leaderboard.json").exists():
            console.print(f"wrote {escape(printable(write_leaderboard(run_dir)))}")
            return
        predictor = None
        if explain:
            from .serving.predictor import Predictor

            predictor = Predictor.load(run_dir)
        path = write_report(run_dir, predictor, predictor.cfg.eval.explain_errors if predictor else 0)
    except TunesmithError as e:
        _fail(e)
    console.print(f"wrote {escape(printable(path))}")


@app.command()
def export(run_dir: Path = typer.Argument(..., help="A finished run folder."),
           format: str = typer.Option("onnx", "--format", help="The one format: onnx."),
           quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: also a dynamically quantized "
                                                                           "copy (model.int8.onnx).")) -> None:
    """Export the run's model to RUN_DIR/onnx/ for ONNX Runtime (the tasks whose model is one graph; a task
    without an export says which have one), checked against PyTorch on the run's test inputs (onnx/onnx.json
    says how closely). `tunesmith serve RUN_DIR --backend onnx` (or onnx-int8) serves it."""
    try:
        _check_exists(run_dir)
        if format != "onnx":
            raise ConfigError(f"--format {format!r}: the one export format is onnx")
        from .export import export_onnx, summary_lines

        manifest = export_onnx(run_dir, quantize)
    except TunesmithError as e:
        _fail(e)
    for line in summary_lines(manifest):
        console.print(escape(line))
    console.print(f"wrote {escape(printable(run_dir / 'onnx'))}")


@app.command()
def serve(run_dir: Path = typer.Argument(..., help="A finished run folder."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
          port: int = typer.Option(8000, help="Port to listen on."),
          workers: int = typer.Option(1, min=1, help="Server processes, each with its own copy of the model."),
          device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: cuda when there "
                                                           "is one)."),
          backend: str = typer.Option("pytorch", help="pytorch, or onnx / onnx-int8 (after `tunesmith export`)."),
          max_batch_size: int = typer.Option(32, min=1, help="Records run together at most (1: no batching)."),
          max_wait_ms: float = typer.Option(5.0, min=0, help="How long the first waiting request waits for "
                                                             "others to join its batch."),
          max_queue: int = typer.Option(1024, min=1, help="Records waiting at most; beyond, requests get 503."),
          max_records: int = typer.Option(256, min=1, help="Records in one request at most (413 beyond)."),
          max_body_bytes: int = typer.Option(1_000_000, min=1, help="Request body size at most (413 beyond)."),
          max_text_chars: int = typer.Option(20_000, min=1, help="Characters of one text at most (413 beyond)."),
          access_log: Optional[Path] = typer.Option(None, help="Write the JSON access log here (default: stderr).")
          ) -> None:
    """Serve a run's model over HTTP: POST /predict and /explain, GET /health and /metadata, docs at /docs.

    Requests that arrive within --max-wait-ms of each other run as one batch (sorted by length, long inputs
    windowed as `predict` windows them); a served answer is the record `tunesmith predict` gives. Every
    request writes one JSON line to the access log (status, latency, batch size).
    """
    from .serving.inputs import read_run_state
    from .serving.server import ServeOptions, serve as run_server

    try:
        _check_exists(run_dir)
        read_run_state(run_dir)
    except TunesmithError as e:
        _fail(e)
    options = ServeOptions(run_dir=str(run_dir), device=device, backend=backend, max_batch_size=max_batch_size,
                           max_wait_ms=max_wait_ms, max_queue=max_queue, max_records=max_records,
                           max_body_bytes=max_body_bytes, max_text_chars=max_text_chars,
                           access_log_file=str(access_log) if access_log else None)
    try:
        run_server(options, host, port, workers)
    except TunesmithError as e:
        _fail(e)


@app.command()
def init(data: Path = typer.Option(..., "--data", help="A training data file to inspect."),
         output: Path = typer.Option(Path("tunesmith.yaml"), "-o", "--output", help="Where to write the config."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing config.")) -> None:
    """Write a starter config for a data file: the task (from the file's shape) and its columns, each guess
    said with its reason."""
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
        console.print(f"- {escape(printable(n))}")
    console.print(escape(printable(f"wrote {output}; check it, then run: tunesmith train {output}")))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
