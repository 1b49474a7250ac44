"""report.html: one self-contained page a person reads about a run (no network: styles inline, plots as
inline SVG), written at the end of `train` and by `tunesmith report RUN_DIR`.

Everything on it is read from the run folder's own files (report.json, data_report.json, config.yaml,
metrics.jsonl, predictions/test.jsonl), so the page of an old run can be written again. The worst errors
come from the task (`Task.worst_errors`), shaded by the explanation of each (`Predictor.explain`) when the
task explains itself; shared code here renders the task's views without knowing what they are.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, flat_keys
from ..io import LABEL_ISSUES_FILE, atomic_write_text, read_jsonl
from ..serving.inputs import read_run_state
from ..tasks.base import Task
from .report import figure, scalar_metrics

REPORT_FILE = "report.html"
WORST_ERRORS = 10  # shown on the page (the task ranks them)
EXPLAIN_STEPS = 20  # integration steps for the page's highlights (the page states each delta)
LABEL_ISSUES_SHOWN = 50  # rows of the likely label errors table (label_issues.jsonl holds them all)


def _svg(fig: Any) -> str:
    """The figure as inline SVG, the same bytes for the same figure (fixed id salt, no date)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "tunesmith"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # without the XML prolog and doctype: inline in HTML


def learning_curves_svg(rows: list[dict], metric: str, best_step: int | None) -> str:
    """Train and validation loss, and the validation metric, against steps; the best checkpoint marked."""
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig = figure((10, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    if train:
        ax1.plot(*zip(*train), label="train loss", alpha=0.8)
    if evals:
        ax1.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation loss")
        ax2.plot([r["step"] for r in evals], [r.get(metric) for r in evals], "o-", color="tab:green")
    for ax in (ax1, ax2):
        if best_step is not None:
            ax.axvline(best_step, color="tab:red", linestyle="--", alpha=0.7, label="best checkpoint")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("loss")
    ax1.legend(fontsize=8)
    ax2.set_ylabel(f"validation {metric}")
    return _svg(fig)


def config_changes(saved: dict) -> list[tuple[str, Any, Any]]:
    """(key, value, default) for every config key this run set away from tunesmith's defaults."""
    defaults = RunConfig.model_validate({"task": {"type": saved["task"]["type"]},  # data is required: the run's
                                         "data": {"train": saved["data"]["train"],
                                                  "hub_dataset": saved["data"]["hub_dataset"]}}).model_dump(mode="json")
    given, base = flat_keys(saved), flat_keys(defaults)
    return [(".".join(k), v, base.get(k)) for k, v in given.items() if base.get(k, object()) != v]


def _marked(text: str, marks: list[dict]) -> str:
    """`text` escaped, with each mark a <mark> (gold and predicted spans) or a shaded span (attributions)."""
    edges = sorted({0, len(text), *(m["start"] for m in marks), *(m["end"] for m in marks)})
    out = []
    for a, b in zip(edges, edges[1:]):
        piece = html.escape(text[a:b])
        inside = [m for m in marks if m["start"] <= a and b <= m["end"]]
        for m in inside:
            if m["kind"] == "attr":
                w = max(-1.0, min(1.0, m["weight"]))
                color = f"rgba(220,50,32,{abs(w):.2f})" if w > 0 else f"rgba(0,90,181,{abs(w):.2f})"
                ink = ";color:#fff" if abs(w) > 0.6 else ""  # dark shading: light text stays readable
                piece = f'<span class="attr" style="background:{color}{ink}" title="{m["label"]}">{piece}</span>'
            else:
                piece = f'<mark class="{m["kind"]}" title="{html.escape(m["label"])}">{piece}</mark>'
        out.append(piece)
    return "".join(out)


def _highlights(view: dict, explanation: dict) -> tuple[str, float] | None:
    """Attribution marks of the explanation's first explained output onto the view's fields."""
    attributions = explanation.get("attributions") or {}
    if not attributions:
        return None
    name, first = next(iter(attributions.items()))
    words = first["words"]
    top = max((abs(w["attribution"]) for w in words), default=0.0) or 1.0
    fields = {f["name"]: f for f in view["fields"]}
    for w in words:
        field = fields.get(w["role"])
        if field is None:
            continue
        if "index" in w:  # a word of a list role: the field gives each word's characters
            if not field.get("word_spans"):
                continue
            start, end = field["word_spans"][w["index"]]
        else:
            start, end = w["start"], w["end"]
        field.setdefault("marks", []).append({"start": start, "end": end, "kind": "attr",
                                              "weight": w["attribution"] / top,
                                              "label": f"{w['attribution']:+.4f}"})
    return name, first["delta"]


def _errors(run_dir: Path, task: Any, predictor: Any, shaded: int) -> list[dict]:
    """The task's worst-error views, the first `shaded` of them shaded by the predictor's explanations."""
    rows = read_jsonl(run_dir / "predictions" / "test.jsonl") if (run_dir / "predictions" / "test.jsonl").exists() \
        else []
    views = task.worst_errors(rows, WORST_ERRORS)
    for k, view in enumerate(views):
        view["fields_html"] = []
        if predictor is not None and task.explains and k < shaded:
            try:
                explained = _highlights(view, predictor.explain(view["input"], steps=EXPLAIN_STEPS))
            except Exception as e:  # noqa: BLE001 - a highlight is an extra: the error is still shown
                explained, view["explain_error"] = None, f"{type(e).__name__}: {e}"
            if explained:
                view["explained"] = {"output": explained[0], "delta": explained[1]}
        for field in view["fields"]:
            view["fields_html"].append((field["name"], _marked(field["text"], field.get("marks", []))))
    return views


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}" if v.is_integer() or abs(v) >= 1000 else f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[list[Any]], head: list[str] | None = None) -> str:
    """An HTML table; `head` None: a two-column list of names and values, no header row."""
    top = "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>" if head else ""
    return (f"<table>{top}<tbody>"
            + "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows)
            + "</tbody></table>")


def _confusion(cm: dict) -> str:
    labels, matrix = cm["labels"], cm["matrix"]
    top = max((v for row in matrix for v in row), default=0) or 1
    head = "<tr><th>gold \\ predicted</th>" + "".join(f"<th>{html.escape(str(lb))}</th>" for lb in labels) + "</tr>"
    body = "".join(
        f"<tr><th>{html.escape(str(lb))}</th>" + "".join(
            f'<td style="background:rgba(0,90,181,{v / top:.2f});color:{"#fff" if v / top > 0.5 else "#000"}">'
            f"{v}</td>" for v in row) + "</tr>" for lb, row in zip(labels, matrix))
    return f'<table class="confusion"><thead>{head}</thead><tbody>{body}</tbody></table>'


def render(run_dir: Path, task: Any, predictor: Any = None, explained: int = WORST_ERRORS) -> str:
    """The page's HTML for a finished run folder; `predictor` (the run's model) shades the first `explained`
    worst errors by their explanations."""
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    data = json.loads((run_dir / "data_report.json").read_text(encoding="utf-8")) \
        if (run_dir / "data_report.json").exists() else {}
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    metrics_rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    train = report.get("train", {})
    dropped = read_jsonl(run_dir / "dropped_rows.jsonl") if (run_dir / "dropped_rows.jsonl").exists() else []
    cm_file = run_dir / "confusion_matrix.json"
    sections = {
        "trained": _table([["task", report.get("task")], ["model", report.get("model")],
                           *[[f"data.{s}", (data.get("splits", {}).get(s) or {}).get("source") or saved["data"].get(s)]
                             for s in ("train", "validation", "test")],
                           ["processes / device", f"{train.get('processes')} / {train.get('device')}"],
                           ["precision", train.get("precision")],
                           *[[f"speed path: {k}", v] for k, v in (train.get("speed_paths") or {}).items()],
                           ["LoRA", json.dumps(train.get("lora")) if train.get("lora") else "no (full fine-tuning)"],
                           ["steps (epochs)", f"{train.get('steps')} ({train.get('epochs_completed')})"],
                           ["throughput", f"{train.get('train_samples_per_second', 0):.1f} samples/s, "
                                          f"{train.get('throughput_over')}"],
                           ["best checkpoint", f"step {train.get('best_step')} "
                                               f"({train.get('metric')} = {train.get('best_metric')})"]]),
        "config": _table([[k, json.dumps(v), json.dumps(d)] for k, v, d in config_changes(saved)],
                         ["key", "this run", "default"]),
    }
    splits = data.get("splits", {})
    lengths = data.get("token_lengths", {})
    data_rows = [[s, (splits.get(s) or {}).get("rows"), (lengths.get(s) or {}).get("p50"),
                  (lengths.get(s) or {}).get("p95"), (lengths.get(s) or {}).get("max"),
                  f"{(lengths.get(s) or {}).get('truncated_pct', 0)}%",
                  (data.get("duplicates", {}).get(s) or {}).get("duplicate_rows")] for s in splits]
    reasons: dict[str, int] = {}
    for r in dropped:
        reasons[r.get("reason", "?")] = reasons.get(r.get("reason", "?"), 0) + 1
    test = report.get("test", {})
    per_class = test.get("per_class") or {}
    per_class_head = list(next(iter(per_class.values())).keys()) if per_class else []
    views = _errors(run_dir, task, predictor, explained)
    env = {
        "title": f"{report.get('task')} run: {run_dir.resolve().name}",
        "warnings": [*report.get("warnings", []), *data.get("warnings", [])],
        "sections": sections, "data_rows": _table(data_rows, ["split", "rows", "tokens p50", "p95", "max",
                                                              "truncated", "duplicates"]),
        "leakage": data.get("leakage"), "dropped": sorted(reasons.items()), "n_dropped": len(dropped),
        "notes": data.get("notes", []),
        "curves": learning_curves_svg(metrics_rows, train.get("metric") or "loss", train.get("best_step")),
        "validation": _table(list(scalar_metrics(report.get("validation")).items()), ["metric", "value"]),
        "test": _table(list(scalar_metrics(test).items()), ["metric", "value"]),
        "per_class": _table([[k, *row.values()] for k, row in per_class.items()], ["class", *per_class_head])
        if per_class else "",
        "confusion": _confusion(json.loads(cm_file.read_text())) if cm_file.exists() else "",
        "views": views, "ranked": type(task).worst_errors is not Task.worst_errors,
        "label_issues": read_jsonl(run_dir / LABEL_ISSUES_FILE) if (run_dir / LABEL_ISSUES_FILE).exists() else None,
        "self_training": report.get("self_training"),
    }
    return _PAGE.format(style=_STYLE, **_render_parts(env))


def _render_parts(env: dict) -> dict[str, str]:
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in env["warnings"])
    dropped = ("<p>" + (f"{env['n_dropped']} rows dropped (each in dropped_rows.jsonl): "
                        + ", ".join(f"{html.escape(str(r))}: {n}" for r, n in env["dropped"])
                        if env["n_dropped"] else "No rows were dropped.") + "</p>")
    leakage = env["leakage"]
    leak = f"<details><summary>Overlap between splits</summary><pre>{html.escape(json.dumps(leakage, indent=1))}" \
           "</pre></details>" if leakage else ""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in env["notes"])
    issues = env["label_issues"]
    label_issues = "" if issues is None else (
        f"<h3>Likely label errors (train): {len(issues)}, dropped</h3>"
        + (_table([[f"{Path(x['file']).name}:{x['line']}", " | ".join(str(v) for v in x["input"].values()),
                    str(x["given"]), x["given_probability"], str(x["suggested"]), x["suggested_probability"]]
                   for x in issues[:LABEL_ISSUES_SHOWN]],
                  ["row", "text", "given", "p(given)", "suggested", "p(suggested)"])
           + (f"<p>... and {len(issues) - LABEL_ISSUES_SHOWN} more in label_issues.jsonl.</p>"
              if len(issues) > LABEL_ISSUES_SHOWN else "") if issues else "<p>None found.</p>"))
    rounds = env["self_training"]
    self_training = "" if rounds is None else (
        f"<h3>Self-training (threshold {rounds['threshold']}"
        + (f", at most {rounds['max_per_class']} rows per label" if rounds.get("max_per_class") else "") + ")</h3>"
        + _table([[r["round"] if r["round"] != rounds["best_round"] else f"{r['round']} (this model)",
                   r["labelled_rows"], r["pseudo_labelled_rows"], r["pool_rows"], r[f"validation_{rounds['metric']}"]]
                  for r in rounds["rounds"]],
                 ["round", "labelled rows", "pseudo-labelled rows", "pool rows", f"validation {rounds['metric']}"])
        + f"<p>{html.escape(rounds['stopped'])}. Round 0 is the teacher, trained on the labelled rows alone; each "
          "round's folder is in rounds/, its pseudo-labels in pseudo_labels/.</p>")
    errors = []
    for v in env["views"]:
        fields = "".join(f'<div class="field"><span class="name">{html.escape(n)}</span>'
                         f'<span class="text">{t}</span></div>' for n, t in v["fields_html"])
        how = ""
        if "explained" in v:
            how = (f'<p class="how">shading: attributions to "{html.escape(str(v["explained"]["output"]))}" '
                   f'(red raises it, blue lowers it; integrated gradients, {EXPLAIN_STEPS} steps, convergence '
                   f'delta {v["explained"]["delta"]:+.2e})</p>')
        elif "explain_error" in v:
            how = f'<p class="how">no shading: the explanation failed ({html.escape(v["explain_error"])})</p>'
        where = html.escape(f"{Path(v['row']['file']).name}, line {v['row']['line']}")
        errors.append(f'<article class="error"><h3>{html.escape(v["title"])} <small>{where}</small></h3>'
                      f"{fields}{how}</article>")
    if any(m["kind"] in ("gold", "pred") for v in env["views"] for f in v["fields"] for m in f.get("marks", [])):
        errors.insert(0, '<p class="how"><mark class="gold">gold</mark> and <mark class="pred">predicted</mark> '
                         "spans are marked.</p>")
    if env["views"]:
        error_html = "".join(errors)
    elif env["ranked"]:
        error_html = "<p>No errors on the test split.</p>"
    else:
        error_html = "<p>This task does not rank its errors; predictions/test.jsonl holds every prediction.</p>"
    return {
        "title": html.escape(env["title"]), "warnings": f'<ul class="warnings">{warn}</ul>' if warn else "",
        "trained": env["sections"]["trained"], "config": env["sections"]["config"],
        "data_rows": env["data_rows"], "dropped": dropped, "leakage": leak,
        "notes": f"<ul>{notes}</ul>" if notes else "", "label_issues": label_issues, "curves": env["curves"],
        "validation": env["validation"], "test": env["test"], "self_training": self_training,
        "per_class": f"<h3>Per class (test)</h3>{env['per_class']}" if env["per_class"] else "",
        "confusion": f"<h3>Confusion matrix (test)</h3>{env['confusion']}" if env["confusion"] else "",
        "errors": error_html,
    }


