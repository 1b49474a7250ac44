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
        self.file, self.line, self.column, self.hint = file, line, column, hint


class ModelError(TunesmithError):
    """The model cannot be loaded (offline, unverified weights, wrong architecture)."""


class TrainingDiverged(TunesmithError):
    """The loss or gradients stayed non-finite (NaN/inf): the weights are no longer worth exporting."""


class CheckpointError(TunesmithError):
    """A checkpoint file is missing or is not plain tensors/JSON; it is refused, never unpickled."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C after training started: the run folder and its latest complete checkpoint (None before
    the first), so the caller can say how to resume."""

    def __init__(self, run_dir: Path, checkpoint: Path | None, step: int | None, main: bool) -> None:
        super().__init__(f"interrupted; latest checkpoint: {checkpoint}")
        self.run_dir, self.checkpoint, self.step, self.main = run_dir, checkpoint, step, main


class RunPruned(TunesmithError):
    """A callback (a search's pruner) ended the run at an evaluation: it is neither tested nor exported.
    `report` is what report.json holds for it (status "pruned", the training so far)."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report
