"""Reservations the integration tests place through a LedgerService: one unit of one SKU
at one location, on the web channel, held for an hour (long past any test)."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from ledger.domain.reservation import parse_reservation_id
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine


def one_unit(request_id: str, order_ref: str, sku: str, location_id: str) -> ReserveInput:
    return ReserveInput(
        request_id=request_id,
        channel="web",
        order_ref=order_ref,
        lines=(ReserveLine(sku, location_id, 1),),
        ttl=timedelta(hours=1),
    )


def reserved_id(service: LedgerService, ctx: CallContext, request: ReserveInput) -> UUID:
    """Place ``request`` and wait: the reservation's aggregate id."""
    return parse_reservation_id(service.reserve(ctx, request).result().reservation_id)
