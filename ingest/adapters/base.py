"""The adapter interface: one source record in, zero or more canonical message dicts out.

An adapter reads a file in two steps so the publisher can skip bad records and carry on:

- :meth:`Adapter.records` splits the file into :class:`Record`\\ s (raising
  :class:`AdapterError` only for problems that make the rest of the file unreadable, such as
  a missing CSV column);
- :meth:`Adapter.translate` maps one record to canonical message dicts (contract §5), or raises
  :class:`AdapterError` naming the record's line and the source field at fault.

The dicts use the canonical field names of :class:`ingest.message.CanonicalMessage` and leave
absent fields out; quantities stay in the source's ``uom`` (the bridge converts them with its
unit table). One adapter instance reads one file: adapters may remember earlier records (to
refuse duplicates within a file).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, Protocol

from ingest.streams import Lane, is_token
from ledger.domain import limits

CanonicalPayload = dict[str, Any]

_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


class AdapterError(ValueError):
    """A source record (or the whole file) that cannot be translated.

    ``line`` is the 1-based line where the record starts; ``field`` names the source field
    (column or JSON key) at fault, ``""`` for the record as a whole.
    """

    def __init__(self, line: int, field: str, description: str) -> None:
        super().__init__(f"line {line}: {field or '<record>'}: {description}")
        self.line = line
        self.field = field
        self.description = description

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "error": self.description}


@dataclass(frozen=True)
class Record:
    """One source record: a JSON line (bytes) or a parsed CSV row (column -> cell)."""

    line: int
    data: Any


class Adapter(Protocol):
    """What :func:`ingest.adapters.publish.publish_adapter` needs from a source adapter."""

    source: str  # the canonical ``source`` of every message it produces
    lane: Lane  # LIVE for operational feeds, BULK for snapshots and backfills
    ordered: bool  # whether messages must reach the stream in file order

    def records(self, file: BinaryIO) -> Iterator[Record]: ...

    def translate(self, record: Record) -> list[CanonicalPayload]: ...


def check_source(source: str) -> str:
    """The operator-given ``source``: it becomes a subject token, so contract §2's pattern."""
    if not is_token(source):
        raise ValueError(f"source must match [A-Za-z0-9_-]{{1,64}}, not {source!r}")
    return source


def identifier(value: Any, line: int, field: str) -> str:
    """A SKU, location or id (contract §2): 1-128 characters, no control characters."""
    if value is None:
        raise AdapterError(line, field, "missing")
    if not isinstance(value, str):
        raise AdapterError(line, field, f"must be a string, not {type(value).__name__}")
    if not value:
        raise AdapterError(line, field, "must not be empty")
    if len(value) > limits.IDENTIFIER_LENGTH_MAX:
        raise AdapterError(line, field, f"longer than {limits.IDENTIFIER_LENGTH_MAX} characters")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value):
        raise AdapterError(line, field, "must not contain control characters")
    return value


def integer(value: Any, line: int, field: str, *, minimum: int) -> int:
    """A whole quantity, given as a JSON integer or its decimal text; ``minimum`` and
    ``QUANTITY_MAX`` bound it. ``12.0`` is refused: a source sending decimals may mean them."""
    if value is None:
        raise AdapterError(line, field, "missing")
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise AdapterError(line, field, f"must be an integer, not {type(value).__name__}")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise AdapterError(line, field, "missing")
        if not _INTEGER.fullmatch(text):
            kind = "a whole number" if _DECIMAL.fullmatch(text) else "an integer"
            raise AdapterError(line, field, f"must be {kind}, not {value!r}")
        if len(text.lstrip("+-")) > len(str(limits.QUANTITY_MAX)):  # before int(): bounded work
            raise AdapterError(line, field, f"out of range (at most {limits.QUANTITY_MAX})")
        value = int(text)
    elif isinstance(value, float):
        raise AdapterError(line, field, f"must be a whole number, not {value!r}")
    if value < minimum:
        raise AdapterError(line, field, f"must be at least {minimum}, not {value}")
    if abs(value) > limits.QUANTITY_MAX:
        raise AdapterError(line, field, f"out of range (at most {limits.QUANTITY_MAX})")
    return value


def parse_timestamp(text: Any, line: int, field: str) -> datetime:
    """An ISO-8601 timestamp with a time zone, as an aware UTC datetime."""
    if not isinstance(text, str):
        raise AdapterError(line, field, f"must be an ISO-8601 string, not {type(text).__name__}")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AdapterError(line, field, f"not an ISO-8601 timestamp: {text!r}") from None
    if moment.utcoffset() is None:
        raise AdapterError(line, field, f"timestamp needs a time zone (e.g. Z): {text!r}")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00
        raise AdapterError(line, field, f"timestamp out of range: {text!r}") from None


def rfc3339(moment: datetime) -> str:
    """The canonical text of an aware datetime: UTC with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
