"""The task interface: what a task family supplies to the one training loop, evaluation and prediction.

A task is one module in this package (or an entry point in the `tunesmith.tasks` group) holding one
subclass of `Task` decorated with `@register_task`. Shared code (the recipe, data report, evaluation,
serving, the CLI, search) only ever asks a task's declaration below, never its name, so adding a task
touches no shared file. `register_task` checks the declaration when the module is imported.

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

import inspect
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .. import registry
from ..errors import ConfigError
from ..types import Artifact, Batch, EvalResult, Evaluator, ModelFacts, Record, Role, Table, TaskOptions

if TYPE_CHECKING:
    import datasets
    import numpy as np
    import torch

    from ..config import RunConfig

__all__ = ["Artifact", "Batch", "EvalResult", "Evaluator", "Mode", "ModelFacts", "Record", "Role", "Table", "Task",
           "TaskOptions", "get_task", "register_task", "task_class", "task_names"]

#: how `Task.forward` is called: "train" (a training step: the loss only, training-time regularisation on),
#: "loss" (an evaluation that needs the loss only), "predict" (an evaluation that needs the outputs too)
Mode = Literal["train", "loss", "predict"]
LONG_INPUTS = ("truncate", "window")
TRUNCATED_WARN_PCT = 5  # share of a split's inputs cut by model.max_length above which the data report warns


class Task(ABC):
    """One task family. Class attributes are its declaration, read by shared code without an instance."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    #: "truncate": inputs longer than model.max_length lose tokens; "window": they are split into
    #: overlapping windows and merged back (nothing lost). The data report words its length table by it.
    long_inputs: ClassVar[str] = "truncate"
    #: True when outputs come from generation (slow): evaluations during training skip it when eval.metric is
    #: "loss" or one of `loss_metrics` (metrics computed from the loss alone, such as perplexity)
    generates: ClassVar[bool] = False
    loss_metrics: ClassVar[tuple[str, ...]] = ()
    #: names of the head modules its models add (trained in full under LoRA): ("classifier", "score"), ...
    head_modules: ClassVar[tuple[str, ...]] = ()
    #: the Options fields that only steer decoding: set per prediction (`predict --set task.num_beams=4`,
    #: `Predictor.set_decoding`) over what the run was trained with
    decoding: ClassVar[tuple[str, ...]] = ()
    #: config keys that used to live elsewhere -> the option they are now (`{"train.loss": "loss"}`): a config
    #: that still sets them keeps working, with a note naming the new key
    moved_keys: ClassVar[dict[str, str]] = {}
    #: names of the logs an evaluation returns in `EvalResult.logs` (the run appends each to `<name>.jsonl`)
    eval_logs: ClassVar[tuple[str, ...]] = ()
    #: whether `explain` is implemented: `Predictor.explain`, `predict --explain` and POST /explain ask this
    explains: ClassVar[bool] = False
    #: the Hugging Face Hub's pipeline tag of the exported model (model/README.md), None where it has none
    hub_pipeline_tag: ClassVar[str | None] = None
    #: the model outputs its `forward` reads, for `tunesmith export --format onnx` (empty: no ONNX export, as for
    #: generating tasks, whose decoding loop is not one graph)
    onnx_outputs: ClassVar[tuple[str, ...]] = ()

    cfg: "RunConfig"
    opts: TaskOptions  #: the task section of the config, validated by `Options`
    #: a transformers streamer that `Predictor.stream` sets for the prediction of one input: a task that
    #: generates hands it to `generate` and its generation config's `num_beams` says whether it can stream
    streamer: Any = None

    def __init__(self, cfg: "RunConfig", state: dict | None = None) -> None:
        self.cfg = cfg
        self.opts = self.Options.model_validate(cfg.task.options)

    @classmethod
    def variant(cls, options: dict[str, Any]) -> "type[Task]":
        """The class that runs this task with these options (the task section's raw values): itself, or a
        subclass in its own module for a method that trains differently (text classification's
        contrastive few-shot recipe). A variant keeps the task's name, Options and declaration."""
        return cls

    # ---- declaration that depends on the fitted state
    @property
    @abstractmethod
    def metrics(self) -> dict[str, bool]:
        """Scalar metrics eval.metric may select -> whether higher is better ("loss" is added by the run)."""

    @property
    def default_metric(self) -> str:
        return next(iter(self.metrics))

    def selected_metric(self, name: str | None, key: str = "eval.metric") -> tuple[str, bool]:
        """(the metric `name`, default the task's own; whether higher is better): the one resolution that the
        run and a search share. A metric the task does not compute is an error naming `key` and the choices."""
        directions = {"loss": False, **self.metrics}
        metric = name or self.default_metric
        if metric not in directions:
            raise ConfigError(f"{key} '{metric}' is not computed for the {self.name} task; "
                              f"choose one of {', '.join(directions)}")
        return metric, directions[metric]

    @abstractmethod
    def roles(self) -> list[Role]:
        """The roles this task reads (may depend on its options)."""

    # ---- data
    @abstractmethod
    def fit(self, splits: dict[str, Table]) -> None:
        """Learn what the training split fixes (label set, tag scheme) and check + encode every split;
        bad rows raise DataError naming file, line and column."""

    @abstractmethod
    def encode(self, split: str, table: Table) -> None:
        """Check and encode a later labelled table (e.g. `tunesmith evaluate`) against the fitted state."""

    def stratify_keys(self, table: Table) -> list | None:
        """Keys to stratify made splits by, or None."""
        return None

    def describe(self, table: Table) -> dict[str, Any]:
        """The split's target statistics for the data report (label or entity counts, invalid tags)."""
        return {}

    def headline(self) -> str:
        """What the data report's heading says the task is: its name, and how many labels it learned."""
        labels = self.summary().get("labels")
        return ", ".join([self.name, *([f"{len(labels)} labels"] if labels else [])])

    def notes(self) -> list[str]:
        """Choices the task made from the data, for the data report (e.g. why SQuAD v2 was chosen)."""
        return []

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """What the task learned, for label_map.json and the data report (labels, problem type, ...)."""

    @abstractmethod
    def gold(self, table: Table, i: int) -> Any:
        """Row i's gold answer in the user's terms, for predictions/test.jsonl."""

    # ---- tokens
    @abstractmethod
    def preprocess(self, table: Table, tokenizer: Any) -> "datasets.Dataset":
        """Features: one row per model input, with int columns `example` (row of `table`), `length`
        (tokens) and `n_tokens` (the whole example's token count, before truncation or windows)."""

    @abstractmethod
    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> Batch: ...

    def cache_key(self) -> dict:
        """Everything besides the table and the tokenizer that changes `preprocess` output."""
        return {}

    def untrainable(self, features: "datasets.Dataset") -> dict[int, str]:
        """Examples (row of the table -> why) with nothing to train on: dropped and listed with the dropped rows."""
        return {}

    def data_report(self, features: dict[str, "datasets.Dataset"], token_lengths: dict[str, dict],
                    max_length: int) -> tuple[dict[str, Any], list[str]]:
        """What the task adds to the data report: (entries, warnings). `token_lengths`: each split's input
        token statistics. By default, a warning for each split with many inputs cut by model.max_length."""
        return {}, [f"{lens['truncated_pct']}% of {s} texts exceed model.max_length={max_length} and are "
                    "truncated; consider a larger max_length"
                    for s, lens in token_lengths.items() if lens.get("truncated_pct", 0) > TRUNCATED_WARN_PCT]

    # ---- training
    def training_features(self, features: "datasets.Dataset") -> "datasets.Dataset":
        """The training split's features as trained on (e.g. only the first windows of each document);
        evaluation always sees them all."""
        return features

    def sampling_classes(self, features: "datasets.Dataset") -> "np.ndarray | None":
        """One class per training feature when training draws classes balanced (a task option), else None."""
        return None

    # ---- model
    @abstractmethod
    def load_model(self, name_or_path: str, **kwargs: Any) -> tuple["torch.nn.Module", ModelFacts]:
        """The model with this task's head, and what loading it switched on (speed paths, new modules)."""

    @abstractmethod
    def count_items(self, batch: Batch) -> int:
        """The number of loss terms in the batch (examples, labelled tokens): the loop normalises by it."""

    @abstractmethod
    def forward(self, model: "torch.nn.Module", batch: Batch, mode: Mode) -> tuple["torch.Tensor | None", Any]:
        """One forward pass: (loss summed over the batch's items, or None without targets; outputs for
        the evaluator). `mode` (see `Mode`): only "predict" uses the outputs, so a task whose outputs cost
        extra work (generation) may skip them otherwise; only "train" applies training-time regularisation."""

    # ---- evaluation and prediction
    @abstractmethod
    def evaluator(self, table: Table) -> Evaluator:
        """A fresh evaluator for `table` (encoded when it has gold, raw inputs when predicting)."""

    @abstractmethod
    def prediction_schema(self) -> type[Record]:
        """The shape of one prediction record as this task is fitted (a regression predicts {"value"}, a
        classifier {"label", "score", "probs"}): what `predict`, the run's predictions and a server return."""

    def worst_errors(self, rows: list[dict], k: int) -> list[dict[str, Any]]:
        """The test split's k most telling mistakes for report.html, worst first. `rows` are
        predictions/test.jsonl's ({file, line, input, gold, prediction}); each view is {"title", "row",
        "input" (what `Predictor.explain` takes), "fields": [{"name" (a role), "text", "marks": [{start, end,
        kind: "gold" | "pred", label}], "word_spans" (for a role that is a list of words: each word's
        characters in `text`)}]}. None by default: the page then says the task does not rank its errors."""
        return []

    def report_artifacts(self, metrics: dict[str, Any]) -> list[Artifact]:
        """Files the run folder gets from the test split's metrics (plots, tables); none by default."""
        return []

    @abstractmethod
    def state(self) -> dict:
        """What prediction needs besides the weights, saved beside the model."""

    def explain(self, model: "torch.nn.Module", tokenizer: Any, record: dict, prediction: dict, target: str | None,
                steps: int) -> dict[str, Any]:
        """Token attributions (`tunesmith.attribution.explain`) of the outputs behind `prediction`, the record
        `predict` gave for this checked input, per word with character offsets; `target` picks what to explain
        where the task has a choice (a label). Only for a task that declares `explains`."""
        raise NotImplementedError(f"the {self.name} task has no explanations")

    @property
    def cannot_self_train(self) -> str | None:
        """Why train.self_training cannot run this task as fitted (None: it can, by `pseudo_label`)."""
        return f"the {self.name} task's predictions carry no confidence to pick pseudo-labels by"

    def pseudo_label(self, record: dict) -> tuple[dict[str, Any], float]:
        """(target role -> value, confidence in [0, 1]) that the prediction record of an unlabelled row gives
        it as a training label: train.self_training keeps the rows whose confidence reaches its threshold."""
        raise NotImplementedError(self.cannot_self_train)

    def generation_config(self, model: "torch.nn.Module") -> Any:
        """The transformers GenerationConfig its predictions decode with (the model's defaults and the task's
        decoding options): `Predictor.stream` reads its `num_beams`. Only for a task that `generates`."""
        raise NotImplementedError(f"the {self.name} task does not generate")


