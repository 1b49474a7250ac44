"""The training loop's mechanics on a model and a task small enough to compute by hand.

The model is y = w*x + b (two parameters, registered nowhere); the task is a weighted squared error,
holding only what `TrainingLoop` asks of a task (collate, count_items, forward). Every expected number
below comes from closed forms written out here, never from running the code under test: the
least-squares gradient, torch's AdamW update rule (decoupled weight decay, bias-corrected moments),
torch's clipping coefficient max_norm / (norm + 1e-6), and the Hugging Face schedule formulas.

The loop is always built through its public constructor.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tunesmith.config import TrainConfig
from tunesmith.errors import TrainingDiverged
from tunesmith.training.checkpoint import CheckpointManager
from tunesmith.training.loop import TrainingLoop
from tunesmith.types import Batch

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.AdamW's defaults, which build_optimizer keeps
CLIP_EPS = 1e-6  # torch's clip_grad_norm_: coef = max_norm / (norm + 1e-6)

# the data: x, y and a loss weight; the last row has weight 0 (a padded/ignored item: count_items skips it),
# so normalising per micro-batch instead of per accumulated window gives a different gradient
X = [1.0, 2.0, 3.0, -1.0, 0.5]
Y = [2.0, 3.0, 7.0, 0.0, 1.0]
C = [1.0, 1.0, 1.0, 1.0, 0.0]
W0, B0 = 0.5, 0.0


class Line(torch.nn.Module):
    """y = w*x + b. `w` is a 1x1 matrix (ndim 2: in AdamW's weight-decay group), `b` a vector (ndim 1:
    no decay), as build_optimizer splits a linear layer's weight and bias."""

    def __init__(self, w: float = W0, b: float = B0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[w]], dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor([b], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w[0, 0] + self.b[0]

    def save_pretrained(self, folder: Path, safe_serialization: bool = True) -> None:  # what a checkpoint calls
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                  str(Path(folder) / "model.safetensors"))

    def params(self) -> tuple[float, float]:
        return float(self.w.detach()[0, 0]), float(self.b.detach()[0])


class WeightedSquaredError:
    """The whole of what the loop needs from a task: collate, count_items, forward (summed loss).

    `poison`: training forward passes (1-based, one per micro-batch) whose loss is made NaN or infinite."""

    def __init__(self, poison: dict[int, float] | None = None) -> None:
        self.poison, self.calls = dict(poison or {}), 0

    def collate(self, rows: list[dict], pad_to_multiple_of: int | None = None) -> Batch:
        col = lambda k: torch.tensor([r[k] for r in rows], dtype=torch.float64)  # noqa: E731
        return Batch(inputs={"x": col("x")}, targets={"y": col("y"), "c": col("c")})

    def count_items(self, batch: Batch) -> int:
        return int(batch.targets["c"].sum())

    def forward(self, model: torch.nn.Module, batch: Batch, mode: str) -> tuple[torch.Tensor, Any]:
        pred = model(batch.inputs["x"])
        loss = (batch.targets["c"] * (pred - batch.targets["y"]) ** 2).sum()
        if mode == "train":
            self.calls += 1
            if self.calls in self.poison:
                loss = loss * self.poison[self.calls] if math.isnan(self.poison[self.calls]) else \
                    loss + self.poison[self.calls]
        return loss, pred


def rows() -> list[dict]:
    return [{"x": x, "y": y, "c": c} for x, y, c in zip(X, Y, C)]


class Recorder:
    """Step events (loss, grad_norm, lr after the step, the weights after the step) and, from an optimizer
    pre-hook, what each real update received: the (clipped) gradients and the rate."""

    def __init__(self, model: Line) -> None:
        self.model, self.events, self.updates = model, [], []

    def __call__(self, event: Any) -> None:
        if event.kind == "step":
            self.events.append({**{k: event.data[k] for k in ("loss", "grad_norm", "lr")},
                                "params": self.model.params()})

    def pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.updates.append({"lr": optimizer.param_groups[0]["lr"],
                             "grad": (float(self.model.w.grad[0, 0]), float(self.model.b.grad[0]))})


