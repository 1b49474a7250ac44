"""Tokenized splits cached on disk, keyed by content: a second run on the same data and tokenizer
loads Arrow files instead of tokenizing again."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import datasets

from ..io import atomic_dir, hash_files, json_text, mismatched_files
from ..types import Table

CACHE_VERSION = 4  # 2: manifest with row count and file hashes; tokenizer state without truncation/padding;
# 3: role-based tables, features carry their example id; 4: the manifest counts examples and features apart
MANIFEST = "tunesmith_manifest.json"


def cache_root(configured: str | None) -> Path:
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("TUNESMITH_CACHE") or os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / ("" if os.environ.get("TUNESMITH_CACHE") else "tunesmith")


def tokenizer_state(tokenizer: Any) -> str:
    """The tokenizer's serialized state minus `truncation`/`padding`: calling the tokenizer rewrites those
    two (a tokenizer.json with truncation set loses it on first use), so keying on them made identical
    runs miss the cache. Our own truncation settings are part of the task's cache key instead."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return json.dumps(state, sort_keys=True)


def fingerprint(table: Table, tokenizer_key: str, task_key: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "task": task_key}, sort_keys=True, default=str).encode())
    h.update(tokenizer_key.encode())
    for role in sorted(table.columns):
        h.update(json.dumps([role, table[role]], ensure_ascii=False, default=str).encode())
    return h.hexdigest()[:32]


def _load_verified(path: Path, examples: int) -> tuple[datasets.Dataset | None, str | None]:
    """(dataset, None) when the cached folder is the one its key names and intact, else (None, why not).

    A file cut at an Arrow record-batch boundary still loads (with fewer rows) and another split's folder
    loads just as well, so the manifest's key, counts and file hashes are all checked. A split of
    `examples` rows has as many features (rows of the dataset) or more: long inputs become windows.
    """
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, "it has no readable manifest"
    if manifest.get("fingerprint") != path.name:
        return None, "it holds another table's tokens"
    if manifest.get("examples") != examples:
        return None, f"its manifest says {manifest.get('examples')} examples, the split has {examples}"
    files = manifest.get("files") or {}
    # only the files saved with it: later datasets operations may add their own cache files beside them
    if not files or mismatched_files(path, files):
        return None, "its files do not match their recorded hashes (changed, truncated or missing)"
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception:  # a cache from another datasets version
        return None, "it cannot be read by this version of datasets"
    if len(ds) != manifest.get("rows"):
        return None, f"it holds {len(ds)} features, its manifest says {manifest.get('rows')}"
    return ds, None


def cached_preprocess(task: Any, table: Table, tokenizer: Any, cache_dir: str | None,
                      tokenizer_key: str) -> tuple[datasets.Dataset, bool, str | None]:
    """(tokenized split, whether it came from the cache, why an existing cache entry was rebuilt).

    `tokenizer_key`: `tokenizer_state(tokenizer)`, computed once for all splits (it serialises the whole
    vocabulary)."""
    path = cache_root(cache_dir) / "tokenized" / fingerprint(table, tokenizer_key, task.cache_key())
    rebuilt = None
    if path.exists():
        ds, why = _load_verified(path, len(table))
        if ds is not None:
            return ds, True, None
        rebuilt = f"the tokenization cache {path} was rebuilt: {why}"
    ds = task.preprocess(table, tokenizer)
    try:
        with atomic_dir(path) as tmp:
            ds.save_to_disk(str(tmp))
            manifest = {"fingerprint": path.name, "examples": len(table), "rows": len(ds),
                        "files": hash_files(tmp)}
            (tmp / MANIFEST).write_text(json_text(manifest, indent=2), encoding="utf-8")
        ds = datasets.load_from_disk(str(path))  # memory-mapped, not held in RAM
    except OSError:
        pass  # a read-only cache folder must not stop training
    return ds, False, rebuilt
