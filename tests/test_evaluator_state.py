"""Multi-process evaluation moves only each evaluator's state: per task, the states of evaluators fed parts of
a split, pickled alone and merged, give exactly the result of one evaluator fed the whole split.

Each task's contract fixture (tests/contract/) on its untrained tiny model: merge equality needs no training.
The pickler refuses the task, the data table, the tokenizer, a model, a tensor and any evaluator, so a state
that still held one of them fails here rather than being sent between processes.
"""
from __future__ import annotations

import io
import json
import pickle
from dataclasses import asdict
from typing import Any

import pytest
import torch
from test_task_contract import _config

import accelerate.utils
from tunesmith.config import load_config
from tunesmith.data.prepare import Table
from tunesmith.evaluation import inference
from tunesmith.models import load_model
from tunesmith.run import prepare
from tunesmith.tasks.base import task_class, task_names
from tunesmith.training.batching import eval_plan


class _StateOnly(pickle.Pickler):
    """A pickler that fails on any object multi-process evaluation must not send."""

    def __init__(self, file: io.BytesIO, refused: tuple[type, ...]) -> None:
        super().__init__(file)
        self.refused = refused

    def persistent_id(self, obj: Any) -> None:
        if isinstance(obj, self.refused):
            raise AssertionError(f"the gathered state holds a {type(obj).__name__}")
        return None


def _sent(obj: Any, refused: tuple[type, ...]) -> Any:
    """`obj` after the trip between processes: pickled (refusing `refused`) and read back."""
    buf = io.BytesIO()
    _StateOnly(buf, refused).dump(obj)
    return pickle.loads(buf.getvalue())


def _same_result(a: Any, b: Any) -> None:
    """Equal EvalResults, floats exactly (JSON writes the shortest exact repr; NaN equals NaN)."""
    assert json.dumps(asdict(a), sort_keys=True, default=repr) == json.dumps(asdict(b), sort_keys=True, default=repr)


class _Gathered(Exception):
    """Raised by the fake gather of the first rank run: its payload is recorded, its own result not needed."""


@pytest.fixture(scope="module", params=task_names())
@torch.no_grad()
def split(request: pytest.FixtureRequest, tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One task's validation split on its untrained model: the batches with their outputs (one pass, as
    `evaluate_split` makes them on a CPU), the one-evaluator result and loss, and what a state must not hold."""
    from transformers import PreTrainedTokenizerBase

    import datasets

    cfg = load_config(_config(request.param, tiny_models, tmp_path_factory.mktemp(request.param), "merge"))
    p = prepare(cfg)
    torch.manual_seed(0)
    model = load_model(p.task, p.model_name, cfg.model)[0].eval()
    table, features = p.data.splits["validation"], p.tokenized["validation"]
    whole, fed, loss_sum, items = p.task.evaluator(table), [], 0.0, 0
    for b in eval_plan(features["length"], cfg.eval.batch_size):
        batch = p.task.collate(features.__getitems__(b.tolist()))
        loss, outputs = p.task.forward(model, batch, "predict")
        whole.add(batch, outputs)
        fed.append((batch, outputs))
        loss_sum, items = loss_sum + float(loss), items + p.task.count_items(batch)
    refused = (Table, task_class(p.task.name), type(whole), torch.nn.Module, torch.Tensor, PreTrainedTokenizerBase,
               datasets.Dataset)
    return {"p": p, "model": model, "fed": fed, "whole": whole.result(), "loss": loss_sum / items, "items": items,
            "refused": refused}


def test_halves_merged_through_their_pickled_states_give_the_whole_result(split: dict) -> None:
    p, fed = split["p"], split["fed"]
    assert len(fed) >= 2
    first, second = (p.task.evaluator(p.data.splits["validation"]) for _ in range(2))
    for k, (batch, outputs) in enumerate(fed):
        (first if k < len(fed) // 2 else second).add(batch, outputs)
    first.merge(_sent(second.state(), split["refused"]))
    _same_result(first.result(), split["whole"])


@torch.no_grad()
def test_evaluate_split_gathers_only_states(split: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes (faked: rank 1 runs to its gather, then rank 0 gets both payloads) give the one-evaluator
    result; the loss is the processes' summed losses over their summed items (the one-process sum in another
    order: equal to float rounding)."""
    p, model, refused = split["p"], split["model"], split["refused"]
    args = (model, p.task, p.data.splits["validation"], p.tokenized["validation"], p.cfg.eval.batch_size, "cpu")
    sent: list[Any] = []

    class Process:
        def __init__(self, rank: int) -> None:
            self.process_index, self.num_processes = rank, 2

        def unwrap_model(self, m: torch.nn.Module) -> torch.nn.Module:
            return m

    def gather_object(obj: list) -> list:
        sent[:0] = _sent(obj, refused)  # in rank order: rank 0's payload before rank 1's
        if len(sent) == 1:
            raise _Gathered
        return sent

    monkeypatch.setattr(accelerate.utils, "gather_object", gather_object)
    with pytest.raises(_Gathered):
        inference.evaluate_split(*args, accelerator=Process(1))
    two, loss = inference.evaluate_split(*args, accelerator=Process(0))
    _same_result(two, split["whole"])
    (_, loss0, n0), (_, loss1, n1) = sent
    assert (loss, n0 + n1) == ((loss0 + loss1) / (n0 + n1), split["items"])
    assert loss == pytest.approx(split["loss"], rel=1e-12, abs=0)