# ---------------------------------------------------------------- registry

def features_dataset(cols: dict[str, list], features: "datasets.Features | None" = None) -> "datasets.Dataset":
    """A task's encoded columns as a Dataset (`preprocess`'s result), with datasets' own typing but not its
    fingerprint: that is a dill hash of the whole dataset state (about 14 ms, half the time of one sentence's
    `predict`), made for caching `.map` results, and tunesmith caches features under its own key
    (data/cache.py) and maps nothing over them."""
    import uuid

    import datasets

    class Unhashed(datasets.Dataset):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs, fingerprint=uuid.uuid4().hex)

    ds = Unhashed.from_dict(cols, features=features)
    ds.__class__ = datasets.Dataset  # a plain Dataset from here on (copies, pickles, isinstance checks)
    return ds


def _declaration_problems(cls: type) -> list[str]:
    """What is wrong with a task class's declaration (empty when nothing is)."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        return [f"{getattr(cls, '__name__', cls)!r} is not a subclass of tunesmith.tasks.base.Task"]
    problems = []
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        problems.append("`name` must be a non-empty string")
    if not isinstance(cls.aliases, tuple) or not all(isinstance(a, str) and a for a in cls.aliases):
        problems.append("`aliases` must be a tuple of names")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, TaskOptions)):
        problems.append("`Options` must be a subclass of TaskOptions")
        return problems
    fields = cls.Options.model_fields
    if cls.long_inputs not in LONG_INPUTS:
        problems.append(f"`long_inputs` must be one of {LONG_INPUTS}, not {cls.long_inputs!r}")
    for attr in ("loss_metrics", "head_modules", "decoding", "eval_logs", "onnx_outputs"):
        value = getattr(cls, attr)
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            problems.append(f"`{attr}` must be a tuple of strings")
    problems += [f"`decoding` names {k!r}, which is not one of its Options" for k in cls.decoding if k not in fields]
    problems += [f"`moved_keys` moves {old!r} to {new!r}, which is not one of its Options"
                 for old, new in cls.moved_keys.items() if new not in fields]
    problems += [f"`moved_keys` key {old!r} must be a dotted key such as 'train.loss'"
                 for old in cls.moved_keys if old.count(".") != 1]
    if cls.explains and cls.explain is Task.explain:
        problems.append("`explains` is True but it does not implement `explain`")
    if cls.generates and cls.generation_config is Task.generation_config:
        problems.append("`generates` is True but it does not implement `generation_config`")
    if cls.decoding and not cls.generates:
        problems.append("`decoding` options are for a task that generates (`generates = True`)")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        problems.append(f"it does not implement {', '.join(missing)}")
    for hook in ("forward",):
        params = list(inspect.signature(getattr(cls, hook)).parameters)
        if params[:4] != ["self", "model", "batch", "mode"]:
            problems.append(f"`{hook}` must take (self, model, batch, mode), not ({', '.join(params)})")
    return problems


def register_task(cls: type) -> type:
    """Class decorator: check the task's declaration, then make it available under its `name` and `aliases`.

    A task module with a wrong declaration fails when it is imported, naming what to fix, instead of
    failing inside a run."""
    problems = _declaration_problems(cls)
    if problems:
        raise TypeError(f"task class {cls.__qualname__} cannot be registered: " + "; ".join(problems))
    registry.add(cls, (cls.name, *cls.aliases))
    return cls


task_names = registry.task_names
task_class = registry.task_class


def get_task(cfg: "RunConfig", state: dict | None = None) -> Task:
    """The configured task, fresh (`state` None) or as saved beside a model."""
    return task_class(cfg.task.type).variant(cfg.task.options)(cfg, state)
