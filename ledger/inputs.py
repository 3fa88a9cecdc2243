"""Input models of the core (pydantic v2), shared by every edge that accepts input.

The gRPC servicers feed them plain values pulled from protobuf requests
(``entrypoints.grpc.convert``), ingest feeds :class:`MovementModel` a canonical message in base
units (``ingest.message``), and reconcile checks its identifiers with :data:`Identifier`; so the
field rules and limits of every edge cannot drift. A pydantic error location such as
``('lines', 3, 'sku')`` becomes the field path ``lines[3].sku``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from ledger.domain import limits
from ledger.domain.movements import Disposition, FromBucket, Movement, MovementType

# C0 and C1 control characters (and DEL); one compiled search instead of a Python loop per
# character (about a tenth of the ingest process's CPU, run on every identifier).
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def _no_control_characters(value: str) -> str:
    if _CONTROL_CHARACTERS.search(value):
        raise ValueError("must not contain control characters")
    return value


Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.IDENTIFIER_LENGTH_MAX),
    AfterValidator(_no_control_characters),
]
OptionalIdentifier = Annotated[
    str,
    StringConstraints(max_length=limits.IDENTIFIER_LENGTH_MAX),
    AfterValidator(_no_control_characters),
]
Channel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,64}$")]
OptionalChannel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{0,64}$")]
Source = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
RequestId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.REQUEST_ID_LENGTH_MAX),
    AfterValidator(_no_control_characters),
]
FreeText = Annotated[
    str,
    StringConstraints(max_length=limits.REASON_LENGTH_MAX),
    AfterValidator(_no_control_characters),
]
OrderRef = Annotated[
    str,
    StringConstraints(max_length=limits.ORDER_REF_LENGTH_MAX),
    AfterValidator(_no_control_characters),
]
Quantity = Annotated[int, Field(ge=1, le=limits.QUANTITY_MAX)]
NonNegativeQuantity = Annotated[int, Field(ge=0, le=limits.QUANTITY_MAX)]
PageSize = Annotated[int, Field(ge=0)]

BASE_UNITS = ("", "EA")

# Stands in for a protobuf Timestamp that has no datetime (outside years 1-9999).
OUT_OF_RANGE_TIMESTAMP = object()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A field a model validator may name: ``qty``, or an entry of a repeated one, ``serial_numbers[2]``.
_FIELD_REFERENCE = re.compile(r"[A-Za-z_]\w*(\[\d+\])*")


def field_violations(error: ValidationError) -> list[tuple[str, str]]:
    """(field path, description) pairs from a pydantic error."""
    violations = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part:
                path += f".{part}" if path else str(part)
        message = item["msg"].removeprefix("Value error, ")
        # Cross-field rules raise "field: problem" from a model validator; point at the field.
        field, sep, rest = message.partition(": ")
        if item["type"] == "value_error" and sep and _FIELD_REFERENCE.fullmatch(field):
            path = f"{path}.{field}" if path else field
            message = rest
        violations.append((path or "request", message))
    return violations


# ---- movements ----

_QTY_TYPES = {
    MovementType.RECEIPT,
    MovementType.PUTAWAY,
    MovementType.SHIPMENT,
    MovementType.QUARANTINE,
    MovementType.QUARANTINE_RELEASE,
    MovementType.DAMAGE,
    MovementType.WRITE_OFF,
    MovementType.TRANSFER_DISPATCH,
    MovementType.TRANSFER_RECEIPT,
    MovementType.RETURN_RECEIPT,
}


class MovementModel(_Strict):
    message_id: Identifier
    source: Source
    type: MovementType
    sku: Identifier
    location_id: Identifier
    qty: Quantity | None = None
    uom: str = ""
    occurred_at: datetime | None = None
    reservation_id: OptionalIdentifier = ""
    transfer_id: OptionalIdentifier = ""
    to_location_id: OptionalIdentifier = ""
    delta: Annotated[int, Field(ge=-limits.QUANTITY_MAX, le=limits.QUANTITY_MAX)] | None = None
    counted: NonNegativeQuantity | None = None
    reason: FreeText = ""
    disposition: Disposition | None = None
    putaway_pending: bool = False
    final: bool = False
    expected_at: datetime | None = None
    from_bucket: FromBucket | None = None
    # Item tracking (contract §2): shapes only here; whether the SKU's tracking wants them is
    # the writer's check, against the item master.
    lot_id: OptionalIdentifier = ""
    expires_at: datetime | None = None
    serial_numbers: tuple[Identifier, ...] = ()

    @field_validator("occurred_at", "expected_at", "expires_at", mode="before")
    @classmethod
    def _timestamp_in_range(cls, value: Any) -> Any:
        if value is OUT_OF_RANGE_TIMESTAMP:
            raise ValueError("timestamp out of range")
        return value

    @model_validator(mode="after")
    def _fields_fit_type(self) -> MovementModel:
        problems = list(_type_rules(self))
        if problems:
            field, message = problems[0]
            raise ValueError(f"{field}: {message}")
        return self


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


def movement_of(model: MovementModel) -> Movement:
    """The domain movement of a validated model; timestamps in UTC, empty optionals as None."""
    return Movement(
        source=model.source,
        message_id=model.message_id,
        type=model.type,
        sku=model.sku,
        location_id=model.location_id,
        qty=model.qty,
        delta=model.delta,
        counted=model.counted,
        occurred_at=_utc(model.occurred_at),
        reservation_id=model.reservation_id or None,
        transfer_id=model.transfer_id or None,
        to_location_id=model.to_location_id or None,
        reason=model.reason or None,
        disposition=model.disposition,
        putaway_pending=model.putaway_pending,
        final=model.final,
        expected_at=_utc(model.expected_at),
        from_bucket=model.from_bucket,
        lot_id=model.lot_id or None,
        expires_at=_utc(model.expires_at),
        serial_numbers=model.serial_numbers,
    )


def _type_rules(m: MovementModel) -> Any:
    """Yield (field, problem) for fields that do not fit the movement type (first wins)."""
    kind = m.type
    if m.uom not in BASE_UNITS:
        yield "uom", "RecordMovements takes base units (EA); convert at ingest"
    if kind in _QTY_TYPES and m.qty is None:
        yield "qty", f"required for {kind.value}"
    if kind not in _QTY_TYPES and m.qty is not None:
        yield "qty", f"not used by {kind.value}"
    if kind is MovementType.ADJUSTMENT:
        if m.delta is None or m.delta == 0:
            yield "delta", "adjustment needs a non-zero delta"
        if not m.reason:
            yield "reason", "adjustment needs a reason"
    elif m.delta is not None:
        yield "delta", f"not used by {kind.value}"
    if kind is MovementType.CYCLE_COUNT and m.counted is None:
        yield "counted", "cycle_count needs counted"
    if kind is not MovementType.CYCLE_COUNT and m.counted is not None:
        yield "counted", f"not used by {kind.value}"
    if (
        kind in (MovementType.TRANSFER_DISPATCH, MovementType.TRANSFER_RECEIPT)
        and not m.transfer_id
    ):
        yield "transfer_id", f"required for {kind.value}"
    if kind is MovementType.TRANSFER_DISPATCH:
        if not m.to_location_id:
            yield "to_location_id", "required for transfer_dispatch"
        elif m.to_location_id == m.location_id:
            yield "to_location_id", "must differ from location_id"
    if kind is MovementType.RETURN_RECEIPT and m.disposition is None:
        yield "disposition", "required for return_receipt"
    if kind is not MovementType.RETURN_RECEIPT and m.disposition is not None:
        yield "disposition", f"not used by {kind.value}"
    if kind is not MovementType.DAMAGE and m.from_bucket is not None:
        yield "from_bucket", f"not used by {kind.value}"
    if m.reservation_id and kind is not MovementType.SHIPMENT:
        yield "reservation_id", f"not used by {kind.value}"
    # Flags and transfer fields outside their types would be silently dropped: refuse them.
    if m.putaway_pending and kind is not MovementType.RECEIPT:
        yield "putaway_pending", f"not used by {kind.value}"
    if m.final and kind is not MovementType.TRANSFER_RECEIPT:
        yield "final", f"not used by {kind.value}"
    if m.transfer_id and kind not in (
        MovementType.TRANSFER_DISPATCH,
        MovementType.TRANSFER_RECEIPT,
    ):
        yield "transfer_id", f"not used by {kind.value}"
    if m.to_location_id and kind is not MovementType.TRANSFER_DISPATCH:
        yield "to_location_id", f"not used by {kind.value}"
    if m.expected_at is not None and kind is not MovementType.TRANSFER_DISPATCH:
        yield "expected_at", f"not used by {kind.value}"
    yield from _tracking_rules(m)


# Types that may state a lot's expiry: the ones that bring units in from outside (contract §2).
_EXPIRY_TYPES = (MovementType.RECEIPT, MovementType.RETURN_RECEIPT)


def _tracking_rules(m: MovementModel) -> Any:
    """Yield (field, problem) for tracking fields of the wrong shape for the movement."""
    kind = m.type
    if m.expires_at is not None:
        if kind not in _EXPIRY_TYPES:
            yield "expires_at", f"not used by {kind.value} (only receipt and return_receipt)"
        elif not m.lot_id:
            yield "expires_at", "only together with lot_id"
    if not m.serial_numbers:
        return
    if m.lot_id:
        yield "serial_numbers", "not together with lot_id: a SKU is tracked by lot or by serial"
    first_at: dict[str, int] = {}
    for index, serial in enumerate(m.serial_numbers):
        if serial in first_at:
            yield f"serial_numbers[{index}]", f"repeats serial_numbers[{first_at[serial]}]"
        first_at.setdefault(serial, index)
    basis, units = _units_moved(m)
    if units is not None and len(m.serial_numbers) != units:
        yield (
            "serial_numbers",
            (
                f"lists {len(m.serial_numbers)} serial numbers; must list {units}, one per unit"
                f" ({basis}, in base units)"
            ),
        )


def _units_moved(m: MovementModel) -> tuple[str, int | None]:
    """The field that says how many serial numbers the movement lists, and its size in base
    units (None when missing: that is reported on the field itself)."""
    if m.type is MovementType.ADJUSTMENT:
        return "|delta|", None if m.delta is None else abs(m.delta)
    if m.type is MovementType.CYCLE_COUNT:
        return "counted", m.counted
    return "qty", m.qty


class RecordMovementsModel(_Strict):
    movements: Annotated[
        list[MovementModel], Field(min_length=1, max_length=limits.MOVEMENTS_PER_REQUEST_MAX)
    ]


# ---- reservations ----


class ReserveLineModel(_Strict):
    sku: Identifier
    location_id: OptionalIdentifier = ""
    qty: Quantity
    # LOT SKUs (contract §4.2); shapes only, like the movement's tracking fields.
    min_expires_at: datetime | None = None
    lot_id: OptionalIdentifier = ""

    @field_validator("min_expires_at", mode="before")
    @classmethod
    def _timestamp_in_range(cls, value: Any) -> Any:
        if value is OUT_OF_RANGE_TIMESTAMP:
            raise ValueError("timestamp out of range")
        return value


class ReserveModel(_Strict):
    request_id: RequestId
    channel: Channel
    order_ref: OrderRef = ""
    lines: Annotated[
        list[ReserveLineModel], Field(min_length=1, max_length=limits.RESERVATION_LINES_MAX)
    ]
    ttl: timedelta | None = None
    allow_split: bool = False

    @model_validator(mode="after")
    def _ttl_in_range(self) -> ReserveModel:
        if self.ttl is not None and not (
            limits.RESERVATION_TTL_MIN <= self.ttl <= limits.RESERVATION_TTL_MAX
        ):
            raise ValueError(
                f"ttl: must be between {limits.RESERVATION_TTL_MIN}"
                f" and {limits.RESERVATION_TTL_MAX}"
            )
        return self


class ReservationActionModel(_Strict):
    request_id: RequestId
    reservation_id: Identifier
    channel: OptionalChannel = ""


class GetReservationModel(_Strict):
    reservation_id: Identifier
    channel: OptionalChannel = ""


class ListReservationsModel(_Strict):
    channel: Channel
    order_ref: OrderRef = ""
    page_size: PageSize = 0
    page_token: str = ""


# ---- queries and policies ----


class GetPositionModel(_Strict):
    sku: Identifier
    location_id: Identifier
    include_holds: bool = False


class GetSerialModel(_Strict):
    sku: Identifier
    serial_number: Identifier


class ListPositionsModel(_Strict):
    sku: OptionalIdentifier = ""
    location_id: OptionalIdentifier = ""
    page_size: PageSize = 0
    page_token: str = ""
    include_holds: bool = False

    @model_validator(mode="after")
    def _exactly_one_filter(self) -> ListPositionsModel:
        if bool(self.sku) == bool(self.location_id):
            raise ValueError("sku: give exactly one of sku or location_id")
        return self


class SetSafetyStockModel(_Strict):
    request_id: RequestId
    sku: Identifier
    location_id: Identifier
    qty: NonNegativeQuantity


class SetChannelFenceModel(_Strict):
    request_id: RequestId
    sku: Identifier
    location_id: Identifier
    channel: Channel
    qty: NonNegativeQuantity


class SetItemPolicyModel(_Strict):
    request_id: RequestId
    sku: Identifier
    # Lowercase enum names as the edge converts them; "" (UNSPECIFIED) means none.
    tracking: Literal["", "none", "lot", "serial"] = ""


class GetItemPolicyModel(_Strict):
    sku: Identifier


class SetChannelPolicyModel(_Strict):
    request_id: RequestId
    channel: Channel
    eligible_location_ids: Annotated[
        list[Identifier], Field(max_length=limits.ELIGIBLE_LOCATIONS_MAX)
    ] = []
    share_percent: Annotated[int, Field(ge=0, le=100)] = 0
    buffer: NonNegativeQuantity = 0
    max_publish: NonNegativeQuantity = 0


# ---- read models ----


class GetAvailabilityModel(_Strict):
    sku: Identifier
    channel: Channel
    consistency: Annotated[int, Field(ge=0, le=2)] = 0
    min_position: Annotated[int, Field(ge=0)] = 0
    horizon: datetime | None = None

    @field_validator("horizon", mode="before")
    @classmethod
    def _timestamp_in_range(cls, value: Any) -> Any:
        if value is OUT_OF_RANGE_TIMESTAMP:
            raise ValueError("timestamp out of range")
        return value


class ListInTransitModel(_Strict):
    sku: OptionalIdentifier = ""
    to_location_id: OptionalIdentifier = ""
    page_size: PageSize = 0
    page_token: str = ""

    @model_validator(mode="after")
    def _exactly_one_filter(self) -> ListInTransitModel:
        if bool(self.sku) == bool(self.to_location_id):
            raise ValueError("sku: give exactly one of sku or to_location_id")
        return self


ExceptionType = Literal[
    "",
    "NEGATIVE_BUCKET",
    "STALE_COUNT",
    "TRANSFER_SHORTAGE",
    "UNKNOWN_RESERVATION",
    "LOT_EXPIRY_CONFLICT",
    "SERIAL_CONFLICT",
    "LOT_EXPIRING",  # computed at call time (``expiring_within``), never recorded
]
EXCEPTION_TYPES: tuple[str, ...] = get_args(ExceptionType)


class ListExceptionsModel(_Strict):
    type: ExceptionType = ""
    sku: OptionalIdentifier = ""
    location_id: OptionalIdentifier = ""
    page_size: PageSize = 0
    page_token: str = ""
    # Set: list the lots expiring within this window instead of recorded exceptions.
    expiring_within: timedelta | None = None

    @model_validator(mode="after")
    def _expiring_lots_listing(self) -> ListExceptionsModel:
        if self.expiring_within is None:
            return self
        if self.expiring_within <= timedelta(0):
            raise ValueError("expiring_within: must be positive")
        if self.type not in ("", "LOT_EXPIRING"):
            raise ValueError("type: must be unset or LOT_EXPIRING with expiring_within")
        return self


WATCH_SKUS_MAX = 1000


class WatchAvailabilityModel(_Strict):
    """1-1000 entries in ``skus``; a SKU given more than once is watched once."""

    channel: Channel
    skus: Annotated[list[Identifier], Field(min_length=1, max_length=WATCH_SKUS_MAX)]

    @property
    def unique_skus(self) -> list[str]:
        """The SKUs without repeats, in first-seen order."""
        return list(dict.fromkeys(self.skus))


# ---- audit ----


def _in_range(value: Any) -> Any:
    if value is OUT_OF_RANGE_TIMESTAMP:
        raise ValueError("timestamp out of range")
    return value


class GetPositionAsOfModel(_Strict):
    sku: Identifier
    location_id: Identifier
    as_of: datetime
    axis: Annotated[int, Field(ge=1, le=2)]
    known_at: datetime | None = None
    include_holds: bool = False

    _times = field_validator("as_of", "known_at", mode="before")(_in_range)

    @model_validator(mode="after")
    def _known_at_is_effective_only(self) -> GetPositionAsOfModel:
        if self.known_at is not None and self.axis != 2:
            raise ValueError("known_at: only with axis AXIS_EFFECTIVE")
        return self


class ListMovementsModel(_Strict):
    sku: Identifier
    location_id: Identifier
    from_: Annotated[datetime | None, Field(alias="from")] = None
    to: datetime | None = None
    axis: Annotated[int, Field(ge=1, le=2)]
    page_size: PageSize = 0
    page_token: str = ""

    _times = field_validator("from_", "to", mode="before")(_in_range)

    @model_validator(mode="after")
    def _window_in_order(self) -> ListMovementsModel:
        if self.from_ is not None and self.to is not None and self.to < self.from_:
            raise ValueError("to: must not be before from")
        return self


class StreamLedgerModel(_Strict):
    from_position: Annotated[int, Field(ge=0)] = 0
    follow: bool = False


class VerifyLedgerModel(_Strict):
    sku: OptionalIdentifier = ""
    location_id: OptionalIdentifier = ""

    @model_validator(mode="after")
    def _both_or_neither(self) -> VerifyLedgerModel:
        # Name the one that is missing.
        if self.sku and not self.location_id:
            raise ValueError("location_id: give both sku and location_id, or neither")
        if self.location_id and not self.sku:
            raise ValueError("sku: give both sku and location_id, or neither")
        return self


class TraceLotModel(_Strict):
    sku: Identifier
    lot_id: Identifier
    as_of: datetime | None = None
    page_size: PageSize = 0
    page_token: str = ""

    _times = field_validator("as_of", mode="before")(_in_range)
