"""Process logging: human-readable text (the default) or one JSON object per line.

``--log-format json`` / ``LEDGER_LOG_FORMAT=json`` selects JSON. Every record emitted while
a gRPC call is being served carries that call's ``correlation_id`` (and ``principal`` and
``method``), in both formats; the access line of each call (logger ``ledger.access``) adds
``code`` and ``duration_ms``.

Records are queued (``logging.handlers.QueueHandler``) and formatted and written by one
listener thread, so a line costs the event loop a record and a queue put, not a JSON
encoding and a write; a call's access line costs a tuple and a queue put
(``ledger.access_lines``). Lines therefore reach stderr a moment after they are logged;
:func:`flush_logs` waits for them, and the listener drains the queue at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from ledger.access_lines import (
    ACCESS_LOGGER,
    AccessFields,
    TextLines,
    access_record,
    json_line,
)

LOG_FORMATS = ("text", "json")
DEFAULT_LOG_FORMAT = "text"

# Set by the call guard (entrypoints.grpc.auth) for the duration of one call.
CALL_FIELDS: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "ledger_call_fields", default=None
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


class CallFieldsFilter(logging.Filter):
    """Adds the current call's fields (correlation id, ...) to records that lack them."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = CALL_FIELDS.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, then structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with ``[correlation_id=...]`` appended inside a call."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        correlation_id = getattr(record, "correlation_id", None)
        if correlation_id and record.name != ACCESS_LOGGER:
            text += f" [correlation_id={correlation_id}]"
        return text


# Argument types a record may keep until the listener formats it: nothing can change them.
_IMMUTABLE = (str, int, float, bool, type(None), bytes)


