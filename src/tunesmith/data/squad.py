"""SQuAD-shaped data: the nested SQuAD v1.1 / v2.0 JSON flattened into rows, and answers from flat files.

A row is {"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}, "title"} (the
Hugging Face `squad` layout); a v2 question marked "is_impossible" has empty answer lists, and a question
with neither "answers" nor "is_impossible" has no "answers" key (a missing value). A SQuAD file has
no useful line numbers for nested entries, so a row's record number is its question number in file order
(1-based) and errors say "question N (id ...)".

Every answer must be found at its start in the context: an answer that is not is a DataError naming the
row (never dropped or trained on silently), with the places where the text does occur as a hint — a
misplaced answer_start is a data bug that would teach the model a wrong span.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError

Answers = dict[str, list]  # {"text": [str, ...], "answer_start": [int, ...]}


def answer_problem(context: str, text: str, start: int) -> tuple[str, str | None] | None:
    """Why an answer does not sit at `start` in `context` (message, hint), or None when it does."""
    if context[start:start + len(text)] == text:
        return None
    found, k = [], context.find(text)
    while k >= 0 and len(found) < 3:
        found.append(k)
        k = context.find(text, k + 1)
    there = context[start:start + len(text)]
    msg = f"answer {text!r} is not at character {start} of the context (found {there!r} there)"
    if found:
        return msg, f"the text occurs at character {', '.join(map(str, found))}; fix answer_start"
    return msg, "the text does not occur in the context at all; fix the answer text or the context"


def _start(v: Any) -> int:
    """A character offset: an int, or its spelling in a CSV cell."""
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    if isinstance(v, float) and v.is_integer():  # pandas writes int columns with gaps as floats
        v = int(v)
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    raise ValueError(f"answer_start {v!r} is not a character offset (a whole number from 0)")


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"answer text {v!r} is not a string")
    if not v.strip():
        raise ValueError("an answer text is empty; a question without an answer has empty answer lists")
    return v


def parse_answers(value: Any) -> Answers:
    """A flat row's `answers` cell as {"text": [...], "answer_start": [...]}.

    Accepted: that dict; a list of {"text", "answer_start"} objects (an empty list: no answer); either of
    them as JSON text (a CSV cell). Raises ValueError with the reason.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("answers must be JSON such as {\"text\": [\"...\"], \"answer_start\": [0]}, got "
                             f"{value[:60]!r}") from None
    if isinstance(value, list):
        if not all(isinstance(a, dict) and set(a) >= {"text", "answer_start"} for a in value):
            raise ValueError('answers as a list must hold objects with "text" and "answer_start"')
        value = {"text": [a["text"] for a in value], "answer_start": [a["answer_start"] for a in value]}
    if not isinstance(value, dict) or set(value) < {"text", "answer_start"}:
        raise ValueError('answers must be {"text": [...], "answer_start": [...]} or a list of '
                         '{"text", "answer_start"} objects')
    texts, starts = value["text"], value["answer_start"]
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise ValueError(f"answers has {_count(texts)} text(s) but {_count(starts)} answer_start(s)")
    return {"text": [_text(t) for t in texts], "answer_start": [_start(s) for s in starts]}


def _count(v: Any) -> str:
    return str(len(v)) if isinstance(v, list) else f"a non-list {type(v).__name__}"


def columns_answers(text: Any, start: Any) -> Answers:
    """Answers from `answer_text` + `answer_start` cells: one answer, or equal-length lists of several."""
    texts, starts = (text, start) if isinstance(text, list) else ([text], [start])
    if not isinstance(starts, list) or len(texts) != len(starts):
        raise ValueError(f"answer_text has {len(texts)} answer(s) but answer_start {starts!r} does not match")
    return {"text": [_text(t) for t in texts], "answer_start": [_start(s) for s in starts]}


def squad_records(data: dict, path: Path) -> list[tuple[int, dict]]:
    """Rows of a SQuAD v1.1/v2.0 file (an object with a "data" list of articles), numbered by question."""
    rows: list[tuple[int, dict]] = []
    n = 0

    def fail(msg: str, hint: str | None = None) -> DataError:
        return DataError(msg, file=str(path), hint=hint)

    for a, article in enumerate(data["data"], start=1):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise fail(f"article {a} of \"data\" has no \"paragraphs\" list", "this is not a SQuAD file as expected: "
                       "data -> [{title, paragraphs: [{context, qas: [{id, question, answers}]}]}]")
        for p, para in enumerate(article["paragraphs"], start=1):
            if not isinstance(para, dict) or not isinstance(para.get("context"), str) \
                    or not isinstance(para.get("qas"), list):
                raise fail(f"article {a}, paragraph {p}: expected an object with a \"context\" string and a "
                           "\"qas\" list")
            context = para["context"]
            for qa in para["qas"]:
                n += 1
                qid = qa.get("id") if isinstance(qa, dict) else None
                where = f"question {n} (id {qid})" if qid is not None else f"question {n}"
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
                    raise fail(f"{where}: expected an object with a \"question\" string")
                row = {"id": qid, "question": qa["question"], "context": context, "title": article.get("title")}
                # no "answers" key and not is_impossible: a missing answer (dropped and listed by the
                # missing-value policy, as in a flat file), never a silent no-answer question
                if qa.get("is_impossible") or "answers" in qa:
                    try:
                        row["answers"] = parse_answers([] if qa.get("is_impossible") else qa["answers"])
                    except ValueError as e:
                        raise fail(f"{where}: {e}") from None
                    for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
                        problem = answer_problem(context, text, start)
                        if problem:
                            raise fail(f"{where}: {problem[0]}", problem[1])
                rows.append((n, {k: v for k, v in row.items() if v is not None}))
    if not rows:
        raise fail("the SQuAD file holds no questions")
    return rows
