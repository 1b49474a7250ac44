"""Padding-free batches for token-level heads (NER tags, QA start/end), through transformers' own attention interface.

A padded batch of random-length sentences is mostly padding (1.8x the real tokens on WNUT-17), and
every linear layer of the stock model runs on it. Here a batch is flattened to one row of real
tokens, with each sentence's position ids and its boundaries (`cu_seq_lens_q/k`, the kwargs that
transformers' flash-attention path and `DataCollatorWithFlattening` use), and the model runs with an
attention implementation registered under `ATTENTION`: per group of similar-length sentences,
each padded only to its own longest member (the grouping of `fast_bert`), so no token attends
across a boundary. The model's own modules, hooks and weights run unchanged; only the attention
function is chosen, as `attn_implementation="sdpa"` would choose SDPA. Calls without boundaries
(padded batches, other callers) get transformers' SDPA, so the model stays an ordinary model.

The path is explicit: `model.padding_free` (auto | on | off), and the report records what ran.
It is claimed only for the (model type, head) pairs in `CLAIMED`, each with a parity test against the stock
padded forward (tests/test_padding_free.py), and only where the model routes attention through
transformers' interface (`_supports_attention_backend`; transformers 5 for BERT).
"""
from __future__ import annotations

import contextvars
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .fast_bert import _grouped_attention, _layout, _Layout, right_padded

ATTENTION = "tunesmith_padding_free"
"""The name the attention function is registered under (never saved: config.json keeps no
attention implementation, so an exported model loads with transformers' default)."""

CLAIMED: dict[tuple[str, str], tuple[int, int]] = {
    ("bert", "token-classification"): (5, 0),
    ("bert", "question-answering"): (5, 0),
    ("llama", "token-classification"): (5, 0),
    ("llama", "question-answering"): (5, 0),
    ("llama", "causal-lm"): (4, 56),
    ("gpt2", "causal-lm"): (5, 0),
}
"""(model_type, head) pairs with a parity test against the stock padded forward
(tests/test_padding_free.py: test_every_claimed_pair_equals_the_padded_forward, one case per pair) ->
the first transformers version where it holds (the floor CI runs it on 4.56; GPT-2 there does not pass
the boundaries on to its attention, BERT does not route attention through the interface; the Llama
token and QA heads are claimed from the version they were tested on). Position ids restart at 0 per
example in these. BERT's attention is bidirectional within an example; the causal models'
(`module.is_causal`) causal."""

HEADS = {"ForTokenClassification": "token-classification", "ForQuestionAnswering": "question-answering",
         "ForCausalLM": "causal-lm", "LMHeadModel": "causal-lm"}
"""Class-name endings -> head, for callers that do not say which head they run (tasks do)."""


def head_of(model: torch.nn.Module) -> str | None:
    """The head of a transformers model from its class name (LlamaForTokenClassification ->
    token-classification), or None for one that is not listed in HEADS."""
    name = type(model).__name__
    return next((head for end, head in HEADS.items() if name.endswith(end)), None)


_last: tuple[torch.Tensor, _Layout] | None = None  # the layout of the boundaries seen last (shared by all layers)


def _boundaries_layout(cu: torch.Tensor) -> _Layout:
    """One layout per forward: every layer receives the same `cu_seq_lens_q` tensor."""
    global _last
    last = _last  # one read: another thread (a server) may replace it meanwhile
    if last is None or last[0] is not cu:
        last = _last = (cu, _layout((cu[1:] - cu[:-1]).long()))
    return last[1]


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              cu_seq_lens_q: torch.Tensor | None = None, cu_seq_lens_k: torch.Tensor | None = None,
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (batch, heads, tokens, head size) in, (batch,
    tokens, heads, head size) out. One flattened row with boundaries: attention within each example."""
    if cu_seq_lens_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    causal = bool(getattr(module, "is_causal", False))
    # a causal model's own mask for the flattened row is its plain causal mask: the boundaries replace it
    if query.shape[0] != 1 or (attention_mask is not None and not causal) or (
            cu_seq_lens_k is not None and not torch.equal(cu_seq_lens_k, cu_seq_lens_q)):
        raise ValueError("padding-free attention takes one flattened row of self-attention and no padding mask")
    _, heads, n, d = query.shape
    kv_heads = key.shape[1]
    lay = _boundaries_layout(cu_seq_lens_q)
    rows = [t[0].transpose(0, 1).reshape(n, t.shape[1] * d) for t in (query, key, value)]
    scale = d ** -0.5 if scaling is None else scaling
    out = _grouped_attention(*rows, lay, heads, d, dropout, scale, first_only=False, kv_heads=kv_heads,
                             causal=causal)
    return out.view(1, n, heads, d), None


_flat = contextvars.ContextVar("tunesmith_flat_call", default=False)  # inside flat_call's model call


def mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """The mask function registered with the attention: none for a flattened call (its boundaries go to
    `attention`, which would discard the dense n x n block-diagonal mask transformers builds from the
    restarting position ids), SDPA's mask for any other call."""
    from transformers.masking_utils import sdpa_mask

    return None if _flat.get() else sdpa_mask(*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, mask)  # padded calls get SDPA's mask


