"""Hyperparameter search: an Optuna study over any config keys, each trial an ordinary run folder.

The study lives in a database (SQLite in the study folder, or any SQLAlchemy URL such as PostgreSQL),
so several worker processes, on one machine or many, share it: each asks the study for a trial, trains
it with `run.train`, and tells the study the validation score. Nothing here trains by itself.

- grid: every combination is queued in the study once, before any worker starts; a worker takes queued
  trials only (the database hands each to one worker: SQLite under BEGIN IMMEDIATE) and stops when none
  is left, so no point runs twice. A point that did not complete makes `tunesmith search` exit non-zero.
- random / bayes: Optuna's RandomSampler / TPESampler, seeded from (seed, worker, trials so far), until
  `search.trials` trials exist (a trial that ran out of time or was killed counts; one retried does not).
- A running trial beats a heartbeat; one silent for 2 x heartbeat_seconds (its worker was killed) is
  marked failed by the next worker that looks, its parameters are queued again, and its checkpoints and
  dead lock are removed. A study interrupted with Ctrl-C queues the interrupted trial again when it is
  started again.
- A pruner gets the validation score at each evaluation, at the percent of an epoch trained; a pruned
  trial stops there (`Control.prune`; its report's status is "pruned"): no test, no model.
- Only the best completed trial keeps its model/ (search.keep_models keeps all); no trial keeps
  checkpoints.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from .config import Dimension, RunConfig, SearchConfig, build_config, load_config
from .errors import ConfigError, TunesmithError
from .io import atomic_write_json, atomic_write_text
from .rundir import LOCK_NAME, remove_dead_lock

HYPERBAND_REDUCTION = 3  # Optuna's default: each rung keeps the best third

TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"
STUDY_DB = "study.db"
POLL_SECONDS = 5.0  # how often a worker with nothing to run looks for trials a dead worker left
DEFAULT_TRIALS = 20


@dataclass
class Search:
    """A search as resolved from the config: what every worker needs to run trials."""

    base: RunConfig
    """The config without its search section: each trial is this plus the trial's values."""
    spec: SearchConfig
    study_dir: Path
    metric: str
    direction: str
    trials: int
    storage_url: str
    study_name: str
    grid: list[dict[str, Any]] = field(default_factory=list)

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


def resolve(config: str | Path | dict | RunConfig, overrides: list[str] | dict | None = None,
            flag: str = "override") -> Search:
    """Load the config, check every space key and value against the schema, and settle the metric,
    direction, trial budget and storage, all before any data is read or model loaded."""
    from .tasks.base import get_task

    cfg = load_config(config, overrides, flag)
    if cfg.search is None:
        raise ConfigError("this config has no search section; add one, e.g.\n"
                          "search:\n  method: bayes\n  trials: 12\n  space:\n"
                          "    train.lr: {loguniform: [1.0e-5, 1.0e-4]}\n    train.batch_size: {choice: [16, 32]}")
    spec = cfg.search
    if cfg.train.self_training is not None:  # a trial's pruner would see every round's evaluations as one run's
        raise ConfigError("a search cannot run train.self_training trials: search the hyperparameters without it, "
                          "then self-train with the best config (best_config.yaml)")
    base = cfg.model_copy(update={"search": None})
    raw = base.model_dump(mode="json")
    for key, dim in spec.space.items():
        if key.split(".")[0] == "search" or key == "output_dir":
            raise ConfigError(f"search.space.{key}: a search cannot vary {key}")
        for value in _probe_values(dim):
            try:
                build_config(raw, overrides={key: value})
            except ConfigError as e:
                raise ConfigError(f"search.space.{key}: the value {value!r} does not make a valid config:\n"
                                  + str(e).split("\n", 1)[-1]) from None
    from .data.prepare import load_splits

    task = get_task(base)
    task.fit(load_splits(base.data, task.roles()).splits)  # metrics can depend on the data (problem type)
    metric, higher = task.selected_metric(spec.metric or base.eval.metric, "search.metric" if spec.metric else
                                          "eval.metric")
    direction = spec.direction or ("maximize" if higher else "minimize")
    grid = grid_points(spec.space) if spec.method == "grid" else []
    if spec.method == "grid" and spec.trials is not None and spec.trials != len(grid):
        raise ConfigError(f"search.trials is {spec.trials}, but the grid has {len(grid)} points; "
                          "leave search.trials out for a grid search")
    study_dir = Path(base.output_dir).expanduser().resolve()
    url = spec.storage or f"sqlite:///{study_dir / STUDY_DB}"
    return Search(base, spec, study_dir, metric, direction, len(grid) or spec.trials or DEFAULT_TRIALS, url,
                  spec.study_name or study_dir.name, grid)


