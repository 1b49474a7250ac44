"""Batched evaluation shared by validation, testing and prediction: length-sorted, one forward pass per
batch, streamed into the task's evaluator (which keeps only what its metrics and records need).

Evaluation always runs in fp32, whatever precision training used. A bf16 run used to test under its
training autocast while `evaluate` and `predict` ran in fp32 (Banking77: 21 of 3,080 test labels differed,
probabilities by up to 2.5e-4), and bf16 rounding also depends on each batch's padding and shapes, so no
batch size could reproduce it. In fp32 every path and batch size agrees to float rounding (a probability
moved by at most 6e-8 between batch sizes 1, 3, 8 and 32 on the tiny test BERT).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from ..tasks.base import Task
from ..types import EvalResult
from ..training.batching import eval_plan

PRECISION = "fp32"  # what every evaluation runs in; report.json's inference.precision says so


@contextmanager
def full_precision(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Run `model` in fp32 inside the block, even when training wrapped it in bf16/fp16 autocast.

    Accelerate's mixed precision replaces the model's `forward` by one that enters autocast (keeping
    the plain one as `_original_forward`); an outer `autocast(enabled=False)` cannot undo an autocast
    entered inside forward, so the plain forward is put back for the block and the wrapper restored
    afterwards (training continues in its own precision). A caller's own autocast is switched off too.
    """
    wrapped, plain = model.__dict__.get("forward"), model.__dict__.get("_original_forward")
    if plain is not None:
        model.forward = plain
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        if plain is not None:
            model.forward = wrapped


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, task: Task, table: Any, features: Any, batch_size: int,
                   device: torch.device, *, accelerator: Any = None, tune: bool = False,
                   predict: bool = True) -> tuple[EvalResult, float | None]:
    """(the evaluator's result, mean loss or None without targets) for one tokenized split.

    `predict` False: the loss only (a generative task then skips generation and has no metrics).
    The one path of the run's validation and test, `evaluate` and `predict`: fp32 (`full_precision`), and
    padding chosen here from the device, so the same rows give the same predictions on every path.

    With an accelerator of several processes each one takes every n-th batch and the evaluators' states
    are gathered once, so evaluation is not repeated on every process. Only `evaluator.state()` travels
    (not the task, its tokenizer or the table), and every process merges all states in process order into
    a new evaluator, so all of them compute the same result.
    """
    device = torch.device(device)  # the Predictor's may be a name ("cpu")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    if accelerator is not None:
        # the bare module: a DDP wrapper syncs buffers in forward, which deadlocks when processes
        # run different numbers of evaluation batches
        model = accelerator.unwrap_model(model)
    batches = eval_plan(np.asarray(features["length"]), batch_size)[rank::world]
    model.eval()
    pad_to_multiple_of = 8 if device.type == "cuda" else None  # tensor-core shapes, the same on every path
    evaluator = task.evaluator(table)
    loss_sum, items = 0.0, 0
    with full_precision(model, device):
        for b in batches:
            batch = task.collate(features.__getitems__(b.tolist()), pad_to_multiple_of).to(device)
            loss, outputs = task.forward(model, batch, "predict" if predict else "loss")
            evaluator.add(batch, outputs)
            if loss is not None:
                loss_sum += float(loss)
                items += task.count_items(batch)
    if world > 1:
        from accelerate.utils import gather_object

        gathered = gather_object([(evaluator.state(), loss_sum, items)])
        evaluator, loss_sum, items = task.evaluator(table), 0.0, 0
        for state, ls, n in gathered:
            evaluator.merge(state)
            loss_sum += ls
            items += n
    return evaluator.result(tune=tune), (loss_sum / items if items else None)
