"""Text generation: fine-tuning a decoder-only (causal) language model on a corpus or on prompts and responses.

Data, one of four shapes per file (the columns decide):
  text                       language modelling on a corpus: every token is trained; texts longer than
                             model.max_length are cut into blocks of that many tokens;
  prompt + response          the prompt conditions, the response is trained (`task.train_on_prompt` trains both);
  instruction (+ input) + output   Alpaca: rendered with the Alpaca prompt, the output is the response;
  messages                   chat lists of {role, content}, rendered with the tokenizer's chat template (or
                             `task.chat_template`); the assistant turns are trained.
A response is followed by the end-of-sequence token, which is trained: labels are built by position, so a
pad token equal to EOS (most decoder-only tokenizers) never masks it.

Packing (`task.packing`). A batch runs as one flattened row of its examples' real tokens, position ids
restarting per example and attention within each example (tunesmith.padding_free's registered attention,
causal), so no example attends to another and each example's loss is what it is alone. Batches are then
cut by `train.batch_tokens` (a token budget) when it is set.

Evaluation. Loss and perplexity (exp of the mean token loss over the split). With responses, the final
validation and test generate a response per prompt (greedy unless sampling is asked for), scored with ROUGE
(or sacreBLEU: `task.reference_metric`); a few validation prompts (`task.sample_prompts`) are generated at
every evaluation and kept in the run folder's samples.jsonl.

Prediction record: {"generated_text": ...} for a prompt (or messages, or an instruction), the text after
the prompt; {"perplexity": ...} for a corpus text. Gold: the row's response.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..console import printable
from ..collate import pad_inputs
from ..errors import ConfigError, DataError
from ..types import Batch, EvalResult, ModelFacts, Record, Role, Table, TaskOptions
from .base import Mode, Task, features_dataset, register_task

if TYPE_CHECKING:
    import datasets
    import torch

    from ..config import RunConfig

ALPACA = ("Below is an instruction that describes a task{with_input}. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n")


def alpaca_prompt(instruction: str, input_text: str) -> str:
    """The Stanford Alpaca prompt (with its input block only when the input is not empty)."""
    if input_text.strip():
        return ALPACA.format(with_input=", paired with an input that provides further context",
                             instruction=instruction, input_block=f"### Input:\n{input_text}\n\n")
    return ALPACA.format(with_input="", instruction=instruction, input_block="")


def takes_logits_to_keep(model: "torch.nn.Module") -> bool:
    """Whether the causal LM under any DDP or PEFT wrapper takes `logits_to_keep` (transformers' causal LMs
    do), so that a packed batch computes logits at its labelled positions only."""
    import inspect

    from ..models import bare_model  # imports torch: tasks are read before a config is checked

    return "logits_to_keep" in inspect.signature(bare_model(model).forward).parameters


class CausalLMOptions(TaskOptions):
    train_on_prompt: bool = False
    """Train the prompt tokens too (default: the loss covers the response and its end-of-sequence token)."""
    chat_template: str | None = None
    """A Jinja chat template (or the path of a file holding one) for `messages`; null: the tokenizer's."""
    packing: bool = False
    """Run each batch as one flattened row of its examples (no padding, attention within each example;
    llama and gpt2 models); set train.batch_tokens to cut batches by tokens."""
    max_new_tokens: int = Field(64, ge=1)
    """Most tokens generated per prompt (evaluation and prediction)."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature (with do_sample)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: keep the most likely tokens up to this probability mass (with do_sample)."""
    sample_prompts: int = Field(4, ge=0)
    """Validation prompts generated at every evaluation (run folder: samples.jsonl)."""
    reference_metric: Literal["rouge", "bleu"] = "rouge"
    """How generated responses are scored against the data's responses: ROUGE-1/2/L/Lsum or BLEU/chrF."""
    truncate_prompt: Literal["none", "left"] = "none"
    """An example longer than model.max_length: none cuts its end (an example whose prompt leaves no response
    token is then dropped and listed with the dropped rows); left cuts the prompt's start instead, so the
    response is kept (and a prompt to generate from keeps its end)."""


class GeneratedPrediction(Record):
    generated_text: str


class PerplexityPrediction(Record):
    perplexity: float | None  # None: a text with no token to predict


