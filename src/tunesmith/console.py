"""What reaches a terminal: user-supplied strings never carry raw control bytes, libraries' chatter stays out."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


def printable(text: object, keep_newlines: bool = False) -> str:
    """`text` with control characters shown as escapes (ESC -> \\x1b), so data cannot drive the terminal.

    Labels and cell values come from users' files; printed raw, an ESC sequence can recolour, move the
    cursor or rewrite earlier lines of a log. Newlines are kept only for multi-line messages of our own.
    """
    s = str(text)
    return "".join(ch if ch.isprintable() or (keep_newlines and ch == "\n")
                   else ch.encode("unicode_escape").decode("ascii") for ch in s)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Hide transformers' load reports and warnings and the libraries' tqdm bars, then restore them.

    Our data report, progress and summary say what matters; the libraries' chatter (weight-load
    reports, "Map", "Writing model shards") would bury it, from the CLI and from Python alike. Used
    as a context manager or a decorator; the previous settings come back afterwards, so a notebook
    that turned the bars on keeps them for its own work.
    """
    import datasets
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_bars = hf_logging.is_progress_bar_enabled()
    ds_bars = not datasets.are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if ds_bars:
            datasets.enable_progress_bars()
