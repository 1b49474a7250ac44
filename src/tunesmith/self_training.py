"""Self-training: a model trained on the labelled rows labels an unlabelled pool, and the rows it is sure of
join training (train.self_training with data.unlabelled).

Round 0, the teacher, trains on the labelled rows alone. Round k labels every pool row with round k-1's best
checkpoint, keeps the rows whose confidence (`Task.pseudo_label`) reaches the threshold (at most
`max_per_class` of each predicted label, the surest first, when set), and trains a student
from the pretrained model again on the labelled rows plus those: a student starts afresh rather than from its
teacher, so it does not inherit the teacher's fit to the few labelled rows. Each student that improves the
validation metric is the next round's teacher; the rounds stop after `rounds` students or at the first one
that does not improve, and the run is the best round's.

Every round is a run of the same loop in its own folder (rounds/round-K: checkpoints, report, model), on the
same validation and test rows: splits and samples are made once, before round 0, and a pool row never lands
in them. The pseudo-labels of round K are written to pseudo_labels/round-K.jsonl (file, line, inputs, label,
confidence) before it trains, and a resumed run reads them from there, so a round resumes on exactly the
rows it began with. When the rounds are done, the run folder gets the best round's files (hard links where
the file system allows: no second copy of the model) and a report whose `self_training` section lists
every round.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import rundir
from .config import RunConfig, SelfTrainingConfig
from .data.prepare import LoadedData, read_configured, resolve_columns, table_from_records
from .errors import ConfigError, DataError
from .io import atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from .types import Table

if TYPE_CHECKING:
    from .run import Run
    from .tasks.base import Task

ROUNDS_DIR = rundir.ROUNDS_DIR
PSEUDO_DIR = "pseudo_labels"
# what the run folder does not take from its best round: the round's own config, lock, checkpoints and logs
_NOT_LINKED = {"config.yaml", rundir.LOCK_NAME, "checkpoints", "tensorboard", rundir.CHANGES_FILE}


def read_pool(cfg: RunConfig, task: "Task", data: LoadedData) -> Table:
    """data.unlabelled as a Table of the input roles the training split has, by data.on_missing (rows dropped
    from it are listed with split "unlabelled")."""
    name = str(cfg.data.unlabelled)
    records = read_configured(name, cfg.data)
    inputs = [r for r in data.splits["train"].columns if not next(x for x in task.roles() if x.name == r).target]
    found = {r: c for r, c in resolve_columns(name, records, cfg.data, task.roles(), needs_targets=False).items()
             if r in inputs}
    lacking = [r for r in inputs if r not in found]
    if lacking:
        raise DataError(f"column '{data.columns[lacking[0]]}' ({lacking[0]}) is in the training data but not in "
                        "data.unlabelled", file=name, column=data.columns[lacking[0]])
    pool = table_from_records(name, records, cfg.data, task.roles(), found, "unlabelled", data.dropped, {})
    if len(pool) == 0:
        raise DataError("no usable rows in data.unlabelled after the missing-value policy", file=name)
    return pool


def pseudo_labels(task: "Task", predictions: list[dict], pool: Table, threshold: float,
                  max_per_class: int | None = None) -> list[dict]:
    """The pool rows whose predicted label is at least `threshold` sure (and among the `max_per_class` surest
    of their label; ties: the earlier row), as pseudo_labels/round-K.jsonl rows: {file, line, input, label
    (target role -> value), confidence}, in pool order."""
    sure = []
    for i, record in enumerate(predictions):
        label, confidence = task.pseudo_label(record)
        if confidence >= threshold:
            sure.append((i, label, float(confidence)))
    if max_per_class is not None:
        by_label: dict[str, list[tuple[int, Any, float]]] = {}
        for row in sure:
            by_label.setdefault(json.dumps(row[1], sort_keys=True), []).append(row)
        sure = sorted(row for rows in by_label.values()
                      for row in sorted(rows, key=lambda r: (-r[2], r[0]))[:max_per_class])
    return [{"file": pool.file[i], "line": pool.line[i], "input": {r: v[i] for r, v in pool.columns.items()},
             "label": label, "confidence": round(confidence, 6)} for i, label, confidence in sure]


def with_pseudo_labels(train: Table, rows: list[dict]) -> Table:
    """The labelled training rows followed by the pseudo-labelled ones (each keeps its pool file and line)."""
    columns = {role: list(values) for role, values in train.columns.items()}
    for r in rows:
        for role in columns:
            columns[role].append(r["label"][role] if role in r["label"] else r["input"][role])
    return Table(columns, train.file + [r["file"] for r in rows], train.line + [r["line"] for r in rows],
                 train.column_of, train.token_lines)


def round_config(cfg: RunConfig, run_dir: Path, k: int) -> RunConfig:
    """Round k's config: the run's, on rows already split and sampled (so nothing is sampled again), in its
    own folder."""
    out = cfg.model_copy(deep=True)
    out.data.unlabelled = out.train.self_training = None
    out.data.train_per_class = out.data.max_train_rows = out.data.max_eval_rows = None
    out.data.drop_label_issues = False
    out.output_dir = str(run_dir / ROUNDS_DIR / f"round-{k}")
    return out


def _round_data(base: LoadedData, added: list[dict], k: int) -> LoadedData:
    """Round k's own copy of the prepared rows, its pseudo-labelled rows after the labelled ones (a run
    encodes its tables' targets in place, appends to `dropped` and replaces splits)."""
    train = base.splits["train"]
    notes = [f"self-training round {k}: {len(train)} labelled training rows and {len(added)} pseudo-labelled pool "
             f"rows (../../{PSEUDO_DIR}/round-{k}.jsonl)"] if k else [
        f"self-training round 0 (the teacher): the {len(train)} labelled training rows alone"]
    splits = {split: t.take(range(len(t))) for split, t in base.splits.items()}
    return replace(base, splits={**splits, "train": with_pseudo_labels(train, added)},
                   dropped=list(base.dropped), untrainable=dict(base.untrainable), notes=[*base.notes, *notes])


