"""Unit-of-measure table (contract §5): converts a message's ``uom`` to the SKU's base unit ("EA").

The table is a JSON object (or the equivalent dict)::

    {"units": {"EA": 1, "CASE": 12}, "overrides": {"SKU-1": {"CASE": 6}}}

``units`` are global factors; ``overrides`` replace (or add) factors for one SKU. Unit codes are
case-sensitive. ``EA`` is always the base unit with factor 1 and cannot be redefined.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BASE_UNIT = "EA"


class UnitTableError(ValueError):
    """The unit table itself is malformed (a configuration error, not a poison message)."""


def _factors(raw: Any, where: str) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        raise UnitTableError(f"{where}: must be an object of unit -> factor")
    factors: dict[str, int] = {}
    for unit, factor in raw.items():
        if not isinstance(unit, str) or not unit:
            raise UnitTableError(f"{where}: unit codes must be non-empty strings")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise UnitTableError(f"{where}.{unit}: factor must be a positive integer")
        if unit == BASE_UNIT and factor != 1:
            raise UnitTableError(f"{where}.{unit}: the base unit's factor is 1")
        factors[unit] = factor
    return factors


class UnitTable:
    """Global unit factors plus per-SKU overrides; ``factor`` returns base units per unit."""

    def __init__(
        self,
        units: Mapping[str, int] | None = None,
        overrides: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self._units = {BASE_UNIT: 1, **_factors(units or {}, "units")}
        if not isinstance(overrides or {}, Mapping):
            raise UnitTableError("overrides: must be an object of sku -> units")
        self._overrides = {
            sku: _factors(table, f"overrides.{sku}") for sku, table in (overrides or {}).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitTable:
        unknown = set(data) - {"units", "overrides"}
        if unknown:
            raise UnitTableError(f"unknown keys in unit table: {sorted(unknown)}")
        return cls(data.get("units"), data.get("overrides"))

    @classmethod
    def from_json_file(cls, path: str | Path) -> UnitTable:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise UnitTableError("unit table must be a JSON object")
        return cls.from_dict(data)

    def factor(self, sku: str, uom: str) -> int | None:
        """Base units in one ``uom`` of ``sku``; None when the unit is unknown for that SKU."""
        if uom == BASE_UNIT:
            return 1
        override = self._overrides.get(sku)
        if override is not None and uom in override:
            return override[uom]
        return self._units.get(uom)
