"""Token-level cutting shared by tasks: truncation longest-first and overlapping windows, on token ids
with their special-token mask (so a pair's separator and a model's special tokens are never cut)."""
from __future__ import annotations


def _content_runs(special: list[int]) -> list[list[int]]:
    """Positions of each text's content tokens (the runs between special tokens)."""
    runs: list[list[int]] = []
    prev_special = True
    for i, s in enumerate(special):
        if not s:
            if prev_special:
                runs.append([])
            runs[-1].append(i)
        prev_special = bool(s)
    return runs


def truncate(ids: list[int], special: list[int], types: list[int] | None, max_length: int,
             strategy: str, head_tokens: int | None = None) -> tuple[list[int], list[int] | None]:
    """Cut content tokens (never special ones) down to max_length.

    Pairs lose tokens from the longer text first; `head_tail` keeps each cut text's first `head_tokens`
    (default a quarter of its budget) and fills the rest of its budget from its end (Sun et al., 2019:
    how to fine-tune BERT for long texts).
    """
    content_runs = _content_runs(special)
    budget = max_length - (len(ids) - sum(len(r) for r in content_runs))
    lens = _longest_first([len(r) for r in content_runs], budget)
    keep = [i for i, s in enumerate(special) if s]
    for run, n in zip(content_runs, lens):
        if strategy == "head_tail" and n < len(run):
            head = n // 4 if head_tokens is None else min(head_tokens, n)
            keep += run[:head] + run[len(run) - (n - head):]
        else:
            keep += run[:n]
    keep.sort()
    return [ids[i] for i in keep], ([types[i] for i in keep] if types is not None else None)


def windows(ids: list[int], special: list[int], types: list[int] | None, max_length: int,
            stride: int) -> list[tuple[list[int], list[int] | None, int]]:
    """A long text as windows of max_length tokens, each with the special tokens and any second text
    whole: [(ids, token types, tokens of the first text it adds to the windows before it)].

    Window k starts k * (size - stride) tokens into the first text, so consecutive windows share
    `stride` tokens (at most half a window); the last one ends where the text ends (it may share more,
    never fewer: every window is full). Together they hold every token of the first text. A text that
    fits is one window. A pair whose second text leaves the first under a quarter of max_length is cut
    instead (longer text first): windows that small would multiply the features and read little each.
    """
    runs = _content_runs(special)
    first = runs[0] if runs else []
    size = max_length - (len(ids) - len(first))
    if len(ids) <= max_length or size < max_length // 4:
        if len(ids) > max_length:
            ids, types = truncate(ids, special, types, max_length, "head")
        return [(ids, types, min(len(first), len(ids)))]
    stride = min(stride, size // 2)
    step = size - stride
    in_first = set(first)
    fixed = [i for i in range(len(ids)) if i not in in_first]
    starts = list(range(0, len(first) - size, step)) + [len(first) - size]
    out, seen = [], 0
    for start in starts:
        keep = sorted(fixed + first[start:start + size])
        out.append(([ids[i] for i in keep], [types[i] for i in keep] if types is not None else None,
                    start + size - seen))
        seen = start + size
    return out


def _longest_first(lens: list[int], budget: int) -> list[int]:
    """Lengths after cutting the longest text first: cap every text at the largest c that fits."""
    if sum(lens) <= budget:
        return lens
    lo, hi = 0, max(lens)
    while lo < hi:
        c = (lo + hi + 1) // 2
        lo, hi = (c, hi) if sum(min(n, c) for n in lens) <= budget else (lo, c - 1)
    out = [min(n, lo) for n in lens]
    spare = budget - sum(out)
    for k, n in enumerate(lens):  # leftover tokens go to the earliest texts still cut
        if spare and n > out[k]:
            out[k] += 1
            spare -= 1
    return out
