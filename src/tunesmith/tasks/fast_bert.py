"""An exact, faster forward for BERT-architecture sequence classification.

Two kinds of work in the stock forward are thrown away: linear layers run on padding tokens (with
dynamic padding a third to two thirds of a batch), and the last layer computes every position
although the classification head reads only position 0. Here the linear layers run on real tokens
only (padding is re-added just for the attention product), and the last layer computes queries,
attention output and feed-forward for position 0 alone. Same weights, same function: outputs and
gradients match the stock model to float rounding (tests/test_tasks.py), and saved weights are
unchanged because only `forward` methods are replaced.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _layer(layer: Any, x: torch.Tensor, keep: torch.Tensor | None, b: int, length: int,
           key_mask: torch.Tensor | None, first_only: bool) -> torch.Tensor:
    attn = layer.attention.self
    nh, d = attn.num_attention_heads, attn.attention_head_size

    def padded(t: torch.Tensor) -> torch.Tensor:  # (tokens, hidden) -> (b, heads, length, d)
        full = t if keep is None else t.new_zeros(b * length, t.shape[-1]).index_copy(0, keep, t)
        return full.view(b, length, nh, d).transpose(1, 2)

    k, v = padded(attn.key(x)), padded(attn.value(x))
    dropout = attn.dropout.p if layer.training else 0.0
    if first_only:
        starts = torch.arange(b, device=x.device) * length
        resid = x.index_select(0, starts if keep is None else torch.searchsorted(keep, starts))
        q = attn.query(resid).view(b, 1, nh, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout, scale=attn.scaling)
        out = out.transpose(1, 2).reshape(b, nh * d)
    else:
        resid = x
        q = padded(attn.query(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout, scale=attn.scaling)
        out = out.transpose(1, 2).reshape(b * length, nh * d)
        if keep is not None:
            out = out.index_select(0, keep)
    attention_output = layer.attention.output(out, resid)
    return layer.output(layer.intermediate(attention_output), attention_output)


def speed_up_bert_classifier(model: torch.nn.Module) -> bool:
    """Install the exact fast forward on a BertForSequenceClassification; False for anything else."""
    from transformers import BertForSequenceClassification
    from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

    cfg = model.config
    if type(model) is not BertForSequenceClassification or cfg.is_decoder or cfg.add_cross_attention \
            or cfg._attn_implementation not in ("sdpa", "eager") or cfg.chunk_size_feed_forward:
        return False
    encoder = model.bert.encoder

    def forward(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *args: Any, **kwargs: Any) -> BaseModelOutputWithPastAndCrossAttentions:
        b, length, h = hidden_states.shape
        x = hidden_states.reshape(b * length, h)
        keep = key_mask = None
        if attention_mask is not None:
            # the prepared 4D mask; its first query row (the always-real first token) is the key padding
            row = attention_mask[:, 0, 0, :]
            real = row if row.dtype == torch.bool else row == 0
            key_mask = real[:, None, None, :]  # every query, padded ones too, sees the real keys: no NaN rows
            keep = real.reshape(-1).nonzero().squeeze(1)
            x = x.index_select(0, keep)
        for i, layer in enumerate(encoder.layer):
            x = _layer(layer, x, keep, b, length, key_mask, first_only=i == len(encoder.layer) - 1)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=x.view(b, 1, h))

    encoder.forward = forward
    return True
