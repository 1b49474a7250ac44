"""Multiple choice (the SWAG / Hugging Face `run_swag` shape): a context and N candidate endings, one correct.

Data: rows with a `context` (or SWAG's `sent1`, `ctx`, `question`, `startphrase`), a list of `endings` (or
`choices`, `options`), an optional `prefix` (SWAG's `sent2`, the start every ending continues) and a `label`:
the index of the correct ending (0-based; an integer or its digits) or the correct ending's text. Rows may
have different numbers of endings (at least 2). Each ending is encoded with the context as a text pair
(`context`, `prefix ending`), cut longest text first to model.max_length; the model
(`AutoModelForMultipleChoice`) scores every pair and the softmax over one row's endings is its prediction.

Prediction record: {"choice": index of the chosen ending, "score": its probability, "probs": one
probability per ending}. Metric: accuracy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..collate import pad_inputs
from ..errors import DataError
from ..tokens import truncate
from ..types import Batch, EvalResult, ModelFacts, Record, Role, Table
from .base import Mode, Task, features_dataset, register_task

if TYPE_CHECKING:
    import datasets
    import torch


class ChoicePrediction(Record):
    choice: int  #: index of the chosen ending
    score: float  #: its probability
    probs: list[float]  #: one per ending, in the row's order


@register_task
class MultipleChoice(Task):
    """The correct ending of a context among N candidates."""

    name = "multiple-choice"
    aliases = ("swag",)
    head_modules = ("classifier",)

    @property
    def metrics(self) -> dict[str, bool]:
        return {"accuracy": True}

    def roles(self) -> list[Role]:
        return [Role("context", "string", columns=("context", "sent1", "ctx", "question", "startphrase"),
                     doc="the context (SWAG's sent1)"),
                Role("prefix", "string", required=False, may_be_empty=True, columns=("prefix", "sent2"),
                     doc="the start every ending continues (SWAG's sent2)"),
                Role("endings", "strings", columns=("endings", "choices", "options"),
                     doc="the candidate endings, a list of at least 2"),
                Role("label", "any", target=True, columns=("label", "answer"),
                     doc="the correct ending: its index (0-based) or its text")]

    # ------------------------------------------------------------------ data
    def _error(self, t: Table, i: int, role: str, msg: str, hint: str | None = None) -> DataError:
        return DataError(msg, file=t.file[i], line=t.line[i], column=t.column_of.get(role, role), hint=hint)

    def _check_endings(self, t: Table) -> None:
        for i, endings in enumerate(t["endings"]):
            if len(endings) < 2:
                raise self._error(t, i, "endings", f"the row has {len(endings)} ending(s); a choice needs at least 2")

    def _index(self, t: Table, i: int) -> int:
        """Row i's label as the index of its correct ending: an index, its digits, or the ending's text."""
        v, endings = t["label"][i], t["endings"][i]
        n = len(endings)
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise self._error(t, i, "label", f"label {v!r} is neither an ending's index nor an ending's text")
        if isinstance(v, str):
            if endings.count(v) != 1:
                found = "none of" if v not in endings else "more than one of"
                raise self._error(t, i, "label", f"label {v!r} is {found} the row's endings",
                                  "give the correct ending's index (0-based) or its exact text")
            return endings.index(v)
        if not 0 <= v < n:
            raise self._error(t, i, "label", f"label {v} is not an ending's index: the row has {n} endings "
                              f"(0..{n - 1})", "labels are 0-based indices into the row's endings")
        return v

    def fit(self, splits: dict[str, Table]) -> None:
        for split, table in splits.items():
            self.encode(split, table)

    def encode(self, split: str, table: Table) -> None:
        self._check_endings(table)
        table.columns["label"] = [self._index(table, i) for i in range(len(table))]

    def describe(self, table: Table) -> dict[str, Any]:
        """How many endings the rows have, and how often each position is the correct one."""
        n = np.asarray([len(e) for e in table["endings"]])
        y = np.asarray(table["label"])
        return {"endings": {str(k): int((n == k).sum()) for k in np.unique(n)},
                "correct_position": {str(k): int((y == k).sum()) for k in range(int(n.max()))}}

    def summary(self) -> dict[str, Any]:
        return {}

    def gold(self, table: Table, i: int) -> Any:
        return int(table["label"][i])

    # ------------------------------------------------------------------ tokens
    def preprocess(self, table: Table, tokenizer: Any) -> "datasets.Dataset":

        self._check_endings(table)
        max_len = self.cfg.model.max_length
        prefixes = table.get("prefix") or [""] * len(table)
        cols: dict[str, list] = {"input_ids": [], "token_type_ids": [], "length": [], "n_tokens": []}
        for k, (context, prefix, endings) in enumerate(zip(table["context"], prefixes, table["endings"])):
            seconds = [f"{prefix} {e}".strip() if prefix else e for e in endings]
            enc = tokenizer([context] * len(endings), seconds, truncation=False, return_special_tokens_mask=True,
                            verbose=False)
            types_all = enc.get("token_type_ids")
            ids_k, types_k = [], []
            for j, ids in enumerate(enc["input_ids"]):
                types = types_all[j] if types_all is not None else None
                if len(ids) > max_len:
                    ids, types = truncate(ids, enc["special_tokens_mask"][j], types, max_len, "head")
                ids_k.append(ids)
                types_k.append(types)
            cols["input_ids"].append(ids_k)
            cols["token_type_ids"].append(types_k)
            cols["length"].append(max(len(x) for x in ids_k))
            cols["n_tokens"].append(max(len(x) for x in enc["input_ids"]))
        if any(t is None for ts in cols["token_type_ids"] for t in ts):  # a tokenizer without token types
            del cols["token_type_ids"]
        cols["example"] = list(range(len(table)))
        if "label" in table:
            cols["labels"] = list(table["label"])
        return features_dataset(cols)

    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> Batch:
        """(batch, choices, tokens) inputs. A row with fewer endings than the batch's most repeats its first
        ending in the missing places; `meta["n_choices"]` masks their scores out of the softmax."""
        import torch

        width = max(len(f["input_ids"]) for f in features)
        flat = []
        for f in features:
            n = len(f["input_ids"])
            flat += [{k: f[k][j if j < n else 0] for k in ("input_ids", "token_type_ids") if k in f}
                     for j in range(width)]
        inputs = {k: v.view(len(features), width, -1) for k, v in pad_inputs(flat, pad_to_multiple_of).items()}
        n_choices = torch.tensor([len(f["input_ids"]) for f in features])
        targets = {"labels": torch.tensor([f["labels"] for f in features])} if "labels" in features[0] else {}
        targets["n_choices"] = n_choices
        return Batch(inputs, targets, {"example": np.array([f["example"] for f in features])})

    def cache_key(self) -> dict:
        return {"task": self.name, "max_length": self.cfg.model.max_length}

    # ------------------------------------------------------------------ model
    def load_model(self, name_or_path: str, **kwargs: Any) -> tuple["torch.nn.Module", ModelFacts]:
        from transformers import AutoModelForMultipleChoice

        kwargs.setdefault("trust_remote_code", False)  # never transformers' prompt to run a repo's code
        return AutoModelForMultipleChoice.from_pretrained(name_or_path, **kwargs), ModelFacts()

    def count_items(self, batch: Batch) -> int:
        return int(batch.meta["example"].shape[0])

    def forward(self, model: "torch.nn.Module", batch: Batch,
                mode: Mode) -> tuple["torch.Tensor | None", "torch.Tensor"]:
        import torch
        import torch.nn.functional as F

        logits = model(**batch.inputs).logits.float()
        n = batch.targets["n_choices"]
        missing = torch.arange(logits.shape[1], device=logits.device)[None, :] >= n[:, None]
        logits = logits.masked_fill(missing, float("-inf"))
        if "labels" not in batch.targets:
            return None, logits
        return F.cross_entropy(logits, batch.targets["labels"], reduction="sum"), logits

    # ------------------------------------------------------------------ evaluation
    def evaluator(self, table: Table) -> "MultipleChoiceEvaluator":
        return MultipleChoiceEvaluator(table)

    def worst_errors(self, rows: list[dict], k: int) -> list[dict[str, Any]]:
        """The most confident wrong choices, every ending listed with its probability."""
        wrong = sorted((r for r in rows if r["prediction"]["choice"] != r["gold"]),
                       key=lambda r: -r["prediction"]["score"])
        views = []
        for r in wrong[:k]:
            pred, given = r["prediction"], r["input"]
            fields = [{"name": n, "text": given[n]} for n in ("context", "prefix") if given.get(n)]
            for j, (ending, p) in enumerate(zip(given["endings"], pred["probs"])):
                tag = " (gold)" if j == r["gold"] else " (chosen)" if j == pred["choice"] else ""
                fields.append({"name": f"ending {j}{tag}", "text": f"{ending}   [p = {p:.3f}]"})
            views.append({"title": f"chose ending {pred['choice']} (probability {pred['score']:.3f}), gold {r['gold']}",
                          "row": r, "input": given, "fields": fields})
        return views

    def prediction_schema(self) -> type[Record]:
        return ChoicePrediction

    def state(self) -> dict:
        return {"task": self.name}


class MultipleChoiceEvaluator:
    """Keeps each row's probabilities over its own endings."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.probs: dict[int, list[float]] = {}

    def add(self, batch: Batch, outputs: "torch.Tensor") -> None:
        import torch

        probs = torch.softmax(outputs.float(), dim=-1).cpu().numpy().astype(np.float64)
        for k, row, n in zip(batch.meta["example"], probs, batch.targets["n_choices"].tolist()):
            self.probs[int(k)] = row[:n].tolist()

    def state(self) -> dict:
        return {"probs": self.probs}

    def merge(self, state: dict) -> None:
        self.probs.update({int(k): v for k, v in state["probs"].items()})

    def result(self, tune: bool = False) -> EvalResult:
        records = []
        for k in range(len(self.table)):
            p = self.probs[k]
            choice = int(np.argmax(p))
            records.append({"choice": choice, "score": p[choice], "probs": p})
        metrics: dict[str, Any] = {}
        if "label" in self.table and records:
            y = np.asarray(self.table["label"])
            metrics["accuracy"] = float(np.mean([r["choice"] for r in records] == y))
        return EvalResult(metrics, records)
