"""Collate helpers shared by tasks: features (lists of ids) -> padded tensors.

Padding ids are 0: the attention mask hides them, so any valid id does, and features read from the
cache need no tokenizer to collate. Label padding is -100, which every loss ignores.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IGNORE = -100  # the label of a position no loss reads (torch's cross-entropy ignore_index)


def padded_length(n: int, pad_to_multiple_of: int | None) -> int:
    """`n` rounded up to a multiple of `pad_to_multiple_of` (tensor-core shapes on GPUs)."""
    return -(-n // pad_to_multiple_of) * pad_to_multiple_of if pad_to_multiple_of else n


def pad_inputs(features: list[dict], pad_to_multiple_of: int | None = None) -> dict[str, "torch.Tensor"]:
    """input_ids, attention_mask and (when the features have them) token_type_ids, right-padded to the
    longest feature (rounded up to a multiple of `pad_to_multiple_of`)."""
    import torch

    n = padded_length(max(len(f["input_ids"]) for f in features), pad_to_multiple_of)
    ids = torch.zeros((len(features), n), dtype=torch.long)
    mask = torch.zeros((len(features), n), dtype=torch.long)
    has_types = "token_type_ids" in features[0]
    types = torch.zeros((len(features), n), dtype=torch.long) if has_types else None
    for i, f in enumerate(features):
        L = len(f["input_ids"])
        ids[i, :L] = torch.as_tensor(f["input_ids"])
        mask[i, :L] = 1
        if types is not None:
            types[i, :L] = torch.as_tensor(f["token_type_ids"])
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def pad_labels(labels: list[list[int]], pad_to_multiple_of: int | None = None) -> "torch.Tensor":
    """Label sequences right-padded with IGNORE to the longest (rounded up like `pad_inputs`)."""
    import torch

    out = torch.full((len(labels), padded_length(max(len(x) for x in labels), pad_to_multiple_of)), IGNORE,
                     dtype=torch.long)
    for i, x in enumerate(labels):
        out[i, :len(x)] = torch.as_tensor(x, dtype=torch.long)
    return out
