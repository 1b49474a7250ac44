"""The run configuration: small typed sections, validated at load time, unknown keys rejected."""
from __future__ import annotations

import copy
import difflib
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)
from pydantic_core import PydanticCustomError

from . import registry
from .data.readers import parallel_files
from .errors import ConfigError, DataError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class TaskConfig(_Section):
    """What to learn. `type` picks the task from the registry; the other keys are that task's options,
    validated by its own schema (written flat: `task: {type: token-classification, tag_scheme: bio}`)."""

    type: str = "text-classification"
    """Task from the registry: text-classification (single/multi-label, regression, sentence pairs),
    token-classification (NER), question-answering (extractive), translation, summarization, text-generation
    (causal-LM fine-tuning)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """The task's options with their defaults filled in (see the task.* rows of this table)."""

    @model_validator(mode="before")
    @classmethod
    def _flat_options(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"type": v}
        if isinstance(v, dict) and "options" not in v:
            return {"type": v.get("type", "text-classification"),
                    "options": {k: x for k, x in v.items() if k != "type"}}
        return v

    @model_validator(mode="after")
    def _check_options(self) -> "TaskConfig":
        try:
            options = registry.task_class(self.type).Options
        except ConfigError as e:
            raise PydanticCustomError("tunesmith", "{message}", {"message": str(e)}) from None
        try:
            checked = options.model_validate(self.options)
        except ValidationError as err:
            lines = _error_lines(err, options, ("task",))
            raise PydanticCustomError("tunesmith", "{message}", {"message": "\n".join(lines)}) from None
        object.__setattr__(self, "options", checked.model_dump(mode="json"))
        return self

    @model_serializer(mode="plain")
    def _flat(self) -> dict[str, Any]:
        return {"type": self.type, **self.options}


class LoraSection(_Section):
    r: int = Field(8, ge=1)
    """Rank of the LoRA update matrices."""
    alpha: float = Field(16.0, gt=0)
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch's input."""
    target_modules: Literal["auto", "all-linear"] | list[str] = "auto"
    """Layers that get adapters: auto = the attention projections PEFT knows for the architecture (BERT
    query/value, T5 q/v, Llama q_proj/v_proj, GPT-2 c_attn), all-linear, or a list of module names."""


class ModelConfig(_Section):
    name: str | None = None
    """Hub name or local folder; None = the embedded default (all-MiniLM-L6-v2, offline)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin."""
    max_length: int = Field(128, ge=8)
    """Tokens per example after truncation (special tokens included)."""
    trust_remote_code: bool = False
    """Run model code shipped with a Hub repo; off unless you trust the repo. Hub names only: a local folder
    whose config has an auto_map is refused, and predict, evaluate and tunesmith.load never run a model
    folder's code (nor the model/ of a run trained with this on)."""
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """Override the model's dropout: every dropout probability its config has, by that architecture's own key
    names (BERT hidden_dropout_prob, attention_probs_dropout_prob and classifier_dropout; GPT-2 resid_pdrop,
    embd_pdrop, attn_pdrop; Llama attention_dropout; T5 dropout_rate; BART dropout, attention_dropout,
    activation_dropout). A model whose config has none of them is an error."""
    lora: LoraSection | None = None
    """LoRA instead of full fine-tuning (`lora: {}` for the defaults; keys r, alpha, dropout,
    target_modules): adapters through PEFT, the task head trained in full. Checkpoints hold the adapter
    and head only; the run's model/ is merged (plain transformers loads it), adapter/ is beside it."""
    padding_free: Literal["auto", "on", "off"] = "auto"
    """Token classification and QA: run each batch as one row of real tokens, attention within each
    example (a registered transformers attention function; the padded batches' outputs, less work).
    auto: on for BERT models on transformers 5; on: an error where it cannot run; off: padded
    batches. The report's train.speed_paths says what ran."""


