"""LoRA: what trains, what checkpoints hold, resume, and the merged export (every task family trains under LoRA
in the contract grid, tests/test_task_contract.py)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_config, train_losses
from safetensors.torch import load_file

import tunesmith
from tunesmith.training.loop import Control

LORA = {"r": 8, "alpha": 16, "dropout": 0.05}


def test_lora_trains_the_adapter_and_head_and_exports_a_merged_model(base_config: dict, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    cfg = run_config(base_config, tmp_path, "lora", epochs=10, eval_every=10, lr=1e-2)
    cfg["model"]["lora"] = LORA
    cfg["eval"]["explain_errors"] = 2  # report.html shades its first two worst errors
    run = tunesmith.train(cfg)
    # tiny BERT: LoRA on query and value of 2 layers (32 -> 32, r 8: 2 * 32 * 8 each) + the classifier (32 * 2 + 2)
    assert run.summary["parameters"]["trainable"] == 2 * 2 * (2 * 32 * 8) + 66
    assert run.summary["lora"] == {**LORA, "target_modules": "auto"}
    assert run.summary["speed_paths"] == {"fast_bert": "off (model.lora: the stock forward)"}
    losses = train_losses(run.dir)
    # mean of the first and of the last 5 train losses: the seeded CPU run's values (it learns: 0.695 -> 0.310)
    assert (sum(losses[:5]) / 5, sum(losses[-5:]) / 5) == pytest.approx((0.6951981663703919, 0.3095285058021545),
                                                                        rel=1e-5)
    # checkpoints hold the adapter and the head, nothing of the frozen base
    ckpt = run.dir / "checkpoints" / json.loads((run.dir / "checkpoints" / "index.json").read_text())["latest"]
    assert not (ckpt / "model.safetensors").exists()
    keys = load_file(ckpt / "adapter_model.safetensors").keys()
    assert keys and all("lora_" in k or ".classifier." in k for k in keys)
    # model/ is merged: plain transformers loads it and it predicts what the run reported
    plain = AutoModelForSequenceClassification.from_pretrained(run.dir / "model")
    assert not any("lora" in n for n, _ in plain.named_parameters())
    rows = [json.loads(x) for x in (run.dir / "predictions" / "test.jsonl").read_text().splitlines()]
    again = tunesmith.load(run.dir).predict([r["input"]["text"] for r in rows])
    for r, a in zip(rows, again):
        assert a["label"] == r["prediction"]["label"]
        assert a["score"] == pytest.approx(r["prediction"]["score"], abs=1e-5)
    # adapter/ on the base model gives the merged model's logits
    base = AutoModelForSequenceClassification.from_pretrained(base_config["model"]["name"], num_labels=2)
    adapted = PeftModel.from_pretrained(base, run.dir / "adapter").eval()
    x = {"input_ids": torch.tensor([[2, 5, 20, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(adapted(**x).logits, plain.eval()(**x).logits, rtol=0, atol=1e-5)
    # explanations: the merged run's equal the adapter-on-base model's (Captum through peft's wrapper), and
    # the report's worst errors are shaded by them
    merged, wrapped = tunesmith.load(run.dir), tunesmith.load(run.dir)
    wrapped.model = adapted
    text = rows[0]["input"]["text"]
    a, b = merged.explain(text), wrapped.explain(text)
    assert a["prediction"] == merged.predict(text) and list(a["attributions"]) == list(b["attributions"])
    for x, y in zip(*(next(iter(e["attributions"].values()))["words"] for e in (a, b))):
        assert x["word"] == y["word"] and x["attribution"] == pytest.approx(y["attribution"], abs=1e-5)
    assert 'class="attr"' in (run.dir / "report.html").read_text()


def test_lora_resume_equals_the_uninterrupted_run(base_config: dict, tmp_path: Path) -> None:
    whole_cfg = run_config(base_config, tmp_path, "whole", epochs=2, eval_every=5, lr=1e-2)
    whole_cfg["model"]["lora"] = LORA  # with dropout: resume must restore the RNG as well
    whole = tunesmith.train(whole_cfg)
    cfg = copy.deepcopy(whole_cfg)
    cfg["output_dir"] = str(tmp_path / "stopped")
    tunesmith.train(cfg, callbacks=[lambda e: Control(stop=True) if e.kind == "step" and e.state.step == 13 else None])
    resumed = tunesmith.train(cfg, resume=True)
    assert train_losses(resumed.dir) == train_losses(whole.dir)
    last = f"step-{whole.summary['steps']}"
    a = load_file(whole.dir / "checkpoints" / last / "adapter_model.safetensors")
    b = load_file(resumed.dir / "checkpoints" / last / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_warm_started_encoder_decoder_trains_its_new_layers_in_full(tiny_models: Any) -> None:
    from tunesmith.config import load_config
    from tunesmith.models import load_model
    from tunesmith.tasks.base import get_task

    cfg = load_config({"task": "translation", "data": {"train": "x.jsonl"},
                       "model": {"name": tiny_models("bert"), "lora": LORA}})
    model, _ = load_model(get_task(cfg), tiny_models("bert"), cfg.model)
    whole = {n.split(".modules_to_save.")[0].removeprefix("base_model.model.")
             for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert whole == {f"decoder.bert.encoder.layer.{i}.crossattention" for i in range(2)} | \
        {"decoder.cls.predictions.transform"}
