"""The plain data types every layer shares: roles, tables, batches, results, task options, model facts.

This module is the leaf of the package (it imports nothing of tunesmith but `errors`), so data loading,
configuration, tasks, the loop and serving can all speak of the same things without importing each
other. The layers are enforced by the import-linter contract in pyproject.toml.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

RoleKind = Literal["string", "strings", "ints", "mapping", "any"]


@dataclass(frozen=True)
class Role:
    """One input or target a task reads from each data row.

    `kind` is checked when the file is read (a "strings" role holding a string is an error naming the
    row); values reach the task unchanged otherwise. `columns` are the column names tried, in order,
    when `data.columns` does not map the role. A `target` role is gold data: needed to train and
    evaluate, not to predict. A `bare` role is the one a plain string given to `predict` fills (needed
    only where several text roles are optional). A `may_be_empty` text keeps an empty value ("") instead of
    going through data.on_missing (Alpaca's input is empty for most instructions). A `numbered` role that a
    file lacks may be spread over numbered columns (summary1, summary2, ...), read as one list (several
    references per example).
    """

    name: str
    kind: RoleKind
    required: bool = True
    target: bool = False
    columns: tuple[str, ...] = ()
    doc: str = ""
    bare: bool = False
    may_be_empty: bool = False
    numbered: bool = False

    @property
    def candidates(self) -> tuple[str, ...]:
        return self.columns or (self.name,)


@dataclass
class Table:
    """One split as parallel columns, one per role; `file` and `line` point every row back to its source."""

    columns: dict[str, list]
    file: list[str]
    line: list[int]
    column_of: dict[str, str] = field(default_factory=dict)  # role -> the file's column, for messages
    token_lines: bool = False  # rows of a CoNLL file: token k of row i is on line line[i] + k

    def __len__(self) -> int:
        return len(self.file)

    def __getitem__(self, role: str) -> list:
        return self.columns[role]

    def __contains__(self, role: str) -> bool:
        return role in self.columns

    def get(self, role: str) -> list | None:
        return self.columns.get(role)

    def take(self, idx: list[int] | np.ndarray) -> "Table":
        pick = lambda col: [col[i] for i in idx]  # noqa: E731
        return Table({k: pick(v) for k, v in self.columns.items()}, pick(self.file), pick(self.line), self.column_of,
                     self.token_lines)

    def where(self, i: int) -> dict:
        return {"file": self.file[i], "line": self.line[i]}


class TaskOptions(BaseModel):
    """Base of every task's options section (`task:` in the config, beside `type`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class Record(BaseModel):
    """Base of a task's prediction record schema (`Task.prediction_schema`): exactly its keys (those with a
    default may be absent), each value exactly of its type. The contract tests check every record with it."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass
class Batch:
    """A collated batch. Only `inputs` reach the model; `targets` feed the loss; `meta` (example ids,
    offsets, ...) stays on the CPU for the evaluator and never reaches the model."""

    inputs: dict[str, "torch.Tensor"]
    targets: dict[str, "torch.Tensor"] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: Any, non_blocking: bool = False) -> "Batch":
        move = lambda d: {k: v.to(device, non_blocking=non_blocking) for k, v in d.items()}  # noqa: E731
        return Batch(move(self.inputs), move(self.targets), self.meta)

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        pin = lambda d: {k: v.pin_memory() for k, v in d.items()}  # noqa: E731
        return Batch(pin(self.inputs), pin(self.targets), self.meta)


@dataclass
class EvalResult:
    """`metrics`: scalars (those in `Task.metrics` among them) plus tables such as per-class scores.
    `predictions`: one task-shaped record per example, in example order. `logs`: what the run appends to
    `<name>.jsonl` in the run folder at every evaluation (a few generations, ...; names in `Task.eval_logs`)."""

    metrics: dict[str, Any]
    predictions: list[dict]
    logs: dict[str, Any] = field(default_factory=dict)


class Evaluator(Protocol):
    """Streams one split: keeps only what its metrics and predictions need (not whole logit matrices)."""

    def add(self, batch: Batch, outputs: Any) -> None:
        """Take one batch's outputs (from `Task.forward`) and its metadata."""

    def state(self) -> dict:
        """What `add` accumulated, as plain data (dicts, lists, arrays, numbers): all that multi-process
        evaluation sends between processes (never the task, its tokenizer or the data table)."""

    def merge(self, state: dict) -> None:
        """Absorb another process's `state()` of the same split (multi-process evaluation)."""

    def result(self, tune: bool = False) -> EvalResult:
        """Metrics (empty without gold) and one prediction per example. `tune`: fit decision settings
        on this split (a multi-label threshold, a no-answer threshold) and keep them in the task state."""


@dataclass
class Artifact:
    """A file a task adds to the run folder after testing (a plot, a table): `name` is its path inside the
    folder, `write(path)` writes it. A failing artifact is a warning in the report, never a failed run."""

    name: str
    write: Callable[[Path], None]


@dataclass
class ModelFacts:
    """What loading a model switched on or created, kept on the run rather than as attributes of the model.

    `speed_paths`: each speed path the task tried -> what ran ("on", or why not), for report.json.
    `new_modules`: modules created from scratch besides the head (a warm-started decoder's cross-attention),
    which LoRA trains in full. `lora`: the adapter settings when the model was wrapped by LoRA."""

    speed_paths: dict[str, str] = field(default_factory=dict)
    new_modules: tuple[str, ...] = ()
    lora: dict[str, Any] | None = None


def label_name(v: Any) -> Any:
    """How a class written in a config (YAML 1, 1.0, true) is spelled among the labels ("1", "true"):
    as text classification spells numbers and booleans read from the data."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
        return str(int(v))
    return v
