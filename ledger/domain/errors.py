"""Domain errors, each with a stable ``reason`` (AIP-193 style) the API maps to a status."""

from __future__ import annotations

from dataclasses import dataclass, field


class LedgerError(Exception):
    """Base class of errors the ledger reports to callers."""

    reason: str = "LEDGER_ERROR"


@dataclass(frozen=True)
class ShortLine:
    """One reservation line that could not be covered."""

    line_index: int
    sku: str
    location_id: str
    requested: int
    available: int


@dataclass
class InsufficientAvailability(LedgerError):
    """Raised when a reservation cannot be covered in full (nothing is held)."""

    channel: str
    short_lines: list[ShortLine] = field(default_factory=list)
    reason = "INSUFFICIENT_AVAILABILITY"

    def __str__(self) -> str:
        lines = len(self.short_lines)
        return f"insufficient availability for channel {self.channel!r} on {lines} line(s)"


@dataclass
class ReservationNotFound(LedgerError):
    """Raised when a reservation does not exist (or belongs to another channel)."""

    reservation_id: str
    reason = "RESERVATION_NOT_FOUND"

    def __str__(self) -> str:
        return f"reservation {self.reservation_id!r} not found"


@dataclass
class SerialNotFound(LedgerError):
    """Raised when the serial index has no entry for a unit (never seen, or seen only in
    movements it could not accept)."""

    sku: str
    serial_number: str
    reason = "SERIAL_NOT_FOUND"

    def __str__(self) -> str:
        return f"serial {self.serial_number!r} of SKU {self.sku!r} not found"


@dataclass
class IllegalTransition(LedgerError):
    """Raised when a reservation is asked to move to a state its lifecycle forbids."""

    reservation_id: str
    current_status: str
    action: str
    reason = "ILLEGAL_RESERVATION_TRANSITION"

    def __str__(self) -> str:
        return (
            f"cannot {self.action} reservation {self.reservation_id!r}: it is {self.current_status}"
        )


@dataclass
class FenceExceedsAvailable(LedgerError):
    """Raised when raising a channel fence would ring-fence more than is available."""

    sku: str
    location_id: str
    channel: str
    requested: int
    unused_fence_total: int
    available: int
    reason = "FENCE_EXCEEDS_AVAILABLE"

    def __str__(self) -> str:
        return (
            f"fence {self.requested} for channel {self.channel!r} would ring-fence "
            f"{self.unused_fence_total} units with only {max(0, self.available)} available"
        )


@dataclass
class ItemTrackingLocked(LedgerError):
    """Raised when a SKU's tracking may not change (it holds stock, or is LOT/SERIAL)."""

    sku: str
    current: str
    requested: str
    why: str
    reason = "ITEM_TRACKING_LOCKED"

    def __str__(self) -> str:
        return f"cannot set tracking of SKU {self.sku!r} to {self.requested}: {self.why}"


@dataclass
class RequestIdReused(LedgerError):
    """Raised when an idempotency key comes back with a different payload."""

    key: str
    reason = "REQUEST_ID_REUSED"

    def __str__(self) -> str:
        return f"idempotency key {self.key!r} was already used with a different payload"


@dataclass
class InvalidCommand(LedgerError):
    """Raised when a command breaks a rule only the domain can check (field-level)."""

    field_path: str
    description: str
    reason = "INVALID_ARGUMENT"

    def __str__(self) -> str:
        return f"{self.field_path}: {self.description}"


@dataclass
class TrackingMismatch(InvalidCommand):
    """A movement's tracking fields do not fit its SKU's item policy (contract §2): a LOT
    SKU's movement without ``lot_id``, a SERIAL SKU's without ``serial_numbers``, or an
    untracked SKU's with either. Invalid input, poison on ingest."""

    reason_code = "TRACKING_MISMATCH"


@dataclass
class ConcurrencyConflict(LedgerError):
    """Raised when optimistic-concurrency retries are exhausted."""

    attempts: int
    reason = "CONCURRENCY_CONFLICT"

    def __str__(self) -> str:
        return f"conflicting concurrent writes; gave up after {self.attempts} attempts"


class StoreUnavailable(LedgerError):
    """Raised when the event store cannot be reached."""

    reason = "STORE_UNAVAILABLE"
