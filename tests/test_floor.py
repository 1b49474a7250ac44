"""The declared transformers floor: code paths that differ between it and the newest release.

CI also runs the transformers-facing tests on the floor itself (.ci/floor); these tests keep the
floor's code paths covered on whatever transformers is installed.
"""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tunesmith.fast_bert import speed_up_bert_classifier


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_fast_bert_without_a_scaling_attribute_uses_the_stock_scale(impl: str) -> None:
    """transformers 4.56-4.57 BERT self-attention has no `scaling` (it scales by 1/sqrt(head size)):
    the fast forward on such modules gives the stock logits and gradients."""
    torch.manual_seed(0)
    stock = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation=impl))
    fast = copy.deepcopy(stock)
    assert speed_up_bert_classifier(fast)
    for layer in fast.bert.encoder.layer:
        if hasattr(layer.attention.self, "scaling"):
            del layer.attention.self.scaling  # as the floor's modules are
    x = torch.randint(5, 50, (5, 7))
    mask = (torch.arange(7)[None, :] < torch.tensor([7, 2, 5, 1, 4])[:, None]).long()
    a = stock(input_ids=x, attention_mask=mask).logits
    b = fast(input_ids=x, attention_mask=mask).logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(stock.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-5, msg=name)
