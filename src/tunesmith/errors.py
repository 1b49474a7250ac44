"""Errors a user can act on: each names what was wrong, where, and what to do."""
from __future__ import annotations

from pathlib import Path


class TunesmithError(Exception):
    """Base class: the CLI prints these as one clear message instead of a traceback."""


class ConfigError(TunesmithError):
    """The configuration is invalid (unknown key, bad value, missing file)."""


class DataError(TunesmithError):
    """The input data cannot be used as given; the message names file, line and column."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: str | None = None, hint: str | None = None) -> None:
        where = ", ".join(p for p in (
            f"file {file}" if file else None,
            f"line {line}" if line is not None else None,
            f"column '{column}'" if column else None,
        ) if p)
        text = f"{where}: {message}" if where else message
        if hint:
            text += f"\n  -> {hint}"
        super().__init__(text)
        self.message = message  # without the place: a server names the field in its own terms
        self.file, self.line, self.column, self.hint = file, line, column, hint


class ModelError(TunesmithError):
    """The model cannot be loaded (offline, unverified weights, wrong architecture)."""


class TrainingDiverged(TunesmithError):
    """The loss or gradients stayed non-finite (NaN/inf): the weights are no longer worth exporting."""


class CheckpointError(TunesmithError):
    """A checkpoint file is missing or is not plain tensors/JSON; it is refused, never unpickled."""


class DiskFull(TunesmithError):
    """A write stopped because the disk (or the user's quota) is full. What was written before is intact
    (every write is atomic), so the message says what could not be written, how much space is left, and
    which checkpoint the run continues from once there is space (`in_run`, `with_command`)."""

    def __init__(self, path: Path, free: int) -> None:
        super().__init__()
        self.path, self.free = path, free
        self.checkpoint: Path | None = None
        self.step: int | None = None
        self.flag: str | None = None
        self.command: str | None = None
        self._update()

    def in_run(self, checkpoint: Path | None, step: int | None, flag: str | None, command: str) -> "DiskFull":
        """The run's last complete checkpoint (None before the first), and the train flag (`--resume`,
        or None to start again) and command that continue it."""
        self.checkpoint, self.step, self.flag, self.command = checkpoint, step, flag, command
        return self._update()

    def with_command(self, command: str) -> "DiskFull":
        """The caller's own command (the CLI's, with the user's --set options)."""
        self.command = command
        return self._update()

    def _update(self) -> "DiskFull":
        text = f"no space left on the device: could not write {self.path} ({_size(self.free)} free there)."
        if self.command and self.checkpoint is not None:
            text += (f" The last complete checkpoint, {self.checkpoint} (step {self.step}), is intact. Free some "
                     f"space, then continue from it: {self.command}")
        elif self.command:
            text += f" No checkpoint had been written yet. Free some space, then start the run again: {self.command}"
        else:
            text += " Free some space and try again."
        self.args = (text,)
        return self


def _size(n: int) -> str:
    """Bytes as a person reads them: 1.2 MiB."""
    size, unit = float(n), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, larger
    return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C after training started: the run folder and its latest complete checkpoint (None before
    the first), so the caller can say how to resume."""

    def __init__(self, run_dir: Path, checkpoint: Path | None, step: int | None, main: bool) -> None:
        super().__init__(f"interrupted; latest checkpoint: {checkpoint}")
        self.run_dir, self.checkpoint, self.step, self.main = run_dir, checkpoint, step, main
