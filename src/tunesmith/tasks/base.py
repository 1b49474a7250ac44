"""The task interface: what a task family supplies to the one training loop, evaluation and prediction.

A task is one module in this package (or an entry point in the `tunesmith.tasks` group) holding one
class decorated with `@register_task`. The loop, evaluation and the predictor only ever talk to a task
through `Task` below, so adding a task touches no shared file.

The shape of the data as it flows:

    file rows --(roles)--> Table (one row = one example, raw values per role)
    Table --task.fit / task.encode--> Table with targets checked and encoded
    Table --task.preprocess--> features (datasets.Dataset; one row = one model input, column "example")
    features --task.collate--> Batch(inputs -> model, targets -> loss, meta -> evaluator only)
    Batch --task.forward--> (summed loss, outputs) --evaluator.add--> ... --evaluator.result--> metrics + records

Task modules import torch, transformers and datasets inside functions: the registry is read when a
config is validated, which must stay fast (`tunesmith train` checks a config before heavy imports).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import datasets
    import torch

    from ..config import RunConfig
    from ..data.prepare import Table

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


class TaskOptions(BaseModel):
    """Base of every task's options section (`task:` in the config, beside `type`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


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
    `predictions`: one task-shaped record per example, in example order."""

    metrics: dict[str, Any]
    predictions: list[dict]


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


class Task(Protocol):
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]]
    Options: ClassVar[type[TaskOptions]]
    #: "truncate": inputs longer than model.max_length lose tokens; "window": they are split into
    #: overlapping windows and merged back (nothing lost). The data report words its length table by it.
    long_inputs: ClassVar[str]
    #: True when outputs come from generation (slow): evaluations during training skip it when eval.metric is
    #: "loss" or one of `loss_metrics` (metrics computed from the loss alone, such as perplexity)
    generates: ClassVar[bool]
    loss_metrics: ClassVar[tuple[str, ...]]
    #: names of the head modules its models add (trained in full under LoRA): ("classifier", "score"), ...
    head_modules: ClassVar[tuple[str, ...]]
    #: the LABEL_TRAIN_OPTIONS keys it implements (optional; none by default)
    train_options: ClassVar[tuple[str, ...]]

    def __init__(self, cfg: "RunConfig", state: dict | None = None) -> None: ...

    def roles(self) -> list[Role]:
        """The roles this task reads (may depend on its options)."""

    # ---- data
    def fit(self, splits: dict[str, "Table"]) -> None:
        """Learn what the training split fixes (label set, tag scheme) and check + encode every split;
        bad rows raise DataError naming file, line and column."""

    def encode(self, split: str, table: "Table") -> None:
        """Check and encode a later labelled table (e.g. `tunesmith evaluate`) against the fitted state."""

    def stratify_keys(self, table: "Table") -> list | None:
        """Keys to stratify made splits by, or None."""

    def describe(self, table: "Table") -> dict[str, Any]:
        """The split's target statistics for the data report (label or entity counts, invalid tags)."""

    def summary(self) -> dict[str, Any]:
        """What the task learned, for label_map.json and the data report (labels, problem type, ...)."""

    def gold(self, table: "Table", i: int) -> Any:
        """Row i's gold answer in the user's terms, for predictions/test.jsonl."""

    # ---- tokens
    def preprocess(self, table: "Table", tokenizer: Any) -> "datasets.Dataset":
        """Features: one row per model input, with int columns `example` (row of `table`), `length`
        (tokens) and `n_tokens` (the whole example's token count, before truncation or windows)."""

    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> Batch: ...

    def cache_key(self) -> dict:
        """Everything besides the table and the tokenizer that changes `preprocess` output."""

    # ---- model
    def load_model(self, name_or_path: str, **kwargs: Any) -> "torch.nn.Module": ...

    def count_items(self, batch: Batch) -> int:
        """The number of loss terms in the batch (examples, labelled tokens): the loop normalises by it."""

    def forward(self, model: "torch.nn.Module", batch: Batch,
                predict: bool = True) -> tuple["torch.Tensor | None", Any]:
        """One forward pass: (loss summed over the batch's items, or None without targets; outputs for
        the evaluator). `predict` False: only the loss is used (training steps, loss-only evaluations),
        so a task whose outputs cost extra work (generation) may skip it."""

    # ---- evaluation and prediction
    @property
    def metrics(self) -> dict[str, bool]:
        """Scalar metrics eval.metric may select -> whether higher is better ("loss" is added by the run)."""

    @property
    def default_metric(self) -> str: ...

    def evaluator(self, table: "Table") -> Evaluator:
        """A fresh evaluator for `table` (encoded when it has gold, raw inputs when predicting)."""

    def state(self) -> dict:
        """What prediction needs besides the weights, saved beside the model."""

    # ---- optional hooks (looked up with getattr)
    # training_features(features) -> features: the training split's features as trained on (e.g. only
    #     the first windows of each document); evaluation always sees them all.
    # sampling_labels(features) -> np.ndarray: one class per training feature, for train.sampler: balanced.


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, type] = {}
_DISCOVERED = False
ENTRY_POINT_GROUP = "tunesmith.tasks"


def register_task(cls: type) -> type:
    """Class decorator: make a task available under its `name` and `aliases`."""
    for key in (cls.name, *getattr(cls, "aliases", ())):
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"task name '{key}' is registered twice ({_REGISTRY[key].__name__}, {cls.__name__})")
        _REGISTRY[key] = cls
    return cls


def _discover() -> None:
    """Import every module of this package and every entry point: registering is being there."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    from importlib.metadata import entry_points

    from .. import tasks

    for info in pkgutil.iter_modules(tasks.__path__):
        importlib.import_module(f"{tasks.__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def task_names() -> list[str]:
    """Canonical names of the registered tasks (aliases left out)."""
    _discover()
    return sorted({cls.name for cls in _REGISTRY.values()})


def task_class(name: str) -> type:
    """The registered task class for a name or alias; an unknown name is a ConfigError with did-you-mean."""
    from ..errors import ConfigError

    _discover()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.5)
        raise ConfigError(f"unknown task.type '{name}'." + (f" Did you mean '{close[0]}'?" if close else "")
                          + f" Known tasks: {', '.join(task_names())}")
    return _REGISTRY[name]


#: train.* keys that change the loss or the sampling of labels, and their defaults: a task that does not
#: list a key in its `train_options` refuses a non-default value rather than ignoring it
LABEL_TRAIN_OPTIONS = {"class_weights": "none", "loss": "cross_entropy", "sampler": "uniform"}


def get_task(cfg: "RunConfig", state: dict | None = None) -> Task:
    from ..errors import ConfigError

    cls = task_class(cfg.task.type)
    for key, default in LABEL_TRAIN_OPTIONS.items():
        if getattr(cfg.train, key) != default and key not in getattr(cls, "train_options", ()):
            users = [n for n in task_names() if key in getattr(task_class(n), "train_options", ())]
            raise ConfigError(f"train.{key}: {getattr(cfg.train, key)!r} is not supported by the {cls.name} task"
                              + (f" (only by {', '.join(users)})" if users else ""))
    return cls(cfg, state)
