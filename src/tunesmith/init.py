"""`tunesmith init`: a starter config guessed from a data file, with every guess said out loud.

The task is chosen by `CLAIMS`, one rule per task tried in order, each reading the file's first rows as the
project's readers give them and the columns the task's own roles would read (`resolve_columns` over
`Task.roles()`); the first rule that claims the file gives the task and the reason printed. Text
classification takes what no other task claims.
"""
from __future__ import annotations

import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from .data.readers import (DELIMITED, Record, _read_text, detect_format, first_row_looks_like_data, is_missing,
                           looks_like_conll, read_file)
from .errors import DataError

LABEL_NAMES = ("label", "labels", "target", "class", "category", "sentiment", "y", "intent", "tag", "tags")
TEXT_NAMES = ("text", "sentence", "review", "content", "body", "document", "question", "message", "comment")
SAMPLE_ROWS = 200  # the rows a rule looks at
SUMMARY_RATIO = 0.5  # median target/source length (characters) below which source -> target is summarization
LANGUAGE = re.compile(r"[a-z]{2,3}([-_][A-Za-z]{2,4})?")  # a column named by a language code: en, de, pt_br


@dataclass
class Sample:
    """What the rules see of a data file: its path as given, its format, and its first rows."""

    path: Path
    fmt: str
    records: list[Record]
    header: bool | None = None  # CSV/TSV: whether the first row names the columns

    @property
    def rows(self) -> list[dict]:
        return [r for _, r in self.records]

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(k for r in self.rows for k in r))


@dataclass
class Claim:
    """Why a task takes the file, and role -> column of what it reads there."""

    reason: str
    columns: dict[str, str] = field(default_factory=dict)


def _roles_read(task: str, s: Sample) -> dict[str, str] | None:
    """Role -> column as `task` reads the sample (its declared roles and their column names), or None when
    a role it requires is missing."""
    from .config import RunConfig
    from .data.prepare import resolve_columns
    from .tasks.base import task_class

    cfg = RunConfig.model_validate({"task": task, "data": {"train": str(s.path), "header": s.header is not False}})
    try:
        return resolve_columns(str(s.path), s.records, cfg.data, task_class(task)(cfg).roles())
    except DataError:
        return None


def _values(s: Sample, col: str) -> list:
    return [r.get(col) for r in s.rows if not is_missing(r.get(col))]


def _token_classification(s: Sample) -> Claim | None:
    if s.fmt == "conll":
        first = next(line for line in _read_text(s.path).splitlines()
                     if line.split() and line.split()[0] != "-DOCSTART-")
        width = len(first.replace("\ufeff", " ").split())  # read_conll checks every token line has as many
        return Claim(f"{s.path} is a CoNLL column file ({width} column{'s' * (width > 1)}"
                     + (", tags in the last)" if width > 1 else ")"))
    cols = _roles_read("token-classification", s) or {}
    if "tokens" in cols and "tags" in cols and all(isinstance(v, list) for v in _values(s, cols["tags"])):
        return Claim(f"its rows hold a list of tokens ('{cols['tokens']}') and a tag per token ('{cols['tags']}')",
                     {r: cols[r] for r in ("tokens", "tags")})
    return None


def _question_answering(s: Sample) -> Claim | None:
    cols = _roles_read("question-answering", s)
    if cols is None:
        return None
    contexts = len({r.get(cols["context"]) for r in s.rows})
    shape = "a SQuAD file (\"data\" -> paragraphs -> qas)" if s.fmt == "json" else "a question-answering file"
    return Claim(f"{s.path} is {shape}: {len(s.rows)} questions over {contexts} contexts in its first rows", cols)


def _text_generation(s: Sample) -> Claim | None:
    cols = _roles_read("text-generation", s) or {}
    if "messages" in cols and all(isinstance(v, list) for v in _values(s, cols["messages"])):
        reason = f"its rows hold chats (a list of turns in '{cols['messages']}')"
    elif "instruction" in cols:
        reason = f"its rows hold instructions ('{cols['instruction']}', Alpaca style)"
    elif "prompt" in cols and "response" in cols:
        reason = f"its rows pair a prompt ('{cols['prompt']}') with a response ('{cols['response']}')"
    else:
        return None
    return Claim(reason, {r: c for r, c in cols.items() if r != "text"})


