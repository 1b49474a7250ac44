"""fast_bert declines whenever its shortcut would be visible (hooks, gradient checkpointing), and its
gradients are ordinary parameter gradients: the training loop has no special case for it."""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tunesmith import fast_bert
from tunesmith.fast_bert import speed_up_bert_classifier

LENGTHS = torch.tensor([9, 3, 5, 1, 9, 2, 7])


def _pair(dropout: float = 0.0) -> tuple[BertForSequenceClassification, BertForSequenceClassification]:
    torch.manual_seed(0)
    stock = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, num_labels=3,
        attn_implementation="sdpa"))
    fast = copy.deepcopy(stock)
    assert speed_up_bert_classifier(fast)
    return stock, fast


def _batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(9)[None, :] < LENGTHS[:, None]).long()
    return {"input_ids": torch.randint(5, 50, (len(LENGTHS), 9), generator=g) * mask, "attention_mask": mask}


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the forwards that took the fast path (each lays out its attention groups once)."""
    calls: list[int] = []
    layout = fast_bert._layout

    def counted(lengths: torch.Tensor) -> Any:
        calls.append(1)
        return layout(lengths)

    monkeypatch.setattr(fast_bert, "_layout", counted)
    return calls


def _logits_and_grads(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(**inputs).logits
    logits.square().sum().backward()
    return logits.detach(), [p.grad for p in model.parameters()]


def _assert_same(stock: torch.nn.Module, fast: torch.nn.Module, inputs: dict, atol: float) -> None:
    a, ga = _logits_and_grads(stock, inputs)
    b, gb = _logits_and_grads(fast, inputs)
    torch.testing.assert_close(b, a, rtol=0, atol=atol)
    for (name, _), x, y in zip(stock.named_parameters(), ga, gb):
        torch.testing.assert_close(y, x, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("kind", ["forward", "forward_pre", "full_backward"])
def test_a_hook_on_a_submodule_gets_the_stock_forward(kind: str, fast_calls: list[int]) -> None:
    """A user's or Captum's hook on any layer fires, and sees what the stock model computes."""
    stock, fast = _pair()
    inputs = _batch()
    seen: dict[str, list] = {"stock": [], "fast": []}
    handles = []
    for name, model in (("stock", stock), ("fast", fast)):
        def hook(*args: Any, name: str = name) -> None:
            seen[name].append(args[1] if kind == "forward_pre" else args[-1])

        handles.append(getattr(model.bert.encoder.layer[1].attention.self, f"register_{kind}_hook")(hook))
    try:
        _assert_same(stock, fast, inputs, atol=1e-6)
    finally:
        for h in handles:
            h.remove()
    assert fast_calls == []  # the fast path declined
    assert len(seen["fast"]) == len(seen["stock"]) >= 1  # and the hook fired as often as on the stock model
    for x, y in zip(seen["stock"], seen["fast"]):
        x, y = (x[0] if isinstance(x, tuple) else x), (y[0] if isinstance(y, tuple) else y)
        torch.testing.assert_close(y, x, rtol=0, atol=1e-6)
    # with the hook removed the fast path serves again
    fast(**inputs)
    assert fast_calls == [1]


def test_a_global_module_hook_gets_the_stock_forward(fast_calls: list[int]) -> None:
    stock, fast = _pair()
    inputs = _batch()
    fired: list[str] = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: fired.append(type(module).__name__))
    try:
        _assert_same(stock, fast, inputs, atol=1e-6)
    finally:
        handle.remove()
    assert fast_calls == []
    assert fired.count("BertSelfAttention") == 4  # two layers, stock and fast model


def test_gradient_checkpointing_gets_the_stock_forward(fast_calls: list[int]) -> None:
    """gradient_checkpointing_enable() on the fast model: the stock forward runs, recomputing as asked."""
    stock, fast = _pair()
    for m in (stock, fast):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.train()
    inputs = _batch()
    _assert_same(stock, fast, inputs, atol=1e-6)
    assert fast_calls == []
    fast.gradient_checkpointing_disable()
    assert fast_calls == [] and fast(**inputs) is not None and fast_calls == []  # its input hook stays
    fast.disable_input_require_grads()  # (transformers leaves the hook that enable added)
    fast(**inputs)
    assert fast_calls == [1]


def test_gradients_are_ordinary_parameter_gradients(fast_calls: list[int]) -> None:
    """The fast path's gradients are dense tensors owned by nothing but `.grad`: a fresh one every step
    after zero_grad(set_to_none), equal to the stock model's; the loop's clipping gives torch's norm and a
    step after a non-finite one starts clean, with no fast_bert case anywhere in the loop."""
    import inspect
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from tunesmith.training import loop

    assert "fast_bert" not in inspect.getsource(loop)
    stock, fast = _pair()
    accelerator = SimpleNamespace(distributed_type=DistributedType.NO, device=torch.device("cpu"),
                                  unscale_gradients=lambda: None)
    before = None
    for step in range(3):
        inputs = _batch(seed=step)
        _assert_same(stock, fast, inputs, atol=1e-5)
        grads = [p.grad for p in fast.parameters()]
        assert all(g is not None and not g.is_sparse and g.layout == torch.strided for g in grads)
        word = fast.bert.embeddings.word_embeddings.weight.grad
        assert before is None or word is not before  # not a buffer kept across steps
        before = word
        expected = torch.nn.utils.clip_grad_norm_(stock.parameters(), 0.5)
        norm = loop.clip_gradients(fast, 0.5, accelerator)
        assert norm == pytest.approx(float(expected), rel=1e-5)
        for p, q in zip(stock.parameters(), fast.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-5)
    assert len(fast_calls) == 3
    # a non-finite step: the loop skips it and drops its gradients; the next step is the stock one
    fast.zero_grad(set_to_none=True)
    nan = fast(**_batch()).logits.sum() * float("nan")
    nan.backward()
    assert not torch.isfinite(torch.tensor(loop.clip_gradients(fast, 0.5, accelerator)))
    fast.zero_grad(set_to_none=True)
    _assert_same(stock, fast, _batch(seed=7), atol=1e-5)
