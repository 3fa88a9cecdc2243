"""Parse one canonical JSON ingest message (contract §5) into a domain :class:`Movement`.

:func:`parse_message` takes the raw NATS payload and either returns a validated movement in base
units or raises :class:`InvalidMessage` (never anything else for bad input), whose
``reason_code`` and ``field`` go to the DLQ with the original payload.

Layers, cheapest first:

1. bytes: size limit, UTF-8, an iterative nesting-depth scan (no recursion on hostile input);
2. JSON: duplicate keys, ``NaN``/``Infinity``, over-long integer literals and lone surrogates are
   refused (Python's ``json`` accepts them all by default);
3. :class:`CanonicalMessage`: a strict pydantic model (no bool-for-int, no floats, aware RFC 3339
   timestamps, closed enums, no unknown fields); JSON ``null`` means "absent";
4. unit conversion with a :class:`~ingest.units.UnitTable`;
5. the core's :class:`~ledger.inputs.MovementModel` (the one the gRPC edge uses), so the per-type
   field rules and quantity limits of both edges cannot drift.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from ingest.units import BASE_UNIT, UnitTable
from ledger.domain import limits
from ledger.domain.movements import Disposition, FromBucket, Movement, MovementType
from ledger.inputs import (
    FreeText,
    Identifier,
    MovementModel,
    OptionalIdentifier,
    Source,
    field_violations,
    movement_of,
)

PAYLOAD_BYTES_MAX = 64 * 1024
NESTING_DEPTH_MAX = 8
# Longer integer literals are never valid quantities; they are clamped before int() sees them
# (so CPython's 4300-digit int limit and quadratic parsing never come into play).
INTEGER_DIGITS_MAX = 32
UOM_LENGTH_MAX = 32

# Without a table only the base unit is known (one table, not one per message).
_BASE_UNITS_ONLY = UnitTable()
# decode_json's fast path declines: the checked path decides.
_SLOW = object()

# Whole-payload problems carry this instead of a field name.
PAYLOAD = ""

IDENTIFIER_FIELDS = frozenset(
    {"message_id", "source", "sku", "location_id", "reservation_id", "transfer_id"}
    | {"to_location_id", "lot_id", "serial_numbers"}
)

# pydantic error type -> reason code.
_REASONS = {
    "extra_forbidden": "UNKNOWN_FIELD",
    "missing": "MISSING_FIELD",
    "int_type": "WRONG_TYPE",
    "string_type": "WRONG_TYPE",
    "bool_type": "WRONG_TYPE",
    "list_type": "WRONG_TYPE",
    "timestamp_type": "WRONG_TYPE",
    "greater_than_equal": "OUT_OF_RANGE",
    "less_than_equal": "OUT_OF_RANGE",
    "greater_than": "OUT_OF_RANGE",
    "less_than": "OUT_OF_RANGE",
    "enum": "UNKNOWN_VALUE",
    "literal_error": "UNKNOWN_VALUE",
    "timezone_aware": "NAIVE_TIMESTAMP",
    "bad_timestamp": "BAD_TIMESTAMP",
    "datetime_parsing": "BAD_TIMESTAMP",
    "datetime_from_date_parsing": "BAD_TIMESTAMP",
    "datetime_type": "BAD_TIMESTAMP",
    "datetime_object_invalid": "BAD_TIMESTAMP",
}
_STRING_ERRORS = frozenset(
    {"string_too_short", "string_too_long", "string_pattern_mismatch", "value_error"}
)


class InvalidMessage(ValueError):
    """A poison message: not retried, sent to the DLQ with ``reason_code``, ``field`` and text."""

    def __init__(self, reason_code: str, field: str, description: str) -> None:
        super().__init__(f"{reason_code} {field or '<payload>'}: {description}")
        self.reason_code = reason_code
        self.field = field
        self.description = description


# ---- the strict model (also the source of the published JSON Schema) ----

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?", re.ASCII
)


def _timestamp_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise PydanticCustomError("timestamp_type", "must be an RFC 3339 string")
    if not _RFC3339.fullmatch(value):
        raise PydanticCustomError(
            "bad_timestamp", "must be RFC 3339 with a time zone, e.g. 2026-11-22T10:15:00Z"
        )
    return value


Timestamp = Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_timestamp_text)]
Quantity = Annotated[int, Field(ge=1, le=limits.QUANTITY_MAX)]
Delta = Annotated[int, Field(ge=-limits.QUANTITY_MAX, le=limits.QUANTITY_MAX)]
Counted = Annotated[int, Field(ge=0, le=limits.QUANTITY_MAX)]
Uom = Annotated[str, StringConstraints(min_length=1, max_length=UOM_LENGTH_MAX)]


class CanonicalMessage(BaseModel):
    """One movement on ``inventory.movements.>`` (contract §5). ``null`` means the field is absent.

    Quantities are in ``uom`` (default ``EA``, the base unit) and are converted at ingest.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, title="CanonicalMovement")

    message_id: Identifier
    source: Source
    type: Annotated[MovementType, Field(strict=False)]
    sku: Identifier
    location_id: Identifier
    qty: Quantity | None = None
    uom: Uom | None = None
    occurred_at: Timestamp | None = None
    reservation_id: OptionalIdentifier | None = None
    transfer_id: OptionalIdentifier | None = None
    to_location_id: OptionalIdentifier | None = None
    delta: Delta | None = None
    counted: Counted | None = None
    reason: FreeText | None = None
    disposition: Annotated[Disposition, Field(strict=False)] | None = None
    putaway_pending: bool | None = None
    final: bool | None = None
    expected_at: Timestamp | None = None
    from_bucket: Annotated[FromBucket, Field(strict=False)] | None = None
    # Item tracking (contract §2, §5): which of them a SKU needs is checked against its item
    # policy when the movement is recorded; the shape rules are MovementModel's.
    lot_id: OptionalIdentifier | None = None
    expires_at: Timestamp | None = None
    # Distinct (MovementModel enforces it; the schema states it for producers).
    serial_numbers: (
        Annotated[list[Identifier], Field(json_schema_extra={"uniqueItems": True})] | None
    ) = None


