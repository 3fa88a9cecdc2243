"""``ingest.message.decode_json`` reads ordinary payloads through orjson (issue 20, ingest
throughput) and every other one through its checked standard-library path: for any bytes,
both give the same value (same types, same key order) or the same InvalidMessage."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingest.message import InvalidMessage, _decode_checked, _decode_plain, decode_json

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits orjson reads a float: the checked path must decide
    | st.floats(allow_nan=False)
    | st.text()  # surrogates and control characters included: escaped by json.dumps
)
_finite = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _outcome(decode: Any, raw: bytes) -> tuple[str, ...]:
    try:
        return ("value", repr(decode(raw)))
    except InvalidMessage as error:
        return ("invalid", error.reason_code, error.field)


def _same(raw: bytes) -> None:
    assert _outcome(decode_json, raw) == _outcome(_decode_checked, raw)


@given(_values, st.booleans())
@settings(max_examples=400, deadline=None)
def test_encoded_values_decode_alike(value: Any, ascii_only: bool) -> None:
    _same(json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


@given(st.dictionaries(st.sampled_from("abc"), _finite, min_size=1, max_size=3), st.data())
@settings(max_examples=200, deadline=None)
def test_a_key_given_twice_is_refused_alike(value: dict[str, Any], data: st.DataObject) -> None:
    """orjson keeps the last of a repeated key; the checked path refuses the payload."""
    text = json.dumps(value, ensure_ascii=False)
    key = data.draw(st.sampled_from(sorted(value)))
    repeated = data.draw(_finite)  # Infinity would be refused first, as NON_FINITE_NUMBER
    raw = f"{text[:-1]}, {json.dumps(key)}: {json.dumps(repeated)}}}".encode()
    assert _outcome(decode_json, raw)[:2] == ("invalid", "DUPLICATE_KEY")
    _same(raw)


@given(st.binary(max_size=64))
@settings(max_examples=400, deadline=None)
@example(b'{"qty": 18446744073709551616}')  # orjson: a float; checked: an int out of range
@example(b'{"qty": -9223372036854775809}')
@example(b'{"qty": 1e400}')
@example(b'{"qty": NaN}')
@example(b'{"a": "\xed\xa0\x80"}')  # a UTF-8-encoded surrogate
@example(b'\xef\xbb\xbf{"a": 1}')  # byte order mark
@example(b'{"a": 1, "a": 1}')
@example(b"[[[[[[[[[1]]]]]]]]]")  # nine levels
@example(b'{"a": "[[[[[[[[[["}')  # brackets inside a string take the checked path, alike
def test_any_bytes_decode_alike(raw: bytes) -> None:
    _same(raw)


def test_the_common_payload_takes_the_fast_path() -> None:
    """The throughput this exists for: a canonical message is read by orjson."""
    raw = (
        b'{"location_id":"DC-1","message_id":"m-1","occurred_at":"2026-11-22T10:15:00Z",'
        b'"qty":12,"serial_numbers":["S-1","S-2"],"sku":"SKU-1","source":"wms","type":"receipt"}'
    )
    assert _decode_plain(raw) == json.loads(raw)
    assert decode_json(raw) == json.loads(raw)
