"""Fast feedback and honest console output: mistakes before the slow imports, progress in logs,
quiet libraries from Python too, and a summary that says how many processes ran."""
from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

import tunesmith
from conftest import write_csv
from tunesmith.training.checkpoint import LoopState
from tunesmith.training.loop import Event
from tunesmith.training.progress import ProgressReporter

HEAVY = ("torch", "transformers", "datasets", "accelerate", "matplotlib", "sklearn")

# Runs the CLI in a fresh interpreter and reports its exit code, output and which heavy modules it imported.
PROBE = """
import json, sys
from typer.testing import CliRunner
from tunesmith.cli import app
r = CliRunner().invoke(app, sys.argv[1:])
print(json.dumps({"code": r.exit_code, "output": r.output,
                  "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def probe(*args: object, cwd: Path) -> dict:
    # COLUMNS before the import: rich sizes the CLI's console then, and would wrap long messages
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "400"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_importing_the_cli_imports_no_heavy_library() -> None:
    code = f"import sys, tunesmith.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "[]", proc.stderr


@pytest.fixture
def mistakes(tmp_path: Path) -> Path:
    write_csv(tmp_path / "d.csv", [{"text": "a good day", "label": "pos"}, {"text": "a bad day", "label": "neg"}])
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"data": {"train": "d.csv"}, "train": {"epocs": 1}}))
    (tmp_path / "nofile.yaml").write_text(yaml.safe_dump({"data": {"train": "nope.csv"}}))
    (tmp_path / "nocol.yaml").write_text(yaml.safe_dump({"data": {"train": "d.csv", "label_column": "labl"}}))
    return tmp_path


@pytest.mark.parametrize("command", ["train", "check-data"])
@pytest.mark.parametrize("config, first_line", [
    ("typo.yaml", "error: invalid configuration in typo.yaml:"),
    ("nofile.yaml", "error: file nofile.yaml: data.train file not found: 'nope.csv' (looked for {dir}/nope.csv)"),
    ("nocol.yaml", "error: file {dir}/d.csv, column 'labl': column 'labl' (set by data.label_column) is missing; "
                   "the file has columns: text, label"),
], ids=["typo", "missing-file", "missing-column"])
def test_config_and_data_mistakes_are_reported_before_the_heavy_imports(mistakes: Path, command: str, config: str,
                                                                         first_line: str) -> None:
    r = probe(command, config, cwd=mistakes)
    assert r["code"] == 2, r["output"]
    assert r["output"].splitlines()[0] == first_line.format(dir=mistakes)
    assert r["heavy"] == []


def test_typo_message_names_the_key_and_the_fix(mistakes: Path) -> None:
    r = probe("train", "typo.yaml", cwd=mistakes)
    assert r["output"].splitlines()[1].startswith("  - unknown key 'train.epocs'. did you mean 'train.epochs'?")


@pytest.mark.parametrize("args, message", [
    (["predict", "nope", "d.csv", "-o", "out.jsonl"], "error: run folder not found: nope"),
    (["predict", ".", "missing.csv", "-o", "out.jsonl"], "error: file missing.csv: file not found (looked for "
                                                         "{dir}/missing.csv)\n  -> check the input file's path"),
    (["evaluate", "nope"], "error: run folder not found: nope"),
    (["evaluate", ".", "--data", "missing.csv"], "error: file missing.csv: file not found (looked for "
                                                 "{dir}/missing.csv)\n  -> check the input file's path"),
])
def test_predict_and_evaluate_check_paths_before_the_heavy_imports(mistakes: Path, args: list[str],
                                                                   message: str) -> None:
    r = probe(*args, cwd=mistakes)
    assert (r["code"], r["output"], r["heavy"]) == (2, message.format(dir=mistakes) + "\n", [])


def test_version(tmp_path: Path) -> None:
    r = probe("--version", cwd=tmp_path)
    assert (r["code"], r["output"], r["heavy"]) == (0, f"tunesmith {tunesmith.__version__}\n", [])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drive(total: int, seconds: dict[int, float], stop_at: int | None = None, eval_at: tuple[int, ...] = ()) -> str:
    """Synthetic step events (4 samples, 1 s each unless `seconds` says otherwise, 10 steps an epoch)."""
    out = io.StringIO()
    clock = FakeClock()
    reporter = ProgressReporter(Console(file=out, force_terminal=False, width=60), clock=clock)
    state = LoopState()
    for step in range(1, (stop_at or total) + 1):
        dt = seconds.get(step, 1.0)
        clock.now += dt
        state.step, state.samples, state.train_seconds = step, 4 * step, state.train_seconds + dt
        state.epoch, state.batch_in_epoch = divmod(step, 10)
        reporter(Event("step", state, {"loss": 1.0 / step, "seconds": dt, "total_steps": total}))
        if step in eval_at:
            reporter(Event("eval", state, {"metrics": {"accuracy": 0.5, "loss": 0.25}, "is_best": True}))
    reporter(Event("end", state))
    return out.getvalue()


def test_plain_progress_off_a_terminal_every_twentieth_of_the_run() -> None:
    lines = drive(100, {}).splitlines()
    assert [int(ln.split()[1].split("/")[0]) for ln in lines] == [1] + list(range(5, 101, 5))
    assert lines[0] == "step 1/100 (epoch 1): loss 1.0000, 4.0 samples/s, ETA 0:01:39"
    assert lines[2] == "step 10/100 (epoch 1): loss 0.1000, 4.0 samples/s, ETA 0:01:30"
    assert lines[3] == "step 15/100 (epoch 2): loss 0.0667, 4.0 samples/s, ETA 0:01:25"
    assert lines[-1] == "step 100/100 (epoch 10): loss 0.0100, 4.0 samples/s, ETA 0:00:00"


def test_plain_progress_every_30_seconds_on_slow_steps() -> None:
    # steps 2 and 3 take 20 s each: step 3 ends 40 s after the last line (step 1), so it gets one; the ETA
    # is the wall time per step since step 1 (20 s, then 42 s / 4 steps) times the steps left
    lines = drive(100, {2: 20.0, 3: 20.0}, stop_at=6).splitlines()
    assert lines == ["step 1/100 (epoch 1): loss 1.0000, 4.0 samples/s, ETA 0:01:39",
                     "step 3/100 (epoch 1): loss 0.3333, 0.3 samples/s, ETA 0:32:20",
                     "step 5/100 (epoch 1): loss 0.2000, 0.5 samples/s, ETA 0:16:38",
                     "step 6/100 (epoch 1): loss 0.1667, 0.5 samples/s, ETA 0:13:28"]


def test_plain_progress_prints_the_last_step_before_its_validation_and_at_an_early_end() -> None:
    lines = drive(100, {}, stop_at=7, eval_at=(7,)).splitlines()
    assert lines == ["step 1/100 (epoch 1): loss 1.0000, 4.0 samples/s, ETA 0:01:39",
                     "step 5/100 (epoch 1): loss 0.2000, 4.0 samples/s, ETA 0:01:35",
                     "step 7/100 (epoch 1): loss 0.1429, 4.0 samples/s, ETA 0:01:33",
                     "step 7: validation accuracy=0.5000, loss=0.2500 (best)"]
    assert drive(100, {}, stop_at=7).splitlines()[-1] == "step 7/100 (epoch 1): loss 0.1429, 4.0 samples/s, ETA 0:01:33"


def test_a_terminal_gets_the_live_bar_not_plain_lines() -> None:
    out = io.StringIO()
    reporter = ProgressReporter(Console(file=out, force_terminal=True, width=100))
    state = LoopState(step=5, samples=20, train_seconds=5.0)
    reporter(Event("step", state, {"loss": 0.5, "seconds": 1.0, "total_steps": 5}))
    reporter(Event("end", state))
    assert "5/5 loss 0.5000 4.0 samples/s" in out.getvalue()
    assert "step 5/5" not in out.getvalue()


def test_python_train_and_load_are_as_quiet_as_the_cli_and_say_how_many_processes_ran(
        base_config: dict, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    cfg = copy.deepcopy(base_config)
    cfg["train"]["epochs"] = 1
    run = tunesmith.train(cfg)
    tunesmith.load(run.dir)
    out, err = capfd.readouterr()
    # the libraries' tqdm bars ("Map", "Saving the dataset", "Loading weights", "Writing model shards") and
    # transformers' load report (it lists MISSING / UNEXPECTED keys) were printed from Python before
    for chatter in ("Map", "Saving the dataset", "Loading weights", "Writing model shards", "it/s", "examples/s",
                    "MISSING", "UNEXPECTED"):
        assert chatter not in out + err
    assert "processes: 1 (device cpu, precision fp32)" in out.splitlines()
    assert "step 1/12 (epoch 1): loss " in out  # plain progress lines: capfd is not a terminal
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == (verbosity, bars)
