"""LoRA through PEFT, for every task: adapters on the attention projections, the task head trained in full.

The model the loop trains is a `PeftModel`; its `save_pretrained` writes only the adapter and the fully
trained head, so checkpoints hold those (and optimizer state for them alone). Exports are merged: the run
folder's `model/` loads with plain transformers, and the adapter is kept beside it in `adapter/`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

    from .config import LoraSection

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def default_targets(config: Any) -> list[str]:
    """PEFT's per-architecture attention projections; an encoder-decoder built from an encoder uses its
    encoder's names (they name the decoder's self- and cross-attention projections too)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS

    kind = config.model_type
    if kind not in TARGETS and kind == "encoder-decoder":
        kind = config.encoder.model_type
    if kind not in TARGETS:
        raise ConfigError(f"model.lora: no default target modules for model type '{config.model_type}'; set "
                          "model.lora.target_modules (names of its linear layers, e.g. [q_proj, v_proj]) or "
                          "all-linear")
    return list(TARGETS[kind])


def apply(model: "torch.nn.Module", cfg: "LoraSection", in_full: list[str]) -> "torch.nn.Module":
    """The model with LoRA adapters and the modules named `in_full` (the task head, new modules) trained whole.

    The plain PeftModel is used, not PEFT's per-task wrappers: those rebuild the forward call from a fixed
    argument list, and some drop arguments the model needs (PeftModelForQuestionAnswering drops
    token_type_ids and position_ids for LoRA); the plain one passes every argument through, and
    `generate` reaches the model's own.
    """
    from peft import LoraConfig, get_peft_model

    targets = default_targets(model.config) if cfg.target_modules == "auto" else cfg.target_modules
    names = [name for name, _ in model.named_modules()]
    in_full = [m for m in in_full if any(n == m or n.endswith("." + m) for n in names)]  # PEFT's suffix match
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                          modules_to_save=in_full or None)
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:  # target modules that the model does not have
        raise ConfigError(f"model.lora: {str(e).splitlines()[0]}") from None


def is_peft(model: "torch.nn.Module") -> bool:
    """Whether the model is a PeftModel (without importing peft, which no other run needs)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def parameter_counts(model: "torch.nn.Module") -> dict[str, int]:
    """Trainable and total parameters (tied weights counted once)."""
    seen: dict[int, Any] = {id(p): p for p in model.parameters()}
    return {"trainable": sum(p.numel() for p in seen.values() if p.requires_grad),
            "total": sum(p.numel() for p in seen.values())}


def load_adapter(model: "torch.nn.Module", folder: Path) -> None:
    """Load a checkpoint's adapter and head weights into a PeftModel."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(Path(folder) / ADAPTER_WEIGHTS))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model's adapter: unexpected {unexpected[:5]}")


def merged(model: "torch.nn.Module") -> "torch.nn.Module":
    """The base model with the adapter folded into its weights (the PeftModel is used up)."""
    return model.merge_and_unload()
