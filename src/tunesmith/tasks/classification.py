"""Text classification: single-label, multi-label, regression, single texts or sentence pairs."""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Hashable, Literal

import numpy as np

from ..data.prepare import Table
from ..errors import DataError
from .base import Batch, EvalResult, Role, TaskOptions, register_task

if TYPE_CHECKING:
    import datasets
    import torch

    from ..config import RunConfig

_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")  # no leading zeros: "007" is an identifier
_HF_PROBLEM = {"single_label": "single_label_classification",
               "multi_label": "multi_label_classification", "regression": "regression"}


def truncate(ids: list[int], special: list[int], types: list[int] | None, max_length: int,
             strategy: str) -> tuple[list[int], list[int] | None]:
    """Cut content tokens (never special ones) down to max_length.

    Pairs lose tokens from the longer text first; `head_tail` keeps the first quarter and last
    three quarters of the budget (Sun et al., 2019: how to fine-tune BERT for long texts).
    """
    content_runs: list[list[int]] = []
    prev_special = True
    for i, s in enumerate(special):
        if not s:
            if prev_special:
                content_runs.append([])
            content_runs[-1].append(i)
        prev_special = bool(s)
    budget = max_length - (len(ids) - sum(len(r) for r in content_runs))
    lens = _longest_first([len(r) for r in content_runs], budget)
    keep = [i for i, s in enumerate(special) if s]
    for run, n in zip(content_runs, lens):
        if strategy == "head_tail" and n < len(run):
            head = n // 4
            keep += run[:head] + run[len(run) - (n - head):]
        else:
            keep += run[:n]
    keep.sort()
    return [ids[i] for i in keep], ([types[i] for i in keep] if types is not None else None)


def _longest_first(lens: list[int], budget: int) -> list[int]:
    """Lengths after cutting the longest text first: cap every text at the largest c that fits."""
    if sum(lens) <= budget:
        return lens
    lo, hi = 0, max(lens)
    while lo < hi:
        c = (lo + hi + 1) // 2
        lo, hi = (c, hi) if sum(min(n, c) for n in lens) <= budget else (lo, c - 1)
    out = [min(n, lo) for n in lens]
    spare = budget - sum(out)
    for k, n in enumerate(lens):  # leftover tokens go to the earliest texts still cut
        if spare and n > out[k]:
            out[k] += 1
            spare -= 1
    return out


class ClassificationOptions(TaskOptions):
    problem_type: Literal["auto", "single_label", "multi_label", "regression"] = "auto"
    """auto: lists of labels (or task.label_separator) mean multi_label, anything else single_label.
    Regression is never guessed: a float label in a classification task is an error."""
    label_separator: str | None = None
    """Delimiter for multi-label strings such as "sports|politics" (formerly data.label_separator)."""
    truncation: Literal["head", "head_tail"] = "head"
    """Texts longer than model.max_length: head keeps their start; head_tail keeps the first and last
    tokens (long reviews). Formerly model.truncation."""


