"""What prediction reads, checked before the model loads: the run's config and task, the input file's
format (its own extension, or --format), the column of each input role, and the records in chunks.

Nothing here imports torch or transformers: `tunesmith predict` reports a wrong column, format or role in
about a second instead of after the model has loaded, and a file of any length is read in bounded memory.
"""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from ..config import DataConfig, RunConfig
from ..data.prepare import configured_columns
from ..data.readers import DELIMITED, EXTENSIONS, Record, iter_records
from ..errors import ConfigError, DataError, ModelError
from ..io import STATE_FILE, nearest_existing
from ..tasks.base import Task, get_task, task_class, task_names
from ..types import Role

FORMATS = {**EXTENSIONS, ".txt": "txt", ".text": "txt"}  # a prediction input's format by its extension
FORMAT_NAMES = sorted(set(FORMATS.values()))
CHUNK_ROWS = 4096  # records read, predicted and written at a time: memory does not grow with the file


@dataclass
class RunState:
    """A run's exported model folder and what its state file says (config, task state, file hashes)."""

    model_dir: Path
    saved: dict
    cfg: RunConfig
    task: Task


def read_run_state(run_dir: str | Path) -> RunState:
    """The state of a run folder or its `model/` folder (both hold everything prediction needs), without
    loading the model; a folder that is not a finished run, or a damaged state file, is a clear error."""
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
    return RunState(model_dir, saved, cfg, task)


def input_roles(task: Task) -> list[Role]:
    """The roles a prediction reads: every role that is not gold data."""
    return [r for r in task.roles() if not r.target]


def string_role(inputs: list[Role]) -> Role | None:
    """The role one plain text fills (a `--text`, a line of a .txt file, a string given to `predict`): the
    task's bare role, else its one required text input, else its only text input; None when the task needs
    several (question answering: a question and a context)."""
    strings = [r for r in inputs if r.kind == "string"]
    bare = [r for r in strings if r.bare]
    if bare:
        return bare[0]
    required = [r for r in strings if r.required]
    if len(required) == 1 or (not required and len(strings) == 1):
        return (required or strings)[0]
    return None


def describe_roles(inputs: list[Role]) -> str:
    """'question, context (optional: id)': what a task reads, for messages."""
    required = [r.name for r in inputs if r.required]
    optional = [r.name for r in inputs if not r.required]
    if not required:
        return f"one or more of {', '.join(optional)}"
    return ", ".join(required) + (f" (optional: {', '.join(optional)})" if optional else "")


def _role_value(role: Role, value: str, flag: str) -> Any:
    """A command-line value for a role: text as given; a list or object role (tokens, messages) as JSON."""
    if role.kind == "string":
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{flag} {role.name}=...: {role.name} is not text but JSON ({e.msg}), e.g. "
                          f"{flag} {role.name}='[\"New\", \"York\"]'") from None


def split_assignment(item: str, flag: str, what: str) -> tuple[str, str]:
    """`role=value` of a repeatable option (`--field`, `--column`)."""
    role, sep, value = item.partition("=")
    if not sep or not role.strip():
        raise ConfigError(f"{flag} expects ROLE={what}, got {item!r}")
    return role.strip(), value


def check_role_names(given: list[str], inputs: list[Role], flag: str) -> None:
    names = [r.name for r in inputs]
    for name in given:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            raise ConfigError(f"{flag} {name}=...: this task has no input role '{name}'."
                              + (f" Did you mean '{close[0]}'?" if close else "")
                              + f" It reads {describe_roles(inputs)}")