class DataConfig(_Section):
    train: str | None = None
    """Training file (CSV, TSV, JSON, JSONL, Parquet; .gz allowed); relative to the config file's
    folder (to the current folder when the config is a dict or RunConfig in Python)."""
    validation: str | None = None
    """Validation file; when absent, split off train (validation_ratio)."""
    test: str | None = None
    """Test file; when absent, split off train (test_ratio)."""
    hub_dataset: str | None = None
    """A Hugging Face Hub dataset name, used instead of files (needs network or a local cache)."""
    hub_config: str | None = None
    """Hub dataset configuration name (e.g. sst2 for glue)."""
    hub_splits: dict[str, str] = Field(default_factory=lambda: {
        "train": "train", "validation": "validation", "test": "test"})
    """Which Hub split to use for train/validation/test."""
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "conll"] = "auto"
    """File format; auto reads it from the extension (.conll, .iob and .bio are CoNLL column files; a .txt
    CoNLL file needs format: conll). JSON recognises SQuAD files and Label Studio exports."""
    conll_tag_column: int = -1
    """CoNLL files: the column holding the tag (0-based; negative counts from the end)."""
    languages: list[str] | None = None
    """Parallel text: with data.train: train.{lang}.gz and languages: [en, de], train.en.gz and
    train.de.gz are read line by line into columns en and de (map them with data.columns, e.g.
    {source: en, target: de}). Files of different line counts are an error naming both."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Role -> column, e.g. {question: q, context: passage}; the roles depend on the task (README). Roles
    not listed read the column of their own name (or a usual alias, such as label for NER spans)."""
    header: bool | Literal["auto"] = "auto"
    """CSV/TSV: whether the first row names the columns. auto: it does, and when the configured
    columns are missing and that row looks like data, the error says so. false: every row is data."""
    column_names: list[str] | None = None
    """Names of a headerless CSV/TSV's columns in file order (data.header: false); without them the
    columns are named by position: "0", "1", ... (so text_column: 0 works)."""
    text_column: str = "text"
    """Column holding the text (the same as data.columns.text)."""
    text_pair_column: str | None = None
    """Second text column for sentence-pair tasks (NLI, paraphrase); the same as data.columns.text_pair."""
    label_column: str = "label"
    """Column holding the label (the same as data.columns.label)."""
    join_text_lists: str | None = None
    """A text cell holding a list of strings (JSON, Parquet) is joined with this separator (e.g. " ");
    null: such a cell is an error, as is a nested object."""
    validation_ratio: float = Field(0.1, gt=0.0, lt=0.5)
    """Share of all training rows held out for validation when no validation file is given."""
    test_ratio: float = Field(0.1, gt=0.0, lt=0.5)
    """Share of all training rows held out for testing when no test file is given."""
    split_seed: int = 42
    """Seed of the made splits (stratified by label where possible), and of the max_*_rows samples."""
    max_train_rows: int | None = Field(None, ge=1)
    """Train on a seeded sample of this many training rows (stratified by label where possible), for a
    quick run on a large file; the data report says how many of how many were kept."""
    train_per_class: int | None = Field(None, ge=1)
    """Train on a seeded sample of this many training rows of each class (every row of a class that has
    fewer), for a few-shot run or to measure how accuracy grows with labels on your own data; held-out
    splits are carved from the whole training file first. Tasks whose rows have one class each."""
    drop_label_issues: bool = False
    """Find the training rows most likely mislabelled (`tunesmith check-labels`: confident learning on
    out-of-fold probabilities) and train without them; each is listed in label_issues.jsonl and, with its
    reason, in dropped_rows.jsonl. Tasks whose rows have one class each."""
    unlabelled: str | None = None
    """Unlabelled rows (a file with the training file's input columns; a label column is ignored) for
    train.self_training to pseudo-label; relative to the config file's folder, as data.train."""
    max_eval_rows: int | None = Field(None, ge=1)
    """Validate and test on seeded samples of at most this many rows each (held-out splits are made from
    the whole training file first, so they never overlap the training rows)."""
    on_missing: Literal["drop", "fill", "error"] = "drop"
    """Rows with a missing or empty text or label: drop (listed in dropped_rows.jsonl), fill, or error."""
    fill_value: str = ""
    """Text used for a missing text under on_missing: fill (a missing label is always dropped)."""
    cache_dir: str | None = None
    """Where tokenized splits are cached; default ~/.cache/tunesmith."""

    @field_validator("text_column", "text_pair_column", "label_column", mode="before")
    @classmethod
    def _position(cls, v: Any) -> Any:
        """A headerless file's columns are positions: text_column: 0 means column "0"."""
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("columns", mode="before")
    @classmethod
    def _positions(cls, v: Any) -> Any:
        return {k: cls._position(c) for k, c in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _names_need_no_header(self) -> "DataConfig":
        if self.column_names is not None:
            if self.header is not False:
                raise ValueError("data.column_names names the columns of a headerless file: "
                                 "set data.header: false too")
            dup = next((c for i, c in enumerate(self.column_names) if c in self.column_names[:i]), None)
            if dup is not None:
                raise ValueError(f"data.column_names lists '{dup}' twice")
        return self


class SelfTrainingConfig(_Section):
    rounds: int = Field(3, ge=1)
    """Student rounds after the teacher (round 0, the labelled rows alone); fewer run when a round's
    validation metric does not improve on the best round's."""
    threshold: float = Field(0.9, ge=0.0, le=1.0)
    """A pool row joins training when the teacher's confidence in its label reaches this (the predicted
    class's probability; multi-label: the least certain label's)."""
    max_per_class: int | None = Field(None, ge=1)
    """At most this many pool rows of each predicted label join a round, the surest first: the teacher's
    sure rows are often mostly of one class, and a student trained on them learns that class. With
    threshold: 0, the N surest rows of each class, however sure the teacher is."""


class TrainConfig(_Section):
    epochs: float = Field(3, gt=0)
    """Passes over the training data (fractions allowed)."""
    max_steps: int | None = Field(None, gt=0)
    """Optimizer steps; overrides epochs when set."""
    batch_size: int = Field(32, ge=1)
    """Examples per step summed over all processes (each process gets batch_size / processes)."""
    batch_tokens: int | None = Field(None, ge=1)
    """Cut batches by a token budget instead: as many examples as fit in this many tokens (an example
    longer than the budget makes a batch alone). For flattened batches (text-generation packing), where
    a batch costs its tokens, not its longest example times its size."""
    grad_accum: int = Field(1, ge=1)
    """Batches per optimizer step; the loss equals that of one batch grad_accum times larger."""
    lr: float = Field(5e-5, gt=0)
    """Peak learning rate of AdamW."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay (not applied to biases and norm weights)."""
    warmup_ratio: float = Field(0.06, ge=0, le=1)
    """Share of steps with linear warmup."""
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warmup."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Gradient clipping norm; null turns clipping off."""
    max_nonfinite_steps: int = Field(3, ge=1)
    """A step whose loss or gradient norm is NaN or infinite is skipped: no weight update, gradients
    zeroed, the step counted (nonfinite_steps in report.json; its loss is null in metrics.jsonl). After
    this many such steps in a row training stops with an error (exit code 2) and no model is exported:
    lower train.lr or keep max_grad_norm on. With fp16, a non-finite gradient with a finite loss is the
    grad scaler's overflow, which the scaler handles itself; it is not counted. A validation result
    whose metric or loss is not finite is never the best checkpoint."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on GPUs and CPUs that run it natively, else fp32. fp16 needs a CUDA GPU. Training only:
    every evaluation (validation, test, evaluate, predict) runs in fp32, so a prediction does not depend
    on its batch mates (report.json's inference.precision)."""
    batching: Literal["bucket", "random"] = "random"
    """random: plain shuffling, the permutation the Hugging Face Trainer draws for the same seed (the
    standard recipe; the fast BERT path already skips padding work). bucket: batches cut from
    length-sorted random windows: faster still, but lower accuracy on SST-2 (bench/README.md)."""
    bucket_batches: int = Field(16, ge=1)
    """With batching: bucket, how many batches are drawn at random and then sorted by length
    together. Small windows keep batches nearly as random as plain shuffling; large ones pad least."""
    seed: int = 42
    """Seed for initialisation, batch order and dropout."""
    eval_every: Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, lt=1)] | Literal["epoch"] = "epoch"
    """Evaluate (and checkpoint) every N optimizer steps (an integer), at the end of each epoch ("epoch"),
    or every fraction of an epoch (a number below 1: 0.25 = four times per epoch, which lets a search's
    pruner stop bad trials earlier)."""
    log_every: int = Field(1, ge=1)
    """Steps between train records (loss, lr, grad norm, throughput) in metrics.jsonl."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many evaluations without improvement of eval.metric."""
    keep_checkpoints: int = Field(2, ge=1)
    """Most recent checkpoints kept (the best one is always kept too)."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes."""
    self_training: SelfTrainingConfig | None = None
    """Learn from data.unlabelled too: a teacher trained on the labelled rows labels the pool, the rows it is
    sure of (threshold) join training, and a student trains from the pretrained model again; each student
    is the next round's teacher, until `rounds` or no validation improvement. Keys: rounds, threshold.
    Each round is a run folder in rounds/, each round's pseudo-labels are in pseudo_labels/; the run
    folder gets the best round's model. Tasks whose predictions have a confidence (classification)."""


