#!/usr/bin/env python
"""How long does `tunesmith` take to report a user's mistake? Wall clock of the whole command.

A config typo should be reported before torch and transformers are imported, so the time is
Python's start-up plus pydantic and yaml, not the training stack's import. Each case runs the
command in a fresh subprocess (`python -m tunesmith ...`, the code found on PYTHONPATH) several
times and reports the median; the first run of a case is not discarded, the page cache is whatever
the previous runs left.

    python bench/time_to_first_error.py                    # the code on PYTHONPATH (or the installed one)
    PYTHONPATH=/tmp/base/src python bench/time_to_first_error.py --repeats 7
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """task: text-classification
data:
  train: {train}
  label_column: {label}
train:
  {epochs_key}: 1
output_dir: {out}
"""


def cases(d: Path) -> list[tuple[str, list[str]]]:
    """(name, tunesmith arguments) for each mistake, with its files written under d."""
    data = d / "train.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([f"row {i} was {'good' if i % 2 else 'bad'}", "pos" if i % 2 else "neg"] for i in range(100))

    def config(name: str, train: Path = data, label: str = "label", epochs_key: str = "epochs",
               out: Path = d / "run") -> str:
        path = d / f"{name}.yaml"
        path.write_text(CONFIG.format(train=train, label=label, epochs_key=epochs_key, out=out))
        return str(path)

    used = d / "used_run"  # a folder holding a file the user made: a run must not write there
    used.mkdir()
    (used / "notes.txt").write_text("mine")

    return [
        ("config typo (train.epocs)", ["train", config("typo", epochs_key="epocs")]),
        ("missing data file", ["train", config("missing_file", train=d / "nope.csv")]),
        ("missing column (labl)", ["train", config("missing_column", label="labl")]),
        ("output_dir not empty", ["train", config("used_output", out=used)]),
        ("--version", ["--version"]),
    ]


def time_once(args: list[str]) -> tuple[float, int, str]:
    """Wall seconds, exit code and the first output line of one `python -m tunesmith ARGS`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return seconds, proc.returncode, lines[0][:70] if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="runs per case; the table shows the median")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, PYTHONPATH={os.environ.get('PYTHONPATH', '')!r}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name, cli_args in cases(Path(tmp)):
            runs = [time_once(cli_args) for _ in range(args.repeats)]
            times = sorted(t for t, _, _ in runs)
            rows.append((name, statistics.median(times), times[0], times[-1], runs[-1][1], runs[-1][2]))
    print("\n| case | median s | min s | max s | exit | first output line |\n|---|---|---|---|---|---|")
    for name, med, lo, hi, rc, first in rows:
        print(f"| {name} | {med:.2f} | {lo:.2f} | {hi:.2f} | {rc} | `{first.replace('|', '/')}` |")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
