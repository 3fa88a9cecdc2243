"""Event state as the library's JSON, written and read with orjson (issue 20, "cheaper events").

``LedgerTranscoder`` produces the same bytes as the library's ``JSONTranscoder`` (stdlib json,
``_type_``/``_data_`` tags, compact separators, UTF-8 unescaped) and decodes them to the same
values: stored format version 1 is unchanged, so the previous release reads what this one
writes (a rollback stays possible) and this one reads every existing database. Encoding an
event takes about half the stdlib's time (docs/decisions.md, "Cheaper events").

Where orjson and the stdlib could differ, the stdlib decides:
- encoding: anything orjson refuses (an int beyond 64 bits, a non-str dict key, an
  unregistered type, a lone surrogate) is encoded again by the stdlib, which writes it or
  raises the library's own error;
- decoding: anything orjson refuses (NaN, a lone surrogate escape, invalid UTF-8) and any
  document in which orjson found a float (an int beyond 64 bits reads as a float there, and
  the ledger stores no floats) is decoded again by the stdlib.
Not covered, because no ledger event or snapshot holds them (tests/properties/
test_event_transcoding.py fails on a field of any other type): floats (digits may differ,
NaN would be written as null), a UUID inside the state (orjson writes it untagged) and a
non-str Enum (orjson writes its value where the stdlib refuses it).
"""

from __future__ import annotations

from typing import Any

import orjson
from eventsourcing.persistence import JSONTranscoder

# datetime/date/time and dataclasses go to ``default`` (the library's tagging) as in the
# stdlib encoder, instead of orjson's own untagged forms.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class _Reparse(Exception):
    """orjson's reading may differ from the stdlib's: decode with the stdlib."""


class LedgerTranscoder(JSONTranscoder):
    def encode(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, default=self._encode_obj, option=_OPTIONS)
        except orjson.JSONEncodeError:
            return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        try:
            return self._hook(orjson.loads(data))
        except (orjson.JSONDecodeError, _Reparse):
            return super().decode(data)

    def _hook(self, value: Any) -> Any:
        """The library's object hook applied bottom-up, as ``json``'s ``object_hook`` is."""
        kind = type(value)
        if kind is dict:
            for key, item in value.items():
                kind = type(item)
                if kind is dict or kind is list:
                    value[key] = self._hook(item)
                elif kind is float:
                    raise _Reparse
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                return self._decode_obj(value)
        elif kind is list:
            for index, item in enumerate(value):
                kind = type(item)
                if kind is dict or kind is list:
                    value[index] = self._hook(item)
                elif kind is float:
                    raise _Reparse
        elif kind is float:
            raise _Reparse
        return value


__all__ = ["LedgerTranscoder"]