def _put_back_raw_values(data: LoadedData, raw: dict[str, Table]) -> None:
    """The prepared rows with the values they were read with: a task's `fit` encodes the targets of the
    tables it fits in place, and each round fits its own task on the rows as read (its label names)."""
    where: dict[tuple[str, int], tuple[str, int]] = {}
    for split, t in raw.items():
        for i, key in enumerate(zip(t.file, t.line)):
            where.setdefault(key, (split, i))
    for t in data.splits.values():
        rows = [where[key] for key in zip(t.file, t.line)]
        t.columns = {role: [raw[s].columns[role][i] for s, i in rows] for role in t.columns}


def _link_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        try:
            os.link(path, target)
        except OSError:  # a file system without hard links
            shutil.copy2(path, target)


def adopt_round(run_dir: Path, round_dir: Path) -> None:
    """The run folder takes the best round's files: each folder replaced atomically, each file renamed in."""
    for entry in sorted(round_dir.iterdir()):
        if entry.name in _NOT_LINKED or entry.name.startswith("."):
            continue
        if entry.is_dir():
            with atomic_dir(run_dir / entry.name) as tmp:
                _link_tree(entry, tmp)
        else:
            tmp = run_dir / f".{entry.name}.link.tmp"
            tmp.unlink(missing_ok=True)
            try:
                os.link(entry, tmp)
            except OSError:
                shutil.copy2(entry, tmp)
            os.replace(tmp, run_dir / entry.name)


def _round_rows(run_dir: Path, teacher: int, k: int, pool: Table, st: SelfTrainingConfig,
                main: bool) -> tuple[list[dict], str | None]:
    """Round k's pseudo-labelled pool rows by round `teacher`'s model, or why round k cannot run. The rows are
    written before the round trains; a resumed round reads them back, so it trains on the rows it began with."""
    from accelerate import PartialState

    from .serving.predictor import Predictor

    file = run_dir / PSEUDO_DIR / f"round-{k}.jsonl"
    if file.exists():
        return read_jsonl(file), None
    predictor = Predictor.load(run_dir / ROUNDS_DIR / f"round-{teacher}", str(PartialState().device))
    predictions = predictor.predict_table(pool)
    added = pseudo_labels(predictor.task, predictions, pool, st.threshold, st.max_per_class)
    if not added:  # no file: a resumed run finds the same again
        surest = max(predictor.task.pseudo_label(p)[1] for p in predictions)
        return [], (f"no pool row reached the threshold {st.threshold} with round {teacher}'s model (the surest "
                    f"was {surest:.3f}), so round {k} would train on round {teacher}'s rows again: lower "
                    "train.self_training.threshold, or take the surest rows of each class (threshold: 0 with "
                    "max_per_class)")
    if main:
        atomic_write_jsonl(file, added)
    return added, None


