"""Process logging: human-readable text (the default) or one JSON object per line.

``--log-format json`` / ``LEDGER_LOG_FORMAT=json`` selects JSON. Every record emitted while
a gRPC call is being served carries that call's ``correlation_id`` (and ``principal`` and
``method``), in both formats; the access line of each call (logger ``ledger.access``) adds
``code`` and ``duration_ms``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

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


ACCESS_LOGGER = "ledger.access"


def configure_logging(level: str, log_format: str = DEFAULT_LOG_FORMAT) -> None:
    """Root handler on stderr in the chosen format (replaces any earlier configuration)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(CallFieldsFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


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
