"""Hyperparameter search: grid, random and bayes over one study database; pruning, failures, resume,
the best config, and workers sharing a study (SQLite here, PostgreSQL in CI)."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from itertools import product
from pathlib import Path
from typing import Any

import pytest
import yaml

import tunesmith
from tunesmith.errors import ConfigError
from tunesmith.hpsearch import STUDY_DB, open_study, resolve

REPO = Path(__file__).resolve().parent.parent


def _config(base_config: dict, tmp_path: Path, space: dict, name: str = "study", **search: Any) -> dict:
    cfg = copy.deepcopy(base_config)
    cfg["train"].update(epochs=2)
    cfg["output_dir"] = str(tmp_path / name)
    cfg["search"] = {"space": space, **search}
    return cfg


def _params(result: Any, keys: list[str]) -> list[tuple]:
    """Each trial's values, in trial order."""
    rows = sorted(result.summary["leaderboard"], key=lambda r: r["trial"])
    return [tuple(r[k] for k in keys) for r in rows]


def test_grid_runs_each_point_once_keeps_one_model_and_its_best_config_reproduces_the_score(
        base_config: dict, tmp_path: Path) -> None:
    space = {"train.lr": {"choice": [5e-3, 1e-3]}, "train.batch_size": {"choice": [8, 16]}}
    result = tunesmith.search(_config(base_config, tmp_path, space, method="grid", metric="loss"))
    rows = result.summary["leaderboard"]
    assert sorted(_params(result, ["train.lr", "train.batch_size"])) == sorted(product([5e-3, 1e-3], [8, 16]))
    assert [r["state"] for r in rows] == ["completed"] * 4
    losses = [r["loss"] for r in rows]
    assert losses == sorted(losses) and result.best == rows[0]  # minimise the validation loss: best first
    for r in rows:  # each trial is an ordinary run folder with its own values, and no checkpoints
        run = Path(r["run_dir"])
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert (cfg["train"]["lr"], cfg["train"]["batch_size"]) == (r["train.lr"], r["train.batch_size"])
        assert json.loads((run / "trial.json").read_text())["state"] == "completed"
        assert json.loads((run / "report.json").read_text())["validation"]["loss"] == r["loss"]
        assert not (run / "checkpoints").exists()
        assert (run / "model").is_dir() == (r is rows[0])  # only the best trial keeps its model
        assert r["parameters"] > 0 and r["ms_per_example"] > 0 and r["samples"] == 2 * 192
    hits = [json.loads((Path(r["run_dir"]) / "data_report.json").read_text())["tokenization_cache_hits"]
            for r in sorted(rows, key=lambda r: r["trial"])]
    assert not any(hits[0].values()) and all(all(h.values()) for h in hits[1:])  # tokenized once
    for name in ("leaderboard.csv", "leaderboard.json", "best_config.yaml", "plots/optimization_history.png",
                 "plots/param_importances.png"):
        assert (result.dir / name).exists(), name
    assert len((result.dir / "leaderboard.csv").read_text().strip().splitlines()) == 5
    page = (result.dir / "leaderboard.html").read_text()  # the same in a browser: plots inline, reports linked
    assert page.count('src="data:image/png;base64,') == 2
    for r in rows:
        assert f'<a href="{Path(r["run_dir"]).relative_to(result.dir).as_posix()}/report.html">' in page

    final = tunesmith.train(result.dir / "best_config.yaml")
    assert final.dir == result.dir / "final"
    assert final.report["validation"]["loss"] == pytest.approx(result.best["loss"], rel=1e-6)


@pytest.mark.parametrize("method,trials", [("random", 3), ("bayes", 5)])
def test_random_and_bayes_draw_the_same_trials_for_the_same_seed(base_config: dict, tmp_path: Path, method: str,
                                                                  trials: int) -> None:
    base_config["train"].update(max_steps=1)
    space = {"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.warmup_ratio": {"uniform": [0.0, 0.5]},
             "train.batch_size": {"choice": [8, 16, 32]}}
    keys = list(space)
    runs = [tunesmith.search(_config(base_config, tmp_path, space, name=f"s{i}-{seed}", method=method,
                                     trials=trials, seed=seed)) for i, seed in enumerate([3, 3, 4])]
    first, again, other = (_params(r, keys) for r in runs)
    assert len(first) == trials and len(set(first)) == trials
    assert first == again
    assert first != other