class EvalConfig(_Section):
    metric: str | None = None
    """Metric that picks the best checkpoint; default per task: accuracy, micro_f1 (multi-label),
    mse (regression, lower is better)."""
    batch_size: int = Field(64, ge=1)
    """Examples per evaluation and prediction batch."""
    explain_errors: int = Field(5, ge=0)
    """How many of report.html's worst test errors are shaded by their explanations (integrated gradients,
    20 steps each, where the task explains itself); 0: none, and the page is written without loading the model."""


class Dimension(_Section):
    """One key's values in a search space: exactly one of choice, uniform, loguniform or int."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)
    choice: list[Any] | None = Field(None, min_length=1)
    """Values to pick from (text, numbers, booleans or null)."""
    uniform: tuple[float, float] | None = None
    """[low, high], drawn uniformly."""
    loguniform: tuple[float, float] | None = None
    """[low, high], drawn uniformly on a log scale (learning rates); both above 0."""
    integer: tuple[int, int] | None = Field(None, alias="int")
    """[low, high], integers with both ends included (grid: every one of them)."""
    step: float | None = Field(None, gt=0)
    """With uniform or int: values are low + k * step."""

    @model_validator(mode="after")
    def _one_kind(self) -> "Dimension":
        kinds = [k for k in ("choice", "uniform", "loguniform", "integer") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choice, uniform, loguniform, int "
                             f"(got {', '.join(kinds) or 'none'})")
        bounds = self.uniform or self.loguniform or self.integer
        if bounds is not None and bounds[0] > bounds[1]:
            raise ValueError(f"[low, high] with low <= high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs low > 0, got {list(self.loguniform)}")
        if self.step is not None and self.uniform is None and self.integer is None:
            raise ValueError("step goes with uniform or int")
        if self.choice is not None and any(not isinstance(v, (str, int, float, bool, type(None))) for v in self.choice):
            raise ValueError("choice values must be text, numbers, booleans or null")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "uniform", "loguniform", "integer") if getattr(self, k) is not None)

    @model_serializer(mode="plain")
    def _compact(self) -> dict[str, Any]:
        """As written: {int: [1, 4]}, not every kind with nulls."""
        value = getattr(self, self.kind)
        out = {"int" if self.kind == "integer" else self.kind: list(value)}
        return out | ({"step": self.step} if self.step is not None else {})


class SearchConfig(_Section):
    method: Literal["grid", "random", "bayes"] = "bayes"
    """grid: every combination once (choice and int dimensions only); random: independent draws;
    bayes: Optuna's TPE sampler. random and bayes are reproducible with search.seed (one worker)."""
    space: dict[str, Dimension] = Field(min_length=1)
    """Config keys by dotted path, each with its values: {choice: [...]}, {uniform: [lo, hi]},
    {loguniform: [lo, hi]} or {int: [lo, hi]} (uniform and int take an optional step: {int: [8, 64], step: 8});
    checked against the config schema before any trial."""
    metric: str | None = None
    """Validation metric to optimise; default: the task's (eval.metric or the task's main metric)."""
    direction: Literal["maximize", "minimize"] | None = None
    """Default: the metric's own (loss and perplexity lower, accuracy higher, ...)."""
    trials: int | None = Field(None, ge=1)
    """Trials in all, over every worker; default: the grid's size (grid), 20 (random, bayes)."""
    timeout: float | None = Field(None, gt=0)
    """Seconds after which a worker starts no new trial."""
    pruner: Literal["none", "median", "hyperband"] = "none"
    """Stop trials whose validation scores are bad at an evaluation: median (below the median of earlier
    trials at the same point) or hyperband (successive halving brackets). Scores are reported at each
    evaluation, at the share of an epoch trained; evaluate more often (train.eval_every: 0.25) to prune earlier."""
    min_resource: int = Field(100, ge=1)
    """hyperband: percent of an epoch a trial trains before it can be pruned (100 = one epoch); the
    largest budget is the most epochs a trial can draw (train.epochs, or its search dimension)."""
    storage: str | None = None
    """Where the study lives: null = a SQLite file study.db in output_dir; or any SQLAlchemy URL
    (postgresql://user@host/db) that workers on several machines share."""
    study_name: str | None = None
    """Default: the name of output_dir's folder."""
    workers: int = Field(1, ge=1)
    """Local worker processes (GPUs are shared out one each when there are enough). More machines join
    with `tunesmith search CONFIG --join`."""
    seed: int = 0
    """Seed of the sampler (random, bayes), mixed with the worker's number and the trials already in
    the study: a new one-worker study draws the same trials for the same seed; a resumed one draws new ones."""
    keep_models: bool = False
    """Keep every completed trial's model/; by default only the best trial keeps it."""
    heartbeat_seconds: int = Field(30, ge=1)
    """A running trial's heartbeat; a trial silent for twice this long (its worker was killed) is marked
    failed and its parameters are queued again."""


