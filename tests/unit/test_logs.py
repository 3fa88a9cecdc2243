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
