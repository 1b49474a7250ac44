"""From the data section of a config to clean train/validation/test tables.

Columns are mapped to the task's roles (`data.columns`, the legacy `*_column` keys, or the role's own
column names), each value is checked against its role's kind, missing values are handled by the
configured policy with every dropped row recorded, and splits the user did not provide are made, seeded
and stratified. Values are otherwise left raw here: their meaning belongs to the task.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..types import Role, Table
from .readers import DELIMITED, LANG, Record, detect_format, first_row_looks_like_data, is_missing, read_file, read_hub

SPLITS = ("train", "validation", "test")
LEGACY_COLUMNS = {"text": "text_column", "text_pair": "text_pair_column", "label": "label_column"}


@dataclass
class LoadedData:
    splits: dict[str, Table]
    dropped: list[dict]
    missing: dict[str, dict[str, int]]
    made_splits: dict[str, str]
    columns: dict[str, str]  # role -> the column it was read from
    sampled: dict[str, str] = field(default_factory=dict)  # split -> how data.max_*_rows sampled it
    # split -> {"examples": n, "reason": why} of the examples dropped after tokenizing (they train nothing)
    untrainable: dict[str, dict] = field(default_factory=dict)
    label_issues: list[dict] | None = None  # data.drop_label_issues: the training rows found and dropped
    notes: list[str] = field(default_factory=list)  # what the data report says of rows added by the caller


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


def configured_columns(cfg: DataConfig, roles: list["Role"]) -> dict[str, tuple[str, str]]:
    """Role -> (column, the config key that set it) for roles the config maps explicitly.

    `data.columns` wins; the legacy `text_column` / `text_pair_column` / `label_column` keys count when
    they differ from their defaults (which name the columns the roles try anyway; a saved, resolved config
    spells the defaults out, and must not make an optional role required). Unknown roles are a ConfigError.
    """
    names = [r.name for r in roles]
    for role in cfg.columns:
        if role not in names:
            close = difflib.get_close_matches(role, names, n=1, cutoff=0.5)
            raise ConfigError(f"data.columns: unknown role '{role}'."
                              + (f" Did you mean '{close[0]}'?" if close else "")
                              + f" This task reads: {', '.join(names)}")
    out = {r: (c, f"data.columns.{r}") for r, c in cfg.columns.items()}
    for role, key in LEGACY_COLUMNS.items():
        value, default = getattr(cfg, key), type(cfg).model_fields[key].default
        if role in names and role not in out and value is not None and value != default:
            out[role] = (getattr(cfg, key), f"data.{key}")
    return out


_NUMBERED = re.compile(r"(.+)\{1\.\.(\d+)\}")


def numbered(col: str, present: dict | set) -> str | None:
    """`col{1..N}` when the file has columns col1 .. colN (and no colN+1), else None."""
    n = 0
    while f"{col}{n + 1}" in present:
        n += 1
    return f"{col}{{1..{n}}}" if n else None


def column_value(row: dict, col: str) -> Any:
    """A row's value of a column, or of numbered columns `col{1..N}` as the list of their present values."""
    m = _NUMBERED.fullmatch(col)
    if m is None or col in row:
        return row.get(col)
    values = [row.get(f"{m.group(1)}{k}") for k in range(1, int(m.group(2)) + 1)]
    values = [v for v in values if not is_missing(v)]
    return values or None


def resolve_columns(name: str, records: list[Record], cfg: DataConfig, roles: list["Role"],
                    needs_targets: bool = True) -> dict[str, str]:
    """Role -> column for one file: the configured column, else the first of the role's names present.

    A required role (a target one only when `needs_targets`) or a configured column that the file lacks
    is a DataError with the file's columns and a did-you-mean.
    """
    present: dict[str, None] = {}
    for _, row in records:
        present.update(dict.fromkeys(row))
    explicit = configured_columns(cfg, roles)
    out: dict[str, str] = {}
    for role in roles:
        if role.target and not needs_targets:
            continue
        if role.name in explicit:
            col, key = explicit[role.name]
        else:
            col = next((c for c in role.candidates if c in present), None)
            if col is None and role.numbered:
                col = next((n for c in role.candidates if (n := numbered(c, present))), None)
            if col is not None:
                out[role.name] = col
                continue
            if not role.required:
                continue
            col = role.candidates[0]
            key = f"data.{LEGACY_COLUMNS[role.name]}" if role.name in LEGACY_COLUMNS else f"data.columns.{role.name}"
        if col in present:
            out[role.name] = col
            continue
        if role.numbered and (spread := numbered(col, present)):
            out[role.name] = spread
            continue
        if (cfg.header == "auto" and not cfg.hub_dataset and detect_format(Path(name), cfg.format) in DELIMITED
                and first_row_looks_like_data(records)):
            raise DataError(
                f"column '{col}' (set by {key}) is missing, and the first row looks like data, not column "
                f"names: {', '.join(map(str, present))}", file=name, line=1, column=col,
                hint='if the file has no header, set data.header: false and name the columns with '
                     'data.column_names: [...] or use positions (data.text_column: 0)')
        close = difflib.get_close_matches(col, [str(c) for c in present], n=1)
        raise DataError(
            f"column '{col}' (set by {key}) is missing; the file has columns: "
            f"{', '.join(map(str, present))}", file=name, column=col,
            hint=f"did you mean '{close[0]}'? set {key}: {close[0]}" if close else f"set {key}")
    return out