@register_task
class CausalLM(Task):
    """Decoder-only language-model fine-tuning: corpus text, prompt/response, Alpaca or chat data."""

    name = "text-generation"
    hub_pipeline_tag = "text-generation"
    aliases = ("causal-lm", "sft")
    Options = CausalLMOptions
    long_inputs = "truncate"
    generates = True
    loss_metrics = ("perplexity",)
    decoding = ("max_new_tokens", "do_sample", "temperature", "top_p")
    eval_logs = ("samples",)
    opts: CausalLMOptions

    def __init__(self, cfg: "RunConfig", state: dict | None = None) -> None:
        super().__init__(cfg, state)
        state = state or {}
        self.mode: str | None = state.get("mode")
        self.tokenizer: Any = None  # set by load_model: prompts are rendered and generations decoded with it

    def roles(self) -> list[Role]:
        return [Role("prompt", "string", required=False, bare=True, columns=("prompt", "question", "query"),
                     doc="the prompt a response follows"),
                Role("text", "string", required=False, columns=("text", "content"),
                     doc="corpus text (language modelling: every token trained)"),
                Role("instruction", "string", required=False, doc="Alpaca: the instruction"),
                Role("input", "string", required=False, may_be_empty=True, doc="Alpaca: the optional input"),
                Role("messages", "any", required=False, columns=("messages", "conversations"),
                     doc="a chat: a list of {role, content}; the assistant turns are trained"),
                Role("response", "string", required=False, target=True,
                     columns=("response", "completion", "output", "answer", "summary"),
                     doc="the response to the prompt or instruction (gold)")]

    # ------------------------------------------------------------------ data
    def _mode_of(self, t: Table) -> str:
        for mode, role in (("chat", "messages"), ("alpaca", "instruction"), ("prompt", "prompt"), ("text", "text")):
            if role in t:
                return mode
        found = ", ".join(f"{c} ({r})" for r, c in t.column_of.items()) or "none"
        raise DataError(f"text generation reads text, prompt + response, instruction (+ input) + output, or "
                        f"messages; columns found: {found}", file=t.file[0] if len(t) else None,
                        hint="map columns with data.columns, e.g. {prompt: question, response: answer}")

    def _check(self, t: Table, gold: bool) -> None:
        mode = self._mode_of(t)
        if mode == "chat":
            for i, msgs in enumerate(t["messages"]):
                ok = isinstance(msgs, list) and msgs and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in msgs)
                if not ok:
                    raise DataError(f"messages must be a list of {{role, content}} objects, got "
                                    f"{printable(repr(msgs)[:80])}", file=t.file[i], line=t.line[i],
                                    column=t.column_of.get("messages", "messages"))
                if gold and not any(m["role"] == "assistant" for m in msgs):
                    raise DataError("the chat has no assistant turn: nothing to train on", file=t.file[i],
                                    line=t.line[i], column=t.column_of.get("messages", "messages"))
                if gold and msgs[0]["role"] == "assistant":
                    raise self._opens_with_assistant(t, i)
        elif mode in ("prompt", "alpaca") and gold and "response" not in t:
            raise DataError(f"{'prompts' if mode == 'prompt' else 'instructions'} need a response column to train "
                            "or evaluate on (response, completion, output, answer or summary)",
                            file=t.file[0], hint="map it with data.columns.response")

    @staticmethod
    def _opens_with_assistant(t: Table, i: int) -> DataError:
        """A trained chat's first assistant turn needs a turn before it (a template renders nothing there)."""
        return DataError("the chat opens with an assistant turn: no turn before it to condition it on (a chat "
                         "template renders nothing there)", file=t.file[i], line=t.line[i],
                         column=t.column_of.get("messages", "messages"),
                         hint="start the chat with a user (or system) turn, or remove the opening turn")

    def fit(self, splits: dict[str, Table]) -> None:
        self.mode = self._mode_of(splits["train"])
        for t in splits.values():
            if self._mode_of(t) != self.mode:
                raise DataError(f"this split holds {self._mode_of(t)} data but the training split {self.mode} data",
                                file=t.file[0])
            self._check(t, gold=True)

    def encode(self, split: str, table: Table) -> None:
        self._check(table, gold=True)

    def stratify_keys(self, table: Table) -> list | None:
        return None

    def describe(self, table: Table) -> dict[str, Any]:
        out: dict[str, Any] = {"examples": len(table), "format": self._mode_of(table)}
        if "response" in table:
            out["mean_response_words"] = round(float(np.mean([len(r.split()) for r in table["response"]])), 1)
        return out

    def summary(self) -> dict[str, Any]:
        return {"format": self.mode, "train_on_prompt": self.opts.train_on_prompt, "packing": self.opts.packing}

    def gold(self, table: Table, i: int) -> Any:
        if "response" in table:
            return table["response"][i]
        if "messages" in table:
            return next((m["content"] for m in reversed(table["messages"][i]) if m["role"] == "assistant"), None)
        return None

    # ------------------------------------------------------------------ tokens
    def _chat_template(self) -> str | None:
        t = self.opts.chat_template
        if t is not None and "{" not in t and Path(t).expanduser().is_file():
            return Path(t).expanduser().read_text(encoding="utf-8")
        return t

    def _render_chat(self, tok: Any, messages: list[dict], generation_prompt: bool) -> str:
        template = self._chat_template()
        if template is None and not getattr(tok, "chat_template", None):
            raise ConfigError("the data holds chat messages but the tokenizer has no chat template; set "
                              "task.chat_template (a Jinja template or a file holding one)")
        return tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                       add_generation_prompt=generation_prompt)

    def _chat_pieces(self, tok: Any, messages: list[dict]) -> list[tuple[str, bool]]:
        """The rendered chat as consecutive (text, trained) pieces: each assistant turn is the text its
        rendering adds after the conversation so far with the generation prompt."""
        pieces, done = [], ""
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._render_chat(tok, messages[:k], generation_prompt=True)
            upto = self._render_chat(tok, messages[:k + 1], generation_prompt=False)
            if not (before.startswith(done) and upto.startswith(before)):
                raise ConfigError("the chat template does not render a conversation as a prefix of its longer "
                                  "versions, so assistant turns cannot be located; set task.chat_template")
            pieces += [(before[len(done):], False), (upto[len(before):], True)]
            done = upto
        full = self._render_chat(tok, messages, generation_prompt=False)
        if len(full) > len(done):
            pieces.append((full[len(done):], False))
        return pieces

    def _prompt(self, t: Table, i: int, tok: Any) -> str | None:
        """Row i's prompt as the model sees it (None for corpus text): a chat up to its last assistant turn with
        the generation prompt, an Alpaca instruction, or a prompt. A plain prompt given to a model trained on
        chats or instructions is rendered as a user turn or an instruction."""
        if "messages" in t:
            msgs = t["messages"][i]
            while msgs and msgs[-1]["role"] == "assistant":
                msgs = msgs[:-1]
            if not msgs:
                raise DataError("the chat holds assistant turns only: no turn to prompt with", file=t.file[i],
                                line=t.line[i], column=t.column_of.get("messages", "messages"),
                                hint="give the chat a user turn to respond to")
            return self._render_chat(tok, msgs, generation_prompt=True)
        if "instruction" in t:
            return alpaca_prompt(t["instruction"][i], (t.get("input") or [""] * len(t))[i])
        if "prompt" in t:
            prompt = t["prompt"][i]
            if self.mode == "chat":
                return self._render_chat(tok, [{"role": "user", "content": prompt}], generation_prompt=True)
            return alpaca_prompt(prompt, "") if self.mode == "alpaca" else prompt
        return None

    def _pieces(self, t: Table, i: int, tok: Any, gold: bool) -> list[tuple[str, bool]]:
        """Row i as (text, trained) pieces; the end-of-sequence token is added after a response. A chat its
        template refuses (its `raise_exception`: roles not alternating, a role it does not know) is a
        DataError naming the row, as other bad chats are; a template that is no valid Jinja, a ConfigError."""
        if self._mode_of(t) == "text":
            return [(t["text"][i], True)]
        from jinja2 import TemplateError, TemplateSyntaxError  # what transformers renders chat templates with

        try:
            if self._mode_of(t) == "chat" and gold:
                if t["messages"][i][0]["role"] == "assistant":
                    raise self._opens_with_assistant(t, i)
                return self._chat_pieces(tok, t["messages"][i])
            pieces = [(self._prompt(t, i, tok), self.opts.train_on_prompt)]
        except TemplateSyntaxError as e:
            raise ConfigError(f"the chat template is not valid Jinja: {e} (line {e.lineno} of the template); fix "
                              "task.chat_template or the tokenizer's chat_template") from None
        except TemplateError as e:
            role = "messages" if "messages" in t else "prompt"
            raise DataError(f"the chat template refuses this conversation: {e}", file=t.file[i], line=t.line[i],
                            column=t.column_of.get(role, role), hint="fix the row's turns to what the template "
                            "accepts (e.g. user and assistant alternating), or set task.chat_template") from None
        if gold and "response" in t:
            pieces.append((t["response"][i], True))
        return pieces

    def preprocess(self, table: Table, tokenizer: Any) -> "datasets.Dataset":

        # gold: responses to train on or score (a chat is gold when it ends with an assistant turn)
        gold = "response" in table or "text" in table or ("messages" in table and all(
            m and m[-1]["role"] == "assistant" for m in table["messages"]))
        max_len = self.cfg.model.max_length
        eos = tokenizer.eos_token_id
        cols: dict[str, list] = {k: [] for k in ("input_ids", "labels", "example", "length", "n_tokens",
                                                 "prompt_len", "n_targets")}
        text_mode = self._mode_of(table) == "text"
        chat = self._mode_of(table) == "chat" or (self.mode == "chat" and not gold)
        for i in range(len(table)):
            ids: list[int] = []
            labels: list[int] = []
            prompt_len = 0  # tokens before the last trained piece: what generation starts from
            for k, (text, trained) in enumerate(self._pieces(table, i, tokenizer, gold)):
                # the first piece gets the tokenizer's own start (BOS for Llama tokenizers); a chat template
                # writes its special tokens itself
                enc = tokenizer(text, add_special_tokens=k == 0 and not chat)["input_ids"]
                if trained and gold:
                    prompt_len = len(ids)
                ids += enc
                labels += enc if trained else [-100] * len(enc)
            if not gold:
                prompt_len = len(ids)
            if gold and not text_mode and not chat and eos is not None:
                ids.append(eos)
                labels.append(eos)
            n = len(ids)
            if text_mode:  # a corpus text longer than the budget is cut into blocks, every one trained
                starts = range(0, max(n, 1), max_len)
            else:
                starts = range(0, 1)
                if self.opts.truncate_prompt == "left" and n > max_len:
                    # drop the prompt's first tokens, keeping one so the response's first token has a target
                    cut = min(n - max_len, max(prompt_len - 1, 0))
                    ids, labels, prompt_len = ids[cut:], labels[cut:], prompt_len - cut
            for s in starts:
                block_ids, block_labels = ids[s:s + max_len], labels[s:s + max_len]
                cols["input_ids"].append(block_ids)
                cols["labels"].append(block_labels if gold else [])
                cols["example"].append(i)
                cols["length"].append(len(block_ids))
                cols["n_tokens"].append(n)
                cols["prompt_len"].append(min(prompt_len, len(block_ids)) if not text_mode else 0)
                # trained target tokens (a label at position 0 is nobody's target): 0 trains nothing
                cols["n_targets"].append(sum(x != -100 for x in block_labels[1:]) if gold else 0)
        return features_dataset(cols)

    def untrainable(self, features: "datasets.Dataset") -> dict[int, str]:
        """Examples of gold features with no target token within model.max_length (the prompt fills it):
        they train nothing, so `prepare` drops and lists them. Example -> why."""
        if not len(features) or not features[0]["labels"]:
            return {}
        trained: dict[int, bool] = {}
        for ex, n in zip(features["example"], features["n_targets"]):
            trained[ex] = trained.get(ex, False) or n > 0
        max_len = self.cfg.model.max_length
        why = ("a text of one token: no next token to train on" if self.mode == "text" else
               f"the prompt fills model.max_length={max_len}: no response token is left to train on (set "
               "task.truncate_prompt: left to keep the response by cutting the prompt's start, or raise "
               "model.max_length)")
        return {ex: why for ex, ok in trained.items() if not ok}

    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> Batch:
        import torch

        inputs = pad_inputs([{"input_ids": f["input_ids"]} for f in features], pad_to_multiple_of)
        meta: dict[str, Any] = {"example": np.array([f["example"] for f in features]),
                                "prompt_len": np.array([f["prompt_len"] for f in features]), "n_labelled": 0}
        targets = {}
        if features[0]["labels"]:
            b, n = inputs["input_ids"].shape
            # the target of position t is the label of t + 1 in the same example (the last has none)
            shifted = torch.full((b, n), -100, dtype=torch.long)
            for i, f in enumerate(features):
                shifted[i, :len(f["labels"]) - 1] = torch.as_tensor(f["labels"][1:], dtype=torch.long)
            targets["labels"] = shifted
            meta["n_labelled"] = int((shifted != -100).sum())
        return Batch(inputs, targets, meta)

    def cache_key(self) -> dict:
        return {"task": self.name, "max_length": self.cfg.model.max_length, "mode": self.mode,
                "train_on_prompt": self.opts.train_on_prompt, "chat_template": self._chat_template(),
                "truncate_prompt": self.opts.truncate_prompt, "version": 2}

    # ------------------------------------------------------------------ model
    def load_model(self, name_or_path: str, **kwargs: Any) -> tuple["torch.nn.Module", ModelFacts]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..padding_free import enable

        kwargs.setdefault("trust_remote_code", False)  # never transformers' prompt to run a repo's code
        hub = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        speed = {"packing": enable(model, "on", head="causal-lm") if self.opts.packing else "off (task.packing: false)"}
        if self.opts.packing:
            speed["logits"] = ("labelled positions only (logits_to_keep)" if takes_logits_to_keep(model)
                               else f"every position ({type(model).__name__}.forward takes no logits_to_keep)")
        return model, ModelFacts(speed_paths=speed)

    def count_items(self, batch: Batch) -> int:
        """Trained target tokens (response tokens and their EOS): loss_sum / count is the mean token loss."""
        return int(batch.meta["n_labelled"])

    def generation_config(self, model: "torch.nn.Module") -> Any:
        import copy

        gen = copy.deepcopy(model.generation_config)
        opts = {"max_new_tokens": self.opts.max_new_tokens, "do_sample": self.opts.do_sample,
                "temperature": self.opts.temperature, "top_p": self.opts.top_p}
        if not opts["do_sample"]:
            opts.update(temperature=None, top_p=None, top_k=None)
        tok = self.tokenizer
        gen.update(**opts, max_length=None, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                   else tok.eos_token_id, eos_token_id=gen.eos_token_id if gen.eos_token_id is not None
                   else tok.eos_token_id)
        return gen

    def _generate(self, model: "torch.nn.Module", batch: Batch, rows: list[int]) -> dict[int, list[int]]:
        """Generated token ids after the prompt, for the batch rows `rows` (prompts left-padded)."""
        import torch

        ids = batch.inputs["input_ids"]
        lens = [int(batch.meta["prompt_len"][r]) or int(batch.inputs["attention_mask"][r].sum()) for r in rows]
        width = max(lens)
        prompt = ids.new_full((len(rows), width), 0)
        mask = torch.zeros_like(prompt)
        for k, (r, n) in enumerate(zip(rows, lens)):
            prompt[k, width - n:] = ids[r, :n]
            mask[k, width - n:] = 1
        gen = self.generation_config(model)
        out = model.generate(input_ids=prompt, attention_mask=mask, generation_config=gen,
                             streamer=self.streamer)
        stops = set(gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id])
        result = {}
        for k, r in enumerate(rows):  # a row that ended early is padded after its end token: cut there
            ids = out[k, width:].tolist()
            end = next((j + 1 for j, t in enumerate(ids) if t in stops), len(ids))
            result[r] = ids[:end]
        return result

    def forward(self, model: "torch.nn.Module", batch: Batch,
                mode: Mode) -> tuple["torch.Tensor | None", dict[str, Any]]:
        """Evaluations ("loss", "predict") keep each example's loss (perplexity records) and generate: every
        prompt for "predict", the first task.sample_prompts for "loss" (the samples log)."""
        import torch
        import torch.nn.functional as F

        from ..padding_free import flat_call, is_enabled

        labels = batch.targets.get("labels")
        outputs: dict[str, Any] = {}
        loss = None
        if labels is not None:
            scored: list = []

            def labelled_only(keep: "torch.Tensor") -> dict[str, Any]:
                # the output layer (vocabulary-wide) and softmax only where a label is: the response, not the
                # prompt; a documented use of logits_to_keep (a 1D tensor of positions in a packed row)
                scored.append((labels.reshape(-1).index_select(0, keep) != -100).nonzero().squeeze(1))
                return {"logits_to_keep": scored[0]}

            flat = flat_call(model, batch.inputs, labelled_only if takes_logits_to_keep(model) else None) \
                if is_enabled(model) else None
            if flat is not None:
                out, keep = flat
                keep = keep.index_select(0, scored[0]) if scored else keep
                logits, target = out.logits[0], labels.reshape(-1).index_select(0, keep)
                rows = torch.div(keep, labels.shape[1], rounding_mode="floor")
            else:
                logits = model(**batch.inputs).logits.flatten(0, 1)
                target = labels.reshape(-1)
                rows = torch.arange(labels.shape[0], device=labels.device).repeat_interleave(labels.shape[1])
            token_loss = F.cross_entropy(logits.float(), target, ignore_index=-100, reduction="none")
            loss = token_loss.sum()
            if mode != "train":  # per example, for perplexity records
                b = labels.shape[0]
                outputs["loss"] = torch.zeros(b, device=loss.device).index_add_(0, rows, token_loss).tolist()
                outputs["count"] = torch.zeros(b, device=loss.device).index_add_(
                    0, rows, (target != -100).float()).tolist()
        if mode != "train" and self.mode != "text":
            wanted = [r for r, ex in enumerate(batch.meta["example"])
                      if mode == "predict" or ex < self.opts.sample_prompts]
            if wanted:
                from ..models import bare_model

                outputs["generated"] = self._generate(bare_model(model), batch, wanted)
        return loss, outputs

    # ------------------------------------------------------------------ evaluation
    @property
    def metrics(self) -> dict[str, bool]:
        scores = {"rouge": {"rougeL": True, "rouge1": True, "rouge2": True, "rougeLsum": True},
                  "bleu": {"bleu": True, "chrf": True}}[self.opts.reference_metric]
        return {"perplexity": False, **scores}

    @property
    def default_metric(self) -> str:
        return "perplexity"

    def evaluator(self, table: Table) -> "CausalLMEvaluator":
        return CausalLMEvaluator(self, table)

    def worst_errors(self, rows: list[dict], k: int) -> list[dict[str, Any]]:
        """Generated responses with the lowest sentence chrF against the gold response (corpus-text runs,
        which predict a perplexity, have none)."""
        from ..metrics.generation import lowest_chrf

        return lowest_chrf(rows, k, "generated_text")

    def prediction_schema(self) -> type[Record]:
        return PerplexityPrediction if self.mode == "text" else GeneratedPrediction

    def state(self) -> dict:
        return {"task": self.name, "mode": self.mode}


