"""An exact, faster forward for BERT-architecture sequence classification.

The stock forward wastes work three ways: its linear layers run on padding tokens (with random
batches most of a batch is padding), its attention spans the longest example for every example,
and its last layer computes every position although the classification head reads only position 0.
Here the linear layers run on real tokens only; attention runs on groups of examples of similar
length (chosen per batch to minimise work), each padded only to its own longest member; and the
last layer computes queries, attention output and feed-forward for position 0 alone. Batches stay
whatever the sampler drew (random batches keep their accuracy) while the work approaches that of
length-sorted batches.

A CPU cost of the stock model is also avoided, with the same arithmetic: dropout masks come from
`torch.rand` (one 32-bit draw per element) instead of `bernoulli_` (a double, two draws, per element):
the same Bernoulli(1 - p) to float resolution, at half the cost. Gradients are ordinary dense
parameter gradients, so the training loop needs to know nothing about this forward.

The fast forward calls the model's submodules' weights, not their `forward`s, so it declines (the
stock forward runs) whenever that would be visible: a forward or backward hook (or pre-hook) on any
submodule, a global module hook (a user's, Captum's), an Accelerate hook, or gradient checkpointing;
checked at every call.

Same weights, same function: outputs and gradients match the stock model to float rounding
(tests/test_tasks.py, tests/test_fast_bert.py), and saved weights are unchanged because only `forward`
is replaced.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

GROUP_COST = 1500
"""The fixed cost of one more attention call, in query-key pairs (measured on CPU, MiniLM)."""


def _groups(sorted_lengths: list[int]) -> list[int]:
    """Group sizes over length-sorted examples minimising attention pairs plus per-call cost.

    Examples of similar length share a call; a random batch with one long outlier gets it alone.
    Dynamic programming over the sorted order (a batch is tens of examples: microseconds).
    """
    n = len(sorted_lengths)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for i in range(1, n + 1):
        width = sorted_lengths[i - 1] ** 2
        for j in range(i):
            cost = best[j] + (i - j) * width + GROUP_COST
            if cost < best[i]:
                best[i], cut[i] = cost, j
    sizes, i = [], n
    while i:
        sizes.append(i - cut[i])
        i = cut[i]
    return sizes[::-1]


@dataclass
class _Layout:
    """Where every real token sits in the grouped attention buffer, computed once per forward."""

    rows: int                 # rows of the grouped buffer (real tokens plus per-group padding)
    scatter: torch.Tensor     # buffer row of every real token, in token order
    groups: list[tuple[int, int, int]]  # (first buffer row, examples, padded length) per group
    members: torch.Tensor     # example indices in group order
    unsort: torch.Tensor      # position of every example in group order
    key_masks: list[torch.Tensor | None]
    first_rows: torch.Tensor  # token row of each example's first token, in example order


def _layout(lengths: torch.Tensor) -> _Layout:
    device = lengths.device
    n_tokens = int(lengths.sum())
    starts = torch.cumsum(lengths, 0) - lengths
    members = torch.argsort(lengths, stable=True)
    gather, groups, masks = [], [], []
    row = 0
    first = 0
    for size in _groups(lengths[members].tolist()):
        idx = members[first:first + size]
        first += size
        lens = lengths[idx]
        width = int(lens.max())
        pos = torch.arange(width, device=device)
        inside = pos[None, :] < lens[:, None]  # (examples, width)
        token_rows = torch.where(inside, starts[idx, None] + pos[None, :], torch.full_like(inside, n_tokens,
                                                                                           dtype=torch.long))
        gather.append(token_rows.reshape(-1))
        groups.append((row, len(idx), width))
        masks.append(None if bool(inside.all()) else inside[:, None, None, :])
        row += len(idx) * width
    flat_gather = torch.cat(gather)
    is_real = flat_gather < n_tokens
    scatter = torch.empty(n_tokens, dtype=torch.long, device=device)
    scatter[flat_gather[is_real]] = torch.nonzero(is_real).squeeze(1)
    return _Layout(row, scatter, groups, members, torch.argsort(members), masks, starts)


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with a mask from `torch.rand` on CPU (see the module docstring); CUDA's own is fused."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    # float32 uniforms whatever x's dtype: a bf16 rand has 256 levels and would drop 0.1016, not 0.1
    out = x * torch.rand(x.shape, device=x.device).ge_(p).mul_(1.0 / (1.0 - p))
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float,
               scale: float) -> torch.Tensor:
    """SDPA, or with dropout on CPU the same math (what SDPA runs then) with the cheaper mask."""
    if dropout == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(_dropout(scores.softmax(-1), dropout, True), v)


def _grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lay: _Layout, nh: int,
                       d: int, dropout: float, scale: float, first_only: bool, kv_heads: int | None = None,
                       causal: bool = False) -> torch.Tensor:
    """Attention per group; q is (tokens, hidden), or (examples, hidden) when first_only.

    `kv_heads`: fewer key/value heads than query heads (grouped-query attention), each shared by
    nh / kv_heads query heads. `causal`: a token attends to its own example's earlier tokens only.

    Tokens move with index_copy / index_select (whose gradients are plain gathers), not with
    advanced indexing, whose accumulating backward is slow on CPU.
    """
    def grouped(t: torch.Tensor) -> torch.Tensor:
        return t.new_zeros(lay.rows, t.shape[-1]).index_copy(0, lay.scatter, t)

    kg, vg = grouped(k), grouped(v)
    qg = q.index_select(0, lay.members) if first_only else grouped(q)
    outs = []
    done = 0  # examples before this group
    kvh = kv_heads or nh
    for (row, n, width), mask in zip(lay.groups, lay.key_masks):
        heads = lambda t, h=nh: t.view(n, -1, h, d).transpose(1, 2)  # noqa: E731
        kk, vv = heads(kg[row:row + n * width], kvh), heads(vg[row:row + n * width], kvh)
        if kvh != nh:
            kk, vv = kk.repeat_interleave(nh // kvh, dim=1), vv.repeat_interleave(nh // kvh, dim=1)
        if causal:
            tri = torch.ones(width, width, dtype=torch.bool, device=kk.device).tril()
            mask = tri if mask is None else mask & tri
        qq = heads(qg[done:done + n] if first_only else qg[row:row + n * width])
        done += n
        out = _attention(qq, kk, vv, mask, dropout, scale)
        outs.append(out.transpose(1, 2).reshape(-1, nh * d))
    out = torch.cat(outs)
    # back to token order, or to example order for the first-token layer
    return out.index_select(0, lay.unsort if first_only else lay.scatter)


def _residual(block: Any, h: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
    """BertSelfOutput / BertOutput: dense, dropout, add and norm."""
    return block.LayerNorm(_dropout(block.dense(h), block.dropout.p, block.training) + resid)


def _layer(layer: Any, x: torch.Tensor, lay: _Layout, first_only: bool) -> torch.Tensor:
    attn = layer.attention.self
    # transformers < 5 has no `scaling`: its eager path divides by sqrt(head size), its SDPA path uses SDPA's default
    scale = getattr(attn, "scaling", attn.attention_head_size ** -0.5)
    resid = x.index_select(0, lay.first_rows) if first_only else x
    out = _grouped_attention(attn.query(resid), attn.key(x), attn.value(x), lay, attn.num_attention_heads,
                             attn.attention_head_size, attn.dropout.p if layer.training else 0.0,
                             scale, first_only)
    attention_output = _residual(layer.attention.output, out, resid)
    return _residual(layer.output, layer.intermediate(attention_output), attention_output)


def right_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(positions 0..length-1, real length of each row, flat indices of the real tokens) of a batch
    padded on the right, or None when its mask is anything else (left padding, holes)."""
    b, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device)
    lengths = torch.full((b,), length, device=input_ids.device) if attention_mask is None \
        else attention_mask.sum(1)
    real = positions[None, :] < lengths[:, None]
    if attention_mask is not None and not torch.equal(attention_mask.bool(), real):
        return None
    return positions, lengths, real.reshape(-1).nonzero().squeeze(1)