class RunConfig(_Section):
    task: TaskConfig = Field(default_factory=TaskConfig)
    """What to learn: type (the task) and that task's options, written flat beside it."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The pretrained model: name, revision, max_length, dropout, lora, padding_free."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Where the examples come from: files or a Hub dataset, columns, splits, missing values."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Fine-tuning: epochs or max_steps, batch_size (global), lr, schedule, precision, evaluation,
    checkpoints, early stopping."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation: the metric that picks the best checkpoint, and the evaluation batch size."""
    output_dir: str = "runs/run"
    """The run folder: config, data report, metrics, checkpoints, predictions, plots, model. For
    `tunesmith search`, the study folder (trials/, leaderboard, best_config.yaml, plots)."""
    search: SearchConfig | None = None
    """Hyperparameter search (`tunesmith search`; `tunesmith train` ignores it): keys method, space,
    metric, direction, trials, timeout, pruner, storage, workers, seed (see the search.* rows)."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        """Keys that were shared once and are a task's options now (the task's `moved_keys`, e.g.
        train.class_weights -> task.class_weights): a config written with them keeps working, with a note."""
        if not isinstance(raw, dict) or not isinstance(raw.get("task", {}), (str, dict)):
            return raw
        task = raw.get("task", {})
        task = {"type": task} if isinstance(task, str) else dict(task)
        try:
            moved = registry.task_class(task.get("type", "text-classification")).moved_keys
        except ConfigError:
            return raw  # the unknown task.type is reported by TaskConfig
        raw = dict(raw)
        for old, new in moved.items():
            section, key = old.split(".")
            if not isinstance(raw.get(section), dict) or key not in raw[section]:
                continue
            raw[section] = dict(raw[section])
            value = raw[section].pop(key)
            if new in task:
                raise ValueError(f"{old} is the old place of task.{new}: set only task.{new}")
            task[new] = value
            _note_moved(old, f"task.{new}")
        raw["task"] = task
        return raw

    @model_validator(mode="after")
    def _has_data(self) -> "RunConfig":
        if not self.data.train and not self.data.hub_dataset:
            raise ValueError("data.train (a file) or data.hub_dataset (a Hub name) is required")
        files = [k for k in ("train", "validation", "test") if getattr(self.data, k)]
        if (self.train.self_training is None) != (self.data.unlabelled is None):
            raise ValueError("train.self_training learns from the rows of data.unlabelled: set both or neither"
                             if self.train.self_training is not None else
                             "data.unlabelled is read by train.self_training (e.g. train.self_training: "
                             "{rounds: 3, threshold: 0.9}): set both or neither")
        if self.data.hub_dataset and files:
            raise ValueError(f"data.hub_dataset and data.{files[0]} are both set: use the Hub dataset or files, "
                             "not both (for local files, set data.hub_dataset: null)")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- loading and overrides

def _note_moved(old: str, new: str) -> None:
    """Say once per process that a config key has moved (the config still works)."""
    if (old, new) not in _NOTED:
        _NOTED.add((old, new))
        warnings.warn(f"{old} is now {new}: the config works as it is; write {new} to silence this note",
                      FutureWarning, stacklevel=2)


_NOTED: set[tuple[str, str]] = set()


def _sub_section(annotation: Any) -> type[BaseModel] | None:
    """The section model inside an optional annotation (`LoraSection | None` -> LoraSection), else None."""
    return next((a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), None)


def _fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    """The valid keys at a dotted location, for did-you-mean suggestions."""
    for part in path:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        ann = _sub_section(ann) or ann
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


def _moved_to(dotted: str, task_type: str | None) -> str | None:
    """Where a key that moved into a task's options lives now ("it is task.class_weights of the
    text-classification task now"), when it is one of a registered task's `moved_keys`."""
    for name in registry.task_names():
        new = registry.task_class(name).moved_keys.get(dotted)
        if new is not None:
            return f"it is task.{new} of the {name} task now (this config's task is {task_type})"
    return None