def unsupported(model: torch.nn.Module, head: str | None = None) -> str | None:
    """Why the path cannot run on this model with this head (`head`: what the task runs; None: read from
    the class name), or None when it can."""
    import transformers

    cfg = model.config
    head = head or head_of(model) or type(model).__name__
    if (cfg.model_type, head) not in CLAIMED:
        covered = ", ".join(f"{t} {h}" for t, h in CLAIMED)
        return f"model type '{cfg.model_type}' with a {head} head has no parity test (padding-free covers {covered})"
    since = CLAIMED[cfg.model_type, head]
    version = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
    if not getattr(model, "_supports_attention_backend", False) or version < since:
        return f"transformers {transformers.__version__} does not route {cfg.model_type} attention and its " \
               f"boundaries through its attention interface (transformers {'.'.join(map(str, since))} does)"
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False) \
            or getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        return "decoder, cross-attention or relative-position configurations are not covered"
    return None


def enable(model: torch.nn.Module, mode: str, head: str | None = None) -> str:
    """Switch the model to padding-free attention per `model.padding_free`; returns what runs, for the
    report. `head`: the head the task runs ("token-classification", "question-answering", "causal-lm"),
    which with the model type must be a CLAIMED pair; None reads it from the model's class name. `on` on
    a pair it does not cover is a ConfigError naming why."""
    if mode == "off":
        return "off (model.padding_free: off)"
    why = unsupported(model, head)
    if why is not None:
        if mode == "on":
            raise ConfigError(f"model.padding_free: on, but {why}; use auto or off")
        return f"off ({why})"
    _register()
    model.set_attn_implementation(ATTENTION)
    return f"on ({model.config.model_type}: one flattened row per batch, attention within each example)"


def is_enabled(model: torch.nn.Module) -> bool:
    """Whether `enable` switched this model on (also through a DDP or torch.compile wrapper)."""
    from accelerate.utils import extract_model_from_parallel

    if not isinstance(model, torch.nn.Module):  # an ONNX Runtime session (serving/onnx_backend) has no attention
        return False
    config = getattr(extract_model_from_parallel(model), "config", None)
    return getattr(config, "_attn_implementation", None) == ATTENTION


def flat_call(model: torch.nn.Module, inputs: dict[str, torch.Tensor],
              extra: Callable[[torch.Tensor], dict[str, Any]] | None = None) -> tuple[Any, torch.Tensor] | None:
    """The model's output on a right-padded batch run as one flattened row of its real tokens (each
    example with its own position ids and boundaries), and the flat indices of those tokens in the padded
    (batch * length) order; None when the batch is not right-padded. `extra(indices)`: more keyword
    arguments for the call, made from those indices (text generation's logits_to_keep)."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    b, length = ids.shape
    layout = right_padded(ids, mask)
    if layout is None:
        return None
    positions, lengths, keep = layout
    flat = {k: v.reshape(-1).index_select(0, keep)[None] for k, v in inputs.items() if k != "attention_mask"}
    cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    longest = int(lengths.max())
    token = _flat.set(True)
    try:
        out = model(**flat, position_ids=positions.expand(b, length).reshape(-1).index_select(0, keep)[None],
                    cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest,
                    **(extra(keep) if extra else {}))
    finally:
        _flat.reset(token)
    return out, keep


def token_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor], names: tuple[str, ...] = ("logits",),
                  fill: float = 0.0) -> tuple[torch.Tensor, ...]:
    """The token-level outputs `names` of a right-padded batch, computed on its real tokens only and
    returned in the padded shape (batch, length, ...), with `fill` at padding. Token classification
    fills 0 (its padding labels are ignored); QA fills -inf, so a window's softmax spans its own tokens
    only, as if it ran alone (the padded forward also spreads probability over padding positions)."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    b, length = ids.shape
    flat = flat_call(model, inputs)
    if flat is None:
        out = model(**inputs)  # not right-padded: the padded call (SDPA)
        return tuple(out[n].masked_fill(~mask.bool().view(b, length, *[1] * (out[n].dim() - 2)), fill)
                     for n in names)
    out, keep = flat
    padded = []
    for n in names:
        o = out[n][0]  # (real tokens, ...)
        padded.append(o.new_full((b * length, *o.shape[1:]), fill).index_copy(0, keep, o).view(b, length, *o.shape[1:]))
    return tuple(padded)
