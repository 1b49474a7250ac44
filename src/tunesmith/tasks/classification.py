"""Text classification: single-label, multi-label, regression, single texts or sentence pairs."""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Hashable, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..collate import pad_inputs
from ..console import printable
from ..errors import ConfigError, DataError
from ..evaluation.report import figure, save_figure
from ..tokens import truncate, windows
from ..types import Artifact, Batch, EvalResult, ModelFacts, Record, Role, Table, TaskOptions, label_name
from .base import Mode, Task, features_dataset, register_task

if TYPE_CHECKING:
    import datasets
    import torch

    from ..config import RunConfig

_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")  # no leading zeros: "007" is an identifier
#: options that change the loss or the sampling of labels: single-label classification only
SINGLE_LABEL_OPTIONS = ("class_weights", "loss", "sampler")
FEW_ROWS = 8  # a class with fewer training rows gets the data report's few-shot advice
_HF_PROBLEM = {"single_label": "single_label_classification",
               "multi_label": "multi_label_classification", "regression": "regression"}


class ClassificationOptions(TaskOptions):
    method: Literal["finetune", "contrastive"] = "finetune"
    """finetune: the pretrained model with a classification head, trained end to end on the labelled rows.
    contrastive: for few labelled rows (about 8 to 32 per class; by 64, finetune caught up on TREC in
    bench/README), the SetFit recipe: a sentence-embedding body fine-tuned on pairs of rows (same label:
    similar; different: dissimilar), then a logistic regression on its embeddings
    (tunesmith/tasks/contrastive.py). Single- and multi-label."""
    pairs: int = Field(20, ge=1)
    """contrastive: pair draws per labelled row, each one row of the same label and one of another
    (SetFit's num_iterations), seeded by train.seed; an epoch is 2 x pairs x rows pairs."""
    problem_type: Literal["auto", "single_label", "multi_label", "regression"] = "auto"
    """auto: lists of labels (or task.label_separator) mean multi_label, anything else single_label.
    Regression is never guessed: a float label in a classification task is an error."""
    label_separator: str | None = None
    """Delimiter for multi-label strings such as "sports|politics" (formerly data.label_separator)."""
    long_text: Literal["truncate", "head_tail", "chunks"] = "truncate"
    """Texts longer than model.max_length. truncate: keep their start. head_tail: keep their first
    head_tokens and fill the rest from their end (long reviews; Sun et al., 2019). chunks: split them
    into windows of max_length overlapping by `stride` tokens, train on every window with its
    document's label, and combine the windows' logits into one prediction per document at evaluation
    and prediction (`aggregation`): metrics are per document. Formerly task.truncation / model.truncation
    (head = truncate)."""
    head_tokens: int | None = Field(None, ge=0)
    """head_tail: content tokens kept from the start; default a quarter of the budget (Sun et al.'s
    best split: 128 + 382 of 512)."""
    stride: int = Field(64, ge=0)
    """chunks: content tokens shared by consecutive windows (at most half a window)."""
    max_chunks: int | None = Field(None, ge=1)
    """chunks: train on only the first n windows of each document; evaluation and prediction use all."""
    aggregation: Literal["mean", "max", "weighted_mean"] = "mean"
    """chunks: one document's logits from its windows': the mean, the element-wise max, or the mean
    weighted by the tokens each window adds to the ones before it (so each token counts once, and a
    last window that mostly repeats the one before counts little)."""
    positive_label: str | None = None
    """Binary tasks: the class whose F1, precision-recall curve and threshold are reported; default the
    rarer class of the training split (the second label on a tie)."""
    threshold: Annotated[float, Field(gt=0, lt=1)] | Literal["tune"] | None = None
    """Decision threshold on the probability of the positive class (binary) or of each label
    (multi-label). tune: chosen on validation to maximise threshold_metric, saved with the model and
    used by predict. Default: 0.5 for binary (the more probable class wins), tune for multi-label."""
    threshold_metric: Literal["f1", "macro_f1", "accuracy"] = "f1"
    """What a tuned threshold maximises: the positive class's F1 (binary) or micro-F1 (multi-label),
    macro-F1, or accuracy (subset accuracy for multi-label)."""
    sampler: Literal["uniform", "balanced"] = "uniform"
    """uniform: every training example once per epoch. balanced: each class gets the same share of every
    epoch (rare classes oversampled, repeated; common ones drawn without repeats), for imbalanced labels.
    Single-label only (formerly train.sampler)."""
    class_weights: Literal["none", "balanced"] | dict[str, float] = "none"
    """Weights of the classes in the loss: none; balanced (n / (classes x n_class), scikit-learn's
    rule, from the training split); or {label: weight} (labels left out weigh 1). Single-label only
    (formerly train.class_weights)."""
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    """focal: cross-entropy scaled by (1 - p_true)^focal_gamma, which down-weights easy examples (Lin et
    al., 2017); class_weights apply to it too. Single-label only (formerly train.loss)."""
    focal_gamma: float = Field(2.0, ge=0)
    """The focal loss's gamma; 0 is plain cross-entropy (formerly train.focal_gamma)."""

    @field_validator("class_weights", mode="before")
    @classmethod
    def _label_keys(cls, v: Any) -> Any:
        return {label_name(k): w for k, w in v.items()} if isinstance(v, dict) else v

    @field_validator("positive_label", mode="before")
    @classmethod
    def _label_name(cls, v: Any) -> Any:
        """A label written as a number or a boolean (YAML 1, true) names the class spelled "1", "true"."""
        return label_name(v)

    @model_validator(mode="before")
    @classmethod
    def _moved_truncation(cls, raw: Any) -> Any:
        """task.truncation (head | head_tail) became long_text; configs written with it keep working."""
        if isinstance(raw, dict) and "truncation" in raw:
            raw = dict(raw)
            old = raw.pop("truncation")
            if "long_text" in raw:
                raise ValueError("task.truncation is the old name of task.long_text: set only long_text")
            raw["long_text"] = old
        return raw

    @field_validator("long_text", mode="before")
    @classmethod
    def _old_head(cls, v: Any) -> Any:
        """The old truncation value `head` is long_text's truncate."""
        return "truncate" if v == "head" else v


