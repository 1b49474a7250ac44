"""Training progress for people: a live bar on a terminal, plain lines in log files, CI and nohup.

A rich progress bar redraws one line in place; written to a file it shows nothing until the run
ends, so someone tailing a log cannot tell a slow run from a hung one. Off a terminal the reporter
prints one plain line every `max(1, total_steps // 20)` steps or every 30 seconds, whichever comes
first, plus the first and the last step.
"""
from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console

if TYPE_CHECKING:
    from .loop import Event

PLAIN_EVERY_SECONDS = 30.0


class ProgressReporter:
    """A loop callback that shows steps, validation results and early stopping; `stop()` ends the display."""

    def __init__(self, console: Console | None = None, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic, every_seconds: float = PLAIN_EVERY_SECONDS) -> None:
        self.console = console or Console()
        self.enabled = enabled  # False on all but the main process of a multi-process run
        self.live = self.console.is_terminal or self.console.is_jupyter
        self.clock, self.every_seconds = clock, every_seconds
        self._bar: Any = None
        self._task: Any = None
        self._first: tuple[float, int] | None = None  # (time, step) of the first step this process saw
        self._last_print = 0.0
        self._pending: str | None = None  # an unprinted step line: shown before validation or at the end

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return None
        s = event.state
        if event.kind == "step":
            self._live_step(event) if self.live else self._plain_step(event)
        elif event.kind == "eval":
            self._flush()  # a validation line follows the line of its step
            scalars = ", ".join(f"{k}={v:.4f}" for k, v in event.data["metrics"].items() if isinstance(v, float))
            best = " (best)" if event.data["is_best"] else ""
            self._say(f"step {s.step}: validation {scalars}{best}")
        elif event.kind == "early_stop":
            self._say(f"early stopping at step {s.step}: best step {event.data['best_step']}")
        elif event.kind == "end":
            self.stop()
        return None

    def stop(self) -> None:
        """End the bar, or print the last step's line if the run stopped between two printed lines."""
        if self._bar is not None:
            self._bar.stop()
        self._flush()

    def _say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)  # one line each, never wrapped

    def _flush(self) -> None:
        if self._pending is not None:
            self._say(self._pending)
            self._pending = None

    def _live_step(self, event: Event) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        s = event.state
        if self._bar is None:
            self._bar = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("loss {task.fields[loss]:.4f}"),
                                 TextColumn("{task.fields[speed]:.1f} samples/s"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self._bar.start()
            self._task = self._bar.add_task("train", total=event.data["total_steps"], completed=s.step - 1,
                                            loss=event.data["loss"], speed=0.0)
        self._bar.update(self._task, completed=s.step, loss=event.data["loss"], speed=s.samples_per_second)

    def _plain_step(self, event: Event) -> None:
        s, total, now = event.state, event.data["total_steps"], self.clock()
        first = self._first is None
        if first:
            self._first = (now, s.step)
        t0, step0 = self._first
        # wall time per step since the first step seen (evaluations included); the step's own time until then
        per_step = (now - t0) / (s.step - step0) if s.step > step0 else event.data["seconds"]
        epoch = s.epoch if s.batch_in_epoch == 0 else s.epoch + 1  # the epoch this step belongs to, from 1
        line = (f"step {s.step}/{total} (epoch {epoch}): loss {event.data['loss']:.4f}, "
                f"{s.samples_per_second:.1f} samples/s, ETA {timedelta(seconds=round(per_step * (total - s.step)))}")
        due = s.step % max(1, total // 20) == 0 or now - self._last_print >= self.every_seconds
        if first or due or s.step == total:
            self._say(line)
            self._last_print, self._pending = now, None
        else:
            self._pending = line
