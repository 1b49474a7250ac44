"""report.html (every task, and in a real headless Chromium) and the model card (model/README.md)."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import app
from tunesmith.tasks.base import task_class, task_names

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("trained", "data", "curves", "metrics", "errors")


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "predictions" / "test.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task", task_names())
def test_every_run_writes_a_self_contained_report(task: str, contract_run: Any) -> None:
    run_dir = contract_run(task)
    page = (run_dir / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page), "the page loads nothing from a network"
    assert "<svg" in page and "train.lr" in page  # the curves inline; the config's changes from the defaults
    report = json.loads((run_dir / "report.json").read_text())
    assert "report.html was not written" not in " ".join(report.get("warnings", []))
    shown = page.count('<article class="error">')
    views = tunesmith.load(run_dir).task.worst_errors(_rows(run_dir), 10)
    assert shown == len(views)


def test_classifications_worst_errors_are_its_most_confident_mistakes(contract_run: Any) -> None:
    run_dir = contract_run("text-classification")
    rows = _rows(run_dir)
    wrong = sorted((r for r in rows if r["prediction"]["label"] != r["gold"]), key=lambda r: -r["prediction"]["score"])
    views = tunesmith.load(run_dir).task.worst_errors(rows, 10)
    assert [v["row"] for v in views] == wrong[:10] and wrong
    page = (run_dir / "report.html").read_text()
    for r in wrong[:10]:  # with their text, the first eval.explain_errors (5) shaded by their explanations
        assert html.escape(f"gold {r['gold']!r}, predicted {r['prediction']['label']!r}") in page
    assert page.count('class="attr"') == sum(len(r["input"]["text"].split()) for r in wrong[:5])
    assert "convergence delta" in page


def test_ner_and_qa_mark_gold_and_predicted_spans(contract_run: Any) -> None:
    task = tunesmith.load(contract_run("question-answering")).task
    row = {"file": "f.jsonl", "line": 3, "input": {"question": "how was it", "context": "it was good and bad"},
           "gold": {"text": ["good"], "answer_start": [7]},
           "prediction": {"answer": "bad", "start": 16, "end": 19, "score": 0.4}}
    (view,) = task.worst_errors([row, {**row, "prediction": {**row["prediction"], "answer": "good"}}], 10)
    context = view["fields"][1]
    assert [(m["start"], m["end"], m["kind"]) for m in context["marks"]] == [(7, 11, "gold"), (16, 19, "pred")]
    ner = tunesmith.load(contract_run("token-classification")).task
    row = {"file": "f.jsonl", "line": 1, "input": {"tokens": ["the", "team", "won", "a", "vote"]},
           "gold": ["O", "B-SPORTS", "O", "O", "B-POLITICS"],
           "prediction": {"tags": ["O", "B-SPORTS", "O", "O", "O"],
                          "entities": [{"entity_group": "SPORTS", "score": 0.9, "word": "team", "start": 1, "end": 2}]}}
    (view,) = ner.worst_errors([row], 10)
    (field,) = view["fields"]
    assert field["text"] == "the team won a vote"
    assert [(m["start"], m["end"], m["kind"]) for m in field["marks"]] == [(4, 8, "gold"), (15, 19, "gold"),
                                                                           (4, 8, "pred")]
    assert view["title"].startswith("1 entity error")


@pytest.mark.parametrize("task", ["text-classification", "token-classification", "text-generation"])
def test_the_model_card_is_a_hugging_face_card_with_the_runs_numbers(task: str, contract_run: Any) -> None:
    run_dir = contract_run(task)
    card = (run_dir / "model" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == task_class(task).hub_pipeline_tag
    assert "tunesmith" in meta["tags"] and "base_model" not in meta  # a local base model is not a Hub name
    report = json.loads((run_dir / "report.json").read_text())
    metric = report["train"]["metric"]
    test = report["test"][metric]
    assert f"| {metric} | {report['validation'][metric]:.4f} | {test:.4f} |" in card
    assert "## How to load" in card and "## Limitations" in card
    tunesmith.load(run_dir)  # the card is one of the hashed files: the folder still checks


def test_tunesmith_report_writes_the_same_page_again(contract_run: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(contract_run("text-classification"), run_dir)
    before = (run_dir / "report.html").read_text()
    (run_dir / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").read_text() == before.replace(
        contract_run("text-classification").name, run_dir.name)


@pytest.fixture(scope="session")
def chromium() -> str:
    """TUNESMITH_TEST_CHROMIUM (.ci/run sets it, so CI fails rather than skips without a browser), else the
    one .ci/chromium finds or installs; skipped only when that cannot run."""
    path = os.environ.get("TUNESMITH_TEST_CHROMIUM")
    if path:
        return path
    try:
        out = subprocess.run(["bash", str(REPO / ".ci" / "chromium")], capture_output=True, text=True, timeout=600,
                             check=True)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"no Chromium ({getattr(e, 'stderr', '') or e}); set TUNESMITH_TEST_CHROMIUM to run this test")
    return out.stdout.split()[-1]


def _open_in_chromium(chromium: str, page: Path, tmp_path: Path, sections: tuple[str, ...], shot_name: str) -> str:
    """Headless Chromium renders `page` with no console message and `sections` in its DOM; the screenshot
    is kept (TUNESMITH_SCREENSHOTS: a folder to copy it to). Returns the rendered DOM."""
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in sections:
        assert f'<section id="{section}">' in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Failed to load resource" in line]
    assert console == []
    shot = tmp_path / shot_name
    subprocess.run([chromium, *flags, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("TUNESMITH_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["TUNESMITH_SCREENSHOTS"]) / shot_name)
    return dom.stdout


def test_the_report_opens_in_a_real_browser(contract_run: Any, chromium: str, tmp_path: Path) -> None:
    page = contract_run("text-classification") / "report.html"
    dom = _open_in_chromium(chromium, page, tmp_path, SECTIONS, "report-text-classification.png")
    assert dom.count('<article class="error">') >= 1


def test_a_studys_leaderboard_page_opens_in_a_real_browser_with_its_plots_and_links(
        contract_run: Any, chromium: str, tmp_path: Path) -> None:
    """The page of a study folder as write_results leaves it (leaderboard.json, plots/, trials/), written by
    `tunesmith report STUDY_DIR`: each trial a row, best first, linked to its run's report.html."""
    from tunesmith.evaluation.report import plot_search_history

    study = tmp_path / "study"
    shutil.copytree(contract_run("text-classification"), study / "trials" / "0001")
    base = {"train.lr": 1e-3, "accuracy": 0.75, "train_s": 3.5, "samples": 384, "parameters": 1000,
            "trainable_parameters": 1000, "ms_per_example": 0.4, "reason": None}
    rows = [{"trial": 1, "state": "completed", **base, "run_dir": str(study / "trials" / "0001")},
            {"trial": 0, "state": "pruned", **base, "train.lr": 5e-1, "accuracy": None,
             "run_dir": str(study / "trials" / "0000"), "reason": "pruned at 50% of an epoch"}]
    summary = {"study": "study", "storage": "sqlite:///study.db", "method": "grid", "pruner": "median",
               "metric": "accuracy", "direction": "maximize",
               "trials": {"completed": 1, "pruned": 1, "failed": 0, "running": 0, "waiting": 0},
               "samples_trained": 768, "unfinished": [], "worker_exit_codes": [], "best": rows[0],
               "leaderboard": rows}
    (study / "leaderboard.json").write_text(json.dumps(summary))
    plot_search_history(rows, "accuracy", True, study / "plots" / "optimization_history.png")
    result = CliRunner().invoke(app, ["report", str(study)])
    assert result.exit_code == 0, result.output
    page = (study / "leaderboard.html").read_text()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page), "the page loads nothing from a network"
    assert page.count('src="data:image/png;base64,') == 1
    body = page[page.index("<tbody>", page.index('id="leaderboard"')):]
    trs = re.findall(r"<tr[^>]*>(.*?)</tr>", body)
    assert [re.findall(r"<td>(.*?)</td>", tr)[:4] for tr in trs] == [["1", "completed", "0.001", "0.75"],
                                                                     ["0", "pruned", "0.5", ""]]
    assert '<a href="trials/0001/report.html">report</a>' in trs[0] and "<a " not in trs[1]  # no report, no link
    assert "pruned at 50% of an epoch" in trs[1]
    dom = _open_in_chromium(chromium, study / "leaderboard.html", tmp_path, ("study", "best", "plots", "leaderboard"),
                            "leaderboard.png")
    assert "Trial 1: validation accuracy = 0.75 with train.lr = 0.001." in dom