def write_report(run_dir: str | Path, predictor: Any = None, explained: int = WORST_ERRORS) -> Path:
    """Write run_dir/report.html (atomically) and return its path; with `predictor` (the loaded run) the
    first `explained` worst errors are shaded by their explanations."""
    run_dir = Path(run_dir)
    task = predictor.task if predictor is not None else read_run_state(run_dir).task
    path = run_dir / REPORT_FILE
    atomic_write_text(path, render(run_dir, task, predictor, explained))
    return path


LEADERBOARD_FILE = "leaderboard.html"
_TRIAL_COLUMNS = ("train_s", "samples", "parameters", "trainable_parameters", "ms_per_example")


def _link(target: Path, base: Path, text: str) -> str:
    """A link to `target` relative to the page in `base` (so a copied study folder keeps its links)."""
    try:
        href = target.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        href = target.resolve().as_uri()
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


def render_leaderboard(study_dir: Path) -> str:
    """The study's page from its own files (leaderboard.json, plots/*.png): what was searched, the best
    trial, why any grid point is missing, the plots inline, and every trial linked to its report.html."""
    summary = json.loads((study_dir / "leaderboard.json").read_text(encoding="utf-8"))
    rows, metric, best = summary["leaderboard"], summary["metric"], summary.get("best")
    keys = [k for k in (rows[0] if rows else {}) if k not in ("trial", "state", metric, "run_dir", "reason",
                                                               *_TRIAL_COLUMNS)]
    about = _table([["study", summary["study"]], ["storage", summary["storage"]], ["method", summary["method"]],
                    ["pruner", summary.get("pruner") or "none"], ["metric", f"{metric} ({summary['direction']})"],
                    ["trials", ", ".join(f"{n} {state}" for state, n in summary["trials"].items() if n)],
                    ["samples trained (all trials)", summary.get("samples_trained")]])
    if best is not None:
        values = ", ".join(f"{k} = {json.dumps(best[k])}" for k in keys)
        final = study_dir / "final" / REPORT_FILE
        again = "" if not (study_dir / "best_config.yaml").exists() else (
            f" {_link(study_dir / 'best_config.yaml', study_dir, 'best_config.yaml')} trains it again "
            "(<code>tunesmith train best_config.yaml</code>).")
        best_html = (f"<p>Trial {best['trial']}: validation {html.escape(metric)} = {_cell(best[metric])} with "
                     f"{html.escape(values)}.{again}"
                     + (f" {_link(final, study_dir, 'The final run')} (--final) is tested on the test split."
                        if final.exists() else "") + "</p>")
    else:
        best_html = "<p>No trial completed.</p>"
    problems = [f"{', '.join(f'{k}={v}' for k, v in u['point'].items())}: trial {u['trial']} {u['state']}"
                + (f" ({u['reason']})" if u.get("reason") else "") for u in summary.get("unfinished", [])]
    problems += [f"worker {k} exited with code {c}" for k, c in enumerate(summary.get("worker_exit_codes", [])) if c]
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in [*problems, *summary.get("warnings", [])])
    plots = "".join(
        f'<figure><img class="plot" alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.stem.replace("_", " "))}'
        "</figcaption></figure>" for p in sorted((study_dir / "plots").glob("*.png")))
    head = ["trial", "state", *keys, metric, *_TRIAL_COLUMNS, "report", "reason"]
    body = []
    for r in rows:
        report = Path(r["run_dir"]) / REPORT_FILE if r.get("run_dir") else None
        cells = [_cell(r[c]) if r.get(c) is not None else "" for c in ("trial", "state", *keys, metric,
                                                                        *_TRIAL_COLUMNS)]
        cells.append(_link(report, study_dir, "report") if report is not None and report.exists() else "")
        cells.append(html.escape(r.get("reason") or ""))
        mark = ' class="best"' if best is not None and r["trial"] == best["trial"] else ""
        body.append(f"<tr{mark}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join(body) + "</tbody></table>")
    return _STUDY_PAGE.format(style=_STYLE, title=html.escape(f"search study: {summary['study']}"), about=about,
                              best=best_html, warnings=f'<ul class="warnings">{warn}</ul>' if warn else "",
                              plots=plots or "<p>No plots were drawn.</p>", table=table)


def write_leaderboard(study_dir: str | Path) -> Path:
    """Write study_dir/leaderboard.html (atomically) from the study's leaderboard.json and plots."""
    study_dir = Path(study_dir)
    path = study_dir / LEADERBOARD_FILE
    atomic_write_text(path, render_leaderboard(study_dir))
    return path


_STYLE = """body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 1.5em auto; padding: 0 1em; color: #1b1b1b; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em;
margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: 3px 8px;
text-align: left; vertical-align: top; } th { background: #f4f4f4; }
table.confusion td { text-align: right; min-width: 3em; }
.warnings li { color: #8a4b00; } svg { max-width: 100%; height: auto; }
article.error { border: 1px solid #ddd; border-radius: 4px; padding: .4em .8em; margin: .6em 0;
                 break-inside: avoid; }
article.error h3 { font-size: 1em; margin: .2em 0 .4em; } article.error small { color: #666; font-weight: normal; }
.field { margin: .2em 0; } .field .name { display: inline-block; min-width: 7em; color: #555; }
.field .text { white-space: pre-wrap; }
mark.gold { background: none; border-bottom: 3px solid #1a7f37; } mark.pred { background: #ffe08a; }
.how { color: #555; font-size: .9em; margin: .3em 0 0; } nav a { margin-right: 1em; }
@media print { nav { display: none; } body { max-width: none; } }
img.plot { max-width: 100%; } tr.best td { background: #eaf5ea; }
.study-plots { display: flex; flex-wrap: wrap; gap: 1em; }
"""

_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{style}</style></head><body>
<h1>{title}</h1>
"""  # the head of both pages

_PAGE = _HEAD + """<nav><a href="#trained">What was trained</a><a href="#data">Data</a>
<a href="#curves">Learning curves</a><a href="#metrics">Metrics</a><a href="#errors">Worst errors</a></nav>
{warnings}
<section id="trained"><h2>What was trained</h2>{trained}
<h3>Config: what differs from the defaults</h3>{config}</section>
<section id="data"><h2>Data</h2>{data_rows}{dropped}{leakage}{notes}{label_issues}</section>
<section id="curves"><h2>Learning curves</h2>{curves}</section>
<section id="metrics"><h2>Metrics</h2>{self_training}<h3>Validation (best checkpoint)</h3>{validation}
<h3>Test</h3>{test}
{per_class}{confusion}</section>
<section id="errors"><h2>Worst errors (test)</h2>{errors}</section>
</body></html>
"""

_STUDY_PAGE = _HEAD + """{warnings}
<section id="study"><h2>What was searched</h2>{about}</section>
<section id="best"><h2>Best trial</h2>{best}</section>
<section id="plots"><h2>Plots</h2><div class="study-plots">{plots}</div></section>
<section id="leaderboard"><h2>Leaderboard</h2><p class="how">Completed trials best first, then pruned, running,
waiting and failed; the best row is green. Every trial is a run folder; its report opens from the table.</p>
{table}</section>
</body></html>
"""