def train_rounds(cfg: RunConfig, *, resume: bool, overwrite: bool, allow_config_change: bool,
                 config_file: str | Path | None, data: LoadedData | None, checked: dict | None,
                 callbacks: list | None) -> "Run":
    """The self-training run of `cfg` (train.self_training and data.unlabelled set): see the module's doc."""
    from accelerate import PartialState

    from .data.prepare import load_splits
    from .models import resolve_model_name
    from .run import Run, _say, ready_rows, train
    from .tasks.base import get_task

    run_dir = Path(cfg.output_dir).expanduser().resolve()
    config_file = Path(config_file) if config_file is not None else None
    owner = dict(resume=resume, overwrite=overwrite, allow_config_change=allow_config_change, config_file=config_file)
    changes = checked if checked is not None else rundir.check(run_dir, cfg, **owner)
    altering = {k: v for k, v in changes.items() if k not in rundir.RESUME_SAFE_KEYS}
    if altering:
        raise ConfigError(f"--resume of a self-training run with another config: {rundir.describe_changes(altering)}."
                          " Its finished rounds were trained with the old values; choose a new output_dir "
                          "(--set output_dir=...) or start again with --overwrite")
    task = get_task(cfg)
    data = data if data is not None else load_splits(cfg.data, task.roles())
    model_name = resolve_model_name(cfg.model, cfg.data.cache_dir)
    raw = {split: t.take(range(len(t))) for split, t in data.splits.items()}  # fitting encodes targets in place
    ready_rows(cfg, task, data, model_name)
    _put_back_raw_values(data, raw)
    if task.cannot_self_train:
        raise ConfigError(f"train.self_training: {task.cannot_self_train}")
    pool = read_pool(cfg, task, data)
    st, main = cfg.train.self_training, PartialState().is_main_process
    metric, higher = task.selected_metric(cfg.eval.metric)
    claim = rundir.claim(run_dir, cfg, say=_say, **owner) if main else None  # the main process holds the folder
    try:
        if main:
            atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        rounds: list[dict[str, Any]] = []
        best: int | None = None
        stopped = f"all {st.rounds} student rounds ran"
        for k in range(st.rounds + 1):
            added, why_not = _round_rows(run_dir, best, k, pool, st, main) if k else ([], None)
            if why_not:
                stopped = why_not
                break
            if main:
                _say(f"self-training round {k} of {st.rounds}: " + (
                    "the teacher, on the labelled rows alone" if not k else
                    f"a student on the labelled rows and {len(added)} of the {len(pool)} pool rows, pseudo-labelled "
                    f"by round {best} (confidence >= {st.threshold}"
                    + (f", at most {st.max_per_class} per label)" if st.max_per_class else ")")))
            round_cfg = round_config(cfg, run_dir, k)
            round_dir = Path(round_cfg.output_dir)
            finished = _read_json(round_dir / "report.json") if (round_dir / "report.json").exists() else {}
            if finished.get("status") == "completed":  # a resumed run keeps its finished rounds
                run = Run(round_dir, finished)
            else:
                run = train(round_cfg, resume=round_dir.is_dir(), callbacks=callbacks,
                            data=_round_data(data, added, k))
            value = run.report["validation"].get(metric)
            rounds.append({"round": k, "folder": f"{ROUNDS_DIR}/round-{k}",
                           "labelled_rows": len(data.splits["train"]), "pseudo_labelled_rows": len(added),
                           "pool_rows": len(pool), f"validation_{metric}": value,
                           "test": {m: v for m, v in run.report["test"].items() if isinstance(v, (int, float))}})
            if best is None or _improves(value, rounds[best][f"validation_{metric}"], higher):
                best = k
            else:
                stopped = (f"round {k}'s validation {metric} ({value}) did not improve on round {best}'s "
                           f"({rounds[best][f'validation_{metric}']})")
                break
        report = _read_json(run_dir / ROUNDS_DIR / f"round-{best}" / "report.json")
        report["self_training"] = {"threshold": st.threshold, "max_per_class": st.max_per_class, "rounds": rounds,
                                   "best_round": best, "metric": metric, "stopped": stopped}
        if main:
            adopt_round(run_dir, run_dir / ROUNDS_DIR / f"round-{best}")
            atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
            atomic_write_json(run_dir / "report.json", report)
            _write_page(run_dir, cfg, report)
            _say(f"self-training: round {best} is the run's model ({metric} on validation: "
                 + ", ".join(f"round {r['round']} {r[f'validation_{metric}']}" for r in rounds) + f"); {stopped}")
        PartialState().wait_for_everyone()
        return Run(run_dir, report)
    except BaseException:
        if main and not any((run_dir / ROUNDS_DIR).glob("round-*")):  # nothing trained: leave nothing behind
            shutil.rmtree(run_dir / ROUNDS_DIR, ignore_errors=True)
            (run_dir / "config.yaml").unlink(missing_ok=True)
            claim.abandon()
        raise
    finally:
        if claim is not None:
            claim.release()


def _improves(value: float | None, best: float | None, higher: bool) -> bool:
    """Whether a round's validation metric beats the best round's (a missing value never does)."""
    if value is None or best is None:
        return value is not None
    return value > best if higher else value < best


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_page(run_dir: Path, cfg: RunConfig, report: dict[str, Any]) -> None:
    """report.html again, with the rounds (the round's own page did not know it was one)."""
    try:
        from .evaluation.html import write_report
        from .serving.predictor import Predictor

        shaded = cfg.eval.explain_errors if report["train"] else 0
        predictor = Predictor.load(run_dir, report["train"]["device"]) if shaded else None
        write_report(run_dir, predictor if predictor is not None and predictor.task.explains else None, shaded)
    except Exception as e:  # noqa: BLE001 - an optional artefact never fails a finished run
        report["warnings"] = [*report.get("warnings", []), f"report.html was not written: {type(e).__name__}: {e}"]
        atomic_write_json(run_dir / "report.json", report)