# Hugging Face names (TrainingArguments, the run_*.py scripts' arguments, PEFT's LoRA names) -> (the tunesmith key,
# or None where there is none; the answer). Found at whatever place the user wrote them; every target is a key of
# the schema (tests/test_config.py checks it), and every answer names its target.
HF_NAMES: dict[str, tuple[str | None, str]] = {
    "learning_rate": ("train.lr", "tunesmith calls it train.lr"),
    "per_device_train_batch_size": ("train.batch_size", "train.batch_size is the global batch; with N processes "
                                                        "each gets batch_size/N"),
    "train_batch_size": ("train.batch_size", "train.batch_size is the global batch; with N processes each gets "
                                             "batch_size/N"),
    "per_device_eval_batch_size": ("eval.batch_size", "tunesmith calls it eval.batch_size (per process: each "
                                                      "process evaluates whole batches of that size)"),
    "eval_batch_size": ("eval.batch_size", "tunesmith calls it eval.batch_size (per process: each process "
                                           "evaluates whole batches of that size)"),
    "bf16": ("train.precision", "write train.precision: bf16 (fp32 for bf16: false; the default, auto, picks bf16 "
                                "where the hardware runs it natively)"),
    "fp16": ("train.precision", "write train.precision: fp16 (fp32 for fp16: false; fp16 needs a CUDA GPU)"),
    "model_name_or_path": ("model.name", "tunesmith calls it model.name"),
    "model_revision": ("model.revision", "tunesmith calls it model.revision"),
    "tokenizer_name": (None, "no tunesmith key: the tokenizer is always model.name's own"),
    "num_train_epochs": ("train.epochs", "tunesmith calls it train.epochs"),
    "eval_steps": ("train.eval_every", "tunesmith calls it train.eval_every (an integer: every N optimizer steps; "
                                       "also epoch, or a fraction of an epoch)"),
    "eval_strategy": ("train.eval_every", "tunesmith calls it train.eval_every: epoch, or an integer number of "
                                          "optimizer steps"),
    "evaluation_strategy": ("train.eval_every", "tunesmith calls it train.eval_every: epoch, or an integer number "
                                                "of optimizer steps"),
    "save_steps": ("train.eval_every", "no separate key: a checkpoint is saved at every evaluation "
                                       "(train.eval_every)"),
    "save_strategy": ("train.eval_every", "no separate key: a checkpoint is saved at every evaluation "
                                          "(train.eval_every)"),
    "save_total_limit": ("train.keep_checkpoints", "tunesmith calls it train.keep_checkpoints (the best one is "
                                                   "always kept too)"),
    "load_best_model_at_end": ("eval.metric", "no key needed: tunesmith always tests and exports the best "
                                              "checkpoint by eval.metric"),
    "metric_for_best_model": ("eval.metric", "tunesmith calls it eval.metric"),
    "greater_is_better": (None, "no tunesmith key: the direction is the metric's own (loss lower, accuracy "
                                "higher)"),
    "max_steps": ("train.max_steps", "it is train.max_steps"),
    "weight_decay": ("train.weight_decay", "it is train.weight_decay"),
    "warmup_ratio": ("train.warmup_ratio", "it is train.warmup_ratio"),
    "warmup_steps": ("train.warmup_ratio", "tunesmith has train.warmup_ratio only: the share of all optimizer "
                                           "steps (warmup_steps / total steps)"),
    "lr_scheduler_type": ("train.scheduler", "tunesmith calls it train.scheduler (linear, cosine or constant)"),
    "gradient_accumulation_steps": ("train.grad_accum", "tunesmith calls it train.grad_accum"),
    "max_grad_norm": ("train.max_grad_norm", "it is train.max_grad_norm"),
    "seed": ("train.seed", "it is train.seed"),
    "logging_steps": ("train.log_every", "tunesmith calls it train.log_every"),
    "early_stopping_patience": ("train.early_stopping_patience", "it is train.early_stopping_patience"),
    "dataloader_num_workers": ("train.num_workers", "tunesmith calls it train.num_workers"),
    "optim": (None, "no tunesmith key: tunesmith trains with AdamW (fused where the device has it)"),
    "output_dir": ("output_dir", "it is output_dir, at the top level of the config"),
    "max_seq_length": ("model.max_length", "tunesmith calls it model.max_length"),
    "max_source_length": ("model.max_length", "tunesmith calls it model.max_length"),
    "max_length": ("model.max_length", "it is model.max_length"),
    "train_file": ("data.train", "tunesmith calls it data.train"),
    "validation_file": ("data.validation", "tunesmith calls it data.validation"),
    "test_file": ("data.test", "tunesmith calls it data.test"),
    "dataset_name": ("data.hub_dataset", "tunesmith calls it data.hub_dataset"),
    "dataset_config_name": ("data.hub_config", "tunesmith calls it data.hub_config"),
    "max_train_samples": ("data.max_train_rows", "tunesmith calls it data.max_train_rows"),
    "max_eval_samples": ("data.max_eval_rows", "tunesmith calls it data.max_eval_rows"),
    "validation_split_percentage": ("data.validation_ratio", "tunesmith calls it data.validation_ratio (a share, "
                                                             "not a percent: 5 is 0.05)"),
    "text_column_name": ("data.text_column", "tunesmith calls it data.text_column"),
    "label_column_name": ("data.label_column", "tunesmith calls it data.label_column"),
    "label_all_tokens": ("task.label_all_subtokens", "tunesmith calls it task.label_all_subtokens "
                                                     "(token-classification)"),
    "label_smoothing_factor": ("task.label_smoothing", "tunesmith calls it task.label_smoothing (translation, "
                                                       "summarization)"),
    "lora_r": ("model.lora.r", "tunesmith calls it model.lora.r"),
    "lora_alpha": ("model.lora.alpha", "tunesmith calls it model.lora.alpha"),
    "lora_dropout": ("model.lora.dropout", "tunesmith calls it model.lora.dropout"),
}