class LabelPrediction(Record):
    label: str
    score: float
    probs: dict[str, float]


class LabelsPrediction(Record):
    labels: list[str]
    probs: dict[str, float]


class ValuePrediction(Record):
    value: float


@register_task
class TextClassification(Task):
    """One label (or several, or a number) per text or text pair."""

    name = "text-classification"
    aliases = ("classification",)
    Options = ClassificationOptions
    long_inputs = "truncate"  # "window" for an instance with long_text: chunks
    head_modules = ("classifier", "score")
    explains = True
    hub_pipeline_tag = "text-classification"
    onnx_outputs = ("logits",)
    moved_keys = {"train.class_weights": "class_weights", "train.loss": "loss", "train.sampler": "sampler",
                  "train.focal_gamma": "focal_gamma", "model.truncation": "long_text",
                  "data.label_separator": "label_separator"}
    opts: ClassificationOptions

    @classmethod
    def variant(cls, options: dict[str, Any]) -> type[Task]:
        """task.method: contrastive is the few-shot recipe (its own module) on this task's data and metrics."""
        if options.get("method") == "contrastive" and cls is TextClassification:
            from .contrastive import ContrastiveClassification

            return ContrastiveClassification
        return cls

    def __init__(self, cfg: "RunConfig", state: dict | None = None) -> None:
        super().__init__(cfg, state)
        self.long_inputs = "window" if self.opts.long_text == "chunks" else "truncate"
        state = state or {}
        self.problem_type: str = state.get("problem_type", self.opts.problem_type)
        self.labels: list[str] = state.get("labels", [])
        fixed = self.opts.threshold if isinstance(self.opts.threshold, float) else 0.5
        self.threshold: float = state.get("threshold", fixed)
        # a binary model saved before positive classes existed: class 1, which its 0.5 threshold favoured
        self.positive: int | None = state.get("positive", 1 if self.problem_type == "single_label"
                                              and len(self.labels) == 2 else None)
        self.class_weights: list[float] | None = state.get("class_weights")  # fitted on the training split

    def roles(self) -> list[Role]:
        return [Role("text", "string", doc="the text"),
                Role("text_pair", "string", required=False, doc="the second text of a sentence pair"),
                Role("label", "any", target=True, doc="the label: class name, list, delimited string or number")]

    # ------------------------------------------------------------------ labels
    def _label_error(self, t: Table, i: int, msg: str, hint: str | None = None) -> DataError:
        return DataError(msg, file=t.file[i], line=t.line[i], column=t.column_of.get("label", "label"), hint=hint)

    def _single(self, t: Table, i: int) -> str:
        """The class name of row i. Strings stay strings ("01" and "1" are two classes); numbers become
        their integer spelling, so CSV "1", JSON 1 and JSON 1.0 are the same class; a canonical decimal
        string ("1.0", as pandas writes float columns) is read as the number it spells."""
        v = t["label"][i]
        if isinstance(v, str):
            s = v.strip()
            if not _DECIMAL.fullmatch(s):
                return s
            v = float(s)
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            if v.is_integer():
                return str(int(v))
            raise self._label_error(t, i, f"label {v!r} is a float, but this is a classification task",
                                    "for a numeric target set task.problem_type: regression")
        raise self._label_error(t, i, f"label {v!r} ({type(v).__name__}) is not a class name",
                                "for several labels per row set task.problem_type: multi_label")

    def _single_all(self, t: Table) -> list[str]:
        """Class names of every row; one file giving the same name as a number and as a string is an error:
        JSON 1 and "1" in one column are usually a data bug, and merging or splitting them would hide it."""
        names, kinds = [], {}
        for i in range(len(t)):
            name = self._single(t, i)
            kind = "a string" if isinstance(t["label"][i], str) else "a number"
            first = kinds.setdefault((t.file[i], name), (kind, t.line[i]))
            if first[0] != kind:
                raise self._label_error(
                    t, i, f"label {t['label'][i]!r} is {kind} here but {first[0]} at line {first[1]} of the same file",
                    "write every label of the column the same way (all numbers or all strings)")
            names.append(name)
        return names

    def _multi(self, t: Table, i: int) -> list[str]:
        v = t["label"][i]
        if isinstance(v, (list, tuple)):
            return [str(x).strip() for x in v if str(x).strip()]
        if isinstance(v, str):
            sep = self.opts.label_separator or ","
            return [p.strip() for p in v.split(sep) if p.strip()]
        return [str(v)]

    def _regression(self, t: Table, i: int) -> float:
        try:
            x = float(t["label"][i])
        except (TypeError, ValueError):
            raise self._label_error(t, i, f"label {t['label'][i]!r} is not a number (task.problem_type: regression)")
        if not math.isfinite(x):
            raise self._label_error(t, i, f"label {t['label'][i]!r} is not finite")
        return x

    def _infer_problem_type(self, train: Table) -> str:
        if self.problem_type != "auto":
            return self.problem_type
        if self.opts.label_separator or any(isinstance(v, (list, tuple)) for v in train["label"]):
            return "multi_label"
        return "single_label"

    def fit(self, splits: dict[str, Table]) -> None:
        train = splits["train"]
        self.problem_type = self._infer_problem_type(train)
        if self.problem_type == "regression":
            self.labels = ["value"]
        else:
            if self.problem_type == "single_label":
                seen = set(self._single_all(train))
            else:
                seen = {x for i in range(len(train)) for x in self._multi(train, i)}
            # integers in their canonical spelling sort as numbers (2 before 10), anything else as text
            names = sorted(seen, key=int) if all(_INTEGER.fullmatch(x) for x in seen) else sorted(seen)
            if len(names) < 2:
                raise DataError(f"the training split has only {len(names)} distinct label(s): {names}",
                                file=train.file[0], column=train.column_of.get("label", "label"),
                                hint="a classifier needs at least two classes")
            self.labels = names
        for split, t in splits.items():
            self.encode(split, t)
        self._check_label_options(train)
        if self.binary:
            self.positive = self._positive_index(train)
        self.class_weights = self._class_weights(train)

    def _check_label_options(self, train: Table) -> None:
        """The options that only some problem types have, refused where they would do nothing."""
        o = self.opts
        for key in SINGLE_LABEL_OPTIONS:
            value, default = getattr(o, key), ClassificationOptions.model_fields[key].default
            if value != default and self.problem_type != "single_label":
                raise ConfigError(f"task.{key}: {value!r} needs single-label classification; this "
                                  f"task is {self.problem_type}")
        binary = self.binary
        if self.opts.positive_label is not None and not binary:
            raise ConfigError("task.positive_label is for binary classification; this task has "
                              f"{len(self.labels)} {self.problem_type} labels")
        if self.opts.threshold is not None and not (binary or self.problem_type == "multi_label"):
            raise ConfigError("task.threshold is for binary and multi-label classification")
        if self.opts.positive_label is not None and self.opts.positive_label not in self.labels:
            raise ConfigError(f"task.positive_label '{self.opts.positive_label}' is not a label of the training "
                              f"split ({', '.join(self.labels)})")
        if isinstance(o.class_weights, dict):
            unknown = [k for k in o.class_weights if k not in self.labels]
            if unknown:
                import difflib

                close = difflib.get_close_matches(unknown[0], self.labels, n=1)
                raise ConfigError(f"task.class_weights names '{unknown[0]}', which is not a label of the training "
                                  "split" + (f". Did you mean '{close[0]}'?" if close else "")
                                  + f" Labels: {', '.join(self.labels)}")

    def _positive_index(self, train: Table) -> int:
        """task.positive_label; else a clearly rarer class (under 40% of train: spam, fraud); else the
        second label, scikit-learn's pos_label=1 convention, so near-balanced data does not flip it."""
        if self.opts.positive_label is not None:
            return self.labels.index(self.opts.positive_label)
        counts = np.bincount(np.asarray(train["label"], dtype=np.int64), minlength=2)
        return 0 if counts[0] < 0.4 * counts.sum() else 1

    def _class_weights(self, train: Table) -> list[float] | None:
        w = self.opts.class_weights
        if w == "none" or self.problem_type != "single_label":
            return None
        if w == "balanced":  # scikit-learn's rule: n / (classes x n_class)
            counts = np.bincount(np.asarray(train["label"], dtype=np.int64), minlength=len(self.labels))
            return [len(train) / (len(self.labels) * c) if c else 0.0 for c in counts]
        return [float(w.get(n, 1.0)) for n in self.labels]

    def encode(self, split: str, t: Table) -> None:
        """Replace raw labels by model targets, against the label set fixed by the training split."""
        if self.problem_type == "regression":
            t.columns["label"] = [self._regression(t, i) for i in range(len(t))]
            return
        index = {n: k for k, n in enumerate(self.labels)}
        parsed = self._single_all(t) if self.problem_type == "single_label" else \
            [self._multi(t, i) for i in range(len(t))]
        encoded = []
        for i, v in enumerate(parsed):
            for x in (v if isinstance(v, list) else [v]):
                if str(x) not in index:
                    raise self._label_error(
                        t, i, f"label '{x}' in split '{split}' never occurs in the training split",
                        f"known labels: {', '.join(self.labels)}; fix the row or add training examples")
            if self.problem_type == "single_label":
                encoded.append(index[str(v)])
            else:
                hot = [0.0] * len(self.labels)
                for x in v:
                    hot[index[str(x)]] = 1.0
                encoded.append(hot)
        t.columns["label"] = encoded

    def stratify_keys(self, table: Table) -> list[Hashable] | None:
        if self.problem_type == "single_label":
            return table["label"]
        return None

    def describe(self, table: Table) -> dict[str, Any]:
        if self.problem_type == "regression":
            y = np.asarray(table["label"], dtype=float)
            return {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()), "max": float(y.max())}
        if self.problem_type == "multi_label":
            counts = np.asarray(table["label"]).sum(axis=0)
            return {n: int(c) for n, c in zip(self.labels, counts)}
        c = Counter(table["label"])
        return {n: c.get(k, 0) for k, n in enumerate(self.labels)}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"problem_type": self.problem_type, "labels": self.labels}
        if self.positive is not None:
            out["positive_label"] = self.labels[self.positive]
        if self.class_weights is not None:
            out["class_weights"] = dict(zip(self.labels, self.class_weights))
        return out

    def gold(self, table: Table, i: int) -> Any:
        v = table["label"][i]
        if self.problem_type == "single_label":
            return self.labels[int(v)]
        if self.problem_type == "multi_label":
            return [n for n, x in zip(self.labels, v) if x]
        return float(v)

    # ------------------------------------------------------------------ tokens
    def preprocess(self, table: Table, tokenizer: Any) -> "datasets.Dataset":

        max_len = self.cfg.model.max_length
        enc = tokenizer(table["text"], table.get("text_pair"), truncation=False, return_special_tokens_mask=True,
                        verbose=False)
        types_all = enc.get("token_type_ids")
        cols: dict[str, list] = {"input_ids": [], "n_tokens": [], "length": []}
        if types_all is not None:
            cols["token_type_ids"] = []
        chunks = self.opts.long_text == "chunks"
        if chunks:
            cols.update(example=[], window=[], n_content=[])
        for k, ids in enumerate(enc["input_ids"]):
            types = types_all[k] if types_all is not None else None
            special = enc["special_tokens_mask"][k]
            if chunks:
                parts = windows(ids, special, types, max_len, self.opts.stride)
            elif len(ids) > max_len:
                parts = [(*truncate(ids, special, types, max_len, "head" if self.opts.long_text == "truncate"
                                    else "head_tail", self.opts.head_tokens), 0)]
            else:
                parts = [(ids, types, 0)]
            for w, (part, part_types, content) in enumerate(parts):
                cols["n_tokens"].append(len(ids))
                cols["input_ids"].append(part)
                cols["length"].append(len(part))
                if types is not None:
                    cols["token_type_ids"].append(part_types)
                if chunks:
                    cols["example"].append(k)
                    cols["window"].append(w)
                    cols["n_content"].append(content)
        if not chunks:
            cols["example"] = list(range(len(table)))
        if "label" in table:
            cols["labels"] = [table["label"][k] for k in cols["example"]]
        return features_dataset(cols)

    def training_features(self, features: "datasets.Dataset") -> "datasets.Dataset":
        """With chunks and max_chunks: only the first max_chunks windows of each document."""
        if self.opts.long_text != "chunks" or self.opts.max_chunks is None:
            return features
        return features.select(np.flatnonzero(np.asarray(features["window"]) < self.opts.max_chunks))

    def headline(self) -> str:
        return f"{self.name}, {self.problem_type}, {len(self.labels)} labels"

    def data_report(self, features: dict[str, "datasets.Dataset"], token_lengths: dict[str, dict],
                    max_length: int) -> tuple[dict[str, Any], list[str]]:
        """Beyond 10% of a split's texts cut, the long-text strategy that keeps what is lost."""
        lt, warnings = self.opts.long_text, []
        lost, other = ("their end", "chunks (every token is read, slower) or head_tail (keeps the end too, same "
                       "cost)") if lt == "truncate" else ("their middle", "chunks (every token is read, slower)")
        for s, lens in token_lengths.items():
            if lens.get("truncated_pct", 0) > 10:
                warnings.append(f"{lens['truncated_pct']}% of {s} texts ({lens['truncated']}) exceed model.max_length="
                                f"{max_length} and lose {lost} (task.long_text: {lt}); consider task.long_text: "
                                f"{other}, or a larger max_length")
        few = self._few_rows(features.get("train"))
        if few and self.opts.method == "finetune":
            shown = ", ".join(f"{name!r} ({n})" for name, n in few[:5]) + (f" and {len(few) - 5} more"
                                                                         if len(few) > 5 else "")
            warnings.append(f"{len(few)} classes have fewer than {FEW_ROWS} training rows: {shown}; fine-tuning a "
                            "classifier on so few is often close to chance: task.method: contrastive (few-shot, "
                            "learns from pairs of rows) does much better there")
        return {}, warnings

    def _few_rows(self, train: "datasets.Dataset | None") -> list[tuple[str, int]]:
        """(label, training rows) of each class with fewer than FEW_ROWS rows (a document's windows count once)."""
        if train is None or self.problem_type == "regression" or "labels" not in train.column_names:
            return []
        _, first = np.unique(np.asarray(train["example"]), return_index=True)
        y = np.asarray(train["labels"])[first]
        counts = y.sum(axis=0) if y.ndim == 2 else np.bincount(y.astype(int), minlength=len(self.labels))
        return [(self.labels[k], int(n)) for k, n in enumerate(counts) if n < FEW_ROWS]

    def sampling_classes(self, features: "datasets.Dataset") -> np.ndarray | None:
        """With task.sampler: balanced, the class of each training feature (a window takes its document's)."""
        return np.asarray(features["labels"], dtype=np.int64) if self.opts.sampler == "balanced" else None

    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> Batch:
        import torch

        inputs = pad_inputs(features, pad_to_multiple_of)
        targets = {}
        if "labels" in features[0]:
            dtype = torch.long if self.problem_type == "single_label" else torch.float
            targets["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        meta = {"example": np.array([f["example"] for f in features])}
        if "n_content" in features[0]:
            meta["weight"] = np.array([f["n_content"] for f in features], dtype=np.float64)
        return Batch(inputs, targets, meta)

    def cache_key(self) -> dict:
        o = self.opts
        return {"task": self.name, "problem_type": self.problem_type, "max_length": self.cfg.model.max_length,
                "long_text": o.long_text, **({"head_tokens": o.head_tokens} if o.long_text == "head_tail" else {}),
                **({"stride": o.stride} if o.long_text == "chunks" else {})}

    # ------------------------------------------------------------------ model
    def load_model(self, name_or_path: str, **kwargs: Any) -> tuple["torch.nn.Module", ModelFacts]:
        from transformers import AutoModelForSequenceClassification

        from ..fast_bert import speed_up_bert_classifier

        kwargs.setdefault("trust_remote_code", False)  # never transformers' prompt to run a repo's code
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=len(self.labels), problem_type=_HF_PROBLEM[self.problem_type],
            id2label=dict(enumerate(self.labels)), label2id={n: i for i, n in enumerate(self.labels)}, **kwargs)
        if self.cfg.model.lora is not None:  # adapters wrap the layers: the stock forward runs them
            fast = "off (model.lora: the stock forward)"
        elif speed_up_bert_classifier(model):
            fast = "on (exact fast forward of BertForSequenceClassification)"
        else:
            fast = "off (not a covered BERT classifier)"
        return model, ModelFacts(speed_paths={"fast_bert": fast})

    def count_items(self, batch: Batch) -> int:
        return int(batch.meta["example"].shape[0])

    def forward(self, model: "torch.nn.Module", batch: Batch,
                mode: Mode) -> tuple["torch.Tensor | None", "torch.Tensor"]:
        import torch.nn.functional as F

        logits = model(**batch.inputs).logits.float()
        if "labels" not in batch.targets:
            return None, logits
        y = batch.targets["labels"]
        if self.problem_type == "single_label":
            loss = self._single_label_loss(logits, y)
        elif self.problem_type == "multi_label":
            loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(-1).sum()
        else:
            loss = F.mse_loss(logits.squeeze(-1), y, reduction="sum")
        return loss, logits

    def _single_label_loss(self, logits: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        """Summed cross-entropy, each example weighted by its class's weight (task.class_weights), and
        for task.loss: focal scaled by (1 - p_true)^gamma. Weights are applied in evaluation too, so
        the validation loss is the loss being minimised."""
        import torch
        import torch.nn.functional as F

        tr = self.opts
        logp = F.log_softmax(logits, dim=-1).gather(1, y[:, None]).squeeze(1)
        per_example = -logp
        if tr.loss == "focal":  # clamped: (1 - p)^gamma has an infinite slope at p = 1 when gamma < 1
            per_example = per_example * (-torch.expm1(logp)).clamp_min(1e-12).pow(tr.focal_gamma)
        if self.class_weights is not None:
            per_example = per_example * torch.as_tensor(self.class_weights, dtype=logits.dtype,
                                                        device=logits.device)[y]
        return per_example.sum()

    # ------------------------------------------------------------------ evaluation
    @property
    def binary(self) -> bool:
        """Two single-label classes: the positive class, its threshold and its F1 apply."""
        return self.problem_type == "single_label" and len(self.labels) == 2

    @property
    def metrics(self) -> dict[str, bool]:
        if self.binary:
            return {"accuracy": True, "macro_f1": True, "weighted_f1": True, "f1": True, "precision": True,
                    "recall": True, "average_precision": True}
        return {"single_label": {"accuracy": True, "macro_f1": True, "weighted_f1": True},
                "multi_label": {"micro_f1": True, "macro_f1": True, "subset_accuracy": True},
                "regression": {"mse": False, "mae": False, "pearson": True, "spearman": True}}[self.problem_type]

    @property
    def default_metric(self) -> str:
        return {"single_label": "accuracy", "multi_label": "micro_f1", "regression": "mse"}[self.problem_type]

    def evaluator(self, table: Table) -> "ClassificationEvaluator":
        return ClassificationEvaluator(self, table)

    def report_artifacts(self, metrics: dict[str, Any]) -> list[Artifact]:
        """The confusion matrix (JSON and plot) up to 50 labels, the most frequent confusions beyond, and a
        binary task's precision-recall curve."""
        from ..io import atomic_write_json

        out = []
        cm = metrics.get("confusion_matrix")
        if cm:
            out += [Artifact("confusion_matrix.json", lambda path: atomic_write_json(path, cm)),
                    Artifact("plots/confusion_matrix.png",
                             lambda path: plot_confusion_matrix(cm["matrix"], cm["labels"], path))]
        if metrics.get("top_confusions"):
            out.append(Artifact("plots/top_confusions.png",
                                lambda path: plot_top_confusions(metrics["top_confusions"], path)))
        if metrics.get("pr_curve"):
            out.append(Artifact("plots/precision_recall.png", lambda path: plot_precision_recall(metrics, path)))
        return out

    def scores(self, logits: "torch.Tensor") -> np.ndarray:
        """Probabilities (softmax or sigmoid) or the predicted value, as numpy."""
        if self.problem_type == "single_label":
            return logits.softmax(-1).cpu().numpy()
        if self.problem_type == "multi_label":
            return logits.sigmoid().cpu().numpy()
        return logits.squeeze(-1).cpu().numpy()

    def record(self, s: np.ndarray) -> dict:
        """The prediction record of one example's scores."""
        if self.problem_type == "single_label":
            k = self.decide(s[None])[0]
            return {"label": self.labels[k], "score": float(s[k]),
                    "probs": {n: float(p) for n, p in zip(self.labels, s)}}
        if self.problem_type == "multi_label":
            return {"labels": [n for n, p in zip(self.labels, s) if p >= self.threshold],
                    "probs": {n: float(p) for n, p in zip(self.labels, s)}}
        return {"value": float(s)}

    def prediction_schema(self) -> type[Record]:
        return {"single_label": LabelPrediction, "multi_label": LabelsPrediction,
                "regression": ValuePrediction}[self.problem_type]

    @property
    def cannot_self_train(self) -> str | None:
        return "a regression predicts a number, with no confidence to pick pseudo-labels by" \
            if self.problem_type == "regression" else None

    def pseudo_label(self, record: dict) -> tuple[dict[str, Any], float]:
        """The predicted class and its probability; multi-label: the predicted labels, as sure as the least
        sure label (each label's probability or its complement)."""
        if self.problem_type == "single_label":
            return {"label": record["label"]}, record["score"]
        return {"label": record["labels"]}, min(max(p, 1.0 - p) for p in record["probs"].values())

    def decide(self, s: np.ndarray) -> np.ndarray:
        """Class indices from probability rows: the most probable class, or for a binary task the
        positive one when its probability reaches the threshold."""
        if self.binary and self.positive is not None:
            return np.where(s[:, self.positive] >= self.threshold, self.positive, 1 - self.positive)
        return s.argmax(-1)

    def worst_errors(self, rows: list[dict], k: int) -> list[dict[str, Any]]:
        """The most confident wrong labels; multi-label: the most labels wrong; regression: the largest errors."""
        def view(r: dict, title: str) -> dict:
            return {"title": title, "row": r, "input": r["input"],
                    "fields": [{"name": n, "text": r["input"][n]} for n in ("text", "text_pair") if r["input"].get(n)]}

        if self.problem_type == "single_label":
            wrong = sorted((r for r in rows if r["prediction"]["label"] != r["gold"]),
                           key=lambda r: -r["prediction"]["score"])
            return [view(r, f"gold {r['gold']!r}, predicted {r['prediction']['label']!r} "
                            f"(probability {r['prediction']['score']:.3f})") for r in wrong[:k]]
        if self.problem_type == "multi_label":
            wrong = sorted((r for r in rows if set(r["prediction"]["labels"]) != set(r["gold"])),
                           key=lambda r: -len(set(r["prediction"]["labels"]) ^ set(r["gold"])))
            return [view(r, f"gold {sorted(r['gold'])}, predicted {sorted(r['prediction']['labels'])}")
                    for r in wrong[:k]]
        worst = sorted(rows, key=lambda r: -abs(r["prediction"]["value"] - r["gold"]))
        return [view(r, f"gold {r['gold']:.4g}, predicted {r['prediction']['value']:.4g} "
                        f"(error {r['prediction']['value'] - r['gold']:+.4g})") for r in worst[:k]]

    def explain(self, model: "torch.nn.Module", tokenizer: Any, record: dict, prediction: dict, target: str | None,
                steps: int) -> dict[str, Any]:
        """Attributions of the probability of `target` (default: the predicted label; for multi-label the
        first predicted one, else the most probable; a regression explains its value). A text longer than
        model.max_length is explained over its first max_length tokens."""
        import torch

        from ..attribution import Encoded, explain, text_words
        from ..errors import ConfigError

        text, pair = record["text"], record.get("text_pair")
        enc = tokenizer(text, pair, truncation=True, max_length=self.cfg.model.max_length,
                        return_offsets_mapping=True, return_special_tokens_mask=True)
        seq, wids = enc.sequence_ids(), enc.word_ids()
        words = [a or b for a, b in zip(text_words("text", 0, enc["offset_mapping"], seq, wids),
                                        text_words("text_pair", 1, enc["offset_mapping"], seq, wids))]
        device = next(model.parameters()).device
        inputs = {k: torch.tensor([enc[k]], device=device)
                  for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        encoded = Encoded(inputs, words, {"text": text, "text_pair": pair},
                          [bool(m) for m in enc["special_tokens_mask"]])
        if self.problem_type == "regression":
            if target is not None:
                raise ConfigError("a regression explains its value: it takes no target label")
            return explain(model, tokenizer, encoded, {"value": lambda out: out.logits.float()[:, 0]}, steps)
        if target is None:
            probs = prediction["probs"]
            target = prediction["label"] if self.problem_type == "single_label" else \
                (prediction["labels"] or [max(probs, key=probs.get)])[0]
        if target not in self.labels:
            raise ConfigError(f"target {target!r} is not a label of this model; its labels: "
                              + ", ".join(map(str, self.labels)))
        k = self.labels.index(target)
        norm = (lambda x: x.softmax(-1)) if self.problem_type == "single_label" else (lambda x: x.sigmoid())
        return explain(model, tokenizer, encoded, {target: lambda out: norm(out.logits.float())[:, k]}, steps)

    def state(self) -> dict:
        return {"task": self.name, "problem_type": self.problem_type, "labels": self.labels,
                "threshold": self.threshold, "positive": self.positive, "class_weights": self.class_weights}


class ClassificationEvaluator:
    """Keeps one row of logits per example: a document split into windows (long_text: chunks) combines
    its windows' logits as they arrive (sum and weight, or running max), so memory is per document."""

    def __init__(self, task: TextClassification, table: Table) -> None:
        self.task, self.table = task, table
        width = 1 if task.problem_type == "regression" else len(task.labels)
        self.total = np.zeros((len(table), width), dtype=np.float64)
        self.weight = np.zeros(len(table), dtype=np.float64)
        self.top = np.full((len(table), width), -np.inf, dtype=np.float64)

    def add(self, batch: Batch, outputs: "torch.Tensor") -> None:
        idx = batch.meta["example"]
        logits = outputs.float().cpu().numpy().astype(np.float64).reshape(len(idx), -1)
        w = batch.meta.get("weight") if self.task.opts.aggregation == "weighted_mean" else None
        w = np.ones(len(idx)) if w is None else np.maximum(w, 1.0)
        np.add.at(self.total, idx, logits * w[:, None])
        np.add.at(self.weight, idx, w)
        np.maximum.at(self.top, idx, logits)

    def state(self) -> dict:
        """The rows of the examples seen here (every seen example has weight >= 1)."""
        seen = np.flatnonzero(self.weight)
        return {"example": seen, "total": self.total[seen], "weight": self.weight[seen], "top": self.top[seen]}

    def merge(self, state: dict) -> None:
        ex = state["example"]
        self.total[ex] += state["total"]
        self.weight[ex] += state["weight"]
        self.top[ex] = np.maximum(self.top[ex], state["top"])

    def logits(self) -> np.ndarray:
        """One row per example: its only window's logits, or its windows' combined."""
        if self.task.opts.aggregation == "max":
            return self.top.astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.total / self.weight[:, None]).astype(np.float32)

    def result(self, tune: bool = False) -> EvalResult:
        import torch

        from ..metrics.labels import (binary_metrics, classification_metrics, multilabel_metrics,
                                          regression_metrics, tune_binary_threshold, tune_threshold)

        task = self.task
        s = task.scores(torch.from_numpy(self.logits()))
        metrics: dict[str, Any] = {}
        tuning = tune and np.isfinite(s).all() and (task.opts.threshold == "tune" or (
            task.opts.threshold is None and task.problem_type == "multi_label"))
        if "label" in self.table:
            y = np.asarray(self.table["label"])
            if task.problem_type == "multi_label" and tuning:
                task.threshold = tune_threshold(s, y, task.opts.threshold_metric)
            if task.binary and tuning:
                task.threshold = tune_binary_threshold(s[:, task.positive], y == task.positive,
                                                       task.opts.threshold_metric)
            if task.problem_type == "single_label":
                metrics = classification_metrics(task.decide(s), y, task.labels)
                if task.binary:
                    metrics.update(binary_metrics(s[:, task.positive], y == task.positive, task.threshold,
                                                  task.labels[task.positive]))
            elif task.problem_type == "multi_label":
                metrics = multilabel_metrics(s >= task.threshold, y, task.labels, task.threshold)
            else:
                metrics = regression_metrics(s, y)
        return EvalResult(metrics, [task.record(row) for row in s])


# ------------------------------------------------------------------ plots of the test split
# matplotlib is imported by evaluation.report's figure() only when a plot is drawn


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path) -> None:
    n = len(labels)
    fig = figure((max(4, 0.6 * n + 2), max(3.5, 0.6 * n + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title("confusion matrix (test)")
    peak = max(max(r) for r in matrix) or 1
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, matrix[i][j], ha="center", va="center",
                        color="white" if matrix[i][j] > peak / 2 else "black", fontsize=8)
    fig.colorbar(im, ax=ax)
    save_figure(fig, path)


def plot_top_confusions(confusions: list[dict], path: Path) -> None:
    """The most frequent (true -> predicted) errors as bars: readable for any number of labels."""
    n = len(confusions)
    fig = figure((8, max(2.5, 0.28 * n + 1)))
    ax = fig.subplots()
    names = [f"{c['true']} -> {c['predicted']}" for c in confusions]
    ax.barh(range(n), [c["count"] for c in confusions], color="tab:red")
    ax.set_yticks(range(n), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("test rows"), ax.set_title(f"most frequent confusions (test, top {n})")
    save_figure(fig, path)


def plot_precision_recall(metrics: dict[str, Any], path: Path) -> None:
    """A binary task's precision-recall curve on test, with the operating point of its threshold."""
    curve = metrics["pr_curve"]
    fig = figure((5.5, 4.5))
    ax = fig.subplots()
    ax.step(curve["recall"], curve["precision"], where="post", color="tab:blue",
            label=f"AP {metrics.get('average_precision', float('nan')):.3f}")
    ax.plot([metrics["recall"]], [metrics["precision"]], "o", color="tab:red",
            label=f"threshold {metrics['threshold']:.3g}: F1 {metrics['f1']:.3f}")
    ax.set_xlabel("recall"), ax.set_ylabel("precision"), ax.set_xlim(0, 1.02), ax.set_ylim(0, 1.02)
    ax.set_title(f"precision-recall, positive class {printable(str(metrics['positive_label']))} (test)")
    ax.legend(loc="lower left"), ax.grid(alpha=0.3)
    save_figure(fig, path)
