"""Padding-free token batches (tunesmith.padding_free) against the stock padded forward.

The path is claimed for BERT only where transformers routes BERT's attention through its interface;
on older transformers (the declared floor among them) it must decline, which CI checks there.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForTokenClassification, BertPreTrainedModel

from tunesmith.errors import ConfigError
from tunesmith.padding_free import (ATTENTION, CLAIMED, enable, flat_call, head_of, is_enabled, token_outputs,
                                    unsupported)

ROUTED = bool(getattr(BertPreTrainedModel, "_supports_attention_backend", False))
needs_routing = pytest.mark.skipif(not ROUTED, reason="this transformers does not route BERT attention "
                                                      "through its interface (test_declines_where_... covers it)")
LENGTHS = [9, 2, 5, 1, 9, 4, 7]  # two full rows, a one-token row; grouped attention takes several groups


def _tiny_bert(seed: int = 0, dropout: float = 0.0) -> BertForTokenClassification:
    torch.manual_seed(seed)
    return BertForTokenClassification(BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, num_labels=5,
        attn_implementation="sdpa"))


def _batch(lengths: list[int], seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, 60, (len(lengths), width), generator=g) * mask
    types = (torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None] // 2).long() * mask
    labels = torch.where(mask.bool(), torch.randint(0, 5, ids.shape, generator=g), -100)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, labels


# float rounding of the two forwards, per device: CUDA's SDPA kernels (memory-efficient attention for
# the masked padded call) sum in other orders than the CPU's
LOGIT_ATOL = {"cpu": 2e-6, "cuda": 1e-5}
GRAD_ATOL = {"cpu": 2e-5, "cuda": 1e-4}
WEIGHT_ATOL = {"cpu": 1e-5, "cuda": 1e-4}


def _on(device: str, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[dict, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}, labels.to(device)


@needs_routing
def test_logits_and_gradients_equal_the_padded_forward(device: str) -> None:
    """Same function: real-token logits, the summed loss and every gradient match the stock padded
    SDPA forward to float rounding (dropout off so both draw nothing)."""
    stock = _tiny_bert().to(device)
    fast = copy.deepcopy(stock)
    assert enable(fast, "auto").startswith("on (bert")
    assert is_enabled(fast) and not is_enabled(stock)
    inputs, labels = _on(device, *_batch(LENGTHS))
    real = inputs["attention_mask"].bool()
    a = stock(**inputs).logits
    b = token_outputs(fast, inputs)[0]
    assert b.shape == a.shape and b.device.type == device
    torch.testing.assert_close(b[real], a[real], rtol=0, atol=LOGIT_ATOL[device])
    assert torch.count_nonzero(b[~real]) == 0  # padding positions hold zeros, not stale values
    for m, logits in ((stock, a), (fast, b)):
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").backward()
    for (name, p), q in zip(stock.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=GRAD_ATOL[device], msg=name)


@needs_routing
def test_qa_start_and_end_logits_equal_the_padded_forward() -> None:
    """QA heads: both outputs match at real tokens and are -inf at padding, so the loss per window
    is the loss of the window alone; gradients of that loss match the padded model's."""
    from transformers import BertForQuestionAnswering

    torch.manual_seed(0)
    stock = BertForQuestionAnswering(BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="sdpa"))
    fast = copy.deepcopy(stock)
    enable(fast, "on")
    inputs, _ = _batch(LENGTHS)
    real = inputs["attention_mask"].bool()
    names = ("start_logits", "end_logits")
    out = stock(**inputs)
    a = [out[n].masked_fill(~real, float("-inf")) for n in names]
    b = token_outputs(fast, inputs, names, fill=float("-inf"))
    targets = torch.tensor([n - 1 for n in LENGTHS])
    for x, y in zip(a, b):
        torch.testing.assert_close(y[real], x[real], rtol=0, atol=2e-6)
        assert torch.isneginf(y[~real]).all()
    for logits in (a, b):
        sum(torch.nn.functional.cross_entropy(t, targets, reduction="sum") for t in logits).backward()
    for (name, p), q in zip(stock.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=2e-5, msg=name)


