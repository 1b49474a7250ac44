"""The run folder is the user's: checkpoints never run code, a folder is never written over without
being asked, one run holds it at a time, its files follow the umask, kills leave no lasting litter,
resume is exact (dropout on, mid-epoch) and says what it does, and Ctrl-C says how to continue."""
from __future__ import annotations

import copy
import errno
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import tunesmith
from conftest import run_config, train_losses
from tunesmith.cli import app
from tunesmith.errors import CheckpointError, ConfigError, ModelError
from tunesmith.io import host_tag, read_jsonl
from tunesmith.training.loop import Control

ENV = {"COLUMNS": "1000"}  # rich wraps at the terminal width; keep messages on one line


def _invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- 1. no code runs from a checkpoint

class _Planted:
    """Unpickling this creates the marker file: what an attacker's payload would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["optimizer.pt", "rng-0.pt"])
def test_resume_refuses_a_planted_pickle_without_running_it(base_config: dict, tmp_path: Path, name: str) -> None:
    cfg = run_config(base_config, tmp_path, "planted", max_steps=4, eval_every=2)
    tunesmith.train(cfg, callbacks=[lambda e: Control(stop=True) if e.kind == "step" and e.state.step == 2
                                    else None])
    marker = tmp_path / "payload-ran"
    planted = tmp_path / "planted" / "checkpoints" / "step-2" / name
    torch.save({"state": _Planted(marker)}, planted)
    with pytest.raises(CheckpointError) as err:
        tunesmith.train(cfg, resume=True)
    assert not marker.exists()
    assert str(err.value).startswith(f"{planted}: refused: it holds pickled Python objects, and a checkpoint "
                                     "holds only tensors and JSON. It was not unpickled.")
    assert "weights_only" not in str(err.value)  # torch's advice to load it unsafely is not passed on


@pytest.mark.parametrize("damage", ["truncated weights", "missing weights", "truncated index"])
def test_a_damaged_checkpoint_is_a_clear_error_naming_the_file(base_config: dict, tmp_path: Path,
                                                               damage: str) -> None:
    cfg = run_config(base_config, tmp_path, "damaged", max_steps=4, eval_every=2)
    tunesmith.train(cfg, callbacks=[lambda e: Control(stop=True) if e.kind == "step" and e.state.step == 2
                                    else None])
    ckpts = tmp_path / "damaged" / "checkpoints"
    weights, index = ckpts / "step-2" / "model.safetensors", ckpts / "index.json"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "missing weights":
        weights.unlink()
    else:
        index.write_text(index.read_text()[:10])
    with pytest.raises(CheckpointError) as err:
        tunesmith.train(cfg, resume=True)
    where = index if damage == "truncated index" else ckpts / "step-2"
    assert str(err.value).startswith(f"{where}: cannot be loaded as checkpoint state (")
    assert str(err.value).endswith("the checkpoint is damaged. Resume from an intact checkpoint or start a new run.")


def test_checkpoint_state_is_tensors_and_json(base_config: dict, tmp_path: Path) -> None:
    run = tunesmith.train(run_config(base_config, tmp_path, "ckpt", max_steps=2, eval_every=2))
    folder = run.dir / "checkpoints" / "step-2"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "loop_state.json", "model.safetensors", "optimizer.pt", "rng-0.json", "rng-0.pt",
        "scheduler.json"]
    for name in ("optimizer.pt", "rng-0.pt"):
        torch.load(folder / name, weights_only=True)
    assert json.loads((folder / "scheduler.json").read_text())["last_epoch"] == 2


# ---------------------------------------------------------------- 2. never over the user's files

def test_a_folder_with_user_files_is_refused_and_left_alone(base_config: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "mine"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "important.txt").write_text("keep me")
    (run_dir / "config.yaml").write_text("mine: true\n")
    with pytest.raises(ConfigError) as err:
        tunesmith.train(run_config(base_config, tmp_path, "mine"))
    assert str(err.value) == (
        f"output_dir {run_dir} is not empty (config.yaml, model/) and tunesmith never writes over files it did "
        "not create in this run. Choose a new output_dir (--set output_dir=...), continue the run there with "
        "--resume, or delete what it holds with --overwrite")
    assert (run_dir / "model" / "important.txt").read_text() == "keep me"
    assert (run_dir / "config.yaml").read_text() == "mine: true\n"
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "model"]


def test_a_finished_run_without_checkpoints_is_not_overwritten(base_config: dict, tmp_path: Path) -> None:
    import shutil

    cfg = run_config(base_config, tmp_path, "done", max_steps=2)
    run = tunesmith.train(cfg)
    shutil.rmtree(run.dir / "checkpoints")
    report = (run.dir / "report.json").read_bytes()
    weights = (run.dir / "model" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="is not empty"):
        tunesmith.train(cfg)
    with pytest.raises(ConfigError, match="has no checkpoint to resume from .* start the run again with --overwrite"):
        tunesmith.train(cfg, resume=True)
    assert (run.dir / "report.json").read_bytes() == report
    assert (run.dir / "model" / "model.safetensors").read_bytes() == weights


def test_overwrite_says_what_it_removes(base_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "old"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "important.txt").write_text("old")
    (run_dir / "notes.txt").write_text("old")
    run = tunesmith.train(run_config(base_config, tmp_path, "old", max_steps=2), overwrite=True)
    err = capsys.readouterr().err
    assert f"note: --overwrite: removing {run_dir / 'model'}/" in err
    assert f"note: --overwrite: removing {run_dir / 'notes.txt'}" in err
    assert not (run.dir / "notes.txt").exists() and not (run.dir / "model" / "important.txt").exists()
    assert (run.dir / "report.json").exists()


def test_overwrite_refuses_the_current_folder_its_parents_and_home(base_config: dict, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    inner = tmp_path / "work" / "inner"
    inner.mkdir(parents=True)
    (inner / "keep.txt").write_text("x")
    monkeypatch.chdir(inner)
    for target in (inner, tmp_path / "work"):
        cfg = copy.deepcopy(base_config)
        cfg["output_dir"] = str(target)
        with pytest.raises(ConfigError, match=f"--overwrite refuses to empty {target}: it is the current folder"):
            tunesmith.train(cfg, overwrite=True)
    home = tmp_path / "home"
    (home / "stuff").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    cfg = copy.deepcopy(base_config)
    cfg["output_dir"] = "~"
    with pytest.raises(ConfigError, match="or your home folder"):
        tunesmith.train(cfg, overwrite=True)
    assert (inner / "keep.txt").exists() and (home / "stuff").is_dir()


def test_overwrite_from_the_cli_refuses_a_folder_holding_the_config_or_the_base_model(
        base_config: dict, tmp_path: Path, tiny_model_dir: str) -> None:
    """The CLI hands the run a loaded config: the YAML file it came from is protected all the same."""
    out = tmp_path / "out"
    out.mkdir()
    cfg_file = out / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({**base_config, "output_dir": str(out)}))
    r = _invoke("train", cfg_file, "--overwrite")
    assert r.exit_code == 2
    assert f"--overwrite refuses to empty {out}: it holds this run's input {cfg_file}" in r.output
    assert cfg_file.exists()
    model = tmp_path / "models" / "base"
    shutil.copytree(tiny_model_dir, model)
    cfg = {**base_config, "model": {**base_config["model"], "name": str(model)}, "output_dir": str(model.parent)}
    with pytest.raises(ConfigError, match="it holds this run's input"):
        tunesmith.train(cfg, overwrite=True)
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in Path(tiny_model_dir).iterdir())


@pytest.mark.parametrize("where", ["under a file", "not writable"])
def test_an_output_dir_that_cannot_be_made_is_a_config_error_before_any_work(
        base_config: dict, tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    if where == "under a file":
        out, expected = blocker / "sub" / "run", f"cannot be created: {blocker} is a file, not a folder"
    else:
        out, expected = tmp_path / "ro" / "run", f"cannot be written: {tmp_path / 'ro'} is not writable for this user"
        (tmp_path / "ro").mkdir()
        real_access = os.access  # root may write anywhere: the check asks os.access, which we answer
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == tmp_path / "ro" else real_access(p, m))
    prepared = []
    monkeypatch.setattr("tunesmith.run.prepare", lambda *a, **k: prepared.append(1))
    with pytest.raises(ConfigError) as err:
        tunesmith.train({**base_config, "output_dir": str(out)})
    assert str(err.value) == f"output_dir {out} {expected}"
    assert prepared == []


def test_a_claim_that_lost_the_lock_deletes_nothing(base_config: dict, tmp_path: Path) -> None:
    """Two runs that both saw the folder missing: the loser must not remove the winner's folder."""
    from tunesmith.config import load_config
    from tunesmith.rundir import claim

    run_dir = tmp_path / "new" / "run"
    cfg = load_config({**base_config, "output_dir": str(run_dir)})
    args = dict(resume=False, overwrite=False, allow_config_change=False, config_file=None, say=lambda m: None)
    winner = claim(run_dir, cfg, **args)
    from tunesmith import rundir

    loser = rundir.Claim(tmp_path / "new" / "run")
    loser.created = tmp_path / "new"  # what it saw before the winner created the folder
    with pytest.raises(ConfigError, match="is in use by another tunesmith run"):
        loser.lock.acquire(lambda m: None)
    loser.abandon()
    assert (run_dir / ".tunesmith.lock").exists()
    winner.abandon()
    assert not (tmp_path / "new").exists()


