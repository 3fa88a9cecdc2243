"""Canonical ingest messages (contract §5) and every kind of poison message."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.message import PAYLOAD_BYTES_MAX, InvalidMessage, parse_message
from ingest.units import UnitTable, UnitTableError
from ledger.domain.limits import QUANTITY_MAX
from ledger.domain.movements import Disposition, FromBucket, Movement, MovementType
from tools import gen_ingest_schema

# contract §5's example, with a concrete reservation id.
EXAMPLE: dict[str, Any] = {
    "message_id": "wms-east-000123",
    "source": "wms-east",
    "type": "shipment",
    "sku": "SKU-1",
    "location_id": "DC-EAST",
    "qty": 3,
    "uom": "EA",
    "occurred_at": "2026-11-22T10:15:00Z",
    "reservation_id": "res-42",
    "transfer_id": None,
    "to_location_id": None,
    "delta": None,
    "counted": None,
    "reason": None,
    "disposition": None,
    "putaway_pending": False,
    "final": False,
    "expected_at": None,
    "from_bucket": None,
}

UNITS = UnitTable.from_dict(
    {"units": {"EA": 1, "CASE": 12, "PALLET": 480}, "overrides": {"SKU-2": {"CASE": 6}}}
)

_DROP = object()
# Changes that turn EXAMPLE (a shipment) into a receipt.
RECEIPT: dict[str, Any] = {"type": "receipt", "reservation_id": None}


def payload(**changes: Any) -> bytes:
    message = {**EXAMPLE, **changes}
    return json.dumps({k: v for k, v in message.items() if v is not _DROP}).encode()


def test_spec_example_parses_to_the_expected_movement() -> None:
    assert parse_message(json.dumps(EXAMPLE).encode()) == Movement(
        source="wms-east",
        message_id="wms-east-000123",
        type=MovementType.SHIPMENT,
        sku="SKU-1",
        location_id="DC-EAST",
        qty=3,
        occurred_at=datetime(2026, 11, 22, 10, 15, tzinfo=UTC),
        reservation_id="res-42",
    )


def test_minimal_message_defaults() -> None:
    movement = parse_message(
        b'{"message_id":"m1","source":"erp","type":"receipt","sku":"S","location_id":"L",'
        b'"qty":5,"putaway_pending":true}'
    )
    assert movement.qty == 5
    assert movement.putaway_pending is True
    assert movement.occurred_at is None
    assert movement.reservation_id is None


def test_offsets_are_normalised_to_utc() -> None:
    movement = parse_message(payload(occurred_at="2026-11-22T12:15:00.5+02:00"))
    assert movement.occurred_at == datetime(2026, 11, 22, 10, 15, 0, 500000, tzinfo=UTC)
    assert movement.occurred_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"type": "adjustment", "qty": None, "reservation_id": None, "delta": -4, "reason": "x"},
         {"delta": -4, "reason": "x"}),
        ({"type": "cycle_count", "qty": None, "reservation_id": None, "counted": 0},
         {"counted": 0}),
        ({"type": "return_receipt", "reservation_id": None, "disposition": "damaged"},
         {"disposition": Disposition.DAMAGED}),
        ({"type": "damage", "reservation_id": None, "from_bucket": "quarantine"},
         {"from_bucket": FromBucket.QUARANTINE}),
        ({"type": "transfer_dispatch", "reservation_id": None, "transfer_id": "T1",
          "to_location_id": "DC-WEST", "expected_at": "2026-11-23T00:00:00Z"},
         {"transfer_id": "T1", "to_location_id": "DC-WEST",
          "expected_at": datetime(2026, 11, 23, tzinfo=UTC)}),
        ({"type": "transfer_receipt", "reservation_id": None, "transfer_id": "T1", "final": True},
         {"transfer_id": "T1", "final": True}),
        ({"sku": "it's \"quoted\" / ÜNI ' OR 1=1 --"},
         {"sku": "it's \"quoted\" / ÜNI ' OR 1=1 --"}),
    ],
)  # fmt: skip
def test_each_type_parses(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    movement = parse_message(payload(**changes))
    for name, value in expected.items():
        assert getattr(movement, name) == value


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({**RECEIPT, "lot_id": "L7", "expires_at": "2027-01-10T02:00:00+02:00"},
         {"lot_id": "L7", "expires_at": datetime(2027, 1, 10, tzinfo=UTC),
          "serial_numbers": ()}),
        ({"type": "return_receipt", "reservation_id": None, "disposition": "restock",
          "lot_id": "L7", "expires_at": "2027-01-10T00:00:00Z"},
         {"lot_id": "L7", "expires_at": datetime(2027, 1, 10, tzinfo=UTC)}),
        ({"lot_id": "L7"}, {"lot_id": "L7", "expires_at": None, "reservation_id": "res-42"}),
        ({"serial_numbers": ["SN-3", "SN-1", "SN-2"]},
         {"serial_numbers": ("SN-3", "SN-1", "SN-2"), "lot_id": None}),
        ({"type": "adjustment", "qty": None, "reservation_id": None, "delta": -2, "reason": "r",
          "serial_numbers": ["SN-1", "SN-2"]}, {"serial_numbers": ("SN-1", "SN-2")}),
        # A serial per base unit: 1 CASE of SKU-2 is 6 units.
        ({"sku": "SKU-2", "uom": "CASE", "qty": 1,
          "serial_numbers": [f"SN-{i}" for i in range(6)]},
         {"qty": 6, "serial_numbers": tuple(f"SN-{i}" for i in range(6))}),
        # null, "" and [] are absent, as for the other optional fields.
        ({"lot_id": None, "expires_at": None, "serial_numbers": None},
         {"lot_id": None, "expires_at": None, "serial_numbers": ()}),
        ({"lot_id": "", "serial_numbers": []}, {"lot_id": None, "serial_numbers": ()}),
    ],
)  # fmt: skip
def test_tracked_messages_parse(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    movement = parse_message(payload(**changes), UNITS)
    for name, value in expected.items():
        assert getattr(movement, name) == value, name


# (name, raw payload, reason code, field); "" is the whole payload.
POISON: list[tuple[str, bytes, str, str]] = [
    ("not utf-8", b'{"sku": "\xff"}', "NOT_UTF8", ""),
    ("bad json", b'{"message_id": "x",', "BAD_JSON", ""),
    ("empty", b"", "BAD_JSON", ""),
    ("trailing garbage", payload() + b"x", "BAD_JSON", ""),
    ("not an object", b"[1, 2]", "NOT_AN_OBJECT", ""),
    ("duplicate key", payload()[:-1] + b', "qty": 4}', "DUPLICATE_KEY", "qty"),
    ("NaN", payload(qty=float("nan")), "NON_FINITE_NUMBER", ""),
    ("Infinity", payload(qty=float("inf")), "NON_FINITE_NUMBER", ""),
    ("-Infinity", payload(qty=float("-inf")), "NON_FINITE_NUMBER", ""),
    ("10k deep arrays", b"[" * 10_000 + b"]" * 10_000, "TOO_DEEP", ""),
    ("10k deep objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "TOO_DEEP", ""),
    ("deep inside a field", payload(reason=[[[[[[[[[["x"]]]]]]]]]]), "TOO_DEEP", ""),
    ("oversized", payload(reason="x" * PAYLOAD_BYTES_MAX), "TOO_LARGE", ""),
    ("qty true", payload(qty=True), "WRONG_TYPE", "qty"),
    ("qty 3.5", payload(qty=3.5), "WRONG_TYPE", "qty"),
    ("qty 3.0", payload(qty=3.0), "WRONG_TYPE", "qty"),
    ("qty 1e30", payload(qty=_DROP)[:-1] + b', "qty": 1e30}', "WRONG_TYPE", "qty"),
    ("qty 1e999", payload(qty=_DROP)[:-1] + b', "qty": 1e999}', "WRONG_TYPE", "qty"),
    ("qty string", payload(qty="3"), "WRONG_TYPE", "qty"),
    ("qty > int64", payload(qty=2**63), "OUT_OF_RANGE", "qty"),
    ("qty 5000 digits", payload(qty=_DROP)[:-1] + b', "qty": ' + b"9" * 5000 + b"}",
     "OUT_OF_RANGE", "qty"),
    ("qty > QUANTITY_MAX", payload(qty=QUANTITY_MAX + 1), "OUT_OF_RANGE", "qty"),
    ("qty 0", payload(qty=0), "OUT_OF_RANGE", "qty"),
    ("qty negative", payload(qty=-1), "OUT_OF_RANGE", "qty"),
    ("delta < -QUANTITY_MAX", payload(type="adjustment", qty=None, reservation_id=None,
                                      delta=-QUANTITY_MAX - 1, reason="r"), "OUT_OF_RANGE",
     "delta"),
    ("counted negative", payload(type="cycle_count", qty=None, reservation_id=None, counted=-1),
     "OUT_OF_RANGE", "counted"),
    ("final as 1", payload(final=1), "WRONG_TYPE", "final"),
    ("naive occurred_at", payload(occurred_at="2026-11-22T10:15:00"), "NAIVE_TIMESTAMP",
     "occurred_at"),
    ("unparseable occurred_at", payload(occurred_at="last tuesday"), "BAD_TIMESTAMP",
     "occurred_at"),
    ("date-only occurred_at", payload(occurred_at="2026-11-22"), "BAD_TIMESTAMP", "occurred_at"),
    ("month 13", payload(occurred_at="2026-13-22T10:15:00Z"), "BAD_TIMESTAMP", "occurred_at"),
    ("epoch number", payload(occurred_at=1_700_000_000), "WRONG_TYPE", "occurred_at"),
    ("naive expected_at", payload(type="transfer_dispatch", reservation_id=None,
                                  transfer_id="T", to_location_id="B",
                                  expected_at="2026-11-22 10:15:00"), "NAIVE_TIMESTAMP",
     "expected_at"),
    ("unknown field", payload(colour="red"), "UNKNOWN_FIELD", "colour"),
    ("unknown type", payload(type="teleport"), "UNKNOWN_VALUE", "type"),
    ("type in capitals", payload(type="SHIPMENT"), "UNKNOWN_VALUE", "type"),
    ("unknown disposition", payload(type="return_receipt", reservation_id=None,
                                    disposition="landfill"), "UNKNOWN_VALUE", "disposition"),
    ("unknown from_bucket", payload(type="damage", reservation_id=None, from_bucket="reserved"),
     "UNKNOWN_VALUE", "from_bucket"),
    ("missing sku", payload(sku=_DROP), "MISSING_FIELD", "sku"),
    ("null sku", payload(sku=None), "MISSING_FIELD", "sku"),
    ("empty sku", payload(sku=""), "BAD_IDENTIFIER", "sku"),
    ("129-char sku", payload(sku="S" * 129), "BAD_IDENTIFIER", "sku"),
    ("NUL in sku", payload(sku="a\x00b"), "BAD_IDENTIFIER", "sku"),
    ("newline in location", payload(location_id="DC\nEAST"), "BAD_IDENTIFIER", "location_id"),
    ("C1 control in location", payload(location_id="DC\x85"), "BAD_IDENTIFIER", "location_id"),
    ("lone surrogate", payload(sku="\ud800"), "BAD_STRING", "sku"),
    ("source with a dot", payload(source="wms.east"), "BAD_IDENTIFIER", "source"),
    ("source with a space", payload(source="wms east"), "BAD_IDENTIFIER", "source"),
    ("source 65 chars", payload(source="s" * 65), "BAD_IDENTIFIER", "source"),
    ("source wildcard", payload(source=">"), "BAD_IDENTIFIER", "source"),
    ("empty message_id", payload(message_id=""), "BAD_IDENTIFIER", "message_id"),
    ("message_id 129 chars", payload(message_id="m" * 129), "BAD_IDENTIFIER", "message_id"),
    ("message_id tab", payload(message_id="m\t1"), "BAD_IDENTIFIER", "message_id"),
    ("unknown unit", payload(uom="BOX"), "UNKNOWN_UNIT", "uom"),
    ("lower-case unit", payload(uom="ea"), "UNKNOWN_UNIT", "uom"),
    ("empty unit", payload(uom=""), "BAD_STRING", "uom"),
    # The gRPC edge's per-type rules (ledger.inputs._type_rules).
    ("shipment without qty", payload(qty=None), "TYPE_RULE", "qty"),
    ("adjustment with qty", payload(type="adjustment", reservation_id=None, delta=1, reason="r"),
     "TYPE_RULE", "qty"),
    ("adjustment delta 0", payload(type="adjustment", qty=None, reservation_id=None, delta=0,
                                   reason="r"), "TYPE_RULE", "delta"),
    ("adjustment without reason", payload(type="adjustment", qty=None, reservation_id=None,
                                          delta=2), "TYPE_RULE", "reason"),
    ("cycle_count without counted", payload(type="cycle_count", qty=None, reservation_id=None),
     "TYPE_RULE", "counted"),
    ("transfer without id", payload(type="transfer_dispatch", reservation_id=None,
                                    to_location_id="B"), "TYPE_RULE", "transfer_id"),
    ("transfer to itself", payload(type="transfer_dispatch", reservation_id=None,
                                   transfer_id="T", to_location_id="DC-EAST"), "TYPE_RULE",
     "to_location_id"),
    ("return without disposition", payload(type="return_receipt", reservation_id=None),
     "TYPE_RULE", "disposition"),
    ("receipt with reservation", payload(type="receipt"), "TYPE_RULE", "reservation_id"),
    ("from_bucket on shipment", payload(from_bucket="on_hand"), "TYPE_RULE", "from_bucket"),
    # Tracking fields (issue 19): shapes only; a SKU's tracking is checked by the writer.
    ("lot_id a number", payload(lot_id=7), "WRONG_TYPE", "lot_id"),
    ("lot_id 129 chars", payload(lot_id="L" * 129), "BAD_IDENTIFIER", "lot_id"),
    ("lot_id newline", payload(lot_id="L\n7"), "BAD_IDENTIFIER", "lot_id"),
    ("lot_id C1 control", payload(lot_id="L\x857"), "BAD_IDENTIFIER", "lot_id"),
    ("lot_id lone surrogate", payload(lot_id="\ud800"), "BAD_STRING", "lot_id"),
    ("naive expires_at", payload(**RECEIPT, lot_id="L7", expires_at="2027-01-10T00:00:00"),
     "NAIVE_TIMESTAMP", "expires_at"),
    ("date-only expires_at", payload(**RECEIPT, lot_id="L7", expires_at="2027-01-10"),
     "BAD_TIMESTAMP", "expires_at"),
    ("expires_at without lot_id", payload(**RECEIPT, expires_at="2027-01-10T00:00:00Z"),
     "TYPE_RULE", "expires_at"),
    ("expires_at on shipment", payload(lot_id="L7", expires_at="2027-01-10T00:00:00Z"),
     "TYPE_RULE", "expires_at"),
    ("serial_numbers a string", payload(serial_numbers="SN-1"), "WRONG_TYPE", "serial_numbers"),
    ("serial number an integer", payload(serial_numbers=["a", 2, "c"]), "WRONG_TYPE",
     "serial_numbers[1]"),
    ("empty serial number", payload(serial_numbers=["a", "", "c"]), "BAD_IDENTIFIER",
     "serial_numbers[1]"),
    ("serial number 129 chars", payload(serial_numbers=["a", "b", "c" * 129]), "BAD_IDENTIFIER",
     "serial_numbers[2]"),
    ("serial number tab", payload(serial_numbers=["a\tb", "b", "c"]), "BAD_IDENTIFIER",
     "serial_numbers[0]"),
    ("serial number lone surrogate", payload(serial_numbers=["a", "\ud800", "c"]), "BAD_STRING",
     "serial_numbers[1]"),
    ("repeated serial number", payload(serial_numbers=["a", "b", "a"]), "TYPE_RULE",
     "serial_numbers[2]"),
    ("fewer serials than qty", payload(serial_numbers=["a", "b"]), "TYPE_RULE",
     "serial_numbers"),
    ("more serials than qty", payload(serial_numbers=["a", "b", "c", "d"]), "TYPE_RULE",
     "serial_numbers"),
    ("serials not |delta|", payload(type="adjustment", qty=None, reservation_id=None, delta=-2,
                                    reason="r", serial_numbers=["a"]), "TYPE_RULE",
     "serial_numbers"),
    ("serials not counted", payload(type="cycle_count", qty=None, reservation_id=None,
                                    counted=2, serial_numbers=["a"]), "TYPE_RULE",
     "serial_numbers"),
    ("serials not base units", payload(uom="CASE", qty=1, serial_numbers=["a"]), "TYPE_RULE",
     "serial_numbers"),
    ("lot_id and serials", payload(lot_id="L7", serial_numbers=["a", "b", "c"]), "TYPE_RULE",
     "serial_numbers"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "reason", "field"), [p[1:] for p in POISON], ids=[p[0] for p in POISON]
)
def test_poison_is_rejected_with_reason(raw: bytes, reason: str, field: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(raw, UNITS)
    assert (caught.value.reason_code, caught.value.field) == (reason, field), caught.value


@pytest.mark.parametrize(
    ("sku", "uom", "changes", "field", "expected"),
    [
        ("SKU-1", "CASE", {"qty": 2}, "qty", 24),
        ("SKU-2", "CASE", {"qty": 2}, "qty", 12),
        ("SKU-2", "PALLET", {"qty": 1}, "qty", 480),
        ("SKU-1", None, {"qty": 7}, "qty", 7),
        ("SKU-1", "EA", {"qty": 7}, "qty", 7),
        ("SKU-2", "CASE", {"type": "adjustment", "qty": None, "reservation_id": None,
                           "delta": -3, "reason": "r"}, "delta", -18),
        ("SKU-1", "CASE", {"type": "cycle_count", "qty": None, "reservation_id": None,
                           "counted": 4}, "counted", 48),
    ],
)  # fmt: skip
def test_units_convert_to_base(
    sku: str, uom: str | None, changes: dict[str, Any], field: str, expected: int
) -> None:
    movement = parse_message(payload(sku=sku, uom=uom, **changes), UNITS)
    assert getattr(movement, field) == expected


def test_converted_quantity_must_stay_in_range() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(payload(uom="CASE", qty=QUANTITY_MAX // 12 + 1), UNITS)
    assert (caught.value.reason_code, caught.value.field) == ("OUT_OF_RANGE", "qty")


def test_without_a_table_only_the_base_unit_is_known() -> None:
    assert parse_message(payload(uom="EA")).qty == 3
    with pytest.raises(InvalidMessage, match="UNKNOWN_UNIT"):
        parse_message(payload(uom="CASE"))


def test_unit_table_from_json_file(tmp_path: Any) -> None:
    path = tmp_path / "units.json"
    path.write_text(json.dumps({"units": {"CASE": 12}, "overrides": {"SKU-1": {"CASE": 6}}}))
    table = UnitTable.from_json_file(path)
    assert table.factor("SKU-1", "CASE") == 6
    assert table.factor("SKU-9", "CASE") == 12
    assert table.factor("SKU-9", "EA") == 1
    assert table.factor("SKU-9", "BOX") is None


@pytest.mark.parametrize(
    "data",
    [
        {"units": {"CASE": 0}},
        {"units": {"CASE": True}},
        {"units": {"CASE": 1.5}},
        {"units": {"EA": 2}},
        {"overrides": {"SKU-1": {"CASE": -6}}},
        {"unit": {"CASE": 12}},
    ],
)
def test_malformed_unit_tables_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(UnitTableError):
        UnitTable.from_dict(data)


def test_schema_file_is_fresh() -> None:
    assert gen_ingest_schema.is_fresh(), "run python -m tools.gen_ingest_schema"
    assert gen_ingest_schema.main(["--check"]) == 0


def test_schema_check_detects_staleness(tmp_path: Any) -> None:
    stale = tmp_path / "schema.json"
    assert not gen_ingest_schema.is_fresh(stale)
    assert gen_ingest_schema.write(stale)
    assert gen_ingest_schema.is_fresh(stale)
    assert not gen_ingest_schema.write(stale)


# ---- property: nothing but InvalidMessage escapes ----

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["EA", "CASE", "shipment", "adjustment", "2026-11-22T10:15:00Z", ""])
)
_json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_field_values = st.dictionaries(
    st.sampled_from([*EXAMPLE, "extra"]), _json_values, max_size=len(EXAMPLE)
).map(lambda changes: {**EXAMPLE, **changes})


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        _json_values.map(_encode),
        _field_values.map(_encode),
        st.binary(max_size=64),
    )
)
def test_parse_raises_only_invalid_message(raw: bytes) -> None:
    try:
        movement = parse_message(raw, UNITS)
    except InvalidMessage as error:
        assert error.reason_code
        assert isinstance(error.field, str)
    else:
        assert isinstance(movement, Movement)
