"""Logging through a queue (issue 20): lines are formatted and written on the listener
thread, keep every field, and are all written by ``flush_logs`` and at exit."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from entrypoints.grpc.auth import _log_call
from entrypoints.grpc.rpc import Call
from entrypoints.grpc.tokens import Principal
from ledger import logs
from ledger.access_lines import AccessFields, TextLines, access_record, json_line


class _Stderr(io.StringIO):
    """Remembers which threads wrote to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        return super().write(text)


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Stderr]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = _Stderr()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure_logging("INFO", "json")
    yield stream
    logs._stop_listener()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _lines(stream: _Stderr) -> list[dict[str, Any]]:
    assert logs.flush_logs()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_access_line_keeps_its_fields_and_is_written_off_the_callers_thread(
    stderr: _Stderr,
) -> None:
    call = Call("/inventory.ledger.v1.ReservationService/Reserve", "checkout-42")
    call.principal = Principal("web-shop", frozenset({"reserve"}))
    _log_call(call, "OK", 0.0031204)
    _log_call(call, "INTERNAL", 0.5)
    ok, internal = _lines(stderr)
    assert ok["ts"].endswith("+00:00")
    del ok["ts"]
    assert ok == {
        "level": "INFO",
        "logger": "ledger.access",
        "message": "rpc /inventory.ledger.v1.ReservationService/Reserve OK principal=web-shop"
        " correlation_id=checkout-42 duration_ms=3.120",
        "method": "/inventory.ledger.v1.ReservationService/Reserve",
        "code": "OK",
        "principal": "web-shop",
        "correlation_id": "checkout-42",
        "duration_ms": 3.12,
    }
    assert (internal["level"], internal["code"]) == ("WARNING", "INTERNAL")
    assert threading.current_thread().name not in stderr.writers
    assert stderr.writers


def test_call_fields_are_taken_when_logged_and_changing_arguments_are_frozen(
    stderr: _Stderr,
) -> None:
    token = logs.CALL_FIELDS.set({"correlation_id": "c-1", "principal": "p", "method": "/m"})
    items = ["before"]
    try:
        logging.getLogger("ledger.test").warning("items %s", items)
    finally:
        logs.CALL_FIELDS.reset(token)
    items.append("after")  # the listener may not have written the line yet
    logging.getLogger("ledger.test").info("no call")
    inside, outside = _lines(stderr)
    assert inside["message"] == "items ['before']"
    assert (inside["correlation_id"], inside["principal"], inside["method"]) == ("c-1", "p", "/m")
    assert "correlation_id" not in outside


def test_an_exception_is_formatted_by_the_listener(stderr: _Stderr) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("ledger.test").exception("failed")
    [line] = _lines(stderr)
    assert line["message"] == "failed"
    assert "ValueError: boom" in line["exception"]


def test_lines_queued_when_the_process_exits_are_written() -> None:
    program = (
        "import atexit, logging\n"
        # Runs after the logging module's exit hook: written directly, not lost in the queue.
        "atexit.register(lambda: logging.getLogger('ledger').info('late'))\n"
        "from ledger.logs import configure_logging\n"
        "configure_logging('INFO', 'json')\n"
        "for n in range(2000):\n"
        "    logging.getLogger('ledger.access').info('line %d', n)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line)["message"] for line in result.stderr.splitlines()]
    assert messages == [*(f"line {n}" for n in range(2000)), "late"]


ACCESS_CASES = [
    AccessFields(1_796_000_000.0004, logging.INFO, "/svc/Get", "OK", "web-shop", "c-1", 0.021),
    AccessFields(1_796_000_000.9996, logging.WARNING, "/svc/Put", "INTERNAL", "ünï", "c/2", 12.5),
    AccessFields(1_796_000_059.5, logging.INFO, "/svc/Put", "NOT_FOUND", "(none)", "x", 1234.0),
]


@pytest.mark.parametrize("fields", ACCESS_CASES)
def test_access_lines_made_from_fields_equal_the_records_lines(fields: AccessFields) -> None:
    text, as_json = logs.TextFormatter(), logs.JsonFormatter()
    record = access_record(fields)
    assert TextLines(text).line(fields) == text.format(record)
    assert json_line(fields) == as_json.format(record)
    lines = TextLines(text)  # the second's text is kept: the next line of that second too
    lines.line(fields)
    assert lines.line(fields._replace(created=fields.created + 0.0001)) == text.format(
        access_record(fields._replace(created=fields.created + 0.0001))
    )


def test_access_lines_queue_as_fields_unless_logging_was_set_up_otherwise(
    stderr: _Stderr, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = Call("/inventory.ledger.v1.InventoryQueryService/GetPosition", "order-7")
    with monkeypatch.context() as no_records:

        def no_record(fields: AccessFields) -> logging.LogRecord:
            raise AssertionError("an access line was made a record")

        no_records.setattr(logs, "access_record", no_record)
        # Only the configured handler (pytest adds its own to the root for each test phase).
        no_records.setattr(logging.getLogger(), "handlers", [logs._queue_handler])
        logging.getLogger("ledger.test").info("before")
        _log_call(call, "OK", 0.002)
        logging.getLogger("ledger.test").info("after")
        assert [line["message"][:6] for line in _lines(stderr)] == ["before", "rpc /i", "after"]

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    kept = Kept()
    logging.getLogger("ledger.access").addHandler(kept)
    try:
        _log_call(call, "UNAVAILABLE", 0.5)
    finally:
        logging.getLogger("ledger.access").removeHandler(kept)
    [record] = kept.records
    assert (record.levelname, record.code, record.correlation_id) == (  # type: ignore[attr-defined]
        "WARNING",
        "UNAVAILABLE",
        "order-7",
    )
    assert _lines(stderr)[-1]["code"] == "UNAVAILABLE"  # and still written by the listener