def test_overwrite_refuses_a_folder_holding_the_training_data(base_config: dict, tmp_path: Path) -> None:
    cfg = copy.deepcopy(base_config)
    cfg["output_dir"] = str(tmp_path)  # sentiment.csv lives here
    with pytest.raises(ConfigError, match=f"it holds this run's input {tmp_path / 'sentiment.csv'}"):
        tunesmith.train(cfg, overwrite=True)


def test_resume_and_overwrite_together_is_a_clean_cli_error(base_config: dict, tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(base_config))
    result = _invoke("train", path, "--resume", "--overwrite")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--resume continues the run in output_dir and --overwrite deletes it: pass only one" in \
        _one_line(result.output)


def _fail_building_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: object) -> None:
        raise ModelError("simulated: the model does not fit the task")

    monkeypatch.setattr(tunesmith.run, "TrainingLoop", broken)


@pytest.mark.parametrize("failure", ["metric", "model"])
def test_a_run_that_fails_before_training_leaves_no_folder(base_config: dict, tmp_path: Path, failure: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = copy.deepcopy(base_config)
    cfg["output_dir"] = str(tmp_path / "new" / "deeper" / "run")
    if failure == "metric":
        cfg["eval"]["metric"] = "bleu"
    else:
        _fail_building_the_loop(monkeypatch)
    with pytest.raises((ConfigError, ModelError)):
        tunesmith.train(cfg)
    assert not (tmp_path / "new").exists()


def test_a_resume_that_fails_before_training_keeps_the_run(base_config: dict, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = run_config(base_config, tmp_path, "kept", max_steps=2)
    run = tunesmith.train(cfg)
    _fail_building_the_loop(monkeypatch)
    with pytest.raises(ModelError):
        tunesmith.train(cfg, resume=True)
    assert (run.dir / "report.json").exists() and not (run.dir / ".tunesmith.lock").exists()


# ---------------------------------------------------------------- 3. one run per folder

_HOLD_LOCK = """
import sys
from pathlib import Path
from tunesmith.rundir import RunLock
lock = RunLock(Path(sys.argv[1]))
lock.acquire(print)
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


def test_a_folder_locked_by_a_live_run_is_refused(base_config: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        started = json.loads((run_dir / ".tunesmith.lock").read_text())["started"]
        cfg = run_config(base_config, tmp_path, "busy")
        for kwargs in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(ConfigError) as err:
                tunesmith.train(cfg, **kwargs)
            assert str(err.value) == (
                f"{run_dir} is in use by another tunesmith run (pid {holder.pid} on this host, started {started}); "
                "wait for it to finish, or choose another output_dir (--set output_dir=...)")
        assert sorted(p.name for p in run_dir.iterdir()) == [".tunesmith.lock"]
    finally:
        holder.communicate("")
    assert holder.returncode == 0 and not (run_dir / ".tunesmith.lock").exists()


def test_a_lock_held_on_another_host_is_refused_naming_the_file(base_config: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "remote"
    run_dir.mkdir()
    lock = run_dir / ".tunesmith.lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "gpu-node-7", "started": "2024-05-01T10:00:00+00:00"}))
    with pytest.raises(ConfigError) as err:
        tunesmith.train(run_config(base_config, tmp_path, "remote"))
    assert str(err.value) == (
        f"{run_dir} is locked by a tunesmith run on host gpu-node-7 (pid 4242, started 2024-05-01T10:00:00+00:00); "
        f"if that run is no longer running, delete {lock} and try again")


def test_a_stale_lock_is_taken_over_with_a_note(base_config: dict, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "stale"
    run_dir.mkdir()
    pid = _dead_pid()
    lock = run_dir / ".tunesmith.lock"
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "2024-05-01T10:00:00+00:00"}))
    run = tunesmith.train(run_config(base_config, tmp_path, "stale", max_steps=2))  # the lock is not user content
    assert (f"note: taking over the lock of a run that is no longer running (pid {pid}, started "
            f"2024-05-01T10:00:00+00:00): {lock}") in _one_line(capsys.readouterr().err)
    assert run.summary["steps"] == 2 and not lock.exists()


# ---------------------------------------------------------------- 7. files follow the umask

def test_run_files_get_the_umask_mode(base_config: dict, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        run = tunesmith.train(run_config(base_config, tmp_path, "modes", max_steps=2, eval_every=1))
    finally:
        os.umask(old)
    modes = {str(p.relative_to(run.dir)): stat.S_IMODE(p.stat().st_mode) for p in run.dir.rglob("*")}
    assert "model/model.safetensors" in modes and "config.yaml" in modes and "checkpoints/step-2" in modes
    wrong = {k: oct(m) for k, m in modes.items() if m != (0o755 if (run.dir / k).is_dir() else 0o644)}
    assert wrong == {}
    assert stat.S_IMODE(run.dir.stat().st_mode) == 0o755


# ---------------------------------------------------------------- 9. leftovers of killed runs

def test_resume_removes_temps_left_by_a_killed_run(base_config: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    cfg = run_config(base_config, tmp_path, "litter", max_steps=4, eval_every=2)
    run = tunesmith.train(cfg)
    ckpts = run.dir / "checkpoints"
    litter = [ckpts / ".step-6.tmp-host-123-abcd1234", ckpts / ".rng-step-6", run.dir / ".model.tmp-host-1-x_y2",
              run.dir / ".model.old-host-99"]
    for d in litter:
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "weights.bin").write_bytes(b"0" * 100)
    files = [run.dir / ".config.yaml.k2j4.tmp", ckpts / ".index.json.abc.tmp",
             run.dir / "plots" / ".learning_curves.png.tmp.png"]
    for f in files:
        f.write_text("half")
    capsys.readouterr()
    tunesmith.train(cfg, resume=True)
    assert [p for p in litter + files if p.exists()] == []
    assert f"note: removed 7 temporary file(s) left in {run.dir} by an interrupted run" in \
        _one_line(capsys.readouterr().err)
    assert sorted(p.name for p in ckpts.iterdir()) == ["index.json", "step-2", "step-4"]


def test_cache_temps_are_removed_only_when_their_writer_is_dead(base_config: dict, tmp_path: Path) -> None:
    root = tmp_path / "cache" / "tokenized"
    root.mkdir(parents=True)
    dead, me = _dead_pid(), os.getpid()
    gone = [root / f".{'a' * 32}.tmp-{host_tag()}-{dead}-abcd1234", root / f".{'b' * 32}.old-{host_tag()}-{dead}"]
    kept = [root / f".{'c' * 32}.tmp-{host_tag()}-{me}-abcd1234",  # a live writer (this process)
            root / f".{'d' * 32}.tmp-othernode-{dead}-abcd1234"]  # another host: its pids mean nothing here
    for d in gone + kept:
        d.mkdir()
    tunesmith.train(run_config(base_config, tmp_path, "cached", max_steps=1))
    assert [d.exists() for d in gone] == [False, False]
    assert [d.exists() for d in kept] == [True, True]
    assert all(f".tmp-{host_tag()}-" not in p.name for p in root.iterdir() if p not in kept)


# ---------------------------------------------------------------- 5. exact resume, dropout on

def test_resume_mid_epoch_with_dropout_equals_the_uninterrupted_run(base_config: dict, tmp_path: Path) -> None:
    base = copy.deepcopy(base_config)
    base["model"]["dropout"] = 0.1
    settings = dict(epochs=2, eval_every=3)  # 12 steps per epoch: step 6 is mid-epoch
    whole = tunesmith.train(run_config(base, tmp_path, "whole", **settings))

    cfg = run_config(base, tmp_path, "stopped", **settings)
    tunesmith.train(cfg, callbacks=[lambda e: Control(stop=True) if e.kind == "step" and e.state.step == 6
                                    else None])
    state = json.loads((tmp_path / "stopped" / "checkpoints" / "step-6" / "loop_state.json").read_text())
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 6)
    resumed = tunesmith.train(cfg, resume=True)
    assert len(train_losses(resumed.dir)) == 24
    assert train_losses(resumed.dir) == train_losses(whole.dir)
    a = load_file(whole.dir / "checkpoints" / "step-24" / "model.safetensors")
    b = load_file(resumed.dir / "checkpoints" / "step-24" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- resume and Ctrl-C feedback

def test_resume_with_a_changed_config_is_refused_listing_the_changes(base_config: dict, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    cfg = run_config(base_config, tmp_path, "changed", max_steps=4, eval_every=2)
    run = tunesmith.train(cfg)
    with pytest.raises(ConfigError) as err:
        tunesmith.train(cfg, ["train.max_steps=6", "train.lr=0.001", "eval.batch_size=8"], resume=True)
    assert str(err.value) == (
        f"--resume with a config that differs from the run's ({run.dir / 'config.yaml'}): train.lr: 0.005 -> 0.001; "
        "train.max_steps: 4 -> 6. These change what the run computes; resume with the run's config, or pass "
        "--allow-config-change to continue with the new values (recorded in config_changes.jsonl)")

    capsys.readouterr()
    tunesmith.train(cfg, ["eval.batch_size=8", "train.log_every=2"], resume=True)  # results unchanged: a note
    assert "note: resuming with config changes: eval.batch_size: 32 -> 8; train.log_every: 1 -> 2" in \
        _one_line(capsys.readouterr().err)

    more = tunesmith.train(cfg, ["train.max_steps=6", "eval.batch_size=8", "train.log_every=2"], resume=True,
                           allow_config_change=True)
    assert more.summary["steps"] == 6
    assert read_jsonl(run.dir / "config_changes.jsonl") == [
        {"resumed_from_step": 4, "changes": {"eval.batch_size": [32, 8], "train.log_every": [1, 2]}},
        {"resumed_from_step": 4, "changes": {"train.max_steps": [4, 6]}}]
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["train"]["max_steps"] == 6


def _interrupt_at_step(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Ctrl-C during the n-th optimizer step (a KeyboardInterrupt raised where SIGINT would land)."""
    from tunesmith.training.loop import TrainingLoop

    real, calls = TrainingLoop._step, {"n": 0}

    def step(self: TrainingLoop, micro: list) -> tuple:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, micro)

    monkeypatch.setattr(TrainingLoop, "_step", step)


def test_ctrl_c_says_where_to_resume_and_the_command_resumes(base_config: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "my config.yaml"
    path.write_text(yaml.safe_dump(run_config(base_config, tmp_path, "ctrlc", max_steps=6)))
    _interrupt_at_step(monkeypatch, 5)
    result = _invoke("train", path, "--set", "train.eval_every=2", "--set", "eval.batch_size=16")
    assert result.exit_code == 130, result.output
    ckpt = tmp_path / "ctrlc" / "checkpoints" / "step-4"
    command = f"tunesmith train '{path}' --set train.eval_every=2 --set eval.batch_size=16 --resume"
    assert _one_line(result.output).endswith(
        f"interrupted; the last complete checkpoint is {ckpt} (step 4). To continue from it: {command}")
    assert not (tmp_path / "ctrlc" / ".tunesmith.lock").exists()

    monkeypatch.undo()
    resumed = _invoke(*shlex.split(command)[1:])
    assert resumed.exit_code == 0, resumed.output
    assert f"note: resuming from {ckpt}: step 4 of 6 done, continuing with step 5" in _one_line(resumed.output)
    assert json.loads((tmp_path / "ctrlc" / "report.json").read_text())["train"]["steps"] == 6


def test_ctrl_c_before_the_first_checkpoint_says_to_start_again(base_config: dict, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(run_config(base_config, tmp_path, "early", max_steps=6, eval_every=3)))
    _interrupt_at_step(monkeypatch, 2)
    result = _invoke("train", path)
    assert result.exit_code == 130, result.output
    command = f"tunesmith train {path}"
    assert _one_line(result.output).endswith(
        f"interrupted before the first checkpoint of {tmp_path / 'early'}; to start again: {command}")

    monkeypatch.undo()
    again = _invoke(*shlex.split(command)[1:])  # no --overwrite needed: the folder holds only what the run wrote
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "early" / "report.json").read_text())["train"]["steps"] == 6


