"""Readers per file format, registered by name. Each yields (line_or_record_number, row dict).

Line numbers are what a user sees in an editor (1-based; the CSV header is line 1), so an error or a
dropped-row report points at the exact place in the file.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Callable

from ..errors import DataError

Record = tuple[int, dict]
READERS: dict[str, Callable[[Path], list[Record]]] = {}
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl",
              ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def register_reader(name: str) -> Callable:
    def deco(fn: Callable[[Path], list[Record]]) -> Callable[[Path], list[Record]]:
        READERS[name] = fn
        return fn
    return deco


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1].lower() if suffixes else ""
    if ext not in EXTENSIONS:
        raise DataError(f"cannot tell the format from the extension '{ext or '(none)'}'", file=str(path),
                        hint=f"use one of {sorted(EXTENSIONS)} or set data.format")
    return EXTENSIONS[ext]


def _read_text(path: Path) -> str:
    """Decode strictly as UTF-8 so bad bytes are reported, never replaced silently."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        import gzip
        raw = gzip.decompress(raw)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"bytes {raw[e.start:e.end]!r} are not valid UTF-8", file=str(path), line=line,
                        hint="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    if not text.strip():
        raise DataError("the file is empty", file=str(path), hint="point data.* at a file with rows")
    return text


def _read_delimited(path: Path, delimiter: str) -> list[Record]:
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("the file is empty", file=str(path)) from None
    header = [h.strip() for h in header]
    rows: list[Record] = []
    line = reader.line_num
    for values in reader:
        start = line + 1
        line = reader.line_num
        if not values or (len(values) == 1 and not values[0].strip()):
            continue  # blank line
        if len(values) != len(header):
            raise DataError(f"expected {len(header)} fields ({', '.join(header)}) but found {len(values)}",
                            file=str(path), line=start,
                            hint="check for an unquoted delimiter in the text, or a missing field")
        rows.append((start, dict(zip(header, values))))
    if not rows:
        raise DataError("the file has a header but no rows", file=str(path))
    return rows


@register_reader("csv")
def read_csv(path: Path) -> list[Record]:
    return _read_delimited(path, ",")


@register_reader("tsv")
def read_tsv(path: Path) -> list[Record]:
    return _read_delimited(path, "\t")


@register_reader("jsonl")
def read_jsonl(path: Path) -> list[Record]:
    rows: list[Record] = []
    # split on "\n" only: str.splitlines() also breaks on U+2028 and friends inside JSON strings
    for i, line in enumerate(_read_text(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON: {e.msg} (character {e.colno})", file=str(path), line=i) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object per line, got {type(obj).__name__}", file=str(path), line=i)
        rows.append((i, obj))
    return rows


@register_reader("json")
def read_json(path: Path) -> list[Record]:
    """A JSON array of objects (record number = position, 1-based), or JSON Lines saved as .json."""
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        return read_jsonl(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON: {e.msg}", file=str(path), line=e.lineno) from None
    rows: list[Record] = []
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise DataError(f"record {i}: expected an object, got {type(obj).__name__}", file=str(path))
        rows.append((i, obj))
    if not rows:
        raise DataError("the JSON array is empty", file=str(path))
    return rows


@register_reader("parquet")
def read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read Parquet: {e}", file=str(path)) from None
    if table.num_rows == 0:
        raise DataError("the file is empty", file=str(path))
    return list(enumerate(table.to_pylist(), start=1))


def read_file(path: str | Path, fmt: str = "auto") -> list[Record]:
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", file=str(path), hint="check the path in data.train/validation/test")
    if path.stat().st_size == 0:
        raise DataError("the file is empty", file=str(path))
    return READERS[detect_format(path, fmt)](path)


def read_hub(name: str, config: str | None, split: str) -> list[Record]:
    """A Hub dataset split; offline or unknown names give one clear message, not a stack trace."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:
        offline = "1" in (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE"))
        hint = ("the Hub is not reachable (HF_HUB_OFFLINE is set); download the dataset once with "
                "network access, or export it to a file and set data.train instead") if offline else \
            "check the dataset name, config and split, and your network"
        raise DataError(f"cannot load Hub dataset '{name}' split '{split}': {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}", hint=hint) from None
    return list(enumerate(ds.to_list(), start=1))


def is_missing(value: object) -> bool:
    """None, NaN and blank strings count as missing (they crash or mislead tokenizers)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return False  # note: an empty label list is a valid multi-label "no label" row
