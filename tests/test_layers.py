"""The promise of the task interface, kept by tests: shared code names no task, and the layers have no cycle.

Shared code (the recipe, data loading and its report, the evaluation engine, serving, the CLI and search)
talks to a task only through `tunesmith.tasks.base.Task`: it asks the declaration, never a task's name, its
options or its metrics. The metric implementations the tasks use live in `tunesmith.metrics`, below the tasks.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from tunesmith import config
from tunesmith.registry import task_class, task_names
from tunesmith.tasks.base import Task

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tunesmith"
SHARED = [SRC / "run.py", SRC / "cli.py", SRC / "hpsearch.py", *sorted((SRC / "data").glob("*.py")),
          *sorted((SRC / "evaluation").glob("*.py")), *sorted((SRC / "serving").glob("*.py"))]


def _schema_keys(model: type[BaseModel]) -> set[str]:
    """Every key of the shared config schema, at any depth: the vocabulary shared code may use."""
    keys = set()
    for name, f in model.model_fields.items():
        keys.add(name)
        for sub in typing.get_args(f.annotation) or (f.annotation,):
            if isinstance(sub, type) and issubclass(sub, BaseModel) and sub is not model:
                keys |= _schema_keys(sub)
    return keys


def _metric_names(cls: type[Task]) -> set[str]:
    """The metrics instances of `cls` report, over every value of each of its Literal options (a task whose
    metrics depend on an option, such as a problem type, reports each set under one of them)."""
    names = {*cls.loss_metrics}
    base = config.load_config({"task": cls.name, "data": {"train": "x.csv"}})
    variants = [{}]
    for opt, f in cls.Options.model_fields.items():
        if typing.get_origin(f.annotation) is typing.Literal:
            variants += [{opt: v} for v in typing.get_args(f.annotation)]
    for v in variants:
        cfg = config.load_config({"task": {"type": cls.name, **v}, "data": {"train": "x.csv"}})
        try:
            names |= set(cls(cfg).metrics)
        except (KeyError, ValueError):  # a setting whose metrics the data decides (fitted later)
            continue
    assert base is not None
    return names


def _task_words() -> dict[str, str]:
    """word -> what it is (a task's name, option or metric), less the shared vocabulary."""
    shared = _schema_keys(config.RunConfig) | {"loss"}
    words: dict[str, str] = {}
    for name in task_names():
        cls = task_class(name)
        for w in (cls.name, *cls.aliases):
            words[w] = f"the task name {w!r}"
        for w in cls.Options.model_fields:
            words.setdefault(w, f"{name}'s option {w!r}")
        for w in _metric_names(cls):
            words.setdefault(w, f"{name}'s metric {w!r}")
    return {w: why for w, why in words.items() if w not in shared}


TASK_MEMBERS = {m for m in [*dir(Task), *Task.__annotations__] if not m.startswith("_")}


def _violations(path: Path, words: dict[str, str]) -> list[str]:
    """String constants and docstrings that are (or name, as `task.<option>` or a task name) a task's word, and
    comments that name a task; members of a task object (`task.x`, `p.task.x`, `self.task.x`) that are not part
    of the Task interface."""
    tree = ast.parse(path.read_text())
    out = []
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
                         + r")(?![\w-])")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):  # docstrings included
            if node.value in words:
                out.append(f"{path.name}:{node.lineno}: the string {node.value!r} is {words[node.value]}")
            else:
                for m in pattern.finditer(node.value):
                    if words[m.group(1)].startswith("the task name") or node.value[:m.start()].endswith("task."):
                        out.append(f"{path.name}:{node.lineno}: {node.value!r} names {words[m.group(1)]}")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "opts" \
                and node.attr in words:
            out.append(f"{path.name}:{node.lineno}: opts.{node.attr} is {words[node.attr]}")
        if isinstance(node, ast.Attribute) and node.attr not in TASK_MEMBERS:
            owner = node.value
            is_task = (isinstance(owner, ast.Name) and owner.id == "task") or (
                isinstance(owner, ast.Attribute) and owner.attr == "task")
            if is_task and not isinstance(getattr(node, "ctx", None), ast.Store):
                out.append(f"{path.name}:{node.lineno}: task.{node.attr} is not part of the Task interface")
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        comment = line.split("#", 1)[1] if "#" in line else ""
        for m in pattern.finditer(comment):
            if words[m.group(1)].startswith("the task name") or comment[:m.start()].endswith("task."):
                out.append(f"{path.name}:{lineno}: the comment names {words[m.group(1)]}")
    return out


def test_shared_code_names_no_task_option_or_metric() -> None:
    words = _task_words()
    assert {"text-classification", "num_beams", "long_text", "class_weights", "exact_match", "perplexity"} <= set(words)
    found = [v for path in SHARED for v in _violations(path, words)]
    assert found == []


def test_the_check_finds_a_task_name_an_option_and_a_private_member(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('def f(task, cfg):\n    if task.name == "token-classification":\n'
                   '        return task.opts.long_text, "see task.num_beams", task.target_max_length\n')
    words = _task_words()
    assert sorted(_violations(bad, words)) == [
        "bad.py:2: the string 'token-classification' is the task name 'token-classification'",
        "bad.py:3: 'see task.num_beams' names summarization's option 'num_beams'",
        "bad.py:3: opts.long_text is text-classification's option 'long_text'",
        "bad.py:3: task.target_max_length is not part of the Task interface"]


def test_the_layers_have_no_cycle() -> None:
    """The import-linter contract in pyproject.toml (leaf types and registry up to the CLI)."""
    result = subprocess.run([sys.executable, "-m", "importlinter.cli", "--config", str(ROOT / "pyproject.toml")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("attr, value, problem", [
    ("long_inputs", "chunks", "`long_inputs` must be one of ('truncate', 'window'), not 'chunks'"),
    ("decoding", ("beams",), "`decoding` names 'beams', which is not one of its Options"),
    ("moved_keys", {"train.lr": "nope"}, "`moved_keys` moves 'train.lr' to 'nope', which is not one of its Options"),
])
def test_register_task_refuses_a_wrong_declaration(attr: str, value: object, problem: str) -> None:
    from tunesmith.tasks.base import register_task

    base = task_class("summarization")
    bad = type("Bad", (base,), {"name": "bad-task", attr: value})
    with pytest.raises(TypeError, match=re.escape(problem)):
        register_task(bad)
    assert "bad-task" not in task_names()


def test_register_task_refuses_a_task_with_an_unimplemented_hook() -> None:
    from tunesmith.tasks.base import register_task

    class Half(Task):
        name = "half"

        @property
        def metrics(self) -> dict[str, bool]:
            return {"accuracy": True}

    with pytest.raises(TypeError, match=r"it does not implement collate, count_items, encode, evaluator, fit, "
                                        r"forward, gold, load_model, prediction_schema, preprocess, roles, "
                                        r"state, summary"):
        register_task(Half)