def command_line_record(inputs: list[Role], text: str | None, fields: list[str]) -> dict:
    """The record `tunesmith predict --text ... --field ROLE=VALUE ...` asks for, checked against the task's
    roles: --text fills the role one text fills, each --field one role (question answering:
    --field question=... --field context=...)."""
    record: dict[str, Any] = {}
    by_name = {r.name: r for r in inputs}
    for item in fields:
        name, value = split_assignment(item, "--field", "VALUE")
        check_role_names([name], inputs, "--field")
        if name in record:
            raise ConfigError(f"--field {name}=... is given twice")
        record[name] = _role_value(by_name[name], value, "--field")
    example = " ".join(f"--field {r.name}='...'" for r in inputs if r.required)
    if text is not None:
        role = string_role(inputs)
        if role is None:
            raise ConfigError(f"this task reads {describe_roles(inputs)}: one --text cannot fill them. Give each "
                              f"with --field ROLE=VALUE ({example}), or predict a JSONL file of records such as "
                              + json.dumps({r.name: "..." for r in inputs if r.required}))
        if role.name in record:
            raise ConfigError(f"--text and --field {role.name}=... both give {role.name}: give one")
        record[role.name] = text
    if not record:
        raise ConfigError("give an input file (with -o), --text or --field ROLE=VALUE")
    missing = [r.name for r in inputs if r.required and r.name not in record]
    if missing:
        raise ConfigError(f"{missing[0]} is missing: this task reads {describe_roles(inputs)}; add "
                          f"--field {missing[0]}='...'" + (f" (e.g. {example})" if example else ""))
    return record


def input_format(path: Path, fmt: str | None) -> str:
    """A prediction input's format: `fmt` when given, else its own extension (never the training data's
    format: a run trained on CoNLL predicts a .jsonl file as JSON Lines)."""
    if fmt is not None:
        if fmt not in FORMAT_NAMES:
            raise ConfigError(f"--format {fmt}: not a format; use one of {', '.join(FORMAT_NAMES)}")
        return fmt
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1].lower() if suffixes else ""
    if ext not in FORMATS:
        raise DataError(f"cannot tell the format from the extension '{ext or '(none)'}'", file=str(path),
                        hint=f"name the file {', '.join(sorted(FORMATS))}, or pass --format "
                             f"({', '.join(FORMAT_NAMES)})")
    return FORMATS[ext]


def input_columns(name: str, fmt: str, records: list[Record], data: DataConfig, inputs: list[Role],
                  overrides: dict[str, str]) -> dict[str, str]:
    """Role -> column of a file to predict: the `--column` mapping, else the column training read the role
    from, else the role's own names. A .txt file's one text fills the role a plain text fills. A missing
    role is a DataError that lists the file's columns and says how to map one."""
    check_role_names(list(overrides), inputs, "--column")
    if fmt == "txt":
        role = string_role(inputs)
        if role is None:
            raise DataError(f"a .txt file holds one text per line, but this task reads {describe_roles(inputs)}",
                            file=name, hint="predict a .jsonl or .csv file with a column for each of them")
        return {role.name: "text"}
    present = list(dict.fromkeys(k for _, row in records for k in row))
    shown = ", ".join(map(str, present)) or "none"
    trained = {role: col for role, (col, _) in configured_columns(data, inputs).items()}
    out: dict[str, str] = {}
    for role in inputs:
        if role.name in overrides:
            col = overrides[role.name]
            if col not in present:
                raise DataError(f"--column {role.name}={col}: the file has no column '{col}'; its columns: {shown}",
                                file=name, column=col)
            out[role.name] = col
            continue
        col = next((c for c in (trained.get(role.name), *role.candidates) if c is not None and c in present), None)
        if col is not None:
            out[role.name] = col
    lacking = next((r for r in inputs if r.required and r.name not in out), None)
    if lacking is None and out:
        return out
    role = lacking or string_role(inputs) or inputs[0]  # no role at all: the one a plain text fills
    wanted = trained.get(role.name) or role.candidates[0]
    spare = [str(c) for c in present if c not in out.values()]
    close = difflib.get_close_matches(str(wanted), spare, n=1, cutoff=0.4)
    guess = close[0] if close else max(spare, key=lambda c: _text_length(records, c), default="COLUMN")
    raise DataError(f"no column for {'role ' + role.name if lacking else 'any input role'}: this task reads "
                    f"{describe_roles(inputs)}, the file has columns: {shown}", file=name, column=str(wanted),
                    hint=f"name the column to read it from: --column {role.name}={guess}")


