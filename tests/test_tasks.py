"""Task-level guarantees that do not need a training run."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tunesmith.tasks.fast_bert import speed_up_bert_classifier


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_fast_bert_forward_is_the_same_function(impl: str) -> None:
    """Unpadded layers and a first-token last layer give the same logits and gradients."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     attn_implementation=impl)
    full = BertForSequenceClassification(cfg)
    pruned = copy.deepcopy(full)
    assert speed_up_bert_classifier(pruned)
    x = torch.randint(5, 50, (4, 9))
    types = torch.zeros_like(x)
    types[:, 5:] = 1
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    a = full(input_ids=x, attention_mask=mask, token_type_ids=types).logits
    b = pruned(input_ids=x, attention_mask=mask, token_type_ids=types).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(full.named_parameters(), pruned.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-5, msg=name)
    with torch.no_grad():  # no padding at all: the model gets no mask
        torch.testing.assert_close(full(input_ids=x).logits, pruned(input_ids=x).logits, rtol=0, atol=1e-6)
    # the saved weights are untouched: the same state dict keys and values
    assert full.state_dict().keys() == pruned.state_dict().keys()


def test_fast_bert_forward_leaves_other_models_alone() -> None:
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64)
    from transformers import BertForTokenClassification

    assert not speed_up_bert_classifier(BertForTokenClassification(cfg))
