"""WMS inventory-transaction export (JSON lines) -> canonical movements, on the live lane.

One JSON object per line; keys other than those below are ignored (exports carry user, device
and the like)::

    {"txn_id": "T-1001", "txn_type": "RECV", "item": "SKU-1", "site": "DC-EAST",
     "qty": 24, "uom": "EA", "ts": "2026-11-22T08:00:00Z"}

Common keys: ``txn_id`` (string or integer), ``txn_type``, ``item``, ``site``, ``qty`` (whole
number, JSON integer or its text), ``uom`` (optional, passed through), ``ts`` (ISO-8601 with a
time zone), ``reason`` (optional, kept on every movement; required for ``ADJ``).

- ``RECV`` -> ``receipt`` with ``putaway_pending`` (the stock waits in ``receiving``);
- ``PUTAWAY`` -> ``putaway``;
- ``PICK`` -> ``shipment`` (the WMS's pick is what leaves ``on_hand``), with the optional
  ``reservation_id``;
- ``ADJ`` -> ``adjustment`` with ``delta`` = the signed ``qty``; ``reason`` required;
- ``XFER_OUT`` -> ``transfer_dispatch`` from ``site`` to ``to_site``; ``transfer_id`` (or else
  ``order_ref``, the transfer order) required, ``eta`` optional (``expected_at``);
- ``XFER_IN`` -> ``transfer_receipt`` at ``site``; ``transfer_id`` / ``order_ref`` as above,
  ``final`` (boolean) optional;
- ``QC_HOLD`` -> ``quarantine``, ``QC_RELEASE`` -> ``quarantine_release``;
- ``DAMAGE`` -> ``damage`` (from ``on_hand``);
- ``RETURN`` -> ``return_receipt``; ``disposition`` ``RESTOCK``, ``QUARANTINE`` (or ``QC``)
  or ``DAMAGED`` required (case-insensitive).

``order_ref`` of a ``PICK`` has no canonical field and is dropped; a shipment releases a
reservation only through ``reservation_id``. Unknown ``txn_type`` values are errors.

``message_id`` = ``<source>-<txn_id>``: the WMS id is unique within its WMS only, and the
broker's dedupe window spans every source on the stream. The same ``txn_id`` twice in one
file is published twice (the broker or ledger answers duplicate) when both lines map to the
same message, and refused on the second line when they differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from ingest.adapters.base import (
    AdapterError,
    CanonicalPayload,
    Record,
    check_source,
    identifier,
    integer,
    parse_timestamp,
    rfc3339,
)
from ingest.message import UOM_LENGTH_MAX, InvalidMessage, decode_json
from ingest.streams import Lane
from ledger.domain import limits

DISPOSITIONS = {
    "RESTOCK": "restock",
    "QUARANTINE": "quarantine",
    "QC": "quarantine",
    "DAMAGED": "damaged",
}


def _text(record: dict[str, Any], key: str, line: int, *, limit: int) -> str | None:
    """An optional string field (None when absent, null or empty)."""
    value = record.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise AdapterError(line, key, f"must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise AdapterError(line, key, f"longer than {limit} characters")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value):
        raise AdapterError(line, key, "must not contain control characters")
    return value


def _transfer_id(record: dict[str, Any], line: int) -> str:
    key = "transfer_id" if record.get("transfer_id") not in (None, "") else "order_ref"
    if record.get(key) in (None, ""):
        raise AdapterError(line, "transfer_id", "required (or order_ref) for a transfer")
    return identifier(record[key], line, key)


def _recv(record: dict[str, Any], line: int, qty: int) -> CanonicalPayload:
    return {"type": "receipt", "qty": qty, "putaway_pending": True}


def _pick(record: dict[str, Any], line: int, qty: int) -> CanonicalPayload:
    message: CanonicalPayload = {"type": "shipment", "qty": qty}
    reservation = _text(record, "reservation_id", line, limit=limits.IDENTIFIER_LENGTH_MAX)
    if reservation:
        message["reservation_id"] = reservation
    return message


def _adj(record: dict[str, Any], line: int, qty: int) -> CanonicalPayload:
    if qty == 0:
        raise AdapterError(line, "qty", "an adjustment needs a non-zero qty")
    if not _text(record, "reason", line, limit=limits.REASON_LENGTH_MAX):
        raise AdapterError(line, "reason", "required for ADJ")
    return {"type": "adjustment", "delta": qty}


def _xfer_out(record: dict[str, Any], line: int, qty: int) -> CanonicalPayload:
    destination = identifier(record.get("to_site"), line, "to_site")
    if destination == record.get("site"):
        raise AdapterError(line, "to_site", "must differ from site")
    message: CanonicalPayload = {
        "type": "transfer_dispatch",
        "qty": qty,
        "to_location_id": destination,
        "transfer_id": _transfer_id(record, line),
    }
    if record.get("eta") not in (None, ""):
        message["expected_at"] = rfc3339(parse_timestamp(record["eta"], line, "eta"))
    return message


def _xfer_in(record: dict[str, Any], line: int, qty: int) -> CanonicalPayload:
    message: CanonicalPayload = {
        "type": "transfer_receipt",
        "qty": qty,
        "transfer_id": _transfer_id(record, line),
    }
    final = record.get("final")
    if final is not None and not isinstance(final, bool):
        raise AdapterError(line, "final", f"must be true or false, not {final!r}")
    if final:
        message["final"] = True
    return message


def _return(record: dict[str, Any], line: int, qty: int) -> CanonicalPayload:
    code = record.get("disposition")
    disposition = DISPOSITIONS.get(code.strip().upper()) if isinstance(code, str) else None
    if disposition is None:
        raise AdapterError(
            line, "disposition", f"must be one of {', '.join(DISPOSITIONS)}, not {code!r}"
        )
    return {"type": "return_receipt", "qty": qty, "disposition": disposition}


def _simple(kind: str) -> Callable[[dict[str, Any], int, int], CanonicalPayload]:
    def build(record: dict[str, Any], line: int, qty: int) -> CanonicalPayload:
        return {"type": kind, "qty": qty}

    return build


# txn_type -> (builder, minimum qty): ADJ carries a signed quantity, everything else >= 1.
MAPPING: dict[str, tuple[Callable[[dict[str, Any], int, int], CanonicalPayload], int]] = {
    "RECV": (_recv, 1),
    "PUTAWAY": (_simple("putaway"), 1),
    "PICK": (_pick, 1),
    "ADJ": (_adj, -limits.QUANTITY_MAX),
    "XFER_OUT": (_xfer_out, 1),
    "XFER_IN": (_xfer_in, 1),
    "QC_HOLD": (_simple("quarantine"), 1),
    "QC_RELEASE": (_simple("quarantine_release"), 1),
    "DAMAGE": (_simple("damage"), 1),
    "RETURN": (_return, 1),
}


class WmsTransactionAdapter:
    """One instance per file: it remembers the transaction ids already seen."""

    lane = Lane.LIVE
    ordered = True  # a receipt must reach the ledger before its putaway

    def __init__(self, source: str) -> None:
        self.source = check_source(source)
        self._seen: dict[str, tuple[int, CanonicalPayload]] = {}

    def records(self, file: BinaryIO) -> Iterator[Record]:
        for number, line in enumerate(file, start=1):
            raw = line.strip()
            if raw:
                yield Record(number, raw)

    def translate(self, record: Record) -> list[CanonicalPayload]:
        line = record.line
        try:
            value = decode_json(record.data)
        except InvalidMessage as error:  # same byte and JSON rules as the bridge
            raise AdapterError(line, error.field, error.description) from None
        if not isinstance(value, dict):
            raise AdapterError(line, "", "a transaction must be a JSON object")
        txn_id = value.get("txn_id")
        if isinstance(txn_id, int) and not isinstance(txn_id, bool):
            txn_id = str(txn_id)
        message_id = f"{self.source}-{identifier(txn_id, line, 'txn_id')}"
        if len(message_id) > limits.MESSAGE_ID_LENGTH_MAX:
            room = limits.MESSAGE_ID_LENGTH_MAX - len(self.source) - 1
            raise AdapterError(line, "txn_id", f"longer than {room} characters for this source")
        txn_type = value.get("txn_type")
        if not isinstance(txn_type, str) or txn_type.strip().upper() not in MAPPING:
            raise AdapterError(
                line,
                "txn_type",
                f"unknown transaction type {txn_type!r} (known: {', '.join(MAPPING)})",
            )
        build, minimum = MAPPING[txn_type.strip().upper()]
        qty = integer(value.get("qty"), line, "qty", minimum=minimum)
        message: CanonicalPayload = {
            "message_id": message_id,
            "source": self.source,
            "sku": identifier(value.get("item"), line, "item"),
            "location_id": identifier(value.get("site"), line, "site"),
            **build(value, line, qty),
        }
        uom = _text(value, "uom", line, limit=UOM_LENGTH_MAX)
        if uom:
            message["uom"] = uom
        if value.get("ts") in (None, ""):
            raise AdapterError(line, "ts", "missing")
        message["occurred_at"] = rfc3339(parse_timestamp(value["ts"], line, "ts"))
        reason = _text(value, "reason", line, limit=limits.REASON_LENGTH_MAX)
        if reason:
            message["reason"] = reason
        first = self._seen.setdefault(message_id, (line, message))
        if first[1] != message:
            raise AdapterError(
                line, "txn_id", f"{txn_id!r} was used on line {first[0]} for another transaction"
            )
        return [message]