def _source_target(s: Sample) -> tuple[dict[str, str], float] | None:
    """(source and target columns, median target/source length) of a file of text pairs: the columns the
    seq2seq roles read, or two columns named by language codes. The targets must be mostly distinct
    texts (a class label column, also called "target" at times, repeats a few values). Language columns
    are the file's only two columns, in file order: source first."""
    cols = _roles_read("translation", s)
    if cols is None:
        if len(s.columns) != 2 or not all(LANGUAGE.fullmatch(c) for c in s.columns):
            return None
        cols = dict(zip(("source", "target"), s.columns))
    pairs = [(r[cols["source"]], r[cols["target"]]) for r in s.rows
             if isinstance(r.get(cols["source"]), str) and isinstance(r.get(cols["target"]), str)
             and r[cols["source"]].strip() and r[cols["target"]].strip()]
    if not pairs or len({t for _, t in pairs}) * 2 <= len(pairs):
        return None
    return cols, statistics.median(len(t) / len(src) for src, t in pairs)


def _summarization(s: Sample) -> Claim | None:
    found = _source_target(s)
    if found is None or found[1] >= SUMMARY_RATIO:
        return None
    cols, ratio = found
    return Claim(f"'{cols['target']}' is much shorter than '{cols['source']}' (median length ratio {ratio:.2f} "
                 f"< {SUMMARY_RATIO})", cols)


def _translation(s: Sample) -> Claim | None:
    found = _source_target(s)
    if found is None:
        return None
    cols, ratio = found
    return Claim(f"its rows pair a text ('{cols['source']}') with one about as long ('{cols['target']}', median "
                 f"length ratio {ratio:.2f} >= {SUMMARY_RATIO})", cols)


# Task name -> its rule, tried in this order. TODO(lead): each rule belongs on its task, as a classmethod
# `claims(columns, sample_rows, fmt) -> str | None`, once tasks/base.py has a base class to declare it on.
CLAIMS: dict[str, Callable[[Sample], Claim | None]] = {
    "token-classification": _token_classification,
    "question-answering": _question_answering,
    "text-generation": _text_generation,
    "summarization": _summarization,
    "translation": _translation,
}
FALLBACK = "text-classification"


def _written(cfg: dict, notes: list[str]) -> tuple[str, list[str]]:
    header = "# Written by `tunesmith init`; guesses: " + "; ".join(notes) + "\n"
    return header + yaml.safe_dump(cfg, sort_keys=False), notes


def _base(task: dict, data: Path, output: Path, extra: dict) -> dict:
    return {"task": task, "model": {"name": None, "max_length": 128},
            "data": {"train": os.path.relpath(data.resolve(), output.resolve().parent), **extra},
            "train": {"epochs": 3, "batch_size": 32, "lr": 5e-5}, "output_dir": f"runs/{data.stem}"}


def _conll_note(data: Path) -> str | None:
    """None when `data` is no CoNLL file, else what to say about its format ("" for a .conll/.iob/.bio).

    A .tsv of token<TAB>tag lines with blank lines between sentences is CoNLL, not a table; so is a .txt of
    token and tag lines (tab or space) that reads as CoNLL with more than one sentence."""
    suffixes = [x.lower() for x in data.suffixes if x != ".gz"]
    if suffixes and suffixes[-1] == ".txt":
        try:
            rows = [r for _, r in read_file(data, "conll")]
        except DataError:
            return None
        return ("format: CoNLL (a token and its tag per line, blank lines between sentences), which a .txt file "
                "states with data.format: conll") if len(rows) > 1 and all("tags" in r for r in rows) else None
    fmt = detect_format(data)
    if fmt == "conll":
        return ""
    if fmt in DELIMITED and looks_like_conll(data):
        return "format: CoNLL (a token and its tag per line, blank lines between sentences), not a table with a header"
    return None


def _sample(data: Path, notes: list[str]) -> Sample:
    conll = _conll_note(data)
    if conll is not None:
        notes += [conll] if conll else []
        return Sample(data, "conll", read_file(data, "conll"))
    fmt = detect_format(data)
    records = read_file(data)
    header = None  # JSON and Parquet name their fields; CSV/TSV may or may not have a header row
    if fmt in DELIMITED:
        header = not first_row_looks_like_data(records)
        if header:
            notes.append("header: detected")
        else:
            notes.append("header: no header detected (first row looks like data); columns are named by position")
            records = read_file(data, header=False)
    return Sample(data, fmt, records, header)


