"""Token classification (NER): a tag per word, from tagged tokens or from raw text with character-offset entities.

Inputs. Either `tokens` (a list of words) with `tags` (a tag per word; CoNLL files, JSONL), or `text` (a
string) with `entities`: [[start, end, type], ...] character offsets, end exclusive (doccano's `label`,
Label Studio exports via data/label_studio.py; objects with start/end/label, or doccano's
start_offset/end_offset, are read too). Raw text is split into words by the tokenizer's own pre-tokenizer
(`backend_tokenizer.pre_tokenizer`: whitespace and punctuation for BERT), so training and prediction on
raw text split words alike. A span must start and end on word boundaries (surrounding whitespace is
trimmed); one that cuts a word is a DataError, never snapped silently, as are overlapping or
out-of-range spans.

Tags. IO, IOB1, IOB2 (BIO) and BIOES, detected from the training split or set by `task.tag_scheme`, are
read into entity spans and trained as IOB2 (labels sorted, "O" first). Sequences that break their scheme
(an I- after O in IOB2, a B- without E- in BIOES) are read leniently, as conlleval does, and counted in
the data report (describe: invalid_sequences).

Sub-tokens and windows. A word's tag goes on its first sub-token; the other sub-tokens are ignored in the
loss and the metrics (`label_all_subtokens: true` trains them too, I- after a B- word). Sentences longer
than model.max_length are cut into windows overlapping by `stride` tokens, and each word takes the
prediction of the window where its first sub-token has the most context (BERT's max-context rule), so
every word is predicted exactly once.

Prediction record (one per example):
  pre-tokenized input: {"tags": [IOB2 tag per word],
                        "entities": [{"entity_group", "score", "word", "start", "end"}]}
      start/end are WORD indices (end exclusive); word is those tokens joined by a space.
  raw text:            {"tags": [...], "words": [the words the text was split into],
                        "entities": [{"entity_group", "score", "word", "start", "end"}]}
      start/end are character offsets into the text (text[start:end] == word).
Entities are grouped as the transformers pipeline does with aggregation_strategy="first": a word's tag and
score are its first sub-token's argmax and probability; consecutive words of one type join unless a B-
starts a new entity; an entity's score is the mean of its words' scores.
Gold (predictions/test.jsonl): the row's tags as given, or its entities as [[start, end, type], ...].
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..console import printable
from ..collate import pad_inputs, pad_labels
from ..data.readers import DELIMITED, detect_format, looks_like_conll
from ..errors import DataError, ModelError
from ..types import Batch, EvalResult, ModelFacts, Record, Role, Table, TaskOptions
from .base import Mode, Task, features_dataset, register_task

if TYPE_CHECKING:
    import datasets
    import torch

    from ..config import RunConfig

SCHEME_PREFIXES = {"io": {"I", ""}, "iob1": {"I", "B"}, "iob2": {"I", "B"}, "bioes": {"B", "I", "E", "S"}}
Span = tuple[int, int, str]  # (start, end exclusive, type)


def split_tag(tag: str) -> tuple[str, str]:
    """("O", "") for O; (prefix, type) for "B-PER"; ("", "PER") for a bare type (IO files without prefixes)."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BIES":
        return tag[0], tag[2:]
    return "", tag


def detect_scheme(sequences: list[list[str]]) -> str:
    """The tag scheme of the training tags: E-/S- mean BIOES; a B- opening an entity means IOB2; B- used
    only between two adjacent entities of one type means IOB1; I- alone (or bare types) means IO."""
    prefixes = {split_tag(t)[0] for seq in sequences for t in seq}
    if prefixes & {"E", "S"}:
        return "bioes"
    if "B" in prefixes:
        for seq in sequences:
            prev = "O"
            for t in seq:
                p, typ = split_tag(t)
                if p == "B" and split_tag(prev)[1] != typ:
                    return "iob2"
                prev = t
        return "iob1"
    return "io" if prefixes - {"O"} else "iob2"


