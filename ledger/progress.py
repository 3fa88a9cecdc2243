"""Progress of long work: export, reconcile, publish, imports, DLQ replay, read-model rebuild.

The work reports to a :class:`Progress`: it opens a phase, with a total when it knows one,
and advances it. It never decides how that is shown, and nothing here is imported by the
domain or the store. The CLI picks the rendering with :func:`progress_on_stderr`:

- stderr is a terminal: a rich display (count, rate, elapsed; bar and ETA when the total is
  known), redrawn in place; log lines written meanwhile appear above it;
- otherwise (a pipe, a file, a job's log): no redraws at all, only a log line (logger
  ``ledger.progress``, INFO) for a phase that runs longer than :data:`LOG_EVERY_SECONDS`,
  governed by ``--log-level`` and ``--log-format`` like every other line.

stdout is never written, so the commands' JSON summaries stay byte-identical either way.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from rich.progress import Progress as RichBar

log = logging.getLogger("ledger.progress")

LOG_EVERY_SECONDS = 10.0
# How stale the rich display may be: advances are handed to rich at most this often, which
# keeps its per-call lock and sampling off the per-entry path of a million-entry export.
REDRAW_SECONDS = 0.1

T = TypeVar("T")


class Progress(Protocol):
    """What long work reports to."""

    def phase(self, description: str, total: int | None = None) -> None:
        """Start a new phase (the previous one, if any, is finished)."""

    def advance(self, count: int = 1) -> None:
        """``count`` more items of the current phase are done."""


class _Quiet:
    def phase(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass


QUIET: Progress = _Quiet()


def track(
    items: Iterable[T], progress: Progress, description: str, total: int | None = None
) -> Iterator[T]:
    """``items``, opening a phase first and counting each item once the caller is done
    with it (asks for the next one)."""
    progress.phase(description, total)
    for item in items:
        yield item
        progress.advance()


def describe(description: str, completed: int, total: int | None, seconds: float) -> str:
    """One plain line: ``export: 1,200 of 5,000 (24%), 400/s, about 10 s left``."""
    rate = completed / seconds if seconds > 0 else 0.0
    if total:
        text = f"{description}: {completed:,} of {total:,} ({100 * completed / total:.0f}%)"
    else:
        text = f"{description}: {completed:,}"
    text += f", {rate:,.0f}/s"
    if total and rate > 0 and completed < total:
        text += f", about {(total - completed) / rate:,.0f} s left"
    return text


class LogProgress:
    """Not a terminal: a log line every ``every_seconds`` of a phase, nothing for short ones."""

    def __init__(
        self,
        every_seconds: float = LOG_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_seconds = every_seconds
        self.clock = clock
        self.phase("", None)

    def phase(self, description: str, total: int | None = None) -> None:
        self.description, self.total, self.completed = description, total, 0
        self.started = self.logged = self.clock()

    def advance(self, count: int = 1) -> None:
        self.completed += count
        now = self.clock()
        if now - self.logged >= self.every_seconds:
            self.logged = now
            log.info(
                "%s", describe(self.description, self.completed, self.total, now - self.started)
            )


class RichProgress:
    """A terminal: rich's live display on ``stream`` (use as a context manager)."""

    def __init__(self, stream: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self._bar: RichBar | None = None
        self._task: Any = None
        self._pending = 0
        self._handed = 0.0
        self._swapped: list[tuple[logging.StreamHandler[Any], IO[str] | None]] = []

    def __enter__(self) -> RichProgress:
        from rich.console import Console
        from rich.file_proxy import FileProxy

        console = Console(file=self.stream)
        self._bar = _rich_bar(console)
        self._bar.start()
        # Log lines go through the display, which prints them above the bar instead of
        # tearing it (the root handler holds stderr itself, so rich cannot redirect it).
        proxy = FileProxy(console, self.stream)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                self._swapped.append((handler, handler.setStream(proxy)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._finish()
        for handler, stream in self._swapped:
            handler.setStream(stream)
        self._swapped.clear()
        if self._bar is not None:
            self._bar.stop()

    def phase(self, description: str, total: int | None = None) -> None:
        assert self._bar is not None, "use RichProgress as a context manager"
        self._finish()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, count: int = 1) -> None:
        self._pending += count
        now = self.clock()
        if now - self._handed >= REDRAW_SECONDS:
            self._handed = now
            self._hand_over()

    def _hand_over(self) -> None:
        if self._bar is not None and self._task is not None and self._pending:
            self._bar.advance(self._task, self._pending)
        self._pending = 0

    def _finish(self) -> None:
        """The current phase is done: its line stays, showing the final count."""
        self._hand_over()
        if self._bar is None or self._task is None:
            return
        task = next(task for task in self._bar.tasks if task.id == self._task)
        if task.total is None:  # now it is known: show the phase as complete
            self._bar.update(self._task, total=task.completed)
        self._bar.stop_task(self._task)


def _rich_bar(console: Any) -> RichBar:
    from rich.progress import (
        BarColumn,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bar
    from rich.text import Text

    class CountColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            total = f"/{task.total:,.0f}" if task.total is not None else ""
            return Text(f"{task.completed:,.0f}{total}", style="progress.download")

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            # rich's speed is over its recent samples; a stopped phase shows its average.
            rate = task.speed if task.stop_time is None else None
            if rate is None and task.elapsed:
                rate = task.completed / task.elapsed
            return Text(f"{rate or 0:,.0f}/s", style="progress.data.speed")

    return Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        CountColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        redirect_stdout=False,  # stdout carries the JSON summaries: never touch it
        redirect_stderr=False,
    )


def stream_is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


@contextmanager
def progress_on_stderr(stream: IO[str] | None = None) -> Iterator[Progress]:
    """The rendering the CLI uses: rich on a terminal, log lines otherwise."""
    stream = sys.stderr if stream is None else stream
    if not stream_is_terminal(stream):
        yield LogProgress()
        return
    with RichProgress(stream) as progress:
        yield progress
