"""Text generation: what is trained (prompt masked, EOS kept), packing parity, prompt formats, generation."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_jsonl

import tunesmith
from tunesmith.config import RunConfig
from tunesmith.types import Table
from tunesmith.errors import ConfigError
from tunesmith.padding_free import enable
from tunesmith.tasks.base import get_task
from tunesmith.tasks.causal_lm import alpaca_prompt

CHAT = ("{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<s> assistant {% endif %}")


def _task(**options: Any) -> Any:
    return get_task(RunConfig.model_validate({"task": {"type": "text-generation", **options},
                                              "data": {"train": "x.jsonl"}, "model": {"max_length": 32}}))


def _table(rows: list[dict]) -> Table:
    keys = list(rows[0])
    return Table({k: [r[k] for r in rows] for k in keys}, ["f.jsonl"] * len(rows), list(range(1, len(rows) + 1)),
                 {k: k for k in keys})


def _ids(tok: Any, text: str, special: bool = False) -> list[int]:
    return tok(text, add_special_tokens=special)["input_ids"]


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_prompt_tokens_are_masked_and_eos_is_trained_even_when_pad_is_eos(train_on_prompt: bool,
                                                                        tiny_models: Any) -> None:
    task = _task(train_on_prompt=train_on_prompt)
    task.load_model(tiny_models("llama"))
    tok = task.tokenizer
    tok.pad_token = tok.eos_token  # as most decoder-only tokenizers are set up
    table = _table([{"prompt": "the movie was", "response": "good"}])
    task.fit({"train": table})
    f = task.preprocess(table, tok)[0]
    prompt, response = _ids(tok, "the movie was", special=True), _ids(tok, "good")
    assert prompt[0] == tok.bos_token_id
    assert f["input_ids"] == prompt + response + [tok.eos_token_id]
    assert f["labels"] == (prompt if train_on_prompt else [-100] * len(prompt)) + response + [tok.eos_token_id]
    assert f["prompt_len"] == len(prompt)
    batch = task.collate([f, task.preprocess(_table([{"prompt": "a", "response": "bad day"}]), tok)[0]])
    # targets are the next position's labels; the EOS is one of them although it is the pad id
    assert batch.targets["labels"][0, :len(f["labels"]) - 1].tolist() == f["labels"][1:]
    assert (batch.targets["labels"][0] == tok.eos_token_id).sum() == 1
    # the first token is never a target; then the response and EOS: 2 + 3, and the rest of the prompts
    # ([<s> the movie was] and [<s> a]) when they are trained
    assert task.count_items(batch) == 2 + 3 + ((len(prompt) - 1) + 1 if train_on_prompt else 0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_packed_batch_gives_each_example_its_unpacked_loss(kind: str, tiny_models: Any) -> None:
    from transformers import AutoModelForCausalLM

    from tunesmith.padding_free import unsupported

    task = _task(packing=True)
    why = unsupported(AutoModelForCausalLM.from_pretrained(tiny_models(kind)))
    if why is not None:  # a transformers version the path does not cover (GPT-2 on 4.x): refused, never wrong
        assert "does not route" in why
        with pytest.raises(ConfigError, match="padding_free: on"):
            task.load_model(tiny_models(kind))
        return
    model, facts = task.load_model(tiny_models(kind))
    model.eval()
    rows = [{"prompt": "the movie was really", "response": "good and happy"}, {"prompt": "a", "response": "bad"},
            {"prompt": "it was a very sad day and the food", "response": "was awful"}]
    table = _table(rows)
    task.fit({"train": table})
    features = task.preprocess(table, task.tokenizer)
    batch = task.collate([features[i] for i in range(3)])
    # packed rows compute the output layer at labelled positions only; the losses and gradients are those
    # of padded batches with every position's logits
    assert facts.speed_paths["logits"] == "labelled positions only (logits_to_keep)"
    packed_loss, packed = task.forward(model, batch, "loss")
    packed_loss.backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    enable(model, "off")
    model.set_attn_implementation("sdpa")
    padded_loss, padded = task.forward(model, batch, "loss")
    padded_loss.backward()
    with torch.no_grad():
        alone = [task.forward(model, task.collate([features[i]]), "loss")[1]["loss"][0] for i in range(3)]
    assert packed["count"] == padded["count"] and sum(packed["count"]) == task.count_items(batch)
    torch.testing.assert_close(torch.tensor(packed["loss"]), torch.tensor(padded["loss"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(packed["loss"]), torch.tensor(alone), rtol=0, atol=1e-5)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=0, atol=1e-5)
    for a, p in zip(packed_grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_packing_on_an_uncovered_model_is_refused(tiny_models: Any) -> None:
    with pytest.raises(ConfigError, match="padding_free: on"):
        _task(packing=True).load_model(tiny_models("bart"))


def test_alpaca_prompts_follow_the_stanford_template() -> None:
    assert alpaca_prompt("Name a colour.", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a colour.\n\n### Response:\n")
    assert alpaca_prompt("Translate.", "bonjour") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n"
        "### Input:\nbonjour\n\n### Response:\n")


def test_chat_trains_the_assistant_turns_only(tiny_models: Any) -> None:
    task = _task(chat_template=CHAT)
    task.load_model(tiny_models("llama"))
    tok = task.tokenizer
    msgs = [{"role": "user", "content": "good day"}, {"role": "assistant", "content": "happy"},
            {"role": "user", "content": "bad day"}, {"role": "assistant", "content": "sad"}]
    table = _table([{"messages": msgs}])
    task.fit({"train": table})
    f = task.preprocess(table, tok)[0]
    # the template writes <s>/</s> as text; the assistant text after "<s> assistant" is trained, with its </s>
    assert tok.decode(f["input_ids"]) == ("<s> user good day </s> <s> assistant happy </s> "
                                          "<s> user bad day </s> <s> assistant sad </s>")
    trained = [t for t, lab in zip(f["input_ids"], f["labels"]) if lab != -100]
    assert tok.decode(trained) == "happy </s> sad </s>"
    # generation starts after the last user turn and the generation prompt
    assert tok.decode(f["input_ids"][:f["prompt_len"]]).endswith("<s> user bad day </s> <s> assistant")
    # a chat model given a bare prompt renders it as a user turn
    p = task.preprocess(_table([{"prompt": "good day"}]), tok)[0]
    assert tok.decode(p["input_ids"]) == "<s> user good day </s> <s> assistant" and p["labels"] == []


def test_corpus_text_is_cut_into_blocks_every_token_trained(tiny_models: Any) -> None:
    task = _task()
    task.load_model(tiny_models("gpt2"))
    words = " ".join(["good"] * 70)
    table = _table([{"text": words}, {"text": "a bad day"}])
    task.fit({"train": table})
    f = task.preprocess(table, task.tokenizer)
    assert f["example"] == [0, 0, 0, 1] and f["length"] == [32, 32, 6, 3] and f["n_tokens"] == [70, 70, 70, 3]
    assert all(a == b for x, y in zip(f["input_ids"], f["labels"]) for a, b in zip(x, y))


def test_batched_generation_equals_one_prompt_at_a_time(tiny_models: Any) -> None:
    task = _task(max_new_tokens=5)
    model = task.load_model(tiny_models("llama"))[0].eval()
    task.fit({"train": _table([{"prompt": "a", "response": "b"}])})
    table = _table([{"prompt": "the movie"}, {"prompt": "it was a very sad day and"}, {"prompt": "good"}])
    features = task.preprocess(table, task.tokenizer)
    with torch.no_grad():
        together = task.forward(model, task.collate([features[i] for i in range(3)]), "predict")[1]["generated"]
        alone = [task.forward(model, task.collate([features[i]]), "predict")[1]["generated"][0] for i in range(3)]
    assert [together[i] for i in range(3)] == alone
    assert all(len(x) == 5 or (len(x) < 5 and x[-1] == task.tokenizer.eos_token_id) for x in alone)


def test_a_run_keeps_sample_generations_and_predicts_with_sampling_options(tiny_models: Any, tmp_path: Path) -> None:
    rows = [{"prompt": f"the {w} movie", "response": w} for w in ("good", "bad", "sad", "happy")] * 8
    write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = {"task": {"type": "text-generation", "sample_prompts": 2, "max_new_tokens": 3},
           "model": {"name": tiny_models("llama"), "max_length": 16},
           "data": {"train": str(tmp_path / "train.jsonl"), "cache_dir": str(tmp_path / "cache")},
           "train": {"max_steps": 6, "batch_size": 8, "eval_every": 3, "precision": "fp32", "lr": 1e-2},
           "output_dir": str(tmp_path / "run")}
    run = tunesmith.train(cfg)
    samples = [json.loads(x) for x in (run.dir / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [3, 6] and all(len(s["samples"]) == 2 for s in samples)
    assert set(samples[0]["samples"][0]) == {"example", "prompt", "generated_text", "gold"}
    evals = [json.loads(x) for x in (run.dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert all("perplexity" in e and "rougeL" not in e for e in evals)  # no full generation while training
    assert "rougeL" in run.report["test"] and run.report["test"]["perplexity"] == pytest.approx(
        2.718281828 ** run.report["test"]["loss"], rel=1e-6)
    predictor = tunesmith.load(run.dir)
    greedy = predictor.predict("the good movie")
    assert set(greedy) == {"generated_text"} and greedy == predictor.predict("the good movie")
    predictor.set_decoding(do_sample=True, temperature=5.0, top_p=1.0, max_new_tokens=3)
    torch.manual_seed(0)
    draws = {predictor.predict("the good movie")["generated_text"] for _ in range(8)}
    assert len(draws) > 1  # sampling at a high temperature varies
    with pytest.raises(ConfigError) as err:
        predictor.set_decoding(num_beams=2)
    assert str(err.value) == ("num_beams=2: not a decoding option of the text-generation task; its decoding options "
                              "are task.max_new_tokens, task.do_sample, task.temperature, task.top_p")
    # the command line: one prompt in, the record out as JSON
    from test_cli import invoke

    out = invoke("predict", run.dir, "--text", "the good movie", "--set", "task.max_new_tokens=2")
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    generated = predictor.task.tokenizer(record["generated_text"], add_special_tokens=False)["input_ids"]
    assert set(record) == {"generated_text"} and len(generated) <= 2


ALTERNATING = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{% endif %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
               "{% if add_generation_prompt %}<s> assistant {% endif %}")


def test_chats_the_template_cannot_render_are_data_errors_naming_the_row(tiny_models: Any) -> None:
    from tunesmith.errors import DataError

    good = [{"role": "user", "content": "good day"}, {"role": "assistant", "content": "happy"}]
    opening = [{"role": "assistant", "content": "hello"}, *good]
    task = _task(chat_template=ALTERNATING)
    with pytest.raises(DataError) as e:  # found before any model or tokenizer is loaded
        task.fit({"train": _table([{"messages": good}, {"messages": opening}])})
    assert str(e.value) == ("file f.jsonl, line 2, column 'messages': the chat opens with an assistant turn: no turn "
                            "before it to condition it on (a chat template renders nothing there)\n"
                            "  -> start the chat with a user (or system) turn, or remove the opening turn")
    task.load_model(tiny_models("llama"))
    doubled = [{"role": "user", "content": "good day"}, {"role": "user", "content": "bad day"},
               {"role": "assistant", "content": "sad"}]
    table = _table([{"messages": good}, {"messages": good}, {"messages": doubled}])
    task.fit({"train": table})
    with pytest.raises(DataError) as e:
        task.preprocess(table, task.tokenizer)
    assert str(e.value) == ("file f.jsonl, line 3, column 'messages': the chat template refuses this conversation: "
                            "Conversation roles must alternate user/assistant/user/assistant/...\n"
                            "  -> fix the row's turns to what the template accepts (e.g. user and assistant "
                            "alternating), or set task.chat_template")
    # found at tokenization too (evaluate and predict tokenize without fit)
    with pytest.raises(DataError, match=r"^file f.jsonl, line 2, column 'messages': the chat opens with an assistant"):
        task.preprocess(_table([{"messages": good}, {"messages": opening}]), task.tokenizer)
    # prompts (prediction): a chat of assistant turns only has nothing to prompt with
    with pytest.raises(DataError, match=r"^file f.jsonl, line 2, column 'messages': the chat holds assistant turns "
                                        r"only: no turn to prompt with"):
        task.preprocess(_table([{"messages": good[:1]}, {"messages": good[1:]}]), task.tokenizer)
    # a template that is not valid Jinja is the config's fault, not the row's
    task = _task(chat_template="{% for m in messages %}{{ m['content'] }")
    task.load_model(tiny_models("llama"))
    task.fit({"train": _table([{"messages": good}])})
    with pytest.raises(ConfigError, match=r"^the chat template is not valid Jinja: "):
        task.preprocess(_table([{"messages": good}]), task.tokenizer)


def test_a_prompt_that_fills_max_length_is_dropped_or_cut_from_the_left(tiny_models: Any, tmp_path: Path) -> None:
    long_prompt = " ".join(["good"] * 40)  # 40 tokens: model.max_length is 32
    rows = [{"prompt": long_prompt, "response": "happy"}, {"prompt": "a bad day", "response": "sad"}]
    task = _task()
    task.load_model(tiny_models("gpt2"))
    tok = task.tokenizer
    task.fit({"train": _table(rows)})
    f = task.preprocess(_table(rows), tok)
    assert f[0]["labels"] == [-100] * 32  # the response was cut off with the prompt's end
    assert task.untrainable(f) == {0: "the prompt fills model.max_length=32: no response token is left to train on "
                                      "(set task.truncate_prompt: left to keep the response by cutting the prompt's "
                                      "start, or raise model.max_length)"}
    task = _task(truncate_prompt="left")
    task.load_model(tiny_models("gpt2"))
    task.fit({"train": _table(rows)})
    f = task.preprocess(_table(rows), tok)
    assert f[0]["length"] == 32 and f[0]["prompt_len"] == 30 and f[0]["n_tokens"] == 42
    assert tok.decode([t for t, lab in zip(f[0]["input_ids"], f[0]["labels"]) if lab != -100]) == "happy </s>"
    assert tok.decode(f[0]["input_ids"][:30]) == " ".join(["good"] * 30) and task.untrainable(f) == {}
    assert f[1]["input_ids"] == _ids(tok, "a bad day sad") + [tok.eos_token_id]  # a short example is as it was

    # a run drops and lists them, and the data report counts them
    from tunesmith.run import prepare

    write_jsonl(tmp_path / "train.jsonl", [rows[0], rows[0]] + [rows[1]] * 8)
    cfg = RunConfig.model_validate({"task": {"type": "text-generation"}, "model": {"name": tiny_models("gpt2"),
                                    "max_length": 32}, "data": {"train": str(tmp_path / "train.jsonl"),
                                    "validation": str(tmp_path / "train.jsonl"), "test_ratio": 0.1,
                                    "cache_dir": str(tmp_path / "cache")}})
    p = prepare(cfg)
    reason = ("the prompt fills model.max_length=32: no response token is left to train on (set "
              "task.truncate_prompt: left to keep the response by cutting the prompt's start, or raise "
              "model.max_length)")
    assert [(d["split"], d["line"], d["reason"]) for d in p.data.dropped] == [
        ("train", 1, reason), ("train", 2, reason), ("validation", 1, reason), ("validation", 2, reason)]
    assert p.report["untrainable"] == {"train": {"examples": 2, "reason": reason},
                                       "validation": {"examples": 2, "reason": reason}}
    assert f"2 train examples dropped (listed with the dropped rows): {reason}" in p.report["warnings"]
    assert len(p.data.splits["train"]) == 7 and set(p.tokenized["train"]["example"]) == set(range(7))
    assert len(p.data.splits["validation"]) == 8 and sorted(p.tokenized["validation"]["example"]) == list(range(8))
    assert not any("on_missing" in w for w in p.report["warnings"])


def test_a_window_with_no_labelled_token_is_skipped_not_called_a_divergence(tiny_models: Any, tmp_path: Path) -> None:
    # texts of 33 tokens at model.max_length 32 end in a block of one token, which predicts nothing; sorted
    # by length (train.batching: bucket), those blocks make up a batch of their own: 0 targets, loss 0/0
    write_jsonl(tmp_path / "train.jsonl", [{"text": " ".join(["good", "bad"] * 16 + ["sad"])}] * 8)
    cfg = {"task": {"type": "text-generation"}, "model": {"name": tiny_models("gpt2"), "max_length": 32},
           "data": {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "train.jsonl"),
                    "test": str(tmp_path / "train.jsonl"), "cache_dir": str(tmp_path / "cache")},
           "train": {"epochs": 1, "batch_size": 8, "batching": "bucket", "max_nonfinite_steps": 1, "eval_every": 2,
                     "precision": "fp32", "log_every": 1},
           "output_dir": str(tmp_path / "run")}
    run = tunesmith.train(cfg)
    steps = [json.loads(x) for x in (run.dir / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert sorted(s["loss"] == 0.0 for s in steps) == [False, True]  # the empty window: skipped, loss 0
    assert run.report["train"]["nonfinite_steps"] == 0
