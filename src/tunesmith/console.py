"""Text that reaches a terminal: user-supplied strings (labels, file contents) never carry raw control bytes."""
from __future__ import annotations


def printable(text: object, keep_newlines: bool = False) -> str:
    """`text` with control characters shown as escapes (ESC -> \\x1b), so data cannot drive the terminal.

    Labels and cell values come from users' files; printed raw, an ESC sequence can recolour, move the
    cursor or rewrite earlier lines of a log. Newlines are kept only for multi-line messages of our own.
    """
    s = str(text)
    return "".join(ch if ch.isprintable() or (keep_newlines and ch == "\n")
                   else ch.encode("unicode_escape").decode("ascii") for ch in s)
