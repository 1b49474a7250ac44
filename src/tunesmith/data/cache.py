"""Tokenized splits cached on disk, keyed by content: a second run on the same data and tokenizer
loads Arrow files instead of tokenizing again."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import datasets

from ..io import atomic_dir
from .prepare import Table

CACHE_VERSION = 1


def cache_root(configured: str | None) -> Path:
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("TUNESMITH_CACHE") or os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / ("" if os.environ.get("TUNESMITH_CACHE") else "tunesmith")


def fingerprint(table: Table, tokenizer: Any, task_state: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "task": task_state}, sort_keys=True, default=str).encode())
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    for col in (table.text, table.text_pair or [], table.label):
        h.update(json.dumps(col, ensure_ascii=False, default=str).encode())
    return h.hexdigest()[:32]


def cached_preprocess(task: Any, table: Table, tokenizer: Any, cache_dir: str | None) -> tuple[datasets.Dataset, bool]:
    """(tokenized split, whether it came from the cache)."""
    path = cache_root(cache_dir) / "tokenized" / fingerprint(table, tokenizer, task.state())
    task.preprocess_setup(tokenizer)
    if (path / "dataset_info.json").exists():
        try:
            return datasets.load_from_disk(str(path)), True
        except Exception:  # a cache from another datasets version: rebuild it
            pass
    ds = task.preprocess(table, tokenizer)
    try:
        with atomic_dir(path) as tmp:
            ds.save_to_disk(str(tmp))
        ds = datasets.load_from_disk(str(path))  # memory-mapped, not held in RAM
    except OSError:
        pass  # a read-only cache folder must not stop training
    return ds, False
