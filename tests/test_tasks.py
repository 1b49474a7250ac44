"""Task-level guarantees that do not need a training run."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tunesmith.tasks.fast_bert import speed_up_bert_classifier


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("group_cost", [0, 1500])  # 0: every example alone; 1500: one group here
def test_fast_bert_forward_is_the_same_function(impl: str, group_cost: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpadded layers, grouped attention and a first-token last layer: same logits and gradients."""
    from tunesmith.tasks import fast_bert

    monkeypatch.setattr(fast_bert, "GROUP_COST", group_cost)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     attn_implementation=impl)
    full = BertForSequenceClassification(cfg)
    pruned = copy.deepcopy(full)
    assert speed_up_bert_classifier(pruned)
    # 11 examples of mixed lengths
    x = torch.randint(5, 50, (11, 9))
    lengths = torch.tensor([9, 3, 5, 1, 9, 2, 7, 4, 6, 8, 3])
    mask = (torch.arange(9)[None, :] < lengths[:, None]).long()
    types = torch.zeros_like(x)
    types[:, 5:] = 1
    a = full(input_ids=x, attention_mask=mask, token_type_ids=types).logits
    b = pruned(input_ids=x, attention_mask=mask, token_type_ids=types).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(full.named_parameters(), pruned.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-5, msg=name)
    with torch.no_grad():  # left padding falls back to the stock forward
        left = mask.flip(1)
        torch.testing.assert_close(full(input_ids=x, attention_mask=left).logits,
                                   pruned(input_ids=x, attention_mask=left).logits, rtol=0, atol=1e-6)
    with torch.no_grad():  # no padding at all: the model gets no mask
        torch.testing.assert_close(full(input_ids=x).logits, pruned(input_ids=x).logits, rtol=0, atol=1e-6)
    # the saved weights are untouched: the same state dict keys and values
    assert full.state_dict().keys() == pruned.state_dict().keys()


def test_attention_groups_follow_lengths() -> None:
    from tunesmith.tasks.fast_bert import _groups

    assert _groups([15] * 32) == [32]  # even lengths: one call
    assert _groups([5] * 16 + [40] * 16) == [16, 16]  # two length clusters: two calls
    assert sum(_groups(list(range(1, 60, 2)))) == 30


def test_fast_bert_forward_leaves_other_models_alone() -> None:
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64)
    from transformers import BertForTokenClassification

    assert not speed_up_bert_classifier(BertForTokenClassification(cfg))