def test_a_median_pruner_stops_trials_whose_scores_are_bad_and_their_folders_say_so(base_config: dict,
                                                                                     tmp_path: Path) -> None:
    # three trials that learn, then three that cannot (lr 1e-9): at their first evaluation (one epoch)
    # their validation loss is above the median of the finished trials' there, so they stop
    space = {"train.lr": {"choice": [5e-3, 1e-9]}, "train.seed": {"choice": [1, 2, 3]}}
    base_config["train"].update(warmup_ratio=0.0)
    result = tunesmith.search(_config(base_config, tmp_path, space, method="grid", metric="loss", pruner="median"))
    rows = sorted(result.summary["leaderboard"], key=lambda r: r["trial"])
    assert [r["state"] for r in rows] == ["completed"] * 3 + ["pruned"] * 3
    for r in rows[3:]:
        run = Path(r["run_dir"])
        assert json.loads((run / "trial.json").read_text())["state"] == "pruned"
        report = json.loads((run / "report.json").read_text())
        assert report["status"] == "pruned" and report["train"]["epochs_completed"] == 1
        assert not (run / "model").exists() and not (run / "predictions").exists()
        assert r["reason"] == "pruned at 100% of an epoch" and r["samples"] == 192
    assert result.summary["samples_trained"] == 3 * 2 * 192 + 3 * 192


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(base_config: dict,
                                                                           tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    space = {"model.name": {"choice": [missing, base_config["model"]["name"]]}}
    result = tunesmith.search(_config(base_config, tmp_path, space, method="grid"))
    by_model = {r["model.name"]: r for r in result.summary["leaderboard"]}
    assert by_model[missing]["state"] == "failed" and "no-such-model" in by_model[missing]["reason"]
    assert by_model[base_config["model"]["name"]]["state"] == "completed"
    assert result.best["model.name"] == base_config["model"]["name"]
    assert (result.dir / "plots" / "score_vs_latency.png").exists()  # model selection: score against latency


def test_a_study_started_again_runs_only_what_is_missing(base_config: dict, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    base_config["train"].update(max_steps=2)
    cfg = _config(base_config, tmp_path, {"train.lr": {"loguniform": [1e-4, 1e-2]}}, method="random", trials=2)
    first = tunesmith.search(cfg)
    folders = sorted(p.name for p in (first.dir / "trials").iterdir())
    again = tunesmith.search(cfg)
    assert sorted(p.name for p in (again.dir / "trials").iterdir()) == folders == ["0000", "0001"]
    assert _params(again, ["train.lr"]) == _params(first, ["train.lr"])

    # a trial that Ctrl-C stopped is queued again with its values; a bigger budget adds only the difference
    study = open_study(resolve(cfg), create=False)
    trial = study.ask()
    trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)
    trial.set_user_attr("interrupted", True)
    study.tell(trial, state=TrialState.FAIL)
    more = tunesmith.search(cfg, {"search.trials": 4})
    rows = {r["trial"]: r for r in more.summary["leaderboard"]}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert rows[2]["state"] == "failed" and rows[3]["state"] == "completed"
    assert rows[3]["train.lr"] == rows[2]["train.lr"]  # the interrupted trial, run again
    assert rows[4]["state"] == "completed"  # a new draw, not the first trials' values again
    assert rows[4]["train.lr"] not in (rows[0]["train.lr"], rows[1]["train.lr"])
    assert sorted(p.name for p in (more.dir / "trials").iterdir()) == ["0000", "0001", "0003", "0004"]


def test_values_drawn_again_reuse_the_earlier_trials_score_without_training(base_config: dict,
                                                                          tmp_path: Path) -> None:
    base_config["train"].update(max_steps=2)
    space = {"train.lr": {"choice": [5e-3, 1e-3]}}
    result = tunesmith.search(_config(base_config, tmp_path, space, method="random", trials=6, seed=0,
                                              metric="loss"))
    rows = sorted(result.summary["leaderboard"], key=lambda r: r["trial"])
    assert len(rows) == 6 and all(r["state"] == "completed" for r in rows)
    first = {}
    for r in rows:
        first.setdefault(r["train.lr"], r)
    assert len(first) == 2  # six draws from two values: each value trained once
    for r in rows:
        twin = first[r["train.lr"]]
        if r is twin:
            assert r["samples"] == 2 * 16 and Path(r["run_dir"]).is_dir()
        else:
            assert r["loss"] == twin["loss"] and r["samples"] is None and r["run_dir"] is None
            assert r["reason"] == f"the values of trial {twin['trial']}: its scores reused, nothing trained"
    assert sorted(p.name for p in (result.dir / "trials").iterdir()) == sorted(
        f"{r['trial']:04d}" for r in first.values())
    assert result.summary["samples_trained"] == 2 * 2 * 16


def test_a_pruned_twins_scores_are_replayed_to_the_pruner_as_it_judges_now() -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from tunesmith.hpsearch import _same_as_earlier

    dist = {"x": CategoricalDistribution([1, 2, 3])}

    def study_with(twin_score: float) -> Any:
        study = optuna.create_study(direction="minimize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
        for score in (1.0, 2.0):  # the median at step 100 is 1.5
            study.add_trial(create_trial(params={"x": 2}, distributions=dist, value=score,
                                         intermediate_values={100: score}))
        study.add_trial(create_trial(params={"x": 1}, distributions=dist, state=TrialState.PRUNED,
                                     intermediate_values={50: 9.0, 100: twin_score}))
        study.enqueue_trial({"x": 1})
        return study

    trial = study_with(3.0).ask()
    trial.suggest_categorical("x", [1, 2, 3])
    with pytest.raises(optuna.TrialPruned, match="the values of trial 2, pruned at 100% of an epoch"):
        _same_as_earlier(trial, {"x": 1})  # worse than the median at 100%: pruned there again

    trial = study_with(1.2).ask()  # a twin pruned when the study knew less: better than today's median
    trial.suggest_categorical("x", [1, 2, 3])
    assert _same_as_earlier(trial, {"x": 1}) is None  # so this trial trains
    assert trial.study.trials[-1].user_attrs["same_as_trial"] is None

    trial = study_with(3.0).ask()
    trial.suggest_categorical("x", [1, 2, 3])
    assert _same_as_earlier(trial, {"x": 3}) is None  # values no trial has run


@pytest.mark.parametrize("trials, min_resource, epochs, expected", [
    (12, 25, [1, 2], 2),   # 2 brackets share a quarter of 12 trials: 2 random draws each
    (12, 100, [1, 2], 3),  # 1 bracket: the whole quarter
    (40, 10, [1, 3], 3),   # 4 brackets share 10
])
def test_tpe_startup_trials_are_shared_out_between_hyperband_brackets(
        base_config: dict, tmp_path: Path, trials: int, min_resource: int, epochs: list[int], expected: int) -> None:
    import optuna

    from tunesmith.hpsearch import max_resource, startup_trials

    cfg = _config(base_config, tmp_path, {"train.epochs": {"choice": epochs}}, method="bayes", trials=trials,
                  pruner="hyperband", min_resource=min_resource)
    s = resolve(cfg, None, "override")
    pruner = optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource(s))
    pruner._try_initialization(optuna.create_study())  # Optuna's own bracket count, the reference
    quarter = min(10, max(3, trials // 4))
    assert startup_trials(s) == -(-quarter // pruner._n_brackets) == expected
    cfg["search"]["pruner"] = "median"
    assert startup_trials(resolve(cfg, None, "override")) == quarter


def test_space_keys_and_values_are_checked_before_any_training(base_config: dict, tmp_path: Path) -> None:
    cases = [({"train.lrr": {"choice": [1e-3]}}, {}, "did you mean 'train.lr'"),
             ({"train.batch_size": {"choice": [16, "big"]}}, {}, "train.batch_size"),
             ({"train.lr": {"loguniform": [1e-5, 1e-3]}}, {"method": "grid"}, "a grid needs values it can list"),
             ({"train.lr": {"loguniform": [0, 1e-3]}}, {}, "loguniform needs low > 0"),
             ({"train.lr": {"choice": [1e-3], "uniform": [0, 1]}}, {}, "exactly one of"),
             ({"train.lr": {"choice": [1e-3]}}, {"metric": "bleu"}, "search.metric 'bleu'")]
    for space, search, expected in cases:
        with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("(", r"\(")):
            tunesmith.search(_config(base_config, tmp_path, space, **search))
        assert not (tmp_path / "study").exists()


def test_two_local_workers_share_a_grid_without_running_a_point_twice(base_config: dict, tmp_path: Path) -> None:
    base_config["train"].update(max_steps=2)  # what is tested is the claim, not the training
    space = {"train.lr": {"choice": [5e-3, 1e-3, 2e-3]}, "train.batch_size": {"choice": [8, 16]}}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(_config(base_config, tmp_path, space, method="grid", workers=2)))
    result = tunesmith.search(path)
    rows = result.summary["leaderboard"]
    assert sorted(_params(result, ["train.lr", "train.batch_size"])) == sorted(product([5e-3, 1e-3, 2e-3], [8, 16]))
    assert [r["state"] for r in rows] == ["completed"] * 6
    assert (result.dir / STUDY_DB).exists()


def test_a_queued_trial_is_claimed_by_one_worker_even_when_another_reads_it_at_the_same_moment(
        base_config: dict, tmp_path: Path) -> None:
    import sqlite3

    s = resolve(_config(base_config, tmp_path, {"train.lr": {"choice": [5e-3, 1e-3]}}, method="grid"))
    first, second = open_study(s, create=True), open_study(s, create=False, worker=1)
    backend = first._storage._backend
    check, seen = backend.check_trial_is_updatable, []

    def between_read_and_write(trial_id: int, state: Any) -> None:
        """The first worker has read its queued trial (WAITING) and not yet marked it RUNNING: the second
        asks now, unless the first holds the database's write lock, for then the second waits for it."""
        check(trial_id, state)
        if seen:
            return
        probe = sqlite3.connect(s.study_dir / STUDY_DB, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            seen.append(second.ask().number)
        except sqlite3.OperationalError as e:
            seen.append(str(e))
        finally:
            probe.close()

    backend.check_trial_is_updatable = between_read_and_write
    assert first.ask().number == 0
    assert seen == ["database is locked"]
    assert second.ask().number == 1  # the next queued point, not the first worker's again


def _grid_cli_config(base_config: dict, tmp_path: Path, space: dict, **search: Any) -> Path:
    base_config["train"].update(max_steps=2)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(_config(base_config, tmp_path, space, method="grid", **search)))
    return path


def test_the_search_command_exits_non_zero_naming_a_grid_point_that_did_not_complete(base_config: dict,
                                                                                     tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tunesmith.cli import app

    missing, real = str(tmp_path / "no-such-model"), base_config["model"]["name"]
    path = _grid_cli_config(base_config, tmp_path, {"model.name": {"choice": [missing, real]}})
    result = CliRunner().invoke(app, ["search", str(path)], env={"COLUMNS": "400"})
    out = " ".join(result.output.split())
    assert result.exit_code == 1, out
    assert "Traceback" not in out
    assert (f"error: 1 of 2 grid points did not complete (see {tmp_path / 'study' / 'leaderboard.csv'}): "
            f"model.name={missing}: trial 0 failed: ") in out
    summary = json.loads((tmp_path / "study" / "leaderboard.json").read_text())
    assert [(u["point"], u["trial"], u["state"]) for u in summary["unfinished"]] == [({"model.name": missing}, 0,
                                                                                     "failed")]
    assert summary["trials"]["completed"] == 1 and summary["worker_exit_codes"] == []


def test_a_worker_whose_trial_another_worker_failed_meanwhile_goes_on_with_the_next(
        base_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import optuna
    from optuna.trial import TrialState

    import tunesmith.run
    from tunesmith.hpsearch import work

    base_config["train"].update(max_steps=2)
    s = resolve(_config(base_config, tmp_path, {"train.lr": {"choice": [5e-3, 1e-3]}}, method="grid"))
    study, other = open_study(s, create=True), open_study(s, create=False, worker=1)
    real = tunesmith.run.train

    def train_while_another_worker_fails_trial_0(base: Any, overrides: dict, **kwargs: Any) -> Any:
        if overrides["output_dir"].endswith("0000"):  # trial 0's heartbeat was late: what fail_stale_trials does
            other._storage.set_trial_state_values(_trial(other, 0)._trial_id, TrialState.FAIL)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)(other, _trial(other, 0))
        return real(base, overrides, **kwargs)

    monkeypatch.setattr(tunesmith.run, "train", train_while_another_worker_fails_trial_0)
    assert work(s, study) == 3  # trial 0, then 1, then 2 (trial 0's values again), no exception
    assert ("search: trial 0: another worker marked it failed while this worker still ran it (its heartbeat was "
            "late); this worker's result for it is dropped") in " ".join(capsys.readouterr().err.split())
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert {n: t.state for n, t in trials.items()} == {0: TrialState.FAIL, 1: TrialState.COMPLETE,
                                                       2: TrialState.COMPLETE}
    assert trials[2].params == trials[0].params and trials[2].system_attrs["retry_history"] == [0]


def test_a_killed_trials_checkpoints_and_dead_lock_are_removed_and_its_point_runs_when_the_study_resumes(
        base_config: dict, tmp_path: Path) -> None:
    import socket
    import sqlite3

    from tunesmith.hpsearch import suggest
    from tunesmith.rundir import LOCK_NAME

    base_config["train"].update(max_steps=2)
    space = {"train.lr": {"choice": [5e-3, 1e-3]}}
    cfg = _config(base_config, tmp_path, space, method="grid", heartbeat_seconds=1)
    s = resolve(cfg)
    study = open_study(s, create=True)
    # what a worker killed with -9 during trial 0 leaves: the trial RUNNING with a heartbeat long stale, and
    # its folder with checkpoints and the lock of a process that is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask()
    suggest(trial, "train.lr", s.spec.space["train.lr"])
    run_dir = s.study_dir / "trials" / "0000"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    (run_dir / "checkpoints" / "step-1").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-1" / "model.safetensors").write_bytes(b"weights")
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                 "started": "2026-01-01T00:00:00+00:00"}))
    study._storage.record_heartbeat(trial._trial_id)
    with sqlite3.connect(s.study_dir / STUDY_DB) as db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour')")

    result = tunesmith.search(cfg)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / LOCK_NAME).exists()
    rows = {r["trial"]: r for r in result.summary["leaderboard"]}
    assert {n: (r["state"], r["train.lr"]) for n, r in rows.items()} == {
        0: ("failed", 5e-3), 1: ("completed", 1e-3), 2: ("completed", 5e-3)}
    assert rows[0]["reason"] == "worker killed or interrupted; queued again"
    assert result.problems == []
    for n in (1, 2):
        assert not (Path(rows[n]["run_dir"]) / "checkpoints").exists()