def spans_from_tags(tags: list[str], scheme: str) -> tuple[list[Span], int]:
    """Entity spans (word indices) of one tag sequence, and how many tags broke the scheme.

    Read leniently, like conlleval: an I- that cannot continue the open entity starts one; in IOB2 and
    BIOES that tag is counted as invalid, as is a BIOES entity that never gets its E-.
    """
    spans: list[Span] = []
    invalid = 0
    open_: list | None = None  # [start, type]

    def close(end: int) -> None:
        nonlocal open_
        if open_ is not None:
            spans.append((open_[0], end, open_[1]))
            open_ = None

    for i, tag in enumerate(tags):
        p, typ = split_tag(tag)
        p = p or "I"
        unfinished = scheme == "bioes" and open_ is not None
        if p == "O":
            invalid += unfinished
            close(i)
        elif p in ("B", "S"):
            invalid += unfinished
            close(i)
            open_ = [i, typ]
            if p == "S":
                close(i + 1)
        else:  # I or E
            if open_ is None or open_[1] != typ:
                invalid += scheme in ("iob2", "bioes")
                close(i)
                open_ = [i, typ]
            if p == "E":
                close(i + 1)
    invalid += scheme == "bioes" and open_ is not None
    close(len(tags))
    return spans, invalid


def iob2_tags(spans: list[Span], n: int) -> list[str]:
    tags = ["O"] * n
    for s, e, typ in spans:
        tags[s] = f"B-{typ}"
        for k in range(s + 1, e):
            tags[k] = f"I-{typ}"
    return tags


def group_entities(tags: list[str], scores: np.ndarray) -> list[tuple[int, int, str, float]]:
    """(start, end, type, score) per entity, grouped as transformers' pipeline groups words: a word joins
    the previous one when both have the same type and it is not a B-; the score is the words' mean."""
    out: list[tuple[int, int, str, float]] = []
    start = 0
    for i in range(1, len(tags) + 1):
        if i < len(tags):
            p, typ = split_tag(tags[i])
            if typ == split_tag(tags[i - 1])[1] and p != "B":
                continue
        typ = split_tag(tags[start])[1]
        if typ:
            out.append((start, i, typ, float(np.mean(scores[start:i]))))
        start = i
    return out


def words_of(text: str, tokenizer: Any) -> list[tuple[int, int]]:
    """Character (start, end) of each word of a raw text, as the tokenizer's pre-tokenizer splits it.

    Offsets are trimmed of whitespace (SentencePiece and byte-level pre-tokenizers fold the space before a
    word into it), so an entity offset that starts at the word's first letter matches.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("token classification on raw text needs a fast tokenizer (its pre-tokenizer splits "
                         "words with character offsets)")
    pre = backend.pre_tokenizer
    spans = [o for _, o in pre.pre_tokenize_str(text)] if pre is not None else \
        [m.span() for m in re.finditer(r"\S+", text)]
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s < e:
            out.append((s, e))
    return out


class TokenClassificationOptions(TaskOptions):
    tag_scheme: Literal["auto", "io", "iob1", "iob2", "bioes"] = "auto"
    """Tag scheme of the `tags` column; auto detects it from the training split. Trained as IOB2."""
    label_all_subtokens: bool = False
    """Train every sub-token of a word (I- after a B- word), not only the first; metrics read the first."""
    stride: int = Field(32, ge=0)
    """Tokens of overlap between the windows of a sentence longer than model.max_length (at most half a window)."""
    seqeval_mode: Literal["default", "strict"] = "default"
    """default: conlleval's lenient entity reading; strict: IOB2 rules (an I- after O is no entity)."""


class Entity(Record):
    entity_group: str
    score: float
    word: str
    start: int
    end: int


class TagsPrediction(Record):
    tags: list[str]
    words: list[str] | None = None  # raw-text input only: the words the text was split into
    entities: list[Entity]


