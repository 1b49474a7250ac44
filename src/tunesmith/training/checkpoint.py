"""Self-describing, atomic checkpoints for exact resume.

A checkpoint is a folder `checkpoints/step-N` (weights, optimizer, scheduler, RNG states of every
process, loop state) written under a temporary name and renamed into place; `checkpoints/index.json`
(latest and best) is replaced atomically after it. A kill or a full disk at any moment leaves the
previous index pointing at complete folders (a full disk is a DiskFull naming what was being written).

Nothing in a checkpoint is unpickled: weights are safetensors, optimizer and torch RNG states are
loaded with `torch.load(weights_only=True)` (tensors, numbers, lists and dicts only), scheduler,
Python/numpy RNG and loop state are JSON. A file planted in a run folder can therefore never run code on `--resume`.
"""
from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import CheckpointError
from ..io import atomic_dir, atomic_write_json, disk_full_names, json_text


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


def save_rng_state(folder: Path, rank: int) -> None:
    """Python and numpy generator states as JSON, torch's (CPU and CUDA) as tensors (`rng-N.pt`: a
    `.safetensors` name would be read as model weights)."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    (folder / f"rng-{rank}.json").write_text(json_text({
        "python": [version, list(keys), gauss],
        "numpy": [kind, np_keys.tolist(), int(pos), int(has_gauss), float(cached)]}))
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    _torch_save({"torch": torch.get_rng_state(), "cuda": cuda}, folder / f"rng-{rank}.pt")


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save through a Python file: given a path, torch writes in C++ and a full disk is only
    "unexpected pos 704 vs 598"; through a file, the file's OSError (ENOSPC) is what it is raised from."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def _checked(path: Path, use: Callable[[Path], Any]) -> Any:
    """`use(path)`, with anything that goes wrong turned into an error naming the file."""
    if not path.exists():
        hint = (" (it was written by an older tunesmith that stored pickles, which are not loaded)"
                if path.name == "scheduler.json" and path.with_suffix(".pt").exists() else "")
        raise CheckpointError(f"checkpoint file {path} is missing{hint}; this checkpoint cannot be resumed")
    try:
        return use(path)
    except CheckpointError:
        raise
    except pickle.UnpicklingError:  # torch's weights_only refusal: its advice to retry unsafely is not ours
        raise CheckpointError(
            f"{path}: refused: it holds pickled Python objects, and a checkpoint holds only tensors and JSON. "
            "It was not unpickled. If you did not put it there, the run folder has been tampered with; "
            "otherwise start a new run.") from None
    except Exception as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(
            f"{path}: cannot be loaded as checkpoint state ({type(e).__name__}: {detail}); the checkpoint is "
            "damaged. Resume from an intact checkpoint or start a new run.") from None


def _load_rng_state(folder: Path, rank: int) -> None:
    def python_numpy(path: Path) -> None:
        st = json.loads(path.read_text())
        version, keys, gauss = st["python"]
        random.setstate((version, tuple(keys), gauss))
        kind, np_keys, pos, has_gauss, cached = st["numpy"]
        np.random.set_state((kind, np.asarray(np_keys, dtype=np.uint32), pos, has_gauss, cached))

    def torch_states(path: Path) -> None:
        st = torch.load(path, map_location="cpu", weights_only=True)
        torch.set_rng_state(st["torch"])
        if st["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda"])

    _checked(folder / f"rng-{rank}.json", python_numpy)
    _checked(folder / f"rng-{rank}.pt", torch_states)


def _index(obj: Any) -> dict:
    """index.json as written by `save`; anything else is a damaged file."""
    if not (isinstance(obj, dict) and {"latest", "best", "all"} <= set(obj)):
        raise ValueError("expected an object with latest, best and all")
    return obj


class CheckpointManager:
    def __init__(self, root: Path, keep: int, accelerator: Any) -> None:
        self.root, self.keep, self.acc = Path(root), keep, accelerator
        self.index_path = self.root / "index.json"

    def index(self) -> dict:
        if self.index_path.exists():
            return _checked(self.index_path, lambda p: _index(json.loads(p.read_text())))
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
        with disk_full_names(final):  # atomic_dir and the index name themselves
            rng_dir.mkdir(parents=True, exist_ok=True)
            save_rng_state(rng_dir, acc.process_index)
        acc.wait_for_everyone()
        if acc.is_main_process:
            with atomic_dir(final) as tmp:
                acc.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
                _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
                (tmp / "scheduler.json").write_text(json_text(scheduler.state_dict()))
                for f in rng_dir.iterdir():
                    shutil.copy2(f, tmp / f.name)
                (tmp / "loop_state.json").write_text(json_text(asdict(state), indent=2))
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

    def latest(self) -> tuple[Path, LoopState] | None:
        """The latest checkpoint's folder and loop state; None when there is none."""
        name = self.index()["latest"]
        if name is None:
            return None
        if not re.fullmatch(r"step-\d+", str(name)):
            raise CheckpointError(f"{self.index_path}: 'latest' is {name!r}, not a checkpoint name (step-N)")
        ckpt = self.root / name
        return ckpt, _checked(ckpt / "loop_state.json", lambda p: LoopState(**json.loads(p.read_text())))

    def load(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> LoopState | None:
        """Restore the latest checkpoint into the given objects; None when there is none."""
        latest = self.latest()
        if latest is None:
            return None
        ckpt, state = latest
        _checked(ckpt, lambda p: load_weights(self.acc.unwrap_model(model), p))
        _checked(ckpt / "optimizer.pt",
                 lambda p: optimizer.load_state_dict(torch.load(p, map_location="cpu", weights_only=True)))
        _checked(ckpt / "scheduler.json", lambda p: scheduler.load_state_dict(json.loads(p.read_text())))
        if (ckpt / f"rng-{self.acc.process_index}.json").exists():  # absent when resumed on more processes
            _load_rng_state(ckpt, self.acc.process_index)
        return state


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load saved weights into an existing model (tied weights are re-tied by the model)."""
    from safetensors.torch import load_file

    from ..lora import ADAPTER_WEIGHTS, is_peft, load_adapter

    if is_peft(model) and (Path(folder) / ADAPTER_WEIGHTS).exists():
        return load_adapter(model, folder)
    files = sorted(Path(folder).glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # safetensors stores a tied parameter once, under one of its names: the others are loaded with it
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    tied = {n for group in names.values() if len(group) > 1 and any(n in state for n in group) for n in group}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
