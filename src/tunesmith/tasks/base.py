"""The one interface every task implements, and the registry that finds tasks by name.

The training loop knows nothing about tasks: it asks the task for a summed loss and the number
of items it covers (so gradient accumulation and multi-process runs normalise exactly) and for
per-example outputs; labels, preprocessing, collation, postprocessing and metrics live here.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, ClassVar, Hashable, Protocol

import datasets
import numpy as np
import torch

from ..config import RunConfig
from ..data.prepare import Table
from ..errors import ConfigError


class Task(Protocol):
    name: ClassVar[str]

    def __init__(self, cfg: RunConfig, state: dict | None = None) -> None: ...

    # data
    def fit_labels(self, splits: dict[str, Table]) -> None:
        """Check and encode labels in place (train defines the label set); raise DataError on bad rows."""
    def encode_labels(self, split: str, table: Table) -> None:
        """Encode one more table's labels against the known label set (evaluation on new files)."""
    def stratify_keys(self, table: Table) -> list[Hashable] | None: ...
    def label_distribution(self, table: Table) -> dict[str, Any]: ...
    def preprocess_setup(self, tokenizer: Any) -> None:
        """Take what collation needs from the tokenizer (pad id); runs even when preprocessing is cached."""
    def preprocess(self, table: Table, tokenizer: Any) -> datasets.Dataset:
        """Tokenize one split; the result has `length` (tokens kept) and `n_tokens` (before truncation)."""
    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]: ...

    # model
    def load_model(self, name_or_path: str, **kwargs: Any) -> torch.nn.Module: ...
    def count_items(self, batch: dict[str, torch.Tensor]) -> int:
        """How many items (examples, labelled tokens) the batch's loss sums over."""
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss summed (not averaged) over the batch's items."""
    def outputs(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-example scores (probabilities or values) used by metrics and predictions."""

    # evaluation
    @property
    def default_metric(self) -> str: ...
    @property
    def metric_names(self) -> list[str]: ...
    def fit_postprocess(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Tune decision parameters (e.g. a multi-label threshold) on validation outputs."""
    def metrics(self, scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]: ...
    def postprocess(self, scores: np.ndarray) -> list[dict]: ...
    def postprocess_labels(self, labels: np.ndarray) -> list: ...
    def state(self) -> dict:
        """What prediction needs later (label map, thresholds); saved in the run folder."""


TASKS: dict[str, Callable[..., Task]] = {}


def register_task(*names: str) -> Callable:
    def deco(cls: type) -> type:
        for n in names:
            TASKS[n] = cls
        return cls
    return deco


def get_task(cfg: RunConfig, state: dict | None = None) -> Task:
    from . import classification  # noqa: F401  (registers itself)

    name = cfg.task.type
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        raise ConfigError(f"unknown task.type '{name}'." + (f" did you mean '{close[0]}'?" if close else "")
                          + f" Known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](cfg, state)