@register_task
class TextClassification:
    """One label (or several, or a number) per text or text pair."""

    name = "text-classification"
    aliases = ("classification",)
    Options = ClassificationOptions
    long_inputs = "truncate"
    generates = False
    loss_metrics = ()
    head_modules = ("classifier", "score")

    def __init__(self, cfg: "RunConfig", state: dict | None = None) -> None:
        self.cfg = cfg
        self.opts = ClassificationOptions.model_validate(cfg.task.options)
        state = state or {}
        self.problem_type: str = state.get("problem_type", self.opts.problem_type)
        self.labels: list[str] = state.get("labels", [])
        self.threshold: float = state.get("threshold", 0.5)

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
        return {"problem_type": self.problem_type, "labels": self.labels}

    def gold(self, table: Table, i: int) -> Any:
        v = table["label"][i]
        if self.problem_type == "single_label":
            return self.labels[int(v)]
        if self.problem_type == "multi_label":
            return [n for n, x in zip(self.labels, v) if x]
        return float(v)

    # ------------------------------------------------------------------ tokens
    def preprocess(self, table: Table, tokenizer: Any) -> "datasets.Dataset":
        import datasets

        max_len = self.cfg.model.max_length
        enc = tokenizer(table["text"], table.get("text_pair"), truncation=False, return_special_tokens_mask=True,
                        verbose=False)
        types_all = enc.get("token_type_ids")
        cols: dict[str, list] = {"input_ids": [], "n_tokens": [], "length": []}
        if types_all is not None:
            cols["token_type_ids"] = []
        for k, ids in enumerate(enc["input_ids"]):
            types = types_all[k] if types_all is not None else None
            cols["n_tokens"].append(len(ids))
            if len(ids) > max_len:
                ids, types = truncate(ids, enc["special_tokens_mask"][k], types, max_len, self.opts.truncation)
            cols["input_ids"].append(ids)
            cols["length"].append(len(ids))
            if types is not None:
                cols["token_type_ids"].append(types)
        cols["example"] = list(range(len(table)))
        if "label" in table:
            cols["labels"] = table["label"]
        return datasets.Dataset.from_dict(cols)

    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> Batch:
        import torch

        inputs = pad_inputs(features, pad_to_multiple_of)
        targets = {}
        if "labels" in features[0]:
            dtype = torch.long if self.problem_type == "single_label" else torch.float
            targets["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return Batch(inputs, targets, {"example": np.array([f["example"] for f in features])})

    def cache_key(self) -> dict:
        return {"task": self.name, "problem_type": self.problem_type, "max_length": self.cfg.model.max_length,
                "truncation": self.opts.truncation}

    # ------------------------------------------------------------------ model
    def load_model(self, name_or_path: str, **kwargs: Any) -> "torch.nn.Module":
        from transformers import AutoModelForSequenceClassification

        from ..fast_bert import speed_up_bert_classifier

        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=len(self.labels), problem_type=_HF_PROBLEM[self.problem_type],
            id2label=dict(enumerate(self.labels)), label2id={n: i for i, n in enumerate(self.labels)}, **kwargs)
        if self.cfg.model.lora is not None:  # adapters wrap the layers: the stock forward runs them
            fast = "off (model.lora: the stock forward)"
        elif speed_up_bert_classifier(model):
            fast = "on (exact fast forward of BertForSequenceClassification)"
        else:
            fast = "off (not a covered BERT classifier)"
        model.tunesmith_speed_paths = {"fast_bert": fast}
        return model

    def count_items(self, batch: Batch) -> int:
        return int(batch.meta["example"].shape[0])

    def forward(self, model: "torch.nn.Module", batch: Batch,
                predict: bool = True) -> tuple["torch.Tensor | None", "torch.Tensor"]:
        import torch.nn.functional as F

        logits = model(**batch.inputs).logits.float()
        if "labels" not in batch.targets:
            return None, logits
        y = batch.targets["labels"]
        if self.problem_type == "single_label":
            loss = F.cross_entropy(logits, y, reduction="sum")
        elif self.problem_type == "multi_label":
            loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(-1).sum()
        else:
            loss = F.mse_loss(logits.squeeze(-1), y, reduction="sum")
        return loss, logits

    # ------------------------------------------------------------------ evaluation
    @property
    def metrics(self) -> dict[str, bool]:
        return {"single_label": {"accuracy": True, "macro_f1": True, "weighted_f1": True},
                "multi_label": {"micro_f1": True, "macro_f1": True, "subset_accuracy": True},
                "regression": {"mse": False, "mae": False, "pearson": True, "spearman": True}}[self.problem_type]

    @property
    def default_metric(self) -> str:
        return {"single_label": "accuracy", "multi_label": "micro_f1", "regression": "mse"}[self.problem_type]

    def evaluator(self, table: Table) -> "ClassificationEvaluator":
        return ClassificationEvaluator(self, table)

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
            k = int(s.argmax())
            return {"label": self.labels[k], "score": float(s[k]),
                    "probs": {n: float(p) for n, p in zip(self.labels, s)}}
        if self.problem_type == "multi_label":
            return {"labels": [n for n, p in zip(self.labels, s) if p >= self.threshold],
                    "probs": {n: float(p) for n, p in zip(self.labels, s)}}
        return {"value": float(s)}

    def state(self) -> dict:
        return {"task": self.name, "problem_type": self.problem_type, "labels": self.labels,
                "threshold": self.threshold}


class ClassificationEvaluator:
    """Keeps one score row per example (probabilities, or the predicted value)."""

    def __init__(self, task: TextClassification, table: Table) -> None:
        self.task, self.table = task, table
        width = () if task.problem_type == "regression" else (len(task.labels),)
        self.scores = np.full((len(table), *width), np.nan, dtype=np.float32)
        self.seen = np.zeros(len(table), dtype=bool)

    def add(self, batch: Batch, outputs: "torch.Tensor") -> None:
        idx = batch.meta["example"]
        self.scores[idx] = self.task.scores(outputs.float())
        self.seen[idx] = True

    def merge(self, other: "ClassificationEvaluator") -> None:
        self.scores[other.seen] = other.scores[other.seen]
        self.seen |= other.seen

    def result(self, tune: bool = False) -> EvalResult:
        from ..evaluation.metrics import classification_metrics, multilabel_metrics, regression_metrics, tune_threshold

        task, s = self.task, self.scores
        metrics: dict[str, Any] = {}
        if "label" in self.table:
            y = np.asarray(self.table["label"])
            if task.problem_type == "multi_label" and tune:
                task.threshold = tune_threshold(s, y)
            if task.problem_type == "single_label":
                metrics = classification_metrics(s.argmax(-1), y, task.labels)
            elif task.problem_type == "multi_label":
                metrics = multilabel_metrics(s >= task.threshold, y, task.labels, task.threshold)
            else:
                metrics = regression_metrics(s, y)
        return EvalResult(metrics, [task.record(row) for row in s])


def pad_inputs(features: list[dict], pad_to_multiple_of: int | None = None) -> dict[str, "torch.Tensor"]:
    """input_ids, attention_mask and (when the features have them) token_type_ids, right-padded to the
    longest feature (rounded up to a multiple of `pad_to_multiple_of`). Padding ids are 0: the attention
    mask hides them, so any valid id does, and features from the cache need no tokenizer to collate."""
    import torch

    n = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.zeros((len(features), n), dtype=torch.long)
    mask = torch.zeros((len(features), n), dtype=torch.long)
    has_types = "token_type_ids" in features[0]
    types = torch.zeros((len(features), n), dtype=torch.long) if has_types else None
    for i, f in enumerate(features):
        L = len(f["input_ids"])
        ids[i, :L] = torch.as_tensor(f["input_ids"])
        mask[i, :L] = 1
        if types is not None:
            types[i, :L] = torch.as_tensor(f["token_type_ids"])
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch
