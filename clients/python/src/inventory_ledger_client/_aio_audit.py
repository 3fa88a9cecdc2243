"""The AuditService calls (as-of reads, movements, the ledger stream and its verification):
a base class of :class:`AsyncLedgerClient`, which has every other call.

The sync twin of this module is generated from it (``python -m tools.gen_sync_client``).
"""

from __future__ import annotations

import datetime as dt

from inventory.ledger.v1 import audit_service_pb2, position_pb2

from inventory_ledger_client import _requests as build
from inventory_ledger_client._aio_calls import AsyncLedgerCalls
from inventory_ledger_client._aio_stream import AsyncLedgerStream
from inventory_ledger_client.retry import RetryPolicy


class AsyncAuditCalls(AsyncLedgerCalls):
    """AuditService: what the ledger held, when, and whether its chains are intact."""

    async def get_position_as_of(
        self,
        sku: str,
        location_id: str,
        as_of: dt.datetime,
        *,
        axis: int | str = "recorded",
        known_at: dt.datetime | None = None,
        include_holds: bool = False,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> position_pb2.Position:
        """The position at ``as_of`` on the ``"recorded"`` or ``"effective"`` axis."""
        return await self._unary(
            "AuditService/GetPositionAsOf",
            self._audit.GetPositionAsOf,
            build.get_position_as_of(sku, location_id, as_of, axis, known_at, include_holds),
            correlation_id,
            timeout,
        )

    async def list_movements(
        self,
        sku: str,
        location_id: str,
        *,
        axis: int | str = "recorded",
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> audit_service_pb2.ListMovementsResponse:
        """One page of a position's ledger entries with ``start <= time < end``."""
        return await self._unary(
            "AuditService/ListMovements",
            self._audit.ListMovements,
            build.list_movements(sku, location_id, axis, start, end, page_size, page_token),
            correlation_id,
            timeout,
        )

    async def trace_lot(
        self,
        sku: str,
        lot_id: str,
        *,
        as_of: dt.datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> audit_service_pb2.TraceLotResponse:
        """One page of a lot's recall trace: the entries naming the lot in ledger order, and
        the lot's buckets per location (on every page); ``as_of`` on the recorded axis."""
        return await self._unary(
            "AuditService/TraceLot",
            self._audit.TraceLot,
            build.trace_lot(sku, lot_id, as_of, page_size, page_token),
            correlation_id,
            timeout,
        )

    def stream_ledger(
        self,
        from_position: int = 0,
        *,
        follow: bool = False,
        reconnect: bool | RetryPolicy = False,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> AsyncLedgerStream[audit_service_pb2.LedgerEntry]:
        """Every entry with ``position > from_position``, in order; ``follow`` tails the ledger
        (then no deadline unless ``timeout``). With ``reconnect`` a broken stream resumes after
        the last entry received."""
        if timeout is None and not follow:
            timeout = self._stream_timeout
        return self._stream(
            "AuditService/StreamLedger",
            self._audit.StreamLedger,
            build.stream_ledger(from_position, follow),
            correlation_id=correlation_id,
            timeout=timeout,
            reconnect=reconnect,
            resume=build.resume_ledger,
        )

    def verify_ledger(
        self,
        *,
        sku: str = "",
        location_id: str = "",
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> AsyncLedgerStream[audit_service_pb2.VerifyLedgerProgress]:
        """Check the hash chains (one position, or all): progress, the last with ``done``."""
        return self._stream(
            "AuditService/VerifyLedger",
            self._audit.VerifyLedger,
            build.verify_ledger(sku, location_id),
            correlation_id=correlation_id,
            timeout=timeout if timeout is not None else self._stream_timeout,
            reconnect=False,
        )
