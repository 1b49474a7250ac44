"""Batched evaluation shared by validation, testing and prediction: length-sorted, one forward pass per
batch, streamed into the task's evaluator (which keeps only what its metrics and records need)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..tasks.base import EvalResult, Task
from ..training.batching import eval_plan


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, task: Task, table: Any, features: Any, batch_size: int,
                   device: torch.device, *, accelerator: Any = None, pad_to_multiple_of: int | None = None,
                   tune: bool = False, predict: bool = True) -> tuple[EvalResult, float | None]:
    """(the evaluator's result, mean loss or None without targets) for one tokenized split.

    `predict` False: the loss only (a generative task then skips generation and has no metrics).

    With an accelerator of several processes each one takes every n-th batch and the evaluators are
    gathered once, so evaluation is not repeated on every process.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    if accelerator is not None:
        # the bare module: a DDP wrapper syncs buffers in forward, which deadlocks when processes
        # run different numbers of evaluation batches
        model = accelerator.unwrap_model(model)
    batches = eval_plan(np.asarray(features["length"]), batch_size)[rank::world]
    model.eval()
    evaluator = task.evaluator(table)
    loss_sum, items = 0.0, 0
    for b in batches:
        batch = task.collate(features.__getitems__(b.tolist()), pad_to_multiple_of).to(device)
        loss, outputs = task.forward(model, batch, predict=predict)
        evaluator.add(batch, outputs)
        if loss is not None:
            loss_sum += float(loss)
            items += task.count_items(batch)
    if world > 1:
        from accelerate.utils import gather_object

        gathered = gather_object([(evaluator, loss_sum, items)])
        evaluator, loss_sum, items = gathered[0]
        for other, ls, n in gathered[1:]:
            evaluator.merge(other)
            loss_sum += ls
            items += n
    return evaluator.result(tune=tune), (loss_sum / items if items else None)