def test_ctrl_c_while_a_resume_prepares_keeps_the_resume_command_and_a_finished_run_says_so(
        base_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(run_config(base_config, tmp_path, "done", max_steps=4, eval_every=2)))
    assert _invoke("train", path).exit_code == 0

    def interrupted_prepare(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("tunesmith.run.prepare", interrupted_prepare)
        result = _invoke("train", path, "--resume")
    assert result.exit_code == 130, result.output
    assert _one_line(result.output).endswith(
        f"interrupted before training started; the run folder still holds its checkpoints. "
        f"To continue: tunesmith train {path} --resume")
    assert (tmp_path / "done" / "checkpoints" / "step-4").is_dir()

    again = _invoke("train", path, "--resume")
    assert again.exit_code == 0, again.output
    assert (f"note: resuming from {tmp_path / 'done' / 'checkpoints' / 'step-4'}: the run had finished all 4 "
            "steps; testing and exporting its best checkpoint again") in _one_line(again.output)


# ---------------------------------------------------------------- a full disk (issue 22, item 6)

def _full_disk_at(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The write that a full disk stops, injected in the writer itself; `shutil.disk_usage` says 1.2 MiB free.

    weights: the second checkpoint's safetensors file, with the error safetensors raises on a full disk;
    index / report: the fsync of the second checkpoint index's (the report's) temp file, where a delayed
    allocation's ENOSPC surfaces.
    """
    import collections

    from safetensors import SafetensorError

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**20, 10 * 2**20 - 1258291, 1258291))
    calls = {"n": 0}
    if where == "weights":
        import transformers.modeling_utils

        real_save = transformers.modeling_utils.safe_save_file

        def full_save(*args: object, **kwargs: object) -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            real_save(*args, **kwargs)

        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_save)
        return
    real_fsync, prefix, nth = os.fsync, {"index": ".index.json.", "report": ".report.json."}[where], \
        {"index": 2, "report": 1}[where]

    def full_fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(prefix):
            calls["n"] += 1
            if calls["n"] == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_fsync)


@pytest.mark.parametrize("where, target, step", [("weights", "checkpoints/step-4", 2),
                                                 ("index", "checkpoints/index.json", 2),
                                                 ("report", "report.json", 6)])
def test_a_full_disk_is_a_clear_error_and_resume_after_freeing_space_equals_the_whole_run(
        base_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, target: str,
        step: int) -> None:
    settings = dict(max_steps=6, eval_every=2)
    whole_cfg = run_config(base_config, tmp_path, "whole", **settings)
    whole_cfg["eval"]["batch_size"] = 16  # as the --set below
    whole = tunesmith.train(whole_cfg)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(run_config(base_config, tmp_path, "full", **settings)))
    run_dir = tmp_path / "full"
    with monkeypatch.context() as m:
        _full_disk_at(m, where)
        result = _invoke("train", path, "--set", "eval.batch_size=16")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    command = f"tunesmith train {path} --set eval.batch_size=16 --resume"
    assert _one_line(result.output).endswith(
        f"error: no space left on the device: could not write {run_dir / target} (1.2 MiB free there). The last "
        f"complete checkpoint, {run_dir / 'checkpoints' / f'step-{step}'} (step {step}), is intact. Free some "
        f"space, then continue from it: {command}")
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    assert index["latest"] == f"step-{step}"  # nothing half-written is taken as a checkpoint
    assert not (run_dir / ".tunesmith.lock").exists()

    resumed = _invoke(*shlex.split(command)[1:])  # space freed: the advised command finishes the run
    assert resumed.exit_code == 0, resumed.output
    assert train_losses(run_dir) == train_losses(whole.dir)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["test"] == json.loads((whole.dir / "report.json").read_text())["test"]
    assert report["train"]["best_step"] == whole.summary["best_step"]


# ---------------------------------------------------------------- killed before the first checkpoint (item 9)

# what run.py writes before its first checkpoint (and the RNG temp of the checkpoint it was writing)
_BEFORE_FIRST_CHECKPOINT = ["checkpoints", "config.yaml", "data_report.json", "dropped_rows.jsonl",
                            "label_map.json", "metrics.jsonl"]


def _killed_before_the_first_checkpoint(base_config: dict, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[float]]:
    """A run killed while it wrote its first checkpoint, as a kill leaves it (its dead process's lock
    included): the config file and the losses it logged."""
    from transformers import PreTrainedModel

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(run_config(base_config, tmp_path, "killed", max_steps=4, eval_every=2)))

    def killed(self: PreTrainedModel, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(PreTrainedModel, "save_pretrained", killed)
        with pytest.raises(KeyboardInterrupt):
            tunesmith.train(path)
    run_dir = tmp_path / "killed"
    (run_dir / ".tunesmith.lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                         "started": "2024-05-01T10:00:00+00:00"}))
    assert sorted(p.name for p in run_dir.iterdir()) == [".tunesmith.lock", *_BEFORE_FIRST_CHECKPOINT]
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [".rng-step-2"]
    return path, train_losses(run_dir)


@pytest.mark.parametrize("flags", [[], ["--resume"]])
def test_a_run_killed_before_its_first_checkpoint_starts_again_with_a_note(
        base_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str]) -> None:
    path, logged = _killed_before_the_first_checkpoint(base_config, tmp_path, monkeypatch)
    run_dir = tmp_path / "killed"
    result = _invoke("train", path, *flags)
    assert result.exit_code == 0, result.output
    assert (f"note: no checkpoint had been written in {run_dir}: starting the run again from the beginning "
            "(removing checkpoints/, config.yaml, data_report.json, dropped_rows.jsonl, label_map.json, "
            "metrics.jsonl)") in _one_line(result.output)
    assert len(logged) == 2 and train_losses(run_dir)[:2] == logged  # the same run, from step 1
    assert json.loads((run_dir / "report.json").read_text())["train"]["steps"] == 4
    assert not (run_dir / ".tunesmith.lock").exists()


def test_a_killed_run_s_folder_with_a_file_it_did_not_write_or_another_config_is_refused(
        base_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _killed_before_the_first_checkpoint(base_config, tmp_path, monkeypatch)
    run_dir = tmp_path / "killed"
    listing = sorted((p.relative_to(run_dir), p.read_bytes() if p.is_file() else None) for p in run_dir.rglob("*"))

    changed = _invoke("train", path, "--set", "train.lr=0.001")
    assert changed.exit_code == 2, changed.output
    assert _one_line(changed.output) == (
        f"error: output_dir {run_dir} holds a run that stopped before its first checkpoint, with another config "
        f"({run_dir / 'config.yaml'}): train.lr: 0.005 -> 0.001. tunesmith starts such a run again only with "
        "its own config: train with that config, choose a new output_dir (--set output_dir=...), or delete "
        "what it holds with --overwrite")

    (run_dir / "notes.txt").write_text("mine")
    listing = sorted([*listing, (Path("notes.txt"), b"mine")])
    plain = _invoke("train", path)
    assert plain.exit_code == 2, plain.output
    assert _one_line(plain.output) == (
        f"error: output_dir {run_dir} is not empty (checkpoints/, config.yaml, data_report.json, "
        "dropped_rows.jsonl, label_map.json and 2 more) and tunesmith never writes over files it did not create "
        "in this run. Choose a new output_dir (--set output_dir=...), continue the run there with --resume, or "
        "delete what it holds with --overwrite")
    resumed = _invoke("train", path, "--resume")
    assert resumed.exit_code == 2, resumed.output
    assert f"error: --resume: {run_dir} has no checkpoint to resume from" in _one_line(resumed.output)
    assert sorted((p.relative_to(run_dir), p.read_bytes() if p.is_file() else None)
                  for p in run_dir.rglob("*")) == listing
