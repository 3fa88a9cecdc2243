"""The operations page: how far the read models are behind the ledger, the exceptions the
ledger raised (counted by type, then listed with filters), and the newest dead letters
(entrypoints.console.dead_letters)."""

from __future__ import annotations

from typing import Any

from inventory.ledger.v1 import availability_pb2
from starlette.requests import Request
from starlette.responses import Response

from entrypoints.console import dead_letters
from entrypoints.console.app import InputError, Visit
from entrypoints.console.pages import stamp

EXCEPTION_PREFIX = "EXCEPTION_TYPE_"
# Recorded exception types (LOT_EXPIRING is computed on request, never recorded).
RECORDED_TYPES = tuple(
    name.removeprefix(EXCEPTION_PREFIX).lower()
    for name, number in availability_pb2.ExceptionType.items()
    if number and name != "EXCEPTION_TYPE_LOT_EXPIRING"
)
COUNT_PAGES_MAX = 10  # counted per type up to 10 pages of 1000; beyond: "10000+"
COUNT_PAGE_SIZE = 1000
LIST_PAGE_SIZE = 50


async def _count(visit: Visit, kind: str) -> tuple[int, bool]:
    """How many exceptions of ``kind`` (and whether there are more than were counted)."""
    total, token = 0, ""
    for _ in range(COUNT_PAGES_MAX):
        page = await visit.client.list_exceptions(
            type=kind, page_size=COUNT_PAGE_SIZE, page_token=token
        )
        total += len(page.exceptions)
        token = page.next_page_token
        if not token:
            return total, False
    return total, True


def _exception_view(exception: Any) -> dict[str, Any]:
    return {
        "ledger_position": int(exception.ledger_position),
        "type": availability_pb2.ExceptionType.Name(exception.type)
        .removeprefix(EXCEPTION_PREFIX)
        .lower(),
        "sku": exception.sku,
        "location_id": exception.location_id,
        "key": f"{exception.sku}@{exception.location_id}",
        "bucket": exception.bucket,
        "quantity": int(exception.quantity),
        "detail": exception.detail,
        "source": exception.source,
        "message_id": exception.message_id,
        "occurred_at": stamp(exception.occurred_at),
        "recorded_at": stamp(exception.recorded_at),
    }


async def operations(request: Request, visit: Visit) -> Response:
    kind = request.query_params.get("type", "").strip().lower()
    if kind and kind not in RECORDED_TYPES:
        raise InputError(f"type must be one of {', '.join(RECORDED_TYPES)}")
    sku = request.query_params.get("sku", "").strip()[:128]
    location_id = request.query_params.get("location_id", "").strip()[:128]
    page_token = request.query_params.get("page_token", "")[:4096]
    status = await visit.client.get_projection_status()
    counts = []
    for name in RECORDED_TYPES:
        total, more = await _count(visit, name)
        counts.append({"type": name, "count": total, "more": more})
    page = await visit.client.list_exceptions(
        type=kind or 0,
        sku=sku,
        location_id=location_id,
        page_size=LIST_PAGE_SIZE,
        page_token=page_token,
    )
    return visit.console.render(
        request,
        visit.session,
        "operations.html",
        {
            "status": {
                "head_position": int(status.head_position),
                "applied_position": int(status.applied_position),
                "lag": int(status.lag),
            },
            "counts": counts,
            "types": RECORDED_TYPES,
            "kind": kind,
            "sku": sku,
            "location_id": location_id,
            "exceptions": [_exception_view(e) for e in page.exceptions],
            "next_params": (
                {
                    "type": kind,
                    "sku": sku,
                    "location_id": location_id,
                    "page_token": page.next_page_token,
                }
                if page.next_page_token
                else None
            ),
            "dead_letters": await dead_letters.listing(request),
        },
    )
