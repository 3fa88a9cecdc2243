"""The access line of a call: one per call, the busiest line a server writes.

Its fields are queued as a tuple and the line is made from them by the log listener
(``ledger.logs``), in the text or JSON format of every other line. A ``LogRecord`` per call
(made on the event loop, then formatted field by field) cost ~9 % of an in-memory read's
CPU; the tuple and these formatters cost a fraction of that. When logging is set up some
other way (a handler of its own on the logger, tests capturing records) the same line goes
through ``logging`` as a record: :func:`access_record`.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import NamedTuple

ACCESS_LOGGER = "ledger.access"
ACCESS_FORMAT = "rpc %s %s principal=%s correlation_id=%s duration_ms=%.3f"


class AccessFields(NamedTuple):
    created: float  # time.time() when the call ended
    level: int
    method: str
    code: str
    principal: str
    correlation_id: str
    duration_ms: float  # rounded to the microsecond

    @property
    def message(self) -> str:
        return ACCESS_FORMAT % (
            self.method,
            self.code,
            self.principal,
            self.correlation_id,
            self.duration_ms,
        )

    def extra(self) -> dict[str, str | float]:
        """The structured fields, in the order the JSON line lists them."""
        return {
            "method": self.method,
            "code": self.code,
            "principal": self.principal,
            "correlation_id": self.correlation_id,
            "duration_ms": self.duration_ms,
        }


def access_record(fields: AccessFields) -> logging.LogRecord:
    """The line as a record of the ``ledger.access`` logger (``Logger.log`` without its walk
    up the stack for a file and line no format prints)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    record = logger.makeRecord(
        ACCESS_LOGGER,
        fields.level,
        "",
        0,
        ACCESS_FORMAT,
        (fields.method, fields.code, fields.principal, fields.correlation_id, fields.duration_ms),
        None,
        extra=fields.extra(),
    )
    record.created = fields.created
    record.msecs = int((fields.created - int(fields.created)) * 1000) + 0.0
    return record


class TextLines:
    """``logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")`` for access
    fields, with the local time's seconds formatted once per second, not once per line."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self._formatter = formatter
        self._second = -1
        self._second_text = ""

    def line(self, fields: AccessFields) -> str:
        second = int(fields.created)
        if second != self._second:
            self._second_text = time.strftime(
                self._formatter.default_time_format, self._formatter.converter(second)
            )
            self._second = second
        msec_format = self._formatter.default_msec_format
        msecs = int((fields.created - second) * 1000)
        asctime = msec_format % (self._second_text, msecs) if msec_format else self._second_text
        level = logging.getLevelName(fields.level)
        return f"{asctime} {level} {ACCESS_LOGGER} {fields.message}"


def json_line(fields: AccessFields) -> str:
    """What ``ledger.logs.JsonFormatter`` writes for the access record of ``fields``."""
    entry: dict[str, str | float] = {
        "ts": datetime.fromtimestamp(fields.created, UTC).isoformat(timespec="milliseconds"),
        "level": logging.getLevelName(fields.level),
        "logger": ACCESS_LOGGER,
        "message": fields.message,
        **fields.extra(),
    }
    return json.dumps(entry, ensure_ascii=False, default=str)
