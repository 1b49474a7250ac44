"""One Predictor for Python, `tunesmith predict`, `tunesmith evaluate` and (later) the server.

Importing it loads neither the training loop nor matplotlib: `tunesmith.load()` in a notebook changes
nothing about the user's plotting and costs only what prediction needs.
"""
from __future__ import annotations

import csv
import difflib
import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import torch

from ..config import RunConfig
from ..console import quiet_libraries
from ..data.prepare import check_kind, load_splits
from ..data.readers import is_missing
from ..errors import ConfigError, DataError, ModelError
from ..evaluation.inference import PRECISION, evaluate_split
from ..io import STATE_FILE, atomic_writer, json_text, mismatched_files
from ..models import check_no_remote_code
from ..tasks.base import Task
from ..types import Role, Table
from .inputs import (CHUNK_ROWS, PredictInput, check_decoding, check_writable, input_roles, no_explanations,
                     read_run_state, string_role)


BACKENDS = ("pytorch", "onnx", "onnx-int8")


class Predictor:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, task: Task, cfg: RunConfig,
                 device: torch.device | None = None) -> None:
        self.model, self.tokenizer, self.task, self.cfg = model, tokenizer, task, cfg
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.inputs: list[Role] = input_roles(task)
        self.model_dir: Path | None = None  #: the exported folder it was loaded from (`load`)

    @classmethod
    @quiet_libraries()
    def load(cls, run_dir: str | Path, device: str | None = None, backend: str = "pytorch") -> "Predictor":
        """Load from a run folder or its `model/` folder (both hold everything prediction needs).
        `backend` "onnx" (or "onnx-int8") runs the run's ONNX export (`tunesmith export`) instead of PyTorch.

        The folder is checked against the file hashes recorded at export before anything loads:
        transformers quietly substitutes what it cannot find (a missing tokenizer.json falls back
        to another vocabulary), which gives wrong predictions instead of an error.
        """
        from transformers import AutoTokenizer

        state = read_run_state(run_dir)
        model_dir, saved, cfg, task = state.model_dir, state.saved, state.cfg, state.task
        check_model_files(model_dir, saved.get("files"))
        check_no_remote_code(model_dir)
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if backend != "pytorch":
            from .onnx_backend import OnnxModel, onnx_file

            exported = onnx_file(model_dir.parent if model_dir.name == "model" else model_dir,
                                 quantized=backend == "onnx-int8")
            device = device or "cpu"
        try:  # never the folder's own code, whatever its files or its config's model.trust_remote_code say
            tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
            model = task.load_model(str(model_dir), trust_remote_code=False)[0] if backend == "pytorch" \
                else OnnxModel(exported)
        except Exception as e:
            raise ModelError(f"cannot load the model in {model_dir}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None
        predictor = cls(model, tokenizer, task, cfg, torch.device(device) if device else None)
        predictor.model_dir = model_dir
        return predictor

    def set_decoding(self, **options: Any) -> None:
        """Decoding options (the task's `decoding` declares them) for the predictions that follow, over the
        run's own; an option the task does not declare, or a value its schema refuses, is a ConfigError."""
        for name, value in options.items():
            check_decoding(self.task, name, value, f"{name}={value!r}")
        for name, value in options.items():
            setattr(self.task.opts, name, value)

    def _string_role(self) -> Role:
        """The role a bare string fills (`inputs.string_role`); a task that reads several needs records."""
        role = string_role(self.inputs)
        if role is None:
            raise TypeError(f"this task reads {', '.join(r.name for r in self.inputs)}: pass a record such as "
                            + json.dumps({r.name: "..." for r in self.inputs if r.required}) + ", not a string")
        return role

    def _table(self, records: list[dict], source: str = "input", lines: list[int] | None = None,
               columns: dict[str, str] | None = None) -> Table:
        """A Table of the task's input roles; a missing or malformed value names the record (or file row)."""
        names = [r.name for r in self.inputs]
        columns = columns or {}
        lines = lines or list(range(1, len(records) + 1))
        if not columns:
            for ln, rec in zip(lines, records):
                for key in rec:
                    if key not in names:
                        close = difflib.get_close_matches(str(key), names, n=1)
                        raise DataError(f"unknown role '{key}'" + (f"; did you mean '{close[0]}'?" if close else "")
                                        + f" (this task reads {', '.join(names)})", file=source, line=ln)
            present = {k for rec in records for k in rec}
            columns = {r.name: r.name for r in self.inputs if r.name in present}
        t = Table({role: [] for role in columns}, [], [], dict(columns))
        for ln, rec in zip(lines, records):
            for role in self.inputs:
                col = columns.get(role.name)
                if col is None:
                    if role.required:
                        raise DataError(f"{role.name} is missing: this task reads {', '.join(names)}",
                                        file=source, line=ln, column=role.name)
                    continue
                v = rec.get(col)
                if role.may_be_empty and is_missing(v):
                    v = ""
                elif is_missing(v):
                    raise DataError(f"empty {role.name}: nothing to predict", file=source, line=ln, column=col,
                                    hint="remove the row or fill it in")
                t.columns[role.name].append(check_kind(role, v, self.cfg.data, source, ln, col))
            t.file.append(source)
            t.line.append(ln)
        return t

    def predict(self, inputs: str | dict | Sequence[str | dict], text_pairs: Sequence[str] | None = None,
                batch_size: int | None = None) -> dict | list[dict]:
        """Prediction records, one per input, in input order (batches are sorted by length internally).

        An input is a record of the task's roles ({"question": ..., "context": ...}) or, for tasks that
        read one text, a string. One input gives one record; a list gives a list. `text_pairs`: second
        texts of sentence pairs, beside a list of strings.
        """
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else list(inputs)
        if text_pairs is not None:
            if len(text_pairs) != len(items):
                raise ValueError(f"{len(items)} inputs but {len(text_pairs)} text_pairs")
            items = [{"text": a, "text_pair": b} for a, b in zip(items, text_pairs)]
        if not items:
            return []
        preds = self.predict_table(self._table(self.records(items)), batch_size)
        return preds[0] if single else preds

    def records(self, items: Sequence[str | dict]) -> list[dict]:
        """Records of the task's roles: a string fills the role a plain text fills (`inputs.string_role`)."""
        records = [{self._string_role().name: x} if isinstance(x, str) else x for x in items]
        if not all(isinstance(r, dict) for r in records):
            raise TypeError("predict() takes strings or records (dicts of the task's roles)")
        return records

    def check(self, records: list[dict], source: str = "input") -> None:
        """Raise the DataError `predict` would for the first bad record (its line is its 1-based position)
        without running the model: a server refuses one bad request before it joins a batch."""
        self._table(records, source)

    def explain(self, inputs: str | dict, target: str | None = None, steps: int | None = None) -> dict[str, Any]:
        """Why the model predicts what it does for one input: {"prediction": the record `predict` gives, then
        the attributions (`tunesmith.attribution`): per explained output (a label; an entity; the answer's
        start and end), each word's share with its character offsets, and Captum's convergence delta}.
        `target`: the label to explain instead of the predicted one; `steps`: integration steps."""
        from ..attribution import DEFAULT_STEPS

        if not self.task.explains:
            raise no_explanations(self.task)
        table = self._table(self.records([inputs]))
        prediction = self.predict_table(table, None)[0]
        record = {role: values[0] for role, values in table.columns.items()}
        with torch.enable_grad():
            explanation = self.task.explain(self.model, self.tokenizer, record, prediction, target,
                                            steps or DEFAULT_STEPS)
        return {"prediction": prediction, **explanation}

    def stream(self, inputs: str | dict, on_text: Callable[[str], None]) -> dict:
        """Generate for one input of a task that generates, calling `on_text` with each piece of text as it is
        decoded (a word or so: the streamer holds back a word until it is whole), and return the record that
        `predict` gives for it (its text is the pieces joined, without surrounding whitespace). Beam search
        keeps several candidates until the end, so it cannot stream: `num_beams` must be 1."""
        from transformers import TextStreamer

        if not self.task.generates:
            raise ConfigError(f"{self.task.name} does not generate text: there is nothing to stream; use predict")
        beams = self.task.generation_config(self.model).num_beams or 1
        if beams > 1:
            raise ConfigError(f"num_beams is {beams}: beam search keeps {beams} candidates until it ends, so it "
                              "cannot stream; set num_beams to 1 to stream, or use predict")

        class Pieces(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    on_text(text)

        table = self._table(self.records([inputs]))
        self.task.streamer = Pieces(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        try:
            return self.predict_table(table, 1)[0]
        finally:
            self.task.streamer = None

    def predict_table(self, table: Table, batch_size: int | None = None) -> list[dict]:
        """Prediction records of a Table of the task's input roles (as `_table` or the data readers make)."""
        features = self.task.preprocess(table, self.tokenizer)
        result, _ = evaluate_split(self.model, self.task, table, features, batch_size or self.cfg.eval.batch_size,
                                   self.device)
        return result.predictions

    def predict_file(self, path: str | Path | PredictInput, output: str | Path, batch_size: int | None = None, *,
                     format: str | None = None, columns: dict[str, str] | None = None,
                     chunk_rows: int = CHUNK_ROWS) -> int:
        """Predict every row of a data file; write JSONL (or CSV/TSV by extension) with inputs and outputs.

        The input is read by its own extension (or `format`: txt, jsonl, json, csv, tsv, parquet, conll);
        each role comes from `columns` ({role: column}), else the column training used, else the role's
        own names. Input rows are kept unchanged: what tunesmith adds goes under its own names (JSONL: one
        `tunesmith` object holding `line` and the `prediction` record; CSV: `input_line` and `pred_*`
        columns), renamed if the input uses them. Rows are read, predicted and written `chunk_rows` at a
        time, so memory does not grow with the file; the output appears (renamed from a temp file) only
        when every row is written. Returns the number of rows predicted. `path` may be a `PredictInput`
        already opened (the CLI opens it to check the columns before the model loads): it is used as it is.
        """
        source = path if isinstance(path, PredictInput) else PredictInput(path, self.cfg, self.inputs, format,
                                                                          columns, chunk_rows)
        output = Path(output)
        check_writable(output)  # before the predictions, which may take long
        suffix = output.suffix.lower()
        keys = source.keys()
        n = 0
        try:
            with atomic_writer(output) as f:
                out = (CsvPredictions(f, keys, "\t" if suffix == ".tsv" else ",", str(source.path))
                       if suffix in (".csv", ".tsv") else JsonlPredictions(f, keys))
                for chunk in source.chunks():
                    lines, rows = [ln for ln, _ in chunk], [r for _, r in chunk]
                    preds = self.predict_table(self._table(rows, str(source.path), lines, source.columns),
                                                batch_size)
                    out.write(lines, rows, preds)
                    f.flush()  # each chunk is in the temp file before the next one is read
                    n += len(rows)
        except OSError as e:
            raise ConfigError(f"cannot write predictions to {output}: {e.strerror or e}") from None
        return n

    def evaluate(self, path: str | Path, batch_size: int | None = None) -> dict[str, Any]:
        """Metrics on a labelled file, with the training run's columns, labels and missing-value policy."""
        data_cfg = self.cfg.data.model_copy(update={"train": str(path), "validation": None, "test": None,
                                                    "hub_dataset": None})
        loaded = load_splits(data_cfg, self.task.roles())
        table = loaded.splits["train"]
        self.task.encode("evaluation", table)
        features = self.task.preprocess(table, self.tokenizer)
        batch_size = batch_size or self.cfg.eval.batch_size
        result, loss = evaluate_split(self.model, self.task, table, features, batch_size, self.device)
        return {"rows": len(table), "dropped_rows": len(loaded.dropped), "loss": loss, **result.metrics,
                "inference": {"precision": PRECISION, "batch_size": batch_size}}


def check_model_files(model_dir: Path, files: Any) -> None:
    """Every file recorded at export is present and unchanged; a manifest without hashes checks nothing."""
    if files is None:
        raise ModelError(f"{model_dir / STATE_FILE} records no file hashes (its 'files' key is missing or null): "
                         "tunesmith loads only a model folder whose every file it can check; copy the model "
                         "folder again from the run, or train again")
    if not isinstance(files, dict):
        raise ModelError(f"{model_dir / STATE_FILE} is damaged: its 'files' entry is not a mapping")
    for name in mismatched_files(model_dir, files)[:1]:
        if not (model_dir / name).is_file():
            raise ModelError(f"the model folder {model_dir} is incomplete: {name} is missing; "
                             "copy the whole model folder again from the run")
        raise ModelError(f"{model_dir / name} has changed since training (its sha256 is not the one recorded in "
                         f"{STATE_FILE}): the file is damaged or was replaced; copy the model folder again from "
                         "the run")


def free_name(name: str, taken: set) -> str:
    """`name`, or `name_1`, `name_2`, ... whichever the input does not use: input columns are never overwritten."""
    k, candidate = 0, name
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text starting with = + - @ TAB CR gets a leading quote.

    Plain numbers such as -3 or +1.5e-3 are left as they are (a spreadsheet reads them as numbers).
    """
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def flat_record(record: dict, prefix: str = "pred_") -> dict[str, Any]:
    """A prediction record as CSV columns: `pred_<key>`, nested objects as `pred_<key>.<sub>`, lists as
    JSON text in one cell (an entity list has no fixed width)."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(flat_record(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class JsonlPredictions:
    """JSONL output: each input row unchanged plus one key (`tunesmith`, or `tunesmith_1`, ... when an input
    row has that key) holding {line, prediction}."""

    def __init__(self, f: TextIO, input_keys: list[str]) -> None:
        self.f, self.key = f, free_name("tunesmith", set(input_keys))

    def write(self, lines: list[int], rows: list[dict], preds: list[dict]) -> None:
        self.f.writelines(json_text({**r, self.key: {"line": ln, "prediction": p}}) + "\n"
                          for ln, r, p in zip(lines, rows, preds))


class CsvPredictions:
    """CSV/TSV output: the input columns (every key of the input rows, first-seen order), then `input_line`
    and the prediction record flattened (`flat_record`), each renamed when the input already has a column
    of that name. The prediction columns are those of the first chunk's records (a task's records have
    the same fields); a later record with another field is an error naming its line, never a lost value."""

    def __init__(self, f: TextIO, input_keys: list[str], delimiter: str, source: str) -> None:
        self.columns, self.source = input_keys, source
        self.writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        self.added: dict[str, str] | None = None  # our column -> its name in the file

    def write(self, lines: list[int], rows: list[dict], preds: list[dict]) -> None:
        flat = [{"input_line": ln, **flat_record(p)} for ln, p in zip(lines, preds)]
        if self.added is None:
            taken, self.added = set(self.columns), {}
            for f in flat:
                for key in f:
                    if key not in self.added:
                        self.added[key] = free_name(key, taken)
                        taken.add(self.added[key])
            self.writer.writerow([safe_cell(c) for c in self.columns + list(self.added.values())])
        for ln, r, f in zip(lines, rows, flat):
            new = next((k for k in f if k not in self.added), None)
            if new is not None:
                raise DataError(f"this row's prediction has a field '{new}' that the CSV header, made from the "
                                "first rows' predictions, has no column for", file=self.source, line=ln,
                                hint="write JSONL output (-o FILE.jsonl), which keeps every field")
            self.writer.writerow([safe_cell(r.get(c, "")) for c in self.columns]
                                 + [safe_cell(f.get(key, "")) for key in self.added])
