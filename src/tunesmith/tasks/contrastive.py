"""Few-shot text classification (`task.method: contrastive`): the SetFit recipe in tunesmith's own loop.

SetFit (Tunstall et al., 2022) trains in two phases. First a sentence-embedding body is fine-tuned on pairs
of labelled rows: a pair of rows that share a label has target similarity 1, of rows that do not 0, and the
loss is the squared error between the cosine similarity of the two mean-pooled embeddings and that target
(sentence-transformers' CosineSimilarityLoss). Then a logistic regression is fitted on the labelled rows'
embeddings (SetFit's default head). With 8 rows per class this beats fine-tuning a classifier end to end by
a wide margin, because the pairs give the body many more training signals than the rows do.

Here the first phase is the training loop's, with everything it does (checkpoints, exact resume, early
stopping, metrics): the training features are the pairs (`training_features`), drawn once per run and seeded
by train.seed, `task.pairs` times per labelled row one row that shares a label and one that does not
(SetFit's num_iterations). The second phase runs at every evaluation: the head is fitted again on the
labelled rows' embeddings by the body as it is at that step (scikit-learn's LogisticRegression, which is
deterministic), so each validation score is the score of the model that step would export, and the best
checkpoint keeps the head fitted to its own body. The head is a linear layer over the normalised embedding
whose softmax (or, multi-label, sigmoid) equals the regression's predict_proba, so prediction, thresholds,
explanations, the report, the server and the ONNX export run it as they run any classifier.

The exported model/ folder is a sentence-transformers model (`SentenceTransformer(path)` embeds as the body
does here) with the head beside it in head.safetensors, which tunesmith.json lists with its sha256.
"""
from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..types import Batch, ModelFacts
from .base import Mode, features_dataset
from .classification import TextClassification

if TYPE_CHECKING:
    import datasets
    import torch

HEAD_FILE = "head.safetensors"
CONSTANT_LOGIT = 20.0  # multi-label: the head's logit for a label that every training row has (minus: none)
POOLING_DIR = "1_Pooling"


