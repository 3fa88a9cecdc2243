"""Source adapters (contract §5, docs/adapters.md): pure mapping tests, no broker."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.adapters.base import AdapterError, Record, integer, parse_timestamp
from ingest.adapters.publish import check_message, publish_adapter
from ingest.adapters.threepl_snapshot import (
    ThreePLSnapshotAdapter,
    parse_column_mapping,
    snapshot_message_id,
)
from ingest.adapters.wms_transactions import MAPPING, WmsTransactionAdapter
from ingest.bridge import MSG_ID, canonical_json
from ingest.message import parse_message
from ingest.streams import Lane
from ingest.units import UnitTable
from ledger.domain.limits import MESSAGE_ID_LENGTH_MAX
from ledger.domain.movements import Disposition, MovementType

SOURCE = "3pl-acme"
HEADER = "warehouse,item,on_hand_qty,uom,snapshot_time\n"
T0 = "2026-11-22T06:00:00Z"


def _snapshot(text: str | bytes, **options: Any) -> tuple[list[Any], list[AdapterError]]:
    """(messages, errors) of one file, the way the publisher walks it."""
    adapter = ThreePLSnapshotAdapter(options.pop("source", SOURCE), **options)
    data = text.encode() if isinstance(text, str) else text
    messages: list[Any] = []
    errors: list[AdapterError] = []
    for record in adapter.records(io.BytesIO(data)):
        try:
            messages += adapter.translate(record)
        except AdapterError as error:
            errors.append(error)
    return messages, errors


def _accepted(message: dict[str, Any]) -> Any:
    return parse_message(canonical_json(message), UnitTable({"CASE": 12}))


# ---------------------------------------------------------------- 3PL snapshot


def test_snapshot_rows_become_cycle_counts() -> None:
    messages, errors = _snapshot(
        HEADER + f"DC-EAST,SKU-1,120,EA,{T0}\nDC-EAST,SKU-2,0,,{T0}\nDC-WEST,SKU-1,3,CASE,{T0}\n"
    )
    assert errors == []
    assert messages[0] == {
        "message_id": snapshot_message_id(
            SOURCE, datetime(2026, 11, 22, 6, tzinfo=UTC), "SKU-1", "DC-EAST"
        ),
        "source": SOURCE,
        "type": "cycle_count",
        "sku": "SKU-1",
        "location_id": "DC-EAST",
        "counted": 120,
        "uom": "EA",
        "occurred_at": T0,
    }
    assert "uom" not in messages[1] and messages[1]["counted"] == 0
    movements = [_accepted(m) for m in messages]
    assert [(m.type, m.counted) for m in movements] == [
        (MovementType.CYCLE_COUNT, n) for n in (120, 0, 36)
    ]
    assert movements[0].occurred_at == datetime(2026, 11, 22, 6, tzinfo=UTC)


def test_snapshot_header_is_case_and_order_free_with_bom_blank_lines_and_extra_columns() -> None:
    text = "\ufeffItem , Description,ON_HAND_QTY,Warehouse,Snapshot_Time\n\n"
    text += f'SKU-1,"Widget, blue",7,DC-1,{T0}\n  ,  , , , \nSKU-2,"two\nlines",8,DC-1,{T0}\n'
    text += f"SKU-3,x,9,DC-1,{T0}\n"
    messages, errors = _snapshot(text.encode("utf-8"))
    assert errors == []
    assert [(m["sku"], m["location_id"], m["counted"]) for m in messages] == [
        ("SKU-1", "DC-1", 7),
        ("SKU-2", "DC-1", 8),
        ("SKU-3", "DC-1", 9),
    ]


def test_snapshot_line_numbers_count_physical_lines() -> None:
    text = HEADER + f'DC-1,"multi\nline sku",1,,{T0}\n\nDC-1,SKU-X,-1,,{T0}\n'
    _, errors = _snapshot(text)
    # A line break inside a SKU is a control character; the next record still starts on 5.
    assert [(e.line, e.field) for e in errors] == [(2, "item"), (5, "on_hand_qty")]


@pytest.mark.parametrize(
    ("row", "field", "text"),
    [
        (f"DC-1,,5,,{T0}", "item", "must not be empty"),
        (f",SKU-1,5,,{T0}", "warehouse", "must not be empty"),
        (f"DC-1,SKU-1,-3,,{T0}", "on_hand_qty", "at least 0"),
        (f"DC-1,SKU-1,2.5,,{T0}", "on_hand_qty", "whole number"),
        (f"DC-1,SKU-1,12.0,,{T0}", "on_hand_qty", "whole number"),
        (f"DC-1,SKU-1,ten,,{T0}", "on_hand_qty", "integer"),
        (f"DC-1,SKU-1,,,{T0}", "on_hand_qty", "missing"),
        (f"DC-1,SKU-1,{10**16},,{T0}", "on_hand_qty", "out of range"),
        (f"DC-1,SKU-1,{'9' * 5000},,{T0}", "on_hand_qty", "out of range"),
        ("DC-1,SKU-1,5,,yesterday", "snapshot_time", "not an ISO-8601"),
        ("DC-1,SKU-1,5,,2026-11-22T06:00:00", "snapshot_time", "time zone"),
        ("DC-1,SKU-1,5,,2026-11-22", "snapshot_time", "time zone"),
        ("DC-1,SKU-1,5,,", "snapshot_time", "missing"),
        (f"DC-1,SKU-1,5,{'U' * 33},{T0}", "uom", "longer than 32"),
        (f"DC-1,{'S' * 129},5,,{T0}", "item", "longer than 128"),
        (f"DC-1,SKU\x07,5,,{T0}", "item", "control characters"),
        (f"DC-1,SKU\x00,5,,{T0}", "item", "control characters"),
        (f"DC-1,SKU-1,5,,{T0},surplus", "", "more than the header"),
    ],
)
def test_a_bad_snapshot_row_is_reported_with_its_line_and_field(
    row: str, field: str, text: str
) -> None:
    good = f"DC-9,SKU-9,1,,{T0}"
    messages, errors = _snapshot(HEADER + f"{good}\n{row}\n{good.replace('9', '8')}\n")
    assert [(e.line, e.field) for e in errors] == [(3, field)]
    assert text in errors[0].description
    assert [m["sku"] for m in messages] == ["SKU-9", "SKU-8"]  # the neighbours still map


def test_a_second_row_for_the_same_position_is_an_error_for_that_row() -> None:
    rows = f"DC-1,SKU-1,5,,{T0}\nDC-1,SKU-1,6,,{T0}\nDC-2,SKU-1,7,,{T0}\n"
    messages, errors = _snapshot(HEADER + rows)
    assert [(e.line, e.field) for e in errors] == [(3, "item")]
    assert "line 2" in errors[0].description
    assert [(m["location_id"], m["counted"]) for m in messages] == [("DC-1", 5), ("DC-2", 7)]
    # Even when the first row was itself invalid: the file is ambiguous about the position.
    _, errors = _snapshot(HEADER + f"DC-1,SKU-1,-5,,{T0}\nDC-1,SKU-1,6,,{T0}\n")
    assert [(e.line, e.field) for e in errors] == [(2, "on_hand_qty"), (3, "item")]


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("", 1, ""),
        ("\n\n", 1, ""),
        ("warehouse,item,uom,snapshot_time\nDC-1,SKU-1,EA,x\n", 1, "on_hand_qty"),
        ("\nwarehouse,item,on_hand_qty\nDC-1,SKU-1,1\n", 2, "snapshot_time"),
        ("warehouse,item,item,on_hand_qty,snapshot_time\n", 1, "item"),
        (HEADER.encode() + b"DC-1,SKU-\xff,1,,x\n", 2, ""),
        (HEADER + 'DC-1,"unterminated,1,,x\n', 2, ""),
        (HEADER + 'DC-1,"quoted"tail,1,,x\n', 2, ""),
    ],
)
def test_an_unreadable_file_is_one_error_and_no_messages(
    text: str | bytes, line: int, field: str
) -> None:
    messages, errors = [], []
    try:
        messages, errors = _snapshot(text)
    except AdapterError as error:
        errors = [error]
    assert messages == []
    assert [(e.line, e.field) for e in errors] == [(line, field)]


def test_as_of_stands_in_for_a_missing_snapshot_time_but_never_overrides_one() -> None:
    as_of = datetime(2026, 11, 21, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    text = f"warehouse,item,on_hand_qty,snapshot_time\nDC-1,A,1,\nDC-1,B,2,{T0}\n"
    messages, errors = _snapshot(text, as_of=as_of)
    assert errors == []
    assert [m["occurred_at"] for m in messages] == ["2026-11-22T04:00:00Z", T0]
    # A file without the column at all needs as_of.
    messages, _ = _snapshot("warehouse,item,on_hand_qty\nDC-1,A,1\n", as_of=as_of)
    assert messages[0]["message_id"].startswith(f"{SOURCE}-20261122T040000Z-")
    with pytest.raises(ValueError, match="time zone"):
        ThreePLSnapshotAdapter(SOURCE, as_of=datetime(2026, 11, 22))


def test_a_column_mapping_reads_other_headers() -> None:
    mapping = parse_column_mapping(["item=SKU_CODE", " warehouse = Site ", "on_hand_qty=QTY"])
    assert mapping == {"item": "SKU_CODE", "warehouse": "Site", "on_hand_qty": "QTY"}
    text = f"Site,SKU_CODE,QTY,snapshot_time\nDC-1,A,4,{T0}\nDC-1,,4,{T0}\n"
    messages, errors = _snapshot(text, columns=mapping)
    assert [(m["sku"], m["counted"]) for m in messages] == [("A", 4)]
    assert [(e.line, e.field) for e in errors] == [(3, "SKU_CODE")]  # the header's own name
    for bad in (["item"], ["colour=C"], ["item="]):
        with pytest.raises(ValueError, match="NAME=HEADER"):
            parse_column_mapping(bad)


def test_snapshot_ids_are_deterministic_and_distinct() -> None:
    at = datetime(2026, 11, 22, 6, tzinfo=UTC)
    same_instant = at.astimezone(timezone(timedelta(hours=1)))
    assert snapshot_message_id(SOURCE, at, "A", "L") == snapshot_message_id(
        SOURCE, same_instant, "A", "L"
    )
    ids = {
        snapshot_message_id(SOURCE, at, "A", "L"),
        snapshot_message_id(SOURCE, at, "B", "L"),
        snapshot_message_id(SOURCE, at, "A", "M"),
        snapshot_message_id(SOURCE, at, "a-b", "c"),
        snapshot_message_id(SOURCE, at, "a", "b-c"),
        snapshot_message_id("3pl-other", at, "A", "L"),
        snapshot_message_id(SOURCE, at + timedelta(days=1), "A", "L"),
        snapshot_message_id(SOURCE, at + timedelta(microseconds=1), "A", "L"),
    }
    assert len(ids) == 8
    longest = snapshot_message_id("s" * 64, at.replace(microsecond=123456), "S" * 128, "L" * 128)
    assert len(longest) <= MESSAGE_ID_LENGTH_MAX
    _accepted({"message_id": longest, "source": "s" * 64, "type": "cycle_count",
               "sku": "S", "location_id": "L", "counted": 1})  # fmt: skip
    # Re-reading the same file gives the same messages; a new day's file new ids.
    file = HEADER + f"DC-1,A,1,,{T0}\nDC-1,B,2,,{T0}\n"
    assert _snapshot(file) == _snapshot(file)
    next_day = {m["message_id"] for m in _snapshot(file.replace("22T", "23T"))[0]}
    assert next_day.isdisjoint(m["message_id"] for m in _snapshot(file)[0])


LOT_HEADER = "warehouse,item,lot,on_hand_qty,snapshot_time\n"
AT0 = datetime(2026, 11, 22, 6, tzinfo=UTC)


def test_lot_rows_become_lot_counts_with_ids_of_their_own() -> None:
    messages, errors = _snapshot(
        LOT_HEADER + f"DC-1,MILK,L-1,7,{T0}\nDC-1,MILK,L-2,0,{T0}\nDC-1,BOLT,,40,{T0}\n"
    )
    assert errors == []
    assert [(m["sku"], m.get("lot_id"), m["counted"]) for m in messages] == [
        ("MILK", "L-1", 7),
        ("MILK", "L-2", 0),
        ("BOLT", None, 40),  # no lot cell: a count of the whole position, as without the column
    ]
    assert messages[0]["message_id"] == snapshot_message_id(SOURCE, AT0, "MILK", "DC-1", "L-1")
    # A row without a lot keeps the id it has in a file without the column.
    assert messages[2]["message_id"] == snapshot_message_id(SOURCE, AT0, "BOLT", "DC-1")
    assert len({m["message_id"] for m in messages}) == 3
    movements = [_accepted(m) for m in messages]
    assert [(m.type, m.lot_id, m.counted) for m in movements] == [
        (MovementType.CYCLE_COUNT, "L-1", 7),
        (MovementType.CYCLE_COUNT, "L-2", 0),
        (MovementType.CYCLE_COUNT, None, 40),
    ]


def test_ids_without_a_lot_column_are_pinned() -> None:
    # The ids files without a lot column always had: re-imports must stay DUPLICATE.
    assert snapshot_message_id(SOURCE, AT0, "SKU-1", "DC-EAST") == (
        "3pl-acme-20261122T060000Z-" + hashlib.sha256(b'["SKU-1", "DC-EAST"]').hexdigest()[:16]
    )
    with_lot = snapshot_message_id(SOURCE, AT0, "SKU-1", "DC-EAST", "L-1")
    assert with_lot == (
        "3pl-acme-20261122T060000Z-"
        + hashlib.sha256(b'["SKU-1", "DC-EAST", "L-1"]').hexdigest()[:16]
    )
    # A lot id that looks like a continuation of the location cannot collide.
    assert snapshot_message_id(SOURCE, AT0, "A", "L", "x") != snapshot_message_id(
        SOURCE, AT0, "A", "L-x"
    )
    longest = snapshot_message_id(
        "s" * 64, AT0.replace(microsecond=1), "S" * 128, "L" * 128, "X" * 128
    )
    assert len(longest) <= MESSAGE_ID_LENGTH_MAX


def test_a_repeated_item_warehouse_lot_row_is_refused_other_lots_are_not() -> None:
    messages, errors = _snapshot(
        LOT_HEADER
        + f"DC-1,MILK,L-1,7,{T0}\nDC-1,MILK,L-2,3,{T0}\nDC-1,MILK,L-1,9,{T0}\n"
        + f"DC-2,MILK,L-1,1,{T0}\nDC-1,MILK,,5,{T0}\nDC-1,MILK,,6,{T0}\n"
    )
    assert [(e.line, e.field) for e in errors] == [(4, "item"), (7, "item")]
    assert "lot 'L-1' already counted on line 2" in errors[0].description
    assert "already counted on line 6" in errors[1].description
    assert [(m["location_id"], m.get("lot_id"), m["counted"]) for m in messages] == [
        ("DC-1", "L-1", 7),
        ("DC-1", "L-2", 3),
        ("DC-2", "L-1", 1),
        ("DC-1", None, 5),
    ]


def test_the_lot_column_is_mapped_and_checked_like_the_others() -> None:
    text = f"Site,Sku,Batch,Qty\nDC-1,MILK,B-9,4\nDC-1,MILK,{'x' * 129},4\n"
    mapping = parse_column_mapping(["warehouse=Site", "item=Sku", "lot=Batch", "on_hand_qty=Qty"])
    messages, errors = _snapshot(text, columns=mapping, as_of=AT0)
    assert [m["lot_id"] for m in messages] == ["B-9"]
    assert [(e.line, e.field) for e in errors] == [(3, "Batch")]
    assert "longer than" in errors[0].description


_identifier = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), max_codepoint=0x2FFF),
    min_size=1,
    max_size=20,
).filter(lambda text: text == text.strip())


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.dictionaries(
        st.tuples(_identifier, _identifier),
        st.tuples(
            st.integers(0, 10**12),
            st.sampled_from(["", "EA", "CASE"]),
            st.datetimes(
                min_value=datetime(2000, 1, 1),
                max_value=datetime(2100, 1, 1),
                timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7, minutes=-30))]),
            ),
        ),
        max_size=15,
    )
)
def test_any_valid_snapshot_maps_to_accepted_messages_with_unique_ids(
    rows: dict[tuple[str, str], tuple[int, str, datetime]],
) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["warehouse", "item", "on_hand_qty", "uom", "snapshot_time"])
    for (sku, location), (qty, uom, at) in rows.items():
        writer.writerow([location, sku, qty, uom, at.isoformat()])
    messages, errors = _snapshot(out.getvalue())
    assert errors == []
    assert len({m["message_id"] for m in messages}) == len(messages) == len(rows)
    for message in messages:
        movement = _accepted(message)
        qty, uom, at = rows[movement.sku, movement.location_id]
        assert movement.counted == qty * (12 if uom == "CASE" else 1)
        assert movement.occurred_at == at.astimezone(UTC)


# ---------------------------------------------------------------- WMS transactions

WMS = "wms-east"
BASE = {"item": "SKU-1", "site": "DC-EAST", "qty": 4, "uom": "EA", "ts": "2026-11-22T08:00:00Z"}


def _wms(record: dict[str, Any], adapter: WmsTransactionAdapter | None = None) -> dict[str, Any]:
    adapter = adapter or WmsTransactionAdapter(WMS)
    (message,) = adapter.translate(Record(7, json.dumps(record).encode()))
    return message


def _wms_error(record: dict[str, Any] | bytes) -> AdapterError:
    raw = record if isinstance(record, bytes) else json.dumps(record).encode()
    with pytest.raises(AdapterError) as caught:
        WmsTransactionAdapter(WMS).translate(Record(7, raw))
    assert caught.value.line == 7
    return caught.value


# txn_type, extra input keys, expected canonical fields beyond the common ones
WMS_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("RECV", {}, {"type": "receipt", "qty": 4, "putaway_pending": True}),
    ("PUTAWAY", {}, {"type": "putaway", "qty": 4}),
    ("PICK", {"order_ref": "SO-9", "reservation_id": "res-1"},
     {"type": "shipment", "qty": 4, "reservation_id": "res-1"}),
    ("ADJ", {"qty": -2, "reason": "cycle variance"},
     {"type": "adjustment", "delta": -2, "reason": "cycle variance"}),
    ("XFER_OUT", {"to_site": "DC-WEST", "order_ref": "TO-5", "eta": "2026-11-24T12:00:00+01:00"},
     {"type": "transfer_dispatch", "qty": 4, "to_location_id": "DC-WEST", "transfer_id": "TO-5",
      "expected_at": "2026-11-24T11:00:00Z"}),
    ("XFER_IN", {"transfer_id": "TR-5", "order_ref": "ignored", "final": True},
     {"type": "transfer_receipt", "qty": 4, "transfer_id": "TR-5", "final": True}),
    ("QC_HOLD", {}, {"type": "quarantine", "qty": 4}),
    ("QC_RELEASE", {}, {"type": "quarantine_release", "qty": 4}),
    ("DAMAGE", {"reason": "forklift"}, {"type": "damage", "qty": 4, "reason": "forklift"}),
    ("RETURN", {"disposition": "qc"},
     {"type": "return_receipt", "qty": 4, "disposition": "quarantine"}),
]  # fmt: skip


def test_every_wms_type_is_covered() -> None:
    assert {case[0] for case in WMS_CASES} == set(MAPPING)


@pytest.mark.parametrize(
    ("txn_type", "extra", "expected"), WMS_CASES, ids=[c[0] for c in WMS_CASES]
)
def test_each_wms_type_maps_to_its_movement(
    txn_type: str, extra: dict[str, Any], expected: dict[str, Any]
) -> None:
    message = _wms({"txn_id": "T-1", "txn_type": txn_type, **BASE, **extra, "user": "jo"})
    assert message == {
        "message_id": "wms-east-T-1",
        "source": WMS,
        "sku": "SKU-1",
        "location_id": "DC-EAST",
        "uom": "EA",
        "occurred_at": "2026-11-22T08:00:00Z",
        **expected,
    }
    movement = _accepted(message)
    assert movement.type == MovementType(expected["type"])
    assert movement.occurred_at == datetime(2026, 11, 22, 8, tzinfo=UTC)


def test_wms_details() -> None:
    # lower-case types, integer ids, quantities as text, no uom
    message = _wms({"txn_id": 1001, "txn_type": " recv ", **BASE, "qty": "12", "uom": None})
    assert (message["message_id"], message["qty"], "uom" in message) == ("wms-east-1001", 12, False)
    for code, disposition in (("RESTOCK", Disposition.RESTOCK), ("Damaged", Disposition.DAMAGED)):
        message = _wms({"txn_id": "R", "txn_type": "RETURN", **BASE, "disposition": code})
        assert _accepted(message).disposition is disposition
    assert "final" not in _wms({"txn_id": "X", "txn_type": "XFER_IN", **BASE, "order_ref": "TO-1"})


@pytest.mark.parametrize(
    ("changes", "field", "text"),
    [
        ({"txn_type": "CYCLE"}, "txn_type", "unknown transaction type"),
        ({"txn_type": None}, "txn_type", "unknown transaction type"),
        ({"txn_id": None}, "txn_id", "missing"),
        ({"txn_id": True}, "txn_id", "must be a string"),
        ({"txn_id": "T" * 120}, "txn_id", "longer than 119"),
        ({"item": ""}, "item", "must not be empty"),
        ({"item": 12345}, "item", "must be a string"),
        ({"site": None}, "site", "missing"),
        ({"qty": None}, "qty", "missing"),
        ({"qty": 0}, "qty", "at least 1"),
        ({"qty": -4}, "qty", "at least 1"),
        ({"qty": 2.5}, "qty", "whole number"),
        ({"qty": True}, "qty", "must be an integer"),
        ({"qty": "4 boxes"}, "qty", "integer"),
        ({"ts": None}, "ts", "missing"),
        ({"ts": "2026-11-22T08:00:00"}, "ts", "time zone"),
        ({"ts": 1764000000}, "ts", "ISO-8601 string"),
        ({"uom": 12}, "uom", "must be a string"),
        ({"reason": "x" * 257}, "reason", "longer than 256"),
    ],
)
def test_a_bad_wms_transaction_names_its_field(
    changes: dict[str, Any], field: str, text: str
) -> None:
    error = _wms_error({"txn_id": "T-1", "txn_type": "PICK", **BASE, **changes})
    assert error.field == field
    assert text in error.description


@pytest.mark.parametrize(
    ("txn_type", "changes", "field"),
    [
        ("ADJ", {"qty": 0, "reason": "r"}, "qty"),
        ("ADJ", {"qty": 3}, "reason"),
        ("XFER_OUT", {"order_ref": "TO-1"}, "to_site"),
        ("XFER_OUT", {"order_ref": "TO-1", "to_site": "DC-EAST"}, "to_site"),
        ("XFER_OUT", {"to_site": "DC-WEST"}, "transfer_id"),
        ("XFER_OUT", {"to_site": "DC-WEST", "order_ref": "TO-1", "eta": "soon"}, "eta"),
        ("XFER_IN", {"transfer_id": "TR-1", "final": "yes"}, "final"),
        ("RETURN", {}, "disposition"),
        ("RETURN", {"disposition": "RESELL"}, "disposition"),
    ],
)
def test_type_specific_wms_rules(txn_type: str, changes: dict[str, Any], field: str) -> None:
    assert _wms_error({"txn_id": "T", "txn_type": txn_type, **BASE, **changes}).field == field


@pytest.mark.parametrize(
    ("raw", "field"),
    [(b'{"txn_id": "T-1", ', ""), (b"[1, 2]", ""), (b'{"qty": 1, "qty": 2}', "qty"), (b"NaN", "")],
)
def test_wms_lines_that_are_not_one_json_object(raw: bytes, field: str) -> None:
    assert _wms_error(raw).field == field


def test_wms_records_skip_blank_lines_and_keep_line_numbers() -> None:
    adapter = WmsTransactionAdapter(WMS)
    records = list(adapter.records(io.BytesIO(b'{"a": 1}\n\n  \r\n{"b": 2}\r\n')))
    assert [(r.line, r.data) for r in records] == [(1, b'{"a": 1}'), (4, b'{"b": 2}')]


def test_a_repeated_txn_id_passes_when_identical_and_fails_when_not() -> None:
    adapter = WmsTransactionAdapter(WMS)
    record = {"txn_id": "T-1", "txn_type": "RECV", **BASE}
    first = _wms(record, adapter)
    assert _wms(record, adapter) == first  # an overlapping export: dedupe downstream
    with pytest.raises(AdapterError, match="line 7") as caught:
        adapter.translate(Record(9, json.dumps({**record, "qty": 5}).encode()))
    assert (caught.value.line, caught.value.field) == (9, "txn_id")
    assert (
        _wms({"txn_id": "T-1", "txn_type": "RECV", **BASE}, WmsTransactionAdapter("wms-west"))[
            "message_id"
        ]
        == "wms-west-T-1"
    )  # other source, other id: the broker's window spans sources


_wms_record = st.fixed_dictionaries(
    {
        "txn_id": st.one_of(st.integers(0, 10**12), _identifier),
        "txn_type": st.sampled_from([case[0] for case in WMS_CASES]),
        "item": _identifier,
        "site": _identifier,
        "qty": st.integers(1, 10**9),
        "ts": st.datetimes(
            min_value=datetime(2000, 1, 1), timezones=st.just(timezone(timedelta(hours=9)))
        ).map(datetime.isoformat),
    }
)


@settings(max_examples=100)
@given(record=_wms_record, negative=st.booleans())
def test_any_valid_wms_transaction_maps_to_an_accepted_message(
    record: dict[str, Any], negative: bool
) -> None:
    extra = next(case[1] for case in WMS_CASES if case[0] == record["txn_type"])
    record = {**record, **{k: v for k, v in extra.items() if k != "qty"}}
    if record["txn_type"] == "ADJ" and negative:
        record["qty"] = -record["qty"]
    if record.get("to_site") == record["site"]:
        record["to_site"] = record["site"] + "-2"
    message = _wms(record)
    movement = _accepted(message)
    assert movement.message_id == f"{WMS}-{record['txn_id']}"
    assert movement.sku == record["item"] and movement.location_id == record["site"]
    assert abs(movement.qty or movement.delta or 0) == abs(record["qty"])


# ---------------------------------------------------------------- helpers and publisher


def test_integer_and_timestamp_helpers() -> None:
    assert integer(" +7 ", 1, "q", minimum=0) == 7
    assert integer(-3, 1, "q", minimum=-5) == -3
    with pytest.raises(AdapterError, match="not list"):
        integer([1], 1, "q", minimum=0)
    assert parse_timestamp("2026-11-22T10:15:00.5+02:00", 1, "t") == datetime(
        2026, 11, 22, 8, 15, 0, 500000, tzinfo=UTC
    )
    with pytest.raises(AdapterError, match="out of range"):
        parse_timestamp("0001-01-01T00:00:00+01:00", 1, "t")


def test_check_message_leaves_unknown_units_to_the_bridge_without_a_table() -> None:
    message = _wms({"txn_id": "T", "txn_type": "RECV", **BASE, "uom": "PALLET"})
    check_message(message, 3, None)
    with pytest.raises(AdapterError) as caught:
        check_message(message, 3, UnitTable({"CASE": 12}))
    assert (caught.value.line, caught.value.field) == (3, "uom")
    assert "UNKNOWN_UNIT" in caught.value.description


class _Ack:
    def __init__(self, duplicate: bool) -> None:
        self.duplicate = duplicate


class _FakeJetStream:
    """Records publishes and answers duplicate for a Nats-Msg-Id seen before."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any], str]] = []

    async def publish(self, subject: str, data: bytes, **kwargs: Any) -> _Ack:
        msg_id = kwargs["headers"][MSG_ID]
        duplicate = any(seen == msg_id for _, _, seen in self.published)
        self.published.append((subject, json.loads(data), msg_id))
        return _Ack(duplicate)


