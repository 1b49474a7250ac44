"""Translation and summarization: a target text generated from a source text by an encoder-decoder.

Models. Any `AutoModelForSeq2SeqLM` (T5, BART, Marian, mBART, ...). A model that is not an encoder-decoder
(an encoder such as BERT or the embedded MiniLM) is warm-started as one: `EncoderDecoderModel` with that
model as encoder and `task.decoder` (default: the same model) as decoder, its cross-attention new. T5-style
prompts come from `task.source_prefix`; mBART-style language codes from `task.source_lang` / `target_lang`
(the tokenizer's src_lang/tgt_lang, and the target code forced as the first generated token).

Data. A source and a target per row: JSONL/CSV columns (source, text, document, dialogue, ...; target,
summary, ...), or parallel text files (`data.train: train.{lang}.gz`, `data.languages: [en, de]`: the
first language is the source). A target may be a list of strings: several references, all scored; the
first is the one trained on (teacher forcing).

Training. Cross-entropy on the target tokens (label smoothing from `task.label_smoothing`, training only:
validation loss is the plain negative log-likelihood). Sources and targets are cut to model.max_length and
task.max_target_length tokens; the data report gives the share of targets cut.

Evaluation. Generation (greedy or beam search, batched and length-sorted) scored with sacreBLEU (BLEU,
chrF) for translation and ROUGE-1/2/L/Lsum with stemming for summarization. With eval.metric: loss the
evaluations during training skip generation (it is slow); the final validation and test always generate.

Prediction record: {"translation_text": ...} or {"summary_text": ...} (the keys of transformers'
pipelines). Gold: the row's target as given (a string, or the list of references).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from ..collate import pad_inputs, pad_labels
from ..data.report import token_length_stats
from ..errors import ConfigError, DataError
from ..tokens import truncate
from ..types import Batch, EvalResult, ModelFacts, Record, Role, Table, TaskOptions
from .base import TRUNCATED_WARN_PCT, Mode, Task, features_dataset, register_task

if TYPE_CHECKING:
    import datasets
    import torch

    from ..config import RunConfig

# fp16 overflows in T5's feed-forward activations (the T5 papers trained in bf16); the loss goes NaN
FP16_UNSAFE = {"t5", "mt5", "umt5", "longt5", "switch_transformers"}


class Seq2SeqOptions(TaskOptions):
    source_prefix: str = ""
    """Text put before every source, e.g. "translate English to German: " for T5."""
    source_lang: str | None = None
    """mBART-style source language code (en_XX) for the tokenizer's src_lang; null: none."""
    target_lang: str | None = None
    """mBART-style target language code (de_DE): the tokenizer's tgt_lang and the first generated token."""
    decoder: str | None = None
    """A model that is not an encoder-decoder is warm-started as one with this decoder (Hub name or
    folder); null: model.name itself (BERT2BERT)."""
    max_target_length: int = Field(128, ge=2)
    """Target tokens kept for training (special tokens included); the data report counts those cut."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """Label smoothing of the training loss (0.1 in most translation recipes)."""
    num_beams: int = Field(1, ge=1)
    """Beams of the generation that is scored and predicted; 1: greedy."""
    length_penalty: float = 1.0
    """Beam search: exponent of the length normalisation (above 1 favours longer outputs)."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Most tokens generated per example; null: task.max_target_length."""
    no_repeat_ngram_size: int = Field(0, ge=0)
    """Forbid repeating any n-gram of this size in an output (0: off)."""


def shift_right(labels: "torch.Tensor", start: int, pad: int) -> "torch.Tensor":
    """Teacher forcing's decoder inputs: the start token, then the labels less their last (ignored -100 -> pad)."""
    out = labels.new_full(labels.shape, pad)
    out[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad)
    out[:, 0] = start
    return out


def _token_id(*values: Any) -> int | None:
    """The first value that is a token id (0 is one)."""
    return next((v for v in values if isinstance(v, int)), None)


