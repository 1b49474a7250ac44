"""Label Studio JSON exports (a JSON array of tasks with "data" and "annotations") as NER rows.

Each task becomes {"text": ..., "label": [[start, end, type], ...]} from its first annotation that was
not cancelled (only "labels" results: spans); a task nobody annotated has no "label" and is dropped
by the missing-value policy like any row without gold, so it is reported, not trained on as "no entity".
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError


def _text_of(data: dict) -> str | None:
    """The task's text: the "text" field, else the only string field of "data"."""
    if isinstance(data.get("text"), str):
        return data["text"]
    strings = [v for v in data.values() if isinstance(v, str)]
    return strings[0] if len(strings) == 1 else None


def _utf16_to_index(text: str, unit: int) -> int | None:
    """The Python index of a UTF-16 offset (JavaScript counts characters beyond U+FFFF twice), or None."""
    u = 0
    for k, ch in enumerate(text):
        if u == unit:
            return k
        u += 2 if ord(ch) > 0xFFFF else 1
    return len(text) if u == unit else None


def _offsets(text: str, start: int, end: int, quoted: object) -> tuple[int, int] | None:
    """(start, end) as Python indices: as given when they slice out the span's own "text" (or it has none),
    else read as UTF-16 offsets when that does; None when neither does."""
    if not isinstance(quoted, str) or text[start:end] == quoted:
        return start, end
    s, e = _utf16_to_index(text, start), _utf16_to_index(text, end)
    if s is not None and e is not None and text[s:e] == quoted:
        return s, e
    return None


def label_studio_records(rows: list[tuple[int, dict]], path: Path) -> list[tuple[int, dict]]:
    """Flatten Label Studio tasks into {"text", "label"} rows, keeping each task's record number."""
    out: list[tuple[int, dict]] = []
    for i, task in rows:
        text = _text_of(task["data"])
        if text is None:
            raise DataError(f"record {i}: cannot tell which field of \"data\" holds the text "
                            f"(fields: {', '.join(map(str, task['data']))})", file=str(path),
                            hint='name the text field "text" in the labeling config (value="$text")')
        row: dict = {"text": text}
        annotation = next((a for a in task["annotations"] if isinstance(a, dict) and not a.get("was_cancelled")),
                          None)
        if annotation is not None:
            spans = []
            for r in annotation.get("result") or []:
                if not isinstance(r, dict) or r.get("type") != "labels":
                    continue  # choices, relations, text areas: not spans
                v = r.get("value") or {}
                labels, start, end = v.get("labels") or [], v.get("start"), v.get("end")
                shown = json.dumps(v, ensure_ascii=False)[:120]
                if len(labels) != 1:
                    raise DataError(f"record {i}: a span has {len(labels)} labels, expected one: {shown}",
                                    file=str(path), hint="give each span exactly one entity type")
                if not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end)):
                    raise DataError(f"record {i}: a span's start/end are not integers: {shown}", file=str(path))
                fixed = _offsets(text, start, end, v.get("text"))
                if fixed is None:
                    raise DataError(f"record {i}: span [{start}, {end}] does not cover its own text "
                                    f"{v.get('text')!r} in the task's text: {shown}", file=str(path),
                                    hint="the export and the task text disagree; re-export the project")
                spans.append([*fixed, labels[0]])
            row["label"] = spans
        out.append((i, row))
    return out
