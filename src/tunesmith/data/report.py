"""The data report: what the user's data looks like before a single step is trained."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..console import printable
from ..types import Table
from .prepare import LoadedData, input_keys

MAX_EXAMPLES = 5


def _inputs(t: Table, inputs: list[str], i: int) -> dict[str, Any]:
    return {r: t[r][i] for r in inputs if r in t}


def _duplicates(t: Table, keys: list[tuple], inputs: list[str], targets: list[str]) -> dict[str, Any]:
    where: dict[tuple, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        where[k].append(i)
    groups = [ix for ix in where.values() if len(ix) > 1]
    conflicting = [ix for ix in groups if len({repr([t[r][i] for r in targets if r in t]) for i in ix}) > 1]
    return {
        "duplicate_rows": int(sum(len(ix) - 1 for ix in groups)),
        "groups": len(groups),
        "groups_with_conflicting_labels": len(conflicting),
        "examples": [{"input": _inputs(t, inputs, ix[0]), "lines": [t.line[i] for i in ix][:10]}
                     for ix in (conflicting + groups)[:MAX_EXAMPLES]],
    }


def _leakage(a_name: str, a: Table, a_keys: list, b_name: str, b: Table, b_keys: list,
             inputs: list[str]) -> dict[str, Any]:
    first_in_a = {}
    for i, k in enumerate(a_keys):
        first_in_a.setdefault(k, i)
    shared = [(first_in_a[k], j) for j, k in enumerate(b_keys) if k in first_in_a]
    return {
        "rows": len(shared),
        "fraction_of_" + b_name: round(len(shared) / max(1, len(b)), 4),
        "examples": [{"input": _inputs(b, inputs, j), a_name: a.where(i), b_name: b.where(j)}
                     for i, j in shared[:MAX_EXAMPLES]],
    }


def token_length_stats(features: Any, max_length: int, windowed: bool, column: str = "n_tokens") -> dict[str, Any]:
    """Token counts per example (a windowed example's features all carry its whole count) from the features'
    `column`, and how many exceed `max_length` (cut, or split into windows)."""
    example = np.asarray(features["example"])
    first = np.unique(example, return_index=True)[1]
    n_tokens = np.asarray(features[column])[first]
    q = np.percentile(n_tokens, [50, 90, 95, 99]) if len(n_tokens) else [0] * 4
    over = int((n_tokens > max_length).sum())
    return {"p50": float(q[0]), "p90": float(q[1]), "p95": float(q[2]), "p99": float(q[3]),
            "max": int(n_tokens.max()) if len(n_tokens) else 0, "mean": round(float(n_tokens.mean()), 2),
            **({"windowed": over, "windowed_pct": round(100.0 * over / max(1, len(n_tokens)), 2),
                "features": len(example)} if windowed else
               {"truncated": over, "truncated_pct": round(100.0 * over / max(1, len(n_tokens)), 2)})}


def build_report(data: LoadedData, task: Any, features: dict[str, Any], max_length: int,
                 on_missing: str) -> dict[str, Any]:
    roles = task.roles()
    inputs = [r.name for r in roles if not r.target]
    targets = [r.name for r in roles if r.target]
    keys = {s: input_keys(t, inputs) for s, t in data.splits.items()}
    windowed = task.long_inputs == "window"
    report: dict[str, Any] = {
        "task": task.name,
        "headline": task.headline(),
        **task.summary(),
        "columns": data.columns,
        "splits": {s: {"rows": len(t), "source": t.file[0] if len(t) else None,
                       "made": data.made_splits.get(s),
                       **({"sampled": data.sampled[s]} if s in data.sampled else {})}
                   for s, t in data.splits.items()},
        "label_distribution": {s: task.describe(t) for s, t in data.splits.items()},
        "max_length": max_length,
        "token_lengths": {s: token_length_stats(features[s], max_length, windowed) for s in data.splits},
        "duplicates": {s: _duplicates(t, keys[s], inputs, targets) for s, t in data.splits.items()},
        "leakage": {},
        "missing": {"policy": on_missing, "per_split": data.missing, "dropped_rows": len(data.dropped)},
        "untrainable": data.untrainable,  # split -> examples dropped for training nothing, and why
        "notes": task.notes(),  # choices the task made from the data
        "warnings": [],
    }
    extra, task_warnings = task.data_report(features, report["token_lengths"], max_length)
    report.update(extra)
    names = list(data.splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            report["leakage"][f"{a}-{b}"] = _leakage(a, data.splits[a], keys[a], b, data.splits[b], keys[b], inputs)
    w = report["warnings"]
    for pair, leak in report["leakage"].items():
        if leak["rows"]:
            w.append(f"{leak['rows']} texts appear in both {pair.replace('-', ' and ')}: "
                     "held-out scores will be optimistic")
    w += task_warnings
    for s, d in report["duplicates"].items():
        if d["groups_with_conflicting_labels"]:
            w.append(f"{d['groups_with_conflicting_labels']} duplicated texts in {s} carry different labels")
    for s, u in data.untrainable.items():
        w.append(f"{u['examples']} {s} examples dropped (listed with the dropped rows): {u['reason']}")
    n_missing = len(data.dropped) - sum(u["examples"] for u in data.untrainable.values())
    if n_missing:  # where they are listed depends on the command: print_report says it
        w.append(f"{n_missing} rows dropped (policy on_missing={on_missing})")
    return report


MAX_LABELS_SHOWN = 20


def _labels_line(dist: dict[str, Any]) -> str:
    """Every count whole; beyond MAX_LABELS_SHOWN labels, how many more there are (the JSON report has all)."""
    items = [f"{printable(k)}={round(v, 3) if isinstance(v, float) else printable(v)}" for k, v in dist.items()]
    more = len(items) - MAX_LABELS_SHOWN
    return "  ".join(items[:MAX_LABELS_SHOWN]) + (f"  (and {more} more labels)" if more > 0 else "")


def print_report(report: dict[str, Any], console: Any = None, dropped_rows_file: str | Path | None = None) -> None:
    """The report as stacked lines per split, so an 80-column terminal or log cuts no number or path.

    `dropped_rows_file`: where the command wrote the dropped rows, said beside their count.
    """
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    say = lambda text: console.print(text, soft_wrap=True, highlight=False)  # noqa: E731  never cut, never fold
    say(f"[bold]Data report ({escape(report.get('headline', report['task']))})[/bold]")
    for note in report.get("notes", []):
        say(f"note: {escape(printable(note))}")
    for s, info in report["splits"].items():
        lens = report["token_lengths"][s]
        where = (info["made"] or f"from {info['source'] or ''}") + (
            f"; sampled: {info['sampled']}" if info.get("sampled") else "")
        say(f"[bold]{s}[/bold]: {info['rows']} rows, {escape(printable(where))}")
        console.print(f"  labels: {escape(_labels_line(report['label_distribution'][s]))}", highlight=False)
        cut = (f"truncated: {lens['truncated']} ({lens['truncated_pct']}%)" if "truncated" in lens else
               f"split into windows: {lens['windowed']} ({lens['windowed_pct']}%), {lens['features']} windows")
        say(f"  tokens p50/p95/max: {lens['p50']:.0f}/{lens['p95']:.0f}/{lens['max']}, {cut}, "
            f"duplicate rows: {report['duplicates'][s]['duplicate_rows']}")
        target = report.get("target_token_lengths", {}).get(s)
        if target:
            say(f"  target tokens p50/p95/max: {target['p50']:.0f}/{target['p95']:.0f}/{target['max']}, "
                f"truncated: {target['truncated']} ({target['truncated_pct']}%)")
    miss = report["missing"]
    say(f"missing values: policy={miss['policy']}, dropped rows={miss['dropped_rows']}, "
        f"per split={miss['per_split']}")
    if miss["dropped_rows"] and dropped_rows_file is not None:
        say(f"dropped rows are listed in {escape(printable(dropped_rows_file))}")
    for pair, leak in report["leakage"].items():
        say(f"overlap {pair}: {leak['rows']} texts")
    for w in report["warnings"]:
        say(f"[yellow]warning:[/yellow] {escape(printable(w))}")


def prediction_rows(task: Any, table: Table, predictions: list[dict]) -> list[dict]:
    """predictions/test.jsonl: where each example came from, its inputs, its gold answer and the prediction
    record (the same record `tunesmith predict` writes)."""
    inputs = [r.name for r in task.roles() if not r.target]
    return [{**table.where(i), "input": _inputs(table, inputs, i), "gold": task.gold(table, i),
             "prediction": predictions[i]} for i in range(len(table))]