def guess_config(data: Path, output: Path) -> tuple[str, list[str]]:
    """(the config's YAML, the notes saying what was guessed and why) for a training data file."""
    notes: list[str] = []
    whole = _sample(data, notes)
    s = Sample(whole.path, whole.fmt, whole.records[:SAMPLE_ROWS], whole.header)
    for task, rule in CLAIMS.items():
        claim = rule(s)
        if claim is None:
            continue
        notes.insert(0, f"{task}: {claim.reason}")
        if whole.fmt == "conll":
            return _written(_conll_config(whole, output, notes), notes)
        extra: dict = {} if whole.header is None else {"header": whole.header}
        renamed = {role: col for role, col in claim.columns.items() if role != col}
        if renamed:
            extra["columns"] = renamed
            notes.append("columns: " + ", ".join(f"{role} <- '{col}'" for role, col in renamed.items()))
        if task == "text-generation":
            notes.append("model.name: null is the embedded MiniLM, an encoder; set a causal LM for text generation "
                         "(e.g. HuggingFaceTB/SmolLM2-135M-Instruct, as examples/sft-smollm2.yaml does)")
        notes.append("no validation/test files: tunesmith will split 10%/10% off train, seeded")
        return _written(_base({"type": task}, data, output, extra), notes)
    notes.insert(0, f"{FALLBACK}: no other task's columns found ({', '.join(s.columns)})")
    return _written(_classification_config(whole, output, notes), notes)


def _conll_config(s: Sample, output: Path, notes: list[str]) -> dict:
    """A token-classification starter config for a token-per-line (CoNLL) file."""
    tags = {t for r in s.rows for t in r.get("tags", [])}
    if not tags:
        raise DataError("the CoNLL file has one column (tokens only): no tags to train on", file=str(s.path),
                        hint="give a tag per token in the last column (token<TAB>tag)")
    notes.append(f"token classification: {len(s.rows)} sentences, {len(tags)} distinct tags in the last column "
                 f"({', '.join(sorted(tags)[:8])}{', ...' if len(tags) > 8 else ''})")
    notes.append("no validation/test files: tunesmith will split 10%/10% off train, seeded")
    return _base({"type": "token-classification"}, s.path, output, {"format": "conll"})


def _classification_config(s: Sample, output: Path, notes: list[str]) -> dict:
    """A text-classification starter config: the text and label columns by name, else by their values."""
    rows, columns, header = s.rows, s.columns, s.header  # the whole file: a file sorted by label shows few labels
    if len(columns) < 2:  # in its first rows
        raise DataError(f"found {len(columns)} column(s) ({', '.join(columns)}); need a text and a label column",
                        file=str(s.path))

    def avg_len(c: str) -> float:
        vals = [r.get(c) for r in rows if not is_missing(r.get(c))]
        return sum(len(str(v)) for v in vals) / max(1, len(vals))

    def distinct(c: str) -> int:
        return len({repr(r.get(c)) for r in rows})

    text = next((c for c in columns if c.lower() in TEXT_NAMES), None) or max(columns, key=avg_len)
    notes.append(f"text column: '{text}' (" + ("its name" if text.lower() in TEXT_NAMES else
                                               "the column with the longest values") + ")")
    rest = [c for c in columns if c != text]
    label = next((c for c in rest if c.lower() in LABEL_NAMES), None) or min(rest, key=distinct)
    notes.append(f"label column: '{label}' (" + ("its name" if label.lower() in LABEL_NAMES else
                                                 "the column with the fewest distinct values") + ")")
    values = [r.get(label) for r in rows if not is_missing(r.get(label))]
    problem = "auto"
    if any(isinstance(v, list) for v in values):
        problem = "multi_label"
    elif values and all(_is_float(v) for v in values) and any(not float(v).is_integer() for v in values):
        problem = "regression"
    notes.append(f"problem type: {problem} ({distinct(label)} distinct label values in {len(rows)} rows)")
    notes.append("no validation/test files: tunesmith will split 10%/10% off train, seeded and stratified")
    return _base({"type": "text-classification", "problem_type": problem}, s.path, output,
                 {**({} if header is None else {"header": header}),
                  "text_column": text if header is not False else int(text),
                  "label_column": label if header is not False else int(label)})


def _is_float(v: object) -> bool:
    try:
        float(v)  # type: ignore[arg-type]
        return True
    except (TypeError, ValueError):
        return False