def _probe_values(dim: Dimension) -> list[Any]:
    """The values that stand for a dimension when checking it: every choice, or both ends of a range."""
    if dim.choice is not None:
        return list(dim.choice)
    low, high = getattr(dim, dim.kind)
    return [low, high]


def grid_points(space: dict[str, Dimension]) -> list[dict[str, Any]]:
    """The Cartesian product of the space, in the order written (the last key varies fastest)."""
    axes = []
    for key, dim in space.items():
        if dim.choice is not None:
            axes.append(list(dim.choice))
        elif dim.integer is not None:
            axes.append(list(range(dim.integer[0], dim.integer[1] + 1, int(dim.step or 1))))
        elif dim.uniform is not None and dim.step is not None:
            n = int(math.floor((dim.uniform[1] - dim.uniform[0]) / dim.step + 1e-9))
            axes.append([round(dim.uniform[0] + k * dim.step, 12) for k in range(n + 1)])
        else:
            raise ConfigError(f"search.space.{key}: a grid needs values it can list: choice, int, or uniform "
                              f"with a step (got {dim.kind}); use method random or bayes for continuous ranges")
    return [dict(zip(space, values)) for values in product(*axes)]


def suggest(trial: Any, key: str, dim: Dimension) -> Any:
    """The trial's value for one key (a queued trial's fixed value, or the sampler's draw)."""
    if dim.choice is not None:
        return trial.suggest_categorical(key, dim.choice)
    if dim.loguniform is not None:
        return trial.suggest_float(key, *dim.loguniform, log=True)
    if dim.uniform is not None:
        return trial.suggest_float(key, *dim.uniform, step=dim.step)
    return trial.suggest_int(key, *dim.integer, step=int(dim.step or 1))


# ---------------------------------------------------------------- the study

def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _fingerprint(s: Search) -> dict[str, Any]:
    """What makes two invocations the same study: a changed space or metric is a new study, not a resume."""
    return {"method": s.spec.method, "space": {k: d.model_dump(mode="json") for k, d in s.spec.space.items()},
            "metric": s.metric, "direction": s.direction}


