"""The one training loop. It knows nothing about tasks.

It asks the task for a summed loss and the number of items it covers, so that a step's loss is
normalised by the items of the whole accumulated, all-process batch: gradient accumulation and
multi-process runs then give the same update as one big batch. Callbacks observe events and may
hand back a Control; only the loop decides what happens.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..errors import TrainingDiverged
from .batching import batch_plan, shard
from .checkpoint import CheckpointManager, LoopState

STEADY_AFTER = 10  # steps excluded from steady-state throughput (allocator and thread warm-up)


@dataclass
class Control:
    stop: bool = False
    prune: bool = False
    """At an "eval" event: end the run now as pruned (`TrainingLoop.pruned` says why); no checkpoint is
    written, and the run neither tests nor exports."""


@dataclass
class Event:
    kind: str  # "step" | "eval" | "best" | "checkpoint" | "early_stop" | "end"
    state: LoopState
    data: dict = field(default_factory=dict)


Callback = Callable[[Event], "Control | None"]
#: what the loop's `evaluate(model)` returns: (metrics with "loss", logs for the run folder: EvalResult.logs)
Evaluation = tuple[dict[str, Any], dict[str, Any]]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without decay on biases and norm weights; fused kernels where the device has them."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)


def clip_gradients(model: torch.nn.Module, max_norm: float, accelerator: Any) -> float:
    """Clip the gradients' total norm to max_norm; return the norm before clipping.

    With whole (unsharded) gradients on CPU the norm is summed from BLAS dot products, 2-4x faster
    than `vector_norm` there, and gradients are scaled only when the norm is over the limit (the
    unconditional scaling in torch avoids a device sync, which CPU tensors do not need). The result
    is torch's clip_grad_norm_ to float rounding. Sharded or accelerator runs go through Accelerate,
    except that an infinite max_norm (clipping off: the loop only needs the norm to catch NaN) on whole
    gradients measures without torch's scaling pass.
    """
    from accelerate.utils import DistributedType

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    whole = accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU,
                                             DistributedType.MULTI_GPU) and not any(g.is_sparse for g in grads)
    if accelerator.device.type != "cpu" or not whole:
        if whole and math.isinf(max_norm):
            accelerator.unscale_gradients()
            return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
        return float(accelerator.clip_grad_norm_(model.parameters(), max_norm))
    accelerator.unscale_gradients()
    flat = [g.reshape(-1).float() for g in grads]  # fp16 dot products overflow above a norm of 256
    norm = float(torch.stack([torch.dot(g, g) for g in flat]).sum().sqrt())
    coef = max_norm / (norm + 1e-6)  # torch's formula, so clipping starts at the same point
    # a non-finite norm scales nothing: the loop skips that step and drops its gradients with zero_grad
    if math.isfinite(norm) and coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return norm


def total_steps(batches_per_epoch: Callable[[int], int], cfg: TrainConfig) -> int:
    """train.max_steps, or the optimizer steps of train.epochs epochs, counted on each epoch's own plan
    (`batches_per_epoch(epoch)`: with train.batch_tokens every epoch cuts a different number of batches);
    a fractional last epoch runs that share of its steps."""
    if cfg.max_steps:
        return cfg.max_steps
    steps = lambda epoch: math.ceil(batches_per_epoch(epoch) / cfg.grad_accum)  # noqa: E731
    whole, part = int(cfg.epochs), cfg.epochs - int(cfg.epochs)
    return max(1, sum(steps(e) for e in range(whole)) + (math.ceil(part * steps(whole)) if part else 0))


def _crosses(before: int, after: int, span: float) -> bool:
    """Whether going from `before` to `after` batches of an epoch passes a multiple of `span` batches
    (train.eval_every as a fraction of an epoch); counted in batches, so a resumed run evaluates where
    the uninterrupted one did."""
    return math.floor(after / span + 1e-9) > math.floor(before / span + 1e-9)


class TrainingLoop:
    def __init__(self, *, model: torch.nn.Module, task: Any, train_data: Any, lengths: np.ndarray,
                 cfg: TrainConfig, accelerator: Any, evaluate: Callable[[torch.nn.Module], Evaluation], metric: str,
                 higher_is_better: bool, checkpoints: CheckpointManager, callbacks: list[Callback] = (),
                 pad_to_multiple_of: int | None = None, classes: np.ndarray | None = None) -> None:
        from transformers import get_scheduler

        self.task, self.data, self.lengths, self.cfg, self.classes = task, train_data, lengths, cfg, classes
        self.acc, self.evaluate, self.metric, self.ckpt = accelerator, evaluate, metric, checkpoints
        self.callbacks = list(callbacks)
        self.collate = partial(task.collate, pad_to_multiple_of=pad_to_multiple_of)
        self.world = accelerator.num_processes
        if cfg.batch_size < self.world:
            raise ValueError(f"train.batch_size {cfg.batch_size} is smaller than the {self.world} processes")
        model = model.to(accelerator.device)
        optimizer = build_optimizer(model, cfg)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.total_steps = total_steps(lambda epoch: len(self._plan(epoch)), cfg)
        self.scheduler = get_scheduler(cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup",
                                       self.optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)
        self.higher_better = higher_is_better
        self.pruned: str | None = None  # why a search's pruner stopped the run (set by _eval_and_save)

    def _plan(self, epoch: int) -> list[np.ndarray]:
        """The global batches of an epoch: the one plan both training and the step count read."""
        cfg = self.cfg
        return batch_plan(self.lengths, cfg.batch_size, cfg.seed, epoch, cfg.bucket_batches if cfg.batching == "bucket"
                          else 1, self.world, cfg.batch_tokens, self.classes)

    def _emit(self, kind: str, state: LoopState, **data: Any) -> Control:
        out = Control()
        for cb in self.callbacks:
            ctl = cb(Event(kind, state, data))
            out.stop, out.prune = out.stop or bool(ctl and ctl.stop), out.prune or bool(ctl and ctl.prune)
        return out

    def _epoch_loader(self, batches: list[np.ndarray], epoch: int) -> DataLoader:
        """The epoch's loader, with its own seeded generator: iterating a DataLoader draws a base seed,
        which from torch's global generator would shift every later dropout mask of a run resumed
        mid-epoch. `run` makes that one global draw itself at the start of each epoch instead (see there)."""
        mine = [shard(b, self.acc.process_index, self.world).tolist() for b in batches]
        return DataLoader(self.data, batch_sampler=mine, collate_fn=self.collate,
                          num_workers=self.cfg.num_workers, pin_memory=self.acc.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.cfg.seed + epoch))

    def _step(self, micro: list[Any]) -> tuple[float, float, bool]:
        """One optimizer step over an accumulation window; returns (mean loss, grad norm, diverging).

        A window whose loss or gradient norm is not finite updates nothing (`diverging` is then True); a
        window with no item to learn from updates nothing either, and is not diverging (loss 0).
        Every process decides alike: the loss is summed over processes and the norm is of the global
        gradient. With fp16 the grad scaler skips such an update itself and lowers its scale; a
        non-finite norm with a finite loss is its routine overflow, not divergence.
        """
        device = self.acc.device
        n_items = float(sum(self.task.count_items(b) for b in micro))
        items = torch.tensor(n_items, device=device)
        if self.world > 1:
            items = self.acc.reduce(items, reduction="sum")
            n_items = float(items)
        if n_items == 0:
            # no labelled item in the whole window (every prompt filled model.max_length): nothing to learn,
            # and 0/0 is no divergence. Nothing is run or updated; the schedule still advances
            self.scheduler.step()
            return 0.0, 0.0, False
        self.model.train()
        loss_total = torch.zeros((), device=device)
        for k, b in enumerate(micro):
            b = b.to(device, non_blocking=True)
            sync = k == len(micro) - 1
            with nullcontext() if sync or self.world == 1 else self.acc.no_sync(self.model):
                loss_sum, _ = self.task.forward(self.model, b, "train")
                # DDP averages gradients over processes, so scale by world size to get a global mean
                self.acc.backward(loss_sum * self.world / items)
            loss_total += loss_sum.detach()
        # without clipping the norm is still measured (an infinite limit scales nothing): a step with
        # NaN gradients is skipped, never applied
        grad_norm = clip_gradients(self.model, self.cfg.max_grad_norm or math.inf, self.acc)
        if self.world > 1:
            loss_total = self.acc.reduce(loss_total, reduction="sum")
        loss = float(loss_total / items)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        scaler = getattr(self.acc, "scaler", None)
        if finite or scaler is not None:
            self.optimizer.step()
        self.scheduler.step()  # a skipped step still counts: the schedule stays aligned with total_steps
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, not math.isfinite(loss) or (not finite and scaler is None)

    def _eval_and_save(self, state: LoopState) -> bool:
        """Evaluate, track the best, checkpoint; True when early stopping or the pruner ends the run."""
        metrics, logs = self.evaluate(self.model)
        value = metrics[self.metric]  # None when undefined (e.g. correlation of constant predictions)
        # NaN compares false with everything: without this check the first NaN evaluation stays "best"
        finite = all(v is None or math.isfinite(v) for v in (value, metrics.get("loss")))
        better = value is not None and finite and (state.best_metric is None or (
            value > state.best_metric if self.higher_better else value < state.best_metric))
        if better:
            state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
        else:
            state.bad_evals += 1
        # epochs: the share of the data trained on, which a pruner compares across batch sizes
        if self._emit("eval", state, metrics=metrics, logs=logs, is_best=better,
                      epochs=state.samples / len(self.data)).prune:
            self.pruned = f"pruned at step {state.step}: {self.metric} {value}"
            return True
        path = self.ckpt.save(self.model, self.optimizer, self.scheduler, state, is_best=better)
        self._emit("checkpoint", state, path=str(path), is_best=better)
        patience = self.cfg.early_stopping_patience
        if patience and state.bad_evals >= patience:
            self._emit("early_stop", state, best_step=state.best_step, best_metric=state.best_metric)
            return True
        return False

    def run(self, resume: bool = False) -> LoopState:
        cfg = self.cfg
        state = (self.ckpt.load(self.model, self.optimizer, self.scheduler) if resume else None) or LoopState()
        self.state = state  # where a run that ended by an exception got to
        if resume:
            self._emit("resume", state)
        stop = state.step >= self.total_steps
        while not stop:
            batches = self._plan(state.epoch)
            windows = [batches[i:i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
            done = state.batch_in_epoch
            if done == 0:
                # the one draw from torch's global generator that iterating a default DataLoader makes at the
                # start of an epoch (its base seed): the Hugging Face Trainer's loader makes it, so the same seed
                # gives both tools the same dropout masks, and comparisons measure the tools. A run resumed
                # mid-epoch restores the generator state after this draw, so it is not repeated there.
                torch.empty((), dtype=torch.int64).random_()
            loader = iter(self._epoch_loader(batches[done:], state.epoch))
            for window in windows[done // cfg.grad_accum:]:
                t0 = time.perf_counter()
                micro = [next(loader) for _ in window]
                n = int(sum(len(b) for b in window))
                step_lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
                loss, grad_norm, diverging = self._step(micro)
                state.nonfinite_streak = state.nonfinite_streak + 1 if diverging else 0
                state.nonfinite_steps += diverging
                dt = time.perf_counter() - t0
                state.step += 1
                state.samples += n
                before = state.batch_in_epoch
                state.batch_in_epoch += len(window)
                state.train_seconds += dt
                if state.step > STEADY_AFTER:
                    state.steady_seconds += dt
                    state.steady_samples += n
                epoch_done = state.batch_in_epoch >= len(batches)
                if epoch_done:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                tokens = int(sum(int(self.lengths[b].sum()) for b in window))  # real (unpadded) tokens
                stop = self._emit("step", state, loss=loss, grad_norm=grad_norm, samples=n, tokens=tokens, seconds=dt,
                                  lr=self.scheduler.get_last_lr()[0], total_steps=self.total_steps).stop
                if state.nonfinite_streak >= cfg.max_nonfinite_steps:
                    self._emit("end", state)
                    raise TrainingDiverged(
                        f"training diverged: the loss or gradient norm was NaN or infinite for "
                        f"{state.nonfinite_streak} steps in a row (steps {state.step - state.nonfinite_streak + 1}"
                        f"-{state.step}, learning rate {step_lr:.3g} at step {state.step}); no model was exported. "
                        f"Lower train.lr (it is {cfg.lr:g}), keep train.max_grad_norm on"
                        + (f" (it is {cfg.max_grad_norm:g})" if cfg.max_grad_norm else " (it is off)")
                        + (", or train in bf16 or fp32 rather than fp16" if self.acc.mixed_precision == "fp16"
                           else ""))
                last = state.step >= self.total_steps
                every = cfg.eval_every
                due = (every == "epoch" and epoch_done) or \
                      (isinstance(every, int) and state.step % every == 0) or \
                      (isinstance(every, float) and (epoch_done or _crosses(before, before + len(window),
                                                                             every * len(batches))))
                if due or last or stop:
                    stop = self._eval_and_save(state) or stop
                stop = stop or last
                if stop or epoch_done:
                    break
        self._emit("end", state)
        return state
