"""Extractive question answering (SQuAD v1.1 and v2.0): find the answer span of a question in a context.

Data: SQuAD JSON files, or flat JSONL/CSV/Parquet rows with `question`, `context` and either `answers`
({"text": [...], "answer_start": [...]}, a list of {"text", "answer_start"}, or that as JSON text in a CSV
cell) or `answer_text` + `answer_start` columns. An empty answers list is a question without an answer
(SQuAD v2). Every answer must be found at its start in the context; one that is not is a DataError naming
the row (data/squad.py says why it is not dropped).

Long contexts are split into windows of model.max_length tokens overlapping by task.doc_stride, so nothing
is lost; each window is one model input and one loss item. Evaluation keeps, per window, only the n-best
candidate spans as context characters, and per question the lowest no-answer score over its windows (the
windows that do not contain the answer always favour "no answer"; as in BERT's and Hugging Face's SQuAD code).

Prediction record: {"answer": text, "start": first character, "end": character after the last, "score": p},
with p the softmax probability of the chosen answer among the question's n-best spans (and, for v2, the
no-answer option); a v2 "no answer" is {"answer": "", "start": null, "end": null, "score": p(no answer)}.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..collate import pad_inputs
from ..data.squad import Answers, answer_problem, columns_answers, parse_answers
from ..errors import DataError, ModelError
from ..types import Batch, EvalResult, ModelFacts, Record, Role, Table, TaskOptions
from .base import Mode, Task, features_dataset, register_task

if TYPE_CHECKING:
    import datasets
    import torch

    from ..config import RunConfig

CLS = 0  # the window position that stands for "no answer here" (BERT's [CLS], RoBERTa's <s>)


class QuestionAnsweringOptions(TaskOptions):
    doc_stride: int = Field(128, ge=0)
    """Tokens shared by consecutive windows of a context longer than model.max_length. Capped at half of
    a window's context tokens, so that windows always advance."""
    max_question_length: int = Field(64, ge=1)
    """Questions longer than this many tokens are cut to it (and to half of model.max_length at most),
    so the context keeps room in every window; the data report counts them."""
    max_answer_length: int = Field(30, ge=1)
    """Longest predicted answer, in tokens."""
    n_best: int = Field(20, ge=1)
    """Candidate spans kept per window and per question when choosing the answer."""
    version_2: Literal["auto", True, False] = "auto"
    """SQuAD v2: questions may have no answer, and a no-answer threshold is tuned on validation. auto:
    on when any training question has no answer."""


class AnswerPrediction(Record):
    answer: str
    start: int | None  # None: no answer (SQuAD v2)
    end: int | None
    score: float