@register_task
class TokenClassification(Task):
    """A tag per word (named entities, parts of speech), with entity-level seqeval metrics."""

    name = "token-classification"
    aliases = ("ner",)
    Options = TokenClassificationOptions
    long_inputs = "window"
    generates = False
    loss_metrics = ()
    head_modules = ("classifier", "score")
    explains = True
    hub_pipeline_tag = "token-classification"
    onnx_outputs = ("logits",)

    def __init__(self, cfg: "RunConfig", state: dict | None = None) -> None:
        super().__init__(cfg, state)
        state = state or {}
        self.scheme: str = state.get("tag_scheme", self.opts.tag_scheme)
        self.labels: list[str] = state.get("labels", [])

    def roles(self) -> list[Role]:
        # text first: a plain string given to `predict` is raw text
        return [Role("text", "string", required=False, doc="raw text (with character-offset entities)"),
                Role("tokens", "strings", required=False, doc="the words of a pre-tokenized sentence"),
                Role("tags", "any", required=False, target=True, columns=("tags", "ner_tags"),
                     doc="a tag per token (IO, IOB1, IOB2 or BIOES)"),
                Role("entities", "any", required=False, target=True, columns=("entities", "label", "spans"),
                     doc="character-offset entities [[start, end, type], ...] of the text")]

    @property
    def types(self) -> list[str]:
        return sorted({t[2:] for t in self.labels if t != "O"})

    # ------------------------------------------------------------------ data
    def _mode(self, t: Table, needs_gold: bool) -> str:
        """"tokens" or "text": which input the table holds, checked against its gold column."""
        found = ", ".join(f"{c} ({r})" for r, c in t.column_of.items()) or \
            f"none named {', '.join(c for r in self.roles() for c in r.candidates)}"
        where = {"file": t.file[0] if len(t) else None, "hint": "give tokens with tags (a tag per token), or "
                 "text with entities ([[start, end, type], ...]); map columns with data.columns"}
        if "tokens" in t and ("tags" in t or "text" not in t):
            if needs_gold and "tags" not in t:
                raise DataError(f"tokens need a tags column to train or evaluate on; columns found: {found}", **where)
            return "tokens"
        if "text" in t:
            if needs_gold and "entities" not in t:
                raise DataError(f"text needs an entities column (character offsets) to train or evaluate on; "
                                f"columns found: {found}", **where)
            return "text"
        if t.file and Path(t.file[0]).is_file() and detect_format(Path(t.file[0]), self.cfg.data.format) in DELIMITED \
                and looks_like_conll(Path(t.file[0])):
            where["hint"] = ("the file looks like CoNLL (a token and its tag per line, blank lines between sentences), "
                             "read as a table whose first line is its header: set data.format: conll")
        raise DataError(f"token classification reads tokens (with tags) or text (with entities: entities, label "
                        f"or spans); columns found: {found}", **where)

    def _error(self, t: Table, i: int, role: str, msg: str, hint: str | None = None,
               token: int | None = None) -> DataError:
        """A DataError at row i, or at its token's own line when the row is a CoNLL sentence."""
        line = t.line[i] + token if t.token_lines and token is not None else t.line[i]
        return DataError(msg, file=t.file[i], line=line, column=t.column_of.get(role, role), hint=hint)

    def _tags(self, t: Table, i: int) -> list[str]:
        """Row i's tags, checked: strings, one per token."""
        tags, n = t["tags"][i], len(t["tokens"][i])
        if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
            shown = printable(repr(tags)[:80])
            raise self._error(t, i, "tags", f"tags must be a list of tag names, got {shown}",
                              "integer tag ids are not read: write the names (B-PER, O, ...)")
        if len(tags) != n:
            raise self._error(t, i, "tags", f"{len(tags)} tags for {n} tokens", "give exactly one tag per token")
        return tags

    def _spans(self, t: Table, i: int) -> list[Span]:
        """Row i's entities as sorted (start, end, type) character spans, checked for range and overlap."""
        v, text = t["entities"][i], t["text"][i]
        if not isinstance(v, list):
            raise self._error(t, i, "entities", f"entities must be a list of [start, end, type], got "
                              f"{printable(repr(v)[:80])}")
        spans = []
        for e in v:
            if isinstance(e, dict):
                e = [e.get("start", e.get("start_offset")), e.get("end", e.get("end_offset")),
                     e.get("label", e.get("type", e.get("entity_group")))]
            ok = isinstance(e, (list, tuple)) and len(e) == 3 and isinstance(e[2], str) and e[2].strip() and all(
                isinstance(x, int) and not isinstance(x, bool) for x in e[:2])
            if not ok:
                raise self._error(t, i, "entities", f"entity {printable(repr(e)[:80])} is not [start, end, type]")
            s, end, typ = e
            if s >= end:
                raise self._error(t, i, "entities", f"entity [{s}, {end}, {printable(typ)}] is empty (its end is not "
                                  f"after its start)", "offsets count characters, end exclusive")
            if not 0 <= s < end <= len(text):
                raise self._error(t, i, "entities", f"entity [{s}, {end}, {printable(typ)}] is out of range for a "
                                  f"text of {len(text)} characters", "offsets count characters, end exclusive")
            spans.append((s, end, typ))
        spans.sort()
        for a, b in zip(spans, spans[1:]):
            if b[0] < a[1]:
                raise self._error(t, i, "entities", f"entities [{a[0]}, {a[1]}, {printable(a[2])}] and "
                                  f"[{b[0]}, {b[1]}, {printable(b[2])}] overlap",
                                  "a character belongs to one entity at most; fix or remove one of them")
        return spans

    def _check_scheme(self, t: Table, i: int, tags: list[str]) -> None:
        allowed = SCHEME_PREFIXES[self.scheme]
        name = self.scheme.upper()
        for k, tag in enumerate(tags):
            p, typ = split_tag(tag)
            if p != "O" and (p not in allowed or not typ):
                raise self._error(t, i, "tags", f"tag '{printable(tag)}' is not {'an' if name[0] in 'AEIOU' else 'a'} "
                                  f"{name} tag", "set task.tag_scheme to the file's scheme (io, iob1, iob2, bioes) "
                                  "or fix the tag", token=k)

    def _entity_spans(self, t: Table, i: int, mode: str) -> list[Span]:
        if mode == "tokens":
            return spans_from_tags(t["tags"][i], self.scheme)[0]
        return self._spans(t, i)

    def fit(self, splits: dict[str, Table]) -> None:
        train = splits["train"]
        mode = self._mode(train, needs_gold=True)
        if mode == "tokens":
            tags = [self._tags(train, i) for i in range(len(train))]
            self.scheme = detect_scheme(tags) if self.opts.tag_scheme == "auto" else self.opts.tag_scheme
            for i, seq in enumerate(tags):
                self._check_scheme(train, i, seq)
        elif self.scheme == "auto":  # spans have no scheme; tagged files evaluated later are read as IOB2
            self.scheme = "iob2"
        types = {s[2] for i in range(len(train)) for s in self._entity_spans(train, i, mode)}
        if not types:
            raise DataError("the training split has no entities", file=train.file[0],
                            column=train.column_of.get("tags" if mode == "tokens" else "entities"),
                            hint="a tagger needs examples of at least one entity type")
        self.labels = ["O"] + sorted(f"{p}-{typ}" for typ in types for p in "BI")
        for split, t in splits.items():
            self.encode(split, t)

    def encode(self, split: str, t: Table) -> None:
        """Check every row against the fitted tag scheme and entity types. Values stay as the user wrote
        them (gold() and describe() read them); preprocess turns them into IOB2 ids per word."""
        mode = self._mode(t, needs_gold=True)
        known = set(self.types)
        role = "tags" if mode == "tokens" else "entities"
        for i in range(len(t)):
            if mode == "tokens":
                self._check_scheme(t, i, self._tags(t, i))
            for s in self._entity_spans(t, i, mode):
                if s[2] not in known:
                    raise self._error(t, i, role, f"entity type '{printable(s[2])}' in split '{split}' never occurs "
                                      f"in the training split", f"known types: {', '.join(self.types)}",
                                      token=s[0] if mode == "tokens" else None)

    def stratify_keys(self, table: Table) -> list | None:
        return None

    def describe(self, table: Table) -> dict[str, Any]:
        if "tags" not in table and "entities" not in table:
            return {}
        mode = self._mode(table, needs_gold=True)
        counts: Counter = Counter()
        invalid = 0
        for i in range(len(table)):
            if mode == "tokens":
                spans, bad = spans_from_tags(table["tags"][i], self.scheme)
                invalid += bad
            else:
                spans = self._spans(table, i)
            counts.update(s[2] for s in spans)
        return {"entities": {typ: counts.get(typ, 0) for typ in self.types}, "invalid_sequences": invalid}

    def summary(self) -> dict[str, Any]:
        return {"tag_scheme": self.scheme, "labels": self.labels, "entity_types": self.types}

    def gold(self, table: Table, i: int) -> Any:
        if "tokens" in table and "tags" in table:
            return table["tags"][i]
        return [list(s) for s in self._spans(table, i)]

    # ------------------------------------------------------------------ tokens
    def _words(self, t: Table, tokenizer: Any) -> tuple[list[list[str]], list[list[tuple[int, int]] | None],
                                                        list[list[int] | None]]:
        """Per example: its words, their character offsets (raw text only) and gold IOB2 ids per word."""
        mode = self._mode(t, needs_gold=False)
        index = {n: k for k, n in enumerate(self.labels)}
        words, offsets, gold = [], [], []
        for i in range(len(t)):
            if mode == "tokens":
                words.append(list(t["tokens"][i]))
                offsets.append(None)
                tags = iob2_tags(spans_from_tags(t["tags"][i], self.scheme)[0], len(words[-1])) \
                    if "tags" in t else None
            else:
                text = t["text"][i]
                pos = words_of(text, tokenizer)
                words.append([text[s:e] for s, e in pos])
                offsets.append(pos)
                tags = self._text_tags(t, i, pos) if "entities" in t else None
            gold.append([index[x] for x in tags] if tags is not None else None)
        return words, offsets, gold

    def _text_tags(self, t: Table, i: int, pos: list[tuple[int, int]]) -> list[str]:
        """IOB2 tags of a raw text's words from its character spans; a span must start and end on a word."""
        text = t["text"][i]
        starts = {s: k for k, (s, _) in enumerate(pos)}
        ends = {e: k for k, (_, e) in enumerate(pos)}
        spans = []
        for s, e, typ in self._spans(t, i):
            a, b = s, e
            while a < b and text[a].isspace():
                a += 1
            while b > a and text[b - 1].isspace():
                b -= 1
            if a not in starts or b not in ends:
                near = [text[ws:we] for ws, we in pos if we > s and ws < e]
                raise self._error(
                    t, i, "entities", f"entity [{s}, {e}, {printable(typ)}] ({printable(repr(text[s:e]))}) does not "
                    f"start and end on word boundaries; the words there: {printable(near)}",
                    "words are split by the model tokenizer's pre-tokenizer (for BERT at spaces and punctuation); "
                    "make the offsets cover whole words")
            spans.append((starts[a], ends[b] + 1, typ))
        return iob2_tags(spans, len(pos))

    def preprocess(self, table: Table, tokenizer: Any) -> "datasets.Dataset":

        words, offsets, gold = self._words(table, tokenizer)
        # a word the tokenizer turns into nothing (a lone zero-width space) would go unpredicted: read it as unknown
        unique = sorted({w for ws in words for w in ws})
        empty = {w for w, ids in zip(unique, tokenizer(unique, add_special_tokens=False)["input_ids"]) if not ids} \
            if unique and tokenizer.unk_token is not None else set()
        if empty:
            words = [[tokenizer.unk_token if w in empty else w for w in ws] for ws in words]
        max_len = self.cfg.model.max_length
        size = max_len - tokenizer.num_special_tokens_to_add(pair=False)
        stride = min(self.opts.stride, size // 2)  # the tokenizer panics unless stride < window
        step = size - stride
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_len, stride=stride,
                        return_overflowing_tokens=True, verbose=False)
        cols: dict[str, list] = {k: [] for k in ("input_ids", "example", "window", "length", "n_words",
                                                 "word_pos", "word_index", "word_context", "gold_tags",
                                                 "word_starts", "word_ends")}
        has_types = "token_type_ids" in enc
        if has_types:
            cols["token_type_ids"] = []
        with_gold = gold and gold[0] is not None
        if with_gold:
            cols["labels"] = []
        cont = {k: (f"I-{n[2:]}" if n != "O" else "O") for k, n in enumerate(self.labels)}
        cont_id = {k: self.labels.index(n) for k, n in cont.items()}
        content_of: dict[int, int] = {}  # example -> content tokens over its windows (overlap counted once)
        first_at: dict[int, dict[int, int]] = {}  # example -> word -> global position of its first sub-token
        window_of: dict[int, int] = {}
        for f, ex in enumerate(enc["overflow_to_sample_mapping"]):
            k = window_of[ex] = window_of.get(ex, -1) + 1
            wids = enc.word_ids(f)
            content = [j for j, w in enumerate(wids) if w is not None]
            c0, L = (content[0], len(content)) if content else (0, 0)
            content_of[ex] = content_of.get(ex, 0) + (L if k == 0 else L - stride)
            first = first_at.setdefault(ex, {})
            pos, idx, ctx = [], [], []
            labels = [-100] * len(wids)
            for j in content:
                w, g = wids[j], k * step + j - c0  # windows start `step` tokens apart
                is_first = first.setdefault(w, g) == g
                if is_first:
                    pos.append(j)
                    idx.append(w)
                    ctx.append(min(j - c0, c0 + L - 1 - j) + 0.01 * L)  # BERT's max-context score
                if with_gold:
                    tag = gold[ex][w]
                    labels[j] = tag if is_first else (cont_id[tag] if self.opts.label_all_subtokens else -100)
            cols["input_ids"].append(enc["input_ids"][f])
            if has_types:
                cols["token_type_ids"].append(enc["token_type_ids"][f])
            if with_gold:
                cols["labels"].append(labels)
            cols["example"].append(ex)
            cols["window"].append(k)
            cols["length"].append(len(wids))
            cols["n_words"].append(len(words[ex]))
            cols["word_pos"].append(pos)
            cols["word_index"].append(idx)
            cols["word_context"].append(ctx)
            # example-level data rides on the first window only
            cols["gold_tags"].append(gold[ex] if k == 0 and gold[ex] is not None else [])
            cols["word_starts"].append([s for s, _ in offsets[ex]] if k == 0 and offsets[ex] is not None else [])
            cols["word_ends"].append([e for _, e in offsets[ex]] if k == 0 and offsets[ex] is not None else [])
        special = max_len - size
        cols["n_tokens"] = [content_of[ex] + special for ex in cols["example"]]
        return features_dataset(cols, _feature_types(cols))

    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> Batch:

        # padded positions are masked out, so the pad id only has to exist in every vocabulary: 0 does
        inputs = pad_inputs(features, pad_to_multiple_of)
        targets = {}
        meta: dict[str, Any] = {k: np.array([f[k] for f in features]) for k in ("example", "window", "n_words")}
        for k in ("word_pos", "word_index", "word_context", "gold_tags", "word_starts", "word_ends"):
            meta[k] = [f[k] for f in features]
        meta["n_labelled"] = 0
        if "labels" in features[0]:  # one label per input position (-100 where no loss is read)
            labels = pad_labels([f["labels"] for f in features], pad_to_multiple_of)
            targets["labels"] = labels
            meta["n_labelled"] = int((labels != -100).sum())
        return Batch(inputs, targets, meta)

    def cache_key(self) -> dict:
        return {"task": self.name, "labels": self.labels, "tag_scheme": self.scheme,
                "max_length": self.cfg.model.max_length, "stride": self.opts.stride,
                "label_all_subtokens": self.opts.label_all_subtokens}

    # ------------------------------------------------------------------ model
    def load_model(self, name_or_path: str, **kwargs: Any) -> tuple["torch.nn.Module", ModelFacts]:
        from transformers import AutoModelForTokenClassification

        from ..padding_free import enable

        kwargs.setdefault("trust_remote_code", False)  # never transformers' prompt to run a repo's code
        # a checkpoint with another head (a sequence classifier, an NER model with other tags) gets a new one
        kwargs.setdefault("ignore_mismatched_sizes", True)
        model = AutoModelForTokenClassification.from_pretrained(
            name_or_path, num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
            label2id={n: i for i, n in enumerate(self.labels)}, **kwargs)
        padding_free = enable(model, self.cfg.model.padding_free, head="token-classification")
        return model, ModelFacts(speed_paths={"padding_free": padding_free})

    def count_items(self, batch: Batch) -> int:
        """Labelled sub-tokens (counted at collation, on the CPU): loss_sum / count = the HF model's mean loss."""
        return int(batch.meta["n_labelled"])

    def forward(self, model: "torch.nn.Module", batch: Batch,
                mode: Mode) -> tuple["torch.Tensor | None", "torch.Tensor"]:
        import torch.nn.functional as F

        from ..padding_free import is_enabled, token_outputs

        logits = (token_outputs(model, batch.inputs)[0] if is_enabled(model) else model(**batch.inputs).logits).float()
        if "labels" not in batch.targets:
            return None, logits
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets["labels"].flatten(), ignore_index=-100,
                               reduction="sum")
        return loss, logits

    # ------------------------------------------------------------------ evaluation
    @property
    def metrics(self) -> dict[str, bool]:
        return {"f1": True, "precision": True, "recall": True, "accuracy": True}

    @property
    def default_metric(self) -> str:
        return "f1"

    def evaluator(self, table: Table) -> "TokenEvaluator":
        return TokenEvaluator(self, table)

    def prediction_schema(self) -> type[Record]:
        return TagsPrediction

    def record(self, table: Table, i: int, tags: list[str], scores: np.ndarray,
               offsets: list[tuple[int, int]] | None) -> dict:
        """The prediction record of example i (schema in the module docstring)."""
        groups = group_entities(tags, scores)
        if offsets is None:
            tokens = table["tokens"][i]
            return {"tags": tags, "entities": [{"entity_group": typ, "score": sc, "word": " ".join(tokens[a:b]),
                                                "start": a, "end": b} for a, b, typ, sc in groups]}
        text = table["text"][i]
        ents = []
        for a, b, typ, sc in groups:
            s, e = offsets[a][0], offsets[b - 1][1]
            ents.append({"entity_group": typ, "score": sc, "word": text[s:e], "start": s, "end": e})
        return {"tags": tags, "words": [text[s:e] for s, e in offsets], "entities": ents}

    def worst_errors(self, rows: list[dict], k: int) -> list[dict[str, Any]]:
        """The sentences with the most entity errors (gold or predicted entities that the other lacks),
        gold and predicted entities marked in the text."""
        views = []
        for r in rows:
            pred = r["prediction"]
            if "tokens" in r["input"]:
                words = r["input"]["tokens"]
                text, spans, at = "", [], 0
                for w in words:
                    spans.append((at, at + len(w)))
                    text += w + " "
                    at += len(w) + 1
                text = text[:-1]
                gold = {(a, b, typ) for a, b, typ in spans_from_tags(r["gold"], self.scheme)[0]}
                got = {(e["start"], e["end"], e["entity_group"]) for e in pred["entities"]}
                place = lambda a, b: (spans[a][0], spans[b - 1][1])  # noqa: E731 - word range -> characters
                role = "tokens"
            else:
                text, spans, role = r["input"]["text"], None, "text"
                gold = {(a, b, typ) for a, b, typ in r["gold"]}
                got = {(e["start"], e["end"], e["entity_group"]) for e in pred["entities"]}
                place = lambda a, b: (a, b)  # noqa: E731
            errors = len(gold ^ got)
            if not errors:
                continue
            marks = [{"start": place(a, b)[0], "end": place(a, b)[1], "kind": kind, "label": f"{kind}: {typ}"}
                     for kind, ents in (("gold", gold), ("pred", got)) for a, b, typ in sorted(ents)]
            field = {"name": role, "text": text, "marks": marks, **({"word_spans": spans} if spans else {})}
            views.append((errors, {"title": f"{errors} entity error{'s' * (errors > 1)}: gold "
                                            f"{sorted(t for *_, t in gold)}, predicted {sorted(t for *_, t in got)}",
                                   "row": r, "input": r["input"], "fields": [field]}))
        views.sort(key=lambda v: -v[0])
        return [v for _, v in views[:k]]

    def explain(self, model: "torch.nn.Module", tokenizer: Any, record: dict, prediction: dict, target: str | None,
                steps: int) -> dict[str, Any]:
        """One attribution per predicted entity: of the mean probability of its predicted tags, over its words'
        first sub-tokens. A sentence longer than model.max_length is explained in its first window; entities
        past it are listed under `not_explained`."""
        import torch

        from ..attribution import Encoded, explain
        from ..errors import ConfigError

        if target is not None:
            raise ConfigError("token classification explains each predicted entity: it takes no target")
        table = Table({k: [record[k]] for k in ("text", "tokens") if k in record}, ["input"], [1])
        mode = self._mode(table, needs_gold=False)  # as prediction reads the record
        words, offsets, _ = self._words(table, tokenizer)
        enc = tokenizer(words[0], is_split_into_words=True, truncation=True, max_length=self.cfg.model.max_length)
        wids = enc.word_ids()
        pos = offsets[0]
        places = [None if w is None else (mode, w, *(pos[w] if pos else (0, 0))) for w in wids]
        device = next(model.parameters()).device
        inputs = {k: torch.tensor([enc[k]], device=device)
                  for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        encoded = Encoded(inputs, places, {mode: record[mode] if mode == "text" else words[0]},
                          [w is None for w in wids])
        first = {}
        for j, w in enumerate(wids):
            first.setdefault(w, j)
        index = {n: k for k, n in enumerate(self.labels)}
        scores, skipped = {}, []
        for ent in prediction["entities"]:
            if mode == "text":
                span = [k for k, (a, b) in enumerate(pos) if a >= ent["start"] and b <= ent["end"]]
            else:
                span = list(range(ent["start"], ent["end"]))
            name = f"{ent['entity_group']}: {ent['word']} [{ent['start']}:{ent['end']}]"
            if not span or any(k not in first for k in span):
                skipped.append(name)
                continue
            tokens = torch.tensor([first[k] for k in span], device=device)
            tags = torch.tensor([index[prediction["tags"][k]] for k in span], device=device)
            scores[name] = (lambda t, g: lambda out: out.logits.float().softmax(-1)[:, t, g].mean(-1))(tokens, tags)
        return {**explain(model, tokenizer, encoded, scores, steps), "not_explained": skipped}

    def state(self) -> dict:
        return {"task": self.name, "tag_scheme": self.scheme, "labels": self.labels}


def _feature_types(cols: dict[str, list]) -> "datasets.Features":
    """Explicit column types: an all-empty list column has no type to infer."""
    import datasets

    ints, floats = datasets.Sequence(datasets.Value("int64")), datasets.Sequence(datasets.Value("float64"))
    kinds = {"word_context": floats, "example": datasets.Value("int64"), "window": datasets.Value("int64"),
             "length": datasets.Value("int64"), "n_words": datasets.Value("int64"),
             "n_tokens": datasets.Value("int64")}
    return datasets.Features({k: kinds.get(k, ints) for k in cols})


class TokenEvaluator:
    """Per example and word keeps only the winning window's (tag id, its probability, context score, window)."""

    _ROW = np.dtype([("tag", np.int32), ("prob", np.float32), ("score", np.float64), ("window", np.int32)])

    def __init__(self, task: TokenClassification, table: Table) -> None:
        self.task, self.table = task, table
        self.words: dict[int, np.ndarray] = {}  # example -> structured array, one row per word
        self.gold: dict[int, list[int]] = {}
        self.offsets: dict[int, list[tuple[int, int]]] = {}

    def _take(self, ex: int, n: int, idx: np.ndarray, rows: np.ndarray) -> None:
        """Keep, per word, the candidate with more context (ties: the earlier window)."""
        cur = self.words.get(ex)
        if cur is None:
            cur = self.words[ex] = np.zeros(n, dtype=self._ROW)
            cur["tag"], cur["score"], cur["window"] = -1, -np.inf, np.iinfo(np.int32).max
        old = cur[idx]
        better = (rows["score"] > old["score"]) | ((rows["score"] == old["score"]) & (rows["window"] < old["window"]))
        cur[idx[better]] = rows[better]

    def add(self, batch: Batch, outputs: "torch.Tensor") -> None:
        import torch

        meta = batch.meta
        rows_b = [b for b, pos in enumerate(meta["word_pos"]) for _ in pos]
        rows_t = [p for pos in meta["word_pos"] for p in pos]
        dev = outputs.device
        probs = outputs[torch.tensor(rows_b, dtype=torch.long, device=dev),
                        torch.tensor(rows_t, dtype=torch.long, device=dev)].float().softmax(-1)
        p, k = (x.detach().cpu().numpy() for x in probs.max(-1))
        at = 0
        for b, pos in enumerate(meta["word_pos"]):
            ex, win, n = int(meta["example"][b]), int(meta["window"][b]), int(meta["n_words"][b])
            rows = np.zeros(len(pos), dtype=self._ROW)
            rows["tag"], rows["prob"] = k[at:at + len(pos)], p[at:at + len(pos)]
            rows["score"], rows["window"] = meta["word_context"][b], win
            at += len(pos)
            self._take(ex, n, np.asarray(meta["word_index"][b], dtype=np.int64), rows)
            if win == 0:
                if len(meta["gold_tags"][b]) or n == 0:
                    self.gold[ex] = list(meta["gold_tags"][b])
                if meta["word_starts"][b]:
                    self.offsets[ex] = list(zip(meta["word_starts"][b], meta["word_ends"][b]))

    def state(self) -> dict:
        return {"words": dict(self.words), "gold": dict(self.gold), "offsets": dict(self.offsets)}

    def merge(self, state: dict) -> None:
        for ex, rows in state["words"].items():
            self._take(ex, len(rows), np.arange(len(rows)), rows)
        self.gold.update(state["gold"])
        self.offsets.update(state["offsets"])

    def result(self, tune: bool = False) -> EvalResult:
        from ..metrics.seqeval import seqeval_metrics

        task, t = self.task, self.table
        text_mode = task._mode(t, needs_gold=False) == "text"
        has_gold = "tags" in t or "entities" in t
        records, y_true, y_pred = [], [], []
        for i in range(len(t)):
            rows = self.words.get(i)
            if rows is None or (rows["tag"] < 0).any():
                raise RuntimeError(f"example {i} was not fully predicted: its features never reached the evaluator")
            tags = [task.labels[k] for k in rows["tag"]]
            offsets = self.offsets.get(i, []) if text_mode else None
            records.append(task.record(t, i, tags, rows["prob"], offsets))
            if has_gold:
                y_true.append([task.labels[k] for k in self.gold[i]])
                y_pred.append(tags)
        metrics = seqeval_metrics(y_true, y_pred, task.opts.seqeval_mode) if has_gold else {}
        return EvalResult(metrics, records)