def open_study(s: Search, *, create: bool, worker: int = 0) -> Any:
    """The study in its storage, with this worker's sampler and the pruner. `create`: make it (and queue
    the grid) if it does not exist; a joining worker only loads it."""
    optuna = _optuna()
    if s.storage_url.startswith("sqlite:///"):
        Path(s.storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    sqlite = s.storage_url.startswith("sqlite")
    storage = optuna.storages.RDBStorage(
        s.storage_url, heartbeat_interval=s.spec.heartbeat_seconds, grace_period=2 * s.spec.heartbeat_seconds,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
        # sqlite3 opens no transaction itself: _begin_immediate does, for every transaction
        engine_kwargs={"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else None)
    if sqlite:
        _begin_immediate(storage.engine)
    pruner = {"none": optuna.pruners.NopPruner(),
              "median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
              "hyperband": optuna.pruners.HyperbandPruner(
                  min_resource=s.spec.min_resource, max_resource=max_resource(s), reduction_factor=HYPERBAND_REDUCTION),
              }[s.spec.pruner]
    names = optuna.get_all_study_names(storage)
    if s.study_name not in names:
        if not create:
            raise ConfigError(f"no study named '{s.study_name}' in {_shown(s.storage_url)}: start it with "
                              "`tunesmith search CONFIG` first, then add workers with --join")
        study = optuna.create_study(storage=storage, study_name=s.study_name, direction=s.direction,
                                    pruner=pruner, load_if_exists=True)
        if "tunesmith" not in study.user_attrs:
            study.set_user_attr("tunesmith", _fingerprint(s))
    else:
        study = optuna.load_study(storage=storage, study_name=s.study_name, pruner=pruner)
    stored = study.user_attrs.get("tunesmith")
    if stored is not None and stored != json.loads(json.dumps(_fingerprint(s))):
        raise ConfigError(f"the study '{s.study_name}' in {_shown(s.storage_url)} was started with another "
                          f"search (method, space or metric): {json.dumps(stored)}; set search.study_name or "
                          "output_dir for a new study")
    study.sampler = _sampler(s, worker, len(study.get_trials(deepcopy=False)))
    if create:
        for point in s.grid:
            study.enqueue_trial(point, skip_if_exists=True)
        _requeue_interrupted(study)
    return study


def _begin_immediate(engine: Any) -> None:
    """Begin every transaction on a SQLite study with BEGIN IMMEDIATE, which takes the database's write
    lock at once. SQLite ignores SELECT ... FOR UPDATE (optuna#1014, #4621), so in a deferred transaction
    two workers both read a queued trial as WAITING and both mark it RUNNING: both train the same grid
    point and one of them then fails it. Under the lock, the second worker reads it after the first
    committed, sees RUNNING and takes the next one (SQLAlchemy's recipe for pysqlite: sqlite3's own
    BEGIN is off, isolation_level None, and the engine's "begin" event emits ours)."""
    from sqlalchemy import event

    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))


def max_resource(s: Search) -> int:
    """Hyperband's largest budget, in percent of an epoch: the most epochs a trial can train. Optuna's
    "auto" takes the first finished trial's length instead, which is too short when that trial drew
    fewer epochs than others will, and then no bracket ever reaches the longest trials."""
    epochs = s.base.train.epochs
    dim = s.spec.space.get("train.epochs")
    if dim is not None:
        epochs = max(dim.choice) if dim.choice is not None else getattr(dim, dim.kind)[1]
    return max(s.spec.min_resource, math.ceil(100 * epochs))


def _sampler(s: Search, worker: int, existing: int) -> Any:
    """This worker's sampler, seeded from (search.seed, worker, trials already in the study): a new study
    with one worker draws the same trials for the same seed, and a resumed study does not draw its
    first trials' values again."""
    import numpy as np

    optuna = _optuna()
    seed = int(np.random.SeedSequence([s.spec.seed, worker, existing]).generate_state(1)[0])
    if s.spec.method == "bayes":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(s))
    return optuna.samplers.RandomSampler(seed=seed)


