"""Errors a user can act on: each names what was wrong, where, and what to do."""
from __future__ import annotations


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


class CheckpointError(TunesmithError):
    """A checkpoint file is missing or is not plain tensors/JSON; it is refused, never unpickled."""
