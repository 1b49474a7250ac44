"""What runs on CUDA only: LoRA under bf16 autocast on a GPU, its export and reload there.

The other CUDA paths are the CPU tests parametrised by the `device` fixture of conftest.py (bf16 and
fp32 training, a second precision in one process, fused AdamW, padding-free attention, resume), whose
"cuda" cases carry the `cuda` marker. Everything here and there is skipped without a GPU;
bench/gpu_check.sh runs it all on one (`pytest -m cuda`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import device_of, run_config, train_losses
from test_lora import LORA

import tunesmith

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "needs a CUDA GPU: bench/gpu_check.sh runs the cuda-marked tests on one"))]


def test_lora_under_bf16_trains_and_its_export_reloads_on_the_gpu(base_config: dict, tmp_path: Path) -> None:
    """A bf16 LoRA run on CUDA trains the adapter and head (finite, falling loss); the merged model/ and
    adapter/ on the base give the same logits on the GPU, and tunesmith.load there predicts the labels the
    run reported. Scores are not compared: the run scored under bf16 autocast, load() scores in fp32."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    cfg = run_config(base_config, tmp_path, "lora", epochs=10, eval_every=10, lr=1e-2, precision="bf16")
    cfg["model"]["lora"] = LORA
    run = tunesmith.train(cfg)
    assert (device_of(run.summary), run.summary["precision"]) == ("cuda", "bf16")
    assert run.summary["parameters"]["trainable"] == 2 * 2 * (2 * 32 * 8) + 66
    assert run.summary["peak_gpu_memory_mb"] > 0
    losses = train_losses(run.dir)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5

    plain = AutoModelForSequenceClassification.from_pretrained(run.dir / "model").to("cuda").eval()
    base = AutoModelForSequenceClassification.from_pretrained(base_config["model"]["name"], num_labels=2)
    adapted = PeftModel.from_pretrained(base, run.dir / "adapter").to("cuda").eval()
    x = {"input_ids": torch.tensor([[2, 5, 20, 3]], device="cuda"),
         "attention_mask": torch.ones(1, 4, dtype=torch.long, device="cuda")}
    with torch.no_grad():
        torch.testing.assert_close(adapted(**x).logits, plain(**x).logits, rtol=0, atol=1e-5)

    rows = [json.loads(x) for x in (run.dir / "predictions" / "test.jsonl").read_text().splitlines()]
    predictor = tunesmith.load(run.dir)  # on CUDA where it is available
    assert predictor.device.type == "cuda"
    again = predictor.predict([r["input"]["text"] for r in rows])
    assert [a["label"] for a in again] == [r["prediction"]["label"] for r in rows]