# ---------------------------------------------------------------- PostgreSQL, two workers, one killed

@pytest.fixture(scope="session")
def postgres_url() -> Any:
    """TUNESMITH_TEST_POSTGRES (.ci/run sets it, so CI fails rather than skips when the server is not
    there), else a server this fixture starts with .ci/postgres; skipped only when that cannot run."""
    url = os.environ.get("TUNESMITH_TEST_POSTGRES")
    if url:
        yield url
        return
    try:
        out = subprocess.run(["bash", str(REPO / ".ci" / "postgres"), "start"], capture_output=True, text=True,
                             timeout=300, check=True)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"PostgreSQL could not be started with .ci/postgres ({getattr(e, 'stderr', '') or e}); "
                    "set TUNESMITH_TEST_POSTGRES to a database URL to run this test")
    url, folder = out.stdout.split()[-2:]
    yield url
    subprocess.run(["bash", str(REPO / ".ci" / "postgres"), "stop", folder], check=False, timeout=120)


def _wait_for(check: Any, what: str, limit: float = 300.0) -> Any:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"waited {limit:.0f} s for {what}")


def _trial(study: Any, number: int) -> Any:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def test_two_workers_on_postgresql_survive_one_killed_mid_trial(base_config: dict, tmp_path: Path,
                                                                postgres_url: str) -> None:
    from optuna.trial import TrialState

    space = {"train.lr": {"choice": [5e-3, 1e-3]}, "train.batch_size": {"choice": [8, 16]}}
    cfg = _config(base_config, tmp_path, space, method="grid", storage=postgres_url, heartbeat_seconds=1,
                  study_name=f"test-{os.getpid()}-{time.time_ns()}")
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    s = resolve(path)
    study = open_study(s, create=True)  # what `tunesmith search` does before it starts workers
    worker = [sys.executable, "-m", "tunesmith", "search", str(path), "--join"]
    first = subprocess.Popen([*worker, "--worker-index", "0"])
    second = subprocess.Popen([*worker, "--worker-index", "1"])
    try:
        def first_running() -> Any:
            return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                         if t.user_attrs.get("worker", "").endswith(f":{first.pid}")), None)

        # freeze the first worker inside a trial (its heartbeat stops with it), then kill it
        while True:
            victim = _wait_for(first_running, "the first worker to run a trial")
            first.send_signal(signal.SIGSTOP)
            if _trial(study, victim.number).state == TrialState.RUNNING:
                break
            first.send_signal(signal.SIGCONT)  # it finished in between: catch the next one
        first.kill()
        first.wait(timeout=60)
        assert second.wait(timeout=600) == 0
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted((t.params["train.lr"], t.params["train.batch_size"]) for t in done) == \
        sorted(product([5e-3, 1e-3], [8, 16]))  # every point once: none lost, none twice
    killed = _trial(study, victim.number)
    assert killed.state == TrialState.FAIL
    retry = [t for t in done if victim.number in t.system_attrs.get("retry_history", [])]
    assert len(retry) == 1 and retry[0].params == victim.params
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
