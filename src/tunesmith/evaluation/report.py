"""Plots and the end-of-run summary: how a user sees over- or under-fitting at a glance."""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from ..console import printable


def figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure drawn without pyplot: no backend switch, no global figure list, so a
    notebook user's plotting is left as it was."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def save_figure(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def plot_learning_curves(rows: list[dict], metric: str, path: Path) -> None:
    """Train and validation loss, and the selection metric, against optimizer steps."""
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig = figure((11, 4))
    (ax1, ax2) = fig.subplots(1, 2)
    if train:
        ax1.plot(*zip(*train), label="train loss", alpha=0.8)
    if evals:
        ax1.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation loss")
        ax2.plot([r["step"] for r in evals], [r.get(metric) for r in evals], "o-", color="tab:green")
    ax1.set_xlabel("step"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.set_xlabel("step"), ax2.set_ylabel(f"validation {metric}"), ax2.grid(alpha=0.3)
    ax2.set_title(f"validation {metric}")
    save_figure(fig, path)


def scalar_metrics(metrics: dict | None) -> dict[str, Any]:
    """The finite numbers of a split's metrics (the per-class tables, curves and NaNs left out): what the
    HTML report and the model card tabulate."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and (not isinstance(v, float) or math.isfinite(v))}


PER_CLASS_SHOWN = 20  # per-class rows printed; report.json (or `evaluate -o`) holds them all


def metric_lines(title: str, metrics: dict[str, Any], rest_in: str = "report.json") -> list[str]:
    """One split's (or one file's) metrics as printed: the scalars under `title`, what the macro average
    ran over, and the first PER_CLASS_SHOWN per-class rows, then where the others are (`rest_in`)."""
    out = []
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scalars:
        out.append(f"{printable(title)}: " + ", ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4f}"
                                                       for k, v in scalars.items()))
    about = metrics.get("macro_average")
    if about:  # which labels a macro average is over (those in the split, or all)
        out.append(f"    {about['metric']} over {about['labels']} of {about['of']} labels ({about['over']})")
    per_class = list((metrics.get("per_class") or {}).items())
    for name, row in per_class[:PER_CLASS_SHOWN]:  # label names come from users' data
        out.append(f"    {printable(name):>20}: " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                       for k, v in row.items()))
    if len(per_class) > PER_CLASS_SHOWN:
        out.append(f"    (and {len(per_class) - PER_CLASS_SHOWN} more: {printable(rest_in)})")
    return out


def collapse_warning(split: str, predictions: list[dict]) -> str | None:
    """A warning when most of a split's generated outputs are one text or empty, else None.

    Read from the prediction records alone (their text values), so any generating task gets it: a short
    or diverged run often writes the same summary for every input, which its scores alone do not say.
    Collapsed: more than half of the outputs are empty, or the most common output is more than half.
    """
    texts = [" ".join(v for v in r.values() if isinstance(v, str)) for r in predictions
             if any(isinstance(v, str) for v in r.values())]
    if not texts:
        return None
    n, empty = len(texts), sum(1 for t in texts if not t.strip())
    common, count = Counter(texts).most_common(1)[0]
    advice = "the model's generation has collapsed; train longer, or check train.lr and the training targets"
    if 2 * empty > n:
        return f"{split}: {empty} of {n} generated outputs are empty: {advice}"
    if 2 * count > n:
        shown = common if len(common) <= 60 else common[:57] + "..."
        return f"{split}: {count} of {n} generated outputs are the same text ({json.dumps(shown)}): {advice}"
    return None


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short human summary of report.json."""
    out = []
    for split in ("validation", "test"):
        out += metric_lines(split, report.get(split) or {})
    t = report.get("train") or {}
    if t:
        basis = "steady" if "steady" in t.get("throughput_over", "") else "all steps"
        out.append(f"train: {t.get('steps')} steps, {t.get('train_samples_per_second', 0):.1f} samples/s "
                   f"({basis}), best step {t.get('best_step')} ({t.get('metric')}={t.get('best_metric')})")
        if "processes" in t:  # a launch that meant N processes but ran one shows here, not only in speed
            out.append(f"processes: {t['processes']} (device {t.get('device')}, precision {t.get('precision')})")
    return out


def plot_search_history(rows: list[dict[str, Any]], metric: str, maximize: bool, path: Path) -> None:
    """Each completed trial's validation score in trial order, and the best so far."""
    from matplotlib.ticker import MaxNLocator

    done = sorted((r["trial"], r[metric]) for r in rows if r["state"] == "completed")
    fig = figure((7, 4))
    ax = fig.subplots()
    if done:
        xs, ys = zip(*done)
        best = [max(ys[:i + 1]) if maximize else min(ys[:i + 1]) for i in range(len(ys))]
        ax.plot(xs, ys, "o", label="trial", alpha=0.8)
        ax.step(xs, best, where="post", color="tab:red", label="best so far")
        ax.legend()
    pruned = [r["trial"] for r in rows if r["state"] == "pruned"]
    if pruned:
        ax.set_title(f"{len(done)} completed, {len(pruned)} pruned")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
    ax.set_xlabel("trial"), ax.set_ylabel(f"validation {metric}"), ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_param_importances(importances: dict[str, float], metric: str, path: Path) -> None:
    """Optuna's importance of each searched key for the validation score (its default evaluator), largest on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = figure((7, max(2.5, 0.5 * len(items) + 1.2)))
    ax = fig.subplots()
    ax.barh([printable(k) for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_xlabel(f"importance for validation {metric}"), ax.grid(alpha=0.3, axis="x")
    save_figure(fig, path)


def plot_score_vs_latency(rows: list[dict[str, Any]], metric: str, label_key: str, path: Path) -> None:
    """Model selection at a glance: validation score against inference time per example."""
    done = [r for r in rows if r["state"] == "completed" and r.get("ms_per_example") is not None]
    fig = figure((7, 4.5))
    ax = fig.subplots()
    for r in done:
        ax.scatter(r["ms_per_example"], r[metric], color="tab:blue")
        ax.annotate(printable(str(r.get(label_key)))[-40:], (r["ms_per_example"], r[metric]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("ms per example (validation, batched)"), ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