def build(tmp_path: Path, task: WeightedSquaredError | None = None, data: list[dict] | None = None,
          **train: Any) -> tuple[TrainingLoop, Recorder]:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # as run.py does: no earlier test's precision
    accelerator = Accelerator(mixed_precision="no", cpu=True)
    data = rows() if data is None else data
    cfg = TrainConfig(**{"batch_size": len(data), "lr": 0.1, "weight_decay": 0.0, "warmup_ratio": 0.0,
                         "scheduler": "constant", "max_grad_norm": None, "eval_every": 10_000, "seed": 0, **train})
    model = Line()
    rec = Recorder(model)
    loop = TrainingLoop(model=model, task=task or WeightedSquaredError(), train_data=data,
                        lengths=torch.ones(len(data), dtype=torch.int64).numpy(), cfg=cfg, accelerator=accelerator,
                        evaluate=lambda m: ({"loss": 0.0}, {}), metric="loss", higher_is_better=False,
                        checkpoints=CheckpointManager(tmp_path / "checkpoints", 1, accelerator), callbacks=[rec])
    assert loop.model is model  # one process on CPU: nothing wraps the model
    torch_optimizer = getattr(loop.optimizer, "optimizer", loop.optimizer)  # under Accelerate's wrapper
    torch_optimizer.register_step_pre_hook(rec.pre_step)
    return loop, rec


# ---------------------------------------------------------------- the hand computations

def hand_loss_grad(w: float, b: float) -> tuple[float, tuple[float, float]]:
    """Mean weighted squared error over the counted items and its gradient:
    L = 1/N sum c_i r_i^2, r_i = w x_i + b - y_i, N = sum c_i; dL/dw = 2/N sum c_i r_i x_i, dL/db = 2/N sum c_i r_i."""
    n = sum(C)
    r = [w * x + b - y for x, y in zip(X, Y)]
    loss = sum(c * ri ** 2 for c, ri in zip(C, r)) / n
    return loss, (2 / n * sum(c * ri * x for c, ri, x in zip(C, r, X)), 2 / n * sum(c * ri for c, ri in zip(C, r)))


def hand_clip(g: tuple[float, float], max_norm: float | None) -> tuple[tuple[float, float], float]:
    norm = math.hypot(*g)
    coef = 1.0 if max_norm is None else max_norm / (norm + CLIP_EPS)
    return ((g[0] * coef, g[1] * coef) if coef < 1 else g), norm


def hand_run(lrs: list[float | None], weight_decay: float = 0.0, max_norm: float | None = None) -> list[dict]:
    """Full-batch AdamW (torch's update rule) from (W0, B0), one step per rate; None: a skipped step.
    AdamW: p <- p (1 - lr wd) [w only]; m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps), t counting the updates made."""
    p, m, v, t, out = [W0, B0], [0.0, 0.0], [0.0, 0.0], 0, []
    for lr in lrs:
        loss, g = hand_loss_grad(*p)
        g, norm = hand_clip(g, max_norm)
        if lr is not None:
            t += 1
            for k in (0, 1):
                if k == 0:
                    p[k] *= 1 - lr * weight_decay
                m[k] = BETA1 * m[k] + (1 - BETA1) * g[k]
                v[k] = BETA2 * v[k] + (1 - BETA2) * g[k] ** 2
                p[k] -= lr / (1 - BETA1 ** t) * m[k] / (math.sqrt(v[k]) / math.sqrt(1 - BETA2 ** t) + EPS)
        out.append({"loss": loss, "grad": g, "grad_norm": norm, "params": tuple(p)})
    return out


def test_the_hand_computation_at_the_start() -> None:
    # at w=0.5, b=0: predictions 0.5, 1, 1.5, -0.5 (the fifth, 0.25, has weight 0); residuals -1.5, -2, -5.5, -0.5
    loss, g = hand_loss_grad(W0, B0)
    assert loss == pytest.approx((2.25 + 4 + 30.25 + 0.25) / 4)  # 9.1875
    assert g == pytest.approx((2 / 4 * (-1.5 - 4 - 16.5 + 0.5), 2 / 4 * (-1.5 - 2 - 5.5 - 0.5)))  # (-10.75, -4.75)
    # AdamW's first update is lr * g / (|g| + eps) per coordinate: both grow by 0.1 (to within eps)
    assert hand_run([0.1])[0]["params"] == pytest.approx((0.6, 0.1), abs=1e-8)


# ---------------------------------------------------------------- gradient accumulation

