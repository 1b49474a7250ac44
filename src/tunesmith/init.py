"""`tunesmith init`: a starter config guessed from a data file, with every guess said out loud."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from .data.readers import DELIMITED, detect_format, first_row_looks_like_data, is_missing, looks_like_conll, read_file
from .errors import DataError

LABEL_NAMES = ("label", "labels", "target", "class", "category", "sentiment", "y", "intent", "tag", "tags")
TEXT_NAMES = ("text", "sentence", "review", "content", "body", "document", "question", "message", "comment")


def _conll_config(data: Path, output: Path, notes: list[str]) -> dict:
    """A token-classification starter config for a token-per-line (CoNLL) file."""
    records = read_file(data, "conll")
    tags = {t for _, r in records for t in r.get("tags", [])}
    if not tags:
        raise DataError("the CoNLL file has one column (tokens only): no tags to train on", file=str(data),
                        hint="give a tag per token in the last column (token<TAB>tag)")
    notes.append(f"token classification: {len(records)} sentences, {len(tags)} distinct tags in the last column "
                 f"({', '.join(sorted(tags)[:8])}{', ...' if len(tags) > 8 else ''})")
    notes.append("no validation/test files: tunesmith will split 10%/10% off train, seeded")
    return {"task": {"type": "token-classification"}, "model": {"name": None, "max_length": 128},
            "data": {"train": os.path.relpath(data.resolve(), output.resolve().parent), "format": "conll"},
            "train": {"epochs": 3, "batch_size": 32, "lr": 5e-5}, "output_dir": f"runs/{data.stem}"}


def _written(cfg: dict, notes: list[str]) -> tuple[str, list[str]]:
    header = "# Written by `tunesmith init`; guesses: " + "; ".join(notes) + "\n"
    return header + yaml.safe_dump(cfg, sort_keys=False), notes


def guess_config(data: Path, output: Path) -> tuple[str, list[str]]:
    fmt = detect_format(data)
    notes: list[str] = []
    if fmt == "conll" or (fmt in DELIMITED and looks_like_conll(data)):
        if fmt != "conll":
            notes.append("format: CoNLL (a token and its tag per line, blank lines between sentences), "
                         "not a table with a header")
        return _written(_conll_config(data, output, notes), notes)
    records = read_file(data)
    header = None  # JSON and Parquet name their fields; CSV/TSV may or may not have a header row
    if fmt in DELIMITED:
        header = not first_row_looks_like_data(records)
        if header:
            notes.append("header: detected")
        else:
            notes.append("header: no header detected (first row looks like data); columns are named by position")
            records = read_file(data, header=False)
    rows = [r for _, r in records]  # the whole file: a file sorted by label shows few labels in its first rows
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if len(columns) < 2:
        raise DataError(f"found {len(columns)} column(s) ({', '.join(columns)}); need a text and a label column",
                        file=str(data))

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
    cfg = {
        "task": {"type": "text-classification", "problem_type": problem},
        "model": {"name": None, "max_length": 128},
        "data": {"train": os.path.relpath(data.resolve(), output.resolve().parent),
                 **({} if header is None else {"header": header}),
                 "text_column": text if header is not False else int(text),
                 "label_column": label if header is not False else int(label)},
        "train": {"epochs": 3, "batch_size": 32, "lr": 5e-5},
        "output_dir": f"runs/{data.stem}",
    }
    return _written(cfg, notes)


def _is_float(v: object) -> bool:
    try:
        float(v)  # type: ignore[arg-type]
        return True
    except (TypeError, ValueError):
        return False
