"""Self-describing, atomic checkpoints for exact resume.

A checkpoint is a folder `checkpoints/step-N` (weights, optimizer, scheduler, RNG states of every
process, loop state) written under a temporary name and renamed into place; `checkpoints/index.json`
(latest and best) is replaced atomically after it. A kill at any moment leaves the previous index
pointing at complete folders.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_dir, atomic_write_json


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    """Global micro-batches of the current epoch already trained on: where resume continues."""
    samples: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    train_seconds: float = 0.0
    steady_seconds: float = 0.0
    steady_samples: int = 0
    nonfinite_steps: int = 0
    """Steps skipped because their loss or gradient norm was NaN or infinite (train.max_nonfinite_steps)."""
    nonfinite_streak: int = 0

    @property
    def samples_per_second(self) -> float:
        """Steady-state throughput (steps after the first few); all steps when the run is too short."""
        if self.steady_seconds:
            return self.steady_samples / self.steady_seconds
        return self.samples / max(self.train_seconds, 1e-9)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    def __init__(self, root: Path, keep: int, accelerator: Any) -> None:
        self.root, self.keep, self.acc = Path(root), keep, accelerator
        self.index_path = self.root / "index.json"

    def index(self) -> dict:
        if self.index_path.exists():
            return json.loads(self.index_path.read_text())
        return {"latest": None, "best": None, "all": []}

    def path(self, name: str) -> Path:
        return self.root / name

    def save(self, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: LoopState,
             is_best: bool) -> Path:
        acc = self.acc
        name = f"step-{state.step}"
        final = self.root / name
        rng_dir = self.root / f".rng-{name}"
        # every process saves its own RNG state first; the main process assembles the folder
        rng_dir.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), rng_dir / f"rng-{acc.process_index}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            with atomic_dir(final) as tmp:
                acc.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                for f in rng_dir.iterdir():
                    shutil.copy2(f, tmp / f.name)
                (tmp / "loop_state.json").write_text(json.dumps(asdict(state), indent=2))
            shutil.rmtree(rng_dir, ignore_errors=True)
            idx = self.index()
            names = [n for n in idx["all"] if n != name] + [name]
            best = name if is_best else idx["best"]
            keep = set(names[-self.keep:]) | {best}
            atomic_write_json(self.index_path, {"latest": name, "best": best,
                                                "all": [n for n in names if n in keep]})
            for n in names:
                if n not in keep:
                    shutil.rmtree(self.root / n, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> LoopState | None:
        """Restore the latest checkpoint into the given objects; None when there is none."""
        latest = self.index()["latest"]
        if latest is None:
            return None
        ckpt = self.root / latest
        load_weights(self.acc.unwrap_model(model), ckpt)
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
        rng_file = ckpt / f"rng-{self.acc.process_index}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return LoopState(**json.loads((ckpt / "loop_state.json").read_text()))


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load saved weights into an existing model (tied weights are re-tied by the model)."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
