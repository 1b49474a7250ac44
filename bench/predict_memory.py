#!/usr/bin/env python
"""Peak memory of `Predictor.predict_file` against the number of input rows: does it grow with the file?

A tiny random BERT (tests/conftest.py) is trained for one step into a text-classification run and a
token-classification run (the model's size does not matter here: what grows with the input is the
rows, features, predictions and output that are kept). For each row count an input of that many rows
(JSONL: {"id", "text"}, texts of 3-15 words) is predicted to JSONL in a fresh subprocess (one torch
thread) that imports tunesmith from PYTHONPATH. Once the model has loaded, the subprocess resets its peak RSS (Linux:
`/proc/self/clear_refs`, so the load's own peak does not hide a smaller one) and reads its RSS; after
predict_file it reads the peak (VmHWM). The growth is that peak minus the loaded RSS; the slope between
the two largest row counts gives the estimate for 1M rows.

    python bench/predict_memory.py --rows 10000 100000                     # the code on PYTHONPATH
    python bench/predict_memory.py --rows 1000 4000 --chunk-rows 500       # quick: 2 and 8 chunks
    PYTHONPATH=/tmp/base/src python bench/predict_memory.py --work /tmp/pm  # the code before a change

`--work` keeps the trained runs and inputs between invocations (the runs are made by the code on
PYTHONPATH the first time and only read afterwards).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
from pathlib import Path
from tunesmith.serving.predictor import Predictor

def status(key):  # kB, from /proc/self/status
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))

import inspect
run, inp, out, chunk_rows = sys.argv[1:5]
# chunk_rows: for code that reads in chunks (older code reads the whole file, and takes no such argument)
kwargs = {"chunk_rows": int(chunk_rows)} if "chunk_rows" in inspect.signature(Predictor.predict_file).parameters else {}
p = Predictor.load(run, device="cpu")
p.predict(["warm up"])
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the RSS now: loading's peak is not ours
base = status("VmRSS:")
t = time.perf_counter()
n = p.predict_file(inp, out, **kwargs)
print(json.dumps({"rows": n, "base_kib": base, "peak_kib": status("VmHWM:"), "seconds": time.perf_counter() - t}))
"""


def make_runs(work: Path) -> dict[str, Path]:
    """A one-step text-classification run and token-classification run of the tiny BERT (made once)."""
    sys.path.insert(0, str(REPO / "tests"))
    runs = {"classification": work / "cls" / "run", "ner": work / "ner" / "run"}
    if all((r / "model").is_dir() for r in runs.values()):
        return runs
    import conftest  # noqa: E402  (the tests' tiny model and data)
    import tunesmith

    model = work / "bert"
    if not (model / "config.json").exists():
        conftest.build_tiny_bert(model)
    base = {"model": {"name": str(model), "max_length": 32},
            "train": {"max_steps": 1, "batch_size": 16, "eval_every": 1, "precision": "fp32", "seed": 0},
            "eval": {"batch_size": 64}}
    cls_data = conftest.write_jsonl(work / "cls.jsonl", conftest.sentiment_rows(120, seed=0))
    ner_rows = [{"tokens": r["text"].split(), "tags": ["B-SENT" if w in conftest.POSITIVE + conftest.NEGATIVE else "O"
                                                      for w in r["text"].split()]}
                for r in conftest.sentiment_rows(120, seed=1)]
    ner_data = conftest.write_jsonl(work / "ner.jsonl", ner_rows)
    for name, task, data in (("classification", "text-classification", cls_data),
                             ("ner", "token-classification", ner_data)):
        if not (runs[name] / "model").is_dir():
            tunesmith.train({**base, "task": task, "data": {"train": str(data), "cache_dir": str(work / "cache")},
                             "output_dir": str(runs[name])})
    return runs


def make_input(work: Path, rows: int) -> Path:
    path = work / f"input_{rows}.jsonl"
    if not path.exists():
        sys.path.insert(0, str(REPO / "tests"))
        import conftest

        rng = random.Random(rows)
        words = conftest.POSITIVE + conftest.NEGATIVE + conftest.FILLER
        with open(path, "w", encoding="utf-8") as f:
            for i in range(rows):
                f.write(json.dumps({"id": i, "text": " ".join(rng.choices(words, k=rng.randint(3, 15)))}) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--tasks", nargs="+", default=["classification", "ner"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/tunesmith-predict-memory"))
    ap.add_argument("--chunk-rows", type=int, default=4096,
                    help="rows per chunk for code that streams (its default: 4096); a smaller chunk shows at "
                         "small row counts whether memory stays flat once a file holds several chunks")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = make_runs(args.work)
    import tunesmith

    print(f"tunesmith from {Path(tunesmith.__file__).parent}")
    print(f"{'task':<15}{'rows':>9}{'loaded MiB':>12}{'peak MiB':>10}{'growth MiB':>12}{'seconds':>9}")
    for task in args.tasks:
        results = []
        for rows in args.rows:
            inp = make_input(args.work, rows)
            out = args.work / f"out_{task}_{rows}_{os.getpid()}.jsonl"
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", CHILD, str(runs[task]), str(inp), str(out),
                                   str(args.chunk_rows)],
                                  capture_output=True, text=True,
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
            if proc.returncode != 0:
                sys.exit(f"{task} {rows} rows failed after {time.perf_counter() - t:.0f} s:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            growth = (r["peak_kib"] - r["base_kib"]) / 1024
            results.append((rows, growth))
            print(f"{task:<15}{rows:>9}{r['base_kib'] / 1024:>12.0f}{r['peak_kib'] / 1024:>10.0f}{growth:>12.1f}"
                  f"{r['seconds']:>9.1f}", flush=True)
            out.unlink()
        if len(results) > 1:  # the slope of the last two counts: where the growth is heading
            (lo, g_lo), (hi, g_hi) = results[-2], results[-1]
            slope = (g_hi - g_lo) / (hi - lo)
            print(f"{task:<15}slope {slope * 1e4:.1f} MiB per 10k rows ({lo}-{hi}); 1M rows: about "
                  f"{g_hi + slope * (1_000_000 - hi):.0f} MiB over the loaded model")


if __name__ == "__main__":
    main()
