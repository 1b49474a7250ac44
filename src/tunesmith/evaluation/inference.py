"""Batched inference shared by validation, testing and prediction: length-sorted, streamed to numpy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..training.batching import eval_plan


@dataclass
class Outputs:
    scores: np.ndarray
    labels: np.ndarray | None
    loss: float | None


@torch.no_grad()
def run_inference(model: torch.nn.Module, task: Any, data: Any, batch_size: int, device: torch.device,
                  *, with_labels: bool = True, accelerator: Any = None,
                  pad_to_multiple_of: int | None = None) -> Outputs:
    """Scores for every row of `data` in its original order.

    With an accelerator of several processes each one takes every n-th batch and the results are
    gathered, so evaluation is not repeated on every process.
    """
    from accelerate.utils import gather_object

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    if accelerator is not None:
        # the bare module: a DDP wrapper syncs buffers in forward, which deadlocks when processes
        # run different numbers of evaluation batches
        model = accelerator.unwrap_model(model)
    lengths = np.asarray(data["length"])
    batches = eval_plan(lengths, batch_size)[rank::world]
    model.eval()
    idx_parts, score_parts, label_parts = [], [], []
    loss_sum, items = 0.0, 0
    for b in batches:
        batch = task.collate(data.__getitems__(b.tolist()), pad_to_multiple_of)
        batch = {k: v.to(device) for k, v in batch.items()}
        idx_parts.append(b)
        score_parts.append(task.outputs(model, batch).float().cpu().numpy())
        if with_labels:
            loss_sum += float(task.loss(model, batch))
            items += task.count_items(batch)
            label_parts.append(batch["labels"].cpu().numpy())
    if world > 1:
        gathered = gather_object([(idx_parts, score_parts, label_parts, loss_sum, items)])
        idx_parts, score_parts, label_parts = [], [], []
        loss_sum, items = 0.0, 0
        for i, s, lab, ls, n in gathered:
            idx_parts += i
            score_parts += s
            label_parts += lab
            loss_sum += ls
            items += n
    order = np.argsort(np.concatenate(idx_parts), kind="stable")
    scores = np.concatenate(score_parts)[order]
    labels = np.concatenate(label_parts)[order] if with_labels else None
    return Outputs(scores, labels, loss_sum / items if with_labels and items else None)