@register_task
class QuestionAnswering(Task):
    """The answer to a question as a span of its context (extractive QA)."""

    name = "question-answering"
    aliases = ("qa", "extractive-qa")
    Options = QuestionAnsweringOptions
    long_inputs = "window"
    generates = False
    loss_metrics = ()
    head_modules = ("qa_outputs",)
    explains = True
    hub_pipeline_tag = "question-answering"
    onnx_outputs = ("start_logits", "end_logits")

    def __init__(self, cfg: "RunConfig", state: dict | None = None) -> None:
        super().__init__(cfg, state)
        state = state or {}
        self.version_2: bool = state.get("version_2", self.opts.version_2 is True)
        #: a v2 question is answered "" when its no-answer score minus its best span score is above this
        self.threshold: float = state.get("threshold", 0.0)
        self._question_cuts: dict[int, int] = {}  # hash of a table's questions -> how many preprocess cut
        self._why_v2: str | None = None  # set by fit: the data report's note on why v2 is on

    def roles(self) -> list[Role]:
        return [Role("question", "string", doc="the question"),
                Role("context", "string", doc="the passage holding the answer"),
                Role("answers", "any", required=False, target=True,
                     doc='the answers: {"text": [...], "answer_start": [...]} or a list of {"text", "answer_start"}'),
                Role("answer_text", "any", required=False, target=True,
                     doc="the answer text (with answer_start); an empty cell is a missing value, not a v2 no-answer: "
                         "give those questions an empty answers list"),
                Role("answer_start", "any", required=False, target=True,
                     doc="the answer's first character in the context (with answer_text)"),
                Role("id", "any", required=False, doc="the question's id, kept for predictions")]

    # ------------------------------------------------------------------ answers
    def _answers(self, t: Table, i: int) -> Answers:
        """Row i's answers, parsed and checked against its context; DataError naming the row if wrong."""
        role = "answers" if "answers" in t else "answer_text"
        col = t.column_of.get(role, role)
        qid = f" (question id {t['id'][i]})" if "id" in t else ""
        try:
            ans = parse_answers(t["answers"][i]) if role == "answers" else \
                columns_answers(t["answer_text"][i], t["answer_start"][i])
        except ValueError as e:
            raise DataError(f"{e}{qid}", file=t.file[i], line=t.line[i], column=col) from None
        for text, start in zip(ans["text"], ans["answer_start"]):
            problem = answer_problem(t["context"][i], text, start)
            if problem:
                where = t.column_of.get("answer_start", "answer_start") if role == "answer_text" else col
                raise DataError(problem[0] + qid, file=t.file[i], line=t.line[i], column=where, hint=problem[1])
        if not ans["text"] and not self.version_2:
            raise DataError(f"the question has no answer{qid}, but task.version_2 is false", file=t.file[i],
                            line=t.line[i], column=col,
                            hint="set task.version_2: true (or auto) to train with unanswerable questions")
        return ans

    def fit(self, splits: dict[str, Table]) -> None:
        train = splits["train"]
        if "answers" not in train and not {"answer_text", "answer_start"} <= set(train.columns):
            have = "answer_text" if "answer_text" in train else "answer_start" if "answer_start" in train else None
            raise DataError(f"the training data has {'only ' + repr(have) + ' and no' if have else 'no'} answers",
                            file=train.file[0], column="answers",
                            hint="give an `answers` column ({\"text\": [...], \"answer_start\": [...]}) or both "
                                 "`answer_text` and `answer_start` (map them with data.columns)")
        if self.opts.version_2 == "auto":
            self.version_2 = True  # parse first, then decide: no row may fail for lacking an answer meanwhile
            unanswered = sum(not self._answers(train, i)["text"] for i in range(len(train)))
            self.version_2 = unanswered > 0
            self._why_v2 = (f"SQuAD v2 (task.version_2: auto): {unanswered} of {len(train)} training questions have "
                            "no answer (marked is_impossible or with an empty answers list)") if unanswered else None
        else:
            self._why_v2 = "SQuAD v2: task.version_2 is true" if self.version_2 else None
        for split, t in splits.items():
            self.encode(split, t)

    def encode(self, split: str, t: Table) -> None:
        """One `answers` column of checked {"text", "answer_start"} dicts (replacing answer_text/answer_start)."""
        if "answers" not in t and "answer_text" not in t:
            return
        t.columns["answers"] = [self._answers(t, i) for i in range(len(t))]
        for role in ("answer_text", "answer_start"):
            t.columns.pop(role, None)

    def stratify_keys(self, table: Table) -> list | None:
        """v2: made splits keep the share of unanswerable questions."""
        return [bool(a["text"]) for a in table["answers"]] if self.version_2 and "answers" in table else None

    def describe(self, table: Table) -> dict[str, Any]:
        out: dict[str, Any] = {"questions": len(table)}
        if "answers" in table:
            answered = [a for a in table["answers"] if a["text"]]
            out["answerable"] = len(answered)
            if self.version_2:
                out["no_answer"] = len(table) - len(answered)
            if answered:
                out["mean_answer_chars"] = round(float(np.mean([len(a["text"][0]) for a in answered])), 1)
        lengths = [len(c) for c in table["context"]]
        out["mean_context_chars"], out["max_context_chars"] = round(float(np.mean(lengths)), 1), max(lengths)
        cap = self.question_cap()
        out["long_questions"] = f"questions over {cap} tokens are cut to their first {cap} tokens"
        cut = self._question_cuts.get(hash(tuple(table["question"])))
        if cut is not None:  # known once the split was tokenized in this process (not from the cache)
            out["questions_cut"] = cut
        return out

    def notes(self) -> list[str]:
        """For the data report: why questions may have no answer (SQuAD v2), when they may."""
        return [self._why_v2] if self._why_v2 else []

    def summary(self) -> dict[str, Any]:
        return {"version_2": self.version_2, "no_answer_threshold": self.threshold if self.version_2 else None}

    def gold(self, table: Table, i: int) -> Any:
        return table["answers"][i]

    # ------------------------------------------------------------------ tokens
    def question_cap(self) -> int:
        """Question tokens kept: task.max_question_length, and at most half of a window's content tokens."""
        return max(1, min(self.opts.max_question_length, (self.cfg.model.max_length - 3) // 2))

    def _stride(self, question_tokens: int, n_special: int) -> int:
        """Tokens shared by consecutive windows of a question's context: task.doc_stride, at most half the
        room the (capped) question leaves, so windows keep advancing."""
        room = self.cfg.model.max_length - n_special - min(question_tokens, self.question_cap())
        return min(self.opts.doc_stride, room // 2)

    def preprocess(self, table: Table, tokenizer: Any) -> "datasets.Dataset":
        """One feature per window: input ids, `offsets` (context characters of each token, [-1, -1] for the
        question and special tokens), and with gold the answer's token positions (CLS when the window does not
        hold the whole first answer, as Hugging Face's SQuAD example trains)."""

        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(f"question answering needs a fast tokenizer (character offsets of tokens); "
                             f"{type(tokenizer).__name__} is not one")
        max_len = self.cfg.model.max_length
        n_special = tokenizer.num_special_tokens_to_add(pair=True)
        cap = self.question_cap()
        q_enc = tokenizer(table["question"], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        questions, q_tokens = [], []
        for q, ids, offs in zip(table["question"], q_enc["input_ids"], q_enc["offset_mapping"]):
            q_tokens.append(len(ids))
            questions.append(q[:offs[cap - 1][1]] if len(ids) > cap else q)
        self._question_cuts[hash(tuple(table["question"]))] = sum(n > cap for n in q_tokens)
        # one stride per example (the cap keeps windows advancing); examples sharing it are tokenized together
        groups: dict[int, list[int]] = defaultdict(list)
        for k, n in enumerate(q_tokens):
            groups[self._stride(n, n_special)].append(k)
        windows: list[tuple[int, int, list[int], list[int] | None, np.ndarray]] = []
        ctx_tokens = [0] * len(table)
        for stride, idx in groups.items():
            enc = tokenizer([questions[k] for k in idx], [table["context"][k] for k in idx], truncation="only_second",
                            max_length=max_len, stride=stride, return_overflowing_tokens=True,
                            return_offsets_mapping=True, verbose=False)
            seen: dict[int, int] = defaultdict(int)
            mapping, offset_mapping = enc["overflow_to_sample_mapping"], enc["offset_mapping"]
            types = enc.get("token_type_ids")
            for w, ids in enumerate(enc["input_ids"]):
                k = idx[mapping[w]]
                seq = enc.sequence_ids(w)
                a, b = (seq.index(1), len(seq) - seq[::-1].index(1)) if 1 in seq else (0, 0)  # context tokens
                # one array per window: a list per token makes the garbage collector crawl on SQuAD-sized data
                offsets = np.full((len(ids), 2), -1, dtype=np.int32)
                offsets[a:b] = offset_mapping[w][a:b]
                ctx_tokens[k] += b - a - (stride if seen[k] else 0)  # later windows repeat `stride` tokens
                windows.append((k, seen[k], ids, types[w] if types is not None else None, offsets))
                seen[k] += 1
        windows.sort(key=lambda w: (w[0], w[1]))
        cols: dict[str, list] = {"input_ids": [w[2] for w in windows], "offsets": [w[4] for w in windows],
                                 "example": [w[0] for w in windows], "length": [len(w[2]) for w in windows],
                                 "n_tokens": [q_tokens[w[0]] + ctx_tokens[w[0]] + n_special for w in windows]}
        if windows and windows[0][3] is not None:
            cols["token_type_ids"] = [w[3] for w in windows]
        if "answers" in table:
            positions = [answer_positions(table["answers"][k], offsets) for k, _, _, _, offsets in windows]
            cols["start_positions"] = [p[0] for p in positions]
            cols["end_positions"] = [p[1] for p in positions]
        return features_dataset(cols)

    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> Batch:
        import torch

        inputs = pad_inputs(features, pad_to_multiple_of)
        targets = {}
        if "start_positions" in features[0]:
            targets = {k: torch.tensor([f[k] for f in features], dtype=torch.long)
                       for k in ("start_positions", "end_positions")}
        meta = {"example": np.array([f["example"] for f in features]), "offsets": [f["offsets"] for f in features]}
        return Batch(inputs, targets, meta)

    def cache_key(self) -> dict:
        return {"task": self.name, "max_length": self.cfg.model.max_length, "doc_stride": self.opts.doc_stride,
                "max_question_length": self.opts.max_question_length}

    # ------------------------------------------------------------------ model
    def load_model(self, name_or_path: str, **kwargs: Any) -> tuple["torch.nn.Module", ModelFacts]:
        from transformers import AutoModelForQuestionAnswering

        from ..padding_free import enable

        kwargs.setdefault("trust_remote_code", False)  # never transformers' prompt to run a repo's code
        model = AutoModelForQuestionAnswering.from_pretrained(name_or_path, **kwargs)
        padding_free = enable(model, self.cfg.model.padding_free, head="question-answering")
        return model, ModelFacts(speed_paths={"padding_free": padding_free})

    def count_items(self, batch: Batch) -> int:
        return int(batch.meta["example"].shape[0])

    def forward(self, model: "torch.nn.Module", batch: Batch, mode: Mode) -> tuple["torch.Tensor | None", Any]:
        """Loss summed over windows of (CE(start) + CE(end)) / 2 over each window's own tokens: padding
        positions get -inf, so a window's loss does not depend on the batch it is padded in (without
        padding, the model's own loss divided by the windows)."""
        import torch.nn.functional as F

        from ..padding_free import is_enabled, token_outputs

        names = ("start_logits", "end_logits")
        if is_enabled(model):
            start, end = (o.float() for o in token_outputs(model, batch.inputs, names, fill=-math.inf))
        else:
            out = model(**batch.inputs)
            pad = ~batch.inputs["attention_mask"].bool()
            start, end = (out[n].float().masked_fill(pad, -math.inf) for n in names)
        if "start_positions" not in batch.targets:
            return None, (start, end)
        loss = (F.cross_entropy(start, batch.targets["start_positions"], reduction="sum")
                + F.cross_entropy(end, batch.targets["end_positions"], reduction="sum")) / 2
        return loss, (start, end)

    # ------------------------------------------------------------------ evaluation
    @property
    def metrics(self) -> dict[str, bool]:
        v2 = ("HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1") if self.version_2 else ()
        return dict.fromkeys(("exact_match", "f1", *v2), True)

    @property
    def default_metric(self) -> str:
        return "f1"

    def evaluator(self, table: Table) -> "QuestionAnsweringEvaluator":
        return QuestionAnsweringEvaluator(self, table)

    def prediction_schema(self) -> type[Record]:
        return AnswerPrediction

    def worst_errors(self, rows: list[dict], k: int) -> list[dict[str, Any]]:
        """The most confident answers that match no gold answer (SQuAD's normalised exact match), gold and
        predicted spans marked in the context."""
        from ..metrics.squad import normalize_answer

        wrong = []
        for r in rows:
            gold, pred = r["gold"] or {"text": [], "answer_start": []}, r["prediction"]
            if normalize_answer(pred["answer"]) in {normalize_answer(t) for t in gold["text"]} \
                    or (not gold["text"] and not pred["answer"]):
                continue
            marks = [{"start": s, "end": s + len(t), "kind": "gold", "label": "gold answer"}
                     for t, s in zip(gold["text"], gold["answer_start"])]
            if pred["start"] is not None:
                marks.append({"start": pred["start"], "end": pred["end"], "kind": "pred", "label": "predicted"})
            wrong.append((pred["score"], {"title": f"predicted {pred['answer']!r} (score {pred['score']:.3f}), gold "
                                                 f"{gold['text'] or 'no answer'}", "row": r,
                          "input": {"question": r["input"]["question"], "context": r["input"]["context"]},
                          "fields": [{"name": "question", "text": r["input"]["question"]},
                                     {"name": "context", "text": r["input"]["context"], "marks": marks}]}))
        wrong.sort(key=lambda v: -v[0])
        return [v for _, v in wrong[:k]]

    def explain(self, model: "torch.nn.Module", tokenizer: Any, record: dict, prediction: dict, target: str | None,
                steps: int) -> dict[str, Any]:
        """Two attributions, of the start logit at the answer's first token and of the end logit at its
        last, in the context window where the answer scores highest (question words and context words both
        get a share). No answer: nothing to explain."""
        import torch

        from ..attribution import Encoded, explain, text_words
        from ..errors import ConfigError

        if target is not None:
            raise ConfigError("question answering explains the predicted answer: it takes no target")
        if prediction["start"] is None:
            return {"attributions": {}, "not_explained": ["no answer was predicted"]}
        question, context = record["question"], record["context"]
        q_enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        cap = self.question_cap()
        if len(q_enc["input_ids"]) > cap:
            question = question[:q_enc["offset_mapping"][cap - 1][1]]
        stride = self._stride(len(q_enc["input_ids"]), tokenizer.num_special_tokens_to_add(pair=True))
        enc = tokenizer(question, context, truncation="only_second", max_length=self.cfg.model.max_length,
                        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
        device = next(model.parameters()).device
        a, b = prediction["start"], prediction["end"]
        best = None
        for w in range(len(enc["input_ids"])):
            seq, offs = enc.sequence_ids(w), enc["offset_mapping"][w]
            ctx = [j for j, q in enumerate(seq) if q == 1]
            ts = next((j for j in ctx if offs[j][0] <= a < offs[j][1]), None)
            te = next((j for j in ctx if offs[j][0] < b <= offs[j][1]), None)
            if ts is None or te is None:
                continue
            inputs = {k: torch.tensor([enc[k][w]], device=device)
                      for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            with torch.no_grad():
                out = model(**inputs)
            score = float(out.start_logits[0, ts] + out.end_logits[0, te])
            if best is None or score > best[0]:
                best = (score, w, ts, te, inputs)
        if best is None:
            return {"attributions": {}, "not_explained": ["the answer lies in no single window"]}
        _, w, ts, te, inputs = best
        seq, wids, offs = enc.sequence_ids(w), enc.word_ids(w), enc["offset_mapping"][w]
        words = [x or y for x, y in zip(text_words("question", 0, offs, seq, wids),
                                        text_words("context", 1, offs, seq, wids))]
        encoded = Encoded(inputs, words, {"question": question, "context": context},
                          [bool(m) for m in enc["special_tokens_mask"][w]])
        scores = {"start": lambda out: out.start_logits.float()[:, ts],
                  "end": lambda out: out.end_logits.float()[:, te]}
        return {**explain(model, tokenizer, encoded, scores, steps), "window": w}

    def state(self) -> dict:
        return {"task": self.name, "version_2": self.version_2, "threshold": self.threshold}


def answer_positions(answers: Answers, offsets: np.ndarray) -> tuple[int, int]:
    """Token positions of the first answer in one window (its first and last token), or (CLS, CLS) when the
    window does not hold all of it (or the question has none)."""
    ctx = np.flatnonzero(offsets[:, 0] >= 0)
    if not answers["text"] or not ctx.size:
        return CLS, CLS
    start = answers["answer_start"][0]
    end = start + len(answers["text"][0])
    if offsets[ctx[0], 0] > start or offsets[ctx[-1], 1] < end:
        return CLS, CLS
    first = ctx[np.argmax(offsets[ctx, 1] > start)]
    last = ctx[::-1][np.argmax(offsets[ctx[::-1], 0] < end)]
    return int(first), int(last)


def window_candidates(start: np.ndarray, end: np.ndarray, offsets: list[list[int]], n_best: int,
                      max_answer_length: int) -> tuple[list[tuple[float, int, int]], float]:
    """One window's n-best spans as (start logit + end logit, first character, character after the last),
    among context tokens at most `max_answer_length` long, and its no-answer score (the CLS logits)."""
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    ctx = np.flatnonzero(off[:, 0] >= 0)
    null = float(start[CLS] + end[CLS])
    if ctx.size == 0:
        return [], null
    s, e = start[: len(off)], end[: len(off)]
    top_s = ctx[np.argsort(-s[ctx], kind="stable")[:n_best]]
    top_e = ctx[np.argsort(-e[ctx], kind="stable")[:n_best]]
    i, j = np.meshgrid(top_s, top_e, indexing="ij")
    ok = (j >= i) & (j - i < max_answer_length)
    i, j = i[ok], j[ok]
    score = s[i] + e[j]
    best = np.argsort(-score, kind="stable")[:n_best]
    return [(float(score[b]), int(off[i[b], 0]), int(off[j[b], 1])) for b in best], null


class QuestionAnsweringEvaluator:
    """Per question: the n-best spans over all its windows and its lowest no-answer score."""

    def __init__(self, task: QuestionAnswering, table: Table) -> None:
        self.task, self.table = task, table
        self.candidates: dict[int, dict[tuple[int, int], float]] = defaultdict(dict)  # example -> span -> score
        self.null: dict[int, float] = {}

    def _keep(self, k: int, spans: list[tuple[float, int, int]] | dict[tuple[int, int], float], null: float) -> None:
        pairs = spans.items() if isinstance(spans, dict) else (((a, b), s) for s, a, b in spans)
        mine = self.candidates[k]
        for span, score in pairs:  # a span seen in two overlapping windows keeps its better score
            if score > mine.get(span, -math.inf):
                mine[span] = score
        if len(mine) > self.task.opts.n_best:
            self.candidates[k] = dict(sorted(mine.items(), key=lambda x: -x[1])[: self.task.opts.n_best])
        self.null[k] = min(null, self.null.get(k, math.inf))

    def add(self, batch: Batch, outputs: tuple["torch.Tensor", "torch.Tensor"]) -> None:
        starts, ends = (o.float().cpu().numpy() for o in outputs)
        opts = self.task.opts
        for row, k in enumerate(batch.meta["example"]):
            spans, null = window_candidates(starts[row], ends[row], batch.meta["offsets"][row], opts.n_best,
                                            opts.max_answer_length)
            self._keep(int(k), spans, null)

    def state(self) -> dict:
        return {"candidates": {k: dict(spans) for k, spans in self.candidates.items()}, "null": dict(self.null)}

    def merge(self, state: dict) -> None:
        for k, null in state["null"].items():
            self._keep(k, state["candidates"].get(k, {}), null)

    def _best(self, k: int) -> tuple[list[tuple[float, int, int]], float]:
        """Question k's spans, best first, and its no-answer score (spans tie-broken by position)."""
        spans = sorted(((s, a, b) for (a, b), s in self.candidates.get(k, {}).items()), key=lambda x: (-x[0], x[1]))
        return spans, self.null.get(k, math.inf)

    def record(self, k: int) -> dict:
        """The prediction for question k under the task's current no-answer threshold."""
        spans, null = self._best(k)
        scores = [s for s, _, _ in spans] + ([null] if self.task.version_2 and math.isfinite(null) else [])
        probs = np.exp(np.asarray(scores) - max(scores)) if scores else np.zeros(0)
        probs = probs / probs.sum() if scores else probs
        if not spans or (self.task.version_2 and null - spans[0][0] > self.task.threshold):
            return {"answer": "", "start": None, "end": None, "score": float(probs[-1]) if scores else 0.0}
        _, a, b = spans[0]
        return {"answer": self.table["context"][k][a:b], "start": a, "end": b, "score": float(probs[0])}

    def result(self, tune: bool = False) -> EvalResult:
        from ..metrics.squad import best_scores, best_threshold, squad_metrics

        task, n = self.task, len(self.table)
        metrics: dict[str, Any] = {}
        if "answers" in self.table:
            golds = [a["text"] for a in self.table["answers"]]
            if task.version_2:
                diffs, em, f1 = [], [], []
                for k in range(n):  # the best span's scores, and how much more the no-answer option scores
                    spans, null = self._best(k)
                    text = self.table["context"][k][spans[0][1]:spans[0][2]] if spans else ""
                    diffs.append(null - spans[0][0] if spans else math.inf)  # no span: always ""
                    scored = best_scores(text, golds[k])
                    em.append(scored[0])
                    f1.append(scored[1])
                has = [bool(g) for g in golds]
                metrics["best_exact_thresh"], metrics["best_exact"] = best_threshold(diffs, em, has)
                metrics["best_f1_thresh"], metrics["best_f1"] = best_threshold(diffs, f1, has)
                if tune:
                    task.threshold = metrics["best_f1_thresh"]
            preds = [self.record(k)["answer"] for k in range(n)]
            metrics = {**squad_metrics(preds, golds, task.version_2), **metrics}
            if task.version_2:
                metrics["no_answer_threshold"] = task.threshold
        return EvalResult(metrics, [self.record(k) for k in range(n)])
