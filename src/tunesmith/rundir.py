"""Who owns a run folder: one run at a time (a lock), never over a user's files, no stale temps.

A run writes only into a folder that is empty, or that holds a run it continues (`resume`), or
that the user explicitly gave up (`overwrite`, which says what it removes), or that holds only what
a run of the same config wrote before its first checkpoint (started again from the beginning, with
a note). `check` is read-only and runs before any data or model work, so mistakes are reported in
seconds and leave nothing behind; `claim` takes the lock and prepares the folder just before training,
and `abandon` undoes it when the run fails before training starts.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import RunConfig, flat_keys
from .data.readers import parallel_files
from .errors import ConfigError
from .io import host_tag, nearest_existing

LOCK_NAME = ".tunesmith.lock"
# what tunesmith's atomic writes leave behind when killed: atomic_dir (.NAME.tmp-*, .NAME.old-*),
# atomic_write_text (.NAME.*.tmp), plots (.NAME.tmp.png), per-process RNG folders (.rng-step-N)
_RUN_TEMP = re.compile(r"^\.(rng-step-\d+|.+\.(tmp|old)([-.].*)?)$")
# temps in a shared folder name their writer: .NAME.tmp-HOST-PID-RANDOM, .NAME.old-HOST-PID
_OWNED_TEMP = re.compile(r"^\..+\.(?:tmp|old)-(?P<host>[^-]+)-(?P<pid>\d+)(?:-[a-z0-9_]+)?$")
# keys that do not change what a resumed run computes: changing them on --resume needs no permission
RESUME_SAFE_KEYS = {"eval.batch_size", "eval.explain_errors", "train.num_workers", "train.log_every",
                    "train.keep_checkpoints", "data.cache_dir"}
CHANGES_FILE = "config_changes.jsonl"
ROUNDS_DIR = "rounds"  # a self-training run's rounds, each a run folder: what such a run resumes from
# everything a run writes in its folder before its first checkpoint (run._write_run_files, the metrics
# and samples logs, TensorBoard's events, checkpoints/ with the temps of the checkpoint being written):
# a folder holding only these, its config.yaml this run's config, is a run stopped before it could be
# resumed, and `claim` starts it again from the beginning
BEFORE_FIRST_CHECKPOINT = {"config.yaml", "data_report.json", "dropped_rows.jsonl", "label_map.json",
                           "metrics.jsonl", "samples.jsonl"}
_TB_EVENTS = re.compile(r"^events\.out\.tfevents\..+$")

Say = Callable[[str], None]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- the lock

def _read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's owner; None when there is no lock. A lock still empty a moment after it was seen is
    one whose writer died between creating and writing it: it reads as a dead owner."""
    for attempt in range(2):
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("pid"), int):
                return data
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        if attempt == 0:
            time.sleep(0.2)  # its writer may be between O_CREAT and write
    return {"pid": -1, "host": socket.gethostname(), "started": "?"}


def _holder_error(run_dir: Path, lock: Path, holder: dict[str, Any]) -> ConfigError | None:
    """The error for a lock held by a live run; None when its owner is dead (a stale lock)."""
    pid, host, started = holder["pid"], holder.get("host"), holder.get("started", "?")
    if host == socket.gethostname():
        if not pid_alive(pid):
            return None
        return ConfigError(f"{run_dir} is in use by another tunesmith run (pid {pid} on this host, started "
                           f"{started}); wait for it to finish, or choose another output_dir (--set output_dir=...)")
    return ConfigError(f"{run_dir} is locked by a tunesmith run on host {host} (pid {pid}, started {started}); "
                       f"if that run is no longer running, delete {lock} and try again")


def remove_dead_lock(run_dir: Path) -> bool:
    """Remove the folder's lock when its owner is a dead process on this host (a run killed with -9);
    True when no live run holds the folder afterwards. A live owner's lock, or another host's (whose
    process cannot be checked from here), is kept."""
    lock = run_dir / LOCK_NAME
    holder = _read_lock(lock)
    if holder is None:
        return True
    if _holder_error(run_dir, lock, holder) is not None:
        return False
    lock.unlink(missing_ok=True)
    return True


class RunLock:
    """`output_dir/.tunesmith.lock`, created with O_CREAT|O_EXCL and holding {pid, host, started}."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.path = run_dir, run_dir / LOCK_NAME
        self.me = {"pid": os.getpid(), "host": socket.gethostname(),
                   "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def acquire(self, say: Say) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = _read_lock(self.path)
                if holder is None:
                    continue
                error = _holder_error(self.run_dir, self.path, holder)
                if error is not None:
                    raise error from None
                say(f"taking over the lock of a run that is no longer running (pid {holder['pid']}, "
                    f"started {holder.get('started', '?')}): {self.path}")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.me))
            return
        raise ConfigError(f"could not lock {self.run_dir}: other runs keep taking {self.path}")

    def release(self) -> None:
        """Remove the lock if it is still ours (a run that took over a lock it saw as stale owns it now)."""
        try:
            if json.loads(self.path.read_text()) == self.me:
                self.path.unlink()
        except (OSError, ValueError):
            pass


# ---------------------------------------------------------------- checks before any work

def _entries(run_dir: Path) -> list[Path]:
    """What the folder holds, apart from our lock (which is not the user's content)."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.name != LOCK_NAME)


def _listing(entries: list[Path], n: int = 5) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:n]]
    more = f" and {len(entries) - n} more" if len(entries) > n else ""
    return ", ".join(names) + more


