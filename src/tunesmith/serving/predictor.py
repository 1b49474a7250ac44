"""One Predictor for Python, `tunesmith predict`, `tunesmith evaluate` and (later) the server.

Importing it loads neither the training loop nor matplotlib: `tunesmith.load()` in a notebook changes
nothing about the user's plotting and costs only what prediction needs.
"""
from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import RunConfig
from ..console import quiet_libraries
from ..data.prepare import Table, check_kind, load_splits, read_configured, resolve_columns
from ..data.readers import is_missing
from ..errors import ConfigError, DataError, ModelError
from ..evaluation.inference import PRECISION, evaluate_split
from ..io import atomic_write_jsonl, atomic_write_text, mismatched_files, nearest_existing
from ..models import STATE_FILE, check_no_remote_code
from ..tasks.base import Role, Task, get_task


_DECODING = ("max_new_tokens", "do_sample", "temperature", "top_p", "num_beams", "length_penalty",
             "no_repeat_ngram_size")


class Predictor:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, task: Task, cfg: RunConfig,
                 device: torch.device | None = None) -> None:
        self.model, self.tokenizer, self.task, self.cfg = model, tokenizer, task, cfg
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.inputs: list[Role] = [r for r in task.roles() if not r.target]

    @classmethod
    @quiet_libraries()
    def load(cls, run_dir: str | Path, device: str | None = None) -> "Predictor":
        """Load from a run folder or its `model/` folder (both hold everything prediction needs).

        The folder is checked against the file hashes recorded at export before anything loads:
        transformers quietly substitutes what it cannot find (a missing tokenizer.json falls back
        to another vocabulary), which gives wrong predictions instead of an error.
        """
        from transformers import AutoTokenizer

        root = Path(run_dir)
        model_dir = root / "model" if (root / "model" / STATE_FILE).exists() else root
        state_path = model_dir / STATE_FILE
        if not state_path.exists():
            raise ConfigError(f"{root} is not a tunesmith run folder (no model/{STATE_FILE}); "
                              "has training finished?")
        try:
            saved = json.loads(state_path.read_text(encoding="utf-8"))
            cfg = RunConfig.model_validate(saved["config"])
            task = get_task(cfg, saved["task"])
        except (ValueError, KeyError, TypeError) as e:  # JSON, UTF-8 and validation errors are ValueErrors
            raise ModelError(f"{state_path} is damaged and cannot be read ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); copy the model folder again "
                             "from the run, or train again") from None
        check_model_files(model_dir, saved.get("files"))
        check_no_remote_code(model_dir)
        try:  # never the folder's own code, whatever its files or its config's model.trust_remote_code say
            tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
            model = task.load_model(str(model_dir), trust_remote_code=False)
        except Exception as e:
            raise ModelError(f"cannot load the model in {model_dir}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None
        return cls(model, tokenizer, task, cfg, torch.device(device) if device else None)

    def set_generation(self, **options: Any) -> None:
        """Decoding options for the predictions that follow (max_new_tokens, do_sample, temperature, top_p,
        num_beams), over the run's task options; a task that does not generate text refuses them."""
        if not self.task.generates:
            raise ConfigError(f"{self.task.name} does not generate text: decoding options do not apply")
        allowed = type(self.task).Options.model_fields
        unknown = [k for k in options if k not in allowed]
        if unknown:
            raise ConfigError(f"{self.task.name} has no decoding option {unknown[0]} "
                              f"(it has {', '.join(k for k in allowed if k in _DECODING)})")
        self.task.generation = {**self.task.generation, **options}

    def _string_role(self) -> Role:
        """The role a bare string fills: the one required text input, or the only text input."""
        strings = [r for r in self.inputs if r.kind == "string"]
        bare = [r for r in strings if r.bare]
        if bare:
            return bare[0]
        required = [r for r in strings if r.required]
        if len(required) == 1 or (not required and len(strings) == 1):
            return (required or strings)[0]
        raise TypeError(f"this task reads {', '.join(r.name for r in self.inputs)}: pass a record such as "
                        + json.dumps({r.name: "..." for r in self.inputs if r.required}) + ", not a string")

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
        records = [{self._string_role().name: x} if isinstance(x, str) else x for x in items]
        if not all(isinstance(r, dict) for r in records):
            raise TypeError("predict() takes strings or records (dicts of the task's roles)")
        preds = self._predict_table(self._table(records), batch_size)
        return preds[0] if single else preds

    def _predict_table(self, table: Table, batch_size: int | None) -> list[dict]:
        features = self.task.preprocess(table, self.tokenizer)
        result, _ = evaluate_split(self.model, self.task, table, features, batch_size or self.cfg.eval.batch_size,
                                   self.device)
        return result.predictions

    def predict_file(self, path: str | Path, output: str | Path, batch_size: int | None = None) -> int:
        """Predict every row of a data file; write JSONL (or CSV/TSV by extension) with inputs and outputs.

        The roles are read from the columns training used. Input rows are kept unchanged: what
        tunesmith adds goes under its own names (JSONL: one `tunesmith` object holding `line` and the
        `prediction` record; CSV: `input_line` and `pred_*` columns), renamed if the input uses them.
        """
        path, output = Path(path), Path(output)
        check_writable(output)  # before the predictions, which may take long
        records = read_configured(path, self.cfg.data)
        columns = resolve_columns(str(path), records, self.cfg.data, self.task.roles(), needs_targets=False)
        lines, rows = [ln for ln, _ in records], [r for _, r in records]
        preds = self._predict_table(self._table(rows, str(path), lines, columns), batch_size)
        suffix = output.suffix.lower()
        try:
            if suffix in (".csv", ".tsv"):
                atomic_write_text(output, csv_text(rows, lines, preds, "\t" if suffix == ".tsv" else ","))
            else:
                key = free_name("tunesmith", set().union(*rows))
                atomic_write_jsonl(output, ({**r, key: {"line": ln, "prediction": p}}
                                            for ln, r, p in zip(lines, rows, preds)))
        except OSError as e:
            raise ConfigError(f"cannot write predictions to {output}: {e.strerror or e}") from None
        return len(rows)

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


def check_writable(output: Path) -> None:
    """Fail before predicting when the output cannot be written (a folder, or under a file or read-only folder)."""
    if output.is_dir():
        raise ConfigError(f"cannot write predictions to {output}: it is a folder; name a file such as "
                          f"{output / 'predictions.jsonl'}")
    parent = nearest_existing(output.parent)
    if not parent.is_dir():
        raise ConfigError(f"cannot write predictions to {output}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write predictions to {output}: the folder {parent} is not writable")


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


def csv_text(rows: list[dict], lines: list[int], preds: list[dict], delimiter: str) -> str:
    """CSV/TSV: the input columns (union of every row's keys, first-seen order), then `input_line` and
    the prediction record flattened (`flat_record`), each renamed when the input already has a column of
    that name."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    taken = set(columns)
    flat = [{"input_line": ln, **flat_record(p)} for ln, p in zip(lines, preds)]
    added: dict[str, str] = {}  # our column -> its name in the file
    for f in flat:
        for key in f:
            if key not in added:
                added[key] = free_name(key, taken)
                taken.add(added[key])
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow([safe_cell(c) for c in columns + list(added.values())])
    for r, f in zip(rows, flat):
        writer.writerow([safe_cell(r.get(c, "")) for c in columns] + [safe_cell(f.get(key, "")) for key in added])
    return buf.getvalue()