def read_configured(path: str | Path, cfg: DataConfig) -> list[Record]:
    """A data file's records read as the data section says (format, header, column names): training,
    evaluation and prediction read files one way."""
    return read_file(path, cfg.format, header=cfg.header is not False, column_names=cfg.column_names,
                     conll_tag_column=cfg.conll_tag_column, languages=cfg.languages)


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


_KIND_WORDS = {"strings": "a list of strings", "ints": "a list of integers", "mapping": "an object"}


def check_kind(role: "Role", v: Any, cfg: DataConfig, name: str, line: int, col: str) -> Any:
    """A present value as its role's kind says: text as a string, lists and objects as they are (checked)."""
    if role.kind == "string":
        return str(as_text(v, cfg, name, line, col))
    ok = {"strings": lambda: isinstance(v, list) and all(isinstance(x, str) for x in v),
          "ints": lambda: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
          "mapping": lambda: isinstance(v, dict), "any": lambda: True}[role.kind]
    if not ok():
        raise DataError(f"{role.name} must be {_KIND_WORDS[role.kind]}, got {type(v).__name__} "
                        f"{json.dumps(v, default=str, ensure_ascii=False)[:80]}", file=name, line=line, column=col)
    return v


def table_from_records(name: str, records: list[Record], cfg: DataConfig, roles: list["Role"],
                       columns: dict[str, str], split: str, dropped: list[dict], counts: dict[str, int]) -> Table:
    """Rows of one source as a Table of the mapped roles, with the missing-value policy applied.

    A missing target drops the row (there is nothing to learn from it); a missing input follows
    `data.on_missing`. Every dropped row is appended to `dropped` with its reason.
    """
    by_name = {r.name: r for r in roles}
    t = Table({role: [] for role in columns}, [], [], dict(columns))
    for line, row in records:
        values, reason = {}, None
        for role, col in columns.items():
            v = column_value(row, col)
            if by_name[role].may_be_empty and (v is None or (isinstance(v, str) and not v.strip())):
                v = ""
            elif is_missing(v):
                counts[role] = counts.get(role, 0) + 1
                if cfg.on_missing == "error":
                    raise DataError(f"missing or empty value in split '{split}'", file=name, line=line,
                                    column=col, hint="fix the row, or set data.on_missing: drop | fill")
                if by_name[role].target or cfg.on_missing == "drop" or by_name[role].kind != "string":
                    reason = reason or f"missing {role} (column '{col}')"
                else:
                    v = cfg.fill_value
            else:
                v = check_kind(by_name[role], v, cfg, name, line, col)
            values[role] = v
        if reason:
            dropped.append({"split": split, "file": name, "line": line, "reason": reason,
                            "row": {c: column_value(row, c) for c in columns.values()}})
            continue
        for role, v in values.items():
            t.columns[role].append(v)
        t.file.append(name)
        t.line.append(line)
    return t


def load_splits(cfg: DataConfig, roles: list["Role"]) -> LoadedData:
    """Read, map columns to roles, apply the missing-value policy and make absent splits (unstratified here).

    Every split is read with the roles found in the training split, so that an optional role (a
    sentence pair's second text) is present in all splits or in none; other splits' extra columns are ignored.
    """
    sources = _source_records(cfg)
    tables: dict[str, Table] = {}
    dropped: list[dict] = []
    missing: dict[str, dict[str, int]] = {}
    columns: dict[str, str] | None = None
    for split, (name, records) in sources.items():
        found = resolve_columns(name, records, cfg, roles)
        if columns is None:
            columns = found
        else:
            found = {r: c for r, c in found.items() if r in columns}
            lacking = [r for r in columns if r not in found]
            if lacking:
                raise DataError(f"column '{columns[lacking[0]]}' ({lacking[0]}) is in the training data but not in "
                                f"split '{split}'", file=name, column=columns[lacking[0]])
        counts = dict.fromkeys(columns, 0)
        # each file's own columns for the training split's roles (a test file may spell a role otherwise:
        # summary1..3 for summary)
        t = table_from_records(name, records, cfg, roles, found, split, dropped, counts)
        t.token_lines = not cfg.hub_dataset and LANG not in name and detect_format(Path(name), cfg.format) == "conll"
        if len(t) == 0:
            raise DataError(f"no usable rows left in split '{split}' after the missing-value policy",
                            file=name, hint="see the dropped rows report; check the column names")
        tables[split] = t
        missing[split] = counts
    return LoadedData(tables, dropped, missing, {}, columns or {})


