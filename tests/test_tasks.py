"""Task-level guarantees that do not need a training run."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tunesmith.fast_bert import speed_up_bert_classifier


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("group_cost", [0, 1500])  # 0: every example alone; 1500: one group here
def test_fast_bert_forward_is_the_same_function(impl: str, group_cost: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpadded layers, grouped attention and a first-token last layer: same logits and gradients."""
    from tunesmith import fast_bert

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
    # a deep copy runs on its own weights, not the original's
    twin = copy.deepcopy(pruned)
    with torch.no_grad():
        twin.classifier.bias.add_(1.0)
        torch.testing.assert_close(twin(input_ids=x, attention_mask=mask).logits,
                                   pruned(input_ids=x, attention_mask=mask).logits + 1.0)


def _tiny_bert(dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))


def test_fast_bert_training_steps_match_stock() -> None:
    """Over steps with gradients reset (as the loop does), zeroed in place, and accumulated, with a
    stock-forward fallback (left padding) inside a window, and after the input embeddings are
    replaced, the reused word-embedding gradient buffer gives the stock model's gradients."""
    full = _tiny_bert()
    fast = copy.deepcopy(full)
    assert speed_up_bert_classifier(fast)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (full, fast)]
    g = torch.Generator().manual_seed(1)
    plan = [(1, True, False), (2, True, True), (1, False, False), (1, True, False), (1, True, False)]
    for step, (backwards, reset, left_padded_last) in enumerate(plan):
        for k in range(backwards):
            x = torch.randint(5, 50, (6, 7), generator=g)  # new tokens every batch
            mask = (torch.arange(7)[None, :] < torch.randint(1, 8, (6, 1), generator=g)).long()
            if left_padded_last and k == backwards - 1:
                mask = mask.flip(1)  # the fast path hands this batch to the stock forward
            for m in (full, fast):
                m(input_ids=x, attention_mask=mask).logits.square().sum().backward()
        for (name, p), q in zip(full.named_parameters(), fast.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-5, msg=f"step {step}: {name}")
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=reset)
    for p, q in zip(full.parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-5)
    # new input embeddings: the fast path reads the model's current module
    new = torch.nn.Embedding(50, 32, padding_idx=0)
    full.set_input_embeddings(new)
    fast.set_input_embeddings(copy.deepcopy(new))
    x = torch.randint(5, 50, (3, 5))
    torch.testing.assert_close(fast(input_ids=x).logits, full(input_ids=x).logits, rtol=0, atol=1e-6)


def test_fast_bert_dropout_keeps_rate_and_expectation() -> None:
    from tunesmith.fast_bert import _dropout

    torch.manual_seed(0)
    x = torch.ones(1_000_000, requires_grad=True)
    y = _dropout(x, 0.1, training=True)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.1) < 5 * (0.1 * 0.9 / 1e6) ** 0.5  # within 5 standard errors
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.9)))
    y.sum().backward()  # the gradient goes through the same mask and scale
    torch.testing.assert_close(x.grad, y.detach())
    assert _dropout(x, 0.1, training=False) is x
    half = _dropout(torch.ones(1_000_000, dtype=torch.bfloat16), 0.1, training=True)  # under bf16 autocast
    assert half.dtype == torch.bfloat16
    assert abs(float((half == 0).float().mean()) - 0.1) < 5 * (0.1 * 0.9 / 1e6) ** 0.5
    fast = _tiny_bert(dropout=0.1)
    speed_up_bert_classifier(fast)
    ids = torch.randint(5, 50, (4, 6))
    fast.train()
    assert not torch.equal(fast(input_ids=ids).logits, fast(input_ids=ids).logits)  # dropout is on
    fast.eval()
    assert torch.equal(fast(input_ids=ids).logits, fast(input_ids=ids).logits)


def test_attention_groups_follow_lengths() -> None:
    from tunesmith.fast_bert import _groups

    assert _groups([15] * 32) == [32]  # even lengths: one call
    assert _groups([5] * 16 + [40] * 16) == [16, 16]  # two length clusters: two calls
    assert sum(_groups(list(range(1, 60, 2)))) == 30


def test_fast_bert_forward_leaves_other_models_alone() -> None:
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64)
    from transformers import BertForTokenClassification

    assert not speed_up_bert_classifier(BertForTokenClassification(cfg))