class CausalLMEvaluator:
    """Per example: summed token loss and count (perplexity), and the generated text when there is one."""

    def __init__(self, task: CausalLM, table: Table) -> None:
        self.task, self.table = task, table
        self.loss: dict[int, float] = {}
        self.count: dict[int, float] = {}
        self.texts: dict[int, str] = {}

    def add(self, batch: Batch, outputs: dict[str, Any]) -> None:
        tok = self.task.tokenizer
        for r, ex in enumerate(batch.meta["example"]):
            ex = int(ex)
            if "loss" in outputs:
                self.loss[ex] = self.loss.get(ex, 0.0) + outputs["loss"][r]
                self.count[ex] = self.count.get(ex, 0.0) + outputs["count"][r]
            if r in outputs.get("generated", {}):
                self.texts[ex] = tok.decode(outputs["generated"][r], skip_special_tokens=True).strip()

    def state(self) -> dict:
        return {"loss": dict(self.loss), "count": dict(self.count), "texts": dict(self.texts)}

    def merge(self, state: dict) -> None:
        for ex, v in state["loss"].items():
            self.loss[ex] = self.loss.get(ex, 0.0) + v
            self.count[ex] = self.count.get(ex, 0.0) + state["count"][ex]
        self.texts.update(state["texts"])

    def result(self, tune: bool = False) -> EvalResult:
        import math

        from ..metrics import generation as generation_metrics

        t, task = self.table, self.task
        metrics: dict[str, Any] = {}
        total = sum(self.count.values())
        if total:
            metrics["perplexity"] = math.exp(sum(self.loss.values()) / total)
        if self.texts and len(self.texts) < len(t):  # a loss-only evaluation: only the sample prompts
            samples = [{"example": i, "prompt": task._prompt(t, i, task.tokenizer), "generated_text": s,
                        "gold": task.gold(t, i)} for i, s in sorted(self.texts.items())]
            return EvalResult(metrics, [], logs={"samples": samples})
        if task.mode == "text" or not self.texts:
            records = [{"perplexity": math.exp(self.loss[i] / self.count[i]) if self.count.get(i) else None}
                       for i in range(len(t))] if self.count else []
            return EvalResult(metrics, records)
        hyps = [self.texts[i] for i in range(len(t))]
        refs = [task.gold(t, i) for i in range(len(t))]
        if all(r is not None for r in refs):
            score = generation_metrics.rouge if task.opts.reference_metric == "rouge" else generation_metrics.bleu_chrf
            metrics.update(score(hyps, [[r] for r in refs]))
        return EvalResult(metrics, [{"generated_text": h} for h in hyps])