@needs_routing
def test_training_steps_match_the_padded_model(device: str) -> None:
    """Five AdamW steps on batches of varying shapes end on the same weights."""
    stock = _tiny_bert(seed=3).to(device)
    fast = copy.deepcopy(stock)
    enable(fast, "on")
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (stock, fast)]
    for step in range(5):
        inputs, labels = _on(device, *_batch(LENGTHS[step:] + LENGTHS[:step], seed=step))
        for m, opt, logits in ((stock, opts[0], None), (fast, opts[1], None)):
            logits = token_outputs(m, inputs)[0] if m is fast else m(**inputs).logits
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
            opt.step()
            opt.zero_grad()
    for (name, p), q in zip(stock.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=WEIGHT_ATOL[device], msg=name)


@needs_routing
def test_calls_without_boundaries_are_ordinary_sdpa_calls() -> None:
    """A padded batch (another caller, a left-padded batch) on the switched model gives the stock logits."""
    stock = _tiny_bert()
    fast = copy.deepcopy(stock)
    enable(fast, "on")
    inputs, _ = _batch(LENGTHS)
    torch.testing.assert_close(fast(**inputs).logits, stock(**inputs).logits, rtol=0, atol=0)
    left = {k: v.flip(1) for k, v in inputs.items()}
    real = left["attention_mask"].bool()
    torch.testing.assert_close(token_outputs(fast, left)[0][real], stock(**left).logits[real], rtol=0, atol=0)


@needs_routing
def test_dropout_still_runs_in_training_mode() -> None:
    model = _tiny_bert(dropout=0.3)
    enable(model, "on")
    inputs, _ = _batch(LENGTHS)
    model.train()
    assert not torch.equal(token_outputs(model, inputs)[0], token_outputs(model, inputs)[0])
    model.eval()
    assert torch.equal(token_outputs(model, inputs)[0], token_outputs(model, inputs)[0])


@needs_routing
def test_an_exported_model_loads_with_the_default_attention(tmp_path: Path) -> None:
    """The registered name is never written to config.json: plain transformers loads the export."""
    model = _tiny_bert()
    enable(model, "on")
    model.save_pretrained(tmp_path)
    assert ATTENTION not in (tmp_path / "config.json").read_text()
    assert "attn_implementation" not in json.loads((tmp_path / "config.json").read_text())
    assert BertForTokenClassification.from_pretrained(tmp_path).config._attn_implementation == "sdpa"


def test_declines_where_it_has_no_parity_test() -> None:
    """auto falls back to padded batches and says why; on is a ConfigError; off never switches."""
    from transformers import DistilBertConfig, DistilBertForTokenClassification

    other = DistilBertForTokenClassification(DistilBertConfig(
        vocab_size=60, dim=32, n_layers=1, n_heads=2, hidden_dim=48, num_labels=3))
    assert "model type 'distilbert' with a token-classification head has no parity test" in unsupported(other)
    assert enable(other, "auto") == f"off ({unsupported(other)})"
    with pytest.raises(ConfigError, match="padding_free: on, but model type 'distilbert'"):
        enable(other, "on")
    bert = _tiny_bert()
    assert enable(bert, "off") == "off (model.padding_free: off)" and not is_enabled(bert)
    assert not is_enabled(other)


def test_covers_bert_exactly_when_transformers_routes_its_attention() -> None:
    """On transformers that routes BERT attention through its interface (5.x) the path is available;
    below (the 4.56 floor) auto declines with the reason and on is an error."""
    bert = _tiny_bert()
    if ROUTED:
        assert unsupported(bert) is None
    else:
        assert "does not route bert attention" in unsupported(bert)
        assert enable(bert, "auto").startswith("off (transformers ")
        with pytest.raises(ConfigError, match="does not route bert attention"):
            enable(bert, "on")
        assert not is_enabled(bert)