@pytest.mark.parametrize("batch_size,grad_accum", [(2, 3), (1, 5), (3, 2)])
def test_accumulated_micro_batches_equal_the_full_batch(tmp_path: Path, batch_size: int, grad_accum: int) -> None:
    """5 rows in micro-batches of `batch_size`, `grad_accum` of them per step: each step's window is the whole
    epoch, so every step must equal one full-batch step: the loss normalised by the window's 4 counted
    items (not averaged per micro-batch, whose counts differ: 2+2+0, 1+1+1+1+0, 3+1)."""
    steps = 4
    full, full_rec = build(tmp_path / "full", max_steps=steps, weight_decay=0.1)
    full.run()
    acc, acc_rec = build(tmp_path / "acc", max_steps=steps, weight_decay=0.1, batch_size=batch_size,
                         grad_accum=grad_accum)
    acc.run()
    hand = hand_run([0.1] * steps, weight_decay=0.1)
    for rec in (full_rec, acc_rec):
        assert [e["loss"] for e in rec.events] == pytest.approx([h["loss"] for h in hand], rel=1e-6)
        assert [u["grad"] for u in rec.updates] == [pytest.approx(h["grad"], rel=1e-6) for h in hand]
        assert [e["params"] for e in rec.events] == [pytest.approx(h["params"], rel=1e-6) for h in hand]
    for a, f in zip(acc_rec.events, full_rec.events):
        assert a["loss"] == pytest.approx(f["loss"], rel=1e-6, abs=1e-6)
        assert a["params"] == pytest.approx(f["params"], rel=1e-6, abs=1e-6)


def test_total_steps_count_accumulation_windows_and_a_fractional_epoch(tmp_path: Path) -> None:
    # 5 rows in batches of 2: 3 batches an epoch; grad_accum 2: ceil(3/2) = 2 steps an epoch;
    # 1.5 epochs: 2 + ceil(0.5 * 2) = 3 steps
    loop, rec = build(tmp_path, epochs=1.5, batch_size=2, grad_accum=2)
    assert loop.total_steps == 3
    state = loop.run()
    assert state.step == 3 and len(rec.updates) == 3
    assert (state.epoch, state.batch_in_epoch) == (1, 2)  # the second epoch's first window (2 batches)
    assert state.samples == 5 + 4


# ---------------------------------------------------------------- clipping

def test_clipping_scales_the_gradient_to_max_norm(tmp_path: Path) -> None:
    # step 1's gradient (-10.75, -4.75) has norm sqrt(138.125) = 11.7526...; clipped to norm 1 it is
    # (-10.75, -4.75) / (11.7526 + 1e-6) = (-0.91469, -0.40417)
    loop, rec = build(tmp_path, max_steps=3, max_grad_norm=1.0)
    loop.run()
    norm = math.sqrt(10.75 ** 2 + 4.75 ** 2)
    assert rec.events[0]["grad_norm"] == pytest.approx(norm, rel=1e-6)  # reported: the norm before clipping
    assert rec.updates[0]["grad"] == pytest.approx((-10.75 / (norm + 1e-6), -4.75 / (norm + 1e-6)), rel=1e-6)
    assert math.hypot(*rec.updates[0]["grad"]) == pytest.approx(1.0, rel=1e-6)
    hand = hand_run([0.1] * 3, max_norm=1.0)
    assert [u["grad"] for u in rec.updates] == [pytest.approx(h["grad"], rel=1e-6) for h in hand]
    assert [e["grad_norm"] for e in rec.events] == pytest.approx([h["grad_norm"] for h in hand], rel=1e-6)
    assert [e["params"] for e in rec.events] == [pytest.approx(h["params"], rel=1e-6) for h in hand]
    # and clipping is what made the difference: unclipped, Adam's steps 2 and 3 land elsewhere
    unclipped = hand_run([0.1] * 3)
    assert abs(unclipped[2]["params"][1] - hand[2]["params"][1]) > 1e-3


def test_a_gradient_under_max_norm_is_not_scaled(tmp_path: Path) -> None:
    loop, rec = build(tmp_path, max_steps=2, max_grad_norm=100.0)
    loop.run()
    assert rec.updates[0]["grad"] == pytest.approx((-10.75, -4.75), rel=1e-9)
    assert [e["params"] for e in rec.events] == [pytest.approx(h["params"], rel=1e-6) for h in hand_run([0.1] * 2)]


# ---------------------------------------------------------------- the learning-rate schedule

def hand_rate(scheduler: str, s: int, peak: float, warmup: int, total: int) -> float:
    """The rate after s scheduler steps (Hugging Face's get_*_schedule_with_warmup)."""
    if s < warmup:
        return peak * s / warmup
    if scheduler == "constant":
        return peak
    progress = (s - warmup) / (total - warmup)
    if scheduler == "linear":
        return peak * max(0.0, 1 - progress)
    return peak * max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant"])