def test_publish_adapter_routes_lanes_and_reports(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot.csv"
    snapshot.write_text(HEADER + f"DC-1,A,1,,{T0}\nDC-1,B,-1,,{T0}\nDC-1,C,3,,{T0}\n")
    wms = tmp_path / "wms.jsonl"
    recv = json.dumps({"txn_id": "T-1", "txn_type": "RECV", **BASE})
    put = json.dumps({"txn_id": "T-2", "txn_type": "PUTAWAY", **BASE})
    wms.write_text(f"{recv}\n{{oops\n{put}\n{recv}\n")
    js = _FakeJetStream()

    async def run() -> tuple[Any, Any]:
        bulk = await publish_adapter(js, ThreePLSnapshotAdapter(SOURCE), snapshot, "P")
        live = await publish_adapter(js, WmsTransactionAdapter(WMS), wms, "P")
        return bulk, live

    bulk, live = asyncio.run(run())
    assert bulk.to_json() == {
        "source": SOURCE,
        "lane": "bulk",
        "records": 3,
        "published": 2,
        "duplicates": 0,
        "invalid": [{"line": 3, "field": "on_hand_qty", "error": "must be at least 0, not -1"}],
    }
    assert (live.lane, live.records, live.published, live.duplicates) == (Lane.LIVE, 4, 2, 1)
    assert [(e.line, e.field) for e in live.invalid] == [(2, "")]
    subjects = [subject for subject, _, _ in js.published]
    assert subjects[:2] == [f"P.inventory.movements.bulk.{SOURCE}"] * 2
    assert subjects[2:] == [f"P.inventory.movements.{WMS}"] * 3
    # The live lane keeps the file's order: the receipt reaches the stream before its putaway.
    assert [msg_id for _, _, msg_id in js.published[2:]] == ["wms-east-T-1", "wms-east-T-2"] * 1 + [
        "wms-east-T-1"
    ]
    assert all(payload["message_id"] == msg_id for _, payload, msg_id in js.published)


def test_publish_adapter_reports_a_file_level_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("warehouse,item\nDC-1,A\n")
    js = _FakeJetStream()
    report = asyncio.run(publish_adapter(js, ThreePLSnapshotAdapter(SOURCE), path))
    assert (report.records, report.published, js.published) == (0, 0, [])
    assert [(e.line, e.field) for e in report.invalid] == [(1, "on_hand_qty")]


def test_cli_refuses_bad_options_before_connecting(tmp_path: Path) -> None:
    from entrypoints.cli.main import main

    path = tmp_path / "s.csv"
    path.write_text(HEADER)
    unreachable = ["--nats", "nats://127.0.0.1:1"]
    assert (
        main(["import-snapshot", str(path), "--source", "s", "--column", "x=y", *unreachable]) == 2
    )
    for bad in (["--source", "a b"], ["--source", "s", "--as-of", "2026-11-22T06:00:00"]):
        with pytest.raises(SystemExit) as caught:
            main(["import-snapshot", str(path), *bad, *unreachable])
        assert caught.value.code == 2