@needs_routing
@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_a_run_records_the_path_and_trains_as_padded_batches_do(task: str, tiny_model_dir: str,
                                                                tmp_path: Path) -> None:
    """End to end on the task's contract fixture (windows included), dropout off: padding_free auto and
    off give the same per-step losses and test metrics; the report says which ran."""
    import tunesmith
    import yaml
    from conftest import train_losses

    folder = Path(__file__).parent / "contract" / task
    fixture = yaml.safe_load((folder / "config.yaml").read_text())
    runs = {}
    for mode in ("auto", "off"):
        runs[mode] = tunesmith.train({
            "task": fixture["task"],
            "model": {**fixture["model"], "name": tiny_model_dir, "dropout": 0.0, "padding_free": mode},
            "data": {s: str(folder / f"{s}.jsonl") for s in ("train", "validation", "test")}
            | {"cache_dir": str(tmp_path / "cache")},
            "train": {"max_steps": 12, "batch_size": 16, "lr": 3e-3, "seed": 0, "eval_every": 6, "precision": "fp32"},
            "output_dir": str(tmp_path / mode)})
    assert runs["auto"].report["train"]["speed_paths"]["padding_free"].startswith("on (bert")
    assert runs["off"].report["train"]["speed_paths"] == {"padding_free": "off (model.padding_free: off)"}
    on, off = (train_losses(runs[m].dir) for m in ("auto", "off"))
    assert len(on) == 12 and on[-1] < on[0]
    assert on == pytest.approx(off, rel=1e-5, abs=0)
    for name, value in runs["off"].report["test"].items():
        if isinstance(value, float):  # loss, token accuracy, entity scores (per-type tables are dicts)
            assert runs["auto"].report["test"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def _claimed_model(model_type: str, head: str) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """A tiny random model of every CLAIMED pair (dropout off), and the outputs its head gives. A pair
    added to CLAIMED without a model here fails the parity test below."""
    from transformers import (BertForQuestionAnswering, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                              LlamaForQuestionAnswering, LlamaForTokenClassification)

    torch.manual_seed(0)
    bert = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
    llama = dict(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, num_labels=5, initializer_range=0.2,
                 classifier_dropout=0.0, attn_implementation="sdpa")
    qa = ("start_logits", "end_logits")
    return {
        ("bert", "token-classification"): lambda: (BertForTokenClassification(BertConfig(**bert, num_labels=5)),
                                                   ("logits",)),
        ("bert", "question-answering"): lambda: (BertForQuestionAnswering(BertConfig(**bert)), qa),
        ("llama", "token-classification"): lambda: (LlamaForTokenClassification(LlamaConfig(**llama)), ("logits",)),
        ("llama", "question-answering"): lambda: (LlamaForQuestionAnswering(LlamaConfig(**llama)), qa),
        ("llama", "causal-lm"): lambda: (LlamaForCausalLM(LlamaConfig(**llama)), ("logits",)),
        ("gpt2", "causal-lm"): lambda: (GPT2LMHeadModel(GPT2Config(
            vocab_size=60, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, initializer_range=0.2, attn_implementation="sdpa")), ("logits",)),
    }[model_type, head]()


@pytest.mark.parametrize("pair", sorted(CLAIMED), ids="/".join)
def test_every_claimed_pair_equals_the_padded_forward(pair: tuple[str, str]) -> None:
    """The parity test of each CLAIMED (model type, head): the padding-free forward's outputs at every real
    token, its loss and its gradients equal the stock padded SDPA forward's (to 1e-5); where this
    transformers is below the pair's version, auto declines and says why."""
    model_type, head = pair
    stock, names = _claimed_model(model_type, head)
    assert head_of(stock) == head
    fast = copy.deepcopy(stock)
    if unsupported(fast, head) is not None:
        assert "does not route" in unsupported(fast, head)
        assert enable(fast, "auto", head).startswith("off (transformers ") and not is_enabled(fast)
        return
    assert enable(fast, "auto", head).startswith(f"on ({model_type}")
    inputs, labels = _batch(LENGTHS)
    if model_type != "bert":
        del inputs["token_type_ids"]
    real = inputs["attention_mask"].bool()
    out = stock(**inputs)
    padded = [out[n][real] for n in names]
    if head == "causal-lm":  # the packed path's own call: one row of real tokens, the logits of each
        flat, keep = flat_call(fast, inputs)
        torch.testing.assert_close(keep, real.reshape(-1).nonzero().squeeze(1))
        flat = [flat.logits[0]]
    else:
        flat = [o[real] for o in token_outputs(fast, inputs, names)]
    for n, a, b in zip(names, padded, flat):
        assert b.shape == a.shape
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=n)
    targets = labels[real]
    if head == "question-answering":  # a start and an end in each example
        targets = torch.tensor([n - 1 for n in LENGTHS])
        padded = [out[n].masked_fill(~real, float("-inf")) for n in names]
        flat = token_outputs(fast, inputs, names, fill=float("-inf"))
    losses = [sum(torch.nn.functional.cross_entropy(t, targets, reduction="sum") for t in outs)
              for outs in (padded, flat)]
    # a sum over every token (about 160 here): fp32 holds it to a few parts in 1e7, below 1e-5 absolute
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-5)
    for loss in losses:
        loss.backward()
    for (name, p), q in zip(stock.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_a_pair_without_a_parity_test_is_declined_with_the_reason() -> None:
    """Keyed by head: GPT-2 is claimed for causal LM, not for token classification."""
    from transformers import GPT2Config, GPT2ForTokenClassification

    model = GPT2ForTokenClassification(GPT2Config(vocab_size=60, n_embd=32, n_layer=1, n_head=4, num_labels=3))
    assert ("gpt2", "causal-lm") in CLAIMED and ("gpt2", "token-classification") not in CLAIMED
    why = unsupported(model, "token-classification")
    assert why.startswith("model type 'gpt2' with a token-classification head has no parity test")
    assert enable(model, "auto", "token-classification") == f"off ({why})" and not is_enabled(model)
    with pytest.raises(ConfigError, match="gpt2' with a token-classification head"):
        enable(model, "on", "token-classification")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_packed_causal_call_builds_no_dense_mask(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers would build a dense (1, 1, n, n) block-diagonal mask for the flattened row (from its
    restarting position ids, when the model builds no cache) that the registered attention discards: the
    registered mask function gives none inside flat_call, SDPA's mask elsewhere; logits stay the padded ones."""
    from transformers.masking_utils import AttentionMaskInterface

    stock, _ = _claimed_model(kind, "causal-lm")
    stock.config.use_cache = False  # (with a cache transformers skips the packed-sequence mask itself)
    fast = copy.deepcopy(stock)
    if unsupported(fast, "causal-lm") is not None:
        pytest.skip(unsupported(fast, "causal-lm"))
    enable(fast, "on", "causal-lm")
    registered = AttentionMaskInterface._global_mapping[ATTENTION]
    made: list = []
    monkeypatch.setitem(AttentionMaskInterface._global_mapping, ATTENTION,
                        lambda *a, **k: made.append(registered(*a, **k)) or made[-1])
    inputs, _ = _batch(LENGTHS)
    del inputs["token_type_ids"]
    real = inputs["attention_mask"].bool()
    out, _ = flat_call(fast, inputs)
    assert made and all(m is None for m in made)
    torch.testing.assert_close(out.logits[0], stock(**inputs).logits[real], rtol=0, atol=1e-5)
    made.clear()
    torch.testing.assert_close(fast(**inputs).logits, stock(**inputs).logits, rtol=0, atol=0)  # padded: SDPA's
    assert made and all(m is not None and m.shape[-1] == real.shape[1] for m in made)