def draw_pairs(labels: list, pairs: int, seed: int) -> list[tuple[int, int, float]]:
    """(row a, row b, target similarity) pairs: `pairs` rounds, in each of which every row draws one partner
    that shares a label with it (1.0) and one that shares none (0.0), uniformly at random (seeded). A row
    with no possible partner of a kind draws none of that kind. `labels`: a class index per row, or (multi-
    label) a 0/1 vector per row."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    hot = y.astype(bool) if y.ndim == 2 else np.eye(int(y.max()) + 1, dtype=bool)[y]
    shared = (hot.astype(np.int64) @ hot.T.astype(np.int64)) > 0  # rows i and j have a label in common
    np.fill_diagonal(shared, False)
    unrelated = ~((hot.astype(np.int64) @ hot.T.astype(np.int64)) > 0)
    same = [np.flatnonzero(r) for r in shared]
    other = [np.flatnonzero(r) for r in unrelated]
    out = []
    for _ in range(pairs):
        for i in range(len(y)):
            if len(same[i]):
                out.append((i, int(same[i][rng.integers(len(same[i]))]), 1.0))
            if len(other[i]):
                out.append((i, int(other[i][rng.integers(len(other[i]))]), 0.0))
    return out


def _pooling(path: str) -> str:
    """A sentence-transformers folder's pooling ("cls" or "mean"); mean for any other model (SetFit's)."""
    config = Path(path) / POOLING_DIR / "config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


@functools.cache
def _sentence_classifier() -> type:
    import torch
    import torch.nn.functional as F
    from transformers.modeling_outputs import SequenceClassifierOutput
    from transformers.utils import ModelOutput

    @dataclass
    class PairOutput(ModelOutput):
        similarity: torch.Tensor | None = None

    class SentenceClassifier(torch.nn.Module):
        """A transformers encoder, pooled and L2-normalised (a sentence embedding), and a linear head on it.

        Saved as a sentence-transformers folder: the body's weights under their own names (plus
        head.safetensors), so loading a saved folder maps the body's names back under `body.`."""

        def __init__(self, body: Any, outputs: int, pooling: str) -> None:
            super().__init__()
            self.body, self.pooling = body, pooling
            self.config = body.config
            self.head = torch.nn.Linear(body.config.hidden_size, outputs)
            self.head_stale = True  # the body changed since the head was fitted (see ContrastiveClassification)
            self.max_seq_length = body.config.max_position_embeddings  # model.max_length, set by load_model
            self.register_load_state_dict_pre_hook(self._body_names)

        @staticmethod
        def _body_names(module: Any, state: dict, prefix: str, *args: Any) -> None:
            for k in [k for k in state if k.startswith(prefix) and not k.startswith((f"{prefix}body.",
                                                                                    f"{prefix}head."))]:
                state[f"{prefix}body.{k[len(prefix):]}"] = state.pop(k)

        def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            h = self.body(input_ids=input_ids, attention_mask=mask, **extra).last_hidden_state
            if self.pooling == "cls":
                e = h[:, 0]
            else:  # sentence-transformers' mean pooling
                m = mask.unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return F.normalize(e, p=2, dim=-1)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None, b_input_ids: torch.Tensor | None = None,
                    b_attention_mask: torch.Tensor | None = None, b_token_type_ids: torch.Tensor | None = None) -> Any:
            """The head's logits; given a second text per row (`b_*`), the cosine similarity of each pair
            instead (through forward, so a DDP wrapper syncs the pair loss's gradients)."""
            e = self.embed(input_ids, attention_mask, token_type_ids)
            if b_input_ids is None:
                return SequenceClassifierOutput(logits=self.head(e))
            return PairOutput(similarity=(e * self.embed(b_input_ids, b_attention_mask, b_token_type_ids)).sum(-1))

        def get_input_embeddings(self) -> torch.nn.Module:
            return self.body.get_input_embeddings()

        def save_pretrained(self, path: str | Path, safe_serialization: bool = True, **kwargs: Any) -> None:
            from safetensors.torch import save_file

            path = Path(path)
            self.body.save_pretrained(path, safe_serialization=True)
            save_file({"head.weight": self.head.weight.detach().contiguous().cpu(),
                       "head.bias": self.head.bias.detach().contiguous().cpu()}, str(path / HEAD_FILE))
            (path / POOLING_DIR).mkdir(exist_ok=True)
            dim = self.config.hidden_size
            (path / POOLING_DIR / "config.json").write_text(json.dumps({
                "word_embedding_dimension": dim, "pooling_mode_cls_token": self.pooling == "cls",
                "pooling_mode_mean_tokens": self.pooling == "mean", "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
            (path / "modules.json").write_text(json.dumps([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
                indent=2))
            (path / "sentence_bert_config.json").write_text(json.dumps(
                {"max_seq_length": self.max_seq_length, "do_lower_case": False}))

    return SentenceClassifier


def _base(model: Any) -> Any:
    """The module under DDP / torch.compile wrappers (the head's staleness lives on it)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


class ContrastiveClassification(TextClassification):
    """Text classification by contrastive pairs and a fitted head (the module docstring)."""

    def __init__(self, cfg: Any, state: dict | None = None) -> None:
        super().__init__(cfg, state)
        o = self.opts
        refused = [("long_text", o.long_text, "truncate"), ("sampler", o.sampler, "uniform"),
                   ("loss", o.loss, "cross_entropy"), ("class_weights", o.class_weights, "none")]
        for key, value, default in refused:
            if value != default:
                raise ConfigError(f"task.{key}: {value} does not apply to task.method: contrastive (its loss is on "
                                  f"pairs of rows, and its head a logistic regression); remove task.{key}")
        if self.problem_type == "regression":
            raise ConfigError("task.method: contrastive classifies: a regression has no classes to pair")
        if cfg.model.lora is not None:
            raise ConfigError("task.method: contrastive fine-tunes the whole sentence-embedding body (the SetFit "
                              "recipe); remove model.lora")
        self._labelled: datasets.Dataset | None = None  # the training rows the head is fitted on

    def load_model(self, name_or_path: str, **kwargs: Any) -> tuple["torch.nn.Module", ModelFacts]:
        import torch
        from transformers import AutoModel

        kwargs.setdefault("trust_remote_code", False)
        body = AutoModel.from_pretrained(name_or_path, **kwargs, **_without_pooler(name_or_path, kwargs))
        model = _sentence_classifier()(body, len(self.labels), _pooling(name_or_path))
        model.max_seq_length = self.cfg.model.max_length
        head = Path(name_or_path) / HEAD_FILE
        if head.is_file():  # a saved few-shot model: its fitted head
            from safetensors.torch import load_file

            weights = load_file(str(head))
            with torch.no_grad():
                model.head.weight.copy_(weights["head.weight"])
                model.head.bias.copy_(weights["head.bias"])
            model.head_stale = False
        return model, ModelFacts(speed_paths={"fast_bert": "off (task.method: contrastive: a sentence-embedding "
                                                           "body, not a BERT classifier)"})

    # ------------------------------------------------------------------ the pairs
    def training_features(self, features: "datasets.Dataset") -> "datasets.Dataset":
        """The pairs of the training rows (each a row of features), and the rows kept for fitting the head."""
        self._labelled = features
        drawn = draw_pairs(features["labels"], self.opts.pairs, self.cfg.train.seed)
        if not drawn:
            raise ConfigError("task.method: contrastive needs rows of at least two classes to pair")
        ids, types = features["input_ids"], features["token_type_ids"] if "token_type_ids" in features.column_names \
            else None
        cols: dict[str, list] = {"input_ids": [ids[a] for a, _, _ in drawn],
                                 "b_input_ids": [ids[b] for _, b, _ in drawn],
                                 "length": [max(len(ids[a]), len(ids[b])) for a, b, _ in drawn],
                                 "similarity": [s for _, _, s in drawn], "example": list(range(len(drawn)))}
        if types is not None:
            cols["token_type_ids"] = [types[a] for a, _, _ in drawn]
            cols["b_token_type_ids"] = [types[b] for _, b, _ in drawn]
        return features_dataset(cols)

    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> Batch:
        import torch

        if "similarity" not in features[0]:
            return super().collate(features, pad_to_multiple_of)
        from ..collate import pad_inputs

        second = pad_inputs([{k[2:]: v for k, v in f.items() if k.startswith("b_")} for f in features],
                            pad_to_multiple_of)
        first = pad_inputs([{k: v for k, v in f.items() if k in ("input_ids", "token_type_ids")} for f in features],
                           pad_to_multiple_of)
        return Batch({**first, **{f"b_{k}": v for k, v in second.items()}},
                     {"similarity": torch.tensor([f["similarity"] for f in features], dtype=torch.float)},
                     {"example": np.array([f["example"] for f in features])})

    def forward(self, model: "torch.nn.Module", batch: Batch, mode: Mode) -> tuple["torch.Tensor | None", Any]:
        import torch.nn.functional as F

        base = _base(model)
        if "similarity" in batch.targets:  # a batch of pairs: the body learns, the head is stale
            base.head_stale = True
            cos = model(**batch.inputs).similarity.float()
            return F.mse_loss(cos, batch.targets["similarity"], reduction="sum"), cos
        if base.head_stale and self._labelled is not None:
            self.fit_head(base)
        return super().forward(model, batch, mode)

    # ------------------------------------------------------------------ the head
    def fit_head(self, model: "torch.nn.Module") -> None:
        """Fit the logistic regression on the labelled rows' embeddings and make it the linear head."""
        import torch
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        x = self.embeddings(model, self._labelled)
        y = np.asarray(self._labelled["labels"])
        if self.problem_type == "multi_label":  # SetFit's one-vs-rest: one regression per label
            fitted = OneVsRestClassifier(LogisticRegression()).fit(x, y)
            # a label that every row (or none) has gets scikit-learn's constant predictor: a fixed logit
            w = np.concatenate([getattr(e, "coef_", np.zeros((1, x.shape[1]))) for e in fitted.estimators_])
            b = np.asarray([e.intercept_[0] if hasattr(e, "coef_") else (CONSTANT_LOGIT if y[0, k] else -CONSTANT_LOGIT)
                            for k, e in enumerate(fitted.estimators_)])
        else:
            fitted = LogisticRegression().fit(x, y)
            w, b = fitted.coef_, fitted.intercept_
            if len(self.labels) == 2:  # one vector for class 1: softmax([0, z]) is its sigmoid
                w, b = np.concatenate([np.zeros_like(w), w]), np.concatenate([[0.0], b])
        with torch.no_grad():
            model.head.weight.copy_(torch.as_tensor(w, dtype=model.head.weight.dtype))
            model.head.bias.copy_(torch.as_tensor(b, dtype=model.head.bias.dtype))
        model.head_stale = False

    def embeddings(self, model: "torch.nn.Module", features: "datasets.Dataset", batch_size: int = 64) -> np.ndarray:
        """The sentence embeddings of `features`' rows, in row order (eval mode, no gradients)."""
        import torch

        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(features), batch_size):
                rows = features.__getitems__(list(range(start, min(start + batch_size, len(features)))))
                batch = super().collate(rows).to(device)
                out.append(model.embed(**batch.inputs).float().cpu().numpy())
        model.train(was_training)
        return np.concatenate(out).astype(np.float64)

    def state(self) -> dict:
        return {**super().state(), "method": "contrastive", "head": HEAD_FILE}


def _without_pooler(name_or_path: str, kwargs: dict) -> dict[str, Any]:
    """{"add_pooling_layer": False} for a base model that has the option (BERT-likes: their pooler is not
    used by a sentence embedding, and unused weights would break a DDP run), else nothing."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=kwargs["trust_remote_code"])
    cls = AutoModel._model_mapping.get(type(config), None)
    return {"add_pooling_layer": False} if cls is not None and \
        "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}
