"""Shared fixtures: a tiny random BERT with its own WordPiece vocabulary, and small data files.

Nothing here touches the network: the model is built from a config in code and saved to a temp
folder, the way the Hugging Face test suites build tiny models.
"""
from __future__ import annotations

import copy
from typing import Any
import csv
import json
import os
import random
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

POSITIVE = ["good", "great", "excellent", "lovely", "superb", "happy"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "sad", "horrible"]
FILLER = ["the", "a", "movie", "food", "service", "was", "really", "quite", "very", "and", "it", "this",
          "day", "place", "show", "story", "we", "they", "felt", "seemed"]
TOPICS = {"sports": ["match", "goal", "team"], "politics": ["vote", "senate", "law"], "tech": ["chip", "code", "app"]}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + FILLER + \
    [w for ws in TOPICS.values() for w in ws] + ["##s", "##ly", "##ing"]


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Learnable: the label is whichever sentiment word the sentence contains."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.choices(FILLER, k=rng.randint(2, 14))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_tiny_bert(d: Path) -> str:
    """A 2-layer, 32-wide BERT with random weights and a matching fast WordPiece tokenizer, saved to `d`."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(cfg).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny random BERT (build_tiny_bert), saved locally."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


GEN_SPECIALS = ["<pad>", "</s>", "<s>", "<unk>"]
GEN_VOCAB = GEN_SPECIALS + POSITIVE + NEGATIVE + FILLER + [w for ws in TOPICS.values() for w in ws] + [".", ",", "user",
                                                                                           "assistant"]


def word_tokenizer(single: str) -> Any:
    """A word-level fast tokenizer over GEN_VOCAB with the template `single`: "$A </s>" (T5), "<s> $A </s>"
    (BART), "<s> $A" (Llama: BOS only) or "$A" (GPT-2: no special tokens)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(GEN_VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=single + " $B </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
                                   bos_token="<s>")


def build_tiny_model(kind: str, folder: Path) -> str:
    """A tiny random model of one architecture with a word-level tokenizer, saved to `folder`.

    The decoder-only models are initialised 10x wider than transformers' 0.02: at width 32 the tied
    output layer could otherwise give no logit above ~0.6, and LoRA (which leaves it frozen) could not
    make any prediction confident."""
    import torch
    from transformers import (BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM, T5Config, T5ForConditionalGeneration)

    n = len(GEN_VOCAB)
    torch.manual_seed(0)
    if kind == "t5":
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=n, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    elif kind == "bart":
        model = BartForConditionalGeneration(BartConfig(
            vocab_size=n, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
            dropout=0.0, attention_dropout=0.0, pad_token_id=0, eos_token_id=1, bos_token_id=2,
            decoder_start_token_id=1, forced_eos_token_id=1))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=n, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2,
                                           bos_token_id=2, eos_token_id=1, pad_token_id=0))
    elif kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                             bos_token_id=2, eos_token_id=1, pad_token_id=0, initializer_range=0.2))
    elif kind == "bert":
        return build_tiny_bert(folder)
    else:
        raise ValueError(kind)
    templates = {"t5": "$A </s>", "bart": "<s> $A </s>", "llama": "<s> $A", "gpt2": "$A"}
    word_tokenizer(templates[kind]).save_pretrained(folder)
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: str) -> Any:
    """kind -> folder of a tiny random model ("bert" is tiny_model_dir), built on first use."""
    built = {"bert": tiny_model_dir}

    def get(kind: str) -> str:
        if kind not in built:
            built[kind] = build_tiny_model(kind, tmp_path_factory.mktemp(f"tiny-{kind}"))
        return built[kind]

    return get


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The device a test's runs train on: "cpu" everywhere (CUDA hidden where there is a GPU, as tunesmith
    picks CUDA whenever it is available), "cuda" only where a GPU is (bench/gpu_check.sh runs those)."""
    import torch

    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: bench/gpu_check.sh runs the cuda-marked tests on one")
    if request.param == "cpu":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return request.param


def device_of(summary: dict) -> str:
    """The device type a run trained on, from its report's train section ("cuda:0" -> "cuda")."""
    return summary["device"].split(":")[0]


@pytest.fixture
def sentiment_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "sentiment.csv", sentiment_rows(240, seed=1))


@pytest.fixture
def base_config(tiny_model_dir: str, sentiment_csv: Path, tmp_path: Path) -> dict:
    """A fast config on the tiny model; tests copy and adjust it."""
    return {
        "task": "text-classification",
        "model": {"name": tiny_model_dir, "max_length": 32},
        "data": {"train": str(sentiment_csv), "cache_dir": str(tmp_path / "cache")},
        # fp32: exactness tests compare to 1e-6, and `auto` picks bf16 on CPUs with avx512_bf16
        "train": {"epochs": 5, "batch_size": 16, "lr": 5e-3, "warmup_ratio": 0.1, "seed": 0, "log_every": 1,
                  "precision": "fp32"},
        "eval": {"batch_size": 32, "explain_errors": 0},  # report.html's shading: tests/test_report.py
        "output_dir": str(tmp_path / "run"),
    }


def run_config(base: dict, tmp_path: Path, name: str, **train: object) -> dict:
    """`base` with train-section changes and its own output_dir `tmp_path/name`."""
    cfg = copy.deepcopy(base)
    cfg["train"].update(train)
    cfg["output_dir"] = str(tmp_path / name)
    return cfg


def train_losses(run_dir: Path) -> list[float]:
    """The per-step train losses a run logged in metrics.jsonl."""
    from tunesmith.io import read_jsonl

    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def load_splits(data_cfg: Any) -> Any:
    """`load_splits` with text classification's roles: what most data tests read."""
    from tunesmith.config import RunConfig
    from tunesmith.data.prepare import load_splits as load
    from tunesmith.tasks.base import get_task

    roles = get_task(RunConfig.model_validate({"data": {"train": "unused.csv"}})).roles()
    return load(data_cfg, roles)


@pytest.fixture(scope="session")
def contract_run(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """task -> the run folder of the task's contract fixture trained 60 steps without dropout (built once)."""
    from test_task_contract import _config

    import tunesmith

    runs: dict[str, Path] = {}

    def get(task: str) -> Path:
        if task not in runs:
            cfg = _config(task, tiny_models, tmp_path_factory.mktemp(f"served-{task}"), "run", dropout=0)
            cfg["eval"]["explain_errors"] = 5  # report.html shaded as a user's run is
            runs[task] = tunesmith.train(cfg).dir
        return runs[task]
    return get