def drop_examples(data: LoadedData, split: str, features: Any, reasons: dict[int, str]) -> Any:
    """Drop the examples `reasons` names (example -> why) from a split's table and its tokenized features,
    listing each with the dropped rows: examples that train nothing (a task's `untrainable`). The features'
    `example` column is renumbered to the kept rows."""
    if not reasons:
        return features
    keep = [i for i in range(len(data.splits[split])) if i not in reasons]
    drop_rows(data, split, reasons)
    data.untrainable[split] = {"examples": len(reasons), "reason": reasons[min(reasons)]}
    new = {old: k for k, old in enumerate(keep)}
    rows = [j for j, ex in enumerate(features["example"]) if ex in new]
    kept = features.select(rows)
    return kept.remove_columns("example").add_column("example", [new[ex] for ex in kept["example"]])


def drop_rows(data: LoadedData, split: str, reasons: dict[int, str]) -> None:
    """Drop the rows `reasons` names (row -> why) from a split's table, listing each with the dropped rows."""
    t = data.splits[split]
    for i in sorted(reasons):
        data.dropped.append({"split": split, "file": t.file[i], "line": t.line[i], "reason": reasons[i],
                             "row": {t.column_of.get(r, r): v[i] for r, v in t.columns.items()}})
    keep = [i for i in range(len(t)) if i not in reasons]
    if not keep:
        raise DataError(f"no usable rows left in split '{split}': {reasons[min(reasons)]}", file=t.file[0])
    data.splits[split] = t.take(keep)


def _split_off(table: Table, n_held: int, seed: int,
               stratify: Callable[[Table], list[Hashable]] | None) -> tuple[Table, Table, bool]:
    """Split `table` into (rest, held) with `n_held` rows held, seeded, stratified where every class can be."""
    from sklearn.model_selection import train_test_split

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
        n_held = max(1, int(round(ratio * total)))
        if n_held >= len(data.splits["train"]):
            raise DataError(f"only {len(data.splits['train'])} training rows: too few to make a held-out split "
                            f"of {n_held}", hint="provide data.validation / data.test files or lower the split ratios")
        rest, held, stratified = _split_off(data.splits["train"], n_held, cfg.split_seed, stratify)
        data.splits["train"], data.splits[split] = rest, held
        data.made_splits[split] = (f"{len(held)} rows ({ratio:.0%}) taken from train, seed {cfg.split_seed}, "
                                   + ("stratified by label" if stratified else "not stratified"))


def sample_rows(data: LoadedData, cfg: DataConfig, stratify: Callable[[Table], list[Hashable]] | None) -> None:
    """Keep a seeded (stratified where possible) sample of data.max_train_rows / max_eval_rows rows per split.

    Runs after the splits are made, so a held-out split is carved from the whole training file and the same
    rows stay held out whatever the sample size; the rows left out are not dropped rows (nothing is wrong
    with them) and are not listed, but the report says how many of how many each split kept.
    """
    if cfg.train_per_class is not None:
        _per_class(data, cfg, stratify)
    for split, limit in (("train", cfg.max_train_rows), ("validation", cfg.max_eval_rows),
                         ("test", cfg.max_eval_rows)):
        table = data.splits.get(split)
        if limit is None or table is None or len(table) <= limit:
            continue
        _, kept, stratified = _split_off(table, limit, cfg.split_seed, stratify)
        data.splits[split] = kept
        data.sampled[split] = (f"{limit} of {len(table)} rows, seed {cfg.split_seed}, "
                               + ("stratified by label" if stratified else "not stratified"))


def _per_class(data: LoadedData, cfg: DataConfig, stratify: Callable[[Table], list[Hashable]] | None) -> None:
    """data.train_per_class: a seeded sample of N training rows of each class, in file order."""
    table, n = data.splits["train"], cfg.train_per_class
    keys = stratify(table) if stratify else None
    if keys is None:
        raise ConfigError("data.train_per_class samples N rows of each class, but this task's rows have no single "
                          "class (multi-label, regression, spans); data.max_train_rows samples rows")
    rng = np.random.default_rng(cfg.split_seed)
    by_class: dict[str, list[int]] = {}
    for i, k in enumerate(np.asarray(keys, dtype=object).astype(str)):
        by_class.setdefault(k, []).append(i)
    kept, short = [], []
    for k in sorted(by_class):
        rows = by_class[k]
        kept += rows if len(rows) <= n else rng.choice(rows, size=n, replace=False).tolist()
        short += [len(rows)] if len(rows) < n else []
    if len(kept) == len(table):
        return
    data.splits["train"] = table.take(np.sort(np.asarray(kept, dtype=int)))
    data.sampled["train"] = (f"{n} rows per class: {len(kept)} of {len(table)} rows, seed {cfg.split_seed}"
                             + (f"; {len(short)} classes have fewer and keep all" if short else ""))


def _normal(v: Any) -> str:
    if isinstance(v, list):
        v = " ".join(map(str, v))
    elif isinstance(v, dict):
        v = json.dumps(v, sort_keys=True, ensure_ascii=False)
    return " ".join(str(v).lower().split())


def input_keys(t: Table, inputs: list[str]) -> list[tuple[str, ...]]:
    """Normalised identity of each row's inputs (case and spacing ignored), for duplicate and leakage checks."""
    cols = [t[r] for r in inputs if r in t]
    return [tuple(_normal(c[i]) for c in cols) for i in range(len(t))]

