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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import DataError

Record = tuple[int, dict]
READERS: dict[str, Callable[..., list[Record]]] = {}
DELIMITED = ("csv", "tsv")  # the formats whose readers take `header` and `column_names`
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl",
              ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet", ".conll": "conll", ".iob": "conll",
              ".bio": "conll"}


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
        import zlib

        try:
            raw = gzip.decompress(raw)
        except EOFError:  # click would turn this into a bare "Aborted."
            raise DataError("the gzip file is truncated (it ends before its end-of-stream marker)",
                            file=str(path), hint="copy or download the file again") from None
        except (OSError, zlib.error) as e:  # BadGzipFile is an OSError
            raise DataError(f"not a valid gzip file ({e})", file=str(path),
                            hint="decompress it or rename it without .gz if it is not compressed") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"bytes {raw[e.start:e.end]!r} are not valid UTF-8", file=str(path), line=line,
                        hint="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    if not text.strip():
        raise DataError("the file is empty", file=str(path), hint="point data.* at a file with rows")
    return text


@contextmanager
def _field_limit(n: int) -> Iterator[None]:
    """Python's csv caps a field at 131,072 characters; no field can be longer than the whole text."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, n))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _read_delimited(path: Path, delimiter: str, header: bool = True,
                    column_names: list[str] | None = None) -> list[Record]:
    """Rows as dicts keyed by the header (or by `column_names` / positions "0", "1", ... without one)."""
    text = _read_text(path)
    with _field_limit(len(text) + 1):
        rows = list(_delimited_records(io.StringIO(text, newline=""), path, delimiter, header, column_names))
    if not rows:
        raise DataError("the file has a header but no rows" if header else "the file has no rows", file=str(path))
    return rows


def _delimited_records(lines: Iterable[str], path: Path, delimiter: str, header: bool,
                       column_names: list[str] | None) -> Iterator[Record]:
    """The records of CSV/TSV text given line by line (lines keep their endings), one at a time."""
    reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE)
    names = None
    if header:
        try:
            names = _header_names(next(reader), path)
        except StopIteration:
            raise DataError("the file is empty", file=str(path)) from None
    elif column_names:
        names = list(column_names)
    line = reader.line_num
    for values in reader:
        start = line + 1
        line = reader.line_num
        if not values or (len(values) == 1 and not values[0].strip()):
            continue  # blank line
        if names is None:  # no header and no names: columns are positions, as wide as the first row
            names = [str(i) for i in range(len(values))]
        if len(values) != len(names):
            raise DataError(f"expected {len(names)} fields ({', '.join(names)}) but found {len(values)}",
                            file=str(path), line=start,
                            hint="check for an unquoted delimiter in the text, or a missing field")
        yield start, dict(zip(names, values))


def _header_names(row: list[str], path: Path) -> list[str]:
    """A CSV/TSV header row as column names; a name given twice is an error (one column would be lost)."""
    names = [h.strip() for h in row]
    dup = next((h for i, h in enumerate(names) if h in names[:i]), None)
    if dup is not None:
        raise DataError(f"the header names column '{dup}' more than once ({', '.join(names)})",
                        file=str(path), line=1, hint="rename one of the columns (or, if the first row "
                                                     "is data, not names, set data.header: false)")
    return names


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def first_row_looks_like_data(records: list[Record]) -> bool:
    """Whether the header row read from a CSV/TSV looks like one more data row (csv.Sniffer's votes).

    Per column: numeric in the body and numeric in row 1 votes data, text in row 1 votes header; in a
    column of long texts, a row-1 cell that is itself sentence-like votes data, a short name votes header.
    """
    if not records:
        return False
    header = list(records[0][1])
    body = [list(r.values()) for _, r in records[:200]]
    votes = 0
    for j, cell in enumerate(header):
        col = [row[j].strip() for row in body if row[j].strip()]
        if not col:
            continue
        if all(_is_number(v) for v in col):
            votes += 1 if _is_number(cell) else -1
            continue
        median = sorted(len(v) for v in col)[len(col) // 2]
        if median >= 20:
            votes += 1 if len(cell) > 30 or (len(cell) >= median / 2 and cell.count(" ") >= 3) else -1
    return votes > 0


@register_reader("csv")
def read_csv(path: Path, header: bool = True, column_names: list[str] | None = None) -> list[Record]:
    return _read_delimited(path, ",", header, column_names)


@register_reader("tsv")
def read_tsv(path: Path, header: bool = True, column_names: list[str] | None = None) -> list[Record]:
    return _read_delimited(path, "\t", header, column_names)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's default keeps the last of two equal keys; a duplicated key is a mistake in the file."""
    obj: dict = {}
    for k, v in pairs:
        if k in obj:
            raise _DuplicateKey(k)
        obj[k] = v
    return obj


@register_reader("jsonl")
def read_jsonl(path: Path) -> list[Record]:
    rows: list[Record] = []
    # split on "\n" only: str.splitlines() also breaks on U+2028 and friends inside JSON strings
    for i, line in enumerate(_read_text(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            rows.append((i, _jsonl_object(line, path, i)))
    return rows


def _first_line_is_a_value(text: str) -> bool:
    """Whether the first non-blank line is a complete JSON value alone: then the file is JSON Lines, else
    one document spread over lines (whose errors must keep the parser's line and column)."""
    first = next((line for line in text.split("\n") if line.strip()), "")
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


def _jsonl_object(line: str, path: Path, i: int) -> dict:
    """One JSON Lines line as its object; errors name the file and line."""
    try:
        obj = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON: {e.msg} (character {e.colno})", file=str(path), line=i) from None
    except _DuplicateKey as e:
        raise DataError(f"key '{e}' appears twice in one object", file=str(path), line=i,
                        hint="remove or rename one of them") from None
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object per line, got {type(obj).__name__}", file=str(path), line=i)
    return obj


@register_reader("json")
def read_json(path: Path) -> list[Record]:
    """A JSON array of objects (record number = position, 1-based), or JSON Lines saved as .json (a file
    whose whole text is no JSON value but whose first line is one).

    Two export shapes are recognised and flattened into rows: a SQuAD file (an object with "data") and
    a Label Studio export (objects with "data" and "annotations").
    """
    text = _read_text(path)
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, _DuplicateKey) as e:
        if _first_line_is_a_value(text):  # JSON Lines saved as .json: errors are per line
            return read_jsonl(path)
        if isinstance(e, _DuplicateKey):
            raise DataError(f"key '{e}' appears twice in one object", file=str(path),
                            hint="remove or rename one of them") from None
        # one document (a pretty-printed SQuAD file): the parser's own line and column
        raise DataError(f"not valid JSON: {e.msg} (character {e.colno})", file=str(path), line=e.lineno) from None
    if isinstance(data, dict):
        if isinstance(data.get("data"), list):  # one object holding "data" is a SQuAD file
            from .squad import squad_records

            return squad_records(data, path)
        return read_jsonl(path)  # one object on one line: JSON Lines with one row
    if not isinstance(data, list):
        raise DataError(f"expected a JSON array of objects (or JSON Lines), got {type(data).__name__}",
                        file=str(path))
    rows: list[Record] = []
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise DataError(f"record {i}: expected an object, got {type(obj).__name__}", file=str(path))
        rows.append((i, obj))
    if not rows:
        raise DataError("the JSON array is empty", file=str(path))
    if all(isinstance(r.get("data"), dict) and isinstance(r.get("annotations"), list) for _, r in rows):
        from .label_studio import label_studio_records

        return label_studio_records(rows, path)
    return rows


@register_reader("conll")
def read_conll(path: Path, tag_column: int = -1) -> list[Record]:
    """CoNLL-style column files: a token per line, a blank line between sentences, `-DOCSTART-` lines
    skipped. Rows are {"tokens": [...], "tags": [...]} (tags from `tag_column`, default the last);
    a file with one column holds tokens only (for prediction). A row's line is its first token's, and its
    tokens sit on consecutive lines (a `-DOCSTART-` line ends a sentence, as a blank line does), so token k
    is on line + k. A line holding only a byte-order mark (U+FEFF, invisible) counts as blank."""
    rows: list[Record] = []
    tokens: list[str] = []
    tags: list[str] = []
    start, width = 0, None
    for n, raw in enumerate(_read_text(path).splitlines() + [""], start=1):
        parts = raw.replace("\ufeff", " ").split()  # a stray byte-order mark is no token (WNUT-17's dev.conll)
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                rows.append((start, {"tokens": tokens, "tags": tags} if width > 1 else {"tokens": tokens}))
            tokens, tags = [], []
            continue
        if width is None:
            width = len(parts)
        if len(parts) != width:
            raise DataError(f"{len(parts)} columns here, {width} on the file's first token line", file=str(path),
                            line=n, hint="CoNLL files have the same number of columns on every token line")
        if not tokens:
            start = n
        tokens.append(parts[0])
        if width > 1:
            try:
                tags.append(parts[tag_column])
            except IndexError:
                raise DataError(f"data.conll_tag_column {tag_column} is out of range for {width} columns",
                                file=str(path), line=n) from None
    if not rows:
        raise DataError("no sentences found (a token per line, a blank line between sentences)", file=str(path))
    return rows


def looks_like_conll(path: Path) -> bool:
    """Whether a delimited file is CoNLL in disguise (a `.tsv` of token<TAB>tag lines): blank lines between
    runs of lines, every other line the same number (2+) of tab-separated fields, none holding a space."""
    lines = _read_text(path).replace("\r", "").strip("\n").split("\n")
    body = [line for line in lines if line.strip()]
    widths = {len(line.split("\t")) for line in body}
    return len(body) < len(lines) and len(widths) == 1 and widths.pop() >= 2 and not any(" " in x for x in body)


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


def require_file(path: Path, hint: str = "check the path in data.train/validation/test") -> None:
    """A missing input file is a DataError naming the path as given and, when relative, the one tried."""
    if not path.exists():
        tried = "" if path.is_absolute() else f" (looked for {path.resolve()})"
        raise DataError(f"file not found{tried}", file=str(path), hint=hint)


LANG = "{lang}"  # the placeholder of parallel text files: train.{lang}.gz


def parallel_files(path: str | Path, languages: list[str] | None) -> dict[str, Path]:
    """Language -> file of a parallel-text path (`train.{lang}.gz`), or {} for an ordinary path."""
    if LANG not in str(path):
        return {}
    if not languages:
        raise DataError(f"the path holds {LANG} (parallel text files) but data.languages is not set", file=str(path),
                        hint="set data.languages: [en, de] to read train.en and train.de line by line")
    return {lang: Path(str(path).replace(LANG, lang)) for lang in languages}


def read_parallel(files: dict[str, Path]) -> list[Record]:
    """One record per line number, a column per language; files of different line counts are an error
    naming both (a shifted line would pair every later sentence with the wrong one of the other file)."""
    lines: dict[str, list[str]] = {}
    for lang, f in files.items():
        require_file(f)
        text = _read_text(f)
        lines[lang] = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    (first, a), *rest = lines.items()
    for lang, b in rest:
        if len(b) != len(a):
            raise DataError(f"parallel files differ in length: {files[first]} has {len(a)} lines, {files[lang]} "
                            f"has {len(b)}", file=str(files[lang]),
                            hint="line i of each file must be the same sentence in its language")
    return [(i + 1, {lang: lines[lang][i].rstrip("\r") for lang in lines}) for i in range(len(a))]


def read_file(path: str | Path, fmt: str = "auto", header: bool = True,
              column_names: list[str] | None = None, conll_tag_column: int = -1,
              languages: list[str] | None = None) -> list[Record]:
    """Records of a data file; `header`/`column_names` apply to CSV/TSV (JSON and Parquet name their fields),
    `conll_tag_column` to CoNLL files. A path holding {lang} names parallel text files, one per entry of
    `languages` (one sentence per line), read into a column per language."""
    files = parallel_files(path, languages)
    if files:
        return read_parallel(files)
    path = Path(path)
    require_file(path)
    if path.stat().st_size == 0:
        raise DataError("the file is empty", file=str(path))
    fmt = detect_format(path, fmt)
    if fmt in DELIMITED:
        return READERS[fmt](path, header=header, column_names=column_names)
    if fmt == "conll":
        return READERS[fmt](path, tag_column=conll_tag_column)
    return READERS[fmt](path)


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
    names = _class_label_names(ds.features)
    rows = ds.to_list()
    for row in rows:
        for col, (is_list, labels) in names.items():
            row[col] = [_class_name(labels, v) for v in row[col]] if is_list and row[col] is not None \
                else _class_name(labels, row[col])
    return list(enumerate(rows, start=1))


def _class_label_names(features: Any) -> dict[str, tuple[bool, list[str]]]:
    """Column -> (holds a list, label names) for ClassLabel columns: a Hub dataset stores labels as integers
    (SST-2's 0/1, WNUT-17's tag ids), and the names are what the report, the model config and predict show."""
    import datasets

    out = {}
    for col, f in features.items():
        inner = getattr(f, "feature", None)
        if isinstance(f, datasets.ClassLabel):
            out[col] = (False, f.names)
        elif isinstance(inner, datasets.ClassLabel):
            out[col] = (True, inner.names)
    return out


def _class_name(labels: list[str], v: Any) -> Any:
    """A ClassLabel id as its name; -1 (the Hub's "no label", e.g. GLUE test splits) as missing."""
    return labels[v] if isinstance(v, int) and 0 <= v < len(labels) else None


def is_missing(value: object) -> bool:
    """None, NaN and blank strings count as missing (they crash or mislead tokenizers)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return False  # note: an empty label list is a valid multi-label "no label" row


# ---------------------------------------------------------------- streaming (prediction of files of any length)

def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its ending) of a text file, read lazily; only "\n" ends a line (as
    `read_jsonl` splits: U+2028 inside a JSON string is no line break). Bytes that are not UTF-8 name their line."""
    import gzip
    import zlib

    gz = path.suffix == ".gz"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            for n, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"bytes {raw[e.start:e.end]!r} are not valid UTF-8", file=str(path), line=n,
                                    hint="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
                yield n, line
    except EOFError:
        raise DataError("the gzip file is truncated (it ends before its end-of-stream marker)",
                        file=str(path), hint="copy or download the file again") from None
    except (OSError, zlib.error) as e:
        if not gz:
            raise
        raise DataError(f"not a valid gzip file ({e})", file=str(path),
                        hint="decompress it or rename it without .gz if it is not compressed") from None


def _line_text(line: str) -> str:
    return line.removesuffix("\n").removesuffix("\r")


def iter_txt(path: Path) -> Iterator[Record]:
    """A plain text file, one text per line, as {"text": line}; blank lines are skipped (they hold nothing to
    predict) and every record keeps its line number."""
    for n, line in _lines(path):
        text = _line_text(line)
        if text.strip():
            yield n, {"text": text}


def iter_jsonl(path: Path) -> Iterator[Record]:
    """`read_jsonl`, one record at a time."""
    for n, line in _lines(path):
        text = _line_text(line)
        if text.strip():
            yield n, _jsonl_object(text, path, n)


def iter_delimited(path: Path, delimiter: str, header: bool = True,
                   column_names: list[str] | None = None) -> Iterator[Record]:
    """`read_csv` / `read_tsv`, one record at a time; no field is longer than the file (gzip: 2 GiB)."""
    limit = 2**31 - 1 if path.suffix == ".gz" else path.stat().st_size + 1
    with _field_limit(limit):
        yield from _delimited_records((line for _, line in _lines(path)), path, delimiter, header, column_names)


def iter_parquet(path: Path) -> Iterator[Record]:
    """`read_parquet`, a row group batch at a time."""
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        n = 0
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read Parquet: {e}", file=str(path)) from None


def iter_records(path: str | Path, fmt: str, header: bool = True, column_names: list[str] | None = None,
                 conll_tag_column: int = -1) -> Iterator[Record]:
    """Records of a file in a known format ("txt" too), lazily where the format allows: txt, jsonl, csv/tsv
    and parquet stream; a JSON array and a CoNLL file come from the training readers, whole. A file with
    no records is a DataError."""
    path = Path(path)
    require_file(path)
    if path.is_dir():
        raise DataError("this is a folder, not a file", file=str(path), hint="name the file to predict")
    if path.stat().st_size == 0:
        raise DataError("the file is empty", file=str(path))
    if fmt == "txt":
        rows = iter_txt(path)
    elif fmt == "jsonl":
        rows = iter_jsonl(path)
    elif fmt in DELIMITED:
        rows = iter_delimited(path, "," if fmt == "csv" else "\t", header, column_names)
    elif fmt == "parquet":
        rows = iter_parquet(path)
    else:
        rows = iter(read_file(path, fmt, header=header, column_names=column_names, conll_tag_column=conll_tag_column))
    empty = True
    for record in rows:
        empty = False
        yield record
    if empty:
        raise DataError("the file has no rows", file=str(path))