# ---- bytes and JSON ----


def _check_depth(text: str) -> None:
    """Reject nesting deeper than NESTING_DEPTH_MAX with one linear, non-recursive scan."""
    depth = 0
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > NESTING_DEPTH_MAX:
                raise InvalidMessage(
                    "TOO_DEEP", PAYLOAD, f"JSON nested deeper than {NESTING_DEPTH_MAX} levels"
                )
        elif ch in "]}":
            depth -= 1


def _check_string(value: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage("BAD_STRING", field, "contains a lone UTF-16 surrogate") from None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        _check_string(key, key if key.isidentifier() else PAYLOAD)
        if key in result:
            raise InvalidMessage("DUPLICATE_KEY", key, f"key {key!r} appears more than once")
        if isinstance(value, str):
            _check_string(value, key)
        elif isinstance(value, list):  # serial_numbers: its entries are strings too
            for index, item in enumerate(value):
                if isinstance(item, str):
                    _check_string(item, f"{key}[{index}]")
        result[key] = value
    return result


def _constant(name: str) -> Any:
    raise InvalidMessage("NON_FINITE_NUMBER", PAYLOAD, f"{name} is not valid JSON")


def _integer(literal: str) -> int:
    if len(literal) > INTEGER_DIGITS_MAX:
        # Certainly beyond every range; the field's own range check then names the field.
        return -(10**INTEGER_DIGITS_MAX) if literal.startswith("-") else 10**INTEGER_DIGITS_MAX
    return int(literal)


def _string_count(value: Any) -> int | None:
    """How many strings (keys included) a decoded value holds; None if it holds a float."""
    if isinstance(value, str):
        return 1
    if isinstance(value, dict):
        count = len(value)
        items: Any = value.values()
    elif isinstance(value, list):
        count, items = 0, value
    elif isinstance(value, float):
        return None
    else:
        return 0
    for item in items:
        if isinstance(item, str):
            count += 1
        elif isinstance(item, dict | list | float):
            inner = _string_count(item)
            if inner is None:
                return None
            count += inner
    return count


def _decode_plain(data: bytes) -> Any:
    """The common payload through orjson, or _SLOW when the full checks must decide.

    Taken only where orjson's value is the one the checked path below would return: no
    backslash (so no escape at all, hence no lone surrogate, and every ``"`` delimits a
    string); as many ``"`` as twice the strings of the value (so no key was given twice,
    which orjson would silently fold); no float (orjson reads integers beyond 64 bits as
    floats; every integer it returns has at most 20 digits). Invalid UTF-8, NaN and the
    rest make orjson fail, and the checked path names the problem. The caller has bounded
    the nesting already."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _SLOW
    strings = _string_count(value)
    if strings is None or 2 * strings != data.count(b'"'):
        return _SLOW
    return value


def decode_json(raw: bytes | bytearray | memoryview) -> Any:
    """The payload's JSON value, or InvalidMessage for every byte- or JSON-level problem."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, not {type(raw).__name__}")
    data = bytes(raw)
    if len(data) > PAYLOAD_BYTES_MAX:
        raise InvalidMessage(
            "TOO_LARGE", PAYLOAD, f"payload is {len(data)} bytes, limit {PAYLOAD_BYTES_MAX}"
        )
    # Fewer brackets than the depth limit cannot nest too deep: no scan needed.
    if data.count(b"{") + data.count(b"[") <= NESTING_DEPTH_MAX and b"\\" not in data:
        value = _decode_plain(data)
        if value is not _SLOW:
            return value
    return _decode_checked(data)


def _decode_checked(data: bytes) -> Any:
    """decode_json's full path: every check, in the standard library's parser."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidMessage("NOT_UTF8", PAYLOAD, f"payload is not UTF-8: {error}") from None
    _check_depth(text)
    try:
        return json.loads(
            text, object_pairs_hook=_object, parse_constant=_constant, parse_int=_integer
        )
    except json.JSONDecodeError as error:
        raise InvalidMessage("BAD_JSON", PAYLOAD, f"not valid JSON: {error}") from None
    except RecursionError:  # defence in depth; _check_depth should make this unreachable
        raise InvalidMessage("TOO_DEEP", PAYLOAD, "JSON nested too deeply") from None
    except InvalidMessage:
        raise
    except ValueError as error:
        raise InvalidMessage("BAD_JSON", PAYLOAD, f"not valid JSON: {error}") from None


# ---- validation ----


def _first_error(error: ValidationError) -> InvalidMessage:
    item = error.errors()[0]
    field = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"] if part != ""
    ).removeprefix(".")
    kind = item["type"]
    reason = _REASONS.get(kind)
    if reason is None and kind in _STRING_ERRORS:
        # An entry of a list (serial_numbers[2]) follows its list's rule.
        named = field.partition("[")[0]
        reason = "BAD_IDENTIFIER" if named in IDENTIFIER_FIELDS else "BAD_STRING"
    message = item["msg"].removeprefix("Value error, ")
    return InvalidMessage(reason or "SCHEMA_VIOLATION", field, message)


def _convert(value: int | None, factor: int) -> int | None:
    return None if value is None else value * factor


def parse_message(raw: bytes | bytearray | memoryview, units: UnitTable | None = None) -> Movement:
    """Validate one canonical message and return its movement in base units.

    Raises :class:`InvalidMessage` for any bad payload (``TypeError`` only if ``raw`` is not
    bytes, which is a programming error).
    """
    value = decode_json(raw)
    if not isinstance(value, dict):
        raise InvalidMessage("NOT_AN_OBJECT", PAYLOAD, "a message must be a JSON object")
    present = {key: item for key, item in value.items() if item is not None}
    try:
        message = CanonicalMessage.model_validate(present)
    except ValidationError as error:
        raise _first_error(error) from None

    uom = message.uom or BASE_UNIT
    factor = (units or _BASE_UNITS_ONLY).factor(message.sku, uom)
    if factor is None:
        raise InvalidMessage("UNKNOWN_UNIT", "uom", f"unit {uom!r} is not known for this SKU")

    try:
        model = MovementModel(
            message_id=message.message_id,
            source=message.source,
            type=message.type,
            sku=message.sku,
            location_id=message.location_id,
            qty=_convert(message.qty, factor),
            delta=_convert(message.delta, factor),
            counted=_convert(message.counted, factor),
            occurred_at=message.occurred_at,
            reservation_id=message.reservation_id or "",
            transfer_id=message.transfer_id or "",
            to_location_id=message.to_location_id or "",
            reason=message.reason or "",
            disposition=message.disposition,
            putaway_pending=bool(message.putaway_pending),
            final=bool(message.final),
            expected_at=message.expected_at,
            from_bucket=message.from_bucket,
            lot_id=message.lot_id or "",
            expires_at=message.expires_at,
            serial_numbers=tuple(message.serial_numbers or ()),
        )
    except ValidationError as error:
        reason = _REASONS.get(error.errors()[0]["type"], "TYPE_RULE")
        field, description = field_violations(error)[0]
        raise InvalidMessage(reason, field, description) from None
    return movement_of(model)
