"""ledger.progress: what long work reports, and how the CLI shows it on and off a terminal.

Pure unit tests: a fake clock for the log-line rendering, in-memory streams (one claiming to
be a terminal) for the choice of rendering. The commands themselves are run on a real
pseudo-terminal in tests/integration/test_progress.py.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.publish import count_lines
from ledger.progress import (
    LogProgress,
    RichProgress,
    describe,
    progress_on_stderr,
    track,
)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def phase(self, description: str, total: int | None = None) -> None:
        self.calls.append(("phase", (description, total)))

    def advance(self, count: int = 1) -> None:
        self.calls.append(("advance", count))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TerminalIO(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_track_opens_the_phase_first_and_counts_an_item_once_the_caller_is_done() -> None:
    progress = Recorder()
    seen = []
    for item in track("abc", progress, "letters", 3):
        seen.append((item, len(progress.calls)))
    assert progress.calls == [("phase", ("letters", 3))] + [("advance", 1)] * 3
    assert seen == [("a", 1), ("b", 2), ("c", 3)]  # "a" was not counted while in use


def test_describe_says_count_share_rate_and_time_left() -> None:
    assert describe("export", 1200, 5000, 3.0) == (
        "export: 1,200 of 5,000 (24%), 400/s, about 10 s left"
    )
    assert describe("import x", 50, None, 2.0) == "import x: 50, 25/s"
    assert describe("rebuild", 12, 10, 1.0) == "rebuild: 12 of 10 (120%), 12/s"  # head grew
    assert describe("export", 0, 0, 0.0) == "export: 0, 0/s"


def test_log_progress_is_silent_for_short_work_and_logs_a_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    progress = LogProgress(every_seconds=10.0, clock=clock)
    caplog.set_level(logging.INFO, logger="ledger.progress")
    progress.phase("export", 5000)
    clock.now += 9.9
    progress.advance(990)
    assert caplog.records == []
    clock.now += 0.1
    progress.advance(10)
    clock.now += 5.0
    progress.advance(500)  # within the next interval: no line
    assert [r.getMessage() for r in caplog.records] == [
        "export: 1,000 of 5,000 (20%), 100/s, about 40 s left"
    ]
    assert caplog.records[0].levelno == logging.INFO
    progress.phase("post", None)  # a new phase starts its own count and interval
    clock.now += 10.0
    progress.advance(20)
    assert caplog.records[-1].getMessage() == "post: 20, 2/s"


def test_a_stream_that_is_no_terminal_gets_log_lines_and_no_drawing() -> None:
    stream = io.StringIO()
    with progress_on_stderr(stream) as progress:
        assert isinstance(progress, LogProgress)
        progress.phase("export", 3)
        progress.advance(3)
    assert stream.getvalue() == ""


def test_a_terminal_gets_rich_with_counts_and_log_lines_above_the_display() -> None:
    stream = TerminalIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with progress_on_stderr(stream) as progress:
            assert isinstance(progress, RichProgress)
            for _ in track(range(1234), progress, "export", 1234):
                pass
            logging.getLogger("ledger.test").warning("a line while drawing")
            progress.phase("post")  # no total: the finished phase shows its final count
            progress.advance(7)
        assert handler.stream is stream  # the log handler has its stream back
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    assert "1,234/1,234" in text
    assert "7/7" in text
    assert "a line while drawing\n" in text


@given(st.lists(st.sampled_from([b"a", b"\n", b"\r", b"x" * 70, b"\n\n"]), max_size=60))
def test_count_lines_is_the_number_of_lines_publish_reads(parts: list[bytes]) -> None:
    data = b"".join(parts)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "f.jsonl"
        path.write_bytes(data)
        with path.open("rb") as file:
            assert count_lines(path) == sum(1 for _ in file)