def config_changes(run_dir: Path, cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (value in the run folder's config.yaml, value now)} for every key that differs."""
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        old = RunConfig.model_validate(saved).model_dump(mode="json")
    except Exception as e:  # a run folder written by another version, or edited by hand
        raise ConfigError(f"--resume: cannot read {run_dir / 'config.yaml'} to compare it with this config "
                          f"({type(e).__name__}); resume is only possible with the run's own config") from None
    a, b = ({".".join(k): v for k, v in flat_keys(d).items()} for d in (old, cfg.model_dump(mode="json")))
    missing = object()
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k != "output_dir" and a.get(k, missing) != b.get(k, missing)}


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {json.dumps(old)} -> {json.dumps(new)}" for k, (old, new) in changes.items())


def protected_inputs(cfg: RunConfig, config_file: Path | None) -> list[Path]:
    """What this run reads and --overwrite must never delete: data files, the config file, a local base
    model and the tokenization cache."""
    paths = [cfg.data.train, cfg.data.validation, cfg.data.test, cfg.data.unlabelled, cfg.data.cache_dir,
             config_file]
    paths += [f for p in paths[:3] if p for f in parallel_files(p, cfg.data.languages).values()]
    if cfg.model.name and Path(cfg.model.name).expanduser().exists():
        paths.append(cfg.model.name)
    return [Path(p).expanduser().resolve() for p in paths if p]


def _creatable(run_dir: Path) -> None:
    """An output_dir that cannot be made is a config mistake, said before any work (not an OSError later)."""
    top = nearest_existing(run_dir)
    if top == run_dir and not top.is_dir():
        raise ConfigError(f"output_dir {run_dir} is a file, not a folder")
    if not top.is_dir():
        raise ConfigError(f"output_dir {run_dir} cannot be created: {top} is a file, not a folder")
    if not os.access(top, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {run_dir} cannot be written: {top} is not writable for this user")


def check(run_dir: Path, cfg: RunConfig, *, resume: bool, overwrite: bool, allow_config_change: bool,
          config_file: Path | None) -> dict[str, tuple[Any, Any]]:
    """Refuse, before any work, a run that would write where it must not. Read-only.

    Returns the config changes a resume brings (all of them allowed by now).
    """
    if resume and overwrite:
        raise ConfigError("--resume continues the run in output_dir and --overwrite deletes it: pass only one")
    _creatable(run_dir)
    lock = run_dir / LOCK_NAME
    holder = _read_lock(lock) if lock.exists() else None
    error = _holder_error(run_dir, lock, holder) if holder else None
    if error is not None:
        raise error
    return _check_contents(run_dir, cfg, resume=resume, overwrite=overwrite,
                           allow_config_change=allow_config_change, config_file=config_file)


def _written_before_first_checkpoint(p: Path) -> bool:
    """Whether `p`, an entry of a run folder, is one a run writes before its first checkpoint."""
    if p.is_symlink():
        return False
    if _RUN_TEMP.match(p.name):
        return True
    if p.is_file():
        return p.name in BEFORE_FIRST_CHECKPOINT
    if p.name == "tensorboard":
        return all(f.is_file() and not f.is_symlink() and _TB_EVENTS.match(f.name) for f in p.iterdir())
    if p.name == "checkpoints":  # without index.json no checkpoint is complete: a step-N there is unlisted
        return all(_RUN_TEMP.match(f.name) or (re.fullmatch(r"step-\d+", f.name) and f.is_dir()
                                                and not f.is_symlink()) for f in p.iterdir())
    return False


def unstarted_run(run_dir: Path, cfg: RunConfig) -> tuple[list[Path], dict[str, tuple[Any, Any]]] | None:
    """What a run stopped before its first checkpoint left in `run_dir`, and the changes of this config
    to its config.yaml that alter what the run computes; None when the folder holds anything else (or
    nothing): only then may `train` start the run again without --overwrite."""
    entries = _entries(run_dir)
    if not (run_dir / "config.yaml").is_file() or not all(_written_before_first_checkpoint(p) for p in entries):
        return None
    try:
        changes = config_changes(run_dir, cfg)
    except ConfigError:  # not a config.yaml that tunesmith wrote
        return None
    return entries, {k: v for k, v in changes.items() if k not in RESUME_SAFE_KEYS}


def _check_contents(run_dir: Path, cfg: RunConfig, *, resume: bool, overwrite: bool, allow_config_change: bool,
                    config_file: Path | None) -> dict[str, tuple[Any, Any]]:
    if overwrite:
        cwd, home = Path.cwd().resolve(), Path.home().resolve()
        if run_dir == cwd or run_dir in cwd.parents or run_dir == home or run_dir in home.parents:
            raise ConfigError(f"--overwrite refuses to empty {run_dir}: it is the current folder, one of its "
                              "parents, or your home folder; choose a dedicated output_dir")
        inside = [p for p in protected_inputs(cfg, config_file) if p == run_dir or run_dir in p.parents]
        if inside:
            raise ConfigError(f"--overwrite refuses to empty {run_dir}: it holds this run's input {inside[0]}")
        return {}
    unstarted = unstarted_run(run_dir, cfg)
    if unstarted is not None:  # nothing to resume, nothing of the user's: `claim` starts the run again
        altering = unstarted[1]
        if altering and not (resume and allow_config_change):
            raise ConfigError(f"output_dir {run_dir} holds a run that stopped before its first checkpoint, with "
                              f"another config ({run_dir / 'config.yaml'}): {describe_changes(altering)}. "
                              "tunesmith starts such a run again only with its own config: train with that "
                              "config, choose a new output_dir (--set output_dir=...), or delete what it holds "
                              "with --overwrite")
        return {}
    if resume:
        if not (run_dir / "checkpoints" / "index.json").exists() and not (run_dir / ROUNDS_DIR).is_dir():
            raise ConfigError(f"--resume: {run_dir} has no checkpoint to resume from (checkpoints/index.json is "
                              "missing); start the run again with --overwrite, or choose a new output_dir")
        changes = config_changes(run_dir, cfg)
        altering = {k: v for k, v in changes.items() if k not in RESUME_SAFE_KEYS}
        if altering and not allow_config_change:
            raise ConfigError(f"--resume with a config that differs from the run's ({run_dir / 'config.yaml'}): "
                              f"{describe_changes(altering)}. These change what the run computes; resume with "
                              "the run's config, or pass --allow-config-change to continue with the new values "
                              f"(recorded in {CHANGES_FILE})")
        return changes
    entries = _entries(run_dir)
    if entries:
        raise ConfigError(f"output_dir {run_dir} is not empty ({_listing(entries)}) and tunesmith never writes over "
                          "files it did not create in this run. Choose a new output_dir (--set output_dir=...), "
                          "continue the run there with --resume, or delete what it holds with --overwrite")
    return {}


# ---------------------------------------------------------------- taking the folder

class Claim:
    """The folder taken for this run: locked, emptied if asked, stale temps gone."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.lock, self.locked = run_dir, RunLock(run_dir), False
        existing = nearest_existing(run_dir)
        # the first folder this run creates
        self.created = None if existing == run_dir else next(p for p in [run_dir, *run_dir.parents]
                                                             if p.parent == existing)

    def release(self) -> None:
        self.lock.release()

    def abandon(self) -> None:
        """Undo the claim of a run that failed before training: remove what it created, then unlock.

        Only a claim that got the lock removes anything: two runs may both have seen the folder
        missing, and the one that lost the lock must not delete the winner's folder.
        """
        if not self.locked:
            return
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)  # the lock goes with it
        self.release()


def claim(run_dir: Path, cfg: RunConfig, *, resume: bool, overwrite: bool, allow_config_change: bool,
          config_file: Path | None, say: Say) -> Claim:
    """Create and lock output_dir, check it again under the lock, then apply --overwrite and remove
    leftovers of killed runs (every temp in a locked run folder is stale)."""
    c = Claim(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output_dir {run_dir} cannot be created: {e.strerror or e}") from None
    try:
        c.lock.acquire(say)  # then check again: the folder may have changed since `check`
        c.locked = True
        _check_contents(run_dir, cfg, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change,
                        config_file=config_file)
        if overwrite:
            for p in _entries(run_dir):
                say(f"--overwrite: removing {p}" + ("/" if p.is_dir() and not p.is_symlink() else ""))
                _remove(p)
        unstarted = None if overwrite else unstarted_run(run_dir, cfg)
        if unstarted is not None:
            say(f"no checkpoint had been written in {run_dir}: starting the run again from the beginning "
                f"(removing {_listing(unstarted[0], n=len(unstarted[0]))})")
            for p in unstarted[0]:
                _remove(p)
        n = remove_stale_temps(run_dir)
        if n:
            say(f"removed {n} temporary file(s) left in {run_dir} by an interrupted run")
    except BaseException:
        c.abandon()
        raise
    return c


def remove_stale_temps(run_dir: Path) -> int:
    """Remove every leftover temp (see _RUN_TEMP) under a run folder this process has locked."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(run_dir):
        for name in dirnames + filenames:
            if _RUN_TEMP.match(name):
                _remove(Path(dirpath) / name)
                n += 1
        dirnames[:] = [d for d in dirnames if not _RUN_TEMP.match(d)]
    return n


def remove_dead_temps(folder: Path) -> int:
    """In a folder other processes write to at the same time (the tokenization cache), remove only
    the temps whose writer is a dead process of this host."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    n, host = 0, host_tag()
    for p in entries:
        m = _OWNED_TEMP.match(p.name)
        if m and m["host"] == host and not pid_alive(int(m["pid"])):
            _remove(p)
            n += 1
    return n
