"""From the data section of a config to clean train/validation/test tables.

Columns are mapped to fixed names (text, text_pair, label), missing values are handled by the
configured policy with every dropped row recorded, and splits the user did not provide are made,
seeded and stratified. Labels are left raw here: their meaning belongs to the task.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .readers import DELIMITED, Record, detect_format, first_row_looks_like_data, is_missing, read_file, read_hub

SPLITS = ("train", "validation", "test")


@dataclass
class Table:
    """One split as parallel columns; `file` and `line` point every row back to its source."""

    text: list[str] = field(default_factory=list)
    label: list = field(default_factory=list)
    file: list[str] = field(default_factory=list)
    line: list[int] = field(default_factory=list)
    text_pair: list[str] | None = None

    def __len__(self) -> int:
        return len(self.text)

    def take(self, idx: list[int] | np.ndarray) -> "Table":
        pick = lambda col: [col[i] for i in idx]  # noqa: E731
        return Table(pick(self.text), pick(self.label), pick(self.file), pick(self.line),
                     pick(self.text_pair) if self.text_pair is not None else None)

    def where(self, i: int) -> dict:
        return {"file": self.file[i], "line": self.line[i]}


@dataclass
class LoadedData:
    splits: dict[str, Table]
    dropped: list[dict]
    missing: dict[str, dict[str, int]]
    made_splits: dict[str, str]


def _source_records(cfg: DataConfig) -> dict[str, tuple[str, list[Record]]]:
    sources: dict[str, tuple[str, list[Record]]] = {}
    if cfg.hub_dataset:
        for split in SPLITS:
            hub_split = cfg.hub_splits.get(split)
            if not hub_split:
                continue
            try:
                sources[split] = (f"hub:{cfg.hub_dataset}/{hub_split}",
                                  read_hub(cfg.hub_dataset, cfg.hub_config, hub_split))
            except DataError:
                if split == "train":
                    raise
        return sources
    for split in SPLITS:
        path = getattr(cfg, split)
        if path:
            sources[split] = (str(path), read_configured(path, cfg))
    return sources


def _check_columns(name: str, records: list[Record], cfg: DataConfig, needs_label: bool) -> None:
    present: dict[str, None] = {}
    for _, row in records:
        present.update(dict.fromkeys(row))
    wanted = [("data.text_column", cfg.text_column)]
    if cfg.text_pair_column:
        wanted.append(("data.text_pair_column", cfg.text_pair_column))
    if needs_label:
        wanted.append(("data.label_column", cfg.label_column))
    for key, col in wanted:
        if col not in present:
            if (cfg.header == "auto" and not cfg.hub_dataset and detect_format(Path(name), cfg.format) in DELIMITED
                    and first_row_looks_like_data(records)):
                raise DataError(
                    f"column '{col}' (set by {key}) is missing, and the first row looks like data, not column "
                    f"names: {', '.join(present)}", file=name, line=1, column=col,
                    hint='if the file has no header, set data.header: false and name the columns with '
                         'data.column_names: [...] or use positions (data.text_column: 0)')
            close = difflib.get_close_matches(col, list(present), n=1)
            raise DataError(
                f"column '{col}' (set by {key}) is missing; the file has columns: {', '.join(present)}",
                file=name, column=col,
                hint=f"did you mean '{close[0]}'? set {key}: {close[0]}" if close else f"set {key}")


def read_configured(path: str | Path, cfg: DataConfig) -> list[Record]:
    """A data file's records read as the data section says (format, header, column names): training,
    evaluation and prediction read files one way."""
    return read_file(path, cfg.format, header=cfg.header is not False, column_names=cfg.column_names)


def as_text(v: object, cfg: DataConfig, name: str, line: int, col: str) -> object:
    """A text cell as a string: numbers via str(); lists of strings only when joining is asked for."""
    if isinstance(v, list) and cfg.join_text_lists is not None and all(isinstance(x, str) for x in v):
        return cfg.join_text_lists.join(v)
    if isinstance(v, (dict, list)):
        kind = "an object" if isinstance(v, dict) else "a list"
        raise DataError(f"the text is {kind}, not a string", file=name, line=line, column=col,
                        hint="point the text column at a string field" + (
                            "; for a list of strings set data.join_text_lists: ' '" if isinstance(v, list) else ""))
    return v


def load_splits(cfg: DataConfig) -> LoadedData:
    """Read, map columns, apply the missing-value policy and make absent splits (unstratified here)."""
    sources = _source_records(cfg)
    tables: dict[str, Table] = {}
    dropped: list[dict] = []
    missing: dict[str, dict[str, int]] = {}
    columns = [("text", cfg.text_column)]
    if cfg.text_pair_column:
        columns.append(("text_pair", cfg.text_pair_column))
    columns.append(("label", cfg.label_column))
    for split, (name, records) in sources.items():
        _check_columns(name, records, cfg, needs_label=True)
        t = Table(text_pair=[] if cfg.text_pair_column else None)
        counts = dict.fromkeys([c for c, _ in columns], 0)
        for line, row in records:
            values = {}
            reason = None
            for role, col in columns:
                v = row.get(col)
                if role != "label":
                    v = as_text(v, cfg, name, line, col)
                if is_missing(v):
                    counts[role] += 1
                    if cfg.on_missing == "error":
                        raise DataError(f"missing or empty value in split '{split}'", file=name, line=line,
                                        column=col, hint="fix the row, or set data.on_missing: drop | fill")
                    if role == "label" or cfg.on_missing == "drop":
                        reason = reason or f"missing {role} (column '{col}')"
                    else:
                        v = cfg.fill_value
                values[role] = v
            if reason:
                dropped.append({"split": split, "file": name, "line": line, "reason": reason,
                                "row": {k: row.get(k) for k in dict(columns).values()}})
                continue
            t.text.append(str(values["text"]))
            if t.text_pair is not None:
                t.text_pair.append(str(values["text_pair"]))
            t.label.append(values["label"])
            t.file.append(name)
            t.line.append(line)
        if len(t) == 0:
            raise DataError(f"no usable rows left in split '{split}' after the missing-value policy",
                            file=name, hint="see the dropped rows report; check the column names")
        tables[split] = t
        missing[split] = counts
    return LoadedData(tables, dropped, missing, {})


def _split_off(table: Table, ratio_of_total: float, total: int, seed: int,
               stratify: Callable[[Table], list[Hashable]] | None) -> tuple[Table, Table, bool]:
    """Split `table` into (rest, held) with `held` about ratio_of_total * total rows."""
    from sklearn.model_selection import train_test_split

    n_held = max(1, int(round(ratio_of_total * total)))
    if n_held >= len(table):
        raise DataError(f"only {len(table)} training rows: too few to make a held-out split of {n_held}",
                        hint="provide data.validation / data.test files or lower the split ratios")
    idx = np.arange(len(table))
    keys = stratify(table) if stratify else None
    stratified = False
    if keys is not None:
        _, counts = np.unique(np.asarray(keys, dtype=object).astype(str), return_counts=True)
        stratified = counts.min() >= 2 and n_held >= len(counts) and len(table) - n_held >= len(counts)
    rest, held = train_test_split(idx, test_size=n_held, random_state=seed,
                                  stratify=np.asarray(keys, dtype=str) if stratified else None)
    return table.take(np.sort(rest)), table.take(np.sort(held)), stratified


def make_missing_splits(data: LoadedData, cfg: DataConfig,
                        stratify: Callable[[Table], list[Hashable]] | None) -> None:
    """Carve test and/or validation out of train when absent, seeded and stratified where possible."""
    total = len(data.splits["train"])
    for split, ratio in (("test", cfg.test_ratio), ("validation", cfg.validation_ratio)):
        if split in data.splits:
            continue
        rest, held, stratified = _split_off(data.splits["train"], ratio, total, cfg.split_seed, stratify)
        data.splits["train"], data.splits[split] = rest, held
        data.made_splits[split] = (f"{len(held)} rows ({ratio:.0%}) taken from train, seed {cfg.split_seed}, "
                                   + ("stratified by label" if stratified else "not stratified"))


def text_keys(t: Table) -> list[tuple[str, str]]:
    """Normalised text identity used for duplicate and leakage checks."""
    pairs = t.text_pair if t.text_pair is not None else [""] * len(t)
    return [(" ".join(a.lower().split()), " ".join(b.lower().split())) for a, b in zip(t.text, pairs)]