def test_the_rate_each_step_uses_follows_warmup_then_decay(tmp_path: Path, scheduler: str) -> None:
    # 8 steps, warmup_ratio 0.3: ceil(0.3 * 8) = 3 warmup steps. Step k (1-based) uses the rate after k-1
    # scheduler steps: linear 0, 0.1/3, 0.2/3, 0.1, 0.08, 0.06, 0.04, 0.02
    loop, rec = build(tmp_path, max_steps=8, warmup_ratio=0.3, scheduler=scheduler)
    loop.run()
    used = [hand_rate(scheduler, k, 0.1, 3, 8) for k in range(8)]
    if scheduler == "linear":
        assert used == pytest.approx([0, 0.1 / 3, 0.2 / 3, 0.1, 0.08, 0.06, 0.04, 0.02])
    if scheduler == "cosine":  # 0.05 (1 + cos(pi (k-3)/5)) after warmup
        assert used[3:] == pytest.approx([0.05 * (1 + math.cos(math.pi * k / 5)) for k in range(5)])
    assert [u["lr"] for u in rec.updates] == pytest.approx(used, rel=1e-12, abs=1e-15)
    # the step event reports the rate after the step: the next step's
    assert [e["lr"] for e in rec.events] == pytest.approx([hand_rate(scheduler, k, 0.1, 3, 8) for k in range(1, 9)],
                                                          rel=1e-12, abs=1e-15)
    assert [e["params"] for e in rec.events] == [pytest.approx(h["params"], rel=1e-6) for h in hand_run(used)]
    assert rec.events[0]["params"] == (W0, B0)  # a zero rate moves nothing


# ---------------------------------------------------------------- non-finite steps

@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nonfinite_step_changes_no_weight_and_is_counted(tmp_path: Path, bad: float) -> None:
    # step 2's loss is NaN (NaN gradients too) or +inf (finite gradients): it is skipped: no update, its
    # gradients dropped, Adam's step count not advanced; the schedule still advances (linear, no warmup,
    # 4 steps: the real updates use 0.1, then 0.05 and 0.025, the rates after 2 and 3 scheduler steps)
    loop, rec = build(tmp_path, task=WeightedSquaredError(poison={2: bad}), max_steps=4, scheduler="linear")
    state = loop.run()
    assert state.nonfinite_steps == 1 and state.nonfinite_streak == 0 and state.step == 4
    assert rec.events[1]["params"] == rec.events[0]["params"]  # exactly the weights before the step
    loss = rec.events[1]["loss"]
    assert math.isnan(loss) if math.isnan(bad) else loss == math.inf
    assert [u["lr"] for u in rec.updates] == pytest.approx([0.1, 0.05, 0.025])
    hand = hand_run([0.1, None, 0.05, 0.025])
    assert [e["params"] for e in rec.events] == [pytest.approx(h["params"], rel=1e-6) for h in hand]
    assert [u["grad"] for u in rec.updates] == [pytest.approx(h["grad"], rel=1e-6) for h in (hand[0], *hand[2:])]
    assert [e["loss"] for e in rec.events[2:]] == pytest.approx([h["loss"] for h in hand[2:]], rel=1e-6)
    state_of = getattr(loop.optimizer, "optimizer", loop.optimizer).state
    assert {int(s["step"]) for s in state_of.values()} == {3}  # three real updates


def test_nonfinite_steps_in_a_row_stop_the_run(tmp_path: Path) -> None:
    loop, rec = build(tmp_path, task=WeightedSquaredError(poison={2: math.nan, 3: math.nan}), max_steps=6,
                      max_nonfinite_steps=2)
    with pytest.raises(TrainingDiverged, match=r"2 steps in a row \(steps 2-3"):
        loop.run()
    assert len(rec.events) == 3 and len(rec.updates) == 1
    assert rec.events[2]["params"] == rec.events[0]["params"] == pytest.approx(hand_run([0.1])[0]["params"], rel=1e-6)
    assert (loop.state.nonfinite_steps, loop.state.nonfinite_streak) == (2, 2)


def test_a_finite_step_between_nonfinite_ones_resets_the_streak(tmp_path: Path) -> None:
    loop, rec = build(tmp_path, task=WeightedSquaredError(poison={2: math.nan, 4: math.inf}), max_steps=5,
                      max_nonfinite_steps=2)
    state = loop.run()
    assert (state.step, state.nonfinite_steps, state.nonfinite_streak) == (5, 2, 0)
    assert [e["params"] for e in rec.events] == \
        [pytest.approx(h["params"], rel=1e-6) for h in hand_run([0.1, None, 0.1, None, 0.1])]