def _error_lines(err: ValidationError, root: type[BaseModel], prefix: tuple = (),
                 task_type: str | None = None) -> list[str]:
    """One line per error, unknown keys with a did-you-mean among the valid keys at that place (`task_type`:
    the config's task, for a key that moved into another task's options); a Hugging Face name (HF_NAMES) gets
    its exact answer instead, wherever it was written."""
    lines = []
    for e in err.errors():
        if e["type"] == "tunesmith":  # already worded (task options, unknown task type)
            lines += [line if line.startswith("  - ") else f"  - {line}" for line in e["msg"].splitlines()]
            continue
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in ("function-after",)))
        dotted = ".".join(str(p) for p in prefix + loc) or "(top level)"
        if e["type"] == "extra_forbidden" and root is RunConfig and _moved_to(dotted, task_type):
            lines.append(f"  - unknown key '{dotted}': {_moved_to(dotted, task_type)}")
            continue
        if e["type"] == "extra_forbidden" and loc and str(loc[-1]) in HF_NAMES:
            lines.append(f"  - unknown key '{dotted}': {HF_NAMES[str(loc[-1])][1]}")
            continue
        if e["type"] == "extra_forbidden":
            valid = _fields_at(root, loc[:-1])
            if root is RunConfig and loc[:-1] == ("task",):
                valid = [k for k in valid if k != "options"]
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f" did you mean '{'.'.join(str(p) for p in prefix + loc[:-1] + (close[0],))}'?" if close else ""
            lines.append(f"  - unknown key '{dotted}'.{hint} Valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"  - {dotted}: {e['msg']} (got {e.get('input')!r})")
    return lines


def _format_errors(err: ValidationError, source: str, given: dict[str, str] | None = None,
                   task_type: str | None = None) -> str:
    """The error lines under one heading; a line about a key set by an override (`given`: dotted key ->
    "--set train.lrr=1") says so, and the heading names the config file only if a line comes from it."""
    lines, from_file = [], False
    for line in _error_lines(err, RunConfig, task_type=task_type):
        item = next((i for k, i in (given or {}).items() if f"'{k}'" in line or line.startswith(f"  - {k}:")), None)
        lines.append(f"{line} (given by {item})" if item else line)
        from_file = from_file or item is None
    return "\n".join([f"invalid configuration in {source}:" if from_file else "invalid configuration:", *lines])


_OVERRIDE_EXAMPLE = {"--set": "--set train.lr=3e-5", "override": "\"train.lr=3e-5\" or {\"train.lr\": 3e-5}"}


def parse_override(item: str, flag: str = "override") -> tuple[list[str], Any]:
    """`train.lr=3e-5` -> (['train', 'lr'], 3e-05); values are parsed as YAML scalars.

    `flag` is how the user gave it, for messages: "--set" on the command line, "override" from Python.
    """
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"{flag} expects key=value, got {item!r} (for example "
                          f"{_OVERRIDE_EXAMPLE.get(flag, _OVERRIDE_EXAMPLE['override'])})")
    key, raw = item.split("=", 1)
    text = raw.strip()
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text  # '@name', '`x`': the text as typed
    if value is None and text not in ("null", "Null", "NULL", "~"):
        value = text  # '#...' was read as a YAML comment
    elif isinstance(value, str) and value != text and text[:1] not in ("'", '"'):
        value = text  # '|' and '>' start YAML block scalars
    if isinstance(value, str):  # YAML reads 3e-5 as a string; numbers should be numbers
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def flat_keys(node: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """A nested mapping as {key path: leaf value}; dotted keys split into parts, empty dicts are leaves."""
    out: dict[tuple[str, ...], Any] = {}
    for k, v in node.items():
        keys = (*prefix, *str(k).split("."))
        out.update(flat_keys(v, keys) if isinstance(v, dict) and v else {keys: v})
    return out


def _override_items(overrides: Any, flag: str) -> list[tuple[list[str], Any, str]]:
    """(dotted key, value, as the user wrote it) from a list of "key=value" or a dict {"train.lr": 3e-5}.

    A dict's values are taken as they are (not parsed as YAML); nested dicts merge key by key. A bare
    string is refused rather than split into characters.
    """
    if isinstance(overrides, dict):
        return [(list(keys), v, f"{'.'.join(keys)}={v!r}") for keys, v in flat_keys(overrides).items()]
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, (list, tuple)):
        raise ConfigError(f"overrides must be a list of \"key=value\" strings or a dict such as "
                          f"{{\"train.lr\": 3e-5}}, not {type(overrides).__name__} {overrides!r}")
    return [(*parse_override(item, flag), item) for item in overrides]