def startup_trials(s: Search) -> int:
    """TPE's random startup trials: a quarter of the budget, 3 to 10 (TPE's own default of 10 is most of a
    12-trial budget). Under hyperband, TPE sees only the trials of the current trial's bracket, so each
    bracket makes its own startup draws: the quarter is shared out between the brackets."""
    n = min(10, max(3, s.trials // 4))
    if s.spec.pruner == "hyperband":  # Optuna's bracket count for these resources
        n = math.ceil(n / (math.floor(math.log(max_resource(s) / s.spec.min_resource, HYPERBAND_REDUCTION)) + 1))
    return n


def _shown(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _retried(trials: list[Any]) -> set[int]:
    """Numbers of failed trials that were queued again (a stale heartbeat, or an interrupted study)."""
    out = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", []))
        if "retry_of" in t.user_attrs:
            out.add(t.user_attrs["retry_of"])
    return out


def _requeue_interrupted(study: Any) -> None:
    """Queue again the trials that Ctrl-C stopped, so that a restarted study resumes where it stopped."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = _retried(trials)
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in done:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)


def _counted(trials: list[Any]) -> int:
    """Trials that use the budget: all but the failed ones queued again and a grid's surplus."""
    from optuna.trial import TrialState

    retried = _retried(trials)
    return sum(1 for t in trials if not (t.state == TrialState.FAIL and (
        t.number in retried or t.user_attrs.get("surplus"))))


# ---------------------------------------------------------------- one trial

class _Surplus(Exception):
    """A grid worker was handed a fresh trial: another worker took the last queued point meanwhile."""


def _trial_dir(s: Search, number: int) -> Path:
    return s.study_dir / TRIALS_DIR / f"{number:04d}"


def _pruning_callback(trial: Any, metric: str) -> Any:
    from .training.loop import Control

    def report(event: Any) -> Any:
        if event.kind != "eval":
            return None
        value = event.data["metrics"].get(metric)
        if value is None or not math.isfinite(value):
            return None
        # the step is the percent of an epoch trained, so trials with other batch sizes compare fairly
        trial.report(float(value), step=max(1, round(100 * event.data["epochs"])))
        return Control(prune=trial.should_prune())

    return report


def _record(trial: Any, report: dict, metric: str) -> None:
    """What the leaderboard shows, kept in the study (so any machine's worker can build it)."""
    t = report.get("train") or {}
    params = t.get("parameters") or {}
    trial.set_user_attr("train_s", t.get("train_runtime_s"))
    trial.set_user_attr("samples", t.get("samples"))
    trial.set_user_attr("parameters", params.get("total"))
    trial.set_user_attr("trainable_parameters", params.get("trainable"))
    trial.set_user_attr("best_step", t.get("best_step"))
    if "inference" in report:
        trial.set_user_attr("ms_per_example", report["inference"]["ms_per_example"])
    val = report.get("validation") or {}
    trial.set_user_attr("validation", {k: v for k, v in val.items() if isinstance(v, (int, float))
                                       and not isinstance(v, bool)})


def _objective(s: Search, current: dict[str, Any]) -> Any:
    """The function each trial runs; `current["trial"]` is the trial it runs now (for work's errors)."""
    optuna = _optuna()
    from .run import train

    def objective(trial: Any) -> float:
        current["trial"] = trial
        queued = "fixed_params" in _stored_trial(trial.study, trial.number).system_attrs
        if s.spec.method == "grid" and not queued:
            trial.set_user_attr("surplus", True)
            raise _Surplus("the grid was used up while this worker asked for a trial; nothing was run")
        params = {key: suggest(trial, key, dim) for key, dim in s.spec.space.items()}
        reused = _same_as_earlier(trial, params)
        if reused is not None:
            return reused
        run_dir = _trial_dir(s, trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        _say(f"trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in params.items()))
        overrides = {**params, "output_dir": str(run_dir), "eval.metric": s.metric}
        state, reason, value = "failed", None, None
        try:
            run = train(s.base, overrides, callbacks=[_pruning_callback(trial, s.metric)])
            _record(trial, run.report, s.metric)
            if run.report["status"] == "pruned":
                state, reason = "pruned", run.report["reason"]
                raise optuna.TrialPruned(reason)
            value = run.report["validation"].get(s.metric)
            if value is None or not math.isfinite(value):
                raise ValueError(f"the validation {s.metric} is {value}")
            state = "completed"
            return float(value)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            reason = "interrupted"
            raise
        except Exception as e:  # noqa: BLE001 - out of memory, NaN loss, a bad combination: the study goes on
            reason = f"{type(e).__name__}: {e}"[:4000]
            trial.set_user_attr("error", reason)
            raise
        finally:
            _release_memory()
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            if run_dir.exists():
                atomic_write_json(run_dir / TRIAL_FILE, {"trial": trial.number, "study": s.study_name,
                                                         "state": state, "params": params, "metric": s.metric,
                                                         "value": value, "reason": reason})

    return objective


def _same_as_earlier(trial: Any, params: dict[str, Any]) -> float | None:
    """A sampler that draws values an earlier trial ran (TPE does, over a small discrete space) gets that
    trial's result without training: runs are seeded, so training again gives the same scores. A
    completed twin's score is returned; a pruned twin's scores are replayed to the pruner, which prunes
    this trial where it would prune them now, and otherwise (the twin was stopped early by a study that
    has moved on) the trial trains (None)."""
    optuna = _optuna()
    from optuna.trial import TrialState

    twins = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
             if t.params == params and t.user_attrs.get("same_as_trial") is None]
    if not twins:
        return None
    twin = twins[0]
    trial.set_user_attr("same_as_trial", twin.number)
    if twin.state == TrialState.COMPLETE:
        _say(f"trial {trial.number}: the values of trial {twin.number}; its score {twin.value:.6g} is reused")
        return float(twin.value)
    for step, value in sorted(twin.intermediate_values.items()):
        trial.report(value, step)
        if trial.should_prune():
            _say(f"trial {trial.number}: the values of trial {twin.number}; its scores replayed, pruned at {step}%")
            raise optuna.TrialPruned(f"the values of trial {twin.number}, pruned at {step}% of an epoch")
    trial.set_user_attr("same_as_trial", None)
    return None


def _release_memory() -> None:
    """The finished trial's model and optimizer, freed before the next trial loads its own (a GPU's
    cached blocks too), so that a long study does not run out of memory trial by trial."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _drop_other_models(s: Search, study: Any) -> None:
    """Only the best completed trial keeps its model (the best only gets better, so this is safe to run
    from every worker at any time)."""
    from optuna.trial import TrialState

    if s.spec.keep_models:
        return
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return
    best = study.best_trial
    twin = best.user_attrs.get("same_as_trial")  # a reused score: the model is its twin's
    best = best.number if twin is None else twin
    for t in done:
        if t.number != best and "run_dir" in t.user_attrs:
            for sub in ("model", "adapter"):
                shutil.rmtree(Path(t.user_attrs["run_dir"]) / sub, ignore_errors=True)


def work(s: Search, study: Any, *, timeout: float | None = None) -> int:
    """Run trials until the study needs no more; returns how many this worker ran.

    With nothing to start but trials running elsewhere, the worker waits: one of them may be a dead
    worker's, which comes back queued once its heartbeat is stale.
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    started, ran = time.monotonic(), 0
    current: dict[str, Any] = {}
    objective = _objective(s, current)
    while timeout is None or time.monotonic() - started < timeout:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        _clean_dead_trials(trials)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if waiting or (s.spec.method != "grid" and _counted(trials) < s.trials):
            current.clear()
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,),
                               callbacks=[lambda st, _: _drop_other_models(s, st)])
            except (ValueError, AssertionError, optuna.exceptions.UpdateFinishedTrialError):
                if not _finished_elsewhere(study, current.get("trial")):
                    raise
            ran += 1
        elif any(t.state == TrialState.RUNNING for t in trials):
            time.sleep(POLL_SECONDS)
        else:
            break
    return ran


def _stored_trial(study: Any, number: int) -> Any:
    """The trial numbered `number` as the study's storage holds it now (a FrozenTrial read afresh, not this
    worker's copy), through Optuna's public API."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _finished_elsewhere(study: Any, trial: Any) -> bool:
    """Whether another worker finished the trial this one was running, which makes Optuna's tell fail
    (UpdateFinishedTrialError, "Cannot tell a FAIL trial"): its heartbeat came late (the worker was
    stopped or starved for 2 x heartbeat_seconds), so another worker marked it failed and queued its
    values again. Said, and this worker goes on with the next trial instead of dying with a traceback."""
    if trial is None:
        return False
    frozen = _stored_trial(study, trial.number)
    if not frozen.state.is_finished():
        return False
    state = {"FAIL": "failed", "COMPLETE": "completed"}.get(frozen.state.name, frozen.state.name.lower())
    _say(f"trial {frozen.number}: another worker marked it {state} while this worker still ran it (its "
         "heartbeat was late); this worker's result for it is dropped")
    return True


def _clean_dead_trials(trials: list[Any]) -> None:
    """A trial whose worker was killed (kill -9, a machine lost) keeps its checkpoints/ and a lock that no
    process holds. Once the study has marked it failed, both go, as its own cleanup would have done; a
    folder whose lock a running process (or another host) holds is left alone."""
    from optuna.trial import TrialState

    for t in trials:
        if t.state != TrialState.FAIL or "run_dir" not in t.user_attrs:
            continue
        run_dir = Path(t.user_attrs["run_dir"])
        if ((run_dir / "checkpoints").exists() or (run_dir / LOCK_NAME).exists()) and remove_dead_lock(run_dir):
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


# ---------------------------------------------------------------- the leaderboard

def leaderboard(s: Search, study: Any) -> list[dict[str, Any]]:
    """One row per trial: completed ones best first, then pruned, running, failed."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    retried = _retried(trials)
    rows = []
    for t in trials:
        state = t.state.name.lower()
        reason = t.user_attrs.get("error")
        if t.state == TrialState.FAIL and t.number in retried:
            reason = "worker killed or interrupted; queued again"
        elif t.state == TrialState.FAIL and reason is None:
            reason = "interrupted" if t.user_attrs.get("interrupted") else "worker stopped (heartbeat lost)"
        elif t.state == TrialState.PRUNED:
            last = max(t.intermediate_values) if t.intermediate_values else None
            reason = f"pruned at {last}% of an epoch" if last is not None else "pruned"
        twin = t.user_attrs.get("same_as_trial")
        if twin is not None and t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            reason = f"the values of trial {twin}: its scores reused, nothing trained" + (
                f"; {reason}" if reason else "")
        rows.append({"trial": t.number, "state": "completed" if state == "complete" else state,
                     **{k: t.params.get(k) for k in s.spec.space},
                     s.metric: t.value if t.state == TrialState.COMPLETE else None,
                     "train_s": t.user_attrs.get("train_s"), "samples": t.user_attrs.get("samples"),
                     "parameters": t.user_attrs.get("parameters"),
                     "trainable_parameters": t.user_attrs.get("trainable_parameters"),
                     "ms_per_example": t.user_attrs.get("ms_per_example"),
                     "run_dir": t.user_attrs.get("run_dir"), "reason": reason})
    order = {"completed": 0, "pruned": 1, "running": 2, "waiting": 3, "fail": 4}
    sign = -1 if s.maximize else 1
    rows.sort(key=lambda r: (order.get(r["state"], 5), sign * r[s.metric] if r[s.metric] is not None else 0,
                             r["trial"]))
    for r in rows:
        r["state"] = "failed" if r["state"] == "fail" else r["state"]
    return rows


def unfinished_points(s: Search, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid points that no trial completed or pruned, each with its last trial, state and reason."""
    out = []
    for point in s.grid:
        mine = [r for r in rows if all(r[k] == v for k, v in point.items())]
        if any(r["state"] in ("completed", "pruned") for r in mine):
            continue
        last = max(mine, key=lambda r: r["trial"], default=None)
        out.append({"point": point, "trial": last["trial"] if last else None,
                    "state": last["state"] if last else "never queued", "reason": last["reason"] if last else None})
    return out


def search_problems(s: Search, summary: dict[str, Any]) -> list[str]:
    """Why the search is not complete: grid points not completed (a failed trial, or one still queued when
    the search stopped) and local workers that exited with an error. `tunesmith search` exits non-zero
    on any, so that a script does not take a partial grid for a whole one."""
    out = []
    unfinished = summary.get("unfinished", [])
    if unfinished:
        lines = [f"{len(unfinished)} of {len(s.grid)} grid points did not complete (see "
                 f"{s.study_dir / 'leaderboard.csv'}):"]
        for u in unfinished:
            values = ", ".join(f"{k}={v}" for k, v in u["point"].items())
            if u["trial"] is None:
                why = "no trial has its values; run the same command again to queue it"
            elif u["state"] == "failed":
                why = f"trial {u['trial']} failed: {u['reason']}"
            elif u["state"] == "running":
                why = (f"trial {u['trial']} is still marked running (its worker stopped, or runs elsewhere); run "
                       "the same command again to run it once its heartbeat is stale")
            else:
                why = (f"trial {u['trial']} is still queued: the search stopped before it ran (search.timeout, "
                       "or every worker stopped); run the same command again to run it")
            lines.append(f"  {values}: {why}")
        out.append("\n".join(lines))
    for k, code in enumerate(summary.get("worker_exit_codes", [])):
        if code:
            out.append(f"worker {k} exited with code {code} (its error is printed above); the trial it was "
                       "running, if any, is queued again when the next worker finds its heartbeat stale")
    return out


def write_results(s: Search, study: Any, worker_exit_codes: list[int] | None = None) -> dict[str, Any]:
    """leaderboard.{csv,json,html}, best_config.yaml and the plots; returns the JSON's content."""
    rows = leaderboard(s, study)
    best = next((r for r in rows if r["state"] == "completed"), None)
    summary = {"study": s.study_name, "storage": _shown(s.storage_url), "method": s.spec.method,
               "pruner": s.spec.pruner, "metric": s.metric, "direction": s.direction,
               "trials": {state: sum(r["state"] == state for r in rows)
                          for state in ("completed", "pruned", "failed", "running", "waiting")},
               "samples_trained": sum(r["samples"] or 0 for r in rows),
               "unfinished": unfinished_points(s, rows), "worker_exit_codes": worker_exit_codes or [],
               "best": best, "leaderboard": rows}
    s.study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(s.study_dir / "leaderboard.json", summary)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(s.study_dir / "leaderboard.csv", buf.getvalue())
    if best is not None:
        atomic_write_text(s.study_dir / "best_config.yaml", best_config(s, best).to_yaml())
    warnings_ = _plots(s, study, rows)
    try:  # the page last, from the files above
        from .evaluation.html import write_leaderboard

        write_leaderboard(s.study_dir)
    except Exception as e:  # noqa: BLE001 - as the plots: an optional extra
        warnings_.append(f"leaderboard.html was not written: {type(e).__name__}: {e}")
    if warnings_:
        summary["warnings"] = warnings_
        atomic_write_json(s.study_dir / "leaderboard.json", summary)
    return summary


def _plots(s: Search, study: Any, rows: list[dict[str, Any]]) -> list[str]:
    """Optional extras: a plot that cannot be drawn is a warning in leaderboard.json, never a failure."""
    from .evaluation.report import plot_param_importances, plot_score_vs_latency, plot_search_history

    folder = s.study_dir / "plots"
    extras = [("optimization_history.png", lambda p: plot_search_history(rows, s.metric, s.maximize, p))]
    if sum(r["state"] == "completed" for r in rows) >= 2:
        def importances(p: Path) -> None:
            plot_param_importances(_optuna().importance.get_param_importances(study), s.metric, p)
        extras.append(("param_importances.png", importances))
    if "model.name" in s.spec.space:
        extras.append(("score_vs_latency.png", lambda p: plot_score_vs_latency(rows, s.metric, "model.name", p)))
    out = []
    for name, draw in extras:
        try:
            draw(folder / name)
        except Exception as e:  # noqa: BLE001 - e.g. importances need two distinct values of a key
            out.append(f"plots/{name} was not drawn: {type(e).__name__}: {e}")
    return out


def best_config(s: Search, best: dict[str, Any]) -> RunConfig:
    """The base config with the best trial's values; its output_dir is the study's final/ folder."""
    return load_config(s.base, {**{k: best[k] for k in s.spec.space}, "output_dir": str(s.study_dir / "final"),
                                "eval.metric": s.metric})


def print_leaderboard(s: Search, rows: list[dict[str, Any]], limit: int = 20) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"study {s.study_name}: {s.metric} ({s.direction})")
    cols = ["trial", "state", *s.spec.space, s.metric, "train_s", "parameters", "ms_per_example"]
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows[:limit]:
        table.add_row(*[escape(_cell(r[c])) for c in cols])
    console = Console()
    console.print(table)
    if len(rows) > limit:
        console.print(f"... {len(rows) - limit} more in {escape(str(s.study_dir / 'leaderboard.csv'))}")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _say(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold cyan]search:[/bold cyan] {escape(message)}")


# ---------------------------------------------------------------- the command

@dataclass
class SearchResult:
    """A finished (or joined) search: its folder, the leaderboard, and the final run when asked for."""

    dir: Path
    summary: dict[str, Any]
    final: Any = None
    problems: list[str] = field(default_factory=list)
    """Why the search is not complete (see `search_problems`); the command exits non-zero if there are any."""

    @property
    def best(self) -> dict[str, Any] | None:
        return self.summary["best"]


def run_search(config: str | Path | dict | RunConfig, overrides: list[str] | dict | None = None, *,
               join: bool = False, final: bool = False, workers: int | None = None, worker_index: int = 0,
               flag: str = "override") -> SearchResult:
    """Start (or continue) the study, run its trials in `search.workers` processes, write the results.

    join: add this process as one more worker to a study started elsewhere (another machine, shared
    storage); it neither queues the grid nor retrains. final: afterwards retrain the best config in
    the study's final/ folder and test it once.
    """
    s = resolve(config, overrides, flag)
    n = workers or s.spec.workers
    study = open_study(s, create=not join, worker=worker_index)
    codes: list[int] = []
    if join or n == 1:
        work(s, study, timeout=s.spec.timeout)
    else:
        codes = _spawn_workers(config, overrides, n)
    summary = write_results(s, study, codes)
    if not join:
        print_leaderboard(s, summary["leaderboard"])
    result = SearchResult(s.study_dir, summary, problems=search_problems(s, summary))
    if final and not join:
        if summary["best"] is None:
            raise TunesmithError("no trial completed, so there is no best config to retrain; see "
                                 f"{s.study_dir / 'leaderboard.csv'} for why")
        from .run import train

        cfg = best_config(s, summary["best"])
        _say(f"retraining the best config (trial {summary['best']['trial']}) in {cfg.output_dir}")
        result.final = train(cfg, overwrite=True)
    return result


def _spawn_workers(config: Any, overrides: list[str] | dict | None, n: int) -> list[int]:
    """n worker processes on this machine (`tunesmith search --join`), each with a GPU of its own when
    there are enough, else an even share of the CPU threads; returns their exit codes."""
    import torch

    if not isinstance(config, (str, Path)):
        raise ConfigError("search.workers > 1 needs the config as a YAML file (the workers read it)")
    sets = [a for item in (overrides or []) for a in ("--set", item)] if isinstance(overrides, list) else \
        [a for k, v in (overrides or {}).items() for a in ("--set", f"{k}={json.dumps(v)}")]
    gpus = torch.cuda.device_count()
    procs = []
    for k in range(n):
        env = dict(os.environ)
        if gpus >= n:
            env["CUDA_VISIBLE_DEVICES"] = str(k)
        elif not gpus:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        procs.append(subprocess.Popen([sys.executable, "-m", "tunesmith", "search", str(config), "--join",
                                       "--worker-index", str(k), *sets], env=env))
    return [p.wait() for p in procs]