def _text_length(records: list[Record], column: str) -> int:
    """Characters of text a column holds over `records`: the likeliest text column is the wordiest."""
    return sum(len(v) for _, row in records if isinstance(v := row.get(column), str))


class PredictInput:
    """A file to predict: its format, the column of each input role (checked on opening, from the first
    chunk), its input keys, and its records `chunk_rows` at a time."""

    def __init__(self, path: str | Path, cfg: RunConfig, inputs: list[Role], fmt: str | None = None,
                 columns: dict[str, str] | None = None, chunk_rows: int = CHUNK_ROWS) -> None:
        self.path, self.cfg, self.chunk_rows = Path(path), cfg, chunk_rows
        self.format = input_format(self.path, fmt)
        self._records = self._read()
        self._first: list[Record] | None = list(islice(self._records, chunk_rows))
        self.columns = input_columns(str(self.path), self.format, self._first, cfg.data, inputs, columns or {})

    def _read(self) -> Iterator[Record]:
        d = self.cfg.data
        header = d.header is not False if self.format in DELIMITED else True
        return iter_records(self.path, self.format, header=header, column_names=d.column_names,
                            conll_tag_column=d.conll_tag_column)

    def chunks(self) -> Iterator[list[Record]]:
        """The records, `chunk_rows` at a time, in file order (the file is read once, as they are asked for)."""
        if self._first is None:
            raise RuntimeError("PredictInput.chunks() reads the file once")
        chunk, self._first = self._first, None
        while chunk:
            yield chunk
            chunk = list(islice(self._records, self.chunk_rows))

    def keys(self) -> list[str]:
        """Every key of the input rows, in first-seen order: output column names must not clash with any,
        and CSV output has a column for each. A header (CSV/TSV), a Parquet schema, a .txt or CoNLL file
        gives every row the first row's keys; JSON rows may differ, so they are read once more for their keys
        alone (bounded memory: only the names are kept)."""
        first = self._first if self._first is not None else []
        keys = dict.fromkeys(k for _, row in first for k in row)
        if self.format in ("json", "jsonl"):
            for _, row in self._read():
                keys.update(dict.fromkeys(row))
        return list(keys)


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


def check_decoding(task: Task, name: str | None, value: Any, given: str) -> None:
    """A decoding option for predictions (`given`: how the user wrote it, for the message): one of the task's
    declared `decoding` options, with a value its options schema accepts; else a ConfigError."""
    from pydantic import ValidationError

    if name not in task.decoding:
        there = (f"its decoding options are {', '.join(f'task.{k}' for k in task.decoding)}" if task.decoding
                 else "it does not generate text, so it has none")
        raise ConfigError(f"{given}: not a decoding option of the {task.name} task; {there}")
    try:
        type(task).Options.__pydantic_validator__.validate_assignment(task.opts.model_copy(), name, value)
    except ValidationError as e:
        raise ConfigError(f"{given}: {e.errors()[0]['msg']}") from None


def decoding_options(task: Task, items: list[str], flag: str = "--set") -> dict[str, Any]:
    """`task.OPTION=VALUE` items, parsed as the config's overrides are -> {OPTION: value}, each checked."""
    from ..config import parse_override

    out: dict[str, Any] = {}
    for item in items:
        keys, value = parse_override(item, flag)
        name = keys[1] if len(keys) == 2 and keys[0] == "task" else None
        check_decoding(task, name, value, f"{flag} {item}")
        out[name] = value
    return out


def no_explanations(task: Task) -> ConfigError:
    """The error for explaining a task that does not declare `explains`, naming the tasks that do."""
    those = ", ".join(n for n in task_names() if task_class(n).explains and task_class(n).name == n)
    return ConfigError(f"the {task.name} task has no explanations; these tasks have: {those}")