def apply_overrides(raw: dict, overrides: Any, flag: str = "override") -> dict:
    """Apply dotted overrides (see `_override_items`) to a raw config mapping in place."""
    for keys, value, item in _override_items(overrides, flag):
        node = raw
        for k in keys[:-1]:
            if isinstance(node.get(k), str) and k == "task":
                node[k] = {"type": node[k]}
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{flag} {item}: '{k}' is not a section")
        node[keys[-1]] = value
    return raw


def build_config(raw: dict, *, source: str = "config", base_dir: Path | None = None,
                 overrides: list[str] | dict | None = None, flag: str = "override") -> RunConfig:
    """Validate a raw mapping; data paths in a config file are relative to its folder (`base_dir`).

    One rule, no fallback: a path that exists only relative to the current folder is not picked up
    silently. Paths in a dict or RunConfig from Python stay relative to the current folder.
    """
    raw = apply_overrides(copy.deepcopy(dict(raw or {})), overrides if overrides is not None else [], flag)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        given = {".".join(keys): f"{flag} {item}" for keys, _, item in _override_items(overrides or [], flag)}
        task = raw.get("task", "text-classification")
        raise ConfigError(_format_errors(err, source, given, task if isinstance(task, str) else
                                         task.get("type", "text-classification"))) from None
    if base_dir is not None:
        for split in ("train", "validation", "test", "unlabelled"):
            p = getattr(cfg.data, split)
            if not p or Path(p).expanduser().is_absolute():
                continue
            path = (base_dir / p).resolve()
            for tried in (parallel_files(path, cfg.data.languages) or {None: path}).values():
                if not tried.exists():
                    raise DataError(f"data.{split} file not found: '{p}' (looked for {tried})", file=source,
                                    hint="relative data paths in a config file are relative to the config file's "
                                         "folder")
            setattr(cfg.data, split, str(path))
    return cfg