class _QueueHandler(logging.handlers.QueueHandler):
    """Queues the record as it is: ``QueueHandler.prepare`` would format it here, on the
    caller's thread, which is the cost the queue is there to move."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        args = record.args
        if args and not (isinstance(args, tuple) and all(isinstance(a, _IMMUTABLE) for a in args)):
            # An argument that may change before the listener gets to it: format it now.
            record.msg = record.getMessage()
            record.args = None
        return record


# How long a queued line may wait for the listener: it wakes this often, not per record.
# Waking per record cost more than the formatting it moved (a thread switch and a GIL
# hand-over per call); batches cost one each.
LISTENER_INTERVAL_SECONDS = 0.05


class _Listener:
    """Takes the queued records every ``LISTENER_INTERVAL_SECONDS`` (or at once when asked:
    :func:`flush_logs`, exit), formats them with ``handler``'s formatter and writes them in
    one write and one flush."""

    def __init__(self, records: queue.SimpleQueue[Any], handler: logging.StreamHandler[Any]):
        self.queue = records
        self.handler = handler
        self._wake = threading.Event()
        self._stopping = False
        self._flushed: list[threading.Event] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ledger-log-writer", daemon=True)
        formatter = handler.formatter
        # Access lines queued as fields: formatted here without a record, in the same format.
        self._access_line = (
            json_line
            if type(formatter) is JsonFormatter
            else TextLines(formatter).line
            if type(formatter) is TextFormatter
            else self._access_via_record
        )

    def start(self) -> None:
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        written = threading.Event()
        with self._lock:
            self._flushed.append(written)
        self._wake.set()
        return written.wait(timeout)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait(LISTENER_INTERVAL_SECONDS)
            self._wake.clear()
            with self._lock:
                flushed, self._flushed = self._flushed, []
            stopping = self._stopping  # read before draining: nothing is left behind
            self._write_queued()
            for written in flushed:
                written.set()
            if stopping:
                return

    def _write_queued(self) -> None:
        handler = self.handler
        lines: list[str] = []
        while True:
            try:
                record = self.queue.get_nowait()
            except queue.Empty:
                break
            if type(record) is AccessFields:
                if record.level >= handler.level and not handler.filters:
                    try:
                        lines.append(self._access_line(record) + handler.terminator)
                    except Exception:
                        handler.handleError(access_record(record))
                    continue
                record = access_record(record)
            if record.levelno < handler.level or not handler.filter(record):
                continue
            try:
                lines.append(handler.format(record) + handler.terminator)
            except Exception:
                handler.handleError(record)
        if not lines:
            return
        with handler.lock or contextlib.nullcontext():
            try:
                handler.stream.write("".join(lines))
                handler.flush()
            except Exception:
                handler.handleError(record)

    def _access_via_record(self, fields: AccessFields) -> str:
        return self.handler.format(access_record(fields))


_listener: _Listener | None = None
_queue_handler: _QueueHandler | None = None
_access_logger = logging.getLogger(ACCESS_LOGGER)
_ledger_logger = logging.getLogger("ledger")


def log_access(fields: AccessFields) -> None:
    """Write the access line of a call (the caller has checked the level is enabled).

    Queued as its fields when the line would only reach the listener anyway (logging set up
    by :func:`configure_logging`, nothing added since); otherwise logged as a record, so a
    handler or filter added to these loggers or the root (tests capturing records) gets it.
    """
    handler = _queue_handler
    # The record path would add CALL_FIELDS' keys: the guard sets exactly the three that
    # AccessFields carries, so the lines are the same either way.
    if (
        handler is not None
        and _listener is not None
        and fields.level >= handler.level
        and len(handler.filters) == 1  # CallFieldsFilter only
        and not _access_logger.handlers
        and not _access_logger.filters
        and not _ledger_logger.handlers
        and _access_logger.propagate
        and _ledger_logger.propagate
        and len(logging.root.handlers) == 1
        and logging.root.handlers[0] is handler
    ):
        handler.queue.put_nowait(fields)
    else:
        _access_logger.handle(access_record(fields))


def configure_logging(level: str, log_format: str = DEFAULT_LOG_FORMAT) -> None:
    """Root handler on stderr in the chosen format (replaces any earlier configuration),
    written by a listener thread."""
    global _listener, _queue_handler
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    handler = _QueueHandler(records)
    # On the caller's thread: the call's fields live in a context variable.
    handler.addFilter(CallFieldsFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    _stop_listener()  # the previous configuration's lines first
    _listener = _Listener(records, stream)
    _queue_handler = handler
    _listener.start()
    root.addHandler(handler)
    root.setLevel(level.upper())


def flush_logs(timeout: float = 5.0) -> bool:
    """Wait until every record logged so far is written; False if that took too long."""
    listener = _listener
    return True if listener is None else listener.flush(timeout)


def _stop_listener() -> None:
    """Write what is queued, then end the listener thread."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.stop()


def _restart_in_child() -> None:
    """A forked child has the queue but not the listener thread: give it both, fresh (the
    parent's queue may have been locked mid-put by another thread)."""
    global _listener
    if _listener is None or _queue_handler is None:
        return
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    _queue_handler.queue = records
    _listener = _Listener(records, _listener.handler)
    _listener.start()


def _at_exit() -> None:
    """Write what is queued; whatever is logged after this (other exit hooks) is written
    at once, by the stream handler itself."""
    listener, handler = _listener, _queue_handler
    _stop_listener()
    root = logging.getLogger()
    if listener is not None and handler is not None and handler in root.handlers:
        listener.handler.addFilter(CallFieldsFilter())
        root.removeHandler(handler)
        root.addHandler(listener.handler)


# Registered after logging's own exit hook, so it runs first: lines queued before exit are
# written before logging closes the handlers.
atexit.register(_at_exit)
os.register_at_fork(after_in_child=_restart_in_child)


def redacted(url: str) -> str:
    """Never log a database password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line (psycopg's messages carry a hint on a second line)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 8.0


def retry_delay(failures: int) -> float:
    """Back-off after ``failures`` failed attempts in a row: 0.5 s doubling to 8 s."""
    return min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** max(0, failures - 1))
