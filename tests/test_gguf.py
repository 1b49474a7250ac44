"""GGUF model files: a tiny Llama written as GGUF (as llama.cpp's converter writes it) comes back exactly."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import GEN_VOCAB

from tunesmith.config import ModelConfig
from tunesmith.errors import ModelError
from tunesmith.models import resolve_model_name

gguf = pytest.importorskip("gguf")


def _permute(w: Any, n_head: int, n_kv: int) -> Any:
    """llama.cpp's q/k row order for rotary embeddings (convert_hf_to_gguf.py), which transformers undoes."""
    n = n_kv if n_kv != n_head else n_head
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model: Any, path: Path) -> None:
    """The model's weights in F32 under GGUF names, its shape as GGUF metadata, a byte-level vocabulary."""
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    theta = getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"]  # transformers 4 / 5
    w.add_rope_freq_base(float(theta))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(GEN_VOCAB)
    w.add_token_merges([])
    w.add_token_scores([0.0] * len(GEN_VOCAB))
    w.add_token_types([3, 3, 3, 2] + [1] * (len(GEN_VOCAB) - 4))  # control, control, control, unknown, normal...
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    for i in range(c.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(b + "attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], heads, heads))
        w.add_tensor(b + "attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], heads, kv))
        w.add_tensor(b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_file_is_converted_once_to_an_exact_transformers_folder(tiny_models: Any, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_models("llama")).eval()
    path = tmp_path / "tiny.gguf"
    write_gguf(original, path)
    folder = resolve_model_name(ModelConfig(name=str(path)), str(tmp_path / "cache"))
    assert Path(folder).parent == tmp_path / "cache" / "gguf"
    files = {p.name for p in Path(folder).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert "quantization_config" not in (Path(folder) / "config.json").read_text()
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[2, 5, 9, 14, 20, 7]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, original(ids).logits, rtol=0, atol=1e-5)
    # the second use reads the cached folder: transformers' GGUF reader is not called again
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("converted twice"))
    assert resolve_model_name(ModelConfig(name=str(path)), str(tmp_path / "cache")) == folder


def test_a_missing_gguf_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model_name(ModelConfig(name=str(tmp_path / "nope.gguf")))


def test_a_gguf_decoder_fine_tunes_as_a_sequence_classifier(tiny_models: Any, base_config: dict,
                                                            tmp_path: Path) -> None:
    """The README's model-selection recipe: a GGUF causal LM as `model.name` of a classification run."""
    import tunesmith
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path / "tiny.gguf"
    write_gguf(AutoModelForCausalLM.from_pretrained(tiny_models("llama")), path)
    base_config["model"]["name"] = str(path)
    base_config["train"].update(max_steps=2, eval_every=2)
    run = tunesmith.train(base_config)
    folder = run.dir / "model"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.pad_token_id is not None
    tok = AutoTokenizer.from_pretrained(folder)
    texts = ["great fun", "a dull and tedious film that I did not like at all"]
    with torch.no_grad():  # padding in a batch changes no score: the pad token is known to the model
        batched = model(**tok(texts, padding=True, return_tensors="pt")).logits
        single = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)