def _observed(model: torch.nn.Module) -> bool:
    """Whether running the submodules' weights without their `forward`s would be visible: a hook on any
    submodule (forward, backward, pre-hooks; the model's own run either way, around this forward), a
    global module hook, an Accelerate hook, or gradient checkpointing (the stock forward's recomputation)."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks \
            or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks \
            or getattr(nn_module, "_global_forward_hooks_always_called", None):
        return True
    for m in model.modules():
        if m is not model and (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                               or m._backward_pre_hooks or hasattr(m, "_hf_hook")):
            return True
        if getattr(m, "gradient_checkpointing", False) is True:  # what gradient_checkpointing_enable() sets
            return True
    return False


def _fast_forward(model: Any, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                  token_type_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
    from transformers.modeling_outputs import SequenceClassifierOutput

    def stock(**inputs: Any) -> Any:
        return type(model).forward(model, input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids, **inputs)

    if input_ids is None or any(v is not None and v is not False for v in kwargs.values()) \
            or _observed(model):
        return stock(**kwargs)
    b, length = input_ids.shape
    layout = right_padded(input_ids, attention_mask)
    if layout is None:
        return stock()  # not right-padded
    positions, lengths, keep = layout
    bert = model.bert
    emb = bert.embeddings
    ids = input_ids.reshape(-1).index_select(0, keep)
    type_ids = token_type_ids.reshape(-1).index_select(0, keep) if token_type_ids is not None \
        else torch.zeros_like(ids)
    # embeddings of real tokens only, each with its own position (BertEmbeddings' order of sums)
    x = emb.word_embeddings(ids) + emb.token_type_embeddings(type_ids)
    x = x + emb.position_embeddings(positions.expand(b, length).reshape(-1).index_select(0, keep))
    x = _dropout(emb.LayerNorm(x), emb.dropout.p, emb.training)
    lay = _layout(lengths)
    for i, layer in enumerate(bert.encoder.layer):
        x = _layer(layer, x, lay, first_only=i == len(bert.encoder.layer) - 1)
    pooled = bert.pooler.activation(bert.pooler.dense(x))  # x is already position 0 of each example
    return SequenceClassifierOutput(logits=model.classifier(_dropout(pooled, model.dropout.p, model.training)))


def speed_up_bert_classifier(model: torch.nn.Module) -> bool:
    """Install the exact fast forward on a BertForSequenceClassification; False for anything else.

    Calls it cannot serve exactly (labels, embeddings passed in, hidden states or attentions asked
    for, left padding, a hook on a submodule, gradient checkpointing) go to the stock forward. The forward
    is bound to the model, so a deep copy runs on its own weights.
    """
    from transformers import BertForSequenceClassification

    cfg = model.config
    if type(model) is not BertForSequenceClassification or cfg.is_decoder or cfg.add_cross_attention \
            or cfg._attn_implementation not in ("sdpa", "eager") or cfg.chunk_size_feed_forward \
            or getattr(cfg, "position_embedding_type", "absolute") != "absolute" or model.bert.pooler is None:
        return False
    model.forward = types.MethodType(_fast_forward, model)
    return True


def restore_stock(model: torch.nn.Module) -> None:
    """Take the fast forward off a model (`speed_up_bert_classifier` put it on the instance): an exporter that
    traces `forward` must see the stock graph, not the length-grouped one."""
    model.__dict__.pop("forward", None)
