"""Views: the hand-written ReservationView.to_dict gives exactly what dataclasses.asdict
would (it is remembered with every idempotency key and replayed from there)."""

from __future__ import annotations

from dataclasses import asdict, fields
from datetime import UTC, datetime

from ledger.views import ReservationLineView, ReservationView


def test_reservation_to_dict_is_asdict_and_round_trips() -> None:
    view = ReservationView(
        reservation_id="r-1",
        channel="web",
        order_ref="o-1",
        status="ACTIVE",
        lines=[ReservationLineView("S1", "L1", 3, 0), ReservationLineView("S2", "L2", 1, 1)],
        expires_at=datetime(2026, 12, 5, 10, 0, tzinfo=UTC),
        created_at=datetime(2026, 12, 5, 9, 50, tzinfo=UTC),
        ledger_position=42,
    )
    assert view.to_dict() == asdict(view)
    assert list(view.to_dict()) == [f.name for f in fields(ReservationView)]  # every field
    assert ReservationView.from_dict(view.to_dict()) == view
