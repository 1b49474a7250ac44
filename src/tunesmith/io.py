"""Atomic file and folder writes: a run killed at any moment leaves old or new content, never half,
and a full disk is a DiskFull naming what could not be written, not a writer's traceback."""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

from .errors import DiskFull

_FULL = (errno.ENOSPC, errno.EDQUOT)

STATE_FILE = "tunesmith.json"  # task state beside the exported model: what prediction needs
LABEL_ISSUES_FILE = "label_issues.jsonl"  # data.drop_label_issues / check-labels: the rows found


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it, a race
    with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def host_tag() -> str:
    """This host's name as it appears in temp names: no '-', so `HOST-PID` splits unambiguously."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def owner_tag() -> str:
    """`HOST-PID` for temp names in shared folders, so a sweep can tell a dead writer's leftovers from
    those of a process writing right now (see `rundir.remove_dead_temps`)."""
    return f"{host_tag()}-{os.getpid()}"


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from or while handling, says the disk or quota is full.

    Not every writer raises OSError: safetensors (Rust) puts the OS message in a SafetensorError, and
    torch.save into a file object raises a RuntimeError while handling the file's OSError.
    """
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return True
        if any(os.strerror(code) in str(e) for code in _FULL):
            return True
        e = e.__cause__ or e.__context__
    return False


def free_space(path: Path) -> int:
    """Bytes free on the file system that holds `path` (or would hold it, once created)."""
    return shutil.disk_usage(nearest_existing(path)).free


@contextmanager
def disk_full_names(path: str | Path) -> Iterator[None]:
    """Writes of `path` inside: a full disk becomes DiskFull naming `path` and the space left there,
    a clear error instead of a writer's traceback (the innermost named path wins)."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise DiskFull(Path(path), free_space(Path(path))) from e


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, fsync it, then rename it over `path` (`atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(text)


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[TextIO]:
    """A text file to write in pieces (output of any length, written as it is made): a temp file beside
    `path`, fsynced and renamed over `path` when the block ends, removed if it raises.

    mkstemp creates the file 0600; it gets the mode an ordinary file gets under the umask before
    it takes the final name, so run files are as readable as anything else the user writes.
    """
    path = Path(path)
    with disk_full_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~umask())
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def _finite(obj: Any) -> Any:
    """`obj` with NaN and infinities replaced by None: strict JSON readers reject the bare `NaN` token."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = None) -> str:
    """Valid JSON for every file tunesmith writes: non-finite floats become null (never `NaN`)."""
    return json.dumps(_finite(obj), indent=indent, ensure_ascii=False, default=str, allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj, indent=2) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json_text(r) + "\n" for r in rows))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder; on success it replaces `path` (the old one is removed only after).

    Temp names carry host and pid (`owner_tag`); the folder and all it holds get the modes the umask
    gives ordinary files and folders (mkdtemp makes it 0700). A full disk while it is written is a
    DiskFull naming `path`, and `path` keeps its old content.
    """
    path = Path(path)
    with disk_full_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tag = owner_tag()
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{tag}-"))
        try:
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp made it 0700
            yield tmp
            mask = umask()
            for f in tmp.rglob("*"):
                if f.is_symlink():
                    continue
                # libraries may write 0600 files (safetensors does): everything gets the umask's ordinary mode
                os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            old = None
            if path.exists():
                old = path.parent / f".{path.name}.old-{tag}"
                os.replace(path, old)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one record; a torn last line from a kill (or a full disk) is dropped by `read_jsonl`."""
    with disk_full_names(path), open(path, "a", encoding="utf-8") as f:
        f.write(json_text(row) + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn final line from a killed run
    return rows


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights and cache files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`: the manifest an export or a cache entry keeps."""
    return {f.relative_to(folder).as_posix(): sha256_file(f) for f in sorted(folder.rglob("*")) if f.is_file()}


def mismatched_files(folder: Path, recorded: dict[str, str]) -> list[str]:
    """The names in a `hash_files` manifest that are missing under `folder` or whose content changed."""
    return [n for n, digest in recorded.items() if not (folder / n).is_file() or sha256_file(folder / n) != digest]


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists: where a folder to be created would be made."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