# ---------------------------------------------------------------- metrics and the printed summary

def test_macro_f1_averages_over_the_labels_present_in_the_gold_labels() -> None:
    """5 labels, gold holds a and b only: macro over those two (sklearn's labels=[0, 1]), by hand:
    a: tp 2 fp 0 fn 1 -> F1 4/5; b: tp 1 fp 1 fn 1 -> F1 1/2; mean 13/20 (over all 5 labels: 13/50).
    c, predicted once, is not averaged."""
    import numpy as np
    from sklearn.metrics import f1_score

    from tunesmith.metrics.labels import classification_metrics, multilabel_metrics

    y, pred = np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 2])
    out = classification_metrics(pred, y, ["a", "b", "c", "d", "e"])
    assert out["macro_f1"] == pytest.approx(13 / 20, abs=1e-12)
    assert out["macro_f1"] == f1_score(y, pred, average="macro", labels=[0, 1])
    assert out["macro_average"] == {"metric": "macro_f1", "labels": 2, "of": 5,
                                    "over": "labels present in the gold labels"}
    assert out["accuracy"] == 0.6 and [out["per_class"][n]["support"] for n in "abcde"] == [3, 2, 0, 0, 0]
    # multi-label: columns 0 and 1 have gold positives, column 2 none -> mean of F1 1 and F1 2/3
    ml = multilabel_metrics(np.array([[1, 0, 0], [1, 1, 1]]), np.array([[1, 0, 0], [0, 1, 0]]),
                            ["x", "y", "z"], 0.5)
    assert ml["macro_f1"] == pytest.approx(5 / 6, abs=1e-12)
    assert ml["macro_average"] == {"metric": "macro_f1", "labels": 2, "of": 3,
                                    "over": "labels present in the gold labels"}


def _metrics_of(n_labels: int) -> dict:
    pc = {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    return {"accuracy": 0.5, "macro_f1": 0.25, "macro_average": {"metric": "macro_f1", "labels": 5, "of": n_labels,
                                                                "over": "labels present in the gold labels"},
            "per_class": {f"label{k}": pc for k in range(n_labels)}}


def test_per_class_lines_say_how_many_more_labels_there_are_and_where() -> None:
    from tunesmith.evaluation.report import summary_lines

    lines = summary_lines({"test": _metrics_of(77)})
    assert lines[-1] == "    (and 57 more: report.json)"
    assert lines[0] == "test: accuracy=0.5000, macro_f1=0.2500"
    assert lines[1] == "    macro_f1 over 5 of 77 labels (labels present in the gold labels)"
    assert len(lines) == 2 + 20 + 1
    assert lines[2] == " " * 18 + "label0: precision=1.000 recall=0.500 f1=0.667 support=2"


def test_metric_lines_of_a_file_say_where_the_other_labels_are() -> None:
    from tunesmith.evaluation.report import metric_lines

    assert metric_lines("small.csv", _metrics_of(21), "m.json")[0] == "small.csv: accuracy=0.5000, macro_f1=0.2500"
    assert metric_lines("small.csv", _metrics_of(21), "m.json")[-1] == "    (and 1 more: m.json)"
    assert len(metric_lines("small.csv", _metrics_of(20))) == 2 + 20  # all shown: no note


def test_collapse_warning_names_the_split_and_the_counts() -> None:
    from tunesmith.evaluation.report import collapse_warning

    advice = "the model's generation has collapsed; train longer, or check train.lr and the training targets"
    same = [{"summary_text": "the the the"}] * 3 + [{"summary_text": "other"}]
    assert collapse_warning("test", same) == \
        f'test: 3 of 4 generated outputs are the same text ("the the the"): {advice}'
    empty = [{"generated_text": ""}] * 3 + [{"generated_text": "x"}, {"generated_text": "y"}]
    assert collapse_warning("validation", empty) == f"validation: 3 of 5 generated outputs are empty: {advice}"
    assert collapse_warning("test", [{"summary_text": t} for t in ("a", "b", "a", "c")]) is None  # 2 of 4: half
    assert collapse_warning("test", [{"summary_text": t} for t in "abcd"]) is None
    assert collapse_warning("test", [{"perplexity": 3.0}] * 4) is None  # no text outputs
    long = [{"summary_text": "word " * 30}] * 2
    assert '("' + ("word " * 30)[:57] + '...")' in collapse_warning("test", long)