def config_sections() -> str:
    """The config's sections, one line each, from RunConfig's field descriptions (for `tunesmith train --help`)."""
    width = max(map(len, RunConfig.model_fields))
    first = {name: " ".join((f.description or "").split()).split(". ")[0].removesuffix(".") + "."
             for name, f in RunConfig.model_fields.items()}
    return "\n".join(f"  {name:<{width}}  {text}" for name, text in first.items())


def config_reference() -> str:
    """The README's config reference as a Markdown table, generated from the schema so it cannot rot."""
    from .registry import task_class, task_names

    rows = ["| key | default | meaning |", "|---|---|---|"]

    def row(name: str, f: Any, note: str = "") -> None:
        default = f.default_factory() if f.default_factory is not None else (None if f.is_required() else f.default)
        desc = note + " ".join((f.description or "").split()).replace("|", "\\|")
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        rows.append(f"| `{name}` | {'(required)' if f.is_required() else f'`{shown}`'} | {desc} |")

    for section, field in RunConfig.model_fields.items():
        sub = field.annotation
        items = sub.model_fields.items() if isinstance(sub, type) and issubclass(sub, BaseModel) else [(None, field)]
        for key, f in items:
            if section == "task" and key == "options":
                for task in task_names():
                    for opt, of in task_class(task).Options.model_fields.items():
                        row(f"task.{opt}", of, f"({task}) ")
                continue
            name = f"{section}.{key}" if key else section
            row(name, f)
            nested = _sub_section(f.annotation)  # an optional section such as model.lora or search: its keys too
            for sub, sf in (nested.model_fields.items() if nested else []):
                row(f"{name}.{sub}", sf)
    return "\n".join(rows)


def load_config(path: str | Path | dict | RunConfig, overrides: list[str] | dict | None = None,
                flag: str = "override") -> RunConfig:
    """Load a YAML file (or accept a dict / RunConfig) and apply dotted overrides.

    overrides: a list of "key=value" (values parsed as YAML) or a dict {"train.lr": 3e-5}; `flag`
    names them in messages ("--set" from the command line).
    """
    if isinstance(path, RunConfig):
        return build_config(path.model_dump(mode="json"), overrides=overrides, flag=flag) if overrides else path
    if isinstance(path, dict):
        return build_config(path, overrides=overrides, flag=flag)
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections task/model/data/train/eval")
    return build_config(raw, source=str(path), base_dir=path.parent, overrides=overrides, flag=flag)