class Seq2SeqTask(Task):
    """Shared by translation and summarization; the subclasses differ in metrics and record key."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]]
    record_key: ClassVar[str]
    Options = Seq2SeqOptions
    long_inputs = "truncate"
    generates = True
    decoding = ("num_beams", "length_penalty", "max_new_tokens", "no_repeat_ngram_size")
    opts: Seq2SeqOptions

    def __init__(self, cfg: "RunConfig", state: dict | None = None) -> None:
        super().__init__(cfg, state)
        self.tokenizer: Any = None  # set by load_model: generated ids are decoded with it

    def roles(self) -> list[Role]:
        langs = self.cfg.data.languages or []
        return [Role("source", "string", columns=("source", "src", "text", "document", "article", "dialogue",
                                                  *langs[:1]), doc="the text to translate or summarize"),
                Role("target", "any", target=True, numbered=True,
                     columns=("target", "tgt", "summary", "highlights", "references", *langs[1:2]),
                     doc="the reference output: a string, a list of strings, or numbered columns summary1, "
                         "summary2, ... (several references)")]

    # ------------------------------------------------------------------ data
    def _references(self, t: Table, i: int) -> list[str]:
        v = t["target"][i]
        if isinstance(v, str):
            return [v]
        if isinstance(v, list) and v and all(isinstance(x, str) and x.strip() for x in v):
            return list(v)
        raise DataError(f"the target must be a string or a non-empty list of strings, got {str(v)[:80]!r}",
                        file=t.file[i], line=t.line[i], column=t.column_of.get("target", "target"))

    def fit(self, splits: dict[str, Table]) -> None:
        for split, t in splits.items():
            self.encode(split, t)

    def encode(self, split: str, table: Table) -> None:
        for i in range(len(table)):
            self._references(table, i)

    def stratify_keys(self, table: Table) -> list | None:
        return None

    def describe(self, table: Table) -> dict[str, Any]:
        out: dict[str, Any] = {"examples": len(table),
                               "mean_source_words": round(float(np.mean([len(s.split()) for s in table["source"]])), 1)}
        if "target" in table:
            refs = [self._references(table, i) for i in range(len(table))]
            out["references"] = sum(len(r) for r in refs)
            out["mean_target_words"] = round(float(np.mean([len(r[0].split()) for r in refs])), 1)
        return out

    def summary(self) -> dict[str, Any]:
        return {"source_prefix": self.opts.source_prefix, "max_target_length": self.opts.max_target_length}

    def gold(self, table: Table, i: int) -> Any:
        return table["target"][i]

    # ------------------------------------------------------------------ tokens
    def _languages(self, tokenizer: Any) -> None:
        for attr, value in (("src_lang", self.opts.source_lang), ("tgt_lang", self.opts.target_lang)):
            if value is not None:
                if not hasattr(tokenizer, attr):
                    raise ConfigError(f"task.{'source' if attr == 'src_lang' else 'target'}_lang is set, but the "
                                      f"tokenizer ({type(tokenizer).__name__}) has no language codes (mBART-style "
                                      f"models have them); remove the option")
                setattr(tokenizer, attr, value)

    @staticmethod
    def _cut(enc: Any, max_length: int) -> tuple[list[list[int]], list[int]]:
        """Token ids cut to max_length keeping special tokens (the end-of-sequence), and the uncut counts."""
        ids = [truncate(x, m, None, max_length, "head")[0] if len(x) > max_length else x
               for x, m in zip(enc["input_ids"], enc["special_tokens_mask"])]
        return ids, [len(x) for x in enc["input_ids"]]

    def preprocess(self, table: Table, tokenizer: Any) -> "datasets.Dataset":

        self._languages(tokenizer)
        sources = [self.opts.source_prefix + s for s in table["source"]]
        src, n_src = self._cut(tokenizer(sources, return_special_tokens_mask=True, verbose=False),
                               self.cfg.model.max_length)
        cols: dict[str, list] = {"input_ids": src, "example": list(range(len(table))),
                                 "length": [len(x) for x in src], "n_tokens": n_src}
        if "target" in table:
            targets = [self._references(table, i)[0] for i in range(len(table))]
            tgt, n_tgt = self._cut(tokenizer(text_target=targets, return_special_tokens_mask=True, verbose=False),
                                   self.opts.max_target_length)
            # batches are cut by the longer side (fairseq's num_tokens): the decoder and its vocabulary-wide
            # output layer cost most per token, so sorting by source length alone left targets padded 1.34x
            # on Multi30k against 1.07x this way
            cols.update(labels=tgt, n_target_tokens=n_tgt, length=[max(a, len(b)) for a, b in zip(cols["length"], tgt)])
        return features_dataset(cols)

    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> Batch:
        inputs = pad_inputs([{"input_ids": f["input_ids"]} for f in features], pad_to_multiple_of)
        meta: dict[str, Any] = {"example": np.array([f["example"] for f in features]), "n_labelled": 0}
        targets = {}
        if "labels" in features[0]:
            targets["labels"] = pad_labels([f["labels"] for f in features], pad_to_multiple_of)
            meta["n_labelled"] = sum(len(f["labels"]) for f in features)
        return Batch(inputs, targets, meta)

    def cache_key(self) -> dict:
        return {"task": self.name, "max_length": self.cfg.model.max_length, "prefix": self.opts.source_prefix,
                "source_lang": self.opts.source_lang, "target_lang": self.opts.target_lang,
                "max_target_length": self.opts.max_target_length, "length": "max(source, target)"}

    def data_report(self, features: dict[str, "datasets.Dataset"], token_lengths: dict[str, dict],
                    max_length: int) -> tuple[dict[str, Any], list[str]]:
        """The targets' token lengths too: they are cut at task.max_target_length."""
        entries, warnings = super().data_report(features, token_lengths, max_length)
        cap = self.opts.max_target_length
        cut = {s: token_length_stats(f, cap, False, "n_target_tokens") for s, f in features.items()
               if "n_target_tokens" in f.column_names}
        if cut:
            entries.update(target_max_length=cap, target_token_lengths=cut)
        warnings += [f"{lens['truncated_pct']}% of {s} targets exceed task.max_target_length={cap} and are "
                     "truncated in training" for s, lens in cut.items() if lens["truncated_pct"] > TRUNCATED_WARN_PCT]
        return entries, warnings

    # ------------------------------------------------------------------ model
    def load_model(self, name_or_path: str, **kwargs: Any) -> tuple["torch.nn.Module", ModelFacts]:
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, EncoderDecoderModel

        from ..models import DROPOUT_NAMES, dropout_overrides

        kwargs.setdefault("trust_remote_code", False)  # never transformers' prompt to run a repo's code
        hub = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
        self.tokenizer = tok = AutoTokenizer.from_pretrained(name_or_path, **hub)
        self._languages(tok)
        config = AutoConfig.from_pretrained(name_or_path, **hub)
        if self.cfg.train.precision == "fp16" and config.model_type in FP16_UNSAFE:
            raise ConfigError(f"train.precision: fp16 is refused for {config.model_type} models: their activations "
                              "overflow in fp16 and the loss turns NaN; use bf16 (or fp32)")
        new_modules: tuple[str, ...] = ()
        if getattr(config, "is_encoder_decoder", False):
            model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
        else:
            decoder = self.opts.decoder or name_or_path
            enc = {k: v for k, v in kwargs.items() if k != "ignore_mismatched_sizes"}
            dec = enc
            if decoder != name_or_path and self.cfg.model.dropout is not None:  # its own architecture's keys
                dec = {k: v for k, v in enc.items() if k not in DROPOUT_NAMES}
                dec.update(dropout_overrides(AutoConfig.from_pretrained(decoder, **hub), self.cfg.model.dropout,
                                             decoder))
            both = {**{f"encoder_{k}": v for k, v in enc.items()}, **{f"decoder_{k}": v for k, v in dec.items()}}
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(name_or_path, decoder, **both)
            start = _token_id(tok.cls_token_id, tok.bos_token_id)
            end = _token_id(tok.sep_token_id, tok.eos_token_id)
            for c in (model.config, model.generation_config):
                c.decoder_start_token_id, c.eos_token_id, c.pad_token_id = start, end, tok.pad_token_id
            model.config.vocab_size = model.config.decoder.vocab_size
            # new layers, which LoRA trains in full: the cross-attention, and (BERT decoders) the LM head's
            # transform, absent from encoder checkpoints such as MiniLM's
            new_modules = ("crossattention", "predictions.transform")
        if self.opts.target_lang is not None:
            model.generation_config.forced_bos_token_id = tok.convert_tokens_to_ids(self.opts.target_lang)
        return model, ModelFacts(new_modules=new_modules)

    def count_items(self, batch: Batch) -> int:
        """Target tokens: loss_sum / count is the model's own mean token loss."""
        return int(batch.meta["n_labelled"])

    def generation_config(self, model: "torch.nn.Module") -> Any:
        """The model's generation defaults with the task's decoding options."""
        import copy

        gen = copy.deepcopy(model.generation_config)
        opts = {"num_beams": self.opts.num_beams, "length_penalty": self.opts.length_penalty, "do_sample": False,
                "max_new_tokens": self.opts.max_new_tokens or self.opts.max_target_length,
                "no_repeat_ngram_size": self.opts.no_repeat_ngram_size}
        gen.update(**opts, max_length=None, early_stopping=opts["num_beams"] > 1)
        return gen

    def forward(self, model: "torch.nn.Module", batch: Batch, mode: Mode) -> tuple[Any, Any]:
        import torch.nn.functional as F

        from ..models import bare_model

        inner = bare_model(model)
        loss = generated = None
        labels = batch.targets.get("labels")
        if labels is not None:
            gen, cfg = inner.generation_config, inner.config
            start = _token_id(gen.decoder_start_token_id, cfg.decoder_start_token_id, gen.bos_token_id)
            pad = _token_id(cfg.pad_token_id, gen.pad_token_id, 0)
            logits = model(**batch.inputs, decoder_input_ids=shift_right(labels, start, pad)).logits
            smoothing = self.opts.label_smoothing if mode == "train" else 0.0
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                   reduction="sum", label_smoothing=smoothing)
        if mode == "predict":
            generated = inner.generate(**batch.inputs, generation_config=self.generation_config(inner),
                                       streamer=self.streamer)
        return loss, generated

    # ------------------------------------------------------------------ evaluation
    #: metric name -> higher is better; the first is the default eval.metric
    metrics: ClassVar[dict[str, bool]]

    def score(self, hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
        from ..metrics import generation as generation_metrics

        return generation_metrics.bleu_chrf(hypotheses, references) if "bleu" in self.metrics else \
            generation_metrics.rouge(hypotheses, references)

    def evaluator(self, table: Table) -> "GenerationEvaluator":
        return GenerationEvaluator(self, table)

    def worst_errors(self, rows: list[dict], k: int) -> list[dict[str, Any]]:
        """The outputs with the lowest sentence chrF against their references."""
        from ..metrics.generation import lowest_chrf

        return lowest_chrf(rows, k, self.record_key)

    def prediction_schema(self) -> type[Record]:
        from pydantic import create_model

        return create_model(f"{type(self).__name__}Prediction", __base__=Record, **{self.record_key: (str, ...)})

    def state(self) -> dict:
        return {"task": self.name}


@register_task
class Translation(Seq2SeqTask):
    """Source text -> target text in another language (scored with sacreBLEU)."""

    name = "translation"
    hub_pipeline_tag = "translation"
    aliases = ()
    record_key = "translation_text"
    metrics = {"bleu": True, "chrf": True}


@register_task
class Summarization(Seq2SeqTask):
    """Document -> summary (scored with ROUGE, Porter-stemmed)."""

    name = "summarization"
    hub_pipeline_tag = "summarization"
    aliases = ()
    record_key = "summary_text"
    metrics = {"rougeL": True, "rouge1": True, "rouge2": True, "rougeLsum": True}


class GenerationEvaluator:
    """Keeps each example's generated text; with no generation (loss-only evaluations) it has no metrics."""

    def __init__(self, task: Seq2SeqTask, table: Table) -> None:
        self.task, self.table = task, table
        self.texts: dict[int, str] = {}
        self.lengths: dict[int, int] = {}

    def add(self, batch: Batch, outputs: "torch.Tensor | None") -> None:
        if outputs is None:
            return
        tok = self.task.tokenizer
        special = set(tok.all_special_ids)
        for ex, ids in zip(batch.meta["example"], outputs.tolist()):
            self.texts[int(ex)] = tok.decode(ids, skip_special_tokens=True).strip()
            self.lengths[int(ex)] = sum(1 for x in ids if x not in special)

    def state(self) -> dict:
        return {"texts": dict(self.texts), "lengths": dict(self.lengths)}

    def merge(self, state: dict) -> None:
        self.texts.update(state["texts"])
        self.lengths.update(state["lengths"])

    def result(self, tune: bool = False) -> EvalResult:
        t = self.table
        if not self.texts:
            return EvalResult({}, [])
        missing = [i for i in range(len(t)) if i not in self.texts]
        if missing:
            raise RuntimeError(f"example {missing[0]} was not generated: its batch never reached the evaluator")
        hyps = [self.texts[i] for i in range(len(t))]
        metrics: dict[str, Any] = {}
        if "target" in t:
            metrics = self.task.score(hyps, [self.task._references(t, i) for i in range(len(t))])
            metrics["gen_len"] = float(np.mean([self.lengths[i] for i in range(len(t))]))
        return EvalResult(metrics, [{self.task.record_key: h} for h in hyps])
