#!/usr/bin/env python
"""Stress test of how search workers claim grid points on one SQLite study (issue 22, item 2).

Each run makes a fresh SQLite study with `open_study(create=True)` (which queues the grid), then starts
2 or 3 worker processes at the same moment (a barrier); each opens the study with
`open_study(create=False)` and runs `work()`, tunesmith's real worker loop, objective and claim. Only
`run.train` is replaced: it takes the trial folder's real lock (as `train` does), logs the grid point,
sleeps a little and returns a score, so a run costs a second, not a training.

A point "run twice" is one the fake `train` was called for more than once; a point "lost" is one with no
completed trial at the end. Prints both per run and exits 1 if any run has either, or a worker failed.

    python bench/search_claim_stress.py [--runs 50] [--points 6]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import tunesmith.run  # noqa: E402  (imported before the fork: workers start in milliseconds)
from tunesmith.config import load_config  # noqa: E402
import tunesmith.hpsearch  # noqa: E402
from tunesmith.hpsearch import Search, grid_points, open_study, work  # noqa: E402
from tunesmith.rundir import RunLock  # noqa: E402

LRS = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3]


def make_search(folder: Path, points: int) -> Search:
    """What `resolve` returns for a grid over train.lr x train.warmup_ratio, without reading data."""
    space = {"train.lr": {"choice": LRS[: max(1, points // 2)]}, "train.warmup_ratio": {"choice": [0.0, 0.1]}}
    cfg = load_config({"model": {"name": str(folder / "no-model")}, "data": {"train": str(folder / "no.csv")},
                       "output_dir": str(folder / "study"), "search": {"method": "grid", "space": space}})
    spec = cfg.search
    base = cfg.model_copy(update={"search": None})
    study_dir = Path(base.output_dir)
    grid = grid_points(spec.space)
    return Search(base, spec, study_dir, "loss", "minimize", len(grid), f"sqlite:///{study_dir / 'study.db'}",
                  study_dir.name, grid)


def fake_train(log: Path) -> Any:
    def train(base: Any, overrides: dict, callbacks: Any = None) -> Any:
        run_dir = Path(overrides["output_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        lock.acquire(lambda _: None)  # what train's claim does: a second run on the folder is refused
        try:
            point = {k: v for k, v in overrides.items() if k.startswith("train.")}
            with open(log, "a") as f:  # one short O_APPEND write per line
                f.write(json.dumps({"point": point, "pid": os.getpid()}) + "\n")
            time.sleep(0.05)
            loss = point["train.lr"] * 100 + point["train.warmup_ratio"]
            return SimpleNamespace(report={"validation": {"loss": loss}, "train": {"samples": 1}})
        finally:
            lock.release()

    return train


def worker(s: Search, k: int, barrier: Any, log: Path, errors: Path) -> None:
    tunesmith.run.train = fake_train(log)
    tunesmith.hpsearch.POLL_SECONDS = 0.2  # a worker with nothing left waits for the others' last trials
    tunesmith.hpsearch._release_memory = lambda: None  # gc.collect over torch's heap: 1-2 s a trial here
    try:
        study = open_study(s, create=False, worker=k)
        barrier.wait()
        work(s, study)
    except BaseException as e:  # noqa: BLE001 - recorded, then the worker's exit code says it
        with open(errors, "a") as f:
            f.write(f"worker {k}: {type(e).__name__}: {e}\n")
        raise SystemExit(1)


def one_run(i: int, points: int, n_workers: int) -> dict[str, Any]:
    from optuna.trial import TrialState

    with tempfile.TemporaryDirectory(prefix=f"claim-{i}-") as tmp:
        folder = Path(tmp)
        s = make_search(folder, points)
        study = open_study(s, create=True)
        study._storage._backend.engine.dispose()  # no pooled connection crosses the fork
        log, errors = folder / "ran.jsonl", folder / "errors.txt"
        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(n_workers)
        procs = [ctx.Process(target=worker, args=(s, k, barrier, log, errors)) for k in range(n_workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
        codes = [p.exitcode for p in procs]
        ran = Counter(json.dumps(json.loads(line)["point"], sort_keys=True)
                      for line in log.read_text().splitlines()) if log.exists() else Counter()
        done = {json.dumps(t.params, sort_keys=True)
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        grid = {json.dumps(p, sort_keys=True) for p in s.grid}
        return {"run": i, "workers": n_workers, "points": len(grid),
                "run_twice": sum(n - 1 for n in ran.values() if n > 1), "lost": len(grid - done),
                "exit_codes": codes, "errors": errors.read_text().strip() if errors.exists() else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--points", type=int, default=6, help="grid size (even: lr values x 2 warmups)")
    args = ap.parse_args()
    bad = 0
    for i in range(args.runs):
        r = one_run(i, args.points, 2 + i % 2)  # 2 and 3 workers in turn
        failed = r["run_twice"] or r["lost"] or any(r["exit_codes"])
        bad += bool(failed)
        print(f"run {r['run']:2d}: {r['workers']} workers, {r['points']} points: run twice {r['run_twice']}, "
              f"lost {r['lost']}, worker exit codes {r['exit_codes']}"
              + (f"\n    {r['errors']}" if r["errors"] else ""), flush=True)
    print(f"{bad} of {args.runs} runs ran a point twice, lost one or had a worker fail")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
